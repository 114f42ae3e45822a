//! The `arbiter` binary: the allocator, then the library's command line.
//! Failpoints are never read here, even when a test build compiled them in:
//! only the test-only `arbiter-failpoints` binary sets them up.

/// mimalloc: the coordinator allocates many small short-lived buffers per RPC;
/// measured in BENCHMARKS.md against the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    arbiter::cli::main().await
}
