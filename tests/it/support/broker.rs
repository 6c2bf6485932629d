//! `TestBroker`: a RabbitMQ vhost of its own for one test, made and deleted through the
//! management API, so tests run in parallel with the production names (`baton.tasks`, the
//! single-active-consumer `baton.dispatcher`) without seeing each other's messages.

use broker::BrokerConfig;

/// The management API, with credentials. Override with `BATON_TEST_RABBITMQ_API`.
pub(crate) fn api_base() -> String {
    std::env::var("BATON_TEST_RABBITMQ_API")
        .unwrap_or_else(|_| "http://127.0.0.1:15672/api".to_owned())
}

/// The AMQP server, without a vhost. Override with `BATON_TEST_AMQP_URL`.
pub(crate) fn amqp_base() -> String {
    std::env::var("BATON_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672".to_owned())
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn api(
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> reqwest::Response {
    let mut request = client()
        .request(method, format!("{}{path}", api_base()))
        .basic_auth("guest", Some("guest"));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request
        .send()
        .await
        .expect("the RabbitMQ management API answers (.ci/services enables it)");
    assert!(
        response.status().is_success(),
        "management API {path}: {}",
        response.status()
    );
    response
}

/// A vhost for one test, deleted on drop.
pub(crate) struct TestBroker {
    vhost: String,
}

impl TestBroker {
    /// A new, empty vhost that `guest` may use.
    pub(crate) async fn new() -> TestBroker {
        let vhost = format!("baton-test-{}", uuid::Uuid::new_v4().simple());
        api(reqwest::Method::PUT, &format!("/vhosts/{vhost}"), None).await;
        api(
            reqwest::Method::PUT,
            &format!("/permissions/{vhost}/guest"),
            Some(serde_json::json!({"configure": ".*", "write": ".*", "read": ".*"})),
        )
        .await;
        TestBroker { vhost }
    }

    /// The vhost's name.
    pub(crate) fn vhost(&self) -> &str {
        &self.vhost
    }

    /// The AMQP URL of the vhost.
    pub(crate) fn url(&self) -> String {
        format!("{}/{}", amqp_base(), self.vhost)
    }

    /// A broker configuration for the vhost, sending as `app_id`.
    pub(crate) fn config(&self, app_id: &str) -> BrokerConfig {
        BrokerConfig::new(self.url(), app_id)
    }

    /// Closes every client connection to the vhost, as an operator would from the UI, once at
    /// least `expected` are listed (the management API lists a new connection only after its
    /// next statistics round, a few seconds); returns how many it closed.
    pub(crate) async fn close_connections(&self, expected: usize) -> usize {
        self.close_connections_named(expected, None).await
    }

    /// Like [`TestBroker::close_connections`], for the connections named `name` only (a
    /// program's `app_id`), once at least `expected` of them are listed.
    pub(crate) async fn close_connections_named(
        &self,
        expected: usize,
        name: Option<&str>,
    ) -> usize {
        let named = |connection: &serde_json::Value| {
            name.is_none_or(|name| connection["client_properties"]["connection_name"] == name)
        };
        let mut listed: Vec<serde_json::Value> = Vec::new();
        for _ in 0..300 {
            listed = api(
                reqwest::Method::GET,
                &format!("/vhosts/{}/connections", self.vhost),
                None,
            )
            .await
            .json()
            .await
            .expect("a JSON list of connections");
            listed.retain(named);
            if listed.len() >= expected {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let mut closed = 0;
        for connection in listed {
            let Some(name) = connection["name"].as_str() else {
                continue;
            };
            let encoded: String = name
                .bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect();
            let response = client()
                .delete(format!("{}/connections/{encoded}", api_base()))
                .basic_auth("guest", Some("guest"))
                .header("X-Reason", "closed by a baton test")
                .send()
                .await
                .expect("the management API answers");
            if response.status().is_success() {
                closed += 1;
            }
        }
        closed
    }

    /// Whether queue `name` exists in the vhost.
    pub(crate) async fn queue_exists(&self, name: &str) -> bool {
        client()
            .get(format!("{}/queues/{}/{name}", api_base(), self.vhost))
            .basic_auth("guest", Some("guest"))
            .send()
            .await
            .is_ok_and(|response| response.status().is_success())
    }

    /// The management API's description of queue `name` in the vhost.
    pub(crate) async fn queue_info(&self, name: &str) -> serde_json::Value {
        api(
            reqwest::Method::GET,
            &format!("/queues/{}/{name}", self.vhost),
            None,
        )
        .await
        .json()
        .await
        .expect("a JSON queue description")
    }
}

/// Deletes `path` through the management API from a thread of its own, so that it works from
/// `Drop` inside a runtime; answers whether it was deleted.
pub(crate) fn delete_blocking(path: String) -> bool {
    let deleted = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime to call the management API");
        runtime.block_on(async move {
            client()
                .delete(format!("{}{path}", api_base()))
                .basic_auth("guest", Some("guest"))
                .send()
                .await
                .map(|response| response.status().is_success())
                .unwrap_or(false)
        })
    })
    .join();
    matches!(deleted, Ok(true))
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if !delete_blocking(format!("/vhosts/{}", self.vhost)) {
            eprintln!("warning: could not delete test vhost {}", self.vhost);
        }
    }
}

/// A RabbitMQ user of a test, with every permission on its vhost, deleted on drop (users live
/// outside vhosts, so deleting the vhost leaves them). Drop the connections made as it first.
pub(crate) struct BrokerUser {
    name: String,
    password: String,
    vhost: String,
}

impl TestBroker {
    /// Makes RabbitMQ user `name` (with a random password) that may configure, write and read
    /// everything in the vhost.
    pub(crate) async fn user(&self, name: &str) -> BrokerUser {
        let password = uuid::Uuid::new_v4().simple().to_string();
        api(
            reqwest::Method::PUT,
            &format!("/users/{name}"),
            Some(serde_json::json!({"password": password, "tags": ""})),
        )
        .await;
        api(
            reqwest::Method::PUT,
            &format!("/permissions/{}/{name}", self.vhost),
            Some(serde_json::json!({"configure": ".*", "write": ".*", "read": ".*"})),
        )
        .await;
        BrokerUser {
            name: name.to_owned(),
            password,
            vhost: self.vhost.clone(),
        }
    }
}

impl BrokerUser {
    /// The user's name, which RabbitMQ stamps on its messages as `user_id`.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// A broker configuration connecting to the vhost as this user, sending as `app_id`.
    pub(crate) fn config(&self, app_id: &str) -> BrokerConfig {
        let base = amqp_base();
        let host = base
            .rsplit_once('@')
            .map_or_else(|| base.trim_start_matches("amqp://"), |(_, host)| host);
        let url = format!(
            "amqp://{}:{}@{host}/{}",
            self.name, self.password, self.vhost
        );
        BrokerConfig::new(url, app_id)
    }
}

impl Drop for BrokerUser {
    fn drop(&mut self) {
        if !delete_blocking(format!("/users/{}", self.name)) {
            eprintln!("warning: could not delete RabbitMQ user {}", self.name);
        }
    }
}
