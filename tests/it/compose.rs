//! compose.yaml, the Dockerfile and .dockerignore, checked without Docker: the services, their
//! volumes, ports, healthchecks and start order are as designed, and every subcommand, flag and
//! `BATON_*` variable they give `baton` is one the `baton` command reads (found in its clap
//! definition, then parsed by it).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{CommandFactory, Parser};
use yaml_serde::Value;

/// The services compose.yaml runs.
const SERVICES: [&str; 5] = ["rabbitmq", "postgres", "setup", "dispatcher", "worker"];

/// The services that run the image the Dockerfile builds, with the subcommand each runs.
const BATON_SERVICES: [(&str, &str); 3] = [
    ("setup", "migrate"),
    ("dispatcher", "dispatcher"),
    ("worker", "worker"),
];

/// The workspace's root directory.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

/// A file of the workspace, whole.
fn read(name: &str) -> String {
    let path = workspace_root().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// compose.yaml

/// compose.yaml as Compose reads it when no variable is set.
struct Compose {
    /// The document, with merge keys (`<<`) applied and every `${VAR:-default}` replaced by its
    /// default.
    doc: Value,
    /// The variables it interpolates.
    variables: BTreeSet<String>,
}

impl Compose {
    /// Reads and parses compose.yaml.
    fn load() -> Self {
        let mut doc: Value = yaml_serde::from_str(&read("compose.yaml"))
            .unwrap_or_else(|error| panic!("compose.yaml is not YAML: {error}"));
        doc.apply_merge()
            .unwrap_or_else(|error| panic!("compose.yaml's merge keys: {error}"));
        let mut variables = BTreeSet::new();
        interpolate_strings(&mut doc, &mut variables);
        Self { doc, variables }
    }

    /// A service's definition.
    fn service(&self, name: &str) -> &Value {
        self.doc["services"]
            .get(name)
            .unwrap_or_else(|| panic!("compose.yaml has no service {name}"))
    }

    /// The names of the services.
    fn service_names(&self) -> BTreeSet<String> {
        mapping_keys(&self.doc["services"])
    }

    /// The environment of a service.
    fn environment(&self, service: &str) -> BTreeMap<String, String> {
        environment(self.service(service))
    }

    /// One variable of a service's environment.
    fn env(&self, service: &str, name: &str) -> String {
        self.environment(service)
            .remove(name)
            .unwrap_or_else(|| panic!("service {service} does not set {name}"))
    }

    /// The value that follows `flag` in a service's command.
    fn flag_value(&self, service: &str, flag: &str) -> String {
        let command = command(self.service(service));
        let at = command
            .iter()
            .position(|arg| arg == flag)
            .unwrap_or_else(|| panic!("{service}'s command {command:?} has no {flag}"));
        command
            .get(at + 1)
            .unwrap_or_else(|| panic!("{service}'s command ends at {flag}"))
            .clone()
    }

    /// The socket address the dispatcher's HTTP API listens on.
    fn dispatcher_addr(&self) -> SocketAddr {
        let addr = self.env("dispatcher", "BATON_HTTP_ADDR");
        addr.parse()
            .unwrap_or_else(|error| panic!("BATON_HTTP_ADDR {addr:?}: {error}"))
    }
}

/// Replaces every string of `value` by its interpolation, collecting the variables named.
fn interpolate_strings(value: &mut Value, variables: &mut BTreeSet<String>) {
    match value {
        Value::String(text) => {
            *text = interpolate(text, variables).unwrap_or_else(|problem| panic!("{problem}"));
        }
        Value::Sequence(items) => {
            for item in items {
                interpolate_strings(item, variables);
            }
        }
        Value::Mapping(mapping) => {
            for (_, item) in mapping.iter_mut() {
                interpolate_strings(item, variables);
            }
        }
        Value::Tagged(tagged) => interpolate_strings(&mut tagged.value, variables),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// Interpolates `text` as Compose does when no variable is set: `$$` is a `$`, and
/// `${NAME:-default}` and `${NAME-default}` are their default. `$NAME`, `${NAME}` and
/// `${NAME:?message}` have none, which is refused: the file must work with no variable set.
fn interpolate(text: &str, variables: &mut BTreeSet<String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
            continue;
        }
        let Some(braced) = after.strip_prefix('{') else {
            return Err(format!(
                "compose.yaml: {text:?} names a variable without a default"
            ));
        };
        let end = braced
            .find('}')
            .ok_or_else(|| format!("compose.yaml: {text:?} has an unclosed ${{"))?;
        let inner = &braced[..end];
        let name_end = inner
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(inner.len());
        let (name, modifier) = inner.split_at(name_end);
        variables.insert(name.to_owned());
        let default = modifier
            .strip_prefix(":-")
            .or_else(|| modifier.strip_prefix('-'))
            .ok_or_else(|| format!("compose.yaml: ${{{inner}}} in {text:?} has no default"))?;
        out.push_str(default);
        rest = &braced[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The keys of a mapping (none for anything else).
fn mapping_keys(value: &Value) -> BTreeSet<String> {
    value
        .as_mapping()
        .map(|mapping| {
            mapping
                .keys()
                .map(|key| scalar(key).expect("a string key"))
                .collect()
        })
        .unwrap_or_default()
}

/// A scalar as Compose reads it: strings, numbers and booleans as text.
fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

/// A service's `environment`, as a mapping or a list of `NAME=value`.
fn environment(service: &Value) -> BTreeMap<String, String> {
    match service.get("environment") {
        None => BTreeMap::new(),
        Some(Value::Mapping(mapping)) => mapping
            .iter()
            .map(|(key, value)| {
                let key = scalar(key).expect("a variable name");
                let value = scalar(value).unwrap_or_else(|| {
                    panic!("{key} has no value: it would be taken from the host")
                });
                (key, value)
            })
            .collect(),
        Some(Value::Sequence(items)) => items
            .iter()
            .map(|item| {
                let item = scalar(item).expect("NAME=value");
                let (key, value) = item
                    .split_once('=')
                    .unwrap_or_else(|| panic!("{item} has no value"));
                (key.to_owned(), value.to_owned())
            })
            .collect(),
        Some(other) => panic!("environment is neither a mapping nor a list: {other:?}"),
    }
}

/// A service's `command`, as a list or a string split on whitespace.
fn command(service: &Value) -> Vec<String> {
    match service.get("command") {
        None => Vec::new(),
        Some(Value::Sequence(items)) => items
            .iter()
            .map(|item| scalar(item).expect("a command word"))
            .collect(),
        Some(Value::String(line)) => line.split_whitespace().map(str::to_owned).collect(),
        Some(other) => panic!("command is neither a list nor a string: {other:?}"),
    }
}

/// A port a service publishes (or only declares, without `published`).
#[derive(Debug, PartialEq, Eq)]
struct Port {
    /// The host address it is bound to.
    host_ip: Option<String>,
    /// The host port.
    published: Option<String>,
    /// The container port.
    target: u16,
}

/// A service's `ports`, in the short (`[ip:][host:]container[/proto]`) or the long syntax.
fn ports(service: &Value) -> Vec<Port> {
    let Some(items) = service.get("ports") else {
        return Vec::new();
    };
    let items = items.as_sequence().expect("ports is a list");
    items
        .iter()
        .map(|item| {
            if let Some(text) = scalar(item) {
                let spec = text.split('/').next().unwrap_or_default();
                let parts: Vec<&str> = spec.rsplitn(3, ':').collect();
                let target = parts[0]
                    .parse()
                    .unwrap_or_else(|error| panic!("port {text:?}: {error}"));
                Port {
                    host_ip: parts.get(2).map(|ip| (*ip).to_owned()),
                    published: parts.get(1).map(|port| (*port).to_owned()),
                    target,
                }
            } else {
                let target = scalar(&item["target"])
                    .and_then(|port| port.parse().ok())
                    .unwrap_or_else(|| panic!("port {item:?} has no target"));
                Port {
                    host_ip: item.get("host_ip").and_then(scalar),
                    published: item.get("published").and_then(scalar),
                    target,
                }
            }
        })
        .collect()
}

/// A volume or bind mount of a service.
#[derive(Debug)]
struct Mount {
    /// A named volume's name, a host path, or none for an anonymous volume.
    source: Option<String>,
    /// Where it is mounted in the container.
    target: String,
}

impl Mount {
    /// The named volume it mounts, if it is one.
    fn volume(&self) -> Option<&str> {
        self.source
            .as_deref()
            .filter(|source| !source.starts_with(['/', '.', '~']))
    }
}

/// A service's `volumes`, in the short (`[source:]target[:mode]`) or the long syntax.
fn mounts(service: &Value) -> Vec<Mount> {
    let Some(items) = service.get("volumes") else {
        return Vec::new();
    };
    let items = items.as_sequence().expect("volumes is a list");
    items
        .iter()
        .map(|item| {
            if let Some(text) = scalar(item) {
                let parts: Vec<&str> = text.split(':').collect();
                match parts.as_slice() {
                    [target] => Mount {
                        source: None,
                        target: (*target).to_owned(),
                    },
                    [source, target, ..] => Mount {
                        source: Some((*source).to_owned()),
                        target: (*target).to_owned(),
                    },
                    [] => unreachable!("split yields at least one part"),
                }
            } else {
                Mount {
                    source: item.get("source").and_then(scalar),
                    target: scalar(&item["target"])
                        .unwrap_or_else(|| panic!("mount {item:?} has no target")),
                }
            }
        })
        .collect()
}

/// A service's `depends_on`: each service it waits for, with the condition.
fn depends_on(service: &Value) -> BTreeMap<String, String> {
    match service.get("depends_on") {
        None => BTreeMap::new(),
        Some(Value::Sequence(items)) => items
            .iter()
            .map(|item| {
                (
                    scalar(item).expect("a service name"),
                    "service_started".to_owned(),
                )
            })
            .collect(),
        Some(Value::Mapping(mapping)) => mapping
            .iter()
            .map(|(name, condition)| {
                (
                    scalar(name).expect("a service name"),
                    condition
                        .get("condition")
                        .and_then(scalar)
                        .unwrap_or_else(|| "service_started".to_owned()),
                )
            })
            .collect(),
        Some(other) => panic!("depends_on is neither a list nor a mapping: {other:?}"),
    }
}

/// The command of a service's healthcheck, without its leading `CMD` (none when it has no
/// healthcheck or it is disabled).
fn healthcheck(service: &Value) -> Option<Vec<String>> {
    let check = service.get("healthcheck")?;
    if check.get("disable").and_then(Value::as_bool) == Some(true) {
        return None;
    }
    match check.get("test")? {
        Value::Sequence(items) => {
            let words: Vec<String> = items
                .iter()
                .map(|item| scalar(item).expect("a word"))
                .collect();
            match words.split_first() {
                Some((first, rest)) if first == "CMD" => Some(rest.to_vec()),
                Some((first, rest)) if first == "CMD-SHELL" => Some(
                    rest.join(" ")
                        .split_whitespace()
                        .map(str::to_owned)
                        .collect(),
                ),
                _ => None,
            }
        }
        Value::String(line) => Some(line.split_whitespace().map(str::to_owned).collect()),
        _ => None,
    }
}

/// A Compose duration (`75s`, `1m30s`, `500ms`, `1h`).
fn duration(text: &str) -> Duration {
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(digits);
        let number: u64 = number
            .parse()
            .unwrap_or_else(|error| panic!("duration {text:?}: {error}"));
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        total += match unit {
            "h" => Duration::from_secs(number * 3600),
            "m" => Duration::from_secs(number * 60),
            "s" => Duration::from_secs(number),
            "ms" => Duration::from_millis(number),
            _ => panic!("duration {text:?}: unknown unit {unit:?}"),
        };
        rest = tail;
    }
    total
}

/// A URL, read with its password and path as written.
fn url(text: &str) -> reqwest::Url {
    reqwest::Url::parse(text).unwrap_or_else(|error| panic!("{text:?} is not a URL: {error}"))
}

// ---------------------------------------------------------------------------------------------
// The `baton` command

/// The arguments a command line may use once it has reached the end of `path` (`baton`, then
/// each subcommand): the last command's own, and every global one of the commands above it.
fn arguments<'a>(path: &[&'a clap::Command]) -> Vec<&'a clap::Arg> {
    let (last, above) = path.split_last().expect("at least `baton`");
    let mut args: Vec<&clap::Arg> = above
        .iter()
        .flat_map(|command| command.get_arguments())
        .filter(|arg| arg.is_global_set())
        .collect();
    args.extend(last.get_arguments());
    args
}

