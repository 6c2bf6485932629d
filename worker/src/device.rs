//! Devices: where a task's work runs. The [`LocalDevice`] runs the function's steps as argv
//! subprocesses in the attempt's workspace (the default); [`Handlers`] runs in-process Rust
//! functions registered by name, as Celery users register tasks. Both report the same way:
//! step states, log lines, measurements and files under `BATON_OUTPUTS`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{SubsecRound, Utc};
use futures::future::BoxFuture;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use models::wire::{Assignment, DeviceInfo, Sample};
use models::{Attempt, JsonObject, StepState, StepStatus, TaskErrorType, TaskKey, Timestamp};

use crate::logs::LogWriter;
use crate::process::{self, StepCommand, StepEnd, Stop};
use crate::template::{self, Bindings};
use crate::workspace::WorkspaceHandle;

/// Everything a device gets to run one attempt.
pub struct Job {
    /// The task.
    pub task_key: TaskKey,
    /// The attempt.
    pub attempt: Attempt,
    /// What to run.
    pub assignment: Arc<Assignment>,
    /// The attempt's workspace: its `work/` directory is where steps run.
    pub workspace: WorkspaceHandle,
    /// The `BATON_*` variables of the attempt's workspace; none when the workspace is made on
    /// demand (see [`Device::needs_workspace`]).
    pub env: Vec<(String, String)>,
    /// The values of the steps' placeholders.
    pub bindings: Bindings,
    /// The attempt's log.
    pub log: LogWriter,
    /// Where in-process handlers send measurements (subprocesses append to
    /// `BATON_MEASUREMENTS`).
    pub samples: UnboundedSender<Sample>,
    /// Stop orders: cancel, abort, lost lease, task timeout.
    pub stop: watch::Receiver<Option<Stop>>,
    /// How long a canceled step has between SIGTERM and SIGKILL.
    pub grace: Duration,
}

/// How a device's run of an attempt ended.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceRun {
    /// The state of each step.
    pub steps: Vec<StepState>,
    /// The end.
    pub end: RunEnd,
    /// Output data the device returns (LuciHub's output JSON).
    pub output: serde_json::Value,
}

/// The end of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// Every step succeeded; the outputs are to be collected.
    Succeeded,
    /// A step failed.
    Failed {
        /// Why, in baton's words.
        error_type: TaskErrorType,
        /// What happened.
        message: String,
        /// Whether another attempt may succeed.
        retryable: bool,
    },
    /// An order stopped the run.
    Stopped(Stop),
}

/// A place where tasks run.
pub trait Device: Send + Sync + 'static {
    /// What the worker tells the dispatcher about it.
    fn info(&self) -> DeviceInfo;

    /// Runs `job` to its end.
    fn run(&self, job: Job) -> BoxFuture<'_, DeviceRun>;

    /// Whether the attempt's workspace must be made before [`Device::run`] starts (the
    /// default). A device answering `false`, such as in-process [`Handlers`], runs tasks
    /// without input or output files with a workspace made only if it asks for its
    /// directory ([`WorkspaceHandle::work_dir`]): such an attempt that needs no file makes
    /// none.
    fn needs_workspace(&self) -> bool {
        true
    }
}

/// Finds the devices a worker has now (LuciHub's device scanner); the worker asks again every
/// scan interval and publishes the list with its heartbeats.
pub trait DeviceScanner: Send + Sync + 'static {
    /// The active devices.
    fn scan(&self) -> BoxFuture<'_, Vec<Arc<dyn Device>>>;
}

fn now() -> Timestamp {
    Utc::now().trunc_subsecs(6)
}

/// Runs steps as subprocesses: each an argv, never through a shell, in its own process group.
#[derive(Clone, Debug)]
pub struct LocalDevice {
    id: String,
}

impl LocalDevice {
    /// The local device, named `id`.
    pub fn new(id: impl Into<String>) -> LocalDevice {
        LocalDevice { id: id.into() }
    }
}

impl Default for LocalDevice {
    fn default() -> Self {
        LocalDevice::new("local")
    }
}

