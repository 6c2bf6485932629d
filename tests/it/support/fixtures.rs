//! Entities with every field set to something other than its default, so that a round trip
//! through PostgreSQL checks each column. Texts carry non-ASCII characters on purpose.

use std::collections::BTreeMap;

use chrono::{DateTime, FixedOffset, TimeZone, Utc};
use serde_json::json;
use uuid::Uuid;

use models::function::{FunctionInput, FunctionOutput, ParameterDecl, RetryPolicy, Step};
use models::{
    Attempt, ComputePlan, Credential, CredentialKind, DataSample, Dataset, Device, File, Function,
    FunctionStatus, InputKind, InputRef, Lease, LogLine, LogStream, Measurement, Model,
    Organization, OrganizationId, OutputKind, Performance, Permission, Permissions, PlanCounters,
    PlanStatus, Project, RequirementSet, Role, Schedule, Secret, StepState, StepStatus, Task,
    TaskErrorType, TaskInput, TaskKey, TaskOutput, TaskSource, TaskStateChange, TaskStatus, User,
    Worker,
};

/// A time with microsecond precision (what `timestamptz` keeps), given in a non-UTC zone.
pub(crate) fn at(minute: u32) -> DateTime<Utc> {
    FixedOffset::east_opt(5 * 3600 + 30 * 60)
        .expect("valid offset")
        .with_ymd_and_hms(2026, 11, 23, 10, minute, 7)
        .single()
        .expect("unambiguous time")
        .with_timezone(&Utc)
        + chrono::Duration::microseconds(123_456)
}

/// A deterministic UUID.
pub(crate) fn key(n: u128) -> Uuid {
    Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000 + n)
}

