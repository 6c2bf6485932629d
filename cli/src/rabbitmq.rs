//! `baton rabbitmq setup`: one RabbitMQ user per principal, each with only the permissions its
//! part needs, through RabbitMQ's management API.
//!
//! - The **dispatcher** (and its HTTP API, which publishes as the same user) owns the topology:
//!   it configures, reads and writes every `baton.*` resource, and writes to `amq.default` to
//!   answer on RabbitMQ's direct reply-to.
//! - A **producer** may only publish to `baton.submit`; it configures and reads nothing (its
//!   answers come on direct reply-to, which needs no permission). Without `amq.default` it
//!   cannot publish straight into a task queue.
//! - A **worker** connects as a user named like its worker id. It may declare and consume the
//!   task queues and its own control queue `baton.worker.<user>`, bind them, and publish to
//!   `baton.events` only under routing keys of tasks, builds and its own `worker.<user>.*`
//!   (a topic permission); it cannot publish to `baton.tasks`, `baton.control` or
//!   `baton.submit`. (It may write to `baton.dead`: RabbitMQ requires that of whoever
//!   declares a queue dead-lettering there, and the task queues do.)
//!
//! Every message baton sends carries `user_id`, which RabbitMQ checks against the connection's
//! user, and the dispatcher authorizes each message as the baton user of that name; so each
//! RabbitMQ user made here should have a baton user of the same identifier (`baton users
//! create`) with the matching role. No user made here gets a management tag.

use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::json;

/// What a RabbitMQ user is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Part {
    /// The dispatcher and its HTTP API.
    Dispatcher,
    /// A service that submits plans and registers assets.
    Producer,
    /// A worker host; the user's name is the worker's id.
    Worker,
}

/// The permissions of one principal on a vhost: RabbitMQ's configure, write and read
/// regular expressions, and the topic permission on `baton.events` (write, read), if any.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Permissions {
    /// Resources it may declare and delete.
    pub configure: String,
    /// Resources it may publish to (exchanges) or bind to (queues).
    pub write: String,
    /// Resources it may consume from (queues) or bind from (exchanges).
    pub read: String,
    /// Routing keys it may publish to `baton.events` with, and read them with.
    pub events_topic: Option<(String, String)>,
}

/// The permissions of `part` for user `user`. `user` is escaped, so any name is taken
/// literally.
pub fn permissions(part: Part, user: &str) -> Permissions {
    let user = regex_escape(user);
    match part {
        Part::Dispatcher => Permissions {
            configure: r"^baton\..*$".into(),
            write: r"^(baton\..*|amq\.default)$".into(),
            read: r"^baton\..*$".into(),
            events_topic: None,
        },
        Part::Producer => Permissions {
            configure: "^$".into(),
            write: r"^baton\.submit$".into(),
            read: "^$".into(),
            events_topic: None,
        },
        Part::Worker => Permissions {
            configure: format!(r"^baton\.(tasks\..+|worker\.{user})$"),
            // `baton.dead`: declaring a queue that dead-letters there needs it.
            write: format!(r"^baton\.(events|dead|tasks\..+|worker\.{user})$"),
            read: format!(r"^baton\.(tasks|tasks\..+|control|worker\.{user})$"),
            events_topic: Some((
                format!(r"^(task|function)\.[^.]+\.[a-z_]+$|^worker\.{user}\.[a-z_]+$"),
                "^$".into(),
            )),
        },
    }
}

/// Escapes the characters a regular expression gives a meaning to.
fn regex_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// RabbitMQ's management API, with an administrator's credentials.
#[derive(Clone, Debug)]
pub struct ManagementApi {
    /// Its base URL, e.g. `http://127.0.0.1:15672/api`.
    pub url: String,
    /// An administrator's user name.
    pub user: String,
    /// Its password.
    pub password: String,
}

/// One principal to set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// Its part.
    pub part: Part,
    /// The RabbitMQ (and baton) user name.
    pub user: String,
}

