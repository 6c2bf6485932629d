//! What a worker is told to run when its claim is granted, resolved from the store: the
//! function's steps and defaults, the task's parameters, and where each input's file is.

use std::collections::HashMap;
use std::sync::Arc;

use diesel_async::AsyncPgConnection;

use models::wire::{AssignedInput, Assignment, InputValue, ReportedOutput};
use models::{
    DataSampleKey, DatasetKey, Function, FunctionKey, FunctionStatus, InputKind, InputRef, Model,
    ModelKey, Performance, Task, TaskKey, Timestamp,
};

use crate::store::{StoreError, catalog, execution, tasks};

/// Functions read from the store, kept once READY (a READY function's steps and outputs no
/// longer change).
#[derive(Default)]
pub(crate) struct Functions {
    ready: HashMap<FunctionKey, Arc<Function>>,
}

impl Functions {
    /// Forgets function `key` (its build ended: its image changed).
    pub(crate) fn forget(&mut self, key: FunctionKey) {
        self.ready.remove(&key);
    }

    /// The function `key`, from memory when it is READY.
    pub(crate) async fn get(
        &mut self,
        conn: &mut AsyncPgConnection,
        key: FunctionKey,
    ) -> Result<Option<Arc<Function>>, StoreError> {
        if let Some(function) = self.ready.get(&key) {
            return Ok(Some(function.clone()));
        }
        let Some(function) = catalog::find_function(conn, key).await? else {
            return Ok(None);
        };
        let function = Arc::new(function);
        if function.status == FunctionStatus::Ready {
            self.ready.insert(key, function.clone());
        }
        Ok(Some(function))
    }
}

/// What the batch being applied registered and has not stored yet.
#[derive(Default)]
pub(crate) struct Pending {
    /// The models its DONE reports registered.
    pub(crate) models: Vec<Model>,
    /// The tasks it made DONE, all of whose models are in `models`.
    pub(crate) complete: std::collections::HashSet<TaskKey>,
}