/// The commands a command line runs, from `baton` down: `words` is what follows `baton`.
fn subcommand_path<'a>(root: &'a clap::Command, words: &[String]) -> Vec<&'a clap::Command> {
    let mut path = vec![root];
    for word in words {
        if word.starts_with('-') {
            break;
        }
        let current = path.last().expect("at least `baton`");
        match current.find_subcommand(word) {
            Some(sub) => path.push(sub),
            None => break,
        }
    }
    path
}

/// Every argument of every `baton` command, at any depth.
fn all_arguments(command: &clap::Command) -> Vec<&clap::Arg> {
    let mut args: Vec<&clap::Arg> = command.get_arguments().collect();
    for sub in command.get_subcommands() {
        args.extend(all_arguments(sub));
    }
    args
}

/// The environment variable an argument reads, as text.
fn env_name(arg: &clap::Arg) -> Option<String> {
    arg.get_env()
        .map(|name| name.to_string_lossy().into_owned())
}

// ---------------------------------------------------------------------------------------------
// Dockerfile

/// One instruction of the Dockerfile.
#[derive(Debug)]
struct Instruction {
    /// Its build stage: 0 from the first `FROM` on.
    stage: usize,
    /// `FROM`, `RUN`, … in capitals.
    keyword: String,
    /// The rest, continuation lines joined.
    arguments: String,
}

