//! Validation of compute-plan submissions and of tasks added to a plan (SPEC.md §3, §5).
//!
//! The dispatcher loads what a submission may reference (functions, datasets, samples, models,
//! stored parent tasks) into a [`SubmissionContext`]; [`validate_plan`] and [`validate_tasks`]
//! then check everything at once and either return the tasks ready to store, in topological
//! order, or every problem found, each with the path of the field it concerns. Nothing here
//! touches a database: the checks are pure.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};

use crate::submission::{NewTask, PlanSubmission};
use crate::task::{InitialStatus, initial_status, parent_keys};
use crate::validation::{
    FieldPath, Problems, ValidationError, ValidationErrorKind, check_json_depth, check_max_chars,
    check_name, compile_schema, validate_metadata,
};
use crate::{
    DataSample, DataSampleKey, Dataset, DatasetKey, Function, FunctionInput, FunctionKey,
    FunctionStatus, InputKind, InputRef, Model, ModelKey, OrganizationId, OutputKind, Permission,
    Permissions, RequirementSet, TaskKey, TaskOutput, TaskStatus, WaitingReason,
};

/// What the dispatcher knows of the stored things a submission may reference (filled from
/// PostgreSQL before validating).
#[derive(Clone, Copy, Debug)]
pub struct SubmissionContext<'a> {
    /// The submitting organization: the owner of the plan and of its tasks.
    pub owner: &'a OrganizationId,
    /// The registered organizations (workers and authorized ids must be among them).
    pub organizations: &'a BTreeSet<OrganizationId>,
    /// The functions the tasks run, and those of their stored parents.
    pub functions: &'a HashMap<FunctionKey, Function>,
    /// The data managers the tasks reference.
    pub datasets: &'a HashMap<DatasetKey, Dataset>,
    /// The data samples the tasks reference.
    pub data_samples: &'a HashMap<DataSampleKey, DataSample>,
    /// The models the tasks reference by key.
    pub models: &'a HashMap<ModelKey, Model>,
    /// Already stored tasks: parents the tasks reference, and any stored task whose key a new
    /// task reuses (which is refused).
    pub stored_tasks: &'a HashMap<TaskKey, StoredTask>,
    /// The limits on batch size and DAG depth.
    pub limits: &'a Limits,
}

/// What validation needs of a stored task that a new task names as its parent.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredTask {
    /// Its current status (a FAILED or CANCELED parent makes its new children CANCELED).
    pub status: TaskStatus,
    /// The function it runs, which declares its outputs.
    pub function_key: FunctionKey,
    /// Its rank.
    pub rank: u32,
    /// The organization that runs it.
    pub worker: OrganizationId,
    /// Its outputs, with their stored (normalized) permissions.
    pub outputs: BTreeMap<String, TaskOutput>,
    /// Who may read its logs; its children inherit it.
    pub logs_permission: Permission,
    /// Some model registered on its outputs has been disabled (its file deleted), so it can no
    /// longer feed a new child.
    pub has_disabled_models: bool,
}

/// Bounds on what one submission may ask for, each refused with a clear error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The most tasks in one batch.
    pub max_tasks: usize,
    /// The highest rank a task may have (the depth of the DAG, stored parents included).
    pub max_depth: u32,
}

impl Limits {
    /// The default limits.
    ///
    /// `max_tasks` 200 000: Substra's largest tested plan (1000 rounds × 11 organizations, over
    /// 20 000 tasks) fits several times over, while one batch stays one transaction of bounded size
    /// and validation memory stays in the tens of megabytes.
    /// `max_depth` 10 000: a federated plan of 1000 rounds with a few ranks per round (train,
    /// aggregate, predict, test) fits, while a chain of tasks, which the dispatcher advances one
    /// rank at a time, cannot be made arbitrarily long.
    pub const DEFAULT: Limits = Limits {
        max_tasks: 200_000,
        max_depth: 10_000,
    };
}

impl Default for Limits {
    /// [`Limits::DEFAULT`].
    fn default() -> Self {
        Limits::DEFAULT
    }
}

