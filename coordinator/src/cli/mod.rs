//! The `arbiter` command line: one file per subcommand, one dispatch `match`.

mod audit;
mod cluster;
mod config_file;
mod connect;
pub mod duration;
mod output;
mod serve;
mod stats;
mod txn;

use clap::{Parser, Subcommand, ValueEnum};

pub use config_file::parse;
pub use serve::ServeArgs;

#[derive(Debug, Parser)]
#[command(
    name = "arbiter",
    version,
    about = "Arbiter distributed-transaction coordinator"
)]
pub struct Cli {
    /// Log output: human-readable text or one JSON object per line.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "ARBITER_LOG_FORMAT")]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the coordinator server.
    Serve(Box<ServeArgs>),
    /// Find, inspect and fix transactions (admin).
    Txn(txn::TxnArgs),
    /// The audit trail of admin actions.
    Audit(audit::AuditArgs),
    /// Counts by state, stuck transactions, retry queue.
    Stats(stats::StatsArgs),
    /// The coordinators sharing this one's store.
    Cluster(cluster::ClusterArgs),
    /// Check a config file for `arbiter serve --config`.
    Config(config_file::ConfigArgs),
}

/// Sets up `tracing`: level from `RUST_LOG` (default `info`), format from the flag.
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The whole `arbiter` program after the allocator: parse, set up tracing,
/// dispatch, report. Both the `arbiter` binary and the test-only failpoint
/// binary (`arbiter-tests`' `arbiter-failpoints`) call it.
pub async fn main() -> std::process::ExitCode {
    let cli = parse();
    init_tracing(cli.log_format);
    let serving = matches!(cli.command, Command::Serve(_));
    match dispatch(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => std::process::ExitCode::from(report(serving, &e)),
    }
}

/// Runs the parsed command.
pub async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve::run(*args).await,
        Command::Txn(args) => txn::run(args).await,
        Command::Audit(args) => audit::run(args).await,
        Command::Stats(args) => stats::run(args).await,
        Command::Cluster(args) => cluster::run(args).await,
        Command::Config(args) => config_file::run(args).await,
    }
}

/// Reports a failed command on stderr and gives its exit code: 1 failure,
/// 2 usage error, 3 not found. The server logs; admin commands print plainly.
///
/// With `-o json`, an admin command also prints the error as one JSON object
/// on stdout (`{"error": {"code": 3, "kind": "not_found", "message": ...}}`),
/// so a script can parse every outcome.
pub fn report(command_was_serve: bool, error: &anyhow::Error) -> u8 {
    let code = connect::exit_code(error);
    if command_was_serve {
        tracing::error!("{error:#}");
        return code;
    }
    let message = connect::describe(error);
    eprintln!("arbiter: {message}");
    if wants_json() {
        let kind = match code {
            2 => "usage",
            3 => "not_found",
            _ => "failure",
        };
        output::json(&serde_json::json!({
            "error": { "code": code, "kind": kind, "message": message }
        }));
    }
    code
}

/// Ends the process on a command line clap refused: help and version as
/// clap prints them; a usage error also as a JSON object on stdout when the
/// arguments ask for `-o json` (exit code 2 either way).
pub(crate) fn usage_error(error: clap::Error, argv: &[std::ffi::OsString]) -> ! {
    use clap::error::ErrorKind;
    let asks_json = argv
        .windows(2)
        .any(|w| matches!(w[0].to_str(), Some("-o" | "--output")) && w[1].to_str() == Some("json"))
        || argv
            .iter()
            .any(|a| matches!(a.to_str(), Some("-ojson" | "--output=json")));
    if asks_json
        && !matches!(
            error.kind(),
            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
        )
    {
        let text = error.to_string();
        let message = text.trim().trim_start_matches("error: ");
        output::json(&serde_json::json!({
            "error": { "code": 2, "kind": "usage", "message": message }
        }));
    }
    error.exit()
}

/// Whether the command line asked for `-o json` (read again from the
/// arguments: the parsed command has been consumed by then).
fn wants_json() -> bool {
    use clap::CommandFactory;
    let Ok(matches) = Cli::command().try_get_matches_from(std::env::args_os()) else {
        return false;
    };
    let mut leaf = &matches;
    while let Some((_, sub)) = leaf.subcommand() {
        leaf = sub;
    }
    matches!(
        leaf.try_get_one::<output::Format>("output"),
        Ok(Some(output::Format::Json))
    )
}
