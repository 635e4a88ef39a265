//! The layers over the defaults: the TOML file, then the environment and the command line
//! (clap reads both), each a TOML table of the settings it names; a later layer's key
//! replaces an earlier one's. The merged table is read as a [`Config`] and validated.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{CommandFactory as _, FromArgMatches as _, Parser};
use serde::Serialize;
use toml::{Table, Value};

use super::{Config, ConfigError, LogFormat};

/// The command line and the environment (clap reads both). Every setting is optional here so
/// that a missing flag (and missing variable) falls through to the file, then to the default;
/// a field's name is its key in the file. The help's `[default: …]` comes from
/// `Config::defaults` (see [`command`]). Numbers are `i64`, as in TOML: a number out of
/// range is clap's error or the setting's, not the layering's.
#[derive(Debug, Parser, Serialize)]
#[command(
    name = "pkce-proxy",
    version,
    about = "A reverse proxy that adds PKCE (RFC 7636) to an OAuth 2.0 authorization server",
    long_about = None
)]
pub(super) struct Args {
    /// TOML file with the same settings (snake_case keys) and `[clients.ID]` tables.
    #[arg(long, env = "PKCE_PROXY_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// The legacy authorization server, e.g. `http://127.0.0.1:9000` (required).
    #[arg(long, env = "PKCE_PROXY_UPSTREAM", value_name = "URL")]
    upstream: Option<String>,
    /// Address to listen on.
    #[arg(long, env = "PKCE_PROXY_LISTEN", value_name = "ADDR")]
    listen: Option<String>,
    /// Address for /healthz, /readyz and /metrics.
    #[arg(long, env = "PKCE_PROXY_ADMIN_LISTEN", value_name = "ADDR")]
    admin_listen: Option<String>,
    /// PEM certificate chain for TLS on the listener (with --tls-key; read again on SIGHUP).
    #[arg(long, env = "PKCE_PROXY_TLS_CERT", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "PKCE_PROXY_TLS_KEY", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// The upstream's authorization endpoint.
    #[arg(long, env = "PKCE_PROXY_AUTHORIZE_PATH", value_name = "PATH")]
    authorize_path: Option<String>,
    /// The upstream's token endpoint.
    #[arg(long, env = "PKCE_PROXY_TOKEN_PATH", value_name = "PATH")]
    token_path: Option<String>,
    /// The upstream's pushed authorization request endpoint (RFC 9126), if it has one.
    #[arg(long, env = "PKCE_PROXY_PAR_PATH", value_name = "PATH")]
    par_path: Option<String>,
    /// A confidential client allowed to skip PKCE (repeatable; comma-separated in the
    /// environment).
    #[arg(
        long = "exempt-client",
        env = "PKCE_PROXY_EXEMPT_CLIENT",
        value_name = "ID",
        value_delimiter = ','
    )]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    exempt_clients: Vec<String>,
    /// A query parameter the upstream's token endpoint needs, e.g. ADFS's `api-version`
    /// (repeatable; comma-separated in the environment). Every other query parameter at the
    /// token endpoint is refused; OAuth parameter names cannot be allowed.
    #[arg(
        long = "token-query-param",
        env = "PKCE_PROXY_TOKEN_QUERY_PARAM",
        value_name = "NAME",
        value_delimiter = ','
    )]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    token_query_params: Vec<String>,
    /// A request header forwarded to the token endpoint besides Host, Authorization, Accept,
    /// Accept-Encoding, User-Agent, Origin and the X-Forwarded-* the proxy sets, e.g. `DPoP`
    /// (repeatable; comma-separated in the environment).
    #[arg(
        long = "token-forward-header",
        env = "PKCE_PROXY_TOKEN_FORWARD_HEADER",
        value_name = "NAME",
        value_delimiter = ','
    )]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    token_forward_headers: Vec<String>,
    /// A path under an endpoint's path that the upstream routes elsewhere, e.g. Doorkeeper's
    /// `/oauth/token/info`: passed through, where other such paths are refused (repeatable;
    /// comma-separated in the environment).
    #[arg(
        long = "other-route",
        env = "PKCE_PROXY_OTHER_ROUTE",
        value_name = "PATH",
        value_delimiter = ','
    )]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    other_routes: Vec<String>,
    /// Accept `plain` challenges.
    #[arg(long, env = "PKCE_PROXY_ALLOW_PLAIN", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    allow_plain: Option<bool>,
    /// `enforce` refuses; `report` logs and counts what it would refuse, and forwards it.
    #[arg(long, env = "PKCE_PROXY_MODE", value_name = "MODE")]
    mode: Option<String>,
    /// Lifetime of a pending authorization, e.g. `10m`.
    #[arg(long, env = "PKCE_PROXY_PENDING_TTL", value_name = "DURATION")]
    pending_ttl: Option<String>,
    /// Lifetime of a code binding, at least the upstream's code lifetime.
    #[arg(long, env = "PKCE_PROXY_CODE_TTL", value_name = "DURATION")]
    code_ttl: Option<String>,
    /// Most pending flows and codes kept at once; when full, new flows get 503.
    #[arg(long, env = "PKCE_PROXY_MAX_PENDING", value_name = "N")]
    max_pending: Option<i64>,
    /// Largest OAuth request body read, in bytes or with a unit (`64KiB`).
    #[arg(long, env = "PKCE_PROXY_MAX_BODY", value_name = "SIZE")]
    max_body: Option<String>,
    /// Where flows are kept: `memory`, or a Redis/Valkey URL shared by every replica
    /// (`redis://[:password@]host:port/db`, `rediss://…` for TLS).
    #[arg(
        long,
        env = "PKCE_PROXY_STORE",
        value_name = "STORE",
        hide_env_values = true
    )]
    store: Option<String>,
    /// Prefix of every Redis key.
    #[arg(long, env = "PKCE_PROXY_STORE_PREFIX", value_name = "PREFIX")]
    store_prefix: Option<String>,
    /// Longest a Redis operation may take before OAuth requests get 503.
    #[arg(long, env = "PKCE_PROXY_STORE_TIMEOUT", value_name = "DURATION")]
    store_timeout: Option<String>,
    /// Keep clients' `X-Forwarded-*` and `Forwarded` headers (only behind a trusted proxy).
    #[arg(long, env = "PKCE_PROXY_TRUST_FORWARDED", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    trust_forwarded: Option<bool>,
    /// PEM file of extra CA certificates for an https upstream.
    #[arg(long, env = "PKCE_PROXY_UPSTREAM_CA", value_name = "FILE")]
    upstream_ca: Option<PathBuf>,
    /// Longest wait for request headers.
    #[arg(long, env = "PKCE_PROXY_HEADER_TIMEOUT", value_name = "DURATION")]
    header_timeout: Option<String>,
    /// Longest pause in a request body before 408.
    #[arg(long, env = "PKCE_PROXY_BODY_TIMEOUT", value_name = "DURATION")]
    body_timeout: Option<String>,
    /// Longest wait to connect to the upstream before 502.
    #[arg(long, env = "PKCE_PROXY_CONNECT_TIMEOUT", value_name = "DURATION")]
    connect_timeout: Option<String>,
    /// Longest wait for the upstream's response before 504.
    #[arg(long, env = "PKCE_PROXY_UPSTREAM_TIMEOUT", value_name = "DURATION")]
    upstream_timeout: Option<String>,
    /// How long in-flight requests may finish after SIGINT or SIGTERM.
    #[arg(long, env = "PKCE_PROXY_SHUTDOWN_GRACE", value_name = "DURATION")]
    shutdown_grace: Option<String>,
    /// Longest a client connection may stay open without a request.
    #[arg(long, env = "PKCE_PROXY_IDLE_TIMEOUT", value_name = "DURATION")]
    idle_timeout: Option<String>,
    /// Most client connections open at once.
    #[arg(long, env = "PKCE_PROXY_MAX_CONNECTIONS", value_name = "N")]
    max_connections: Option<i64>,
    /// Threads serving client connections, each with its own listening socket; 0 is one per
    /// CPU.
    #[arg(long, env = "PKCE_PROXY_WORKERS", value_name = "N")]
    workers: Option<i64>,
    /// `text` or `json`. `RUST_LOG` sets the filter (default `info`).
    #[arg(long, env = "PKCE_PROXY_LOG_FORMAT", value_name = "FORMAT")]
    log_format: Option<LogFormat>,
    /// Print the effective configuration and exit.
    #[arg(long)]
    #[serde(skip)]
    print_config: bool,
}