/// A task that passed validation, with everything the dispatcher stores besides it.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidatedTask<'t> {
    /// The task as submitted (its `outputs` before normalization: store [`Self::outputs`]).
    pub task: &'t NewTask,
    /// 0 without parents, else 1 + the highest parent rank.
    pub rank: u32,
    /// The organization that runs it: its data manager's owner, else the given worker.
    pub worker: OrganizationId,
    /// Its distinct parents, in first-occurrence order of its inputs.
    pub parents: Vec<TaskKey>,
    /// Its outputs with permissions normalized: the owner added, ids sorted and deduplicated.
    pub outputs: BTreeMap<String, TaskOutput>,
    /// Who may read its logs: its data manager's logs permission, else the owner together with
    /// every parent's.
    pub logs_permission: Permission,
    /// The status it is registered with: WAITING, TODO or CANCELED.
    pub status: TaskStatus,
    /// Why it waits, when WAITING.
    pub waiting_reason: Option<WaitingReason>,
    /// Its function's requirements merged with its own (its own win on a shared key).
    pub requirements: RequirementSet,
}

/// Validates a new plan with its first tasks: the plan's own fields (`name`, `tag`,
/// `metadata[...]`), then every task under `tasks[i]`. Returns the tasks in topological order
/// (parents first; otherwise in submission order), or every problem found.
pub fn validate_plan<'t>(
    submission: &'t PlanSubmission,
    context: &SubmissionContext<'_>,
) -> Result<Vec<ValidatedTask<'t>>, Vec<ValidationError>> {
    let root = FieldPath::root();
    let mut problems = Problems::default();
    check_name(&mut problems, root.field("name"), &submission.name);
    check_max_chars(&mut problems, root.field("tag"), &submission.tag);
    validate_metadata(&mut problems, &root.field("metadata"), &submission.metadata);
    let tasks = check_batch(&mut problems, &submission.tasks, context);
    problems.into_result(tasks)
}

/// Validates tasks added to an existing plan (whose ownership the caller has checked); paths
/// start at `tasks[i]`. Returns the tasks in topological order, or every problem found.
pub fn validate_tasks<'t>(
    tasks: &'t [NewTask],
    context: &SubmissionContext<'_>,
) -> Result<Vec<ValidatedTask<'t>>, Vec<ValidationError>> {
    let mut problems = Problems::default();
    let validated = check_batch(&mut problems, tasks, context);
    problems.into_result(validated)
}

fn rule(message: impl Into<String>) -> ValidationErrorKind {
    ValidationErrorKind::Rule(message.into())
}

fn tasks_path() -> FieldPath {
    FieldPath::root().field("tasks")
}

/// The batch being validated, indexed by key, with each task's outputs normalized.
struct Batch<'t, 'c> {
    tasks: &'t [NewTask],
    context: &'t SubmissionContext<'c>,
    /// Key → position of its first occurrence.
    index: HashMap<TaskKey, usize>,
    /// Each task's outputs, with the owner added to their permissions.
    outputs: Vec<BTreeMap<String, TaskOutput>>,
}

/// Where a parent named by an input is.
enum Parent<'c> {
    /// In the batch, at this position.
    Batch(usize),
    /// Already stored.
    Stored(&'c StoredTask),
    /// Nowhere.
    Unknown,
}

impl<'t, 'c> Batch<'t, 'c> {
    fn new(tasks: &'t [NewTask], context: &'t SubmissionContext<'c>) -> Self {
        let mut index = HashMap::with_capacity(tasks.len());
        for (position, task) in tasks.iter().enumerate() {
            index.entry(task.key).or_insert(position);
        }
        let outputs = tasks
            .iter()
            .map(|task| normalized_outputs(context.owner, &task.outputs))
            .collect();
        Batch {
            tasks,
            context,
            index,
            outputs,
        }
    }

    /// A parent in the batch wins over a stored task of the same key (which is an error anyway).
    fn parent(&self, key: &TaskKey) -> Parent<'c> {
        if let Some(&position) = self.index.get(key) {
            Parent::Batch(position)
        } else if let Some(stored) = self.context.stored_tasks.get(key) {
            Parent::Stored(stored)
        } else {
            Parent::Unknown
        }
    }
}

