//! Who may use baton: `baton login`, `baton users …`, `baton tokens …` (through the HTTP API),
//! `baton migrate --admin` (the first administrator, straight into the database) and
//! `baton rabbitmq setup` (per-principal RabbitMQ users, through RabbitMQ's management API).
//!
//! Passwords are read from standard input, never from arguments (which `ps` shows); a token
//! is printed once, when it is made.

use std::io::BufRead;

use anyhow::{Context, bail};
use chrono::Utc;
use serde_json::json;

use api::{IssuedToken, TokenInfo};
use dispatcher::auth;
use dispatcher::store::{self, catalog};
use models::{OrganizationId, Role, User, UserId};

use crate::client::ApiClient;
use crate::output::{self, Output};
use crate::{LoginArgs, MigrateArgs, OutputFormat, RabbitmqSetupArgs, TokensCommand, UsersCommand};

/// Reads `count` lines from standard input (without their line ends).
fn read_lines(count: usize, what: &str) -> anyhow::Result<Vec<String>> {
    let stdin = std::io::stdin();
    let mut lines = Vec::with_capacity(count);
    for line in stdin.lock().lines().take(count) {
        lines.push(line.with_context(|| format!("reading {what} from standard input"))?);
    }
    if lines.len() < count {
        bail!("expected {what} on standard input ({count} line(s))");
    }
    Ok(lines)
}

fn date(value: Option<chrono::DateTime<Utc>>) -> String {
    value.map_or_else(|| "—".to_owned(), |date| date.to_rfc3339())
}

/// The columns of a user in a table.
const USER_HEADER: [&str; 5] = ["user", "name", "organization", "roles", "enabled"];

fn print_user(out: &Output, format: OutputFormat, user: &User) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => out.json(user),
        OutputFormat::Table => {
            let mut listing = output::table(&USER_HEADER);
            listing.add_row(user_row(user));
            out.line(listing);
            Ok(())
        }
    }
}

fn user_row(user: &User) -> Vec<String> {
    let roles: Vec<&str> = user.roles.iter().map(|role| role.as_str()).collect();
    vec![
        user.identifier.to_string(),
        user.display_name.clone(),
        user.organization.to_string(),
        roles.join(","),
        if user.is_enabled { "yes" } else { "no" }.to_owned(),
    ]
}

fn print_token_infos(
    out: &Output,
    format: OutputFormat,
    tokens: &[TokenInfo],
) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => out.json(&tokens),
        OutputFormat::Table => {
            if tokens.is_empty() {
                out.line("no token");
                return Ok(());
            }
            let mut listing =
                output::table(&["token", "user", "description", "expires", "revoked", "made"]);
            for token in tokens {
                listing.add_row(vec![
                    token.identifier.to_string(),
                    token.user.to_string(),
                    token.description.clone().unwrap_or_default(),
                    date(token.expiration_date),
                    date(token.revocation_date),
                    token.creation_date.to_rfc3339(),
                ]);
            }
            out.line(listing);
            Ok(())
        }
    }
}

fn print_issued(out: &Output, format: OutputFormat, issued: &IssuedToken) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => out.json(issued),
        OutputFormat::Table => {
            out.line(format!(
                "token {} for {} (expires {}); it is shown only now:",
                issued.info.identifier,
                issued.info.user,
                date(issued.info.expiration_date)
            ));
            out.line(&issued.token);
            Ok(())
        }
    }
}

/// Runs `baton login`: the password is the first line of standard input.
pub(crate) async fn login(
    out: &Output,
    format: OutputFormat,
    client: &ApiClient,
    args: LoginArgs,
) -> anyhow::Result<()> {
    let password = read_lines(1, "the password")?.remove(0);
    let issued = client
        .login(&api::Login {
            identifier: args.user,
            password,
            description: args.description,
            expires_in_secs: args.expires_in_secs,
        })
        .await?;
    print_issued(out, format, &issued)
}

