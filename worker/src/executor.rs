//! One granted attempt, from workspace to report: inputs fetched (checksums verified),
//! parameters checked against the device's schema, the device run, logs and measurements
//! streamed, outputs collected and uploaded, the workspace cleaned, and the report built.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::future::Either;
use tokio::sync::mpsc::{self, UnboundedReceiver};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use broker::topology::{EVENTS_EXCHANGE, task_event_key};
use broker::{Meta, Publisher};
use models::wire::{
    AssignedInput, Assignment, Grant, InputValue, LogBatch, LogRecord, MeasurementBatch,
    ReportedOutcome, ReportedOutput, Sample,
};
use models::{OutputKind, StepState, TaskErrorType};

use crate::artifacts::{ArtifactError, ArtifactStore, Syncing};
use crate::device::{Device, DeviceRun, Job, RunEnd};
use crate::logs::{LogLimits, LogWriter, next_batch};
use crate::process::Stop;
use crate::template::Bindings;
use crate::workspace::{Workspace, WorkspaceHandle};

/// Log lines or samples published in one message at most.
const BATCH: usize = 500;
/// How long a batch waits for more lines once it has one.
const LINGER: Duration = Duration::from_millis(100);
/// The most inputs an attempt fetches one by one, through
/// [`ArtifactStore::fetch_read_only_here`]; more are fetched together, through
/// [`ArtifactStore::fetch_many_read_only`] (a fan-in's join of 1,000 took twice as long with
/// each link made on the attempt's thread, one after the other).
const FETCHED_HERE: usize = 2;

#[cfg(test)]
mod tests;

/// What an attempt needs from its worker.
pub(crate) struct Attempt<'a> {
    /// The grant.
    pub(crate) grant: &'a Grant,
    /// What to run.
    pub(crate) assignment: Arc<Assignment>,
    /// The device it runs on.
    pub(crate) device: Arc<dyn Device>,
    /// Where workspaces are made.
    pub(crate) work_root: &'a std::path::Path,
    /// Keep the workspace of a failed attempt.
    pub(crate) keep_failed: bool,
    /// The artifact store.
    pub(crate) artifacts: &'a dyn ArtifactStore,
    /// Publishes logs and measurements.
    pub(crate) publisher: &'a Publisher,
    /// Log bounds.
    pub(crate) log_limits: LogLimits,
    /// Grace period of a cancel.
    pub(crate) grace: Duration,
    /// Stop orders.
    pub(crate) stop: watch::Receiver<Option<Stop>>,
    /// A build: its log goes to the worker's own log (there is no task to attach it to), and
    /// a file left at `outputs/image` is uploaded to this address.
    pub(crate) build_image: Option<String>,
}

/// The end of an attempt, to report.
pub(crate) struct Ended {
    /// How it ended.
    pub(crate) outcome: ReportedOutcome,
    /// The state of each step.
    pub(crate) steps: Vec<StepState>,
    /// The device's output data.
    pub(crate) output: serde_json::Value,
    /// The values of the outputs (with `Done` only).
    pub(crate) outputs: Vec<ReportedOutput>,
    /// The stop order that ended it, if one did.
    pub(crate) stopped: Option<Stop>,
    /// A build's uploaded image, if it left one.
    pub(crate) image: Option<models::File>,
    /// The end of the attempt's log, not published in a batch: it goes with the report.
    pub(crate) log_tail: Vec<LogRecord>,
    /// The output models' way to disk (with `Done` only): the report waits for it.
    pub(crate) syncing: Vec<Syncing>,
}

impl Ended {
    /// An attempt that failed before or outside its steps, with no step states or output.
    pub(crate) fn failed(error_type: TaskErrorType, message: String, retryable: bool) -> Ended {
        Ended {
            outcome: ReportedOutcome::Failed {
                error_type,
                message,
                retryable,
            },
            steps: Vec::new(),
            output: serde_json::Value::Null,
            outputs: Vec::new(),
            stopped: None,
            image: None,
            log_tail: Vec::new(),
            syncing: Vec::new(),
        }
    }
}

