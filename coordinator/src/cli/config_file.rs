//! The TOML config file of `arbiter serve`, and `arbiter config check`.
//!
//! A file sets any `serve` option by its long flag name. Precedence: a flag
//! on the command line, then its ARBITER_* variable, then the file, then the
//! default. The file's settings become command-line arguments for the ones
//! neither the command line nor the environment gave, so clap checks them
//! exactly as it checks flags.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Subcommand};

use crate::cli::connect::UsageError;
use crate::cli::{Cli, Command, output};

#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    command: ConfigCommand,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Check a config file: known settings, valid values, readable TLS
    /// files; print the settings it results in (ARBITER_* variables apply).
    Check {
        /// The TOML file.
        file: PathBuf,
    },
}

/// Parses the command line, applying `serve --config FILE` if given. Exits
/// with clap's message (code 2) on a usage error, as `Cli::parse` would.
pub fn parse() -> Cli {
    let mut argv: Vec<OsString> = std::env::args_os().collect();
    let matches = Cli::command()
        .try_get_matches_from(argv.clone())
        .unwrap_or_else(|e| super::usage_error(e, &argv));
    if let Some(("serve", serve)) = matches.subcommand()
        && let Some(path) = serve.get_one::<PathBuf>("config")
    {
        match file_args(path, Some(serve)) {
            Ok(extra) => argv.extend(extra),
            Err(e) => {
                eprintln!("arbiter: {e:#}");
                std::process::exit(2);
            }
        }
        let matches = Cli::command()
            .try_get_matches_from(argv)
            .unwrap_or_else(|e| e.exit());
        return Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    }
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// Flags a file may not set: starting on a damaged log must be a deliberate act.
const COMMAND_LINE_ONLY: [&str; 1] = ["accept-damaged-log"];

/// `--name=value` arguments for the file's settings that `given` (the
/// matches of `serve`, if any) did not take from the command line or the
/// environment.
fn file_args(path: &Path, given: Option<&ArgMatches>) -> anyhow::Result<Vec<OsString>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| anyhow!("config file {} is not valid TOML: {e}", path.display()))?;
    let command = Cli::command();
    let serve = command
        .find_subcommand("serve")
        .ok_or_else(|| anyhow!("no serve command"))?;
    let mut args = Vec::new();
    for (key, value) in &table {
        let arg = serve
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()) && a.get_id() != "config")
            .ok_or_else(|| {
                anyhow!(
                    "{}: unknown setting {key:?}; settings are the long flag names of `arbiter serve --help`",
                    path.display()
                )
            })?;
        if COMMAND_LINE_ONLY.contains(&key.as_str()) {
            bail!(
                "{}: {key} is a one-off decision an operator makes on the command line, not a setting",
                path.display()
            );
        }
        let source = given.and_then(|m| m.value_source(arg.get_id().as_str()));
        if matches!(
            source,
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        if !arg.get_action().takes_values() {
            match value {
                toml::Value::Boolean(true) => args.push(OsString::from(format!("--{key}"))),
                toml::Value::Boolean(false) => {}
                _ => bail!("{}: {key} must be true or false", path.display()),
            }
            continue;
        }
        let values = match value {
            toml::Value::Array(items) => items.iter().collect(),
            one => vec![one],
        };
        for value in values {
            let text = match value {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                _ => bail!(
                    "{}: {key} must be a string, a number or a list of them",
                    path.display()
                ),
            };
            args.push(OsString::from(format!("--{key}={text}")));
        }
    }
    Ok(args)
}

pub async fn run(args: ConfigArgs) -> anyhow::Result<()> {
    let ConfigCommand::Check { file } = args.command;
    let mut argv = vec![OsString::from("arbiter"), OsString::from("serve")];
    argv.extend(file_args(&file, None).map_err(|e| UsageError(format!("{e:#}")))?);
    let cli = Cli::try_parse_from_args(argv).map_err(|e| {
        let text = e.render().to_string();
        let first = text
            .lines()
            .next()
            .unwrap_or_default()
            .trim_start_matches("error: ");
        UsageError(format!("{}: {first}", file.display()))
    })?;
    let Command::Serve(serve) = cli.command else {
        bail!("not a serve configuration");
    };
    let config = serve
        .config()
        .map_err(|e| UsageError(format!("{}: {e:#}", file.display())))?;
    let mut out = output::Table::new(vec!["setting", "value"]);
    let rows = [
        ("listen", serve.listen.to_string()),
        (
            "store",
            match (&serve.store, serve.in_memory) {
                (Some(url), _) => crate::store::redacted(url),
                (None, true) => "(in memory)".into(),
                (None, false) => format!("sled in {}", serve.data_dir.display()),
            },
        ),
        (
            "tls",
            if config.tls.server.is_some() {
                if serve.tls_client_ca.is_some() {
                    "on, client certificates required".into()
                } else {
                    "on".to_string()
                }
            } else {
                "off".into()
            },
        ),
        (
            "participant tls",
            if config.tls.participants.is_some() {
                "on".into()
            } else {
                "off".into()
            },
        ),
        ("coordinator tokens", names(&config.auth.coordinator)),
        ("admin tokens", names(&config.auth.admin)),
        (
            "allow-participant",
            if config.allow_participants.is_empty() {
                "(any: not recommended)".into()
            } else {
                config
                    .allow_participants
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        ),
        (
            "notify-url",
            if config.notify.endpoints.is_empty() {
                "(none)".into()
            } else {
                config
                    .notify
                    .endpoints
                    .iter()
                    .map(|e| e.url.clone())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        ),
        (
            "notify-secret",
            if config.notify.secret.is_some() {
                "set".into()
            } else {
                "unset".into()
            },
        ),
        ("max-unfinished", config.max_unfinished.to_string()),
        ("max-message-bytes", config.max_message_bytes.to_string()),
        (
            "max-connections",
            config.connections.max_connections.to_string(),
        ),
        (
            "max-request-memory",
            config.connections.max_request_memory.to_string(),
        ),
        ("max-payload-bytes", config.max_payload_bytes.to_string()),
        ("max-branches", config.max_branches.to_string()),
        (
            "metrics-listen",
            config
                .metrics_listen
                .map_or("off".into(), |a| a.to_string()),
        ),
    ];
    for (k, v) in rows {
        out.row(vec![k.into(), v.into()]);
    }
    output::say!("{}: OK", file.display());
    out.print();
    Ok(())
}

fn names(tokens: &[crate::security::Token]) -> String {
    if tokens.is_empty() {
        "(none)".into()
    } else {
        tokens
            .iter()
            .map(|t| t.name.clone())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Cli {
    fn try_parse_from_args(argv: Vec<OsString>) -> Result<Cli, clap::Error> {
        let matches = Cli::command().try_get_matches_from(argv)?;
        Cli::from_arg_matches(&matches)
    }
}
