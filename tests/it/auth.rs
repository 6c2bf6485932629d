//! Authentication and authorization end to end (issue 7), against an in-process dispatcher and
//! HTTP API on real PostgreSQL and RabbitMQ: every route of the table for every role, cell by
//! cell; plans, logs and models of another organization; credentials that do not authenticate
//! and change nothing; AMQP senders authorized as their RabbitMQ user; a report with another
//! attempt's lease token; and no secret in the logs of a full run.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};

use api::auth::Access;
use broker::topology::SUBMIT_EXCHANGE;
use broker::{Broker, RpcClient};
use dispatcher::auth::{PasswordCheck, PasswordParams};
use dispatcher::store::{catalog, execution, plans, tasks, users};
use models::access::{Principal, Scope};
use models::submission::{NewTask, PlanSubmission};
use models::wire::{
    AddTasks, CancelReply, CancelRequest, RegistrationReply, ReportedOutcome, SubmissionReply,
    WireMessage,
};
use models::{
    CredentialId, File, Model, OrganizationId, Permission, Permissions, PlanKey, PlanStatus, Role,
    TaskKey, TaskStatus, UserId,
};

use crate::api::{
    Api, Reply, assert_error, new_plan, new_task, noop_function, register_function, user_with_token,
};
use crate::support::broker::BrokerUser;
use crate::support::cluster::{Granted, ScriptedWorker, TestCluster};
use crate::support::fixtures::{self as fx, key};
use crate::support::logs::Captured;

/// The function the plans of these tests run ([`noop_function`], registered by root).
const FUNCTION: u128 = 900;

/// How long a test waits for something the dispatcher or a worker does.
const WAIT: Duration = Duration::from_secs(20);

/// Sends `method` on `path` with `token` (none: anonymously) and `body` as JSON, if any.
async fn call(
    api: &Api,
    token: Option<&str>,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> Reply {
    let mut request = api.request(method, path);
    if let Some(body) = body {
        request = request.json(body);
    }
    api.send_as(token, request).await
}

/// `POST /api/v1/login` for `identifier` with `password`.
async fn login(api: &Api, identifier: &str, password: &str) -> Reply {
    let body = json!({"identifier": identifier, "password": password});
    call(api, None, Method::POST, "/api/v1/login", Some(&body)).await
}

/// How many plans are stored.
async fn plan_count(api: &Api) -> i64 {
    let mut conn = api.conn().await;
    plans::list_plans_page(&mut conn, &plans::PlanFilter::default(), 1, 0)
        .await
        .unwrap()
        .total
}

/// Sets `user`'s password to `password` hashed with `params`, straight in the store.
async fn store_password(api: &Api, user: &str, password: &str, params: PasswordParams) {
    let owned = password.to_owned();
    let hashed =
        tokio::task::spawn_blocking(move || dispatcher::auth::hash_password(&owned, params))
            .await
            .unwrap()
            .unwrap();
    let credential =
        dispatcher::auth::password_credential(&user.into(), &hashed, chrono::Utc::now());
    users::set_password(&mut api.conn().await, &credential)
        .await
        .unwrap();
}

/// Stores a second token for `user` and answers its identifier.
async fn spare_token(api: &Api, user: &str) -> uuid::Uuid {
    let (credential, _) =
        dispatcher::auth::new_token(&user.into(), None, None, chrono::Utc::now()).unwrap();
    catalog::insert_credential(&mut api.conn().await, &credential)
        .await
        .unwrap();
    credential.identifier.0
}

/// Stores model file `models/w.bin` under the API's artifact store; answers its address.
fn model_file(api: &Api) -> File {
    let weights = b"model weights \x00\x01\x02";
    std::fs::create_dir_all(api.artifacts_dir().join("models")).unwrap();
    std::fs::write(api.artifacts_dir().join("models/w.bin"), weights).unwrap();
    let checksum = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(weights))
    };
    File {
        checksum,
        storage_address: "models/w.bin".to_owned(),
    }
}

/// Model `n` of seeded task 31 in file `file`, which `permission` may download.
fn model(n: u128, file: &File, permission: Permission) -> Model {
    Model {
        address: Some(file.clone()),
        permissions: Permissions::new(permission),
        ..fx::model(n, 31)
    }
}

/// Submits plan `n` with `tasks` independent tasks (keys `n + 1`…) as root; answers the task
/// keys.
async fn root_plan(api: &Api, n: u128, tasks: u128) -> Vec<u128> {
    let keys: Vec<u128> = (1..=tasks).map(|i| n + i).collect();
    let plan = new_plan(
        n,
        "fixture",
        keys.iter().map(|t| new_task(*t, FUNCTION, &[])).collect(),
    );
    let reply = api.post("/api/v1/compute_plans", &plan).await;
    assert_eq!(reply.status, 201, "root submits plan {n}: {reply:#?}");
    keys
}

/// What a cell of the matrix must answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// A 2xx.
    Success,
    /// `403 forbidden`.
    Forbidden,
    /// `401 unauthenticated`, with `WWW-Authenticate: Bearer`.
    Unauthenticated,
}

/// A caller of the matrix: anonymous, or a user of org-a with one role.
struct MatrixCaller {
    /// `anonymous` or the role's word.
    name: String,
    /// The user's identifier.
    user: Option<String>,
    /// Its token.
    token: Option<String>,
    /// Its password.
    password: Option<String>,
    /// A token of its own it does not authenticate with, to revoke.
    spare_token: Option<uuid::Uuid>,
    /// What authorization sees.
    principal: Principal,
}

/// What an allowed write of the matrix changes, checked afterwards as root: a refused one must
/// change nothing.
#[derive(Debug)]
enum Effect {
    /// Makes what `GET path` answers (a 404 before).
    Creates(String),
    /// Cancels the plan or task `GET path` answers (TODO before).
    Cancels(String),
}

/// What the matrix's write to `route` numbered `n` changes, if it is a write.
fn effect(route: &str, n: u128) -> Option<Effect> {
    Some(match route {
        "POST /api/v1/organizations" => Effect::Creates(format!("/api/v1/organizations/org-m{n}")),
        "POST /api/v1/projects" => Effect::Creates(format!("/api/v1/projects/p{n}")),
        "POST /api/v1/functions" => Effect::Creates(format!("/api/v1/functions/{}", key(n))),
        "POST /api/v1/datasets" => Effect::Creates(format!("/api/v1/datasets/{}", key(n))),
        "POST /api/v1/data_samples" => Effect::Creates(format!("/api/v1/data_samples/{}", key(n))),
        "POST /api/v1/compute_plans" => {
            Effect::Creates(format!("/api/v1/compute_plans/{}", key(n)))
        }
        "POST /api/v1/compute_plans/{key}/tasks" => {
            Effect::Creates(format!("/api/v1/tasks/{}", key(n + 5)))
        }
        "POST /api/v1/compute_plans/{key}/cancel" => {
            Effect::Cancels(format!("/api/v1/compute_plans/{}", key(n)))
        }
        "POST /api/v1/tasks/{key}/cancel" | "POST /api/v1/tasks/{key}/abort" => {
            Effect::Cancels(format!("/api/v1/tasks/{}", key(n + 1)))
        }
        "POST /api/v1/users" => Effect::Creates(format!("/api/v1/users/new-{n}")),
        _ => return None,
    })
}

