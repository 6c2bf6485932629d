use std::collections::{BTreeMap, BTreeSet, HashMap};

use expect_test::{Expect, expect};
use serde_json::{Value, json};
use uuid::Uuid;

use super::*;
use crate::{
    DataSample, DataSampleKey, Dataset, DatasetKey, File, Function, FunctionKey, FunctionStatus,
    Metadata, Model, ModelKey, OrganizationId, Permission, Permissions, RequirementSet,
    RetryPolicy, TaskKey, TaskOutput, TaskStatus, Timestamp,
};

// ---------------------------------------------------------------------------------------------
// Names instead of UUIDs: every key in these tests is a short name stored in the UUID's bytes,
// and the rendered output turns such UUIDs back into names.

/// The UUID standing for `name` (at most 16 ASCII bytes).
fn k(name: &str) -> Uuid {
    assert!(name.len() <= 16, "test key names fit in a UUID");
    let mut bytes = [0u8; 16];
    bytes[..name.len()].copy_from_slice(name.as_bytes());
    Uuid::from_bytes(bytes)
}

fn name_of(uuid: Uuid) -> Option<String> {
    let bytes = uuid.as_bytes();
    let len = bytes.iter().rposition(|b| *b != 0)? + 1;
    let name = &bytes[..len];
    name.iter()
        .all(|b| b.is_ascii_graphic())
        .then(|| String::from_utf8_lossy(name).into_owned())
}

/// `text` with every name-UUID replaced by its name.
fn with_names(text: &str) -> String {
    let mut out = String::new();
    let mut at = 0;
    while at < text.len() {
        if let Some(candidate) = text.get(at..at + 36)
            && candidate.as_bytes()[8] == b'-'
            && let Ok(uuid) = Uuid::parse_str(candidate)
            && let Some(name) = name_of(uuid)
        {
            out.push_str(&name);
            at += 36;
            continue;
        }
        let ch = text[at..].chars().next().expect("at is a char boundary");
        out.push(ch);
        at += ch.len_utf8();
    }
    out
}

fn org(name: &str) -> OrganizationId {
    OrganizationId::from(name)
}

fn epoch() -> Timestamp {
    Timestamp::UNIX_EPOCH
}