impl Instruction {
    /// The arguments, split on whitespace.
    fn words(&self) -> Vec<&str> {
        self.arguments.split_whitespace().collect()
    }
}

/// The Dockerfile's instructions, comments and blank lines left out.
fn dockerfile() -> Vec<Instruction> {
    let mut instructions = Vec::new();
    let mut current = String::new();
    let mut stage = None::<usize>;
    for line in read("Dockerfile").lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(body) = line.strip_suffix('\\') {
            current.push_str(body);
            current.push(' ');
            continue;
        }
        current.push_str(line);
        let (keyword, arguments) = current
            .split_once(char::is_whitespace)
            .unwrap_or((current.as_str(), ""));
        let keyword = keyword.to_ascii_uppercase();
        if keyword == "FROM" {
            stage = Some(stage.map_or(0, |stage| stage + 1));
        }
        instructions.push(Instruction {
            stage: stage.expect("the Dockerfile starts with FROM"),
            keyword,
            arguments: arguments.trim().to_owned(),
        });
        current.clear();
    }
    assert!(
        current.is_empty(),
        "the Dockerfile ends inside a continuation"
    );
    instructions
}

/// The instructions of one stage with one keyword.
fn of<'a>(
    instructions: &'a [Instruction],
    stage: usize,
    keyword: &'a str,
) -> impl Iterator<Item = &'a Instruction> + 'a {
    instructions
        .iter()
        .filter(move |instruction| instruction.stage == stage && instruction.keyword == keyword)
}