/// Runs one attempt to its end. Log lines and samples are all published (confirmed) before
/// this returns, so they reach the dispatcher before the report.
///
/// The log and sample publishers and the measurements follower are polled by the attempt's own
/// task, not spawned: their ends, which the attempt waits for, then cost no wake-up of another
/// task (each of which waits its turn on a busy runtime; BENCHMARKS.md).
///
/// The workspace comes back unfinished, to be finished while the report is on its way.
pub(crate) async fn run(attempt: Attempt<'_>) -> (Ended, Leftover) {
    let task = attempt.grant.task_key;
    let (log_tx, log_rx) = mpsc::unbounded_channel();
    let log = LogWriter::new(attempt.log_limits, log_tx);
    let (sample_tx, sample_rx) = mpsc::unbounded_channel();
    let publisher = attempt.publisher.clone();
    let grant = attempt.grant.clone();
    let (logs, samples) = if attempt.build_image.is_some() {
        (
            Either::Left(trace_logs(grant.clone(), log_rx)),
            Either::Left(drop_samples(sample_rx)),
        )
    } else {
        (
            Either::Right(publish_logs(publisher.clone(), grant.clone(), log_rx)),
            Either::Right(publish_samples(publisher, grant, sample_rx)),
        )
    };
    let attempt = &attempt;
    let on_demand = !attempt.device.needs_workspace()
        && attempt.assignment.inputs.is_empty()
        && attempt.assignment.outputs.is_empty()
        && attempt.assignment.image.is_none()
        && attempt.build_image.is_none();
    let work = async move {
        let made = if on_demand {
            // The device makes it if it asks for it; it has no file to place.
            Ok(None)
        } else {
            let mut multiple_inputs: Vec<&str> = attempt
                .assignment
                .inputs
                .iter()
                .filter(|input| input.multiple)
                .map(|input| input.identifier.as_str())
                .collect();
            multiple_inputs.sort_unstable();
            multiple_inputs.dedup();
            Workspace::create(
                attempt.work_root,
                task,
                attempt.grant.attempt,
                &multiple_inputs,
            )
            .await
            .map(Some)
        };
        let (ended, workspace) = match made {
            Err(error) => {
                log.system(None, &format!("cannot create the workspace: {error}"));
                let ended = Ended::failed(
                    TaskErrorType::Internal,
                    "the worker could not create the task's workspace".to_owned(),
                    true,
                );
                (ended, None)
            }
            Ok(None) => {
                let handle =
                    WorkspaceHandle::on_demand(attempt.work_root, task, attempt.grant.attempt);
                let ended = in_workspace(attempt, None, &handle, &log, sample_tx.clone()).await;
                (ended, handle.close().await)
            }
            Ok(Some(workspace)) => {
                let handle = WorkspaceHandle::ready(&workspace);
                let follow_stop = CancellationToken::new();
                let follower = crate::measurements::follow(
                    workspace.measurements_path(),
                    sample_tx.clone(),
                    log.clone(),
                    follow_stop.clone(),
                );
                let running = async {
                    let ended =
                        in_workspace(attempt, Some(&workspace), &handle, &log, sample_tx.clone())
                            .await;
                    follow_stop.cancel();
                    ended
                };
                let ended = tokio::join!(running, follower).0;
                handle.close().await;
                (ended, Some(workspace))
            }
        };
        // Every writer gone: the publishers drain what is left and stop; the log's last lines
        // come back, for the report.
        drop(log);
        drop(sample_tx);
        (ended, workspace)
    };
    let ((ended, workspace), log_tail, ()) = tokio::join!(work, logs, samples);
    let leftover = Leftover {
        task,
        keep: attempt.keep_failed && !matches!(ended.outcome, ReportedOutcome::Done),
        workspace,
    };
    (Ended { log_tail, ..ended }, leftover)
}

/// The workspace of an ended attempt, still to finish: emptied and kept as a spare, removed,
/// or kept for inspection (a failed attempt's, with `keep_failed`). Nothing reads it after
/// the attempt's end, so it is finished beside the report rather than before it: a blocking
/// call less on the way from a step's end to its report.
pub(crate) struct Leftover {
    task: models::TaskKey,
    keep: bool,
    workspace: Option<Workspace>,
}

impl Leftover {
    /// No workspace to finish (the attempt never had one).
    pub(crate) fn none(task: models::TaskKey) -> Leftover {
        Leftover {
            task,
            keep: false,
            workspace: None,
        }
    }