/// What `setup` did for one principal.
#[derive(Clone, Debug, Serialize)]
pub struct SetUp {
    /// The user.
    pub user: String,
    /// Its part.
    pub part: Part,
    /// The password of a user made now (or whose password was reset), shown this once; none
    /// for a user that existed, whose password is kept.
    pub password: Option<String>,
    /// The permissions it now has on the vhost.
    pub permissions: Permissions,
}

/// `segment` percent-encoded for a URL path (the default vhost `/` is `%2F`).
fn encode(segment: &str) -> String {
    let mut encoded = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

impl ManagementApi {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<reqwest::Response> {
        let mut request = reqwest::Client::new()
            .request(method.clone(), format!("{}{path}", self.url))
            .basic_auth(&self.user, Some(&self.password));
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.with_context(|| {
            format!(
                "reaching RabbitMQ's management API at {} (is the rabbitmq_management plugin on?)",
                self.url
            )
        })
    }

    async fn put(&self, path: &str, body: serde_json::Value) -> anyhow::Result<()> {
        let response = self.call(reqwest::Method::PUT, path, Some(body)).await?;
        if !response.status().is_success() {
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            bail!("management API PUT {path}: {status}: {text}");
        }
        Ok(())
    }

    async fn exists(&self, path: &str) -> anyhow::Result<bool> {
        let response = self.call(reqwest::Method::GET, path, None).await?;
        match response.status() {
            status if status.is_success() => Ok(true),
            reqwest::StatusCode::NOT_FOUND => Ok(false),
            status => bail!("management API GET {path}: {status}"),
        }
    }
}

fn new_password() -> anyhow::Result<String> {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes)
        .map_err(|error| anyhow::anyhow!("the system's random number generator failed: {error}"))?;
    Ok(hex::encode(bytes))
}

/// Makes `vhost` if missing, then each principal's user (with a fresh password, unless it
/// exists and `reset_passwords` is false) and its permissions on `vhost`. Idempotent: running
/// it again changes only what differs.
pub async fn setup(
    api: &ManagementApi,
    vhost: &str,
    principals: &[Principal],
    reset_passwords: bool,
) -> anyhow::Result<Vec<SetUp>> {
    let vhost_path = encode(vhost);
    if !api.exists(&format!("/vhosts/{vhost_path}")).await? {
        api.put(&format!("/vhosts/{vhost_path}"), json!({})).await?;
    }
    let mut done = Vec::new();
    for principal in principals {
        if principal.user.is_empty() || principal.user.len() > 255 {
            bail!("{:?} is not a RabbitMQ user name", principal.user);
        }
        let user_path = encode(&principal.user);
        let exists = api.exists(&format!("/users/{user_path}")).await?;
        let password = if exists && !reset_passwords {
            None
        } else {
            let password = new_password()?;
            api.put(
                &format!("/users/{user_path}"),
                json!({"password": password, "tags": ""}),
            )
            .await?;
            Some(password)
        };
        let permissions = permissions(principal.part, &principal.user);
        api.put(
            &format!("/permissions/{vhost_path}/{user_path}"),
            json!({
                "configure": permissions.configure,
                "write": permissions.write,
                "read": permissions.read,
            }),
        )
        .await?;
        if let Some((write, read)) = &permissions.events_topic {
            api.put(
                &format!("/topic-permissions/{vhost_path}/{user_path}"),
                json!({
                    "exchange": broker::topology::EVENTS_EXCHANGE,
                    "write": write,
                    "read": read,
                }),
            )
            .await?;
        }
        done.push(SetUp {
            user: principal.user.clone(),
            part: principal.part,
            password,
            permissions,
        });
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_are_taken_literally() {
        assert_eq!(regex_escape("a.b+c"), r"a\.b\+c");
        let worker = permissions(Part::Worker, ".*");
        assert!(worker.configure.contains(r"worker\.\.\*"));
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(encode("/"), "%2F");
        assert_eq!(encode("baton-test_1.x~"), "baton-test_1.x~");
        assert_eq!(encode("a b"), "a%20b");
    }
}
