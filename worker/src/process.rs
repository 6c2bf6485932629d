//! Runs one step of a task: its argv as a process leading a process group of its own, its
//! output read line by line into the attempt's log, and stop orders (cancel, abort, lost lease,
//! task timeout) and the step's own timeout turned into signals to the whole group
//! (SPEC.md §6).
//!
//! A step never runs through a shell, and it sees none of the worker's environment beyond
//! [`INHERITED_ENV`].
//! This module does not substitute parameters into argv nor decide what a step's end means for
//! its task: the executor does.

use std::ffi::{OsStr, OsString};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use models::LogStream;
use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::{AccessFlags, Pid, access};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};

use crate::logs::{LogWriter, MAX_CHAR_BYTES};

/// The variables of the worker's own environment a step inherits (when the worker has them):
/// what programs need to be found and to read text, and nothing that could hold a secret.
pub const INHERITED_ENV: [&str; 7] = ["PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "USER"];

/// How long the step's output may stay open once its process group was killed.
///
/// Pipes close as soon as the group's processes are dead; only a process that left the group
/// (`setsid`) can keep them open, and it must not hold the step's end for long.
const OUTPUT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The size of the buffer a step's stdout or stderr is read through.
const PIPE_BUFFER_BYTES: usize = 64 * 1024;

/// One step to run: a program with its arguments, already substituted.
#[derive(Clone)]
pub struct StepCommand {
    /// The program (looked up in the step's `PATH`, its own or else the inherited one, when it
    /// has no `/`) and its arguments, each passed as is: no shell, no splitting, no expansion.
    pub argv: Vec<String>,
    /// The directory the step runs in.
    pub cwd: PathBuf,
    /// Variables set for the step, on top of the [`INHERITED_ENV`] ones (and overriding them).
    pub env: Vec<(String, String)>,
    /// How long the step may run before it is stopped as by a cancel and ends
    /// [`StepEnd::TimedOut`].
    pub timeout: Option<Duration>,
    /// How long a step has between SIGTERM and SIGKILL.
    pub grace: Duration,
}

impl std::fmt::Debug for StepCommand {
    // Step environment values may hold credentials: only their names are shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let env_names: Vec<&str> = self.env.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("StepCommand")
            .field("argv", &self.argv)
            .field("cwd", &self.cwd)
            .field("env", &env_names)
            .field("timeout", &self.timeout)
            .field("grace", &self.grace)
            .finish()
    }
}

/// An order to stop the running step, sent by the worker on a `watch` channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// A graceful cancel: SIGTERM, then SIGKILL after the grace period.
    Cancel,
    /// A hard abort: SIGKILL at once.
    Abort,
    /// The attempt's lease was lost, so another attempt may run the task: SIGKILL at once.
    LeaseLost,
    /// The task's own timeout passed: SIGTERM, then SIGKILL after the grace period.
    TaskTimeout,
}

impl Stop {
    /// Whether the order kills at once, with no grace period.
    fn is_hard(self) -> bool {
        matches!(self, Self::Abort | Self::LeaseLost)
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Cancel => "task canceled",
            Self::Abort => "task aborted",
            Self::LeaseLost => "lease lost",
            Self::TaskTimeout => "task timed out",
        }
    }
}

/// How a step ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepEnd {
    /// The program exited by itself with this code (0 is success).
    Exited {
        /// The exit code.
        code: i32,
    },
    /// The program was killed by a signal the worker did not send.
    Signaled {
        /// The signal's number.
        signal: i32,
    },
    /// The step's timeout passed and the worker stopped it.
    TimedOut,
    /// The worker stopped the step on this order.
    Stopped(Stop),
    /// The program could not be started.
    NotStarted {
        /// Why, naming the program or directory at fault.
        error: String,
    },
}

/// What [`run_step`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepRun {
    /// How the step ended.
    pub end: StepEnd,
    /// The step's process id, which is also its process group's id; `None` when nothing
    /// was started.
    pub pid: Option<u32>,
}

