use std::path::Path;
use std::time::Duration;

use models::LogStream;
use models::wire::LogRecord;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::{
    INHERITED_ENV, StepCommand, StepEnd, StepRun, Stop, find_program, group_alive, run_step,
};
use crate::logs::{LogLimits, LogWriter};

const GRACE: Duration = Duration::from_millis(300);

fn command(argv: &[&str]) -> StepCommand {
    StepCommand {
        argv: argv.iter().map(|arg| (*arg).to_owned()).collect(),
        cwd: std::env::temp_dir(),
        env: Vec::new(),
        timeout: None,
        grace: GRACE,
    }
}

/// A step's run with the lines it logged, under default limits and with no stop order.
struct Ran {
    run: StepRun,
    records: Vec<LogRecord>,
}

impl Ran {
    fn texts(&self, stream: LogStream) -> Vec<&str> {
        self.records
            .iter()
            .filter(|record| record.stream == stream)
            .map(|record| record.text.as_str())
            .collect()
    }
}

async fn run(command: &StepCommand) -> Ran {
    let (_stop_tx, mut stop) = watch::channel(None);
    run_with(command, LogLimits::default(), &mut stop).await
}

async fn run_with(
    command: &StepCommand,
    limits: LogLimits,
    stop: &mut watch::Receiver<Option<Stop>>,
) -> Ran {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let log = LogWriter::new(limits, tx);
    let run = run_step(command, 7, &log, stop).await;
    drop(log);
    let mut records = Vec::new();
    while let Some(record) = rx.recv().await {
        records.push(record);
    }
    Ran { run, records }
}