fn normalized_outputs(
    owner: &OrganizationId,
    outputs: &BTreeMap<String, TaskOutput>,
) -> BTreeMap<String, TaskOutput> {
    outputs
        .iter()
        .map(|(identifier, output)| {
            let process = &output.permissions.process;
            let permission = Permission::new(
                owner,
                process.public,
                process.authorized_ids.iter().cloned(),
            );
            let normalized = TaskOutput {
                permissions: Permissions::new(permission),
                transient: output.transient,
            };
            (identifier.clone(), normalized)
        })
        .collect()
}

/// What the per-task checks resolved, for the DAG pass.
struct Checked<'c> {
    function: Option<&'c Function>,
    data_manager: Option<&'c Dataset>,
    worker: Option<OrganizationId>,
}

fn check_batch<'t>(
    problems: &mut Problems,
    tasks: &'t [NewTask],
    context: &SubmissionContext<'_>,
) -> Vec<ValidatedTask<'t>> {
    let path = tasks_path();
    if tasks.is_empty() {
        problems.push(path, rule("no task to register"));
        return Vec::new();
    }
    if tasks.len() > context.limits.max_tasks {
        // Refused without looking at the tasks, so the work and the reply stay bounded.
        problems.push(
            path,
            rule(format!(
                "{} tasks in one batch, at most {} allowed",
                tasks.len(),
                context.limits.max_tasks
            )),
        );
        return Vec::new();
    }
    let mut batch = Batch::new(tasks, context);
    for (position, task) in tasks.iter().enumerate() {
        let key_path = path.index(position).field("key");
        if let Some(&first) = batch.index.get(&task.key)
            && first != position
        {
            problems.push(
                key_path.clone(),
                rule(format!(
                    "duplicate task key {}, also used by tasks[{first}]",
                    task.key
                )),
            );
        }
        if context.stored_tasks.contains_key(&task.key) {
            problems.push(key_path, rule(format!("task {} already exists", task.key)));
        }
    }
    let checked: Vec<Checked<'_>> = tasks
        .iter()
        .enumerate()
        .map(|(position, task)| check_task(problems, &batch, position, task))
        .collect();
    let order = sort_tasks(problems, &batch);
    finish(problems, tasks, &mut batch, &checked, &order)
}

/// The checks of one task that do not depend on its parents' ranks or statuses.
fn check_task<'c>(
    problems: &mut Problems,
    batch: &Batch<'_, 'c>,
    position: usize,
    task: &NewTask,
) -> Checked<'c> {
    let context = batch.context;
    let path = tasks_path().index(position);
    if let Some(name) = &task.name {
        check_max_chars(problems, path.field("name"), name);
    }
    check_max_chars(problems, path.field("tag"), &task.tag);
    validate_metadata(problems, &path.field("metadata"), &task.metadata);
    for key in task.requirements.0.keys() {
        if key.is_empty() {
            problems.push(
                path.field("requirements").key(key),
                ValidationErrorKind::Empty,
            );
        }
    }
    check_json_depth(problems, path.field("input"), &task.input);

    let function = context.functions.get(&task.function_key);
    match function {
        None => problems.push(
            path.field("function_key"),
            rule(format!("function {} not found", task.function_key)),
        ),
        Some(function) => check_function(problems, &path, context.owner, function),
    }

    // The task's data manager: its DATA_MANAGER input, when given by the key of a known dataset.
    let data_manager_input = function.and_then(|function| {
        task.inputs.iter().find(|input| {
            function
                .input(&input.identifier)
                .is_some_and(|declared| declared.kind == InputKind::DataManager)
        })
    });
    let data_manager = data_manager_input.and_then(|input| match &input.source {
        InputRef::Asset { asset_key } => context.datasets.get(&DatasetKey(*asset_key)),
        InputRef::ParentOutput { .. } => None,
    });

    let worker = check_worker(
        problems,
        &path,
        context,
        task,
        function.is_some(),
        data_manager_input.is_some(),
        data_manager,
    );
    if let Some(function) = function {
        check_inputs(
            problems,
            &path,
            batch,
            task,
            function,
            data_manager,
            worker.as_ref(),
        );
        check_outputs(problems, &path, task, function);
        check_parameters(problems, &path, task, function);
    } else {
        check_json_depth(
            problems,
            path.field("parameters"),
            &serde_json::Value::Object(task.parameters.clone()),
        );
    }
    check_output_organizations(problems, &path, context, task);

    Checked {
        function,
        data_manager,
        worker,
    }
}