/// One request of the matrix.
struct Cell {
    /// `METHOD /path` as the route table spells it.
    route: String,
    /// Who sends it.
    caller: String,
    token: Option<String>,
    method: Method,
    path: String,
    body: Option<Value>,
    expect: Expect,
    effect: Option<Effect>,
}

/// The user logging in in the cells of `POST /api/v1/login`.
const LOGIN_USER: &str = "m-login";
/// Its password.
const LOGIN_PASSWORD: &str = "login password ✓";

/// The path and body of a request to `route` by `caller` built to succeed, with what it needs
/// made first (fresh plans and tasks by root); `next` numbers what must be unique. `None` for
/// a route this test does not know yet.
async fn fixture(
    api: &Api,
    route: &str,
    caller: &MatrixCaller,
    next: &mut u128,
) -> Option<(String, Option<Value>)> {
    *next += 10;
    let n = *next;
    // The caller's own account; anonymous callers name someone (they are refused anyway).
    let own = caller.user.clone().unwrap_or_else(|| "m-viewer".to_owned());
    Some(match route {
        "GET /healthz" => ("/healthz".into(), None),
        "GET /metrics" => ("/metrics".into(), None),
        "GET /api/v1/openapi.json" => ("/api/v1/openapi.json".into(), None),
        "POST /api/v1/login" => (
            "/api/v1/login".into(),
            Some(json!({"identifier": LOGIN_USER, "password": LOGIN_PASSWORD})),
        ),
        "GET /api/v1/organizations" => ("/api/v1/organizations".into(), None),
        "POST /api/v1/organizations" => (
            "/api/v1/organizations".into(),
            Some(json!({"id": format!("org-m{n}")})),
        ),
        "GET /api/v1/organizations/{id}" => ("/api/v1/organizations/org-a".into(), None),
        "GET /api/v1/projects" => ("/api/v1/projects".into(), None),
        "POST /api/v1/projects" => (
            "/api/v1/projects".into(),
            Some(json!({"identifier": format!("p{n}"), "display_name": "Matrix"})),
        ),
        "GET /api/v1/projects/{identifier}" => ("/api/v1/projects/fl".into(), None),
        "GET /api/v1/functions" => ("/api/v1/functions".into(), None),
        "POST /api/v1/functions" => ("/api/v1/functions".into(), Some(noop_function(n))),
        "GET /api/v1/functions/{key}" => (format!("/api/v1/functions/{}", key(1)), None),
        "GET /api/v1/datasets" => ("/api/v1/datasets".into(), None),
        "POST /api/v1/datasets" => {
            let checksum = fx::checksum("opener");
            let dataset = json!({
                "key": key(n),
                "name": format!("dataset {n}"),
                "permissions": {"process": {"public": false, "authorized_ids": []}},
                "type": "images",
                "opener": {"checksum": checksum, "storage_address": "openers/o.py"},
                "description": {"checksum": checksum, "storage_address": "openers/README.md"},
                "logs_permission": {"public": false, "authorized_ids": []},
            });
            ("/api/v1/datasets".into(), Some(dataset))
        }
        "GET /api/v1/datasets/{key}" => (format!("/api/v1/datasets/{}", key(20)), None),
        "GET /api/v1/datasets/{key}/data_samples" => {
            (format!("/api/v1/datasets/{}/data_samples", key(20)), None)
        }
        "POST /api/v1/data_samples" => (
            "/api/v1/data_samples".into(),
            Some(json!({"samples": [{
                "key": key(n),
                "path": format!("/data/{n}"),
                "data_manager_keys": [key(20)],
            }]})),
        ),
        "GET /api/v1/data_samples/{key}" => (format!("/api/v1/data_samples/{}", key(21)), None),
        "GET /api/v1/compute_plans" => ("/api/v1/compute_plans".into(), None),
        "POST /api/v1/compute_plans" => (
            "/api/v1/compute_plans".into(),
            Some(new_plan(n, "matrix", vec![new_task(n + 1, FUNCTION, &[])])),
        ),
        "GET /api/v1/compute_plans/{key}" => (format!("/api/v1/compute_plans/{}", key(30)), None),
        "POST /api/v1/compute_plans/{key}/tasks" => {
            root_plan(api, n, 1).await;
            (
                format!("/api/v1/compute_plans/{}/tasks", key(n)),
                Some(json!({"tasks": [new_task(n + 5, FUNCTION, &[])]})),
            )
        }
        "POST /api/v1/compute_plans/{key}/cancel" => {
            root_plan(api, n, 1).await;
            (
                format!("/api/v1/compute_plans/{}/cancel", key(n)),
                Some(json!({"reason": "matrix"})),
            )
        }
        "GET /api/v1/compute_plans/{key}/performances" => (
            format!("/api/v1/compute_plans/{}/performances", key(30)),
            None,
        ),
        "GET /api/v1/tasks" => ("/api/v1/tasks".into(), None),
        "GET /api/v1/tasks/{key}" => (format!("/api/v1/tasks/{}", key(31)), None),
        "GET /api/v1/tasks/{key}/history" => (format!("/api/v1/tasks/{}/history", key(31)), None),
        "GET /api/v1/tasks/{key}/logs" => (format!("/api/v1/tasks/{}/logs", key(31)), None),
        "GET /api/v1/tasks/{key}/measurements" => {
            (format!("/api/v1/tasks/{}/measurements", key(31)), None)
        }
        "POST /api/v1/tasks/{key}/cancel" => {
            let task = root_plan(api, n, 1).await[0];
            (
                format!("/api/v1/tasks/{}/cancel", key(task)),
                Some(json!({"reason": "matrix"})),
            )
        }
        "POST /api/v1/tasks/{key}/abort" => {
            let task = root_plan(api, n, 1).await[0];
            (
                format!("/api/v1/tasks/{}/abort", key(task)),
                Some(json!({"reason": "matrix"})),
            )
        }
        "GET /api/v1/models" => ("/api/v1/models".into(), None),
        "GET /api/v1/models/{key}" => (format!("/api/v1/models/{}", key(40)), None),
        "GET /api/v1/models/{key}/download" => {
            (format!("/api/v1/models/{}/download", key(40)), None)
        }
        "GET /api/v1/workers" => ("/api/v1/workers".into(), None),
        "GET /api/v1/workers/{identifier}" => ("/api/v1/workers/worker-1".into(), None),
        "GET /api/v1/devices" => ("/api/v1/devices".into(), None),
        "GET /api/v1/me" => ("/api/v1/me".into(), None),
        "GET /api/v1/users" => ("/api/v1/users".into(), None),
        "POST /api/v1/users" => (
            "/api/v1/users".into(),
            Some(json!({
                "identifier": format!("new-{n}"),
                "organization": "org-a",
                "roles": ["viewer"],
            })),
        ),
        "GET /api/v1/users/{identifier}" => (format!("/api/v1/users/{own}"), None),
        "POST /api/v1/users/{identifier}" => (
            format!("/api/v1/users/{own}"),
            Some(json!({"display_name": format!("Matrix {n}")})),
        ),
        "POST /api/v1/users/{identifier}/password" => (
            format!("/api/v1/users/{own}/password"),
            Some(json!({
                "password": format!("new password {n}"),
                "current_password": caller.password.clone().unwrap_or_default(),
            })),
        ),
        "GET /api/v1/users/{identifier}/tokens" => (format!("/api/v1/users/{own}/tokens"), None),
        "POST /api/v1/users/{identifier}/tokens" => (
            format!("/api/v1/users/{own}/tokens"),
            Some(json!({"description": format!("matrix {n}")})),
        ),
        "POST /api/v1/users/{identifier}/tokens/{token}/revoke" => (
            format!(
                "/api/v1/users/{own}/tokens/{}/revoke",
                caller.spare_token.unwrap_or_else(uuid::Uuid::new_v4)
            ),
            None,
        ),
        _ => return None,
    })
}

