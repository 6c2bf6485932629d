#!/bin/bash
# CPU per task of a throughput run, per process: the bench process (dispatcher and worker),
# every PostgreSQL process together, and RabbitMQ (beam.smp), from /proc/<pid>/stat sampled
# every 0.25 s over baton's part of the run (the run_secs before the bench's "run 1" line).
#
#   tools/cpu-per-task.sh BATON_BINARY TASKS [VAR=value ...]
#
# Runs `bench throughput --device handler --executor-limit 64 --tasks TASKS --runs 1` with
# BATON_DATABASE_URL as set (default: the baton role on 127.0.0.1) and the given variables,
# and prints tasks/s, the ratio, the ceiling's round trips/s and ms of CPU per task.
set -euo pipefail
bin=$1
tasks=$2
shift 2
export BATON_DATABASE_URL=${BATON_DATABASE_URL:-postgres://baton:baton@127.0.0.1:5432/baton}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
env "$@" RUST_LOG=warn,cli=info "$bin" bench throughput --device handler --executor-limit 64 \
    --tasks "$tasks" --runs 1 --output json >"$work/out.json" 2>"$work/err" &
pid=$!
python3 - "$pid" "$work/samples" <<'PY' &
import glob, os, sys, time
pid, out = sys.argv[1], open(sys.argv[2], "w")
def cpu(p):
    try:
        fields = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime, in ticks
    except OSError:
        return 0
while os.path.exists(f"/proc/{pid}"):
    pg = rabbit = 0
    for d in glob.glob("/proc/[0-9]*"):
        try:
            comm = open(d + "/comm").read().strip()
        except OSError:
            continue
        if comm.startswith("postgres"):
            pg += cpu(d[6:])
        elif comm.startswith("beam"):
            rabbit += cpu(d[6:])
    out.write(f"{time.time()} {cpu(pid)} {pg} {rabbit}\n")
    out.flush()
    time.sleep(0.25)
PY
sampler=$!
wait "$pid" || { cat "$work/err" >&2; exit 1; }
wait "$sampler"
python3 - "$work" "$tasks" <<'PY'
import datetime, json, os, re, sys
work, tasks = sys.argv[1], int(sys.argv[2])
tick_ms = 1000 / os.sysconf("SC_CLK_TCK")
result = json.loads(open(f"{work}/out.json").read().strip().splitlines()[-1])
run_secs = result["run_secs"][0]
end = None
for line in open(f"{work}/err"):
    line = re.sub(r"\x1b\[[0-9;]*m", "", line)
    if "run 1:" in line:
        stamp = re.search(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z", line).group(1)
        end = datetime.datetime.fromisoformat(stamp).replace(tzinfo=datetime.timezone.utc).timestamp()
if end is None:
    sys.exit("the bench logged no 'run 1' line")
rows = [list(map(float, line.split())) for line in open(f"{work}/samples")]
window = [row for row in rows if end - run_secs <= row[0] <= end]
first, last = window[0], window[-1]
done = tasks * (last[0] - first[0]) / run_secs
per_task = [(last[i] - first[i]) * tick_ms / done for i in (1, 2, 3)]
print(
    f"tasks/s {result['tasks_per_sec']:.0f} ratio {result['round_trip_ratio']:.3f} "
    f"ceiling_rt {result['ceiling_round_trips_per_sec']:.0f} | ms/task "
    f"bench {per_task[0]:.3f} pg {per_task[1]:.3f} rabbit {per_task[2]:.3f} total {sum(per_task):.3f}"
)
PY