/// The assignment of `task`, or why it cannot run (an input whose value is gone). A parent's
/// models may be `pending`, registered by the batch being applied. For a speculative
/// assignment, `ahead_of` is the parent it runs after, not DONE yet: the inputs taking its
/// outputs are left for the worker to fill in (`InputValue::ParentOutput`).
pub(crate) async fn prepare(
    conn: &mut AsyncPgConnection,
    functions: &mut Functions,
    task_key: TaskKey,
    stored: Option<Task>,
    pending: &Pending,
    ahead_of: Option<TaskKey>,
) -> Result<Result<Assignment, String>, StoreError> {
    let task = match stored {
        Some(task) => Some(task),
        None => tasks::find_task(conn, task_key).await?,
    };
    let Some(task) = task else {
        return Ok(Err(format!("task {task_key} does not exist")));
    };
    let Some(function) = functions.get(conn, task.function_key).await? else {
        return Ok(Err(format!(
            "function {} does not exist",
            task.function_key
        )));
    };
    // Every parent's models in one query: a task joining many parents reads them at once.
    let parents: Vec<TaskKey> = task
        .inputs
        .iter()
        .filter_map(|input| match &input.source {
            InputRef::ParentOutput {
                parent_task_key, ..
            } => Some(*parent_task_key),
            InputRef::Asset { .. } => None,
        })
        .collect();
    // Parents the batch made DONE have all their models pending: nothing to read for them.
    let stored_parents: Vec<TaskKey> = parents
        .iter()
        .filter(|parent| !pending.complete.contains(parent) && Some(**parent) != ahead_of)
        .copied()
        .collect();
    let mut parent_models = if stored_parents.is_empty() {
        HashMap::new()
    } else {
        execution::list_models_of_tasks(conn, &stored_parents).await?
    };
    for model in &pending.models {
        if parents.contains(&model.compute_task_key) {
            parent_models
                .entry(model.compute_task_key)
                .or_default()
                .push(model.clone());
        }
    }
    let mut inputs = Vec::with_capacity(task.inputs.len());
    for (position, input) in task.inputs.iter().enumerate() {
        let Some(declared) = function.input(&input.identifier) else {
            return Ok(Err(format!(
                "inputs[{position}]: the function declares no input `{}`",
                input.identifier
            )));
        };
        let values = match (&input.source, declared.kind) {
            (InputRef::Asset { asset_key }, InputKind::Model) => {
                match execution::find_model(conn, ModelKey(*asset_key)).await? {
                    Some(model) => model_value(&model, position),
                    None => {
                        return Ok(Err(format!(
                            "inputs[{position}]: model {asset_key} is gone"
                        )));
                    }
                }
            }
            (InputRef::Asset { asset_key }, InputKind::DataSample) => {
                let key = DataSampleKey(*asset_key);
                match catalog::find_data_samples(conn, &[key]).await?.pop() {
                    Some(sample) => vec![InputValue::DataSample {
                        data_sample_key: key,
                        path: sample.path,
                    }],
                    None => {
                        return Ok(Err(format!(
                            "inputs[{position}]: data sample {asset_key} is gone"
                        )));
                    }
                }
            }
            (InputRef::Asset { asset_key }, InputKind::DataManager) => {
                let key = DatasetKey(*asset_key);
                match catalog::find_dataset(conn, key).await? {
                    Some(dataset) => vec![InputValue::DataManager {
                        dataset_key: key,
                        opener: dataset.opener,
                    }],
                    None => {
                        return Ok(Err(format!(
                            "inputs[{position}]: data manager {asset_key} is gone"
                        )));
                    }
                }
            }
            (
                InputRef::ParentOutput {
                    parent_task_key,
                    parent_task_output_identifier,
                },
                _,
            ) if Some(*parent_task_key) == ahead_of => vec![InputValue::ParentOutput {
                task_key: *parent_task_key,
                output: parent_task_output_identifier.clone(),
                file: None,
            }],
            (
                InputRef::ParentOutput {
                    parent_task_key,
                    parent_task_output_identifier,
                },
                _,
            ) => {
                let models: Vec<Model> = parent_models
                    .get(parent_task_key)
                    .into_iter()
                    .flatten()
                    .filter(|model| model.output_identifier == *parent_task_output_identifier)
                    .cloned()
                    .collect();
                if models.is_empty() {
                    return Ok(Err(format!(
                        "inputs[{position}]: task {parent_task_key} registered no model for \
                         output `{parent_task_output_identifier}`"
                    )));
                }
                let mut values = Vec::with_capacity(models.len());
                for model in &models {
                    values.extend(model_value(model, position));
                }
                values
            }
        };
        inputs.extend(values.into_iter().map(|value| AssignedInput {
            identifier: input.identifier.clone(),
            multiple: declared.multiple,
            value,
        }));
    }
    let mut parameters = function.default_parameters();
    parameters.extend(task.parameters.clone());
    Ok(Ok(Assignment {
        compute_plan_key: task.compute_plan_key,
        rank: task.rank,
        function_key: function.key,
        function_name: function.name.clone(),
        steps: function.steps.clone(),
        timeout_secs: function.timeout_secs,
        image: function.image.clone(),
        archive: function.archive.clone(),
        parameters,
        parameter_schema: function.parameter_schema.clone(),
        inputs,
        outputs: function.outputs.clone(),
        device_id: task.device_id.clone(),
        input: task.input.clone(),
    }))
}

/// A model as an input value; a model whose file was deleted (a transient output) is refused.
fn model_value(model: &Model, position: usize) -> Vec<InputValue> {
    model
        .address
        .clone()
        .map(|file| {
            vec![InputValue::Model {
                model_key: model.key,
                file,
            }]
        })
        .unwrap_or_else(|| {
            tracing::warn!(
                "inputs[{position}]: model {} was disabled, its file deleted",
                model.key
            );
            Vec::new()
        })
}

/// What a DONE report registers: the models and performances of its outputs.
#[derive(Default)]
pub(crate) struct Registered {
    /// Models to insert.
    pub(crate) models: Vec<Model>,
    /// Performances to insert.
    pub(crate) performances: Vec<Performance>,
}

/// Checks the outputs a DONE report carries against `task`'s function, and turns them into
/// records; the error lists every problem.
pub(crate) fn register_outputs(
    task: &Task,
    function: &Function,
    outputs: &[ReportedOutput],
    now: Timestamp,
    registered: &mut Registered,
) -> Result<(), String> {
    let problems = models::wire::check_reported_outputs(&function.outputs, outputs);
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    for output in outputs {
        match output {
            ReportedOutput::Model { identifier, file } => {
                registered.models.push(Model {
                    key: ModelKey(uuid::Uuid::new_v4()),
                    compute_task_key: task.key,
                    output_identifier: identifier.clone(),
                    address: Some(file.clone()),
                    permissions: task
                        .outputs
                        .get(identifier)
                        .map(|o| o.permissions.clone())
                        .unwrap_or_else(|| function.permissions.clone()),
                    owner: task.worker.clone(),
                    creation_date: now,
                });
            }
            ReportedOutput::Performance { identifier, value } => {
                registered.performances.push(Performance {
                    compute_task_key: task.key,
                    output_identifier: identifier.clone(),
                    value: *value,
                    creation_date: now,
                });
            }
        }
    }
    Ok(())
}