fn check_function(
    problems: &mut Problems,
    path: &FieldPath,
    owner: &OrganizationId,
    function: &Function,
) {
    let path = path.field("function_key");
    let key = function.key;
    if !function.is_enabled {
        problems.push(path.clone(), rule(format!("function {key} is disabled")));
    }
    match function.status {
        FunctionStatus::Failed => {
            problems.push(
                path.clone(),
                rule(format!("function {key} failed to build")),
            );
        }
        FunctionStatus::Canceled => {
            problems.push(path.clone(), rule(format!("function {key} was canceled")));
        }
        FunctionStatus::Waiting | FunctionStatus::Building | FunctionStatus::Ready => {}
    }
    if !function.permissions.can_process(owner) {
        problems.push(
            path,
            rule(format!(
                "organization {owner} is not allowed to process function {key}"
            )),
        );
    }
}

/// Decides the task's worker (SPEC.md §5): its data manager's owner, else the given one, which
/// is then required; it must be a registered organization.
fn check_worker(
    problems: &mut Problems,
    path: &FieldPath,
    context: &SubmissionContext<'_>,
    task: &NewTask,
    function_known: bool,
    has_data_manager_input: bool,
    data_manager: Option<&Dataset>,
) -> Option<OrganizationId> {
    let path = path.field("worker");
    let worker = match (data_manager, &task.worker) {
        (Some(dataset), Some(given)) if *given != dataset.owner => {
            problems.push(
                path.clone(),
                rule(format!(
                    "worker {given} does not match {}, the owner of data manager {}",
                    dataset.owner, dataset.key
                )),
            );
            Some(dataset.owner.clone())
        }
        (Some(dataset), _) => Some(dataset.owner.clone()),
        (None, Some(given)) => Some(given.clone()),
        (None, None) => {
            // Without the function, or with a data manager that could not be resolved (already
            // reported), the worker's absence is not the problem to report.
            if function_known && !has_data_manager_input {
                problems.push(
                    path.clone(),
                    rule("worker cannot be inferred and must be set"),
                );
            }
            None
        }
    };
    if let Some(worker) = &worker
        && !context.organizations.contains(worker)
    {
        problems.push(path, rule(format!("unknown organization {worker}")));
    }
    worker
}