/// The command line's definition, with each setting's default from `Config::defaults` in
/// its help.
fn command() -> clap::Command {
    let mut command = Args::command();
    let Ok(defaults) = Table::try_from(Config::defaults()) else {
        return command;
    };
    for (key, value) in defaults {
        let known = command.get_arguments().any(|a| a.get_id() == key.as_str());
        if key == "upstream" || !known {
            continue;
        }
        let shown = match value {
            Value::Array(a) if a.is_empty() => continue,
            Value::String(s) if s.is_empty() => "none".to_owned(),
            Value::String(s) => s,
            other => other.to_string(),
        };
        command = command.mut_arg(key, |arg| {
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            arg.help(format!("{help} [default: {shown}]"))
        });
    }
    command
}

/// The command line, read with its environment variables.
pub(super) fn parse_args<I, T>(args: I) -> Result<Args, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let matches = command()
        .try_get_matches_from(args)
        .map_err(ConfigError::from_clap)?;
    Args::from_arg_matches(&matches).map_err(ConfigError::from_clap)
}

/// The configuration, and whether the command line asks only to print it.
pub(crate) fn load<I, T>(args: I) -> Result<(Config, bool), ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = parse_args(args)?;
    let file = match &args.config {
        Some(path) => Some(read_file(path)?),
        None => None,
    };
    Ok((resolve(&args, file)?, args.print_config))
}