impl Device for LocalDevice {
    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            id: self.id.as_str().into(),
            device_type: "local".to_owned(),
            input_type: None,
            parameter_schema: None,
        }
    }

    fn run(&self, job: Job) -> BoxFuture<'_, DeviceRun> {
        Box::pin(run_steps(job))
    }
}

/// The steps of `job`, in order; after the first that does not succeed, the rest are SKIPPED.
async fn run_steps(mut job: Job) -> DeviceRun {
    let steps = &job.assignment.steps;
    let mut states = waiting_states(steps);
    // Made before the run (this device needs it): no file system call here.
    let cwd = match job.workspace.work_dir().await {
        Ok(dir) => dir,
        Err(error) => {
            let message = format!("the task's workspace: {error}");
            job.log.system(None, &message);
            return failed_before_steps(states, TaskErrorType::Internal, message, true);
        }
    };
    // Every placeholder is resolved before anything runs.
    let mut commands = Vec::with_capacity(steps.len());
    for (index, step) in steps.iter().enumerate() {
        match template::substitute(&step.command, &job.bindings) {
            Ok(argv) => commands.push(argv),
            Err(problem) => {
                let message = format!("step `{}`: {problem}", step.name);
                job.log.system(Some(states[index].index), &message);
                states[index].status = StepStatus::Exception;
                return failed_before_steps(states, TaskErrorType::Execution, message, false);
            }
        }
    }
    for (index, argv) in commands.into_iter().enumerate() {
        let step_index = states[index].index;
        let name = states[index].name.clone();
        let command = StepCommand {
            argv,
            cwd: cwd.clone(),
            env: job.env.clone(),
            timeout: job.assignment.steps[index]
                .timeout_secs
                .map(Duration::from_secs),
            grace: job.grace,
        };
        // A stop ordered before the step starts: it never starts, nor do the next ones.
        if let Some(order) = *job.stop.borrow() {
            skip_from(&mut states, index);
            return DeviceRun {
                steps: states,
                end: RunEnd::Stopped(order),
                output: serde_json::Value::Null,
            };
        }
        states[index].status = StepStatus::Running;
        states[index].start_date = Some(now());
        job.log
            .system(Some(step_index), &format!("step `{name}` started"));
        let run = process::run_step(&command, step_index, &job.log, &mut job.stop).await;
        states[index].end_date = Some(now());
        let end = match run.end {
            StepEnd::Exited { code: 0 } => {
                states[index].status = StepStatus::Succeeded;
                states[index].exit_code = Some(0);
                continue;
            }
            StepEnd::Exited { code } => {
                states[index].status = StepStatus::Failed;
                states[index].exit_code = Some(code);
                RunEnd::Failed {
                    error_type: TaskErrorType::Execution,
                    message: format!("step `{name}` exited with status {code}"),
                    retryable: false,
                }
            }
            StepEnd::Signaled { signal } => {
                // Killed by something else than baton (the OOM killer, an operator): it may
                // well pass on another attempt.
                states[index].status = StepStatus::Failed;
                RunEnd::Failed {
                    error_type: TaskErrorType::Execution,
                    message: format!("step `{name}` was killed by signal {signal}"),
                    retryable: true,
                }
            }
            StepEnd::TimedOut => {
                states[index].status = StepStatus::Aborted;
                RunEnd::Failed {
                    error_type: TaskErrorType::Timeout,
                    message: format!("step `{name}` ran out of time"),
                    retryable: false,
                }
            }
            StepEnd::Stopped(order) => {
                states[index].status = if run.pid.is_some() {
                    StepStatus::Aborted
                } else {
                    StepStatus::Skipped
                };
                RunEnd::Stopped(order)
            }
            StepEnd::NotStarted { error } => {
                states[index].status = StepStatus::Exception;
                let message = format!("step `{name}` could not start: {error}");
                job.log.system(Some(step_index), &message);
                RunEnd::Failed {
                    error_type: TaskErrorType::Execution,
                    message,
                    retryable: false,
                }
            }
        };
        skip_from(&mut states, index + 1);
        return DeviceRun {
            steps: states,
            end,
            output: serde_json::Value::Null,
        };
    }
    DeviceRun {
        steps: states,
        end: RunEnd::Succeeded,
        output: serde_json::Value::Null,
    }
}

