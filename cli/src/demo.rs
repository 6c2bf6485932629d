//! `baton demo`: a realistic federated-learning compute plan, stored end to end.
//!
//! Two hospitals each train a model on their own scans; each round an aggregation task joins
//! the two models and an evaluation task reports the accuracy of the joined model. Three rounds,
//! twelve tasks. The demo migrates the database, registers the federation once (organizations,
//! a user, a project, three functions, two datasets with their samples), validates and stores a
//! new plan, and prints what is stored.

use std::collections::{BTreeMap, HashMap};

use anyhow::Context;
use chrono::Utc;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use serde_json::json;
use uuid::Uuid;

use dispatcher::store::{StoreError, catalog, tasks};
use dispatcher::submission::{SubmissionError, submit_plan};
use models::submission::{NewTask, PlanSubmission};
use models::{
    DataSample, Dataset, File, Function, FunctionInput, FunctionKey, FunctionOutput, InputKind,
    InputRef, Metadata, Organization, OrganizationId, OutputKind, ParameterDecl, Permission,
    Permissions, Project, RequirementSet, RetryPolicy, Role, Step, TaskInput, TaskKey, TaskOutput,
    User,
};

use crate::OutputFormat;

/// How many rounds of training the demo plan runs.
const ROUNDS: u32 = 3;

const HOSPITAL_A: &str = "hospital-a";
const HOSPITAL_B: &str = "hospital-b";

/// A fixed key for the demo's catalog, so registering it twice finds what is there.
const fn catalog_key(n: u128) -> Uuid {
    Uuid::from_u128(0xba70_de30_0000_4000_8000_0000_0000_0000 | n)
}

const TRAIN: FunctionKey = FunctionKey(catalog_key(1));
const AGGREGATE: FunctionKey = FunctionKey(catalog_key(2));
const EVALUATE: FunctionKey = FunctionKey(catalog_key(3));

/// The data manager and the samples of one hospital.
struct Site {
    organization: &'static str,
    dataset: Uuid,
    samples: [Uuid; 2],
}

const SITES: [Site; 2] = [
    Site {
        organization: HOSPITAL_A,
        dataset: catalog_key(10),
        samples: [catalog_key(11), catalog_key(12)],
    },
    Site {
        organization: HOSPITAL_B,
        dataset: catalog_key(20),
        samples: [catalog_key(21), catalog_key(22)],
    },
];

fn org(id: &str) -> OrganizationId {
    OrganizationId::from(id)
}

/// A placeholder checksum for the demo's files: the SHA-256 of the empty file.
fn empty_file(address: &str) -> File {
    File {
        checksum: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".to_owned(),
        storage_address: address.to_owned(),
    }
}

fn both_hospitals(owner: &str) -> Permissions {
    Permissions::new(Permission::new(
        &org(owner),
        false,
        [org(HOSPITAL_A), org(HOSPITAL_B)],
    ))
}

fn function(key: FunctionKey, name: &str, summary: &str) -> Function {
    let now = Utc::now();
    Function {
        key,
        name: name.to_owned(),
        display_name: Some(name.to_owned()),
        summary: Some(summary.to_owned()),
        owner: org(HOSPITAL_A),
        creator: Some("demo".into()),
        project: Some("demo".into()),
        permissions: Permissions::new(Permission::public(&org(HOSPITAL_A))),
        metadata: Metadata::new(),
        description: None,
        archive: None,
        image: None,
        inputs: Vec::new(),
        outputs: vec![FunctionOutput {
            identifier: "model".into(),
            kind: OutputKind::Model,
            multiple: false,
        }],
        steps: vec![Step {
            timeout_secs: None,
            name: name.to_owned(),
            command: vec![
                "python3".into(),
                format!("{name}.py"),
                "--round".into(),
                "{parameters.round}".into(),
            ],
        }],
        build_steps: Vec::new(),
        parameters: vec![ParameterDecl {
            key: "round".into(),
            description: "the federated round, from 0".into(),
            default: None,
        }],
        parameter_schema: Some(json!({
            "type": "object",
            "properties": {"round": {"type": "integer", "minimum": 0}},
            "required": ["round"],
        })),
        workspace: None,
        kind: Some("run".into()),
        requirements: RequirementSet::any(),
        retry: RetryPolicy::default(),
        timeout_secs: Some(600),
        is_enabled: true,
        status: Function::initial_status(&[]),
        data: json!({}),
        creation_date: now,
        update_date: now,
    }
}