    /// Finishes the workspace, logging where it was kept or why it could not be removed.
    pub(crate) async fn finish(self) {
        let Leftover {
            task,
            keep,
            workspace,
        } = self;
        let Some(workspace) = workspace else {
            return;
        };
        match workspace.finish(keep).await {
            Ok(Some(kept)) => {
                tracing::info!(task.key = %task, "workspace kept at {}", kept.display())
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(task.key = %task, "removing the workspace: {error}"),
        }
    }
}

/// Runs the attempt in its workspace: `workspace` when it was made before the run, else
/// (no file to place or collect) whatever the device makes through `handle`.
async fn in_workspace(
    attempt: &Attempt<'_>,
    workspace: Option<&Workspace>,
    handle: &WorkspaceHandle,
    log: &LogWriter,
    samples: mpsc::UnboundedSender<Sample>,
) -> Ended {
    let assignment = &attempt.assignment;
    // Parameters must suit the device before anything runs.
    if let Some(schema) = attempt.device.info().parameter_schema {
        let parameters = serde_json::Value::Object(assignment.parameters.clone());
        match models::validation::compile_schema(&schema) {
            Ok(validator) => {
                let problems: Vec<String> = validator
                    .iter_errors(&parameters)
                    .map(|error| format!("{}: {error}", error.instance_path()))
                    .collect();
                if !problems.is_empty() {
                    let message = format!(
                        "parameters do not satisfy device {}'s schema: {}",
                        attempt.device.info().id,
                        problems.join("; ")
                    );
                    log.system(None, &message);
                    return Ended::failed(TaskErrorType::Execution, message, false);
                }
            }
            Err(error) => {
                let message = format!(
                    "device {}'s parameter schema is invalid: {error}",
                    attempt.device.info().id
                );
                return Ended::failed(TaskErrorType::Internal, message, false);
            }
        }
    }
    // Fetching inputs stops as soon as a stop is ordered.
    let mut stop = attempt.stop.clone();
    let fetched = async {
        let Some(workspace) = workspace else {
            return Ok((BTreeMap::new(), Vec::new()));
        };
        let inputs = fetch_inputs(&assignment.inputs, attempt.artifacts, workspace).await?;
        let mut env = workspace.env();
        if let Some(image) = &assignment.image {
            let path = workspace.root().join("image");
            attempt
                .artifacts
                .fetch_read_only(image, &path)
                .await
                .map_err(|error| format!("the function's built image: {error}"))?;
            env.push(("BATON_IMAGE".to_owned(), path.display().to_string()));
        }
        Ok::<_, String>((inputs, env))
    };
    let (inputs, env) = tokio::select! {
        fetched = fetched => match fetched {
            Ok(fetched) => fetched,
            Err(message) => {
                log.system(None, &message);
                // A store that cannot be read now may be readable on another attempt.
                return Ended::failed(TaskErrorType::Execution, message, true);
            }
        },
        Ok(order) = stop.wait_for(Option::is_some) => {
            let order = (*order).unwrap_or(Stop::Abort);
            return stopped_before_start(assignment, order);
        }
    };
    // Ordered before anything started (while the claim was answered, or during the fetch):
    // no step starts.
    if let Some(order) = *attempt.stop.borrow() {
        return stopped_before_start(assignment, order);
    }
    let mut outputs = BTreeMap::new();
    // Without a workspace made before the run there is no output (nor build image) to place.
    if let Some(workspace) = workspace {
        if attempt.build_image.is_some() {
            let path = workspace.outputs_dir().join("image");
            outputs.insert("image".to_owned(), path.display().to_string());
        }
        for output in &assignment.outputs {
            let path = workspace.outputs_dir().join(&output.identifier);
            if output.multiple
                && let Err(error) = tokio::fs::create_dir_all(&path).await
            {
                let message = format!("preparing output `{}`: {error}", output.identifier);
                return Ended::failed(TaskErrorType::Internal, message, true);
            }
            outputs.insert(output.identifier.clone(), path.display().to_string());
        }
    }
    let bindings = Bindings {
        task_key: attempt.grant.task_key.to_string(),
        parameters: assignment.parameters.clone(),
        inputs,
        outputs,
    };
    let job = Job {
        task_key: attempt.grant.task_key,
        attempt: attempt.grant.attempt,
        assignment: assignment.clone(),
        workspace: handle.clone(),
        env,
        bindings,
        log: log.clone(),
        samples,
        stop: attempt.stop.clone(),
        grace: attempt.grace,
    };
    let DeviceRun { steps, end, output } = attempt.device.run(job).await;
    let mut image = None;
    let mut syncing = Vec::new();
    let (outcome, outputs, stopped) = match end {
        RunEnd::Succeeded => match collect_outputs(attempt, workspace, &mut image).await {
            Ok((outputs, synced)) => {
                syncing = synced;
                (ReportedOutcome::Done, outputs, None)
            }
            Err(message) => {
                log.system(None, &message);
                (
                    ReportedOutcome::Failed {
                        error_type: TaskErrorType::Execution,
                        message,
                        retryable: false,
                    },
                    Vec::new(),
                    None,
                )
            }
        },
        RunEnd::Failed {
            error_type,
            message,
            retryable,
        } => (
            ReportedOutcome::Failed {
                error_type,
                message,
                retryable,
            },
            Vec::new(),
            None,
        ),
        RunEnd::Stopped(order) => (stop_outcome(assignment, order), Vec::new(), Some(order)),
    };
    Ended {
        outcome,
        steps,
        output,
        outputs,
        stopped,
        image,
        log_tail: Vec::new(),
        syncing,
    }
}

/// What a stop order means for the report.
fn stop_outcome(assignment: &Assignment, order: Stop) -> ReportedOutcome {
    match order {
        Stop::TaskTimeout => ReportedOutcome::Failed {
            error_type: TaskErrorType::Timeout,
            message: format!(
                "the task ran out of time ({} s)",
                assignment.timeout_secs.unwrap_or_default()
            ),
            retryable: false,
        },
        Stop::Cancel | Stop::Abort | Stop::LeaseLost => ReportedOutcome::Canceled,
    }
}

/// The end of an attempt stopped before its first step: every step SKIPPED, none started.
fn stopped_before_start(assignment: &Assignment, order: Stop) -> Ended {
    let mut steps = crate::device::waiting_states(&assignment.steps);
    for step in &mut steps {
        step.status = models::StepStatus::Skipped;
    }
    Ended {
        outcome: stop_outcome(assignment, order),
        steps,
        output: serde_json::Value::Null,
        outputs: Vec::new(),
        stopped: Some(order),
        image: None,
        log_tail: Vec::new(),
        syncing: Vec::new(),
    }
}

/// Fetches every input into the workspace; returns each identifier's path for placeholders.
///
/// One or two inputs are fetched at once, each on this thread where the store can (a chain's
/// link fetches one). More are fetched together: their places made in one go, then
/// the stored files through [`ArtifactStore::fetch_many_read_only`].
///
/// The error is that of the first input that fails, in the task's order.
async fn fetch_inputs(
    inputs: &[AssignedInput],
    artifacts: &dyn ArtifactStore,
    workspace: &Workspace,
) -> Result<BTreeMap<String, String>, String> {
    // Each value of a multiple input goes to the next index of its identifier.
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let indexed: Vec<(&AssignedInput, usize)> = inputs
        .iter()
        .map(|input| {
            let count = counts.entry(input.identifier.as_str()).or_default();
            let index = *count;
            *count += 1;
            (input, index)
        })
        .collect();
    let mut paths = BTreeMap::new();
    if inputs.len() <= FETCHED_HERE {
        // Both at once (two round trips to an object store overlap).
        let fetched = futures::future::join_all(indexed.iter().map(|&(input, index)| async move {
            let path = workspace
                .input_path(&input.identifier, input.multiple, index)
                .await
                .map_err(|error| error.to_string())?;
            fetch_one(input, artifacts, &path).await?;
            Ok::<_, String>(shown_path(input, workspace, path))
        }))
        .await;
        for ((input, _), shown) in indexed.iter().zip(fetched) {
            paths.insert(input.identifier.clone(), shown?.display().to_string());
        }
        return Ok(paths);
    }
    let wanted: Vec<(&str, bool, usize)> = indexed
        .iter()
        .map(|(input, index)| (input.identifier.as_str(), input.multiple, *index))
        .collect();
    let places = workspace
        .input_paths(&wanted)
        .await
        .map_err(|error| error.to_string())?;
    // Each input's error, if any: data samples are linked first, stored files then fetched
    // together, and the first error in the task's order is returned.
    let mut errors: Vec<Option<String>> = vec![None; inputs.len()];
    let mut fetches = Vec::new();
    let mut fetched_by = Vec::new();
    let mut samples = Vec::new();
    for (position, ((input, _), path)) in indexed.iter().zip(&places).enumerate() {
        match source(input) {
            Ok(Source::Stored(file, what)) => {
                fetches.push((file.clone(), path.clone()));
                fetched_by.push((position, what));
            }
            Ok(Source::Sample(sample, data_sample_key)) => {
                samples.push((position, sample.to_owned(), *data_sample_key, path.clone()));
            }
            Err(error) => errors[position] = Some(error),
        }
    }
    // The data samples' links, all in one blocking call.
    if !samples.is_empty() {
        let linked = tokio::task::spawn_blocking(move || {
            samples
                .into_iter()
                .map(|(position, sample, key, path)| {
                    let linked = std::os::unix::fs::symlink(&sample, &path);
                    (position, sample, key, linked)
                })
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|error| format!("linking the data samples: {error}"))?;
        for (position, sample, key, linked) in linked {
            if let Err(error) = linked {
                let identifier = &indexed[position].0.identifier;
                errors[position] = Some(sample_link_error(identifier, key, &sample, &error));
            }
        }
    }
    let results = artifacts.fetch_many_read_only(&fetches).await;
    for (result, (position, what)) in results.into_iter().zip(fetched_by) {
        if let Err(error) = result {
            let identifier = &indexed[position].0.identifier;
            errors[position] = Some(stored_fetch_error(identifier, &what, &error));
        }
    }
    if let Some(error) = errors.into_iter().flatten().next() {
        return Err(error);
    }
    for ((input, _), path) in indexed.into_iter().zip(places) {
        paths.insert(
            input.identifier.clone(),
            shown_path(input, workspace, path).display().to_string(),
        );
    }
    Ok(paths)
}

/// Where an input's value comes from.
enum Source<'a> {
    /// A stored file, with what it is for errors.
    Stored(&'a models::File, String),
    /// A data sample's path, linked where it lies, and its key.
    Sample(&'a str, &'a models::DataSampleKey),
}

/// Where `input`'s value comes from; an error if it cannot be fetched at all.
fn source(input: &AssignedInput) -> Result<Source<'_>, String> {
    match &input.value {
        InputValue::Model { model_key, file } => {
            Ok(Source::Stored(file, format!("model {model_key}")))
        }
        InputValue::ParentOutput {
            task_key,
            output,
            file,
        } => match file {
            Some(file) => Ok(Source::Stored(
                file,
                format!("output `{output}` of task {task_key}"),
            )),
            None => Err(format!(
                "input `{}`: output `{output}` of task {task_key} was not filled in",
                input.identifier
            )),
        },
        InputValue::DataManager {
            dataset_key,
            opener,
        } => Ok(Source::Stored(opener, format!("opener of {dataset_key}"))),
        InputValue::DataSample {
            data_sample_key,
            path: sample,
        } => match sample {
            Some(sample) => Ok(Source::Sample(sample, data_sample_key)),
            None => Err(format!(
                "input `{}`: data sample {data_sample_key} has no path",
                input.identifier
            )),
        },
    }
}

/// Links data sample `data_sample_key`, at `sample`, to `path`, for `input`.
async fn link_sample(
    input: &AssignedInput,
    sample: &str,
    data_sample_key: &models::DataSampleKey,
    path: &Path,
) -> Result<(), String> {
    tokio::fs::symlink(sample, path)
        .await
        .map_err(|error| sample_link_error(&input.identifier, *data_sample_key, sample, &error))
}

/// The error of input `identifier` whose stored file, `what` it is, could not be fetched.
fn stored_fetch_error(identifier: &str, what: &str, error: &ArtifactError) -> String {
    format!("input `{identifier}` ({what}): {error}")
}

/// The error of input `identifier` whose data sample `key`, at `sample`, could not be linked.
fn sample_link_error(
    identifier: &str,
    key: models::DataSampleKey,
    sample: &str,
    error: &std::io::Error,
) -> String {
    format!("input `{identifier}`: linking data sample {key} at {sample}: {error}")
}

/// Fetches `input`'s value to `path`, on this thread where the store can.
async fn fetch_one(
    input: &AssignedInput,
    artifacts: &dyn ArtifactStore,
    path: &Path,
) -> Result<(), String> {
    match source(input)? {
        Source::Stored(file, what) => artifacts
            .fetch_read_only_here(file, path)
            .await
            .map_err(|error| stored_fetch_error(&input.identifier, &what, &error)),
        Source::Sample(sample, data_sample_key) => {
            link_sample(input, sample, data_sample_key, path).await
        }
    }
}

/// The path placeholders show for `input`, placed at `path`: a multiple input's directory.
fn shown_path(input: &AssignedInput, workspace: &Workspace, path: PathBuf) -> PathBuf {
    if input.multiple {
        workspace.inputs_dir().join(&input.identifier)
    } else {
        path
    }
}

/// Reads every declared output from the workspace: models are uploaded, performances parsed.
/// The error names every output that is missing or invalid.
///
/// A task's models are stored without waiting for their way to disk
/// ([`ArtifactStore::put_taking_unsynced`]), so that the next task (a chain's next link) can
/// start at once; what is returned with them is for the report to wait for. A build's are
/// stored durably.
async fn collect_outputs(
    attempt: &Attempt<'_>,
    workspace: Option<&Workspace>,
    image: &mut Option<models::File>,
) -> Result<(Vec<ReportedOutput>, Vec<Syncing>), String> {
    // Made on demand (or not at all): the attempt has no output to collect.
    let Some(workspace) = workspace else {
        return Ok((Vec::new(), Vec::new()));
    };
    let grant = attempt.grant;
    let mut values = Vec::new();
    let mut syncing = Vec::new();
    let mut problems = Vec::new();
    // A build's image is optional: a build may install on the host instead.
    if let Some(address) = &attempt.build_image
        && tokio::fs::symlink_metadata(workspace.outputs_dir().join("image"))
            .await
            .is_ok()
    {
        match workspace.collect_output("image", false).await {
            Ok(files) => match files.first() {
                Some(file) => match attempt.artifacts.put(address, file).await {
                    Ok(file) => *image = Some(file),
                    Err(error) => problems.push(format!("the built image: {error}")),
                },
                None => problems.push("the built image: no file".to_owned()),
            },
            Err(error) => problems.push(error.to_string()),
        }
    }
    for output in &attempt.assignment.outputs {
        let files = match workspace
            .collect_output(&output.identifier, output.multiple)
            .await
        {
            Ok(files) => files,
            Err(error) => {
                problems.push(error.to_string());
                continue;
            }
        };
        for (index, file) in files.iter().enumerate() {
            match output.kind {
                OutputKind::Model => {
                    let address =
                        model_address(grant, &output.identifier, output.multiple.then_some(index));
                    // The workspace is emptied after the attempt: the file may move.
                    let stored = if attempt.build_image.is_some() {
                        let stored = attempt.artifacts.put_taking(&address, file).await;
                        stored.map(|file| (file, Syncing::done()))
                    } else {
                        attempt.artifacts.put_taking_unsynced(&address, file).await
                    };
                    match stored {
                        Ok((file, synced)) => {
                            syncing.push(synced);
                            values.push(ReportedOutput::Model {
                                identifier: output.identifier.clone(),
                                file,
                            });
                        }
                        Err(error) => {
                            problems.push(format!("output `{}`: {error}", output.identifier))
                        }
                    }
                }
                OutputKind::Performance => match read_performance(file).await {
                    Ok(value) => values.push(ReportedOutput::Performance {
                        identifier: output.identifier.clone(),
                        value,
                    }),
                    Err(problem) => {
                        problems.push(format!("output `{}`: {problem}", output.identifier))
                    }
                },
            }
        }
    }
    if problems.is_empty() {
        Ok((values, syncing))
    } else {
        Err(format!("invalid outputs: {}", problems.join("; ")))
    }
}

/// Where an attempt's output model is stored: `models/<hh>/<task>.<attempt>.<identifier>`, or
/// `models/<hh>/<task>.<attempt>-<index>.<identifier>` for value `index` of a multiple output,
/// `<hh>` being the task key's first two hex digits.
///
/// The 256 directories are made once per store, so a model costs the local store one new
/// file and no directory (a new directory costs about as much as the file, and on a file
/// system without a journal its sync walks up every new parent). The identifier, which may
/// hold any char but `/`, `\` and control chars, comes last, after a prefix of fixed form, so
/// no two outputs share an address.
fn model_address(grant: &Grant, identifier: &str, index: Option<usize>) -> String {
    let task = grant.task_key.to_string();
    let shard = &task[..2];
    match index {
        Some(index) => format!(
            "models/{shard}/{task}.{}-{index}.{identifier}",
            grant.attempt
        ),
        None => format!("models/{shard}/{task}.{}.{identifier}", grant.attempt),
    }
}

/// A performance file: one finite number, surrounding whitespace allowed.
async fn read_performance(path: &Path) -> Result<f64, String> {
    let path = path.to_owned();
    // Inspected and read in one blocking task (`tokio::fs` takes one per call).
    let text = tokio::task::spawn_blocking(move || {
        let metadata = std::fs::metadata(&path).map_err(|error| error.to_string())?;
        if metadata.len() > 1024 {
            return Err(format!("{} bytes is too long for a number", metadata.len()));
        }
        std::fs::read_to_string(&path).map_err(|error| error.to_string())
    })
    .await
    .map_err(|error| error.to_string())??;
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{:?} is not a number", text.trim()))?;
    if value.is_finite() {
        Ok(value)
    } else {
        Err(format!("{value} is not a finite number"))
    }
}

/// Publishes the attempt's log lines in batches until every writer is gone, and returns the
/// last batch unpublished: it goes with the status report, so a short attempt's log costs no
/// message of its own.
async fn publish_logs(
    publisher: Publisher,
    grant: Grant,
    mut rx: UnboundedReceiver<LogRecord>,
) -> Vec<LogRecord> {
    let key = task_event_key(grant.task_key, "log");
    while let Some(lines) = next_batch(&mut rx, BATCH, LINGER).await {
        if rx.is_closed() && rx.is_empty() {
            return lines;
        }
        let batch = LogBatch {
            task_key: grant.task_key,
            attempt: grant.attempt,
            lease_token: grant.lease_token,
            lines,
        };
        publish_until_confirmed(&publisher, &key, &batch).await;
    }
    Vec::new()
}

/// Writes a build's log lines to the worker's own log until every writer is gone; returns no
/// lines for a report.
async fn trace_logs(grant: Grant, mut rx: UnboundedReceiver<LogRecord>) -> Vec<LogRecord> {
    while let Some(line) = rx.recv().await {
        tracing::info!(
            "build of function {} [{}]: {}",
            grant.task_key,
            line.stream.as_str(),
            line.text
        );
    }
    Vec::new()
}

/// Drops a build's samples: there is no task to record them on.
async fn drop_samples(mut rx: UnboundedReceiver<Sample>) {
    while rx.recv().await.is_some() {}
}

/// Publishes the attempt's samples in batches until every sender is gone.
async fn publish_samples(publisher: Publisher, grant: Grant, mut rx: UnboundedReceiver<Sample>) {
    let key = task_event_key(grant.task_key, "measurement");
    while let Some(samples) = next_batch(&mut rx, BATCH, LINGER).await {
        let batch = MeasurementBatch {
            task_key: grant.task_key,
            attempt: grant.attempt,
            lease_token: grant.lease_token,
            samples,
        };
        publish_until_confirmed(&publisher, &key, &batch).await;
    }
}

/// Publishes `message` on `baton.events`, retrying with a growing delay until RabbitMQ
/// confirms it: reports are not lost to a broker outage.
pub(crate) async fn publish_until_confirmed<M: models::wire::WireMessage>(
    publisher: &Publisher,
    routing_key: &str,
    message: &M,
) {
    let mut delay = Duration::from_millis(200);
    loop {
        match publisher
            .publish(EVENTS_EXCHANGE, routing_key, message, Meta::default())
            .await
        {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(
                    "publishing {} ({routing_key}) failed, retrying in {delay:?}: {error}",
                    M::KIND
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}