/// A run that failed before its first step: the steps not yet decided are SKIPPED.
fn failed_before_steps(
    mut states: Vec<StepState>,
    error_type: TaskErrorType,
    message: String,
    retryable: bool,
) -> DeviceRun {
    skip_from(&mut states, 0);
    DeviceRun {
        steps: states,
        end: RunEnd::Failed {
            error_type,
            message,
            retryable,
        },
        output: serde_json::Value::Null,
    }
}

/// The states of `steps` before any runs: all WAITING.
pub(crate) fn waiting_states(steps: &[models::Step]) -> Vec<StepState> {
    steps
        .iter()
        .enumerate()
        .map(|(index, step)| StepState {
            index: u32::try_from(index).unwrap_or(u32::MAX),
            name: step.name.clone(),
            status: StepStatus::Waiting,
            exit_code: None,
            start_date: None,
            end_date: None,
        })
        .collect()
}

/// Marks every step from `first` on that has not run as SKIPPED.
fn skip_from(states: &mut [StepState], first: usize) {
    for state in states.iter_mut().skip(first) {
        if state.status == StepStatus::Waiting {
            state.status = StepStatus::Skipped;
        }
    }
}

/// What an in-process handler gets: the task's parameters and files, a log, measurements and
/// a cancellation token.
#[derive(Clone)]
pub struct HandlerContext {
    /// The task.
    pub task_key: TaskKey,
    /// The attempt.
    pub attempt: Attempt,
    /// The parameters (the function's defaults overridden by the task's).
    pub parameters: JsonObject,
    /// The attempt's workspace (see [`HandlerContext::work_dir`]).
    workspace: WorkspaceHandle,
    /// Each input's path, by identifier (a directory for a `multiple` input).
    pub inputs: HashMap<String, PathBuf>,
    /// Where each output is to be written, by identifier: a file, or a directory for a
    /// `multiple` output. A PERFORMANCE output is a file holding the number.
    pub outputs: HashMap<String, PathBuf>,
    /// Cancelled when the task is canceled, aborted, timed out or its lease is lost; a handler
    /// that does not return within the grace period is dropped.
    pub cancelled: CancellationToken,
    log: LogWriter,
    samples: UnboundedSender<Sample>,
}

impl HandlerContext {
    /// The task's scratch directory (its workspace's `work/`), emptied or removed when the
    /// attempt is over (kept, for a failed attempt, with `keep_failed`). A task without input
    /// or output files gets its workspace made on the first call, so a handler that never asks
    /// makes no file.
    pub async fn work_dir(&self) -> Result<PathBuf, String> {
        self.workspace
            .work_dir()
            .await
            .map_err(|error| format!("the task's workspace: {error}"))
    }

    /// Writes a line to the task's log (stdout).
    pub fn log(&self, text: &str) {
        self.log
            .line(Some(0), models::LogStream::Stdout, text.as_bytes());
    }

    /// Records a sample of measurement `channel` at device time `t`.
    pub fn measure(&self, channel: &str, t: f64, value: f64) {
        let _ = self.samples.send(Sample {
            channel: channel.to_owned(),
            t,
            value,
            timestamp: now(),
        });
    }

    /// Writes the value of PERFORMANCE output `identifier`.
    pub async fn set_performance(&self, identifier: &str, value: f64) -> Result<(), String> {
        let Some(path) = self.outputs.get(identifier) else {
            return Err(format!("output `{identifier}` is not declared"));
        };
        tokio::fs::write(path, value.to_string())
            .await
            .map_err(|error| format!("writing output `{identifier}`: {error}"))
    }
}

/// An in-process handler: an async function of its context that succeeds or fails with a
/// message.
pub type Handler =
    Arc<dyn Fn(HandlerContext) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// In-process handlers by function name.
#[derive(Clone, Default)]
pub struct Handlers {
    handlers: HashMap<String, Handler>,
}

impl Handlers {
    /// Registers `handler` for tasks of the function named `name`.
    pub fn insert(&mut self, name: impl Into<String>, handler: Handler) {
        self.handlers.insert(name.into(), handler);
    }

    /// Whether a handler runs tasks of function `name`.
    pub fn handles(&self, name: &str) -> bool {
        self.handlers.contains_key(name)
    }

