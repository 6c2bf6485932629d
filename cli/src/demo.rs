//! `baton demo`: a realistic federated-learning compute plan, run end to end.
//!
//! Two hospitals each train a model on their own scans; each round an aggregation task joins
//! the two models and an evaluation task reports the accuracy of the joined model. Three rounds,
//! twelve tasks. The demo migrates the database, registers the federation once (organizations,
//! users, a project, three functions, two datasets with their samples), writes the datasets'
//! openers to a local artifact store and their samples to files, starts a dispatcher and one
//! worker per hospital in this process, stores a new plan, follows it until it ends, and prints
//! the plan, its tasks and its performances.
//!
//! Every step is a `sh` script using only coreutils and awk, so the demo runs on any Unix host.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::Utc;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use serde_json::json;
use uuid::Uuid;

use dispatcher::registration::{self, RegistrationError};
use dispatcher::store::{catalog, execution, plans, tasks, workers};
use dispatcher::submission::{SubmissionError, submit_plan};
use models::submission::PlanSubmission;
use models::submission::{NewDataSample, NewDataSamples, NewDataset, NewFunction, NewTask};
use models::{
    ComputePlan, DataSampleKey, DatasetKey, File, FunctionInput, FunctionKey, FunctionOutput,
    InputKind, InputRef, Metadata, OrganizationId, OutputKind, ParameterDecl, Permission,
    Permissions, PlanCounters, PlanStatus, Project, RequirementSet, RetryPolicy, Role, Step,
    TaskInput, TaskKey, TaskOutput, UserId, WorkerId,
};
use worker::artifacts::{ArtifactStore, LocalStore};

use crate::OutputFormat;
use crate::output::Output;
use crate::services::{Service, Services, ensure_organization, ensure_user, prepare_broker};

/// How many rounds of training the demo plan runs.
const ROUNDS: u32 = 3;

const HOSPITAL_A: &str = "hospital-a";
const HOSPITAL_B: &str = "hospital-b";

/// The worker property tasks are routed by: the hospital whose data they need.
const ORG_PROPERTY: &str = "org";