/// Waits until the group has no process left (zombies are reaped by init, which may take a
/// moment here), failing after a bound.
async fn assert_group_gone(pgid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while group_alive(pgid) {
        assert!(
            Instant::now() < deadline,
            "process group {pgid} still has processes 10s after the step ended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn pid(run: &StepRun) -> u32 {
    run.pid.expect("the step was started")
}

#[tokio::test]
async fn exit_codes_are_reported() {
    assert_eq!(
        run(&command(&["/bin/true"])).await.run.end,
        StepEnd::Exited { code: 0 }
    );
    let ran = run(&command(&["/bin/sh", "-c", "exit 3"])).await;
    assert_eq!(ran.run.end, StepEnd::Exited { code: 3 });
    let ran = run(&command(&["/bin/sh", "-c", "kill -KILL $$"])).await;
    assert_eq!(ran.run.end, StepEnd::Signaled { signal: 9 });
}

#[tokio::test]
async fn output_lines_arrive_in_order_per_stream_with_the_step() {
    let ran = run(&command(&[
        "/bin/sh",
        "-c",
        "echo one; echo uno >&2; echo two; echo dos >&2; printf 'no newline'",
    ]))
    .await;
    assert_eq!(ran.run.end, StepEnd::Exited { code: 0 });
    assert_eq!(ran.texts(LogStream::Stdout), ["one", "two", "no newline"]);
    assert_eq!(ran.texts(LogStream::Stderr), ["uno", "dos"]);
    assert!(ran.records.iter().all(|record| record.step == Some(7)));
    assert!(ran.texts(LogStream::System).is_empty());
}

#[tokio::test]
async fn a_long_line_without_newline_is_cut_and_marked() {
    let limits = LogLimits {
        max_line_bytes: 1000,
        ..LogLimits::default()
    };
    let (_stop_tx, mut stop) = watch::channel(None);
    let step = command(&[
        "/bin/sh",
        "-c",
        "head -c 300000 /dev/zero | tr '\\0' a; echo; echo short",
    ]);
    let ran = run_with(&step, limits, &mut stop).await;
    let lines: Vec<_> = ran
        .records
        .iter()
        .map(|record| (record.text.len(), record.truncated))
        .collect();
    assert_eq!(lines, [(1000, true), (5, false)]);
}

#[tokio::test]
async fn the_environment_holds_only_inherited_and_given_variables() {
    let mut step = command(&["/usr/bin/env"]);
    step.env = vec![
        (
            "BATON_STEP_VAR".to_owned(),
            "a value with spaces".to_owned(),
        ),
        ("HOME".to_owned(), "/overridden".to_owned()),
    ];
    let ran = run(&step).await;
    assert_eq!(ran.run.end, StepEnd::Exited { code: 0 });
    let mut seen: Vec<(&str, &str)> = ran
        .texts(LogStream::Stdout)
        .into_iter()
        .map(|line| line.split_once('=').expect("env prints NAME=value"))
        .collect();
    seen.sort_unstable();
    let mut expected: Vec<(String, String)> = INHERITED_ENV
        .iter()
        .filter(|name| **name != "HOME")
        .filter_map(|name| Some(((*name).to_owned(), std::env::var(name).ok()?)))
        .collect();
    expected.push((
        "BATON_STEP_VAR".to_owned(),
        "a value with spaces".to_owned(),
    ));
    expected.push(("HOME".to_owned(), "/overridden".to_owned()));
    expected.sort_unstable();
    let expected: Vec<(&str, &str)> = expected
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    // Whatever else the test process has (cargo's variables, the harness's) is not there.
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn argv_elements_reach_the_program_literally() {
    let dir = tempfile::tempdir().expect("temp dir");
    let touched = dir.path().join("touched");
    let removed = dir.path().join("kept");
    std::fs::write(&removed, "still here").expect("write a file");
    let substitution = format!("$(touch {})", touched.display());
    let chained = format!("; rm -f {}", removed.display());
    let step = command(&[
        "/usr/bin/printf",
        "%s\\n",
        "-n",
        &substitution,
        &chained,
        "`touch x`",
        "*",
        "a b",
    ]);
    let ran = run(&step).await;
    assert_eq!(ran.run.end, StepEnd::Exited { code: 0 });
    assert_eq!(
        ran.texts(LogStream::Stdout),
        [
            "-n",
            substitution.as_str(),
            chained.as_str(),
            "`touch x`",
            "*",
            "a b"
        ]
    );
    assert!(!touched.exists());
    assert!(removed.exists());

    let ran = run(&command(&["/bin/echo", "-e", "a\\tb", ";", "ls"])).await;
    // A leading option stays an option of the program itself, never of a shell.
    assert_eq!(ran.texts(LogStream::Stdout), ["a\tb ; ls"]);
}

#[tokio::test]
async fn a_missing_program_is_not_started() {
    let ran = run(&command(&["/nonexistent/baton-program", "arg"])).await;
    assert_eq!(
        ran.run,
        StepRun {
            end: StepEnd::NotStarted {
                error: "program \"/nonexistent/baton-program\" not found".to_owned()
            },
            pid: None,
        }
    );
    let ran = run(&command(&["baton-no-such-program-on-path"])).await;
    assert_eq!(
        ran.run.end,
        StepEnd::NotStarted {
            error: "program \"baton-no-such-program-on-path\" not found".to_owned()
        }
    );
    let ran = run(&command(&[])).await;
    assert!(matches!(ran.run.end, StepEnd::NotStarted { error } if error.contains("empty")));
}

#[tokio::test]
async fn a_missing_working_directory_is_named() {
    let mut step = command(&["/bin/true"]);
    step.cwd = Path::new("/nonexistent/baton-dir").to_owned();
    let ran = run(&step).await;
    assert_eq!(
        ran.run.end,
        StepEnd::NotStarted {
            error: "cannot start \"/bin/true\": working directory /nonexistent/baton-dir not found"
                .to_owned()
        }
    );
}

#[tokio::test]
async fn a_program_on_path_is_found() {
    let ran = run(&command(&["echo", "found"])).await;
    assert_eq!(ran.run.end, StepEnd::Exited { code: 0 });
    assert_eq!(ran.texts(LogStream::Stdout), ["found"]);
}

/// Writes an executable shell script `name` into `dir` that prints `text`.
fn script(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\necho {text}\n")).expect("write a script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

#[test]
fn a_program_is_found_as_execvp_would_find_it() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().expect("temp dir");
    let root = root.path();
    for dir in ["plain", "dir", "exec", "cwd/rel"] {
        std::fs::create_dir_all(root.join(dir)).expect("make a directory");
    }
    let plain = root.join("plain/tool");
    std::fs::write(&plain, "#!/bin/sh\n").expect("write a file");
    std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    std::fs::create_dir(root.join("dir/tool")).expect("make a directory");
    let found = script(&root.join("exec"), "tool", "exec");
    let cwd = root.join("cwd");
    let path = |entries: &[&Path]| std::env::join_paths(entries).expect("a PATH");

    // Neither a file without execute permission nor a directory is the program.
    let entries = path(&[&root.join("plain"), &root.join("dir"), &root.join("exec")]);
    assert_eq!(find_program("tool", &entries, &cwd), Some(found.clone()));
    // A relative entry, and an empty one, are taken from the step's working directory.
    let relative = script(&cwd.join("rel"), "tool", "relative");
    assert_eq!(
        find_program("tool", &path(&[Path::new("rel"), &root.join("exec")]), &cwd),
        Some(relative)
    );
    let here = script(&cwd, "tool", "here");
    assert_eq!(
        find_program("tool", &path(&[Path::new(""), &root.join("exec")]), &cwd),
        Some(here)
    );
    // A program named by a path, an empty name or one found nowhere is left to the spawn.
    assert_eq!(find_program("./tool", &entries, &cwd), None);
    assert_eq!(
        find_program(found.to_str().expect("UTF-8"), &entries, &cwd),
        None
    );
    assert_eq!(find_program("", &entries, &cwd), None);
    assert_eq!(find_program("baton-none", &entries, &cwd), None);
    // Found through a relative working directory: left to the spawn, which would otherwise
    // take the relative path from the step's directory a second time.
    let relative = tempfile::tempdir_in(".").expect("temp dir here");
    script(relative.path(), "tool", "relative");
    let here = std::env::current_dir().expect("the current directory");
    let relative_path = relative
        .path()
        .strip_prefix(&here)
        .unwrap_or(relative.path());
    assert!(relative_path.is_relative(), "{}", relative_path.display());
    assert_eq!(
        find_program("tool", &path(&[Path::new("")]), relative_path),
        None
    );
    assert_eq!(
        find_program("tool", &path(&[Path::new("")]), &here.join(relative_path)),
        Some(here.join(relative_path).join("tool"))
    );
}

#[tokio::test]
async fn a_program_found_on_path_keeps_its_name_as_argv0() {
    let step = command(&["sh", "-c", "tr '\\0' ' ' < /proc/$$/cmdline"]);
    let ran = run(&step).await;
    assert_eq!(ran.run.end, StepEnd::Exited { code: 0 });
    assert_eq!(
        ran.texts(LogStream::Stdout),
        ["sh -c tr '\\0' ' ' < /proc/$$/cmdline "]
    );
}

#[tokio::test]
async fn the_steps_own_path_is_searched() {
    let dir = tempfile::tempdir().expect("temp dir");
    script(dir.path(), "baton-step-tool", "found on the step PATH");
    let mut step = command(&["baton-step-tool"]);
    let path = format!("{}:/usr/bin:/bin", dir.path().display());
    step.env = vec![("PATH".to_owned(), path)];
    let ran = run(&step).await;
    assert_eq!(ran.run.end, StepEnd::Exited { code: 0 });
    assert_eq!(ran.texts(LogStream::Stdout), ["found on the step PATH"]);
    // Without it, the worker's PATH does not hold the tool.
    let ran = run(&command(&["baton-step-tool"])).await;
    assert_eq!(
        ran.run.end,
        StepEnd::NotStarted {
            error: "program \"baton-step-tool\" not found".to_owned()
        }
    );
}

#[tokio::test]
async fn a_file_without_a_shebang_found_on_path_runs_with_sh_as_execvp_runs_it() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("baton-plain-script");
    std::fs::write(&file, "echo run by sh\n").expect("write a script");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut step = command(&["baton-plain-script"]);
    step.env = vec![(
        "PATH".to_owned(),
        format!("{}:/usr/bin:/bin", dir.path().display()),
    )];
    let ran = run(&step).await;
    assert_eq!(ran.run.end, StepEnd::Exited { code: 0 });
    assert_eq!(ran.texts(LogStream::Stdout), ["run by sh"]);
}

#[tokio::test]
async fn a_step_timeout_stops_the_group() {
    let mut step = command(&["/bin/sh", "-c", "sleep 1000 & sleep 1000"]);
    step.timeout = Some(Duration::from_millis(200));
    let started = Instant::now();
    let ran = run(&step).await;
    assert_eq!(ran.run.end, StepEnd::TimedOut);
    assert!(started.elapsed() >= Duration::from_millis(200));
    // SIGTERM kills both sleeps: no SIGKILL was needed.
    assert_eq!(
        ran.texts(LogStream::System),
        ["step timed out after 200ms: SIGTERM sent to its process group, SIGKILL after 300ms"]
    );
    assert_group_gone(pid(&ran.run)).await;
}

#[tokio::test]
async fn a_cancel_kills_a_step_ignoring_sigterm_after_the_grace() {
    let step = command(&["/bin/sh", "-c", "trap '' TERM; echo ready; sleep 1000"]);
    let (stop_tx, mut stop) = watch::channel(None);
    let started = Instant::now();
    let canceler = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop_tx.send(Some(Stop::Cancel)).expect("the step listens");
    };
    let (ran, ()) = tokio::join!(run_with(&step, LogLimits::default(), &mut stop), canceler);
    let elapsed = started.elapsed();
    assert_eq!(ran.run.end, StepEnd::Stopped(Stop::Cancel));
    assert!(elapsed >= Duration::from_millis(100) + GRACE, "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    assert_eq!(ran.texts(LogStream::Stdout), ["ready"]);
    assert_eq!(
        ran.texts(LogStream::System),
        [
            "task canceled: SIGTERM sent to the step's process group, SIGKILL after 300ms",
            "grace period of 300ms over: SIGKILL sent to the step's process group",
        ]
    );
    assert_group_gone(pid(&ran.run)).await;
}

#[tokio::test]
async fn an_abort_kills_the_group_at_once() {
    let mut step = command(&["/bin/sh", "-c", "trap '' TERM; sleep 1000 & sleep 1000"]);
    step.grace = Duration::from_secs(60);
    let (stop_tx, mut stop) = watch::channel(None);
    let aborter = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop_tx.send(Some(Stop::Abort)).expect("the step listens");
    };
    let started = Instant::now();
    let (ran, ()) = tokio::join!(run_with(&step, LogLimits::default(), &mut stop), aborter);
    assert_eq!(ran.run.end, StepEnd::Stopped(Stop::Abort));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_group_gone(pid(&ran.run)).await;
}

#[tokio::test]
async fn an_abort_during_the_grace_period_kills_at_once() {
    let mut step = command(&["/bin/sh", "-c", "trap '' TERM; sleep 1000"]);
    step.grace = Duration::from_secs(60);
    let (stop_tx, mut stop) = watch::channel(None);
    let orders = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop_tx.send(Some(Stop::Cancel)).expect("the step listens");
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop_tx
            .send(Some(Stop::LeaseLost))
            .expect("the step listens");
    };
    let started = Instant::now();
    let (ran, ()) = tokio::join!(run_with(&step, LogLimits::default(), &mut stop), orders);
    assert_eq!(ran.run.end, StepEnd::Stopped(Stop::LeaseLost));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_group_gone(pid(&ran.run)).await;
}