/// Runs `baton users …`.
pub(crate) async fn users(
    out: &Output,
    format: OutputFormat,
    client: &ApiClient,
    command: UsersCommand,
) -> anyhow::Result<()> {
    match command {
        UsersCommand::Ls { page } => {
            let listed = client.users(page.into()).await?;
            match format {
                OutputFormat::Json => out.json(&listed),
                OutputFormat::Table => {
                    output::print_page_table(
                        out,
                        &listed,
                        ("user", "users"),
                        &USER_HEADER,
                        user_row,
                    );
                    Ok(())
                }
            }
        }
        UsersCommand::Show { identifier } => {
            let user = match identifier {
                Some(identifier) => client.user(&identifier).await?,
                None => client.me().await?,
            };
            print_user(out, format, &user)
        }
        UsersCommand::Create {
            identifier,
            organization,
            roles,
            display_name,
            password_stdin,
        } => {
            let password = if password_stdin {
                Some(read_lines(1, "the password")?.remove(0))
            } else {
                None
            };
            let user = client
                .create_user(&api::NewUser {
                    identifier,
                    display_name,
                    organization: organization.into(),
                    roles,
                    is_enabled: None,
                    password,
                })
                .await?;
            print_user(out, format, &user)
        }
        UsersCommand::Update {
            identifier,
            roles,
            no_roles,
            display_name,
            enable,
            disable,
        } => {
            let update = api::UserUpdate {
                display_name,
                roles: if no_roles {
                    Some(Vec::new())
                } else if roles.is_empty() {
                    None
                } else {
                    Some(roles)
                },
                is_enabled: match (enable, disable) {
                    (true, _) => Some(true),
                    (_, true) => Some(false),
                    _ => None,
                },
            };
            let user = client.update_user(&identifier, &update).await?;
            print_user(out, format, &user)
        }
        UsersCommand::Passwd { identifier } => {
            let me = client.me().await.ok();
            let own = me.is_some_and(|me| me.identifier.as_str() == identifier);
            let mut lines = read_lines(if own { 2 } else { 1 }, "the password(s)")?;
            let current_password = if own { Some(lines.remove(1)) } else { None };
            client
                .set_password(
                    &identifier,
                    &api::PasswordChange {
                        password: lines.remove(0),
                        current_password,
                    },
                )
                .await?;
            match format {
                OutputFormat::Json => out.json(&json!({"user": identifier, "password": "set"})),
                OutputFormat::Table => {
                    out.line(format!("password of {identifier} set"));
                    Ok(())
                }
            }
        }
    }
}

/// Runs `baton tokens …`.
pub(crate) async fn tokens(
    out: &Output,
    format: OutputFormat,
    client: &ApiClient,
    command: TokensCommand,
) -> anyhow::Result<()> {
    match command {
        TokensCommand::Ls { user } => {
            let tokens = client.tokens(&user).await?;
            print_token_infos(out, format, &tokens)
        }
        TokensCommand::Create {
            user,
            description,
            expires_in_secs,
        } => {
            let issued = client
                .create_token(
                    &user,
                    &api::NewToken {
                        description,
                        expires_in_secs,
                    },
                )
                .await?;
            print_issued(out, format, &issued)
        }
        TokensCommand::Revoke { user, id } => {
            let revoked = client.revoke_token(&user, id).await?;
            print_token_infos(out, format, &[revoked])
        }
    }
}

