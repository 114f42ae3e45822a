//! The `arbiter` binary: parse, set up tracing, dispatch. Everything else is in
//! the library.

/// mimalloc: the coordinator allocates many small short-lived buffers per RPC;
/// measured in BENCHMARKS.md against the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use arbiter::cli;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = cli::parse();
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    cli::init_tracing(cli.log_format);
    let serving = matches!(cli.command, cli::Command::Serve(_));
    match cli::dispatch(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => std::process::ExitCode::from(cli::report(serving, &e)),
    }
}