#[tokio::test]
async fn a_successful_step_leaves_no_process_behind() {
    let step = command(&["/bin/sh", "-c", "sleep 1000 & echo done; exit 0"]);
    let started = Instant::now();
    let ran = run(&step).await;
    assert_eq!(ran.run.end, StepEnd::Exited { code: 0 });
    assert_eq!(ran.texts(LogStream::Stdout), ["done"]);
    // The background sleep held stdout open: the step ended because it was killed.
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_group_gone(pid(&ran.run)).await;
}

#[tokio::test]
async fn an_order_given_before_the_start_starts_nothing() {
    let (_stop_tx, mut stop) = watch::channel(Some(Stop::Abort));
    let ran = run_with(&command(&["/bin/true"]), LogLimits::default(), &mut stop).await;
    assert_eq!(
        ran.run,
        StepRun {
            end: StepEnd::Stopped(Stop::Abort),
            pid: None,
        }
    );
}

#[tokio::test]
async fn a_dropped_order_sender_lets_the_step_finish() {
    let (stop_tx, mut stop) = watch::channel(None);
    drop(stop_tx);
    let step = command(&["/bin/sh", "-c", "sleep 0.2; exit 4"]);
    let ran = run_with(&step, LogLimits::default(), &mut stop).await;
    assert_eq!(ran.run.end, StepEnd::Exited { code: 4 });
}