fn file() -> File {
    File {
        checksum: "0".repeat(64),
        storage_address: "file:///artifacts/x".to_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// The stored world every case starts from.

/// org1 submits; org2 owns dataset d1 (samples s1, s2); org1 owns d2 (sample s3).
/// Functions: `train` (opener, datasamples, optional model → model, score; parameters lr with a
/// default and epochs, under a schema), `aggregate` (optional multiple models → model), `split`
/// (→ multiple models). Models: m1 (org2 may use it), m_off (disabled), m_private (org1 only).
/// Stored DONE tasks r0, r1, r3 (of ranks 0, 1, 3), a FAILED task `failed`, and `pruned`, whose
/// models were disabled.
struct Fixture {
    owner: OrganizationId,
    organizations: BTreeSet<OrganizationId>,
    functions: HashMap<FunctionKey, Function>,
    datasets: HashMap<DatasetKey, Dataset>,
    data_samples: HashMap<DataSampleKey, DataSample>,
    models: HashMap<ModelKey, Model>,
    stored_tasks: HashMap<TaskKey, StoredTask>,
    limits: Limits,
}

fn function(name: &str, inputs: Value, outputs: Value) -> Function {
    Function {
        key: FunctionKey(k(name)),
        name: name.to_owned(),
        display_name: None,
        summary: None,
        owner: org("org1"),
        creator: None,
        project: None,
        permissions: Permissions::private(&org("org1")),
        metadata: Metadata::new(),
        description: None,
        archive: None,
        image: None,
        inputs: serde_json::from_value(inputs).expect("inputs decode"),
        outputs: serde_json::from_value(outputs).expect("outputs decode"),
        steps: Vec::new(),
        build_steps: Vec::new(),
        parameters: Vec::new(),
        parameter_schema: None,
        workspace: None,
        kind: None,
        requirements: RequirementSet::any(),
        retry: RetryPolicy::default(),
        timeout_secs: None,
        is_enabled: true,
        status: FunctionStatus::Ready,
        data: Value::Null,
        creation_date: epoch(),
        update_date: epoch(),
    }
}

fn dataset(name: &str, owner: &str, allowed: &[&str], samples: &[&str]) -> Dataset {
    let owner = org(owner);
    Dataset {
        key: DatasetKey(k(name)),
        name: name.to_owned(),
        permissions: Permissions::new(Permission::new(
            &owner,
            false,
            allowed.iter().map(|o| org(o)),
        )),
        data_type: "csv".to_owned(),
        data_sample_keys: samples.iter().map(|s| DataSampleKey(k(s))).collect(),
        opener: file(),
        description: file(),
        metadata: Metadata::new(),
        logs_permission: Permission::private(&owner),
        creation_date: epoch(),
        owner,
    }
}

fn sample(name: &str, owner: &str, dataset: &str) -> DataSample {
    DataSample {
        key: DataSampleKey(k(name)),
        owner: org(owner),
        data_manager_keys: vec![DatasetKey(k(dataset))],
        path: None,
        creation_date: epoch(),
    }
}

fn model(name: &str, address: Option<File>, permission: Permission) -> Model {
    Model {
        key: ModelKey(k(name)),
        compute_task_key: TaskKey(k("r0")),
        output_identifier: "model".to_owned(),
        address,
        permissions: Permissions::new(permission),
        owner: org("org1"),
        creation_date: epoch(),
    }
}

/// A stored task of `aggregate` run by org1, whose model output org1 and org2 may use.
fn stored(rank: u32, status: TaskStatus, logs_permission: Permission) -> StoredTask {
    let output = TaskOutput {
        permissions: Permissions::new(Permission::new(&org("org1"), false, [org("org2")])),
        transient: false,
    };
    StoredTask {
        status,
        function_key: FunctionKey(k("aggregate")),
        rank,
        worker: org("org1"),
        outputs: BTreeMap::from([("model".to_owned(), output)]),
        logs_permission,
        has_disabled_models: false,
    }
}

impl Fixture {
    fn new() -> Fixture {
        let org1 = org("org1");
        let mut train = function(
            "train",
            json!([
                {"identifier": "opener", "kind": "DATA_MANAGER"},
                {"identifier": "datasamples", "kind": "DATA_SAMPLE", "multiple": true},
                {"identifier": "model", "kind": "MODEL", "optional": true},
            ]),
            json!([
                {"identifier": "model", "kind": "MODEL"},
                {"identifier": "score", "kind": "PERFORMANCE"},
            ]),
        );
        train.parameters = serde_json::from_value(json!([
            {"key": "lr", "default": 0.1},
            {"key": "epochs"},
            {"key": "layers"},
        ]))
        .expect("parameters decode");
        train.parameter_schema = Some(json!({
            "type": "object",
            "required": ["lr"],
            "properties": {
                "lr": {"type": "number", "minimum": 0},
                "epochs": {"type": "integer", "minimum": 1},
                "layers": {"type": "array", "items": {"type": "integer"}},
            },
        }));
        train.requirements = RequirementSet(BTreeMap::from([
            ("os".to_owned(), "linux".to_owned()),
            ("gpu".to_owned(), "any".to_owned()),
        ]));
        let aggregate = function(
            "aggregate",
            json!([{"identifier": "models", "kind": "MODEL", "multiple": true, "optional": true}]),
            json!([{"identifier": "model", "kind": "MODEL"}]),
        );
        let split = function(
            "split",
            json!([]),
            json!([{"identifier": "models", "kind": "MODEL", "multiple": true}]),
        );
        let datasets = [
            dataset("d1", "org2", &["org1"], &["s1", "s2"]),
            dataset("d2", "org1", &[], &["s3"]),
        ];
        let samples = [
            sample("s1", "org2", "d1"),
            sample("s2", "org2", "d1"),
            sample("s3", "org1", "d2"),
        ];
        let models = [
            model(
                "m1",
                Some(file()),
                Permission::new(&org1, false, [org("org2")]),
            ),
            model("m_off", None, Permission::public(&org1)),
            model("m_private", Some(file()), Permission::private(&org1)),
        ];
        let mut pruned = stored(0, TaskStatus::Done, Permission::private(&org1));
        pruned.has_disabled_models = true;
        let stored_tasks = [
            (
                "r0",
                stored(0, TaskStatus::Done, Permission::private(&org("org2"))),
            ),
            (
                "r1",
                stored(
                    1,
                    TaskStatus::Done,
                    Permission::new(&org1, false, [org("org3")]),
                ),
            ),
            (
                "r3",
                stored(3, TaskStatus::Done, Permission::private(&org1)),
            ),
            (
                "failed",
                stored(0, TaskStatus::Failed, Permission::private(&org1)),
            ),
            ("pruned", pruned),
        ];
        Fixture {
            owner: org1.clone(),
            organizations: BTreeSet::from([org1, org("org2")]),
            functions: [train, aggregate, split]
                .into_iter()
                .map(|f| (f.key, f))
                .collect(),
            datasets: datasets.into_iter().map(|d| (d.key, d)).collect(),
            data_samples: samples.into_iter().map(|s| (s.key, s)).collect(),
            models: models.into_iter().map(|m| (m.key, m)).collect(),
            stored_tasks: stored_tasks
                .into_iter()
                .map(|(name, task)| (TaskKey(k(name)), task))
                .collect(),
            limits: Limits::DEFAULT,
        }
    }

    fn context(&self) -> SubmissionContext<'_> {
        SubmissionContext {
            owner: &self.owner,
            organizations: &self.organizations,
            functions: &self.functions,
            datasets: &self.datasets,
            data_samples: &self.data_samples,
            models: &self.models,
            stored_tasks: &self.stored_tasks,
            limits: &self.limits,
        }
    }

    fn function_mut(&mut self, name: &str) -> &mut Function {
        self.functions
            .get_mut(&FunctionKey(k(name)))
            .expect("fixture function")
    }
}

// ---------------------------------------------------------------------------------------------
// Submissions, written as JSON so that cases read like what producers send.

fn asset(identifier: &str, key: &str) -> Value {
    json!({"identifier": identifier, "asset_key": k(key)})
}

fn from_parent(identifier: &str, parent: &str, output: &str) -> Value {
    json!({
        "identifier": identifier,
        "parent_task_key": k(parent),
        "parent_task_output_identifier": output,
    })
}

fn permissions(public: bool, ids: &[&str]) -> Value {
    json!({"permissions": {"process": {"public": public, "authorized_ids": ids}}})
}

/// A valid `train` task on d1 (so run by org2): a private model and a public score.
fn train(key: &str) -> Value {
    json!({
        "key": k(key),
        "function_key": k("train"),
        "inputs": [asset("opener", "d1"), asset("datasamples", "s1"), asset("datasamples", "s2")],
        "outputs": {"model": permissions(false, &[]), "score": permissions(true, &[])},
    })
}

/// `train` on d1 continuing from `parent`'s model.
fn train_from(key: &str, parent: &str) -> Value {
    let mut task = train(key);
    push_input(&mut task, from_parent("model", parent, "model"));
    task
}

/// A valid `aggregate` task run by org1 over the models of `parents`; org2 may use its model.
fn aggregate(key: &str, parents: &[&str]) -> Value {
    let inputs: Vec<Value> = parents
        .iter()
        .map(|p| from_parent("models", p, "model"))
        .collect();
    json!({
        "key": k(key),
        "function_key": k("aggregate"),
        "inputs": inputs,
        "outputs": {"model": permissions(false, &["org2"])},
        "worker": "org1",
    })
}

fn push_input(task: &mut Value, input: Value) {
    task["inputs"]
        .as_array_mut()
        .expect("inputs is a list")
        .push(input);
}

fn decode(tasks: Vec<Value>) -> Vec<NewTask> {
    tasks
        .into_iter()
        .map(|task| serde_json::from_value(task).expect("test task decodes"))
        .collect()
}

fn render_permission(permission: &Permission) -> String {
    if permission.public {
        "public".to_owned()
    } else {
        let ids: Vec<&str> = permission
            .authorized_ids
            .iter()
            .map(OrganizationId::as_str)
            .collect();
        format!("[{}]", ids.join(", "))
    }
}

fn render(result: Result<Vec<ValidatedTask<'_>>, Vec<ValidationError>>) -> String {
    let text: String = match result {
        Ok(tasks) => tasks
            .iter()
            .map(|t| {
                let mut line = format!(
                    "{} rank {} worker {} {}",
                    t.task.key, t.rank, t.worker, t.status
                );
                if let Some(reason) = t.waiting_reason {
                    line.push_str(&format!(" ({reason})"));
                }
                line.push_str(&format!(" logs {}", render_permission(&t.logs_permission)));
                if !t.parents.is_empty() {
                    let parents: Vec<String> = t.parents.iter().map(ToString::to_string).collect();
                    line.push_str(&format!(" parents {}", parents.join(", ")));
                }
                line.push('\n');
                line
            })
            .collect(),
        Err(errors) => errors.iter().map(|e| format!("{e}\n")).collect(),
    };
    with_names(&text)
}

/// Validates `tasks` against the fixture changed by `edit`, and compares the rendered result
/// (the tasks in order with rank, worker, status and logs permission, or every error) with
/// `expect`.
fn check_with(edit: impl FnOnce(&mut Fixture), tasks: Vec<Value>, expect: Expect) {
    let mut fixture = Fixture::new();
    edit(&mut fixture);
    let tasks = decode(tasks);
    let result = validate_tasks(&tasks, &fixture.context());
    expect.assert_eq(&render(result));
}

fn check(tasks: Vec<Value>, expect: Expect) {
    check_with(|_| {}, tasks, expect);
}

// ---------------------------------------------------------------------------------------------
// The batch

#[test]
fn a_valid_batch_passes() {
    check(
        vec![train("a"), aggregate("b", &["a"]), train_from("c", "b")],
        expect![[r#"
            a rank 0 worker org2 TODO logs [org2]
            b rank 1 worker org1 WAITING (PARENTS) logs [org1, org2] parents a
            c rank 2 worker org2 WAITING (PARENTS) logs [org2] parents b
        "#]],
    );
}

#[test]
fn an_empty_batch_is_refused() {
    check(
        vec![],
        expect![[r#"
            tasks: no task to register
        "#]],
    );
}

#[test]
fn a_batch_over_the_size_limit_is_refused() {
    check_with(
        |f| f.limits.max_tasks = 2,
        vec![train("a"), train("b"), train("c")],
        expect![[r#"
            tasks: 3 tasks in one batch, at most 2 allowed
        "#]],
    );
}

#[test]
fn duplicate_task_keys_are_refused() {
    check(
        vec![train("a"), train("b"), train("a")],
        expect![[r#"
            tasks[2].key: duplicate task key a, also used by tasks[0]
        "#]],
    );
}

#[test]
fn an_existing_task_key_is_refused() {
    check(
        vec![aggregate("r0", &[])],
        expect![[r#"
            tasks[0].key: task r0 already exists
        "#]],
    );
}

#[test]
fn plan_fields_are_checked_before_its_tasks() {
    let fixture = Fixture::new();
    let submission: PlanSubmission = serde_json::from_value(json!({
        "key": k("plan"),
        "name": "",
        "tag": "t".repeat(101),
        "metadata": {"__hidden": "x", "round_idx": "1"},
        "tasks": [train("a"), aggregate("b", &["ghost"])],
    }))
    .expect("test plan decodes");
    expect![[r#"
        name: must not be empty
        tag: is 101 characters long, at most 100 allowed
        metadata["__hidden"]: metadata keys must not contain "__"
        tasks: unknown parent or cycle among tasks: b
        tasks[1].inputs[0].parent_task_key: unknown parent task ghost
    "#]]
    .assert_eq(&render(validate_plan(&submission, &fixture.context())));
}

#[test]
fn a_valid_plan_passes() {
    let fixture = Fixture::new();
    let submission: PlanSubmission = serde_json::from_value(json!({
        "key": k("plan"),
        "name": "p".repeat(100),
        "tag": "t".repeat(100),
        "metadata": {"round_idx": "1"},
        "tasks": [aggregate("b", &["a"]), train("a")],
    }))
    .expect("test plan decodes");
    expect![[r#"
        a rank 0 worker org2 TODO logs [org2]
        b rank 1 worker org1 WAITING (PARENTS) logs [org1, org2] parents a
    "#]]
    .assert_eq(&render(validate_plan(&submission, &fixture.context())));
}

#[test]
fn task_names_tags_metadata_and_json_are_checked() {
    let mut deep = json!(1);
    for _ in 0..40 {
        deep = json!([deep]);
    }
    let mut task = aggregate("a", &[]);
    task["name"] = json!("n".repeat(101));
    task["tag"] = json!("t".repeat(101));
    task["metadata"] = json!({"k": "v".repeat(101)});
    task["requirements"] = json!({"": "x"});
    task["input"] = deep.clone();
    let mut named = aggregate("b", &[]);
    named["name"] = json!("n".repeat(100));
    named["tag"] = json!("t".repeat(100));
    check(
        vec![task, named],
        expect![[r#"
            tasks[0].name: is 101 characters long, at most 100 allowed
            tasks[0].tag: is 101 characters long, at most 100 allowed
            tasks[0].metadata["k"]: is 101 bytes long, at most 100 allowed
            tasks[0].requirements[""]: must not be empty
            tasks[0].input: is nested deeper than 32 levels
        "#]],
    );
}

// ---------------------------------------------------------------------------------------------
// The function

#[test]
fn an_unknown_function_is_refused() {
    let mut task = aggregate("a", &[]);
    task["function_key"] = json!(k("nope"));
    check(
        vec![task],
        expect![[r#"
            tasks[0].function_key: function nope not found
        "#]],
    );
}

#[test]
fn a_disabled_failed_or_forbidden_function_is_refused() {
    check_with(
        |f| {
            let aggregate = f.function_mut("aggregate");
            aggregate.is_enabled = false;
            aggregate.status = FunctionStatus::Failed;
            aggregate.permissions = Permissions::private(&org("org2"));
            f.function_mut("split").status = FunctionStatus::Canceled;
        },
        vec![
            aggregate("a", &[]),
            json!({
                "key": k("b"),
                "function_key": k("split"),
                "outputs": {"models": permissions(false, &[])},
                "worker": "org1",
            }),
        ],
        expect![[r#"
            tasks[0].function_key: function aggregate is disabled
            tasks[0].function_key: function aggregate failed to build
            tasks[0].function_key: organization org1 is not allowed to process function aggregate
            tasks[1].function_key: function split was canceled
        "#]],
    );
}

#[test]
fn a_task_of_a_function_not_yet_built_waits_for_the_build() {
    check_with(
        |f| f.function_mut("aggregate").status = FunctionStatus::Building,
        vec![aggregate("a", &[]), aggregate("b", &["a", "r0"])],
        expect![[r#"
            a rank 0 worker org1 WAITING (BUILD) logs [org1]
            b rank 1 worker org1 WAITING (BUILD) logs [org1, org2] parents a, r0
        "#]],
    );
}

// ---------------------------------------------------------------------------------------------
// Inputs

#[test]
fn an_optional_input_may_be_given_or_omitted() {
    let mut with_model = train("b");
    push_input(&mut with_model, asset("model", "m1"));
    check(
        vec![train("a"), with_model],
        expect![[r#"
            a rank 0 worker org2 TODO logs [org2]
            b rank 0 worker org2 TODO logs [org2]
        "#]],
    );
}

#[test]
fn a_missing_required_input_is_refused() {
    let mut without_samples = train("a");
    without_samples["inputs"] = json!([asset("opener", "d1")]);
    let mut without_opener = train("b");
    without_opener["inputs"] = json!([asset("datasamples", "s1")]);
    check(
        vec![without_samples, without_opener],
        expect![[r#"
            tasks[0].inputs: missing input "datasamples" required by function train
            tasks[1].worker: worker cannot be inferred and must be set
            tasks[1].inputs: missing input "opener" required by function train
        "#]],
    );
}

#[test]
fn a_single_input_given_twice_is_refused() {
    let mut task = train("a");
    push_input(&mut task, asset("opener", "d1"));
    push_input(&mut task, asset("model", "m1"));
    push_input(&mut task, asset("model", "m1"));
    check(
        vec![task],
        expect![[r#"
            tasks[0].inputs[3].identifier: input "opener" is given more than once but is not multiple
            tasks[0].inputs[5].identifier: input "model" is given more than once but is not multiple
        "#]],
    );
}

#[test]
fn an_unknown_input_identifier_is_refused() {
    let mut task = train("a");
    push_input(&mut task, asset("weights", "m1"));
    check(
        vec![task],
        expect![[r#"
            tasks[0].inputs[3].identifier: function train has no input "weights"
        "#]],
    );
}

#[test]
fn unknown_assets_are_refused() {
    let mut task = train("a");
    task["inputs"] = json!([
        asset("opener", "d9"),
        asset("datasamples", "s9"),
        asset("model", "m9"),
    ]);
    check(
        vec![task],
        expect![[r#"
            tasks[0].inputs[0].asset_key: data manager d9 not found
            tasks[0].inputs[1].asset_key: data sample s9 not found
            tasks[0].inputs[2].asset_key: model m9 not found
        "#]],
    );
}

#[test]
fn the_owner_must_be_allowed_to_process_the_data_manager() {
    check_with(
        |f| {
            let d1 = f.datasets.get_mut(&DatasetKey(k("d1"))).expect("d1");
            d1.permissions = Permissions::private(&org("org2"));
        },
        vec![train("a")],
        expect![[r#"
            tasks[0].inputs[0].asset_key: organization org1 is not allowed to process data manager d1
        "#]],
    );
}

#[test]
fn a_sample_of_another_data_manager_is_refused() {
    let mut task = train("a");
    push_input(&mut task, asset("datasamples", "s3"));
    check(
        vec![task],
        expect![[r#"
            tasks[0].inputs[3].asset_key: data sample s3 does not belong to data manager d1
        "#]],
    );
}

#[test]
fn a_model_input_must_exist_be_enabled_and_be_allowed_to_the_worker() {
    let mut disabled = train("a");
    push_input(&mut disabled, asset("model", "m_off"));
    let mut forbidden = train("b");
    push_input(&mut forbidden, asset("model", "m_private"));
    check(
        vec![disabled, forbidden],
        expect![[r#"
            tasks[0].inputs[3].asset_key: model m_off has been disabled
            tasks[1].inputs[3].asset_key: worker org2 is not allowed to process model m_private
        "#]],
    );
}

#[test]
fn a_parent_output_of_another_kind_is_refused() {
    let mut task = train("b");
    push_input(&mut task, from_parent("model", "a", "score"));
    check(
        vec![train("a"), task],
        expect![[r#"
            tasks[1].inputs[3].parent_task_output_identifier: output "score" of parent task a is a PERFORMANCE, input "model" takes a MODEL
        "#]],
    );
}

#[test]
fn a_parent_output_its_function_does_not_declare_is_refused() {
    let mut task = aggregate("b", &[]);
    push_input(&mut task, from_parent("models", "a", "weights"));
    push_input(&mut task, from_parent("models", "r0", "weights"));
    check(
        vec![aggregate("a", &[]), task],
        expect![[r#"
            tasks[1].inputs[0].parent_task_output_identifier: function aggregate of parent task a has no output "weights"
            tasks[1].inputs[1].parent_task_output_identifier: function aggregate of parent task r0 has no output "weights"
        "#]],
    );
}

#[test]
fn a_multiple_output_never_feeds_a_single_input() {
    let split = json!({
        "key": k("a"),
        "function_key": k("split"),
        "outputs": {"models": permissions(false, &["org2"])},
        "worker": "org1",
    });
    let mut single = train("b");
    push_input(&mut single, from_parent("model", "a", "models"));
    let mut multiple = aggregate("c", &[]);
    push_input(&mut multiple, from_parent("models", "a", "models"));
    check(
        vec![split, single, multiple],
        expect![[r#"
            tasks[1].inputs[3].parent_task_output_identifier: output "models" of parent task a is multiple, input "model" is not
        "#]],
    );
}

#[test]
fn a_data_manager_or_sample_from_a_parent_output_is_refused() {
    let mut task = train("b");
    task["inputs"] = json!([
        from_parent("opener", "a", "model"),
        from_parent("datasamples", "a", "model"),
    ]);
    task["worker"] = json!("org2");
    check(
        vec![aggregate("a", &[]), task],
        expect![[r#"
            tasks[1].inputs[0]: openers must be referenced using an asset key
            tasks[1].inputs[1]: data samples must be referenced using an asset key
        "#]],
    );
}

#[test]
fn the_worker_must_be_allowed_to_process_parent_outputs() {
    let mut private = aggregate("a", &[]);
    private["outputs"] = json!({"model": permissions(false, &[])});
    check(
        vec![private, train_from("b", "a")],
        expect![[r#"
            tasks[1].inputs[3].parent_task_output_identifier: worker org2 is not allowed to process output "model" of parent task a
        "#]],
    );
}

#[test]
fn a_stored_parent_whose_models_were_disabled_is_refused() {
    let mut task = aggregate("a", &["pruned"]);
    push_input(&mut task, from_parent("models", "pruned", "model"));
    check(
        vec![task],
        expect![[r#"
            tasks[0].inputs[0].parent_task_key: parent task pruned has disabled models and cannot feed new tasks
        "#]],
    );
}

// ---------------------------------------------------------------------------------------------
// Outputs

#[test]
fn outputs_must_be_exactly_the_functions() {
    let mut missing = train("a");
    missing["outputs"] = json!({"model": permissions(false, &[])});
    let mut unknown = train("b");
    unknown["outputs"]["extra"] = permissions(false, &[]);
    check(
        vec![missing, unknown],
        expect![[r#"
            tasks[0].outputs: missing output "score" of function train
            tasks[1].outputs["extra"]: function train has no output "extra"
        "#]],
    );
}

#[test]
fn a_performance_output_must_be_public_and_not_transient() {
    let mut private = train("a");
    private["outputs"]["score"] = permissions(false, &[]);
    let mut transient = train("b");
    transient["outputs"]["score"]["transient"] = json!(true);
    let mut transient_model = train("c");
    transient_model["outputs"]["model"]["transient"] = json!(true);
    check(
        vec![private, transient, transient_model],
        expect![[r#"
            tasks[0].outputs["score"].permissions: a PERFORMANCE output must be public
            tasks[1].outputs["score"].transient: a PERFORMANCE output cannot be transient
        "#]],
    );
}

#[test]
fn output_permissions_name_registered_organizations_only() {
    let mut task = train("a");
    task["outputs"]["model"] = permissions(false, &["org2", "org9"]);
    task["outputs"]["score"] = permissions(true, &["org8"]);
    check(
        vec![task],
        expect![[r#"
            tasks[0].outputs["model"].permissions: unknown organization org9
            tasks[0].outputs["score"].permissions: unknown organization org8
        "#]],
    );
}

#[test]
fn outputs_are_normalized_and_requirements_merged() {
    let fixture = Fixture::new();
    let mut task = train("a");
    task["outputs"]["model"] = json!({
        "permissions": {"process": {"public": false, "authorized_ids": ["org2", "org2"]}},
        "transient": true,
    });
    task["requirements"] = json!({"gpu": "a100", "zone": "eu"});
    let tasks = decode(vec![task]);
    let validated = validate_tasks(&tasks, &fixture.context()).expect("valid");
    let rendered: String = validated
        .iter()
        .flat_map(|t| {
            let outputs = t.outputs.iter().map(|(id, output)| {
                format!(
                    "output {id}: {} transient={}\n",
                    render_permission(&output.permissions.process),
                    output.transient
                )
            });
            outputs.chain([format!("requirements: {}\n", t.requirements.routing_key())])
        })
        .collect();
    expect![[r#"
        output model: [org1, org2] transient=true
        output score: public transient=false
        requirements: gpu=a100,os=linux,zone=eu
    "#]]
    .assert_eq(&rendered);
}

// ---------------------------------------------------------------------------------------------
// The worker

#[test]
fn the_worker_is_the_data_managers_owner() {
    let mut given = train("b");
    given["worker"] = json!("org2");
    check(
        vec![train("a"), given],
        expect![[r#"
            a rank 0 worker org2 TODO logs [org2]
            b rank 0 worker org2 TODO logs [org2]
        "#]],
    );
}

#[test]
fn a_worker_other_than_the_data_managers_owner_is_refused() {
    let mut task = train("a");
    task["worker"] = json!("org1");
    check(
        vec![task],
        expect![[r#"
            tasks[0].worker: worker org1 does not match org2, the owner of data manager d1
        "#]],
    );
}

#[test]
fn without_a_data_manager_the_worker_must_be_given_and_registered() {
    let mut missing = aggregate("a", &[]);
    missing.as_object_mut().expect("object").remove("worker");
    let mut unknown = aggregate("b", &[]);
    unknown["worker"] = json!("org9");
    check(
        vec![missing, unknown, aggregate("c", &[])],
        expect![[r#"
            tasks[0].worker: worker cannot be inferred and must be set
            tasks[1].worker: unknown organization org9
        "#]],
    );
}

// ---------------------------------------------------------------------------------------------
// Parameters

#[test]
fn parameters_must_be_declared_and_match_the_schema() {
    let mut unknown = aggregate("a", &[]);
    unknown["parameters"] = json!({"lr": 0.5});
    let mut mismatch = train("b");
    mismatch["parameters"] = json!({"lr": -1, "epochs": "many", "layers": [1, "x"], "seed": 3});
    check(
        vec![unknown, mismatch],
        expect![[r#"
            tasks[0].parameters["lr"]: function aggregate declares no parameter "lr"
            tasks[1].parameters["seed"]: function train declares no parameter "seed"
            tasks[1].parameters["epochs"]: does not match the parameter schema: "many" is not of type "integer"
            tasks[1].parameters["layers"][1]: does not match the parameter schema: "x" is not of type "integer"
            tasks[1].parameters["lr"]: does not match the parameter schema: -1 is less than the minimum of 0
        "#]],
    );
}

#[test]
fn declared_defaults_fill_in_missing_parameters() {
    let mut task = train("a");
    task["parameters"] = json!({"epochs": 3, "layers": [64, 32]});
    check(
        vec![task],
        expect![[r#"
            a rank 0 worker org2 TODO logs [org2]
        "#]],
    );
}

// ---------------------------------------------------------------------------------------------
// The DAG: order, cycles, unknown parents, ranks

#[test]
fn an_out_of_order_batch_is_sorted_with_roots_first() {
    check(
        vec![
            aggregate("d", &["c", "b"]),
            aggregate("c", &["a"]),
            aggregate("b", &["a"]),
            aggregate("e", &[]),
            aggregate("a", &[]),
        ],
        expect![[r#"
            e rank 0 worker org1 TODO logs [org1]
            a rank 0 worker org1 TODO logs [org1]
            c rank 1 worker org1 WAITING (PARENTS) logs [org1] parents a
            b rank 1 worker org1 WAITING (PARENTS) logs [org1] parents a
            d rank 2 worker org1 WAITING (PARENTS) logs [org1] parents c, b
        "#]],
    );
}

#[test]
fn a_cycle_names_every_task_it_blocks() {
    check(
        vec![
            aggregate("a", &["b"]),
            aggregate("b", &["a"]),
            aggregate("c", &["b"]),
            aggregate("d", &["d"]),
            aggregate("e", &[]),
        ],
        expect![[r#"
            tasks: unknown parent or cycle among tasks: a, b, c, d
        "#]],
    );
}

#[test]
fn an_unknown_parent_is_named() {
    check(
        vec![
            aggregate("a", &[]),
            aggregate("b", &["a", "ghost"]),
            aggregate("c", &["b"]),
        ],
        expect![[r#"
            tasks: unknown parent or cycle among tasks: b, c
            tasks[1].inputs[1].parent_task_key: unknown parent task ghost
        "#]],
    );
}

#[test]
fn stored_parents_are_accepted_and_their_ranks_count() {
    check(
        vec![
            aggregate("x", &["r0", "r1", "r3"]),
            aggregate("y", &["x", "r0"]),
        ],
        expect![[r#"
            x rank 4 worker org1 TODO logs [org1, org2, org3] parents r0, r1, r3
            y rank 5 worker org1 WAITING (PARENTS) logs [org1, org2, org3] parents x, r0
        "#]],
    );
}

#[test]
fn ranks_of_linear_independent_and_complete_graphs() {
    check(
        vec![
            aggregate("l0", &[]),
            aggregate("l1", &["l0"]),
            aggregate("l2", &["l1"]),
            aggregate("i0", &[]),
            aggregate("i1", &[]),
            aggregate("k0", &[]),
            aggregate("k1", &["k0"]),
            aggregate("k2", &["k0", "k1"]),
            aggregate("k3", &["k0", "k1", "k2"]),
        ],
        expect![[r#"
            l0 rank 0 worker org1 TODO logs [org1]
            l1 rank 1 worker org1 WAITING (PARENTS) logs [org1] parents l0
            l2 rank 2 worker org1 WAITING (PARENTS) logs [org1] parents l1
            i0 rank 0 worker org1 TODO logs [org1]
            i1 rank 0 worker org1 TODO logs [org1]
            k0 rank 0 worker org1 TODO logs [org1]
            k1 rank 1 worker org1 WAITING (PARENTS) logs [org1] parents k0
            k2 rank 2 worker org1 WAITING (PARENTS) logs [org1] parents k0, k1
            k3 rank 3 worker org1 WAITING (PARENTS) logs [org1] parents k0, k1, k2
        "#]],
    );
}

#[test]
fn a_duplicated_edge_is_one_parent() {
    check(
        vec![aggregate("a", &[]), aggregate("b", &["a", "a"])],
        expect![[r#"
            a rank 0 worker org1 TODO logs [org1]
            b rank 1 worker org1 WAITING (PARENTS) logs [org1] parents a
        "#]],
    );
}

/// Every permutation of `items`, by Heap's algorithm.
fn permutations<T: Clone>(items: &[T]) -> Vec<Vec<T>> {
    fn heap<T: Clone>(n: usize, items: &mut Vec<T>, out: &mut Vec<Vec<T>>) {
        if n <= 1 {
            out.push(items.clone());
            return;
        }
        for i in 0..n - 1 {
            heap(n - 1, items, out);
            if n.is_multiple_of(2) {
                items.swap(i, n - 1);
            } else {
                items.swap(0, n - 1);
            }
        }
        heap(n - 1, items, out);
    }
    let mut items = items.to_vec();
    let mut out = Vec::new();
    heap(items.len(), &mut items, &mut out);
    out
}

#[test]
fn ranks_do_not_depend_on_submission_order() {
    let fixture = Fixture::new();
    let nodes = decode(vec![
        aggregate("n0", &[]),
        aggregate("n1", &[]),
        aggregate("n2", &["n0", "n1"]),
        aggregate("n3", &["n2"]),
        aggregate("n4", &["n2"]),
        aggregate("n5", &["n3", "n4"]),
    ]);
    let expected: BTreeMap<String, u32> = [0, 0, 1, 2, 2, 3]
        .into_iter()
        .enumerate()
        .map(|(node, rank)| (format!("n{node}"), rank))
        .collect();
    let orders = permutations(&nodes);
    assert_eq!(orders.len(), 720);
    for order in orders {
        let validated = validate_tasks(&order, &fixture.context()).expect("valid");
        let ranks: BTreeMap<String, u32> = validated
            .iter()
            .map(|t| (with_names(&t.task.key.to_string()), t.rank))
            .collect();
        assert_eq!(ranks, expected);
        let mut seen = BTreeSet::new();
        for task in &validated {
            assert!(
                task.parents.iter().all(|p| seen.contains(p)),
                "parents first"
            );
            seen.insert(task.task.key);
        }
    }
}

#[test]
fn a_dag_deeper_than_the_limit_is_refused_where_it_crosses_it() {
    check_with(
        |f| f.limits.max_depth = 1,
        vec![
            aggregate("a", &[]),
            aggregate("b", &["a"]),
            aggregate("c", &["b"]),
            aggregate("d", &["c"]),
            aggregate("e", &["r3"]),
        ],
        expect![[r#"
            tasks[2]: rank 2 exceeds the maximum depth of 1
            tasks[4]: rank 4 exceeds the maximum depth of 1
        "#]],
    );
}

// ---------------------------------------------------------------------------------------------
// Logs permission and initial status

#[test]
fn logs_permission_comes_from_the_data_manager_else_owner_and_parents() {
    check_with(
        |f| {
            let d1 = f.datasets.get_mut(&DatasetKey(k("d1"))).expect("d1");
            d1.logs_permission = Permission::new(&org("org2"), false, [org("auditor")]);
        },
        vec![
            aggregate("a", &["r0", "r1"]),
            train_from("b", "a"),
            aggregate("c", &["b", "r3"]),
        ],
        expect![[r#"
            a rank 2 worker org1 TODO logs [org1, org2, org3] parents r0, r1
            b rank 3 worker org2 WAITING (PARENTS) logs [auditor, org2] parents a
            c rank 4 worker org1 WAITING (PARENTS) logs [auditor, org1, org2] parents b, r3
        "#]],
    );
}

#[test]
fn a_child_of_a_failed_parent_is_born_canceled() {
    check(
        vec![
            aggregate("a", &["failed"]),
            aggregate("b", &["a"]),
            aggregate("c", &["r0"]),
        ],
        expect![[r#"
            a rank 1 worker org1 CANCELED logs [org1] parents failed
            b rank 2 worker org1 CANCELED logs [org1] parents a
            c rank 1 worker org1 TODO logs [org1, org2] parents r0
        "#]],
    );
}

// ---------------------------------------------------------------------------------------------
// Everything at once

#[test]
fn every_problem_is_reported_at_once() {
    let mut bad_train = train("b");
    bad_train["worker"] = json!("org1");
    bad_train["inputs"] = json!([
        asset("opener", "d1"),
        asset("datasamples", "s3"),
        asset("model", "m_off"),
        asset("weights", "m1"),
    ]);
    bad_train["outputs"] =
        json!({"score": permissions(false, &[]), "extra": permissions(false, &[])});
    bad_train["parameters"] = json!({"lr": "fast"});
    let mut unknown_function = aggregate("c", &["b"]);
    unknown_function["function_key"] = json!(k("nope"));
    check(
        vec![
            aggregate("a", &["ghost"]),
            bad_train,
            unknown_function,
            aggregate("a", &[]),
            aggregate("r1", &[]),
        ],
        expect![[r#"
            tasks[3].key: duplicate task key a, also used by tasks[0]
            tasks[4].key: task r1 already exists
            tasks[1].worker: worker org1 does not match org2, the owner of data manager d1
            tasks[1].inputs[1].asset_key: data sample s3 does not belong to data manager d1
            tasks[1].inputs[2].asset_key: model m_off has been disabled
            tasks[1].inputs[3].identifier: function train has no input "weights"
            tasks[1].outputs["extra"]: function train has no output "extra"
            tasks[1].outputs["score"].permissions: a PERFORMANCE output must be public
            tasks[1].outputs: missing output "model" of function train
            tasks[1].parameters["lr"]: does not match the parameter schema: "fast" is not of type "number"
            tasks[2].function_key: function nope not found
            tasks: unknown parent or cycle among tasks: a
            tasks[0].inputs[0].parent_task_key: unknown parent task ghost
        "#]],
    );
}

#[test]
fn an_input_needs_exactly_one_source() {
    let mut task = aggregate("a", &[]);
    push_input(
        &mut task,
        json!({
            "identifier": "models",
            "asset_key": k("m1"),
            "parent_task_key": k("r0"),
            "parent_task_output_identifier": "model",
        }),
    );
    let error = serde_json::from_value::<NewTask>(task).expect_err("both sources are refused");
    expect![[r#"
        an input needs exactly one of `asset_key`, or both `parent_task_key` and `parent_task_output_identifier`
    "#]]
    .assert_eq(&format!("{error}\n"));
}