fn check_inputs(
    problems: &mut Problems,
    path: &FieldPath,
    batch: &Batch<'_, '_>,
    task: &NewTask,
    function: &Function,
    data_manager: Option<&Dataset>,
    worker: Option<&OrganizationId>,
) {
    let context = batch.context;
    let owner = context.owner;
    let mut counts: HashMap<&str, usize> = HashMap::new();
    let mut disabled_reported: BTreeSet<TaskKey> = BTreeSet::new();
    for (index, input) in task.inputs.iter().enumerate() {
        let input_path = path.field("inputs").index(index);
        let identifier = input.identifier.as_str();
        let Some(declared) = function.input(identifier) else {
            problems.push(
                input_path.field("identifier"),
                rule(format!(
                    "function {} has no input \"{identifier}\"",
                    function.key
                )),
            );
            continue;
        };
        let count = counts.entry(identifier).or_default();
        *count += 1;
        if *count > 1 && !declared.multiple {
            problems.push(
                input_path.field("identifier"),
                rule(format!(
                    "input \"{identifier}\" is given more than once but is not multiple"
                )),
            );
        }
        let asset_path = input_path.field("asset_key");
        match (declared.kind, &input.source) {
            (InputKind::DataManager, InputRef::ParentOutput { .. }) => problems.push(
                input_path.clone(),
                rule("openers must be referenced using an asset key"),
            ),
            (InputKind::DataSample, InputRef::ParentOutput { .. }) => problems.push(
                input_path.clone(),
                rule("data samples must be referenced using an asset key"),
            ),
            (InputKind::DataManager, InputRef::Asset { asset_key }) => {
                match context.datasets.get(&DatasetKey(*asset_key)) {
                    None => problems.push(
                        asset_path,
                        rule(format!("data manager {asset_key} not found")),
                    ),
                    Some(dataset) if !dataset.permissions.can_process(owner) => problems.push(
                        asset_path,
                        rule(format!(
                            "organization {owner} is not allowed to process data manager {asset_key}"
                        )),
                    ),
                    Some(_) => {}
                }
            }
            (InputKind::DataSample, InputRef::Asset { asset_key }) => {
                match context.data_samples.get(&DataSampleKey(*asset_key)) {
                    None => problems.push(
                        asset_path,
                        rule(format!("data sample {asset_key} not found")),
                    ),
                    Some(sample) => {
                        if let Some(dataset) = data_manager
                            && !sample.data_manager_keys.contains(&dataset.key)
                        {
                            problems.push(
                                asset_path,
                                rule(format!(
                                    "data sample {asset_key} does not belong to data manager {}",
                                    dataset.key
                                )),
                            );
                        }
                    }
                }
            }
            (InputKind::Model, InputRef::Asset { asset_key }) => {
                match context.models.get(&ModelKey(*asset_key)) {
                    None => {
                        problems.push(asset_path, rule(format!("model {asset_key} not found")));
                    }
                    Some(model) => {
                        if model.address.is_none() {
                            problems.push(
                                asset_path.clone(),
                                rule(format!("model {asset_key} has been disabled")),
                            );
                        }
                        if let Some(worker) = worker
                            && !model.permissions.can_process(worker)
                        {
                            problems.push(
                                asset_path,
                                rule(format!(
                                    "worker {worker} is not allowed to process model {asset_key}"
                                )),
                            );
                        }
                    }
                }
            }
            (
                InputKind::Model,
                InputRef::ParentOutput {
                    parent_task_key,
                    parent_task_output_identifier,
                },
            ) => check_parent_output(
                problems,
                &input_path,
                batch,
                declared,
                parent_task_key,
                parent_task_output_identifier,
                worker,
                &mut disabled_reported,
            ),
        }
    }
    for declared in &function.inputs {
        if !declared.optional && !counts.contains_key(declared.identifier.as_str()) {
            problems.push(
                path.field("inputs"),
                rule(format!(
                    "missing input \"{}\" required by function {}",
                    declared.identifier, function.key
                )),
            );
        }
    }
}