fn data_inputs() -> Vec<FunctionInput> {
    vec![
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
    ]
}

fn functions() -> Vec<Function> {
    let mut train = function(TRAIN, "train", "one round of training on local scans");
    train.inputs = data_inputs();
    train.inputs.push(FunctionInput {
        identifier: "model".into(),
        kind: InputKind::Model,
        multiple: false,
        optional: true,
    });
    let mut aggregate = function(AGGREGATE, "aggregate", "averages the hospitals' models");
    aggregate.inputs = vec![FunctionInput {
        identifier: "models".into(),
        kind: InputKind::Model,
        multiple: true,
        optional: false,
    }];
    let mut evaluate = function(EVALUATE, "evaluate", "accuracy of a model on local scans");
    evaluate.inputs = data_inputs();
    evaluate.inputs.push(FunctionInput {
        identifier: "model".into(),
        kind: InputKind::Model,
        multiple: false,
        optional: false,
    });
    evaluate.outputs = vec![FunctionOutput {
        identifier: "accuracy".into(),
        kind: OutputKind::Performance,
        multiple: false,
    }];
    vec![train, aggregate, evaluate]
}

/// Registers whatever part of the demo federation is not stored yet, in one transaction.
async fn register_federation(conn: &mut AsyncPgConnection) -> Result<(), StoreError> {
    conn.transaction(async |conn| {
        let now = Utc::now();
        for id in [HOSPITAL_A, HOSPITAL_B] {
            if catalog::find_organization(conn, &org(id), None)
                .await?
                .is_none()
            {
                let organization = Organization {
                    id: org(id),
                    address: None,
                    is_current: false,
                    creation_date: now,
                };
                catalog::insert_organization(conn, &organization).await?;
            }
        }
        if catalog::find_user(conn, &"demo".into()).await?.is_none() {
            let user = User {
                identifier: "demo".into(),
                display_name: "Demo operator".into(),
                organization: org(HOSPITAL_A),
                roles: vec![Role::Administrator],
                is_enabled: true,
                creation_date: now,
                update_date: now,
            };
            catalog::insert_user(conn, &user).await?;
        }
        if catalog::find_project(conn, &"demo".into()).await?.is_none() {
            let project = Project {
                identifier: "demo".into(),
                display_name: "Federated learning demo".into(),
                services: serde_json::Map::new(),
                creation_date: now,
                update_date: now,
            };
            catalog::insert_project(conn, &project).await?;
        }
        for function in functions() {
            if catalog::find_function(conn, function.key).await?.is_none() {
                catalog::insert_function(conn, &function).await?;
            }
        }
        for site in &SITES {
            if catalog::find_dataset(conn, site.dataset.into())
                .await?
                .is_some()
            {
                continue;
            }
            let dataset = Dataset {
                key: site.dataset.into(),
                name: format!("{} scans", site.organization),
                owner: org(site.organization),
                permissions: both_hospitals(site.organization),
                data_type: "images".into(),
                data_sample_keys: Vec::new(),
                opener: empty_file(&format!("file:///srv/{}/opener.py", site.organization)),
                description: empty_file(&format!("file:///srv/{}/README.md", site.organization)),
                metadata: Metadata::new(),
                logs_permission: Permission::private(&org(site.organization)),
                creation_date: now,
            };
            catalog::insert_dataset(conn, &dataset).await?;
            let samples: Vec<DataSample> = site
                .samples
                .iter()
                .enumerate()
                .map(|(idx, key)| DataSample {
                    key: (*key).into(),
                    owner: org(site.organization),
                    data_manager_keys: vec![site.dataset.into()],
                    path: Some(format!("/srv/{}/scans/{idx}", site.organization)),
                    creation_date: now,
                })
                .collect();
            catalog::insert_data_samples(conn, &samples).await?;
        }
        Ok(())
    })
    .await
}

fn asset(identifier: &str, key: Uuid) -> TaskInput {
    TaskInput {
        identifier: identifier.to_owned(),
        source: InputRef::Asset { asset_key: key },
    }
}

fn parent_model(identifier: &str, parent: TaskKey) -> TaskInput {
    TaskInput {
        identifier: identifier.to_owned(),
        source: InputRef::ParentOutput {
            parent_task_key: parent,
            parent_task_output_identifier: "model".into(),
        },
    }
}