/// The checksum of `text`, as a model file would have.
pub(crate) fn checksum(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

/// The organization with identifier `id`.
pub(crate) fn organization(id: &str) -> Organization {
    Organization {
        id: id.into(),
        address: Some(format!("https://{id}.example.org/api")),
        is_current: false,
        creation_date: at(0),
    }
}

/// A user of `organization`.
pub(crate) fn user(identifier: &str, organization: &str) -> User {
    User {
        identifier: identifier.into(),
        display_name: "Zoë Ångström-Łukasz 🚀".into(),
        organization: organization.into(),
        roles: vec![Role::Operator, Role::Producer, Role::Worker],
        is_enabled: true,
        creation_date: at(1),
        update_date: at(2),
    }
}

/// A password credential of `user`.
pub(crate) fn password(user: &str, n: u128) -> Credential {
    Credential {
        identifier: key(n).into(),
        user: user.into(),
        kind: CredentialKind::Password,
        hash_function: "argon2id".into(),
        hash_function_parameters: json!({"m_cost": 19456, "t_cost": 2, "p_cost": 1}),
        hash_function_salt: Some("00ff10aa".into()),
        secret: Secret("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into()),
        description: None,
        expiration_date: None,
        revocation_date: None,
        creation_date: at(3),
        update_date: at(3),
    }
}

/// A token credential of `user`.
pub(crate) fn token(user: &str, n: u128) -> Credential {
    Credential {
        identifier: key(n).into(),
        user: user.into(),
        kind: CredentialKind::Token,
        hash_function: "sha256".into(),
        hash_function_parameters: json!({}),
        hash_function_salt: None,
        secret: Secret(checksum("token")),
        description: Some("CI – déploiement".into()),
        expiration_date: Some(at(50)),
        revocation_date: Some(at(40)),
        creation_date: at(4),
        update_date: at(5),
    }
}

/// A project.
pub(crate) fn project(identifier: &str) -> Project {
    let services = json!({"repository": {"url": "https://git.example.org/fl", "branch": "main"}, "ünïcode": "✓"});
    Project {
        identifier: identifier.into(),
        display_name: "Federated learning — pilote".into(),
        services: services.as_object().expect("an object").clone(),
        creation_date: at(1),
        update_date: at(6),
    }
}

fn permissions(owner: &str, others: &[&str]) -> Permissions {
    let owner = OrganizationId::from(owner);
    Permissions::new(Permission::new(
        &owner,
        false,
        others.iter().map(|id| OrganizationId::from(*id)),
    ))
}

/// A training function owned by `owner`, with every field set.
pub(crate) fn function(n: u128, owner: &str, project: &str) -> Function {
    Function {
        key: key(n).into(),
        name: "train — réseau".into(),
        display_name: Some("Train the model".into()),
        summary: Some("Trains one round on local data".into()),
        owner: owner.into(),
        creator: Some("alice".into()),
        project: Some(project.into()),
        permissions: permissions(owner, &["org-b"]),
        metadata: BTreeMap::from([("framework".into(), "torch".into())]),
        description: Some(File {
            checksum: checksum("description"),
            storage_address: "file:///artifacts/description.md".into(),
        }),
        archive: Some(File {
            checksum: checksum("archive"),
            storage_address: "s3://bucket/train.tar.gz".into(),
        }),
        image: Some(File {
            checksum: checksum("image"),
            storage_address: "file:///artifacts/image".into(),
        }),
        inputs: vec![
            FunctionInput {
                identifier: "opener".into(),
                kind: InputKind::DataManager,
                multiple: false,
                optional: false,
            },
            FunctionInput {
                identifier: "datasamples".into(),
                kind: InputKind::DataSample,
                multiple: true,
                optional: false,
            },
            FunctionInput {
                identifier: "model".into(),
                kind: InputKind::Model,
                multiple: false,
                optional: true,
            },
        ],
        outputs: vec![
            FunctionOutput {
                identifier: "model".into(),
                kind: OutputKind::Model,
                multiple: false,
            },
            FunctionOutput {
                identifier: "score".into(),
                kind: OutputKind::Performance,
                multiple: false,
            },
        ],
        steps: vec![Step {
            timeout_secs: None,
            name: "train".into(),
            command: vec![
                "python3".into(),
                "train.py".into(),
                "--lr={parameters.lr}".into(),
            ],
        }],
        build_steps: vec![Step {
            timeout_secs: None,
            name: "install".into(),
            command: vec![
                "pip".into(),
                "install".into(),
                "-r".into(),
                "requirements.txt".into(),
            ],
        }],
        parameters: vec![ParameterDecl {
            key: "lr".into(),
            description: "learning rate".into(),
            default: Some(json!(0.01)),
        }],
        parameter_schema: Some(json!({"type": "object", "properties": {"lr": {"type": "number"}}})),
        workspace: Some("fl/train".into()),
        kind: Some("run".into()),
        requirements: RequirementSet(BTreeMap::from([("device".into(), "lucidac".into())])),
        retry: RetryPolicy {
            max_attempts: 3,
            backoff_initial_ms: 500,
            backoff_max_ms: 10_000,
            jitter: true,
        },
        timeout_secs: Some(3600),
        is_enabled: true,
        status: FunctionStatus::Ready,
        data: json!({"runs": [1, 2, 3], "note": "données"}),
        creation_date: at(7),
        update_date: at(8),
    }
}

/// A dataset of `owner` holding `samples`.
pub(crate) fn dataset(n: u128, owner: &str, samples: &[u128]) -> Dataset {
    Dataset {
        key: key(n).into(),
        name: "Hôpital A — IRM".into(),
        owner: owner.into(),
        permissions: permissions(owner, &[]),
        data_type: "images".into(),
        data_sample_keys: samples.iter().map(|s| key(*s).into()).collect(),
        opener: File {
            checksum: checksum("opener"),
            storage_address: "file:///data/opener.py".into(),
        },
        description: File {
            checksum: checksum("dataset description"),
            storage_address: "file:///data/description.md".into(),
        },
        metadata: BTreeMap::from([("site".into(), "Zürich".into())]),
        logs_permission: Permission::new(&owner.into(), false, ["org-b".into()]),
        creation_date: at(9),
    }
}

/// A data sample of `owner` in `datasets`.
pub(crate) fn data_sample(n: u128, owner: &str, datasets: &[u128]) -> DataSample {
    DataSample {
        key: key(n).into(),
        owner: owner.into(),
        data_manager_keys: datasets.iter().map(|d| key(*d).into()).collect(),
        path: Some(format!("/data/samples/{n}/画像")),
        creation_date: at(10),
    }
}

/// A plan of `owner` in `project`.
pub(crate) fn plan(n: u128, owner: &str, project: &str) -> ComputePlan {
    let counters = PlanCounters {
        task_count: 2,
        waiting_count: 1,
        todo_count: 0,
        doing_count: 1,
        done_count: 0,
        failed_count: 0,
        canceled_count: 0,
    };
    ComputePlan {
        key: key(n).into(),
        project: Some(project.into()),
        name: "Plan fédéré n°1".into(),
        tag: "🏷 nightly".into(),
        owner: owner.into(),
        creator: Some("alice".into()),
        metadata: BTreeMap::from([("round_count".into(), "3".into())]),
        status: PlanStatus::Doing,
        counters,
        failed_task_key: None,
        creation_date: at(11),
        start_date: Some(at(12)),
        end_date: None,
        failure_date: None,
        cancelation_date: None,
    }
}

/// A running task of `plan` running `function`, with every field set; `parent` feeds its
/// model input when given.
pub(crate) fn task(n: u128, plan: u128, function: u128, parent: Option<u128>) -> Task {
    let mut inputs = vec![TaskInput {
        identifier: "opener".into(),
        source: InputRef::Asset { asset_key: key(20) },
    }];
    if let Some(parent) = parent {
        inputs.push(TaskInput {
            identifier: "model".into(),
            source: InputRef::ParentOutput {
                parent_task_key: key(parent).into(),
                parent_task_output_identifier: "model".into(),
            },
        });
    }
    Task {
        key: key(n).into(),
        compute_plan_key: key(plan).into(),
        function_key: key(function).into(),
        name: Some("entraînement".into()),
        owner: "org-a".into(),
        worker: "org-a".into(),
        creator: Some("alice".into()),
        source: TaskSource::User {
            user: Some("alice".into()),
        },
        rank: u32::from(parent.is_some()),
        tag: "round-1".into(),
        metadata: BTreeMap::from([("round_idx".into(), "1".into())]),
        inputs,
        outputs: BTreeMap::from([
            (
                "model".into(),
                TaskOutput {
                    permissions: permissions("org-a", &["org-b"]),
                    transient: true,
                },
            ),
            (
                "score".into(),
                TaskOutput {
                    permissions: Permissions::new(Permission::public(&"org-a".into())),
                    transient: false,
                },
            ),
        ]),
        parameters: json!({"lr": 0.5, "layers": [64, 32]})
            .as_object()
            .expect("an object")
            .clone(),
        requirements: RequirementSet(BTreeMap::from([("gpu".into(), "1".into())])),
        status: TaskStatus::Doing,
        waiting_reason: None,
        error_type: None,
        error_message: None,
        logs_address: Some("file:///logs/task.log".into()),
        logs_permission: Permission::new(&"org-a".into(), false, ["org-b".into()]),
        cancel_requested: true,
        abort_requested: false,
        attempt_count: 2,
        lease: Some(Lease {
            attempt: Attempt(2),
            token: key(999),
            expires_at: at(30),
        }),
        not_before: Some(at(13)),
        worker_id: Some("worker-1".into()),
        device_id: Some("lucidac-0".into()),
        input_type: Some("circuit".into()),
        input: json!({"circuit": {"elements": ["int", "mul"]}}),
        output: json!({"ok": true}),
        data: json!({"progress": 0.5}),
        steps: vec![StepState {
            index: 0,
            name: "train".into(),
            status: StepStatus::Running,
            exit_code: None,
            start_date: Some(at(14)),
            end_date: None,
        }],
        creation_date: at(12),
        update_date: at(15),
        start_date: Some(at(14)),
        end_date: None,
    }
}

/// A FAILED variant of [`task`], with a failure report.
pub(crate) fn failed_task(n: u128, plan: u128, function: u128) -> Task {
    Task {
        status: TaskStatus::Failed,
        error_type: Some(TaskErrorType::Timeout),
        error_message: Some("step « train » ran out of time".into()),
        lease: None,
        end_date: Some(at(20)),
        ..task(n, plan, function, None)
    }
}

/// A state change of task `n`.
pub(crate) fn state_change(n: u128, status: TaskStatus, minute: u32) -> TaskStateChange {
    TaskStateChange {
        task_key: TaskKey(key(n)),
        timestamp: at(minute),
        status,
        reason: format!("moved to {status} — raison"),
        attempt: Some(Attempt(1)),
    }
}

/// A model produced by task `task`.
pub(crate) fn model(n: u128, task: u128) -> Model {
    Model {
        key: key(n).into(),
        compute_task_key: key(task).into(),
        output_identifier: "model".into(),
        address: Some(File {
            checksum: checksum("weights"),
            storage_address: "file:///artifacts/models/weights.bin".into(),
        }),
        permissions: permissions("org-a", &["org-b"]),
        owner: "org-a".into(),
        creation_date: at(16),
    }
}

/// A performance reported by task `task`.
pub(crate) fn performance(task: u128, value: f64) -> Performance {
    Performance {
        compute_task_key: key(task).into(),
        output_identifier: "score".into(),
        value,
        creation_date: at(17),
    }
}

/// Log line `seq` of task `task`.
pub(crate) fn log_line(task: u128, seq: u64) -> LogLine {
    LogLine {
        task_key: key(task).into(),
        attempt: Attempt(1),
        seq,
        step: Some(0),
        stream: if seq.is_multiple_of(2) {
            LogStream::Stdout
        } else {
            LogStream::Stderr
        },
        timestamp: at(18),
        text: format!("époque {seq}: perte=0.{seq} ✓"),
        truncated: seq == 3,
    }
}

/// Sample `i` of `channel` of task `task`.
pub(crate) fn measurement(task: u128, channel: &str, i: u32) -> Measurement {
    Measurement {
        task_key: key(task).into(),
        attempt: Attempt(1),
        channel: channel.into(),
        t: f64::from(i) * 0.001,
        value: f64::from(i).sin(),
        timestamp: at(19),
    }
}

/// A worker of `owner` in `organization`.
pub(crate) fn worker(identifier: &str, owner: &str, organization: &str) -> Worker {
    Worker {
        identifier: identifier.into(),
        owner: owner.into(),
        organization: organization.into(),
        version: "0.1.0".into(),
        display_name: "Labo — poste 1".into(),
        properties: BTreeMap::from([
            ("device".into(), "lucidac".into()),
            ("os".into(), "linux".into()),
        ]),
        executor_limit: 4,
        is_enabled: true,
        is_active: true,
        should_disconnect: false,
        last_heartbeat: Some(at(21)),
        creation_date: at(2),
        update_date: at(21),
    }
}

/// A device of `worker`.
pub(crate) fn device(worker: &str, id: &str) -> Device {
    Device {
        worker: worker.into(),
        id: id.into(),
        device_type: "lucidac".into(),
        input_type: Some("circuit".into()),
        parameter_schema: Some(json!({"type": "object", "required": ["ic_time"]})),
        is_active: true,
        last_seen: Some(at(22)),
    }
}

/// A schedule of `function` in `project`.
pub(crate) fn schedule(
    project: &str,
    identifier: &str,
    function: u128,
    last_run: Option<u128>,
) -> Schedule {
    Schedule {
        project: project.into(),
        identifier: identifier.into(),
        display_name: "Nightly — nuit".into(),
        function_key: key(function).into(),
        parameters: json!({"lr": 0.1}).as_object().expect("an object").clone(),
        expression: "0 2 * * mon-fri".into(),
        timezone: "Europe/Paris".into(),
        is_enabled: false,
        last_run: last_run.map(|n| key(n).into()),
        last_fire_date: Some(at(23)),
        creation_date: at(5),
        update_date: at(23),
    }
}

/// Stores the catalog most tests need: organizations `org-a` and `org-b`, user `alice`,
/// project `fl`, function 1, dataset 20 with samples 21 and 22, and worker `worker-1` (which
/// the task fixtures name).
pub(crate) async fn seed_catalog(conn: &mut diesel_async::AsyncPgConnection) {
    use dispatcher::store::{catalog, workers};
    for id in ["org-a", "org-b"] {
        catalog::insert_organization(conn, &organization(id))
            .await
            .unwrap();
    }
    catalog::insert_user(conn, &user("alice", "org-a"))
        .await
        .unwrap();
    catalog::insert_project(conn, &project("fl")).await.unwrap();
    catalog::insert_function(conn, &function(1, "org-a", "fl"))
        .await
        .unwrap();
    catalog::insert_dataset(conn, &dataset(20, "org-a", &[]))
        .await
        .unwrap();
    let samples = [
        data_sample(21, "org-a", &[20]),
        data_sample(22, "org-a", &[20]),
    ];
    catalog::insert_data_samples(conn, &samples).await.unwrap();
    workers::upsert_worker(conn, &worker("worker-1", "alice", "org-a"))
        .await
        .unwrap();
}