/// How often the plan is read while it runs.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// The heartbeat interval of the demo's dispatcher: short, so that a second demo run soon
/// after the first can register its workers under the same identifiers (a worker silent for
/// three intervals is no longer active).
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// A fixed key for the demo's catalog, so registering it twice finds what is there. The base
/// changes whenever the catalog's content does (`…de31…`: the first runnable catalog), so a
/// database holding an older demo's catalog gets the new one beside it.
const fn catalog_key(n: u128) -> Uuid {
    Uuid::from_u128(0xba70_de31_0000_4000_8000_0000_0000_0000 | n)
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

/// The training step: starts from the previous aggregate when there is one (an optional input
/// has no placeholder, so it is read from `BATON_INPUTS`), counts the samples, reports a loss
/// curve and appends a line to the model. Arguments: the round, the model to write.
const TRAIN_SCRIPT: &str = r#"set -eu
round="$1"
model="$2"
. "$BATON_INPUTS/opener"
samples=0
for sample in "$BATON_INPUTS"/datasamples/*; do
  if [ -e "$sample" ]; then samples=$((samples + 1)); fi
done
if [ -e "$BATON_INPUTS/model" ]; then
  echo "$SITE starts round $round from the previous aggregate"
  cat "$BATON_INPUTS/model" > "$model"
else
  echo "$SITE starts round $round from scratch"
  : > "$model"
fi
for epoch in 0 1 2; do
  t=$((round * 3 + epoch))
  loss=$(awk -v t="$t" 'BEGIN { printf "%.4f", 1.5 / (1 + t) }')
  printf '{"channel":"loss","t":%d,"value":%s}\n' "$t" "$loss" >> "$BATON_MEASUREMENTS"
  echo "$SITE round $round epoch $epoch: loss $loss"
done
echo "$SITE trained round $round on $samples samples" >> "$model"
echo "$SITE trained round $round on $samples samples ($(scan_count) scans)"
"#;

/// The aggregation step: joins the hospitals' models. Arguments: the round, the model to write.
const AGGREGATE_SCRIPT: &str = r#"set -eu
count=0
: > "$2"
for model in "$BATON_INPUTS"/models/*; do
  cat "$model" >> "$2"
  count=$((count + 1))
done
echo "aggregated $count models for round $1"
"#;

/// The evaluation step: checks the model is there and writes an accuracy that grows with the
/// round. Arguments: the round, the model, the accuracy to write.
const EVALUATE_SCRIPT: &str = r#"set -eu
. "$BATON_INPUTS/opener"
if [ ! -s "$2" ]; then
  echo "no model to evaluate at $2" >&2
  exit 1
fi
awk -v round="$1" 'BEGIN { printf "%.2f\n", 0.62 + 0.09 * round }' > "$3"
echo "$SITE evaluated the round $1 model ($(wc -l < "$2") lines): accuracy $(cat "$3")"
"#;

/// What `baton demo` needs to run.
#[derive(Clone, Debug)]
pub(crate) struct DemoOptions {
    /// baton's database.
    pub(crate) database_url: String,
    /// RabbitMQ, with its vhost; the workers' owner is its user.
    pub(crate) amqp_url: String,
    /// Where the demo writes its data samples and workspaces.
    pub(crate) dir: PathBuf,
    /// The artifact store's directory (openers and models).
    pub(crate) artifacts: PathBuf,
    /// How long the plan may take to end.
    pub(crate) timeout: Duration,
}

impl DemoOptions {
    /// The demo's directory when none is given: `baton-demo` in the system's temporary
    /// directory.
    pub(crate) fn default_dir() -> PathBuf {
        std::env::temp_dir().join("baton-demo")
    }
}

fn org(id: &str) -> OrganizationId {
    OrganizationId::from(id)
}

fn both_hospitals(owner: &str) -> Permissions {
    Permissions::new(Permission::new(
        &org(owner),
        false,
        [org(HOSPITAL_A), org(HOSPITAL_B)],
    ))
}

fn requires(organization: &str) -> RequirementSet {
    RequirementSet(BTreeMap::from([(
        ORG_PROPERTY.to_owned(),
        organization.to_owned(),
    )]))
}

/// A function whose one step runs `script` with `sh`, given `{parameters.round}` and then
/// `arguments`.
fn function(
    key: FunctionKey,
    name: &str,
    summary: &str,
    script: &str,
    arguments: &[&str],
) -> NewFunction {
    let mut command: Vec<String> = ["sh", "-c", script, "sh", "{parameters.round}"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    command.extend(arguments.iter().map(|argument| (*argument).to_owned()));
    NewFunction {
        key,
        name: name.to_owned(),
        display_name: Some(name.to_owned()),
        summary: Some(summary.to_owned()),
        project: Some("demo".into()),
        permissions: Permissions::new(Permission::public(&org(HOSPITAL_A))),
        metadata: Metadata::new(),
        description: None,
        archive: None,
        inputs: Vec::new(),
        outputs: vec![FunctionOutput {
            identifier: "model".into(),
            kind: OutputKind::Model,
            multiple: false,
        }],
        steps: vec![Step {
            timeout_secs: None,
            name: name.to_owned(),
            command,
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
        timeout_secs: Some(60),
        data: json!({}),
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

/// The three functions. Training runs where its data is (each task requires its hospital);
/// aggregation and evaluation run at hospital-a.
fn functions() -> Vec<NewFunction> {
    let mut train = function(
        TRAIN,
        "train",
        "one round of training on local scans",
        TRAIN_SCRIPT,
        &["{outputs.model}"],
    );
    train.inputs = data_inputs();
    train.inputs.push(FunctionInput {
        identifier: "model".into(),
        kind: InputKind::Model,
        multiple: false,
        optional: true,
    });
    let mut aggregate = function(
        AGGREGATE,
        "aggregate",
        "joins the hospitals' models",
        AGGREGATE_SCRIPT,
        &["{outputs.model}"],
    );
    aggregate.inputs = vec![FunctionInput {
        identifier: "models".into(),
        kind: InputKind::Model,
        multiple: true,
        optional: false,
    }];
    aggregate.requirements = requires(HOSPITAL_A);
    let mut evaluate = function(
        EVALUATE,
        "evaluate",
        "accuracy of a model on local scans",
        EVALUATE_SCRIPT,
        &["{inputs.model}", "{outputs.accuracy}"],
    );
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
    evaluate.requirements = requires(HOSPITAL_A);
    vec![train, aggregate, evaluate]
}

/// The opener of `site`'s dataset: sourced by the steps, it names the site and reads the
/// samples linked into the workspace.
fn opener(site: &str) -> String {
    format!(
        "# The opener of {site}'s scans (baton demo), sourced by the steps.\n\
         SITE={site}\n\
         # How many scans the task's samples hold (one per line after each header).\n\
         scan_count() {{\n  awk 'FNR > 1 {{ n++ }} END {{ print n + 0 }}' \"$BATON_INPUTS\"/datasamples/*\n}}\n"
    )
}

/// The description of `site`'s dataset.
fn description(site: &str) -> String {
    format!(
        "# {site} scans\n\nTwo small CSV files of made-up scan intensities, for `baton demo`.\n"
    )
}

/// The content of sample `index` of `site`: a header and a few made-up scans.
fn sample_content(site: &str, index: usize) -> String {
    let mut text = "patient,intensity\n".to_owned();
    for row in 0..(3 + index) {
        let intensity = 0.4 + 0.05 * (row + index) as f64;
        text.push_str(&format!("{site}-{index}-{row},{intensity:.2}\n"));
    }
    text
}

/// Where sample `index` of `site` lives, relative to the demo's directory.
fn sample_relative_path(site: &str, index: usize) -> PathBuf {
    Path::new("data")
        .join(site)
        .join(format!("scan-{index}.csv"))
}

/// A site's files in the artifact store.
struct SiteFiles {
    opener: File,
    description: File,
}

/// Writes `content` to `path`, creating its directory.
fn write_file(path: &Path, content: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating the directory {}", parent.display()))?;
    }
    std::fs::write(path, content).with_context(|| format!("writing {}", path.display()))
}

/// Writes each site's opener and description, and puts them in the artifact store (again on
/// every run, so the store always has them).
async fn put_site_files(
    dir: &Path,
    store: &LocalStore,
) -> anyhow::Result<HashMap<&'static str, SiteFiles>> {
    let mut files = HashMap::new();
    for site in &SITES {
        let put = async |name: &str, content: String| -> anyhow::Result<File> {
            let source = dir.join("sources").join(site.organization).join(name);
            write_file(&source, &content)?;
            let address = format!("baton-demo/datasets/{}/{name}", site.organization);
            store
                .put(&address, &source)
                .await
                .with_context(|| format!("storing {address} in {}", store.describe()))
        };
        let opener = put("opener.sh", opener(site.organization)).await?;
        let description = put("README.md", description(site.organization)).await?;
        files.insert(
            site.organization,
            SiteFiles {
                opener,
                description,
            },
        );
    }
    Ok(files)
}

/// A registration refused, with every problem it named.
fn refused(what: &str, error: RegistrationError) -> anyhow::Error {
    match error {
        RegistrationError::Invalid(details) => {
            let problems: Vec<String> = details
                .iter()
                .map(|detail| format!("{}: {}", detail.path, detail.message))
                .collect();
            anyhow::anyhow!("{what} is invalid: {}", problems.join("; "))
        }
        other => anyhow::Error::new(other).context(format!("registering {what}")),
    }
}

/// Registers whatever part of the demo federation is not stored yet, in one transaction, and
/// checks that what is stored is what this demo runs.
async fn register_federation(
    conn: &mut AsyncPgConnection,
    worker_owner: &UserId,
    files: &HashMap<&'static str, SiteFiles>,
    dir: &Path,
) -> anyhow::Result<()> {
    conn.transaction(async |conn| {
        let now = Utc::now();
        for id in [HOSPITAL_A, HOSPITAL_B] {
            ensure_organization(conn, &org(id), false).await?;
        }
        // One RabbitMQ user runs both hospitals' workers: acting for an organization other
        // than its own (hospital-b) takes the administrator role.
        let users = [
            (
                UserId::from("demo"),
                "Demo operator",
                &[Role::Administrator][..],
            ),
            (
                worker_owner.clone(),
                "The demo's workers",
                &[Role::Worker, Role::Administrator][..],
            ),
        ];
        for (identifier, display_name, roles) in users {
            ensure_user(conn, &identifier, display_name, &org(HOSPITAL_A), roles).await?;
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
            match catalog::find_function(conn, function.key).await? {
                None => {
                    registration::register_function(
                        conn,
                        &function,
                        &org(HOSPITAL_A),
                        Some(&"demo".into()),
                        now,
                    )
                    .await
                    .map_err(|error| refused(&format!("function {}", function.name), error))?;
                }
                Some(stored)
                    if stored.steps != function.steps
                        || stored.inputs != function.inputs
                        || stored.outputs != function.outputs
                        || stored.requirements != function.requirements =>
                {
                    bail!(
                        "function {} ({}) is stored with other steps, inputs, outputs or \
                         requirements than this demo's: another build of the demo registered it \
                         (a new demo catalog needs a new `catalog_key` base)",
                        function.name,
                        function.key
                    );
                }
                Some(_) => {}
            }
        }
        for site in &SITES {
            let Some(site_files) = files.get(site.organization) else {
                bail!("the files of {} were not stored", site.organization);
            };
            let key = DatasetKey::from(site.dataset);
            match catalog::find_dataset(conn, key).await? {
                None => {
                    let dataset = NewDataset {
                        key,
                        name: format!("{} scans", site.organization),
                        permissions: both_hospitals(site.organization),
                        data_type: "images".into(),
                        opener: site_files.opener.clone(),
                        description: site_files.description.clone(),
                        metadata: Metadata::new(),
                        logs_permission: Permission::private(&org(site.organization)),
                    };
                    registration::register_dataset(conn, &dataset, &org(site.organization), now)
                        .await
                        .map_err(|error| refused(&dataset.name, error))?;
                    let samples = NewDataSamples {
                        samples: site
                            .samples
                            .iter()
                            .enumerate()
                            .map(|(index, sample)| NewDataSample {
                                key: DataSampleKey::from(*sample),
                                path: Some(
                                    dir.join(sample_relative_path(site.organization, index))
                                        .display()
                                        .to_string(),
                                ),
                                data_manager_keys: vec![key],
                            })
                            .collect(),
                    };
                    registration::register_data_samples(
                        conn,
                        &samples,
                        &org(site.organization),
                        now,
                    )
                    .await
                    .map_err(|error| {
                        refused(&format!("the samples of {}", site.organization), error)
                    })?;
                }
                Some(stored) if stored.opener != site_files.opener => bail!(
                    "dataset {key} is stored with opener {} (sha256 {}), not this demo's {} \
                     (sha256 {}): another build of the demo registered it",
                    stored.opener.storage_address,
                    stored.opener.checksum,
                    site_files.opener.storage_address,
                    site_files.opener.checksum
                ),
                Some(_) => {}
            }
        }
        Ok(())
    })
    .await
}

/// Writes every demo sample where it is registered (the worker links that path into the
/// workspace). A sample registered by an earlier run under another demo directory is written
/// there again; a path the demo did not choose is refused rather than written to.
async fn write_samples(conn: &mut AsyncPgConnection) -> anyhow::Result<()> {
    for site in &SITES {
        let keys: Vec<DataSampleKey> = site.samples.iter().map(|k| (*k).into()).collect();
        let stored = catalog::find_data_samples(conn, &keys)
            .await
            .with_context(|| format!("reading the samples of {}", site.organization))?;
        for (index, key) in keys.iter().enumerate() {
            let Some(sample) = stored.iter().find(|sample| sample.key == *key) else {
                bail!(
                    "data sample {key} of {} is not registered, though its dataset is",
                    site.organization
                );
            };
            let Some(path) = sample.path.as_deref().map(Path::new) else {
                bail!("data sample {key} is registered without a path");
            };
            let expected = sample_relative_path(site.organization, index);
            if !path.is_absolute() || !path.ends_with(&expected) {
                bail!(
                    "data sample {key} is registered at {}, which is not a path of the demo's \
                     (…/{})",
                    path.display(),
                    expected.display()
                );
            }
            write_file(path, &sample_content(site.organization, index))?;
        }
    }
    Ok(())
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

fn task(
    name: String,
    function_key: FunctionKey,
    round: u32,
    inputs: Vec<TaskInput>,
    requirements: RequirementSet,
) -> NewTask {
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
        requirements,
        input_type: None,
        input: serde_json::Value::Null,
    }
}

/// The three-round plan: per round, one training task per hospital (each starting from the
/// previous round's aggregate, and requiring a worker of its hospital), an aggregation, and an
/// evaluation.
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
                requires(site.organization),
            );
            trained.push(train.key);
            tasks.push(train);
        }
        let inputs = trained.iter().map(|t| parent_model("models", *t)).collect();
        let aggregate = task(
            format!("aggregate r{round}"),
            AGGREGATE,
            round,
            inputs,
            RequirementSet::any(),
        );
        let site = &SITES[0];
        let mut inputs = vec![asset("opener", site.dataset)];
        inputs.extend(site.samples.iter().map(|s| asset("datasamples", *s)));
        inputs.push(parent_model("model", aggregate.key));
        let evaluate = task(
            format!("evaluate r{round}"),
            EVALUATE,
            round,
            inputs,
            RequirementSet::any(),
        );
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

/// The identifier of `site`'s worker.
fn worker_id(site: &Site) -> WorkerId {
    format!("{}-worker", site.organization).as_str().into()
}

/// Waits until the previous demo run's workers, if they ran a moment ago, count as silent, so
/// that ours register at once under the same identifiers.
async fn let_previous_workers_fall_silent(conn: &mut AsyncPgConnection) -> anyhow::Result<()> {
    let silent_after = chrono::Duration::from_std(HEARTBEAT_INTERVAL * 3)
        .context("the heartbeat interval is out of range")?;
    let mut wait = chrono::Duration::zero();
    for site in &SITES {
        let id = worker_id(site);
        let stored = workers::find_worker(conn, &id)
            .await
            .with_context(|| format!("reading worker {id}"))?;
        if let Some(beat) = stored.and_then(|worker| worker.last_heartbeat) {
            wait = wait.max(beat + silent_after - Utc::now());
        }
    }
    if let Ok(wait) = wait.to_std()
        && !wait.is_zero()
    {
        tracing::info!(
            "waiting {:.1} s for the previous demo's workers to fall silent",
            wait.as_secs_f64()
        );
        tokio::time::sleep(wait + Duration::from_millis(200)).await;
    }
    Ok(())
}

/// Starts the dispatcher (acting as hospital-a) and one worker per hospital.
fn start_services(options: &DemoOptions, store: &LocalStore) -> Services {
    let mut services = Services::default();
    let mut config = dispatcher::service::DispatcherConfig::new(
        options.database_url.clone(),
        broker::BrokerConfig::new(&options.amqp_url, "baton-demo-dispatcher"),
        org(HOSPITAL_A),
    );
    config.heartbeat_interval = HEARTBEAT_INTERVAL;
    config.outbox_poll = POLL_INTERVAL;
    config.registration_cache = HEARTBEAT_INTERVAL;
    services.push(Service::spawn("dispatcher", |stop| {
        dispatcher::service::run(config, stop)
    }));
    for site in &SITES {
        let id = worker_id(site);
        let mut config = worker::WorkerConfig::new(
            broker::BrokerConfig::new(&options.amqp_url, format!("baton-demo-{id}")),
            id.clone(),
            org(site.organization),
        );
        config.display_name = format!("{}'s worker", site.organization);
        config.properties = [(ORG_PROPERTY.to_owned(), site.organization.to_owned())].into();
        config.executor_limit = 2;
        config.work_root = options.dir.join("work").join(id.as_str());
        config.grace = Duration::from_secs(2);
        config.shutdown_deadline = Duration::from_secs(5);
        let worker = worker::Worker::builder(config, Arc::new(store.clone())).build();
        services.push(Service::spawn(format!("worker {id}"), |stop| {
            worker.run(stop)
        }));
    }
    services
}

/// Waits until both workers registered with this run's dispatcher.
async fn wait_for_workers(
    conn: &mut AsyncPgConnection,
    services: &mut Services,
    since: chrono::DateTime<Utc>,
    deadline: tokio::time::Instant,
) -> anyhow::Result<()> {
    let ids: Vec<WorkerId> = SITES.iter().map(worker_id).collect();
    crate::services::wait_for_workers(conn, &ids, services, since, deadline).await?;
    tracing::info!("workers registered: hospital-a-worker, hospital-b-worker");
    Ok(())
}

/// The plan's counters, in one line.
fn progress(counters: &PlanCounters) -> String {
    format!(
        "done {}/{}, doing {}, todo {}, waiting {}, failed {}, canceled {}",
        counters.done_count,
        counters.task_count,
        counters.doing_count,
        counters.todo_count,
        counters.waiting_count,
        counters.failed_count,
        counters.canceled_count
    )
}

/// Stores the plan, then follows it until it ends, saying whenever its counters change.
async fn run_plan(
    conn: &mut AsyncPgConnection,
    services: &mut Services,
    deadline: tokio::time::Instant,
    timeout: Duration,
) -> anyhow::Result<ComputePlan> {
    let submission = plan_submission();
    let (plan, _) = match submit_plan(
        conn,
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
            bail!("the demo plan was refused with {} problem(s)", errors.len());
        }
        Err(error) => return Err(error).context("storing the demo plan"),
    };
    tracing::info!(plan.key = %plan.key, "compute plan {} stored: {} tasks", plan.key, plan.counters.task_count);
    let mut shown: Option<(PlanStatus, PlanCounters)> = None;
    loop {
        let current = plans::find_plan(conn, plan.key)
            .await
            .with_context(|| format!("reading plan {}", plan.key))?
            .with_context(|| format!("plan {} was stored but is gone", plan.key))?;
        let state = (current.status, current.counters);
        if shown.as_ref() != Some(&state) {
            tracing::info!(plan.key = %plan.key, "plan {}: {}", current.status, progress(&current.counters));
            shown = Some(state);
        }
        if current.status.is_terminal() {
            return Ok(current);
        }
        services.check().await?;
        if tokio::time::Instant::now() > deadline {
            bail!(
                "plan {} did not end within {} s: it is {} with {}",
                plan.key,
                timeout.as_secs(),
                current.status,
                progress(&current.counters)
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Runs the demo.
pub(crate) async fn run(
    options: DemoOptions,
    out: &Output,
    format: OutputFormat,
) -> anyhow::Result<()> {
    let applied = crate::apply_migrations(&options.database_url).await?;
    tracing::info!("{} migration(s) applied", applied.len());
    let pool = dispatcher::store::connect(&options.database_url, 2)?;
    let mut conn = dispatcher::store::connection(&pool)
        .await
        .context("connecting to the database")?;
    let worker_owner = prepare_broker(&options.amqp_url).await?;

    std::fs::create_dir_all(&options.dir)
        .with_context(|| format!("creating the demo directory {}", options.dir.display()))?;
    let dir = std::fs::canonicalize(&options.dir)
        .with_context(|| format!("resolving the demo directory {}", options.dir.display()))?;
    let store = LocalStore::new(&options.artifacts)
        .with_context(|| format!("opening the artifact store {}", options.artifacts.display()))?;
    let files = put_site_files(&dir, &store).await?;
    register_federation(&mut conn, &worker_owner, &files, &dir)
        .await
        .context("registering the demo federation")?;
    write_samples(&mut conn).await?;
    tracing::info!(
        "federation registered; samples under {}, artifacts in {}",
        dir.join("data").display(),
        store.root().display()
    );

    let_previous_workers_fall_silent(&mut conn).await?;
    let deadline = tokio::time::Instant::now() + options.timeout;
    let since = Utc::now();
    let mut services = start_services(&options, &store);
    let outcome = async {
        wait_for_workers(&mut conn, &mut services, since, deadline).await?;
        run_plan(&mut conn, &mut services, deadline, options.timeout).await
    }
    .await;
    let stopped = services.stop().await;
    let plan = match (outcome, stopped) {
        (Ok(plan), Ok(())) => plan,
        (Ok(_), Err(error)) => return Err(error),
        (Err(error), stopped) => {
            if let Err(stop_error) = stopped {
                tracing::warn!("{stop_error:#}");
            }
            return Err(error);
        }
    };

    // Read back what was stored, so the output shows the database, not our intentions.
    let stored_tasks = tasks::list_plan_tasks(&mut conn, plan.key, None)
        .await
        .context("reading the plan's tasks")?;
    let names: HashMap<FunctionKey, String> = functions()
        .into_iter()
        .map(|function| (function.key, function.name))
        .collect();
    let performances = plans::performance_table(&mut conn, plan.key)
        .await
        .context("reading the plan's performances")?;
    crate::output::print_plan_run(out, format, &plan, &stored_tasks, &names, &performances)?;
    if plan.status != PlanStatus::Done {
        bail!("{}", failure(&mut conn, &plan, &stored_tasks).await);
    }
    show_final_model(&mut conn, &plan, &stored_tasks, &store).await
}

/// Why `plan` did not end DONE, naming its failed task and that task's error.
async fn failure(
    conn: &mut AsyncPgConnection,
    plan: &ComputePlan,
    stored_tasks: &[models::Task],
) -> String {
    let mut message = format!(
        "plan {} ended {} ({})",
        plan.key,
        plan.status,
        progress(&plan.counters)
    );
    let failed = plan
        .failed_task_key
        .and_then(|key| stored_tasks.iter().find(|task| task.key == key))
        .or_else(|| {
            stored_tasks
                .iter()
                .find(|task| task.status == models::TaskStatus::Failed)
        });
    if let Some(task) = failed {
        message.push_str(&format!(
            ": task {} failed ({}): {}",
            task.name.as_deref().unwrap_or("?"),
            task.error_type.map_or("?", |kind| kind.as_str()),
            task.error_message.as_deref().unwrap_or("no message")
        ));
        if let Ok(lines) = execution::list_log_lines(conn, task.key, 20, 0).await {
            for line in lines {
                tracing::error!(task.key = %task.key, "{}: {}", line.stream.as_str(), line.text);
            }
        }
    }
    message
}

/// Says where the last round's aggregate model is.
async fn show_final_model(
    conn: &mut AsyncPgConnection,
    plan: &ComputePlan,
    stored_tasks: &[models::Task],
    store: &LocalStore,
) -> anyhow::Result<()> {
    let last = stored_tasks
        .iter()
        .filter(|task| task.function_key == AGGREGATE)
        .max_by_key(|task| task.rank);
    if let Some(task) = last {
        let stored = execution::list_task_models(conn, task.key)
            .await
            .with_context(|| format!("reading the models of task {}", task.key))?;
        if let Some(file) = stored.into_iter().find_map(|model| model.address) {
            tracing::info!(
                plan.key = %plan.key,
                "plan {} DONE; the final model is {}",
                plan.key,
                store.root().join(&file.storage_address).display()
            );
        }
    }
    Ok(())
}