/// Checks an input fed by a parent's output. An unknown parent is reported with the DAG.
#[allow(clippy::too_many_arguments)]
fn check_parent_output(
    problems: &mut Problems,
    input_path: &FieldPath,
    batch: &Batch<'_, '_>,
    declared: &FunctionInput,
    parent_key: &TaskKey,
    output_identifier: &str,
    worker: Option<&OrganizationId>,
    disabled_reported: &mut BTreeSet<TaskKey>,
) {
    let (function_key, output, stored) = match batch.parent(parent_key) {
        Parent::Unknown => return,
        Parent::Batch(position) => {
            let output = batch
                .outputs
                .get(position)
                .and_then(|outputs| outputs.get(output_identifier));
            let function_key = batch.tasks.get(position).map(|task| task.function_key);
            let Some(function_key) = function_key else {
                return;
            };
            (function_key, output, None)
        }
        Parent::Stored(stored) => (
            stored.function_key,
            stored.outputs.get(output_identifier),
            Some(stored),
        ),
    };
    if let Some(stored) = stored
        && stored.has_disabled_models
        && disabled_reported.insert(*parent_key)
    {
        problems.push(
            input_path.field("parent_task_key"),
            rule(format!(
                "parent task {parent_key} has disabled models and cannot feed new tasks"
            )),
        );
    }
    let path = input_path.field("parent_task_output_identifier");
    let Some(parent_function) = batch.context.functions.get(&function_key) else {
        // A batch parent's unknown function is reported on the parent itself.
        if stored.is_some() {
            problems.push(
                path,
                rule(format!(
                    "function {function_key} of parent task {parent_key} not found"
                )),
            );
        }
        return;
    };
    let Some(declared_output) = parent_function.output(output_identifier) else {
        problems.push(
            path,
            rule(format!(
                "function {function_key} of parent task {parent_key} has no output \"{output_identifier}\""
            )),
        );
        return;
    };
    let input_identifier = &declared.identifier;
    let kinds_match = matches!(
        (declared.kind, declared_output.kind),
        (InputKind::Model, OutputKind::Model)
    );
    if !kinds_match {
        problems.push(
            path.clone(),
            rule(format!(
                "output \"{output_identifier}\" of parent task {parent_key} is a {}, input \"{input_identifier}\" takes a {}",
                declared_output.kind, declared.kind
            )),
        );
    }
    if declared_output.multiple && !declared.multiple {
        problems.push(
            path.clone(),
            rule(format!(
                "output \"{output_identifier}\" of parent task {parent_key} is multiple, input \"{input_identifier}\" is not"
            )),
        );
    }
    match output {
        // A batch parent missing a declared output is reported on the parent itself.
        None if stored.is_some() => problems.push(
            path,
            rule(format!(
                "parent task {parent_key} has no output \"{output_identifier}\""
            )),
        ),
        None => {}
        Some(output) => {
            if let Some(worker) = worker
                && !output.permissions.can_process(worker)
            {
                problems.push(
                    path,
                    rule(format!(
                        "worker {worker} is not allowed to process output \"{output_identifier}\" of parent task {parent_key}"
                    )),
                );
            }
        }
    }
}

fn check_outputs(problems: &mut Problems, path: &FieldPath, task: &NewTask, function: &Function) {
    let outputs_path = path.field("outputs");
    for (identifier, output) in &task.outputs {
        let output_path = outputs_path.key(identifier);
        let Some(declared) = function.output(identifier) else {
            problems.push(
                output_path,
                rule(format!(
                    "function {} has no output \"{identifier}\"",
                    function.key
                )),
            );
            continue;
        };
        if declared.kind == OutputKind::Performance {
            if !output.permissions.process.public {
                problems.push(
                    output_path.field("permissions"),
                    rule("a PERFORMANCE output must be public"),
                );
            }
            if output.transient {
                problems.push(
                    output_path.field("transient"),
                    rule("a PERFORMANCE output cannot be transient"),
                );
            }
        }
    }
    for declared in &function.outputs {
        if !task.outputs.contains_key(&declared.identifier) {
            problems.push(
                outputs_path.clone(),
                rule(format!(
                    "missing output \"{}\" of function {}",
                    declared.identifier, function.key
                )),
            );
        }
    }
}

/// Every organization named in output permissions must be registered, public or not (SPEC.md
/// keeps the ids of a public permission, so they must make sense).
fn check_output_organizations(
    problems: &mut Problems,
    path: &FieldPath,
    context: &SubmissionContext<'_>,
    task: &NewTask,
) {
    for (identifier, output) in &task.outputs {
        for organization in &output.permissions.process.authorized_ids {
            if !context.organizations.contains(organization) {
                problems.push(
                    path.field("outputs").key(identifier).field("permissions"),
                    rule(format!("unknown organization {organization}")),
                );
            }
        }
    }
}