/// A configuration file: what to call it in messages, and its settings.
pub(super) struct File {
    pub(super) name: String,
    pub(super) table: Table,
}

fn read_file(path: &Path) -> Result<File, ConfigError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(format!("cannot read config file {name}: {e}")))?;
    let table =
        parse_file(&text).map_err(|e| ConfigError::new(format!("config file {name}: {e}")))?;
    Ok(File { name, table })
}

pub(super) fn parse_file(text: &str) -> Result<Table, String> {
    text.parse::<Table>().map_err(|e| {
        // toml's messages span several lines with a source excerpt; keep the first.
        let message = e.message().lines().collect::<Vec<_>>().join("; ");
        match e.span() {
            Some(span) => {
                let line = text
                    .get(..span.start)
                    .map_or(0, |t| t.lines().count().max(1));
                format!("line {line}: {message}")
            }
            None => message,
        }
    })
}

/// Flags (and variables) over the file over the defaults, validated.
pub(super) fn resolve(args: &Args, file: Option<File>) -> Result<Config, ConfigError> {
    let flags =
        Table::try_from(args).map_err(|e| ConfigError::new(format!("invalid arguments: {e}")))?;
    let (mut table, file_name) = file.map_or((Table::new(), None), |f| (f.table, Some(f.name)));
    // Keys only the file gives: their errors name the file.
    let from_file: Vec<String> = table
        .keys()
        .filter(|k| !flags.contains_key(*k))
        .cloned()
        .collect();
    table.extend(flags);
    if !table.contains_key("upstream") {
        return Err(ConfigError::new("--upstream URL is required"));
    }
    add_exempt_clients(&mut table)?;
    let config: Config = serde_path_to_error::deserialize(Value::Table(table)).map_err(|e| {
        let message = setting_error(&e);
        match (e.path().iter().next(), &file_name) {
            (Some(serde_path_to_error::Segment::Map { key }), Some(name))
                if from_file.contains(key) =>
            {
                ConfigError::new(format!("config file {name}: {message}"))
            }
            _ => ConfigError::new(message),
        }
    })?;
    config.validate()?;
    Ok(config)
}

/// `exempt_clients` (`--exempt-client`) is a shorthand for `exempt = true` in each client's
/// table.
fn add_exempt_clients(table: &mut Table) -> Result<(), ConfigError> {
    let Some(ids) = table.remove("exempt_clients") else {
        return Ok(());
    };
    let bad = |why: &str| ConfigError::new(format!("invalid --exempt-client: {why}"));
    let Value::Array(ids) = ids else {
        return Err(bad("expected a list of client ids"));
    };
    let clients = table
        .entry("clients")
        .or_insert_with(|| Value::Table(Table::new()));
    let Value::Table(clients) = clients else {
        return Err(ConfigError::new(
            "invalid clients: expected [clients.ID] tables",
        ));
    };
    for id in ids {
        let Value::String(id) = id else {
            return Err(bad("expected a list of client ids"));
        };
        let id = id.trim();
        if id.is_empty() {
            return Err(bad("empty client id"));
        }
        let client = clients
            .entry(id.to_owned())
            .or_insert_with(|| Value::Table(Table::new()));
        if let Value::Table(client) = client {
            client.insert("exempt".into(), Value::Boolean(true));
        }
    }
    Ok(())
}

/// One line naming the setting: `invalid --max-body "x": …` for a flag's setting,
/// `invalid clients.ID: …` within a client's table; an unknown key's message names it.
fn setting_error(e: &serde_path_to_error::Error<toml::de::Error>) -> String {
    let message = e.inner().message().lines().collect::<Vec<_>>().join("; ");
    if message.starts_with("invalid --") {
        return message;
    }
    let mut keys: Vec<String> = e.path().iter().map(ToString::to_string).collect();
    if message.starts_with("unknown field") {
        keys.pop();
    }
    match keys.as_slice() {
        [] => message,
        [key]
            if Args::command()
                .get_arguments()
                .any(|a| a.get_id() == key.as_str()) =>
        {
            let flag = key.replace('_', "-");
            // `values` messages start with the value, quoted.
            if message.starts_with('"') {
                format!("invalid --{flag} {message}")
            } else {
                format!("invalid --{flag}: {message}")
            }
        }
        _ => format!("invalid {}: {message}", keys.join(".")),
    }
}