#[tokio::test]
async fn dropping_the_run_kills_the_group() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pid_file = dir.path().join("pid");
    let script = format!("echo $$ > {}; sleep 1000 & sleep 1000", pid_file.display());
    let step = command(&["/bin/sh", "-c", &script]);
    let (_stop_tx, mut stop) = watch::channel(None);
    let (tx, _rx) = mpsc::unbounded_channel();
    let log = LogWriter::new(LogLimits::default(), tx);
    let ran = tokio::time::timeout(
        Duration::from_millis(300),
        run_step(&step, 0, &log, &mut stop),
    )
    .await;
    assert!(ran.is_err(), "the step cannot end by itself");
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .expect("the step wrote its pid")
        .trim()
        .parse()
        .expect("a pid");
    assert_group_gone(pid).await;
}

#[test]
fn group_alive_follows_a_group() {
    use std::os::unix::process::CommandExt;

    let mut sleeper = std::process::Command::new("/bin/sleep")
        .arg("1000")
        .process_group(0)
        .spawn()
        .expect("start sleep");
    assert!(group_alive(sleeper.id()));
    sleeper.kill().expect("kill sleep");
    sleeper.wait().expect("reap sleep");
    assert!(!group_alive(sleeper.id()));
    // 0 would be the caller's own group, and ids beyond pid_t are no group.
    assert!(!group_alive(0));
    assert!(!group_alive(u32::MAX));
}

#[test]
fn the_debug_form_hides_environment_values() {
    let mut step = command(&["/bin/true"]);
    step.env = vec![("TOKEN".to_owned(), "s3cr3t".to_owned())];
    let shown = format!("{step:?}");
    assert!(shown.contains("TOKEN"));
    assert!(!shown.contains("s3cr3t"));
}