/// Why `reply` is not what `expect` asks, if it is not.
fn mismatch(expect: Expect, reply: &Reply) -> Option<String> {
    let fine = match expect {
        Expect::Success => (200..300).contains(&reply.status),
        Expect::Forbidden => reply.status == 403 && reply.body["error"] == "forbidden",
        Expect::Unauthenticated => {
            reply.status == 401
                && reply.body["error"] == "unauthenticated"
                && reply
                    .headers
                    .get("www-authenticate")
                    .and_then(|value| value.to_str().ok())
                    .is_some_and(|value| value.starts_with("Bearer"))
        }
    };
    if fine {
        return None;
    }
    let mut body = reply.body.to_string();
    if body.len() > 300 {
        let mut end = 300;
        while !body.is_char_boundary(end) {
            end -= 1;
        }
        body.truncate(end);
    }
    Some(format!("expected {expect:?}, got {} {body}", reply.status))
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_answers_every_role_as_the_rule_table_says() {
    let api = Api::start().await;
    api.seed().await;
    register_function(&api, FUNCTION).await;
    let file = model_file(&api);
    execution::insert_model(
        &mut api.conn().await,
        &model(40, &file, Permission::new(&"org-a".into(), false, [])),
    )
    .await
    .unwrap();

    // One user of org-a per role, each with a password and a spare token; one to log in as.
    assert_eq!(
        Role::ALL,
        [
            Role::Administrator,
            Role::Operator,
            Role::Producer,
            Role::Auditor,
            Role::Viewer,
            Role::Worker
        ]
    );
    let mut callers = vec![MatrixCaller {
        name: "anonymous".into(),
        user: None,
        token: None,
        password: None,
        spare_token: None,
        principal: Principal::anonymous(Vec::new()),
    }];
    for role in Role::ALL {
        let user = format!("m-{role}");
        let token = user_with_token(&mut api.conn().await, &user, "org-a", &[*role]).await;
        let password = format!("{role} password ✓");
        store_password(&api, &user, &password, PasswordParams::CURRENT).await;
        callers.push(MatrixCaller {
            name: role.as_str().into(),
            spare_token: Some(spare_token(&api, &user).await),
            principal: Principal {
                user: Some(UserId::from(user.as_str())),
                organization: Some(OrganizationId::from("org-a")),
                roles: vec![*role],
            },
            user: Some(user),
            token: Some(token),
            password: Some(password),
        });
    }
    user_with_token(&mut api.conn().await, LOGIN_USER, "org-a", &[]).await;
    store_password(&api, LOGIN_USER, LOGIN_PASSWORD, PasswordParams::CURRENT).await;

    // Every cell, its fixtures made first; what it must answer comes from the rule table.
    let table = api::routes::table();
    assert_eq!(table.len(), 47, "the routes of the table");
    let mut cells = Vec::new();
    let mut unknown = Vec::new();
    let mut next = 10_000;
    for route in &table {
        let name = format!("{} {}", route.method, route.path);
        for caller in &callers {
            let expect = match route.access {
                Some(Access::Public) => Expect::Success,
                Some(Access::Requires(action)) => {
                    if caller.principal.scope(action) != Scope::None {
                        Expect::Success
                    } else if caller.principal.user.is_none() {
                        Expect::Unauthenticated
                    } else {
                        Expect::Forbidden
                    }
                }
                None => panic!("{name} says nothing about who may call it"),
            };
            let Some((path, body)) = fixture(&api, &name, caller, &mut next).await else {
                unknown.push(name.clone());
                break;
            };
            let effect = effect(&name, next);
            cells.push(Cell {
                route: name.clone(),
                caller: caller.name.clone(),
                token: caller.token.clone(),
                method: Method::from_bytes(route.method.as_str().as_bytes()).unwrap(),
                path,
                body,
                expect,
                effect,
            });
        }
    }
    assert!(
        unknown.is_empty(),
        "routes this test has no request for (add them to `fixture`): {unknown:?}"
    );

    // The rule table, counted by hand: allowed cells per caller, public routes included.
    let mut allowed: BTreeMap<&str, usize> = BTreeMap::new();
    for cell in &cells {
        *allowed.entry(cell.caller.as_str()).or_default() +=
            usize::from(cell.expect == Expect::Success);
    }
    let by_hand = BTreeMap::from([
        ("administrator", 47),
        ("operator", 43),
        ("producer", 35),
        ("auditor", 35),
        ("viewer", 23),
        ("worker", 9),
        ("anonymous", 3),
    ]);
    assert_eq!(allowed, by_hand, "allowed cells per caller");

    // Fire them all, a few at a time, and list every cell that answered otherwise.
    let started = Instant::now();
    let api = &api;
    let replies: Vec<(Cell, Reply)> = futures::stream::iter(cells)
        .map(|cell| async move {
            let reply = call(
                api,
                cell.token.as_deref(),
                cell.method.clone(),
                &cell.path,
                cell.body.as_ref(),
            )
            .await;
            (cell, reply)
        })
        .buffer_unordered(8)
        .collect()
        .await;
    assert_eq!(replies.len(), 47 * 7);
    let mut mismatches: Vec<String> = replies
        .iter()
        .filter_map(|(cell, reply)| {
            mismatch(cell.expect, reply).map(|why| {
                format!(
                    "{} as {} ({} {}): {why}",
                    cell.route, cell.caller, cell.method, cell.path
                )
            })
        })
        .collect();
    // What the allowed writes changed, and the refused ones did not.
    for (cell, _) in &replies {
        let allowed = cell.expect == Expect::Success;
        let (path, found, wanted) = match &cell.effect {
            None => continue,
            Some(Effect::Creates(path)) => {
                let found = api.get(path).await.status;
                (path, json!(found), json!(if allowed { 200 } else { 404 }))
            }
            Some(Effect::Cancels(path)) => {
                let found = api.get(path).await.body["status"].clone();
                (
                    path,
                    found,
                    json!(if allowed { "CANCELED" } else { "TODO" }),
                )
            }
        };
        if found != wanted {
            mismatches.push(format!(
                "{} as {}: GET {path} afterwards: expected {wanted}, found {found}",
                cell.route, cell.caller
            ));
        }
    }
    mismatches.sort();
    assert!(
        mismatches.is_empty(),
        "{} of {} cells answered otherwise than the rule table says:\n{}",
        mismatches.len(),
        replies.len(),
        mismatches.join("\n")
    );
    eprintln!("{} cells in {:?}", replies.len(), started.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn another_organizations_plans_tasks_logs_and_models_are_out_of_reach() {
    let api = Api::start().await;
    api.seed().await;
    register_function(&api, FUNCTION).await;
    let (producer_b, operator_b, producer_a) = {
        let mut conn = api.conn().await;
        (
            user_with_token(&mut conn, "producer-b", "org-b", &[Role::Producer]).await,
            user_with_token(&mut conn, "operator-b", "org-b", &[Role::Operator]).await,
            user_with_token(&mut conn, "producer-a", "org-a", &[Role::Producer]).await,
        )
    };
    let producer_b = Some(producer_b.as_str());
    let operator_b = Some(operator_b.as_str());
    let producer_a = Some(producer_a.as_str());

    // Plan 500 of org-a (root's) and plan 510 of org-b (producer-b's), one task each.
    root_plan(&api, 500, 1).await;
    let mut own_task = new_task(511, FUNCTION, &[]);
    own_task["worker"] = json!("org-b");
    own_task["outputs"]["model"]["permissions"]["process"]["authorized_ids"] = json!(["org-b"]);
    let own = new_plan(510, "org-b", vec![own_task]);
    let reply = call(
        &api,
        producer_b,
        Method::POST,
        "/api/v1/compute_plans",
        Some(&own),
    )
    .await;
    assert_eq!(reply.status, 201, "{reply:#?}");
    assert_eq!(reply.body["owner"], "org-b");

    // The producer of org-b lists only its own plan and tasks…
    let listed = call(&api, producer_b, Method::GET, "/api/v1/compute_plans", None).await;
    assert_eq!(listed.status, 200, "{listed:#?}");
    assert_eq!(listed.body["count"], 1, "{listed:#?}");
    assert_eq!(listed.body["results"][0]["key"], json!(key(510)));
    let asked = call(
        &api,
        producer_b,
        Method::GET,
        "/api/v1/compute_plans?owner=org-a",
        None,
    )
    .await;
    assert_eq!(
        (asked.status, &asked.body["count"]),
        (200, &json!(0)),
        "{asked:#?}"
    );
    let listed = call(&api, producer_b, Method::GET, "/api/v1/tasks", None).await;
    assert_eq!(listed.body["count"], 1, "{listed:#?}");
    assert_eq!(listed.body["results"][0]["key"], json!(key(511)));
    // … and org-a's plans and tasks are as absent as missing ones, whatever it asks.
    for (method, path, body) in [
        (
            Method::GET,
            format!("/api/v1/compute_plans/{}", key(500)),
            None,
        ),
        (
            Method::GET,
            format!("/api/v1/compute_plans/{}", key(30)),
            None,
        ),
        (
            Method::GET,
            format!("/api/v1/compute_plans/{}/performances", key(30)),
            None,
        ),
        (
            Method::POST,
            format!("/api/v1/compute_plans/{}/cancel", key(500)),
            Some(json!({"reason": "not mine"})),
        ),
        (
            Method::POST,
            format!("/api/v1/compute_plans/{}/tasks", key(500)),
            Some(json!({"tasks": [new_task(502, FUNCTION, &[])]})),
        ),
        (Method::GET, format!("/api/v1/tasks/{}", key(501)), None),
        (Method::GET, format!("/api/v1/tasks/{}/logs", key(31)), None),
        (
            Method::POST,
            format!("/api/v1/tasks/{}/cancel", key(501)),
            Some(json!({})),
        ),
        (
            Method::POST,
            format!("/api/v1/tasks/{}/abort", key(501)),
            Some(json!({})),
        ),
    ] {
        let reply = call(&api, producer_b, method.clone(), &path, body.as_ref()).await;
        assert_eq!(reply.status, 404, "{method} {path}: {reply:#?}");
        assert_error(&reply, 404, "not_found", "key");
    }
    // Nothing changed on org-a's plan.
    let plan = api
        .get(&format!("/api/v1/compute_plans/{}", key(500)))
        .await;
    assert_eq!(
        (&plan.body["status"], &plan.body["counters"]["task_count"]),
        (&json!("TODO"), &json!(1)),
        "{plan:#?}"
    );
    assert_error(
        &api.get(&format!("/api/v1/tasks/{}", key(502))).await,
        404,
        "not_found",
        "key",
    );

    // Its own plan it reads, extends and cancels.
    let path = format!("/api/v1/compute_plans/{}", key(510));
    assert_eq!(
        call(&api, producer_b, Method::GET, &path, None)
            .await
            .status,
        200
    );
    let mut added = new_task(512, FUNCTION, &[]);
    added["worker"] = json!("org-b");
    added["outputs"]["model"]["permissions"]["process"]["authorized_ids"] = json!(["org-b"]);
    let reply = call(
        &api,
        producer_b,
        Method::POST,
        &format!("{path}/tasks"),
        Some(&json!({"tasks": [added]})),
    )
    .await;
    assert_eq!(reply.status, 201, "{reply:#?}");
    assert_eq!(reply.body["counters"]["task_count"], 2);
    let reply = call(
        &api,
        producer_b,
        Method::POST,
        &format!("{path}/cancel"),
        Some(&json!({})),
    )
    .await;
    assert_eq!(
        (reply.status, &reply.body["status"]),
        (200, &json!("CANCELED")),
        "{reply:#?}"
    );
    // The producer of org-a does not see it; an administrator sees everything.
    let listed = call(&api, producer_a, Method::GET, "/api/v1/compute_plans", None).await;
    let keys: Vec<&Value> = listed.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|plan| &plan["key"])
        .collect();
    assert!(!keys.contains(&&json!(key(510))), "{listed:#?}");
    assert_error(
        &call(&api, producer_a, Method::GET, &path, None).await,
        404,
        "not_found",
        "key",
    );
    assert_eq!(api.get("/api/v1/compute_plans").await.body["count"], 3);

    // Logs need the task's logs permission: task 31's includes org-b, 33's is org-a's only,
    // 34's is public.
    let only_a = Permission::new(&"org-a".into(), false, []);
    tasks::insert_tasks(
        &api.conn().await,
        &[
            models::Task {
                logs_permission: only_a.clone(),
                ..fx::task(33, 30, 1, None)
            },
            models::Task {
                logs_permission: Permission::public(&"org-a".into()),
                ..fx::task(34, 30, 1, None)
            },
        ],
    )
    .await
    .unwrap();
    let logs = |n: u128| format!("/api/v1/tasks/{}/logs", key(n));
    let reply = call(&api, operator_b, Method::GET, &logs(33), None).await;
    assert_error(&reply, 403, "forbidden", "");
    for n in [31, 34] {
        let reply = call(&api, operator_b, Method::GET, &logs(n), None).await;
        assert_eq!(reply.status, 200, "logs of task {n}: {reply:#?}");
    }
    assert_eq!(
        call(&api, producer_a, Method::GET, &logs(33), None)
            .await
            .status,
        200,
        "org-a's producer reads the logs org-a's permission covers"
    );

    // A model's file needs its process permission.
    let file = model_file(&api);
    for record in [
        model(41, &file, only_a),
        model(
            42,
            &file,
            Permission::new(&"org-a".into(), false, ["org-b".into()]),
        ),
        model(43, &file, Permission::public(&"org-a".into())),
    ] {
        execution::insert_model(&mut api.conn().await, &record)
            .await
            .unwrap();
    }
    let download = |n: u128| format!("/api/v1/models/{}/download", key(n));
    let reply = call(&api, operator_b, Method::GET, &download(41), None).await;
    assert_error(&reply, 403, "forbidden", "key");
    for n in [42, 43] {
        let reply = call(&api, operator_b, Method::GET, &download(n), None).await;
        assert_eq!(reply.status, 200, "model {n}: {reply:#?}");
        assert_eq!(
            reply.headers["x-checksum-sha256"],
            file.checksum.as_str(),
            "model {n}"
        );
    }
    assert_eq!(
        call(&api, producer_a, Method::GET, &download(41), None)
            .await
            .status,
        200
    );
}

/// Why `reply` is not the one refusal every credential that does not authenticate gets, if
/// it is not.
fn not_invalid_credentials(reply: &Reply) -> Option<String> {
    let bearer = reply
        .headers
        .get("www-authenticate")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("Bearer"));
    (reply.status != 401
        || reply.body["error"] != "unauthenticated"
        || reply.body["details"][0]["message"] != "invalid credentials"
        || reply.body["details"].as_array().map(Vec::len) != Some(1)
        || !bearer)
        .then(|| {
            format!(
                "{} {} (WWW-Authenticate: {bearer})",
                reply.status, reply.body
            )
        })
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_that_do_not_authenticate_get_one_401_and_change_nothing() {
    const CAROL: &str = "carol's password ✓";
    const DAVE: &str = "dave's password ✓";
    let api = Api::start().await;
    api.seed().await;
    register_function(&api, FUNCTION).await;
    for (user, password) in [("carol", CAROL), ("dave", DAVE)] {
        let body = json!({
            "identifier": user,
            "organization": "org-a",
            "roles": ["producer"],
            "password": password,
        });
        let reply = api.post("/api/v1/users", &body).await;
        assert_eq!(reply.status, 201, "{reply:#?}");
    }

    // The right password gives a token that works.
    let reply = login(&api, "carol", CAROL).await;
    assert_eq!(reply.status, 201, "{reply:#?}");
    let token = reply.body["token"].as_str().unwrap().to_owned();
    let me = call(&api, Some(&token), Method::GET, "/api/v1/me", None).await;
    assert_eq!(
        (me.status, &me.body["identifier"]),
        (200, &json!("carol")),
        "{me:#?}"
    );
    let plan = new_plan(100, "", vec![new_task(101, FUNCTION, &[])]);
    let reply = call(
        &api,
        Some(&token),
        Method::POST,
        "/api/v1/compute_plans",
        Some(&plan),
    )
    .await;
    assert_eq!(reply.status, 201, "{reply:#?}");

    // An expired token, a revoked one, a disabled user's.
    let tokens = "/api/v1/users/carol/tokens";
    let short = call(
        &api,
        Some(&token),
        Method::POST,
        tokens,
        Some(&json!({"expires_in_secs": 1})),
    )
    .await;
    assert_eq!(short.status, 201, "{short:#?}");
    let expired = short.body["token"].as_str().unwrap().to_owned();
    let made = call(&api, Some(&token), Method::POST, tokens, Some(&json!({}))).await;
    let revoked = made.body["token"].as_str().unwrap().to_owned();
    let reply = call(
        &api,
        Some(&token),
        Method::POST,
        &format!(
            "{tokens}/{}/revoke",
            made.body["info"]["identifier"].as_str().unwrap()
        ),
        None,
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:#?}");
    assert!(reply.body["revocation_date"].is_string(), "{reply:#?}");
    let made = api
        .post("/api/v1/users/dave/tokens", &json!({"description": "ci"}))
        .await;
    assert_eq!(made.status, 201, "{made:#?}");
    let disabled = made.body["token"].as_str().unwrap().to_owned();
    assert_eq!(
        call(&api, Some(&disabled), Method::GET, "/api/v1/me", None)
            .await
            .status,
        200,
        "dave's token works while dave is enabled"
    );
    let reply = api
        .post("/api/v1/users/dave", &json!({"is_enabled": false}))
        .await;
    assert_eq!(
        (reply.status, &reply.body["is_enabled"]),
        (200, &json!(false)),
        "{reply:#?}"
    );
    // A token with another secret, and tokens that are not tokens.
    let (prefix, secret) = token.rsplit_once('_').unwrap();
    let flipped = if secret.starts_with('0') { "1" } else { "0" };
    let wrong_secret = format!("{prefix}_{flipped}{}", &secret[1..]);
    let (_, id_and_secret) = token.split_once('_').unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let bad = [
        ("an expired token", expired),
        ("a revoked token", revoked),
        ("a disabled user's token", disabled),
        ("a token with a wrong secret", wrong_secret),
        ("a token without its prefix", id_and_secret.to_owned()),
        ("a truncated token", token[..token.len() - 2].to_owned()),
        ("not a token", "not-a-token".to_owned()),
    ];
    let before = plan_count(&api).await;
    let mut problems = Vec::new();
    let mut bodies = Vec::new();
    for (i, (what, bad_token)) in bad.iter().enumerate() {
        let n = 200 + 10 * i as u128;
        let plan = new_plan(n, "", vec![new_task(n + 1, FUNCTION, &[])]);
        for (method, path, body) in [
            (Method::GET, "/api/v1/me", None),
            (Method::POST, "/api/v1/compute_plans", Some(&plan)),
            (
                Method::POST,
                "/api/v1/users/carol/tokens",
                Some(&json!({"description": "stolen"})),
            ),
        ] {
            let reply = call(&api, Some(bad_token), method.clone(), path, body).await;
            if let Some(problem) = not_invalid_credentials(&reply) {
                problems.push(format!("{what}, {method} {path}: {problem}"));
            }
            bodies.push((format!("{what}, {method} {path}"), reply.body));
        }
        assert_error(
            &api.get(&format!("/api/v1/compute_plans/{}", key(n))).await,
            404,
            "not_found",
            "key",
        );
    }
    // Every refusal has the same body, whatever the cause.
    let (first_what, first) = &bodies[0];
    for (what, body) in &bodies[1..] {
        if body != first {
            problems.push(format!("{what} answered {body}, {first_what} {first}"));
        }
    }

    // Logging in: a wrong password, an unknown user, an impossible identifier, a disabled
    // user with its right password.
    let carol_tokens = users::tokens_of(&mut api.conn().await, &"carol".into())
        .await
        .unwrap()
        .len();
    let dave_tokens = users::tokens_of(&mut api.conn().await, &"dave".into())
        .await
        .unwrap()
        .len();
    let mut login_bodies = Vec::new();
    for (what, identifier, password) in [
        ("a wrong password", "carol", "carol's password ✗"),
        ("an empty password", "carol", ""),
        ("an unknown user", "nobody", CAROL),
        ("an identifier no user can have", "x", CAROL),
        ("a disabled user's right password", "dave", DAVE),
    ] {
        let reply = login(&api, identifier, password).await;
        if let Some(problem) = not_invalid_credentials(&reply) {
            problems.push(format!("login with {what}: {problem}"));
        }
        login_bodies.push((what, reply.body));
    }
    let (first_what, first) = &login_bodies[0];
    for (what, body) in &login_bodies[1..] {
        if body != first {
            problems.push(format!(
                "login with {what} answered {body}, with {first_what} {first}"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "credentials that do not authenticate were answered differently:\n{}",
        problems.join("\n")
    );

    // Nothing was stored: no plan, no token.
    assert_eq!(plan_count(&api).await, before, "plans stored");
    let mut conn = api.conn().await;
    assert_eq!(
        users::tokens_of(&mut conn, &"carol".into())
            .await
            .unwrap()
            .len(),
        carol_tokens
    );
    assert_eq!(
        users::tokens_of(&mut conn, &"dave".into())
            .await
            .unwrap()
            .len(),
        dave_tokens
    );
    // The good token still works.
    let me = call(&api, Some(&token), Method::GET, "/api/v1/me", None).await;
    assert_eq!(me.status, 200, "{me:#?}");
}

/// The password credential of `user`.
async fn password_of(api: &Api, user: &str) -> models::Credential {
    users::password_of(&mut api.conn().await, &user.into())
        .await
        .unwrap()
        .expect("a password credential")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_password_stored_with_old_parameters_is_rehashed_at_login() {
    const PASSWORD: &str = "erin's password ✓";
    let old = PasswordParams {
        m_cost: 64,
        t_cost: 1,
        p_cost: 1,
        output_len: 32,
    };
    let api = Api::start().await;
    user_with_token(&mut api.conn().await, "erin", "org-a", &[Role::Viewer]).await;
    store_password(&api, "erin", PASSWORD, old).await;
    let before = password_of(&api, "erin").await;
    assert_eq!(
        before.hash_function_parameters,
        serde_json::to_value(old).unwrap()
    );

    // A wrong password rehashes nothing.
    assert!(not_invalid_credentials(&login(&api, "erin", "not erin's password").await).is_none());
    assert_eq!(password_of(&api, "erin").await, before);

    let reply = login(&api, "erin", PASSWORD).await;
    assert_eq!(reply.status, 201, "{reply:#?}");
    let token = reply.body["token"].as_str().unwrap();
    let me = call(&api, Some(token), Method::GET, "/api/v1/me", None).await;
    assert_eq!(
        (me.status, &me.body["identifier"]),
        (200, &json!("erin")),
        "{me:#?}"
    );
    let after = password_of(&api, "erin").await;
    assert_eq!(after.identifier, before.identifier);
    assert_eq!(
        after.hash_function_parameters,
        serde_json::to_value(PasswordParams::CURRENT).unwrap(),
        "rehashed with the current parameters"
    );
    assert_eq!(after.hash_function, "argon2id");
    assert_ne!(
        after.hash_function_salt, before.hash_function_salt,
        "a fresh salt"
    );
    assert_ne!(after.secret, before.secret);
    let checked = after.clone();
    let check =
        tokio::task::spawn_blocking(move || dispatcher::auth::verify_password(&checked, PASSWORD))
            .await
            .unwrap();
    assert_eq!(check, PasswordCheck::Match { rehash: false });

    // Logging in again works and rehashes nothing more.
    assert_eq!(login(&api, "erin", PASSWORD).await.status, 201);
    assert_eq!(password_of(&api, "erin").await, after);
}

#[tokio::test(flavor = "multi_thread")]
async fn changing_ones_own_password_needs_the_current_one() {
    const FIRST: &str = "gina's first password";
    const SECOND: &str = "gina's second password";
    let api = Api::start().await;
    for user in ["gina", "hank"] {
        let body = json!({
            "identifier": user,
            "organization": "org-a",
            "roles": ["viewer"],
            "password": FIRST,
        });
        assert_eq!(api.post("/api/v1/users", &body).await.status, 201);
    }
    let gina = login(&api, "gina", FIRST).await.body["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let hank = login(&api, "hank", FIRST).await.body["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = "/api/v1/users/gina/password";

    // Without the current password, or with a wrong one: refused, nothing changed.
    for body in [
        json!({"password": SECOND}),
        json!({"password": SECOND, "current_password": "not the current one"}),
    ] {
        let reply = call(&api, Some(&gina), Method::POST, path, Some(&body)).await;
        assert!(
            [400, 401, 403].contains(&reply.status),
            "{body}: {reply:#?}"
        );
        assert!(
            reply.body["details"]
                .as_array()
                .unwrap()
                .iter()
                .any(|detail| detail["path"] == "current_password"),
            "{body}: {reply:#?}"
        );
        assert_eq!(login(&api, "gina", FIRST).await.status, 201);
        assert_eq!(login(&api, "gina", SECOND).await.status, 401);
    }
    // Another user may not set it, even knowing it.
    let body = json!({"password": SECOND, "current_password": FIRST});
    let reply = call(&api, Some(&hank), Method::POST, path, Some(&body)).await;
    assert_error(&reply, 403, "forbidden", "");
    assert_eq!(login(&api, "gina", SECOND).await.status, 401);

    // With the current password: changed.
    let reply = call(&api, Some(&gina), Method::POST, path, Some(&body)).await;
    assert_eq!(reply.status, 200, "{reply:#?}");
    assert_eq!(login(&api, "gina", SECOND).await.status, 201);
    assert_eq!(login(&api, "gina", FIRST).await.status, 401);
    // An administrator sets anyone's without it.
    let reply = api.post(path, &json!({"password": FIRST})).await;
    assert_eq!(reply.status, 200, "{reply:#?}");
    assert_eq!(login(&api, "gina", FIRST).await.status, 201);
}

/// A connection to the test's vhost as `user`, and a client for requests over it.
async fn rpc_as(user: &BrokerUser) -> (Broker, RpcClient) {
    let broker = Broker::connect(user.config("baton-test"))
        .await
        .unwrap_or_else(|error| panic!("{} connects: {error}", user.name()));
    let rpc = RpcClient::new(&broker).await.unwrap();
    (broker, rpc)
}

/// Sends `request` over `rpc` to `baton.submit` under `message_id` (fresh when empty), naming
/// `on_behalf_of` in `x-baton-on-behalf-of`.
async fn send<Req: WireMessage, Rep: WireMessage>(
    rpc: &RpcClient,
    request: &Req,
    message_id: &str,
    on_behalf_of: Option<&str>,
) -> Rep {
    rpc.call_as(
        SUBMIT_EXCHANGE,
        Req::KIND,
        request,
        message_id.to_owned(),
        on_behalf_of,
        Duration::from_secs(10),
    )
    .await
    .unwrap()
}

/// Plan `n` with one task, as producers send it.
fn submission(n: u128) -> PlanSubmission {
    serde_json::from_value(new_plan(n, "amqp", vec![new_task(n + 1, FUNCTION, &[])])).unwrap()
}

/// The error word of a refused submission; panics on an accepted one.
#[track_caller]
fn refusal(reply: &SubmissionReply) -> &str {
    match reply {
        SubmissionReply::Rejected { error, .. } => error,
        SubmissionReply::Accepted { .. } => panic!("accepted: {reply:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn amqp_messages_act_as_their_rabbitmq_user_and_nobody_else() {
    let api = Api::start().await;
    api.seed().await;
    register_function(&api, FUNCTION).await;
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..10];
    let stranger = api.broker.user(&format!("stranger-{suffix}")).await;
    let viewer = api.broker.user(&format!("viewer-{suffix}")).await;
    let producer_b = api.broker.user(&format!("producer-b-{suffix}")).await;
    {
        let mut conn = api.conn().await;
        user_with_token(&mut conn, viewer.name(), "org-a", &[Role::Viewer]).await;
        user_with_token(&mut conn, producer_b.name(), "org-b", &[Role::Producer]).await;
    }
    let (_stranger_link, as_stranger) = rpc_as(&stranger).await;
    let (_viewer_link, as_viewer) = rpc_as(&viewer).await;
    let (_producer_link, as_producer_b) = rpc_as(&producer_b).await;
    let before = plan_count(&api).await;

    // A RabbitMQ user that is no baton user is anonymous; a viewer may not submit. Naming an
    // administrator in `x-baton-on-behalf-of` changes nothing: only the dispatcher's own
    // RabbitMQ user may act for someone.
    for (rpc, n, expected) in [
        (&as_stranger, 600, "unauthenticated"),
        (&as_viewer, 620, "forbidden"),
    ] {
        let reply: SubmissionReply = send(rpc, &submission(n), "", None).await;
        assert_eq!(refusal(&reply), expected, "{reply:?}");
        let reply: SubmissionReply = send(rpc, &submission(n + 10), "", Some("root")).await;
        assert_eq!(refusal(&reply), expected, "on behalf of root: {reply:?}");
    }
    // The dispatcher's own user (guest here, a baton user with roles) sends an anonymous HTTP
    // caller's request for the empty name: it is anonymous, not guest.
    let own = Broker::connect(api.broker.config("baton-api"))
        .await
        .unwrap();
    let as_api = RpcClient::new(&own).await.unwrap();
    let reply: SubmissionReply = send(&as_api, &submission(650), "", Some("")).await;
    assert_eq!(refusal(&reply), "unauthenticated", "{reply:?}");
    assert_eq!(plan_count(&api).await, before, "nothing stored");
    for n in [600, 610, 620, 630, 650] {
        assert!(
            plans::find_plan(&api.conn().await, PlanKey(key(n)))
                .await
                .unwrap()
                .is_none()
        );
    }

    // A producer naming the viewer acts as itself: accepted, owned by its organization, created
    // by it.
    let reply: SubmissionReply =
        send(&as_producer_b, &submission(640), "", Some(viewer.name())).await;
    assert!(
        matches!(reply, SubmissionReply::Accepted { .. }),
        "{reply:?}"
    );
    let plan = plans::find_plan(&api.conn().await, PlanKey(key(640)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(plan.owner, OrganizationId::from("org-b"));
    assert_eq!(plan.creator, Some(UserId::from(producer_b.name())));

    // Cancels and added tasks on org-a's plan: refused to each, the plan as it was.
    root_plan(&api, 650, 1).await;
    let cancel = CancelRequest::Plan {
        compute_plan_key: PlanKey(key(650)),
        reason: "not allowed".into(),
    };
    let more: NewTask = serde_json::from_value(new_task(655, FUNCTION, &[])).unwrap();
    let add = AddTasks {
        compute_plan_key: PlanKey(key(650)),
        tasks: vec![more],
    };
    for (who, rpc, expected) in [
        ("a stranger", &as_stranger, "unauthenticated"),
        ("a viewer", &as_viewer, "forbidden"),
        ("org-b's producer", &as_producer_b, "forbidden"),
    ] {
        let reply: CancelReply = send(rpc, &cancel, "", Some("root")).await;
        match &reply {
            CancelReply::Refused { reason } => {
                assert!(reason.starts_with(expected), "{who}: {reason}");
            }
            CancelReply::Accepted => panic!("{who}'s cancel was accepted"),
        }
        let reply: SubmissionReply = send(rpc, &add, "", Some("root")).await;
        assert_eq!(refusal(&reply), expected, "{who}: {reply:?}");
    }
    let plan = plans::find_plan(&api.conn().await, PlanKey(key(650)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (plan.status, plan.counters.task_count),
        (PlanStatus::Todo, 1)
    );

    // Registering a worker needs the worker role.
    for (who, rpc, organization) in [
        ("a stranger", &as_stranger, "org-a"),
        ("a viewer", &as_viewer, "org-a"),
        ("a producer", &as_producer_b, "org-b"),
    ] {
        let id = format!("w-{}", who.replace(' ', "-").replace('\'', ""));
        let reply = crate::support::cluster::register(rpc, &id, organization).await;
        assert!(
            matches!(reply, RegistrationReply::Refused { .. }),
            "{who}: {reply:?}"
        );
        assert_error(
            &api.get(&format!("/api/v1/workers/{id}")).await,
            404,
            "not_found",
            "identifier",
        );
    }

    // A refusal is not recorded: once the viewer may submit, the same message succeeds.
    let message_id = format!("plan-660-{suffix}");
    let reply: SubmissionReply = send(&as_viewer, &submission(660), &message_id, None).await;
    assert_eq!(refusal(&reply), "forbidden");
    let reply = api
        .post(
            &format!("/api/v1/users/{}", viewer.name()),
            &json!({"roles": ["producer"]}),
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:#?}");
    let reply: SubmissionReply = send(&as_viewer, &submission(660), &message_id, None).await;
    assert!(
        matches!(reply, SubmissionReply::Accepted { .. }),
        "{reply:?}"
    );
}

/// Task `key` as stored, its state changes and the models it registered.
async fn stored_task(
    cluster: &TestCluster,
    key: TaskKey,
) -> (models::Task, Vec<models::TaskStateChange>, Vec<Model>) {
    let mut conn = cluster.db.connect().await;
    let task = tasks::find_task(&mut conn, key).await.unwrap().unwrap();
    let history = tasks::list_state_changes(&mut conn, key).await.unwrap();
    let models = execution::list_task_models(&mut conn, key).await.unwrap();
    (task, history, models)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_report_with_another_attempts_lease_token_is_refused_while_that_attempt_runs() {
    // Leases lapse after 3 s, so the second attempt outlives the refused reports.
    let cluster = TestCluster::start(chrono::Duration::seconds(3)).await;
    let function = models::Function {
        project: None,
        permissions: Permissions::new(Permission::public(&"org-a".into())),
        inputs: Vec::new(),
        outputs: vec![models::FunctionOutput {
            identifier: "model".into(),
            kind: models::OutputKind::Model,
            multiple: false,
        }],
        build_steps: Vec::new(),
        requirements: models::RequirementSet::any(),
        parameter_schema: None,
        retry: models::function::RetryPolicy {
            max_attempts: 3,
            backoff_initial_ms: 100,
            backoff_max_ms: 100,
            jitter: false,
        },
        ..fx::function(FUNCTION, "org-a", "fl")
    };
    cluster.seed(&[function]).await;
    let client = cluster.client("producer").await;
    let rpc = RpcClient::new(&client).await.unwrap();
    let mut plan = submission(700);
    plan.project = None;
    let reply = cluster.submit(&rpc, &plan).await;
    assert!(
        matches!(reply, SubmissionReply::Accepted { .. }),
        "{reply:?}"
    );
    let task = TaskKey(key(701));
    let first_worker = ScriptedWorker::new(&cluster, "worker-first").await;
    let second_worker = ScriptedWorker::new(&cluster, "worker-second").await;

    // The first attempt's lease lapses; the second worker is granted the second attempt.
    let first = Granted::of(&first_worker.claim(task).await).expect("the first claim is granted");
    let deadline = Instant::now() + WAIT;
    let second = loop {
        if let Some(granted) = Granted::of(&second_worker.claim(task).await) {
            break granted;
        }
        assert!(Instant::now() < deadline, "no second attempt was granted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        (first.attempt, second.attempt),
        (models::Attempt(1), models::Attempt(2))
    );
    let (before, history_before, _) = stored_task(&cluster, task).await;
    assert_eq!(before.status, TaskStatus::Doing);

    // The first worker reports with its own attempt's token, then with its token on the
    // current attempt; the second reports its token under the first attempt.
    let reports = [
        (&first_worker, first.attempt, first.token),
        (&first_worker, second.attempt, first.token),
        (&second_worker, first.attempt, second.token),
    ];
    for (worker, attempt, token) in reports {
        let forged = Granted {
            task,
            attempt,
            token,
            outputs: second.outputs.clone(),
        };
        worker.report(&forged, ReportedOutcome::Done).await;
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (after, history_after, models) = stored_task(&cluster, task).await;
    assert_eq!(after.status, TaskStatus::Doing, "{after:?}");
    assert_eq!(after.attempt_count, 2);
    let lease = after.lease.expect("the second attempt's lease");
    assert_eq!((lease.attempt, lease.token), (second.attempt, second.token));
    assert_eq!(after.worker_id, Some("worker-second".into()));
    assert_eq!(history_after, history_before, "no state change recorded");
    assert!(models.is_empty(), "no output registered: {models:?}");
    assert_eq!(
        cluster.plan(PlanKey(key(700))).await.status,
        PlanStatus::Doing
    );

    // The lease holder's own report is applied.
    second_worker.report(&second, ReportedOutcome::Done).await;
    cluster
        .wait_for_plan(PlanKey(key(700)), WAIT, "DONE", |plan| {
            plan.status == PlanStatus::Done
        })
        .await;
}

/// Needs a process of its own for its global subscriber (nextest runs each test in one).
#[tokio::test(flavor = "multi_thread")]
async fn no_secret_reaches_the_logs_of_a_full_run() {
    const PASSWORD: &str = "frank's password ✓ 7f3a";
    const WRONG_PASSWORD: &str = "frank's password ✗ 7f3b";
    let captured = Captured::install(
        "info,api=debug,dispatcher=debug,broker=debug,worker=debug,models=debug,cli=debug",
    );

    let api = Api::start().await;
    api.seed().await;
    // A user made through the API with a password logs in.
    let body = json!({
        "identifier": "frank",
        "organization": "org-a",
        "roles": ["producer"],
        "password": PASSWORD,
    });
    assert_eq!(api.post("/api/v1/users", &body).await.status, 201);
    let reply = login(&api, "frank", PASSWORD).await;
    assert_eq!(reply.status, 201, "{reply:#?}");
    let token = reply.body["token"].as_str().unwrap().to_owned();
    let token_id = reply.body["info"]["identifier"]
        .as_str()
        .unwrap()
        .to_owned();

    // Its token submits a plan that a real worker runs to DONE.
    let function = json!({
        "key": key(800),
        "name": "add",
        "project": "fl",
        "permissions": {"process": {"public": true, "authorized_ids": []}},
        "outputs": [{"identifier": "sum", "kind": "PERFORMANCE"}],
        "steps": [],
    });
    let reply = api.post("/api/v1/functions", &function).await;
    assert_eq!(reply.status, 201, "{reply:#?}");
    let dir = tempfile::tempdir().unwrap();
    let mut config =
        worker::WorkerConfig::new(api.broker.config("worker-w1"), "w1".into(), "org-a".into());
    config.work_root = dir.path().join("work");
    config.claim_timeout = Duration::from_secs(10);
    let store = worker::artifacts::LocalStore::new(dir.path().join("artifacts")).unwrap();
    let running = worker::Worker::builder(config, Arc::new(store))
        .handler("add", |ctx| async move {
            ctx.log("adding one and two");
            ctx.set_performance("sum", 3.0).await
        })
        .build();
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(running.run(stop.clone()));
    let task = json!({
        "key": key(801),
        "function_key": key(800),
        "name": "add",
        "outputs": {"sum": {"permissions": {"process": {"public": true, "authorized_ids": []}}}},
        "worker": "org-a",
    });
    let reply = call(
        &api,
        Some(&token),
        Method::POST,
        "/api/v1/compute_plans",
        Some(&new_plan(802, "logs", vec![task])),
    )
    .await;
    assert_eq!(reply.status, 201, "{reply:#?}");
    let deadline = Instant::now() + WAIT;
    loop {
        let reply = call(
            &api,
            Some(&token),
            Method::GET,
            &format!("/api/v1/compute_plans/{}", key(802)),
            None,
        )
        .await;
        if reply.body["status"] == "DONE" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the plan did not end: {reply:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A wrong token and a wrong password, then the token revoked.
    let (prefix, secret) = token.rsplit_once('_').unwrap();
    let wrong_token = format!("{prefix}_{}", secret.chars().rev().collect::<String>());
    let reply = call(&api, Some(&wrong_token), Method::GET, "/api/v1/me", None).await;
    assert_eq!(reply.status, 401);
    assert_eq!(login(&api, "frank", WRONG_PASSWORD).await.status, 401);
    let reply = call(
        &api,
        Some(&token),
        Method::POST,
        &format!("/api/v1/users/frank/tokens/{token_id}/revoke"),
        None,
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:#?}");
    assert_eq!(
        call(&api, Some(&token), Method::GET, "/api/v1/me", None)
            .await
            .status,
        401
    );
    stop.cancel();
    running.await.unwrap().unwrap();

    // What is stored of them.
    let mut conn = api.conn().await;
    let password = users::password_of(&mut conn, &"frank".into())
        .await
        .unwrap()
        .expect("frank's password");
    let stored_token = users::find_credential(
        &mut conn,
        CredentialId(uuid::Uuid::try_parse(&token_id).unwrap()),
    )
    .await
    .unwrap()
    .expect("frank's token");
    let secrets = [
        ("the password", PASSWORD.to_owned()),
        ("the wrong password", WRONG_PASSWORD.to_owned()),
        ("the token", token.clone()),
        ("the token's secret", secret.to_owned()),
        (
            "the wrong token's secret",
            wrong_token.rsplit('_').next().unwrap().to_owned(),
        ),
        ("the password's hash", password.secret.expose().to_owned()),
        (
            "the password's salt",
            password.hash_function_salt.clone().unwrap_or_default(),
        ),
        (
            "the token's digest",
            stored_token.secret.expose().to_owned(),
        ),
    ];
    let lines = execution::list_log_lines(&mut conn, TaskKey(key(801)), 1000, 0)
        .await
        .unwrap();
    assert!(
        lines.iter().any(|line| line.text == "adding one and two"),
        "{lines:?}"
    );
    let logs = captured.text();
    for expected in [
        "user created",
        "user logged in",
        "token revoked",
        "compute plan",
    ] {
        assert!(
            logs.contains(expected),
            "no {expected:?} in the logs:\n{logs}"
        );
    }
    let mut leaks = Vec::new();
    for (what, secret) in &secrets {
        assert!(secret.len() >= 16, "{what} is long enough to search for");
        if logs.contains(secret.as_str()) {
            leaks.push(format!("{what} is in the process's logs"));
        }
        for line in &lines {
            if line.text.contains(secret.as_str()) {
                leaks.push(format!("{what} is in the task's log line {}", line.seq));
            }
        }
    }
    assert!(leaks.is_empty(), "{leaks:?}");
}