/// Runs `command` as step `step` of an attempt, writing its output to `log`, until its process
/// and every process of its group are gone.
///
/// Orders on `stop` are obeyed while the step runs: [`Stop::Cancel`] and
/// [`Stop::TaskTimeout`] send SIGTERM to the group, then SIGKILL after the grace period if the
/// step's process is still alive; [`Stop::Abort`] and [`Stop::LeaseLost`] send SIGKILL at once,
/// also during a grace period, and then name the step's end. The step's own timeout acts like a
/// cancel and ends [`StepEnd::TimedOut`]. Once the worker sent a signal, the end is its reason,
/// whatever the exit status. A dropped sender means no further orders.
///
/// When `stop` already holds an order on entry, nothing is started and the end is
/// [`StepEnd::Stopped`] with no pid: a step stopped before it began has nothing to clean up.
///
/// No orphans: once the step's process has exited, for whatever reason, success included, its
/// whole process group is killed, so background processes it left behind do not survive it;
/// the same happens when this future is dropped. A process that left the group (`setsid`)
/// escapes this; its hold on the output pipes is given up after a few seconds.
pub async fn run_step(
    command: &StepCommand,
    step: u32,
    log: &LogWriter,
    stop: &mut watch::Receiver<Option<Stop>>,
) -> StepRun {
    if let Some(order) = *stop.borrow_and_update() {
        return StepRun {
            end: StepEnd::Stopped(order),
            pid: None,
        };
    }
    let mut child = match spawn(command).await {
        Ok(child) => child,
        Err(error) => {
            return StepRun {
                end: StepEnd::NotStarted { error },
                pid: None,
            };
        }
    };
    let pid = child
        .id()
        .expect("a child that was not waited for has a process id");
    let group = GroupGuard {
        pgid: Pid::from_raw(i32::try_from(pid).expect("process ids fit in pid_t")),
    };
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let mut output = pin!(async {
        tokio::join!(
            read_lines(stdout, step, LogStream::Stdout, log),
            read_lines(stderr, step, LogStream::Stderr, log),
        )
    });
    let mut output_done = false;
    let mut supervised = pin!(supervise(&mut child, group.pgid, command, step, log, stop));
    let (status, reason) = loop {
        tokio::select! {
            ended = &mut supervised => break ended,
            _ = &mut output, if !output_done => output_done = true,
        }
    };
    // The step's process is gone: kill whatever it left in its group.
    drop(group);
    if !output_done
        && tokio::time::timeout(OUTPUT_DRAIN_TIMEOUT, &mut output)
            .await
            .is_err()
    {
        log.system(
            Some(step),
            &format!(
                "the step's output was still open {OUTPUT_DRAIN_TIMEOUT:?} after its process \
                 group was killed (a process left the group?): stopped reading it"
            ),
        );
    }
    let end = match (status, reason) {
        (Ok(_), Some(end)) => end,
        (Ok(status), None) => end_of(status),
        (Err(error), reason) => {
            log.system(Some(step), &format!("waiting for the step failed: {error}"));
            // The process was killed with its group above; its exit code is unknown.
            reason.unwrap_or(StepEnd::Exited { code: -1 })
        }
    };
    StepRun {
        end,
        pid: Some(pid),
    }
}

/// Whether any process (zombies included, until they are reaped) is still in process group
/// `pgid`.
pub fn group_alive(pgid: u32) -> bool {
    let Ok(pgid) = i32::try_from(pgid) else {
        return false;
    };
    // Group 0 means "the caller's own group" to killpg: never a step's.
    if pgid <= 0 {
        return false;
    }
    match killpg(Pid::from_raw(pgid), None) {
        Ok(()) => true,
        Err(Errno::ESRCH) => false,
        // EPERM: the group exists, owned by someone else.
        Err(_) => true,
    }
}

