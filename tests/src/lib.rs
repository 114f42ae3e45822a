//! Test harness for Arbiter: coordinators in-process or as real `arbiter`
//! processes, participants that record every call they see, and polling
//! helpers with generous deadlines (never fixed sleeps as assertions).

pub mod certs;
pub mod chaos;
pub mod cli;
pub mod http;
pub mod http_participant;
pub mod postgres;
pub mod process;
pub mod proxy;
pub mod recorder;
pub mod webdriver;

use std::future::Future;
use std::time::{Duration, Instant};

use arbiter::Config;
use arbiter::server::Storage;
use arbiter_sdk::Client;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use process::ArbiterProcess;
pub use recorder::{Recorder, Seen, Spy};

/// How long any "eventually" in a test may take before it counts as failed.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Polls `check` until it returns `Some`, or panics with `what` after `PATIENCE`.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() > deadline {
            panic!("timed out after {PATIENCE:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A coordinator running inside the test process on a sled log in a temp dir.
pub struct TestCoordinator {
    pub endpoint: String,
    pub client: Client,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), arbiter::server::ServeError>>,
    _dir: tempfile::TempDir,
}

impl TestCoordinator {
    /// Starts with quick retries and `config` tweaks applied.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> anyhow::Result<TestCoordinator> {
        let dir = tempfile::tempdir()?;
        let mut config = Config {
            retry_base: Duration::from_millis(20),
            retry_max: Duration::from_millis(200),
            ..Config::default()
        };
        tweak(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = oneshot::channel::<()>();
        let storage = Storage::Sled(dir.path().join("log"));
        let task = tokio::spawn(arbiter::run(config, storage, listener, async {
            let _ = stopped.await;
        }));
        let client = Client::connect(endpoint.clone()).await?;
        Ok(TestCoordinator {
            endpoint,
            client,
            stop: Some(stop),
            task,
            _dir: dir,
        })
    }

    pub async fn start() -> anyhow::Result<TestCoordinator> {
        Self::start_with(|_| {}).await
    }

    /// Shuts down gracefully and reports how the server ended.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await??;
        Ok(())
    }
}

impl Drop for TestCoordinator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Resources every recorder participant serves, for both 2PC and TCC.
pub const RESOURCES: [&str; 3] = ["r1", "r2", "r3"];

/// A participant process-in-the-test backed by a fresh [`Recorder`].
pub async fn recorder_participant()
-> anyhow::Result<(arbiter_sdk::RunningParticipant, std::sync::Arc<Recorder>)> {
    let recorder = std::sync::Arc::new(Recorder::new());
    let running = serve_recorder(recorder.clone(), "127.0.0.1:0".parse()?).await?;
    Ok((running, recorder))
}

/// Serves `recorder` on `addr` (use a fixed address to bring a participant back).
pub async fn serve_recorder(
    recorder: std::sync::Arc<Recorder>,
    addr: std::net::SocketAddr,
) -> anyhow::Result<arbiter_sdk::RunningParticipant> {
    let mut server = arbiter_sdk::ParticipantServer::new();
    for resource in RESOURCES {
        server = server
            .two_phase(resource, recorder.clone())
            .tcc(resource, recorder.clone())
            .saga(resource, recorder.clone());
    }
    Ok(server.serve(addr).await?)
}

/// Copies a directory tree (a data directory, a fixture) into `to`.
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// The gRPC code of a client error, for asserting on statuses.
pub fn code_of(error: &arbiter_sdk::ClientError) -> tonic::Code {
    use arbiter_sdk::ClientError as E;
    match error {
        E::NotFound(_) => tonic::Code::NotFound,
        E::InvalidArgument(_) => tonic::Code::InvalidArgument,
        E::FailedPrecondition(_) => tonic::Code::FailedPrecondition,
        E::AlreadyExists(_) => tonic::Code::AlreadyExists,
        E::Unavailable(_) => tonic::Code::Unavailable,
        E::DeadlineExceeded(_) => tonic::Code::DeadlineExceeded,
        E::Connect(_) => tonic::Code::Unavailable,
        E::Other(status) => status.code(),
    }
}