/// The image a `FROM` starts from, split at its tag, and the stage's name.
fn from_image(from: &Instruction) -> (String, String, Option<String>) {
    let words: Vec<&str> = from
        .words()
        .into_iter()
        .filter(|word| !word.starts_with("--"))
        .collect();
    let (name, tag) = words[0]
        .split_once(':')
        .unwrap_or_else(|| panic!("FROM {} has no tag", from.arguments));
    let alias = match words.as_slice() {
        [_, keyword, alias] if keyword.eq_ignore_ascii_case("as") => Some((*alias).to_owned()),
        _ => None,
    };
    (name.to_owned(), tag.to_owned(), alias)
}

/// The workspace's `rust-version` (Cargo.toml).
fn rust_version() -> String {
    read("Cargo.toml")
        .lines()
        .find_map(|line| {
            let value = line
                .strip_prefix("rust-version")?
                .trim()
                .strip_prefix('=')?;
            Some(value.trim().trim_matches('"').to_owned())
        })
        .expect("Cargo.toml sets rust-version")
}

/// The workspace's members (Cargo.toml).
fn workspace_members() -> Vec<String> {
    let manifest = read("Cargo.toml");
    let line = manifest
        .lines()
        .find(|line| line.trim_start().starts_with("members"))
        .expect("Cargo.toml lists the workspace's members");
    line.split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The checks

#[test]
fn the_five_services_and_their_named_volumes() {
    let compose = Compose::load();
    let expected: BTreeSet<String> = SERVICES.iter().map(|name| (*name).to_owned()).collect();
    assert_eq!(compose.service_names(), expected);

    // The image the Dockerfile builds runs the baton services, and only them.
    let built: BTreeSet<String> = SERVICES
        .iter()
        .filter(|name| compose.service(name).get("build").is_some())
        .map(|name| (*name).to_owned())
        .collect();
    let baton: BTreeSet<String> = BATON_SERVICES
        .iter()
        .map(|(name, _)| (*name).to_owned())
        .collect();
    assert_eq!(built, baton, "the services built from the Dockerfile");
    let images: BTreeSet<Option<String>> = BATON_SERVICES
        .iter()
        .map(|(name, _)| compose.service(name).get("image").and_then(scalar))
        .collect();
    assert_eq!(
        images.len(),
        1,
        "the baton services share one image: {images:?}"
    );
    assert!(images.iter().all(Option::is_some), "and name it");
    let postgres_image = scalar(&compose.service("postgres")["image"]).unwrap();
    assert!(
        postgres_image.starts_with("postgres:"),
        "PostgreSQL's official image: {postgres_image}"
    );

    // Every named volume is declared at the top level; the data ones are there.
    let declared = mapping_keys(&compose.doc["volumes"]);
    for name in SERVICES {
        for mount in mounts(compose.service(name)) {
            if let Some(volume) = mount.volume() {
                assert!(
                    declared.contains(volume),
                    "{name} mounts {volume}, which compose.yaml does not declare"
                );
            }
        }
    }
    let mounted = |service: &str, volume: &str, target: &str| {
        let mounts = mounts(compose.service(service));
        assert!(
            mounts
                .iter()
                .any(|mount| mount.volume() == Some(volume) && mount.target == target),
            "{service} mounts the named volume {volume} at {target}: {mounts:?}"
        );
    };
    mounted("postgres", "postgres-data", "/var/lib/postgresql/data");
    // RabbitMQ holds the published ready tasks: they must outlive its container.
    mounted("rabbitmq", "rabbitmq-data", "/var/lib/rabbitmq");
    assert_eq!(
        compose.service("rabbitmq").get("hostname").and_then(scalar),
        Some("rabbitmq".to_owned()),
        "RabbitMQ's data directory is named after its host name, which must not change"
    );
    // The artifact store is shared: the workers upload to it, the API serves from it.
    for service in ["dispatcher", "worker"] {
        mounted(
            service,
            "artifacts",
            &compose.env(service, "BATON_ARTIFACTS"),
        );
    }
    // The administrator's token lands on a volume.
    let token_file = compose.flag_value("setup", "--admin-token-file");
    let token_dir = Path::new(&token_file)
        .parent()
        .expect("a file in a directory");
    mounted("setup", "baton-secrets", &token_dir.display().to_string());
}

#[test]
fn rabbitmq_has_its_management_ui_and_publishes_both_ports_on_loopback() {
    let compose = Compose::load();
    let rabbitmq = compose.service("rabbitmq");
    let image = scalar(&rabbitmq["image"]).unwrap();
    assert!(
        image.starts_with("rabbitmq:") && image.ends_with("-management"),
        "the official image with the management plugin: {image}"
    );
    let published = ports(rabbitmq);
    for port in [5672, 15672] {
        let expected = Port {
            host_ip: Some("127.0.0.1".to_owned()),
            published: Some(port.to_string()),
            target: port,
        };
        assert!(
            published.contains(&expected),
            "RabbitMQ publishes {port} on 127.0.0.1: {published:?}"
        );
    }
    let env = compose.environment("rabbitmq");
    assert_eq!(
        env.get("RABBITMQ_DEFAULT_USER").map(String::as_str),
        Some("baton")
    );
    assert!(env.contains_key("RABBITMQ_DEFAULT_PASS"));
}

#[test]
fn healthchecks_and_start_order_are_as_designed() {
    let compose = Compose::load();
    let expected: BTreeMap<&str, Vec<(&str, &str)>> = BTreeMap::from([
        ("rabbitmq", vec![]),
        ("postgres", vec![]),
        ("setup", vec![("postgres", "service_healthy")]),
        (
            "dispatcher",
            vec![
                ("postgres", "service_healthy"),
                ("rabbitmq", "service_healthy"),
                ("setup", "service_completed_successfully"),
            ],
        ),
        ("worker", vec![("dispatcher", "service_healthy")]),
    ]);
    for (service, waits_for) in expected {
        let waits_for: BTreeMap<String, String> = waits_for
            .into_iter()
            .map(|(name, condition)| (name.to_owned(), condition.to_owned()))
            .collect();
        assert_eq!(
            depends_on(compose.service(service)),
            waits_for,
            "what {service} waits for"
        );
    }

    // Whatever a service waits to be healthy has a healthcheck.
    for service in SERVICES {
        for (other, condition) in depends_on(compose.service(service)) {
            if condition == "service_healthy" {
                assert!(
                    healthcheck(compose.service(&other)).is_some(),
                    "{service} waits for {other} to be healthy, which has no healthcheck"
                );
            }
        }
    }
    let rabbitmq = healthcheck(compose.service("rabbitmq")).expect("RabbitMQ's healthcheck");
    assert_eq!(rabbitmq, ["rabbitmq-diagnostics", "-q", "ping"]);

    let postgres = healthcheck(compose.service("postgres")).expect("PostgreSQL's healthcheck");
    assert_eq!(postgres[0], "pg_isready");
    let option = |long: &str, short: &str| {
        postgres
            .windows(2)
            .find(|pair| pair[0] == long || pair[0] == short)
            .map(|pair| pair[1].clone())
    };
    assert_eq!(
        option("--username", "-U"),
        Some(compose.env("postgres", "POSTGRES_USER"))
    );
    assert_eq!(
        option("--dbname", "-d"),
        Some(compose.env("postgres", "POSTGRES_DB"))
    );

    let dispatcher = healthcheck(compose.service("dispatcher")).expect("the dispatcher's");
    assert_eq!(dispatcher[0], "curl");
    assert!(
        dispatcher.iter().any(|word| word.starts_with("--fail")),
        "curl fails on an error status: {dispatcher:?}"
    );
    let health = url(dispatcher.last().unwrap());
    assert_eq!(health.path(), "/healthz", "the public route");
    assert_eq!(health.host_str(), Some("127.0.0.1"));

    // The one-shot setup is not restarted; the others are.
    for service in SERVICES {
        let restart = compose.service(service).get("restart").and_then(scalar);
        let expected = if service == "setup" {
            "no"
        } else {
            "unless-stopped"
        };
        assert_eq!(restart.as_deref(), Some(expected), "{service}'s restart");
    }
}

#[test]
fn baton_services_run_real_subcommands_with_real_flags_and_variables() {
    let compose = Compose::load();
    let root = cli::Cli::command();
    for (service, subcommand) in BATON_SERVICES {
        let definition = compose.service(service);
        assert!(
            definition.get("entrypoint").is_none(),
            "{service} keeps the image's entrypoint, `baton`"
        );
        let words = command(definition);
        let path = subcommand_path(&root, &words);
        let names: Vec<&str> = path[1..].iter().map(|command| command.get_name()).collect();
        assert_eq!(
            names,
            [subcommand],
            "{service} runs `baton {subcommand}`: {words:?}"
        );
        let args = arguments(&path);

        // Every flag of the command is one of the subcommand's (or a global one).
        for word in &words[path.len() - 1..] {
            let Some(flag) = word.strip_prefix("--") else {
                continue;
            };
            let flag = flag.split('=').next().unwrap_or_default();
            assert!(
                args.iter().any(|arg| arg
                    .get_long_and_visible_aliases()
                    .is_some_and(|longs| longs.contains(&flag))),
                "{service}: `baton {subcommand}` has no --{flag}"
            );
        }

        // Every BATON_* variable is one the subcommand (or `baton` itself) reads; passed as
        // its flag, the whole command line parses.
        let readable: BTreeSet<String> = args.iter().filter_map(|arg| env_name(arg)).collect();
        let mut argv: Vec<String> = std::iter::once("baton".to_owned())
            .chain(words.iter().cloned())
            .collect();
        for (name, value) in compose.environment(service) {
            if !name.starts_with("BATON_") {
                continue;
            }
            let arg = args
                .iter()
                .find(|arg| env_name(arg).as_deref() == Some(name.as_str()))
                .unwrap_or_else(|| {
                    panic!(
                        "{service} sets {name}, which `baton {subcommand}` does not read; it \
                         reads {readable:?}"
                    )
                });
            let long = arg
                .get_long()
                .expect("an argument read from a variable has a flag");
            if arg.get_action().takes_values() {
                argv.push(format!("--{long}={value}"));
            } else if ["true", "1", "yes", "on"].contains(&value.to_ascii_lowercase().as_str()) {
                argv.push(format!("--{long}"));
            }
        }
        if let Err(error) = cli::Cli::try_parse_from(&argv) {
            panic!("{service}: `{}` does not parse: {error}", argv.join(" "));
        }
    }
}

#[test]
fn urls_name_the_compose_services_and_their_credentials() {
    let compose = Compose::load();
    let services = compose.service_names();
    let rabbitmq = compose.environment("rabbitmq");
    let postgres = compose.environment("postgres");
    let admin = compose.flag_value("setup", "--admin");
    let organization = compose.flag_value("setup", "--admin-organization");
    let mut seen = BTreeSet::new();
    for (service, _) in BATON_SERVICES {
        for (name, value) in compose.environment(service) {
            let Ok(parsed) = reqwest::Url::parse(&value) else {
                continue;
            };
            let Some(host) = parsed.host_str() else {
                continue;
            };
            assert!(
                services.contains(host),
                "{service}'s {name} points at {host}, which is not a compose service"
            );
            seen.insert(parsed.scheme().to_owned());
            match parsed.scheme() {
                "amqp" | "amqps" => {
                    assert_eq!(host, "rabbitmq", "{service}'s {name}");
                    let targets: Vec<u16> = ports(compose.service("rabbitmq"))
                        .iter()
                        .map(|port| port.target)
                        .collect();
                    let port = parsed.port().unwrap_or(5672);
                    assert!(targets.contains(&port), "RabbitMQ listens on {port}");
                    assert_eq!(parsed.username(), rabbitmq["RABBITMQ_DEFAULT_USER"]);
                    assert_eq!(
                        parsed.password(),
                        Some(rabbitmq["RABBITMQ_DEFAULT_PASS"].as_str())
                    );
                    assert_eq!(parsed.path(), "/%2f", "RabbitMQ's default vhost, `/`");
                    // A worker's owner is the RabbitMQ user it connects as: the administrator
                    // setup makes, of the organization the services act for.
                    assert_eq!(parsed.username(), admin, "{service}'s {name}");
                }
                "postgres" | "postgresql" => {
                    assert_eq!(host, "postgres", "{service}'s {name}");
                    assert_eq!(parsed.port().unwrap_or(5432), 5432);
                    assert_eq!(parsed.username(), postgres["POSTGRES_USER"]);
                    assert_eq!(
                        parsed.password(),
                        Some(postgres["POSTGRES_PASSWORD"].as_str())
                    );
                    assert_eq!(parsed.path(), format!("/{}", postgres["POSTGRES_DB"]));
                }
                other => panic!("{service}'s {name}: an unexpected {other} URL"),
            }
        }
        if let Some(acting_for) = compose.environment(service).get("BATON_ORGANIZATION") {
            assert_eq!(acting_for, &organization, "{service}'s BATON_ORGANIZATION");
        }
    }
    assert_eq!(
        seen,
        BTreeSet::from(["amqp".to_owned(), "postgres".to_owned()]),
        "the baton services reach RabbitMQ and PostgreSQL by URL"
    );
}

#[test]
fn the_dispatcher_listens_where_it_is_published_checked_and_exposed() {
    let compose = Compose::load();
    let addr = compose.dispatcher_addr();
    assert!(
        addr.ip().is_unspecified(),
        "the API listens on every interface of its container, or the published port reaches \
         nothing: {addr}"
    );
    let published = ports(compose.service("dispatcher"));
    assert_eq!(
        published,
        [Port {
            host_ip: Some("127.0.0.1".to_owned()),
            published: Some(addr.port().to_string()),
            target: addr.port(),
        }],
        "the dispatcher publishes its API's port on 127.0.0.1"
    );
    let check = healthcheck(compose.service("dispatcher")).expect("the dispatcher's");
    assert_eq!(url(check.last().unwrap()).port(), Some(addr.port()));
    let instructions = dockerfile();
    let last = instructions.last().expect("instructions").stage;
    let exposed: Vec<String> = of(&instructions, last, "EXPOSE")
        .flat_map(|expose| expose.words())
        .map(|port| port.split('/').next().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(exposed, [addr.port().to_string()], "the image's EXPOSE");
}

#[test]
fn workers_scale() {
    let compose = Compose::load();
    let worker = compose.service("worker");
    for fixed in ["container_name", "hostname"] {
        assert!(
            worker.get(fixed).is_none(),
            "a worker's {fixed} would be every replica's"
        );
    }
    let fixed_ports: Vec<Port> = ports(worker)
        .into_iter()
        .filter(|port| port.published.is_some())
        .collect();
    assert!(
        fixed_ports.is_empty(),
        "replicas cannot share a host port: {fixed_ports:?}"
    );
    let env = compose.environment("worker");
    assert!(
        !env.contains_key("BATON_WORKER_ID"),
        "each replica is registered under its own host name"
    );
    let replicas = worker["deploy"]["replicas"]
        .as_u64()
        .expect("deploy.replicas");
    assert!(replicas >= 2, "several workers by default: {replicas}");

    // Docker waits longer than the worker lets running tasks finish.
    let root = cli::Cli::command();
    let shutdown_secs = root
        .find_subcommand("worker")
        .expect("baton worker")
        .get_arguments()
        .find(|arg| env_name(arg).as_deref() == Some("BATON_SHUTDOWN_SECS"))
        .expect("baton worker reads BATON_SHUTDOWN_SECS");
    let shutdown = env.get("BATON_SHUTDOWN_SECS").cloned().unwrap_or_else(|| {
        shutdown_secs.get_default_values()[0]
            .to_string_lossy()
            .into_owned()
    });
    let shutdown = Duration::from_secs(shutdown.parse().expect("seconds"));
    let grace = worker
        .get("stop_grace_period")
        .and_then(scalar)
        .map_or(Duration::from_secs(10), |text| duration(&text));
    assert!(
        grace > shutdown,
        "stop_grace_period {grace:?} leaves BATON_SHUTDOWN_SECS {shutdown:?} no time"
    );
    // Workspaces are written where the image's user may write.
    assert!(env.contains_key("BATON_WORK_DIR"));
    assert!(env.contains_key("BATON_WORKER_PROPERTIES"));
}

#[test]
fn variables_have_defaults_and_are_not_baton_settings() {
    // Loading interpolates every variable with its default, or fails.
    let compose = Compose::load();
    assert!(
        compose.variables.contains("BATON_RABBITMQ_PASSWORD")
            && compose.variables.contains("BATON_POSTGRES_PASSWORD"),
        "the passwords can be set: {:?}",
        compose.variables
    );
    let root = cli::Cli::command();
    let settings: BTreeSet<String> = all_arguments(&root)
        .into_iter()
        .filter_map(env_name)
        .collect();
    for variable in &compose.variables {
        assert!(
            !settings.contains(variable),
            "compose.yaml interpolates {variable}, which `baton` reads too: set in the shell \
             for Compose, it would also change any `baton` run there"
        );
    }
}

#[test]
fn the_dockerfile_builds_locked_and_runs_baton_as_its_own_user() {
    let instructions = dockerfile();
    let last = instructions.last().expect("instructions").stage;
    assert!(last >= 1, "a build stage and a runtime stage");

    // Built with the workspace's toolchain, on the runtime's Debian release.
    let build_from = of(&instructions, 0, "FROM").next().expect("FROM");
    let (build_image, build_tag, build_alias) = from_image(build_from);
    assert_eq!(build_image, "rust", "the official Rust image");
    let version = rust_version();
    let codename = build_tag
        .strip_prefix(&format!("{version}-"))
        .unwrap_or_else(|| panic!("rust:{build_tag} is not rust-version {version}"));
    let runtime_from = of(&instructions, last, "FROM").next().expect("FROM");
    let (runtime_image, runtime_tag, _) = from_image(runtime_from);
    assert_eq!(
        (runtime_image.as_str(), runtime_tag.as_str()),
        ("debian", format!("{codename}-slim").as_str()),
        "the runtime is the build's Debian release, slim"
    );

    let build = of(&instructions, 0, "RUN")
        .find(|run| run.arguments.contains("cargo build"))
        .expect("the build stage runs cargo build");
    let words = build.words();
    for flag in ["--locked", "--release"] {
        assert!(
            words.contains(&flag),
            "cargo build {flag}: {}",
            build.arguments
        );
    }
    assert!(
        words
            .windows(2)
            .any(|pair| pair == ["--bin", "baton"] || pair[0] == "--bin=baton"),
        "cargo build --bin baton: {}",
        build.arguments
    );

    // The runtime copies the binary from the build stage onto PATH and runs it.
    let build_stage = build_alias.unwrap_or_else(|| "0".to_owned());
    assert!(
        of(&instructions, last, "COPY").any(|copy| {
            let words = copy.words();
            words.contains(&format!("--from={build_stage}").as_str())
                && words.last() == Some(&"/usr/local/bin/baton")
        }),
        "COPY --from={build_stage} … /usr/local/bin/baton"
    );
    let entrypoint = of(&instructions, last, "ENTRYPOINT")
        .last()
        .expect("an ENTRYPOINT");
    let entrypoint: Vec<String> = serde_json::from_str(&entrypoint.arguments)
        .unwrap_or_else(|error| panic!("ENTRYPOINT in exec form: {error}"));
    assert_eq!(entrypoint, ["baton"]);

    // As a user of its own, made in the image.
    let user = of(&instructions, last, "USER")
        .last()
        .expect("a USER")
        .arguments
        .split(':')
        .next()
        .unwrap_or_default()
        .to_owned();
    assert!(
        !["root", "0", ""].contains(&user.as_str()),
        "not as root: {user}"
    );
    let runs: Vec<&str> = of(&instructions, last, "RUN")
        .flat_map(|run| run.arguments.split("&&"))
        .map(str::trim)
        .collect();
    assert!(
        runs.iter().any(|command| command.starts_with("useradd")
            && command.split_whitespace().last() == Some(user.as_str())),
        "useradd … {user}: {runs:?}"
    );

    // With curl for the dispatcher's healthcheck and CA certificates.
    let installed: BTreeSet<&str> = runs
        .iter()
        .filter(|command| command.starts_with("apt-get install"))
        .flat_map(|command| command.split_whitespace())
        .filter(|word| !word.starts_with('-'))
        .collect();
    let compose = Compose::load();
    let check = healthcheck(compose.service("dispatcher")).expect("the dispatcher's");
    for package in [check[0].as_str(), "ca-certificates"] {
        assert!(installed.contains(package), "the image installs {package}");
    }

    // Every directory compose.yaml mounts a volume on exists in the image and is the user's,
    // so Docker gives a new named volume that owner, and the service may write to it.
    let owned: BTreeSet<&str> = runs
        .iter()
        .filter(|command| command.starts_with(&format!("install -d -o {user} ")))
        .flat_map(|command| command.split_whitespace())
        .filter(|word| word.starts_with('/'))
        .collect();
    for (service, _) in BATON_SERVICES {
        for mount in mounts(compose.service(service)) {
            assert!(
                owned.contains(mount.target.as_str()),
                "{service} mounts a volume on {}, which the image does not make for {user}: \
                 {owned:?}",
                mount.target
            );
        }
        if let Some(work) = compose.environment(service).get("BATON_WORK_DIR") {
            assert!(
                owned.contains(work.as_str()),
                "{service}'s BATON_WORK_DIR {work} is not made for {user}"
            );
        }
    }
}

#[test]
fn the_build_context_keeps_the_sources_and_leaves_target_out() {
    let patterns: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| line.trim_matches('/').to_owned())
        .collect();
    for left_out in ["target", ".git"] {
        assert!(
            patterns.iter().any(|pattern| pattern == left_out),
            ".dockerignore leaves out {left_out}: {patterns:?}"
        );
    }
    let mut needed = vec![
        "Cargo.toml".to_owned(),
        "Cargo.lock".to_owned(),
        "migrations".to_owned(),
        "cli/assets".to_owned(),
    ];
    needed.extend(workspace_members());
    for path in &needed {
        assert!(
            workspace_root().join(path).exists(),
            "{path} exists in the workspace"
        );
        for pattern in &patterns {
            assert!(
                pattern != path && pattern != "*" && pattern != "**",
                ".dockerignore's {pattern} leaves out {path}, which the build needs"
            );
        }
    }
}