/// Starts `command` in a new process group, with a cleared environment and piped output, or
/// says why it could not.
async fn spawn(command: &StepCommand) -> Result<Child, String> {
    let Some(program) = command.argv.first() else {
        return Err("the step has no program: its argv is empty".to_owned());
    };
    let path = command
        .env
        .iter()
        .rev()
        .find(|(name, _)| name == "PATH")
        .map(|(_, value)| OsString::from(value))
        .or_else(|| std::env::var_os("PATH"));
    // Named by its full path, the program is started with `posix_spawn` (no copy of the
    // worker's page tables); named for a `PATH` lookup in a changed environment, std would
    // fork the whole worker to let `execvp` search.
    let found = path.and_then(|path| find_program(program, &path, &command.cwd));
    let spawned = match &found {
        Some(found) => step_process(command, found.as_os_str(), Some(program)).spawn(),
        None => step_process(command, program.as_ref(), None).spawn(),
    };
    let spawned = match spawned {
        // A file without a `#!` line: `execvp` runs it with `/bin/sh`, `posix_spawn` refuses
        // it. Started as before, through `execvp`.
        Err(error) if found.is_some() && error.raw_os_error() == Some(Errno::ENOEXEC as i32) => {
            step_process(command, program.as_ref(), None).spawn()
        }
        spawned => spawned,
    };
    match spawned {
        Ok(child) => Ok(child),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let cwd_is_dir = tokio::fs::metadata(&command.cwd)
                .await
                .is_ok_and(|metadata| metadata.is_dir());
            if cwd_is_dir {
                Err(format!("program {program:?} not found"))
            } else {
                Err(format!(
                    "cannot start {program:?}: working directory {} not found",
                    command.cwd.display()
                ))
            }
        }
        Err(error) => Err(format!("cannot start {program:?}: {error}")),
    }
}