fn check_parameters(
    problems: &mut Problems,
    path: &FieldPath,
    task: &NewTask,
    function: &Function,
) {
    let parameters_path = path.field("parameters");
    for key in task.parameters.keys() {
        if !function
            .parameters
            .iter()
            .any(|declared| declared.key == *key)
        {
            problems.push(
                parameters_path.key(key),
                rule(format!(
                    "function {} declares no parameter \"{key}\"",
                    function.key
                )),
            );
        }
    }
    let before = problems.0.len();
    check_json_depth(
        problems,
        parameters_path.clone(),
        &serde_json::Value::Object(task.parameters.clone()),
    );
    let too_deep = problems.0.len() > before;
    let Some(schema) = &function.parameter_schema else {
        return;
    };
    if too_deep {
        return;
    }
    let validator = match compile_schema(schema) {
        Ok(validator) => validator,
        Err(reason) => {
            problems.push(
                parameters_path,
                rule(format!(
                    "function {} has an invalid parameter schema: {reason}",
                    function.key
                )),
            );
            return;
        }
    };
    let mut values = function.default_parameters();
    values.extend(
        task.parameters
            .iter()
            .map(|(key, value)| (key.clone(), value.clone())),
    );
    let instance = serde_json::Value::Object(values);
    for error in validator.iter_errors(&instance) {
        let at = pointer_path(
            parameters_path.clone(),
            &instance,
            error.instance_path().as_str(),
        );
        problems.push(at, ValidationErrorKind::SchemaMismatch(error.to_string()));
    }
}

/// `path` followed by the JSON Pointer `pointer` into `value`: array positions become indexes,
/// everything else map keys.
fn pointer_path(mut path: FieldPath, value: &serde_json::Value, pointer: &str) -> FieldPath {
    let mut current = Some(value);
    for raw in pointer.split('/').skip(1) {
        let token = raw.replace("~1", "/").replace("~0", "~");
        match (current, token.parse::<usize>()) {
            (Some(serde_json::Value::Array(items)), Ok(index)) => {
                path = path.index(index);
                current = items.get(index);
            }
            (node, _) => {
                current = node.and_then(|node| node.get(token.as_str()));
                path = path.key(&token);
            }
        }
    }
    path
}

/// Kahn's algorithm over the batch: parents already stored count as satisfied, unknown parents
/// never are. Among ready tasks the earliest submitted goes first. Tasks left unsorted (in or
/// below a cycle, or below an unknown parent) are named in one error.
fn sort_tasks(problems: &mut Problems, batch: &Batch<'_, '_>) -> Vec<usize> {
    let tasks = batch.tasks;
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); tasks.len()];
    let mut unsatisfied: Vec<usize> = vec![0; tasks.len()];
    let mut unknown_parents: Vec<(FieldPath, TaskKey)> = Vec::new();
    for (position, task) in tasks.iter().enumerate() {
        for parent_key in parent_keys(&task.inputs) {
            match batch.parent(&parent_key) {
                Parent::Batch(parent) => {
                    if let Some(list) = children.get_mut(parent) {
                        list.push(position);
                    }
                    unsatisfied[position] += 1;
                }
                Parent::Stored(_) => {}
                Parent::Unknown => unsatisfied[position] += 1,
            }
        }
        for (index, input) in task.inputs.iter().enumerate() {
            if let InputRef::ParentOutput {
                parent_task_key, ..
            } = &input.source
                && matches!(batch.parent(parent_task_key), Parent::Unknown)
            {
                unknown_parents.push((
                    tasks_path()
                        .index(position)
                        .field("inputs")
                        .index(index)
                        .field("parent_task_key"),
                    *parent_task_key,
                ));
            }
        }
    }

    let mut ready: BinaryHeap<Reverse<usize>> = unsatisfied
        .iter()
        .enumerate()
        .filter(|(_, count)| **count == 0)
        .map(|(position, _)| Reverse(position))
        .collect();
    let mut order = Vec::with_capacity(tasks.len());
    while let Some(Reverse(position)) = ready.pop() {
        order.push(position);
        for &child in children
            .get(position)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            unsatisfied[child] -= 1;
            if unsatisfied[child] == 0 {
                ready.push(Reverse(child));
            }
        }
    }

    if order.len() < tasks.len() {
        let mut sorted = vec![false; tasks.len()];
        for &position in &order {
            sorted[position] = true;
        }
        let unsorted: BTreeSet<TaskKey> = tasks
            .iter()
            .zip(&sorted)
            .filter(|(_, sorted)| !**sorted)
            .map(|(task, _)| task.key)
            .collect();
        let names: Vec<String> = unsorted.iter().map(ToString::to_string).collect();
        problems.push(
            tasks_path(),
            rule(format!(
                "unknown parent or cycle among tasks: {}",
                names.join(", ")
            )),
        );
    }
    for (path, key) in unknown_parents {
        problems.push(path, rule(format!("unknown parent task {key}")));
    }
    order
}

