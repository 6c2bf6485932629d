//! CPU time of the processes a throughput run loads, read from Linux's `/proc`: this process
//! (the dispatcher and the workers), every PostgreSQL process and RabbitMQ's Erlang VM
//! (`beam.smp`) on this host. On a shared, noisy machine the CPU a run spends per task moves
//! much less than its wall time, so builds are compared by it too (BENCHMARKS.md).
//!
//! A process that exits during the run takes its CPU time with it: PostgreSQL's backends here
//! are the pools' connections, which live through the run.

use std::path::Path;

/// The processes whose CPU time is read, by their `comm` (`/proc/<pid>/comm`).
const POSTGRES_COMM: &str = "postgres";
const RABBITMQ_COMM: &str = "beam.smp";

/// CPU time (user and system), in clock ticks, of each group of processes at one instant;
/// `None` for a group with no process on this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CpuTicks {
    bench: u64,
    postgres: Option<u64>,
    rabbitmq: Option<u64>,
}

/// Milliseconds of CPU time per task of each group over a run; `None` for a group not on this
/// host (a remote PostgreSQL or RabbitMQ).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub(crate) struct CpuPerTask {
    /// This process: the dispatcher, the workers and the producer.
    pub(crate) bench: f64,
    /// Every PostgreSQL process.
    pub(crate) postgres: Option<f64>,
    /// RabbitMQ's Erlang VM.
    pub(crate) rabbitmq: Option<f64>,
}

impl CpuTicks {
    /// Reads the three groups' CPU time; `None` without `/proc` (not Linux).
    pub(crate) fn read() -> Option<CpuTicks> {
        let proc = Path::new("/proc");
        let bench = process_ticks(&proc.join("self"))?;
        let mut postgres = None;
        let mut rabbitmq = None;
        for entry in std::fs::read_dir(proc).ok()?.flatten() {
            let name = entry.file_name();
            if !name
                .to_str()
                .is_some_and(|name| name.bytes().all(|b| b.is_ascii_digit()))
            {
                continue;
            }
            // A process that ended meanwhile has nothing left to read: skipped.
            let Ok(comm) = std::fs::read_to_string(entry.path().join("comm")) else {
                continue;
            };
            let group = match comm.trim_end() {
                comm if comm.starts_with(POSTGRES_COMM) => &mut postgres,
                RABBITMQ_COMM => &mut rabbitmq,
                _ => continue,
            };
            if let Some(ticks) = process_ticks(&entry.path()) {
                *group = Some(group.unwrap_or(0) + ticks);
            }
        }
        Some(CpuTicks {
            bench,
            postgres,
            rabbitmq,
        })
    }

    /// Milliseconds per task of each group from `self` to `later`, over `tasks` tasks; `None`
    /// if the kernel's clock tick rate is unknown.
    pub(crate) fn per_task(&self, later: &CpuTicks, tasks: f64) -> Option<CpuPerTask> {
        Some(self.per_task_at(later, tasks, ticks_per_sec()?))
    }

    /// [`CpuTicks::per_task`] at `ticks_per_sec` clock ticks a second.
    fn per_task_at(&self, later: &CpuTicks, tasks: f64, ticks_per_sec: f64) -> CpuPerTask {
        let ms =
            |from: u64, to: u64| to.saturating_sub(from) as f64 * 1_000.0 / ticks_per_sec / tasks;
        let both = |from: Option<u64>, to: Option<u64>| Some(ms(from?, to?));
        CpuPerTask {
            bench: ms(self.bench, later.bench),
            postgres: both(self.postgres, later.postgres),
            rabbitmq: both(self.rabbitmq, later.rabbitmq),
        }
    }
}

/// The kernel's clock ticks per second (`sysconf(_SC_CLK_TCK)`), the unit of
/// `/proc/<pid>/stat`'s times.
fn ticks_per_sec() -> Option<f64> {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok()??;
    (ticks > 0).then_some(ticks as f64)
}

/// The user and system CPU time of the process whose `/proc` directory is `dir`.
fn process_ticks(dir: &Path) -> Option<u64> {
    stat_ticks(&std::fs::read_to_string(dir.join("stat")).ok()?)
}

/// `utime + stime` of a `/proc/<pid>/stat` line: its 14th and 15th fields. The second field,
/// the command in parentheses, may hold spaces and parentheses, so fields are counted from its
/// last `)`.
fn stat_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_and_system_time_are_read_after_the_command_whatever_it_holds() {
        let line = "4242 (tokio (rt) worker) S 1 4242 4242 0 -1 4194560 2913 0 0 0 \
                    1234 567 0 0 20 0 12 0 5001 1000000 800 18446744073709551615";
        assert_eq!(stat_ticks(line), Some(1234 + 567));
        assert_eq!(stat_ticks("4242 (cut short) S 1 2"), None);
        assert_eq!(stat_ticks("no command here"), None);
    }

    #[test]
    fn this_process_is_read_and_its_time_only_grows() {
        let before = CpuTicks::read().expect("/proc is there on Linux");
        // Spend some CPU so the counter can move.
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let after = CpuTicks::read().expect("/proc is there on Linux");
        assert!(after.bench >= before.bench);
        assert!(ticks_per_sec().is_some_and(|ticks| ticks > 0.0));
    }

    #[test]
    fn per_task_is_each_groups_time_over_the_tasks_and_unknown_where_a_group_is_missing() {
        let before = CpuTicks {
            bench: 100,
            postgres: Some(50),
            rabbitmq: None,
        };
        let after = CpuTicks {
            bench: 300,
            postgres: Some(150),
            rabbitmq: Some(10),
        };
        // 200 ticks at 100 a second over 1,000 tasks: 2 ms a task.
        assert_eq!(
            before.per_task_at(&after, 1_000.0, 100.0),
            CpuPerTask {
                bench: 2.0,
                postgres: Some(1.0),
                rabbitmq: None,
            }
        );
    }
}