    /// The names handled.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.handlers.keys().cloned().collect();
        names.sort();
        names
    }
}

impl Device for Handlers {
    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            id: "handlers".into(),
            device_type: "handlers".to_owned(),
            input_type: None,
            parameter_schema: None,
        }
    }

    fn needs_workspace(&self) -> bool {
        false
    }

    fn run(&self, job: Job) -> BoxFuture<'_, DeviceRun> {
        Box::pin(run_handler(
            self.handlers.get(&job.assignment.function_name).cloned(),
            job,
        ))
    }
}

async fn run_handler(handler: Option<Handler>, mut job: Job) -> DeviceRun {
    let name = job.assignment.function_name.clone();
    let mut state = StepState {
        index: 0,
        name: name.clone(),
        status: StepStatus::Waiting,
        exit_code: None,
        start_date: None,
        end_date: None,
    };
    let Some(handler) = handler else {
        state.status = StepStatus::Exception;
        return DeviceRun {
            steps: vec![state],
            end: RunEnd::Failed {
                error_type: TaskErrorType::Execution,
                message: format!("no handler for function `{name}` on this worker"),
                retryable: true,
            },
            output: serde_json::Value::Null,
        };
    };
    if let Some(order) = *job.stop.borrow_and_update() {
        state.status = StepStatus::Skipped;
        return DeviceRun {
            steps: vec![state],
            end: RunEnd::Stopped(order),
            output: serde_json::Value::Null,
        };
    }
    state.status = StepStatus::Running;
    state.start_date = Some(now());
    let cancelled = CancellationToken::new();
    let path_map = |map: &std::collections::BTreeMap<String, String>| {
        map.iter()
            .map(|(k, v)| (k.clone(), PathBuf::from(v)))
            .collect::<HashMap<_, _>>()
    };
    let context = HandlerContext {
        task_key: job.task_key,
        attempt: job.attempt,
        parameters: job.bindings.parameters.clone(),
        workspace: job.workspace.clone(),
        inputs: path_map(&job.bindings.inputs),
        outputs: path_map(&job.bindings.outputs),
        cancelled: cancelled.clone(),
        log: job.log.clone(),
        samples: job.samples.clone(),
    };
    job.log
        .system(Some(0), &format!("handler `{name}` started"));
    let mut running = tokio::spawn(handler(context));
    let mut stopped = None;
    let result = loop {
        tokio::select! {
            result = &mut running => break Some(result),
            changed = job.stop.changed(), if stopped.is_none() => {
                if changed.is_err() {
                    // No more orders can come: wait for the handler alone.
                    break Some((&mut running).await);
                }
                let Some(order) = *job.stop.borrow_and_update() else { continue };
                stopped = Some(order);
                cancelled.cancel();
                if matches!(order, Stop::Abort | Stop::LeaseLost) {
                    running.abort();
                    break None;
                }
                // A graceful stop: the handler has the grace period to return.
                match tokio::time::timeout(job.grace, &mut running).await {
                    Ok(result) => break Some(result),
                    Err(_) => {
                        running.abort();
                        break None;
                    }
                }
            }
        }
    };
    state.end_date = Some(now());
    let end = match (stopped, result) {
        (Some(order), _) => {
            state.status = StepStatus::Aborted;
            RunEnd::Stopped(order)
        }
        (None, Some(Ok(Ok(())))) => {
            state.status = StepStatus::Succeeded;
            RunEnd::Succeeded
        }
        (None, Some(Ok(Err(message)))) => {
            state.status = StepStatus::Failed;
            RunEnd::Failed {
                error_type: TaskErrorType::Execution,
                message: format!("handler `{name}` failed: {message}"),
                retryable: false,
            }
        }
        (None, Some(Err(join))) => {
            state.status = StepStatus::Exception;
            RunEnd::Failed {
                error_type: TaskErrorType::Execution,
                message: format!("handler `{name}` panicked: {join}"),
                retryable: false,
            }
        }
        (None, None) => {
            state.status = StepStatus::Aborted;
            RunEnd::Stopped(Stop::Abort)
        }
    };
    DeviceRun {
        steps: vec![state],
        end,
        output: serde_json::Value::Null,
    }
}