fn task(name: String, function_key: FunctionKey, round: u32, inputs: Vec<TaskInput>) -> NewTask {
    let output = if function_key == EVALUATE {
        (
            "accuracy".to_owned(),
            TaskOutput {
                permissions: Permissions::new(Permission::public(&org(HOSPITAL_A))),
                transient: false,
            },
        )
    } else {
        (
            "model".to_owned(),
            TaskOutput {
                permissions: both_hospitals(HOSPITAL_A),
                transient: false,
            },
        )
    };
    NewTask {
        key: TaskKey(Uuid::new_v4()),
        function_key,
        name: Some(name),
        inputs,
        outputs: BTreeMap::from([output]),
        parameters: json!({"round": round})
            .as_object()
            .cloned()
            .unwrap_or_default(),
        metadata: Metadata::from([("round_idx".to_owned(), round.to_string())]),
        tag: format!("round-{round}"),
        worker: (function_key == AGGREGATE).then(|| org(HOSPITAL_A)),
        requirements: RequirementSet::any(),
        input_type: None,
        input: serde_json::Value::Null,
    }
}

/// The three-round plan: per round, one training task per hospital (each starting from the
/// previous round's aggregate), an aggregation, and an evaluation.
fn plan_submission() -> PlanSubmission {
    let mut tasks = Vec::new();
    let mut previous: Option<TaskKey> = None;
    for round in 0..ROUNDS {
        let mut trained = Vec::new();
        for site in &SITES {
            let mut inputs = vec![asset("opener", site.dataset)];
            inputs.extend(site.samples.iter().map(|s| asset("datasamples", *s)));
            inputs.extend(previous.map(|p| parent_model("model", p)));
            let train = task(
                format!("train {} r{round}", site.organization),
                TRAIN,
                round,
                inputs,
            );
            trained.push(train.key);
            tasks.push(train);
        }
        let inputs = trained.iter().map(|t| parent_model("models", *t)).collect();
        let aggregate = task(format!("aggregate r{round}"), AGGREGATE, round, inputs);
        let site = &SITES[0];
        let mut inputs = vec![asset("opener", site.dataset)];
        inputs.extend(site.samples.iter().map(|s| asset("datasamples", *s)));
        inputs.push(parent_model("model", aggregate.key));
        let evaluate = task(format!("evaluate r{round}"), EVALUATE, round, inputs);
        previous = Some(aggregate.key);
        tasks.push(aggregate);
        tasks.push(evaluate);
    }
    PlanSubmission {
        key: Uuid::new_v4().into(),
        name: "Federated training demo".into(),
        tag: "demo".into(),
        metadata: Metadata::from([("rounds".to_owned(), ROUNDS.to_string())]),
        project: Some("demo".into()),
        tasks,
    }
}

/// Runs the demo against the database at `database_url`.
pub(crate) async fn run(database_url: &str, format: OutputFormat) -> anyhow::Result<()> {
    let applied = crate::apply_migrations(database_url).await?;
    tracing::info!("{} migration(s) applied", applied.len());
    let pool = dispatcher::store::connect(database_url, 2)?;
    let mut conn = dispatcher::store::connection(&pool)
        .await
        .context("connecting to the database")?;
    register_federation(&mut conn)
        .await
        .context("registering the demo federation")?;

    let submission = plan_submission();
    let (plan, _) = match submit_plan(
        &mut conn,
        &submission,
        &org(HOSPITAL_A),
        Some(&"demo".into()),
        Utc::now(),
        None,
    )
    .await
    {
        Ok(stored) => stored,
        Err(SubmissionError::Invalid(errors)) => {
            for error in &errors {
                tracing::error!("{error}");
            }
            anyhow::bail!("the demo plan was refused with {} problem(s)", errors.len());
        }
        Err(error) => return Err(error).context("storing the demo plan"),
    };
    tracing::info!(plan.key = %plan.key, "compute plan {} stored", plan.key);

    // Read back what was stored, so the output shows the database, not our intentions.
    let stored_tasks = tasks::list_plan_tasks(&mut conn, plan.key, None).await?;
    let names: HashMap<FunctionKey, String> = functions()
        .into_iter()
        .map(|function| (function.key, function.name))
        .collect();
    let stored_plan = dispatcher::store::plans::find_plan(&mut conn, plan.key)
        .await?
        .context("the plan just stored is missing")?;
    crate::output::print_plan(format, &stored_plan, &stored_tasks, &names)?;
    let ready = stored_tasks
        .iter()
        .filter(|task| task.status == models::TaskStatus::Todo)
        .count();
    tracing::info!(
        "{} tasks stored; {ready} ready and queued in the outbox for publishing",
        stored_tasks.len()
    );
    Ok(())
}