/// In topological order: ranks, logs permissions and initial statuses, which depend on the
/// parents'; then the validated tasks (`tasks`, the batch's, borrowed; their normalized
/// outputs moved out of `batch`).
fn finish<'t>(
    problems: &mut Problems,
    tasks: &'t [NewTask],
    batch: &mut Batch<'_, '_>,
    checked: &[Checked<'_>],
    order: &[usize],
) -> Vec<ValidatedTask<'t>> {
    let context = batch.context;
    let max_depth = context.limits.max_depth;
    let count = batch.tasks.len();
    let mut ranks: Vec<u32> = vec![0; count];
    let mut logs: Vec<Permission> = vec![Permission::private(context.owner); count];
    let mut statuses: Vec<Option<InitialStatus>> = vec![None; count];
    let mut validated = Vec::with_capacity(order.len());
    for &position in order {
        let (Some(task), Some(facts)) = (tasks.get(position), checked.get(position)) else {
            continue;
        };
        let parents = parent_keys(&task.inputs);
        let mut rank = 0u32;
        let mut beyond_limit_above = false;
        let mut logs_permission = Permission::private(context.owner);
        let mut parent_statuses: Option<Vec<TaskStatus>> = Some(Vec::new());
        for parent_key in &parents {
            let (parent_rank, parent_logs, parent_status) = match batch.parent(parent_key) {
                Parent::Batch(parent) => {
                    let parent_rank = ranks[parent];
                    beyond_limit_above |= parent_rank > max_depth;
                    (
                        parent_rank,
                        &logs[parent],
                        statuses[parent].map(|initial| initial.status),
                    )
                }
                Parent::Stored(stored) => {
                    (stored.rank, &stored.logs_permission, Some(stored.status))
                }
                // Sorted tasks have no unknown parent.
                Parent::Unknown => continue,
            };
            rank = rank.max(parent_rank.saturating_add(1));
            logs_permission = logs_permission.union(parent_logs);
            match (&mut parent_statuses, parent_status) {
                (Some(list), Some(status)) => list.push(status),
                (list, _) => *list = None,
            }
        }
        if rank > max_depth && !beyond_limit_above {
            problems.push(
                tasks_path().index(position),
                rule(format!(
                    "rank {rank} exceeds the maximum depth of {max_depth}"
                )),
            );
        }
        if let Some(dataset) = facts.data_manager {
            logs_permission = dataset.logs_permission.clone();
        }
        ranks[position] = rank;
        logs[position] = logs_permission.clone();
        statuses[position] = match (facts.function, parent_statuses) {
            (Some(function), Some(parent_statuses)) => {
                Some(initial_status(function.status, parent_statuses))
            }
            _ => None,
        };

        let (Some(function), Some(worker), Some(initial)) =
            (facts.function, &facts.worker, statuses[position])
        else {
            // Whatever is missing was reported by the checks above.
            continue;
        };
        validated.push(ValidatedTask {
            task,
            rank,
            worker: worker.clone(),
            parents,
            // Each position comes once in `order`.
            outputs: batch
                .outputs
                .get_mut(position)
                .map(std::mem::take)
                .unwrap_or_default(),
            logs_permission,
            status: initial.status,
            waiting_reason: initial.waiting_reason,
            requirements: function.requirements.merged_with(&task.requirements),
        });
    }
    if problems.0.is_empty() && validated.len() != count {
        // Cannot happen: a task is left out only for a reason already reported.
        problems.push(tasks_path(), rule("some tasks could not be validated"));
    }
    validated
}

#[cfg(test)]
mod tests;
