//! `baton dev`: baton on one machine, in one process, for trying it out. It applies the
//! migrations, registers the organization, the user the workers connect to RabbitMQ as, and an
//! administrator `dev` with a token for the client commands (revoked when it stops), then runs
//! a dispatcher, its HTTP API and local workers (steps as subprocesses, a local artifact
//! directory) until Ctrl-C or SIGTERM, and says where the API is and what the token is.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use models::{OrganizationId, Role, UserId, WorkerId};
use worker::artifacts::LocalStore;

use crate::output::Output;
use crate::services::{self, Service, Services};
use crate::{DevArgs, OutputFormat};

/// The user the client commands act as, an administrator of the organization; `dev` gives it
/// a token for this run.
const OPERATOR: &str = "dev";

/// How long the workers may take to register.
const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `baton dev` until `shutdown` is cancelled or a service fails.
pub(crate) async fn run(
    out: &Output,
    format: OutputFormat,
    database_url: &str,
    args: DevArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    crate::apply_migrations(database_url).await?;
    let owner = services::prepare_broker(&args.amqp_url).await?;
    let organization = OrganizationId::from(args.organization.as_str());
    let pool = dispatcher::store::connect(database_url, 2)?;
    let mut conn = dispatcher::store::connection(&pool)
        .await
        .context("connecting to the database")?;
    // The dispatcher registers its organization when it starts; registering it here lets the
    // workers' owner belong to it before the workers register.
    services::ensure_organization(&mut conn, &organization, true)
        .await
        .context("registering the organization")?;
    services::ensure_user(
        &mut conn,
        &owner,
        "baton dev's workers",
        &organization,
        &[Role::Worker],
    )
    .await
    .with_context(|| format!("registering the workers' owner {owner}"))?;
    let operator = UserId::from(OPERATOR);
    services::ensure_user(
        &mut conn,
        &operator,
        "baton dev's operator",
        &organization,
        &[Role::Administrator],
    )
    .await
    .with_context(|| format!("registering the operator {operator}"))?;
    let (credential, token) =
        dispatcher::auth::new_token(&operator, Some("baton dev".to_owned()), None, Utc::now())
            .context("making a token for the client commands")?;
    dispatcher::store::catalog::insert_credential(&mut conn, &credential)
        .await
        .context("storing the client commands' token")?;

    let listener = tokio::net::TcpListener::bind(args.http_addr)
        .await
        .with_context(|| {
            format!(
                "listening on {} (set --http-addr or BATON_HTTP_ADDR)",
                args.http_addr
            )
        })?;
    let api_url = format!("http://{}", listener.local_addr()?);
    std::fs::create_dir_all(&args.artifacts).with_context(|| {
        format!(
            "creating the artifact directory {}",
            args.artifacts.display()
        )
    })?;
    let store = LocalStore::new(&args.artifacts)
        .with_context(|| format!("opening the artifact store {}", args.artifacts.display()))?;
    let work_root = args
        .work_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("baton-dev"));

    let mut config = dispatcher::service::DispatcherConfig::new(
        database_url,
        broker::BrokerConfig::new(&args.amqp_url, "baton-dispatcher"),
        organization.clone(),
    );
    config.lease_duration = chrono::Duration::seconds(i64::from(args.lease_secs));
    let mut api_config = api::ApiConfig::new(
        database_url,
        broker::BrokerConfig::new(&args.amqp_url, "baton-api"),
        organization.clone(),
        &args.artifacts,
    );
    api_config.metrics = config.metrics.clone();
    let state = api::ApiState::connect(api_config)
        .await
        .context("starting the HTTP API")?;

    let since = Utc::now();
    let mut running = Services::default();
    running.push(Service::spawn("dispatcher", |stop| {
        dispatcher::service::run(config, stop)
    }));
    running.push(Service::spawn("HTTP API", |stop| async move {
        api::serve(listener, state, stop)
            .await
            .context("serving the HTTP API")
    }));
    let ids: Vec<WorkerId> = (1..=args.workers)
        .map(|index| WorkerId::from(format!("dev-worker-{index}").as_str()))
        .collect();
    for id in &ids {
        let mut config = worker::WorkerConfig::new(
            broker::BrokerConfig::new(&args.amqp_url, format!("baton-{id}")),
            id.clone(),
            organization.clone(),
        );
        config.display_name = format!("baton dev's {id}");
        config.properties = args.properties.iter().cloned().collect();
        config.executor_limit = args.executor_limit;
        config.work_root = work_root.join(id.as_str());
        let worker = worker::Worker::builder(config, Arc::new(store.clone())).build();
        running.push(Service::spawn(format!("worker {id}"), |stop| {
            worker.run(stop)
        }));
    }

    let outcome = async {
        let deadline = tokio::time::Instant::now() + REGISTRATION_TIMEOUT;
        tokio::select! {
            registered = services::wait_for_workers(&mut conn, &ids, &mut running, since, deadline) => registered?,
            () = shutdown.cancelled() => return Ok(()),
        }
        announce(out, format, &api_url, token.expose(), &organization, &ids, &args);
        running.watch(&shutdown).await
    }
    .await;
    let stopped = running.stop().await;
    // The token lives as long as this run.
    let revoked = dispatcher::store::users::revoke_token(
        &mut conn,
        &operator,
        credential.identifier,
        Utc::now(),
    )
    .await
    .map(|_| ())
    .context("revoking the client commands' token");
    outcome.and(stopped).and(revoked)
}

/// Says where the API is and which workers run.
fn announce(
    out: &Output,
    format: OutputFormat,
    api_url: &str,
    token: &str,
    organization: &OrganizationId,
    ids: &[WorkerId],
    args: &DevArgs,
) {
    let names: Vec<String> = ids.iter().map(ToString::to_string).collect();
    match format {
        OutputFormat::Json => out.line(json!({
            "api_url": api_url,
            "token": token,
            "user": OPERATOR,
            "organization": organization,
            "workers": names,
            "artifacts": args.artifacts,
        })),
        OutputFormat::Table => {
            out.line(format!("baton dev: the HTTP API is at {api_url}"));
            out.line(format!(
                "workers of organization {organization}: {} ({} task(s) at once each)",
                names.join(", "),
                args.executor_limit
            ));
            out.line(format!(
                "baton dev: user {OPERATOR} (administrator) has the token {token}, revoked when \
                 baton dev stops"
            ));
            out.line(format!(
                "try: export BATON_API_URL={api_url} BATON_TOKEN={token}; baton submit plan.yaml \
                 --watch    (Ctrl-C stops baton dev)"
            ));
        }
    }
}
