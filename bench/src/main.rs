//! `arbiter-bench`: measures Arbiter on this machine. See `BENCHMARKS.md`.

mod child;
mod cluster;
mod echo;
mod load;
mod participants;
mod recovery;
mod report;
mod sweep;
mod watchers;

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "arbiter-bench",
    about = "Benchmarks of the Arbiter coordinator"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// One closed-loop load run (the default).
    Run(RunArgs),
    /// A table over concurrency (1, 4, 16, 64, 256) and branch count (1, 2, 4, 8).
    Sweep(RunArgs),
    /// Time to finish N decided transactions after a kill -9 and restart.
    Recovery(recovery::RecoveryArgs),
    /// sled on one node, then the log on PostgreSQL with 1, 2 and 3 nodes
    /// (clients spread over them), each in a fresh database, in one run.
    Cluster(cluster::ClusterArgs),
    /// Time for the other nodes to finish N decided transactions of a node
    /// that is SIGKILLed (or SIGTERMed).
    Takeover(cluster::TakeoverArgs),
    /// The same load without, with N feed watchers, and without again, in one run.
    Watchers(watchers::WatchersArgs),
    /// Internal: serve the echo service for the gRPC ceiling.
    #[command(hide = true)]
    EchoServer {
        #[arg(long)]
        listen: std::net::SocketAddr,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    #[value(name = "2pc")]
    TwoPhase,
    Tcc,
    /// Each branch a step, one after another.
    Saga,
}

/// How the coordinator calls the benchmark's participants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    Grpc,
    /// HTTP/JSON (README, "Participants over HTTP").
    Http,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Api {
    /// One Execute call per transaction.
    Execute,
    /// Begin, RegisterBranch × K, Commit.
    Steps,
}

#[derive(Clone, Debug, Args)]
pub struct RunArgs {
    /// Use this coordinator instead of starting `arbiter` on a temp data dir.
    #[arg(long, global = true)]
    pub coordinator: Option<String>,
    /// Extra arguments for the started `arbiter serve` (e.g. "--retention-secs 10").
    #[arg(long, global = true, allow_hyphen_values = true, default_value = "")]
    pub arbiter_args: String,
    /// Transactions in flight.
    #[arg(long, global = true, default_value_t = 64)]
    pub concurrency: usize,
    /// Coordinator nodes to start (with `--arbiter-args "--store postgres://..."`);
    /// the load is spread over them.
    #[arg(long, global = true, default_value_t = 1)]
    pub nodes: usize,
    /// Measured time, e.g. 10s.
    #[arg(long, global = true, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Unmeasured time first.
    #[arg(long, global = true, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    #[arg(long, global = true, value_enum, default_value_t = ModeArg::TwoPhase)]
    pub mode: ModeArg,
    /// Branches per transaction.
    #[arg(long, global = true, default_value_t = 2)]
    pub branches: usize,
    /// Participant services (branches are spread over them).
    #[arg(long, global = true, default_value_t = 2)]
    pub participants: usize,
    #[arg(long, global = true, value_enum, default_value_t = Api::Execute)]
    pub api: Api,
    /// How the coordinator calls the participants.
    #[arg(long, global = true, value_enum, default_value_t = Protocol::Grpc)]
    pub protocol: Protocol,
    /// Wait for the final state (true) or only the durable decision (false).
    #[arg(long, global = true, default_value_t = true, action = clap::ArgAction::Set)]
    pub wait: bool,
    /// Share of transactions with a NO vote.
    #[arg(long, global = true, default_value_t = 0.0)]
    pub abort_ratio: f64,
    /// Branches of every transaction (the last ones) that vote READ_ONLY and
    /// so get no phase-2 call.
    #[arg(long, global = true, default_value_t = 0)]
    pub read_only_branches: usize,
    /// Bytes of each branch's payload (at least its 2-byte vote marker).
    #[arg(long, global = true, default_value_t = 2)]
    pub payload_bytes: usize,
    /// Client connections to the coordinator (and to the echo server, so the
    /// ceiling is measured the same way).
    #[arg(long, global = true, default_value_t = 1)]
    pub connections: usize,
    /// Skip measuring the gRPC ceiling.
    #[arg(long, global = true)]
    pub no_echo: bool,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(text.len()),
    );
    let n: f64 = number
        .parse()
        .map_err(|_| format!("bad duration {text:?}"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        _ => return Err(format!("bad unit in {text:?}; use ms, s or m")),
    };
    Ok(Duration::from_secs_f64(secs))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        None => load::run_once(&cli.run).await,
        Some(Command::Run(args)) => load::run_once(&args).await,
        Some(Command::Sweep(args)) => sweep::run(&args).await,
        Some(Command::Recovery(args)) => recovery::run(&args).await,
        Some(Command::Cluster(args)) => cluster::compare(&args).await,
        Some(Command::Takeover(args)) => cluster::takeover(&args).await,
        Some(Command::Watchers(args)) => watchers::compare(&args).await,
        Some(Command::EchoServer { listen }) => echo::serve(listen).await,
    }
}