/// Writes `token` to `path`, readable by its owner only.
fn write_token_file(path: &std::path::Path, token: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("making the directory {}", parent.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing the token file {}", path.display()))?;
    writeln!(file, "{token}").with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Runs `baton migrate`: migrations, then with `--admin` the first administrator, straight
/// into the database (there is nobody yet to authorize an API call).
pub(crate) async fn migrate(
    out: &Output,
    format: OutputFormat,
    database_url: &str,
    args: MigrateArgs,
) -> anyhow::Result<()> {
    let applied = crate::apply_migrations(database_url).await?;
    output::print_migrations(out, format, &applied)?;
    let Some(admin) = args.admin else {
        return Ok(());
    };
    if let Some(problem) = models::user::identifier_problem(&admin) {
        bail!("--admin {admin:?}: {problem}");
    }
    let identifier = UserId(admin);
    let organization = OrganizationId(args.admin_organization);
    let pool = store::connect(database_url, 1)?;
    let mut conn = store::connection(&pool).await?;
    if catalog::find_user(&conn, &identifier).await?.is_some() {
        return match format {
            OutputFormat::Json => out.json(&json!({"admin": identifier, "created": false})),
            OutputFormat::Table => {
                out.line(format!(
                    "user {identifier} exists already: left as it is, no token issued (`baton \
                     tokens create --user {identifier}` makes one)"
                ));
                Ok(())
            }
        };
    }
    crate::services::ensure_organization(&mut conn, &organization, false).await?;
    let now = Utc::now();
    let user = User {
        identifier: identifier.clone(),
        display_name: identifier.to_string(),
        organization: organization.clone(),
        roles: vec![Role::Administrator],
        is_enabled: true,
        creation_date: now,
        update_date: now,
    };
    let (credential, token) = auth::new_token(
        &identifier,
        Some("made by baton migrate --admin".to_owned()),
        None,
        now,
    )?;
    catalog::insert_user(&mut conn, &user).await?;
    catalog::insert_credential(&mut conn, &credential).await?;
    match &args.admin_token_file {
        Some(path) => {
            write_token_file(path, token.expose())?;
            match format {
                OutputFormat::Json => out.json(&json!({
                    "admin": identifier,
                    "created": true,
                    "token_file": path.display().to_string(),
                }))?,
                OutputFormat::Table => out.line(format!(
                    "administrator {identifier} of {organization} made; its token is in {}",
                    path.display()
                )),
            }
        }
        None => print_issued(
            out,
            format,
            &IssuedToken {
                token: token.expose().to_owned(),
                info: TokenInfo::from(&credential),
            },
        )?,
    }
    Ok(())
}

/// Runs `baton rabbitmq setup`.
pub(crate) async fn rabbitmq_setup(
    out: &Output,
    format: OutputFormat,
    args: RabbitmqSetupArgs,
) -> anyhow::Result<()> {
    use crate::rabbitmq::{ManagementApi, Part, Principal};
    let mut principals = Vec::new();
    principals.extend(args.dispatcher.into_iter().map(|user| Principal {
        part: Part::Dispatcher,
        user,
    }));
    principals.extend(args.producers.into_iter().map(|user| Principal {
        part: Part::Producer,
        user,
    }));
    principals.extend(args.workers.into_iter().map(|user| Principal {
        part: Part::Worker,
        user,
    }));
    if principals.is_empty() {
        bail!("name at least one user: --dispatcher, --producer or --worker");
    }
    let api = ManagementApi {
        url: args.management.rabbitmq_api,
        user: args.management.rabbitmq_api_user,
        password: args.management.rabbitmq_api_password,
    };
    let done = crate::rabbitmq::setup(&api, &args.vhost, &principals, args.reset_passwords).await?;
    match format {
        OutputFormat::Json => out.json(&done),
        OutputFormat::Table => {
            let mut listing = output::table(&[
                "user",
                "part",
                "password (shown once)",
                "configure",
                "write",
                "read",
            ]);
            for set in &done {
                listing.add_row(vec![
                    set.user.clone(),
                    format!("{:?}", set.part).to_lowercase(),
                    set.password.clone().unwrap_or_else(|| "(kept)".to_owned()),
                    set.permissions.configure.clone(),
                    set.permissions.write.clone(),
                    set.permissions.read.clone(),
                ]);
            }
            out.line(listing);
            out.line(format!(
                "each user must also be a baton user of the same name with the matching role \
                 (`baton users create NAME --organization ORG --role …`); vhost {}",
                args.vhost
            ));
            Ok(())
        }
    }
}