/// The step's process, to be started: `program` (with `arg0` as its name, when given) and the
/// step's arguments, in a new process group, with a cleared environment and piped output.
fn step_process(command: &StepCommand, program: &OsStr, arg0: Option<&str>) -> Command {
    let mut process = Command::new(program);
    if let Some(arg0) = arg0 {
        process.arg0(arg0);
    }
    process
        .args(command.argv.iter().skip(1))
        .current_dir(&command.cwd)
        .env_clear();
    // The one place the worker's environment reaches a step, through a fixed list of names.
    for name in INHERITED_ENV {
        if let Some(value) = std::env::var_os(name) {
            process.env(name, value);
        }
    }
    process
        .envs(command.env.iter().map(|(name, value)| (name, value)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    process
}

/// Where `execvp` would find `program` in `path` for a step running in `cwd`: the first entry
/// holding an executable file of that name (an empty or relative entry is taken from `cwd`).
/// `None` when `program` names a path itself (it has a `/`), when no entry holds it, or when
/// the first that does is relative (`cwd` is): the spawn then looks it up as before, from the
/// step's directory, and reports what it finds.
fn find_program(program: &str, path: &OsStr, cwd: &Path) -> Option<PathBuf> {
    if program.is_empty() || program.contains('/') {
        return None;
    }
    for entry in std::env::split_paths(path) {
        let candidate = cwd.join(entry).join(program);
        let executable = candidate
            .metadata()
            .is_ok_and(|metadata| metadata.is_file())
            && access(&candidate, AccessFlags::X_OK).is_ok();
        if executable {
            // A relative path would be taken from the step's directory a second time.
            return Some(candidate).filter(|candidate| candidate.is_absolute());
        }
    }
    None
}

/// Waits for the step's process to exit while obeying stop orders and the step's timeout;
/// returns its exit status and, when the worker stopped it, the end to report.
async fn supervise(
    child: &mut Child,
    pgid: Pid,
    command: &StepCommand,
    step: u32,
    log: &LogWriter,
    stop: &mut watch::Receiver<Option<Stop>>,
) -> (std::io::Result<ExitStatus>, Option<StepEnd>) {
    let started = Instant::now();
    let step_deadline = command.timeout.map(|timeout| started + timeout);
    let grace = command.grace;
    let mut reason: Option<StepEnd> = None;
    let mut kill_at: Option<Instant> = None;
    let mut orders_open = true;
    loop {
        tokio::select! {
            biased;
            status = child.wait() => return (status, reason),
            changed = stop.changed(), if orders_open => {
                if changed.is_err() {
                    orders_open = false;
                    continue;
                }
                let Some(order) = *stop.borrow_and_update() else {
                    continue;
                };
                let already_killed = matches!(reason, Some(StepEnd::Stopped(earlier)) if earlier.is_hard());
                if order.is_hard() && !already_killed {
                    signal_group(pgid, Signal::SIGKILL);
                    log.system(
                        Some(step),
                        &format!("{}: SIGKILL sent to the step's process group", order.describe()),
                    );
                    reason = Some(StepEnd::Stopped(order));
                    kill_at = None;
                } else if !order.is_hard() && reason.is_none() {
                    signal_group(pgid, Signal::SIGTERM);
                    log.system(
                        Some(step),
                        &format!(
                            "{}: SIGTERM sent to the step's process group, SIGKILL after {grace:?}",
                            order.describe()
                        ),
                    );
                    reason = Some(StepEnd::Stopped(order));
                    kill_at = Some(Instant::now() + grace);
                }
            }
            () = sleep_until(step_deadline.unwrap_or(started)),
                if reason.is_none() && step_deadline.is_some() =>
            {
                signal_group(pgid, Signal::SIGTERM);
                let timeout = command.timeout.unwrap_or_default();
                log.system(
                    Some(step),
                    &format!(
                        "step timed out after {timeout:?}: SIGTERM sent to its process group, \
                         SIGKILL after {grace:?}"
                    ),
                );
                reason = Some(StepEnd::TimedOut);
                kill_at = Some(Instant::now() + grace);
            }
            () = sleep_until(kill_at.unwrap_or(started)), if kill_at.is_some() => {
                signal_group(pgid, Signal::SIGKILL);
                log.system(
                    Some(step),
                    &format!("grace period of {grace:?} over: SIGKILL sent to the step's process group"),
                );
                kill_at = None;
            }
        }
    }
}

/// Sends `signal` to every process of group `pgid`; a group already gone is not an error.
fn signal_group(pgid: Pid, signal: Signal) {
    match killpg(pgid, signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(error) => {
            tracing::warn!(
                "cannot send {signal} to process group {pgid}: {error}",
                signal = signal.as_str()
            );
        }
    }
}

/// Kills the step's process group when dropped: on the normal path right after the step's
/// process was reaped, and when `run_step` is dropped before the step ended.
///
/// After the leader was reaped, its id stays reserved while any process of its group remains;
/// once none does, the kill finds no group (ESRCH), barring the id's reuse for a new group in
/// the instant between reaping and killing.
struct GroupGuard {
    pgid: Pid,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        signal_group(self.pgid, Signal::SIGKILL);
    }
}

/// The end of a step whose process exited by itself.
fn end_of(status: ExitStatus) -> StepEnd {
    match (status.code(), status.signal()) {
        (Some(code), _) => StepEnd::Exited { code },
        (None, Some(signal)) => StepEnd::Signaled { signal },
        // Neither happens for a process that was waited for without WUNTRACED.
        (None, None) => StepEnd::Exited { code: -1 },
    }
}

/// Reads `pipe` line by line into `log` until it closes.
///
/// Memory stays bounded: of a line longer than the log keeps, only a few bytes more than the
/// bound are held (so the writer marks it truncated), and the rest is skipped up to its newline.
async fn read_lines<R: AsyncRead + Unpin>(pipe: R, step: u32, stream: LogStream, log: &LogWriter) {
    let keep = log.limits().max_line_bytes.saturating_add(MAX_CHAR_BYTES);
    let mut reader = BufReader::with_capacity(PIPE_BUFFER_BYTES, pipe);
    let mut line: Vec<u8> = Vec::new();
    loop {
        let buffer = match reader.fill_buf().await {
            Ok(buffer) => buffer,
            Err(error) => {
                log.system(
                    Some(step),
                    &format!("reading the step's {}: {error}", stream.as_str()),
                );
                break;
            }
        };
        if buffer.is_empty() {
            break;
        }
        let newline = buffer.iter().position(|&byte| byte == b'\n');
        let chunk = &buffer[..newline.unwrap_or(buffer.len())];
        let room = keep.saturating_sub(line.len());
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let consumed = chunk.len() + usize::from(newline.is_some());
        reader.consume(consumed);
        if newline.is_some() {
            log.line(Some(step), stream, &line);
            line.clear();
        }
    }
    if !line.is_empty() {
        log.line(Some(step), stream, &line);
    }
}

#[cfg(test)]
mod tests;
