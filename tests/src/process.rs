//! The `arbiter` binary as a child process: start it on a data dir, stop it with
//! SIGTERM or SIGKILL, start it again on the same dir.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use arbiter_sdk::Client;

/// Path of the `arbiter-failpoints` binary of this build: `arbiter` with its
/// crash points read from `FAILPOINTS` (inert when it is unset). Cargo builds
/// it before this crate's tests; `ARBITER_BIN` names another binary.
pub fn arbiter_bin() -> anyhow::Result<PathBuf> {
    if let Ok(path) = std::env::var("ARBITER_BIN") {
        return Ok(PathBuf::from(path));
    }
    let path = profile_dir()?.join("arbiter-failpoints");
    if !path.is_file() {
        bail!(
            "{} is missing: run the tests with cargo test, which builds it",
            path.display()
        );
    }
    Ok(path)
}

/// The target directory's profile directory (`target/debug`) of the running
/// test executable, which lives in `target/<profile>/deps/`.
fn profile_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .context("cannot find the target directory")
}

/// Path of the examples' `pg-bank` binary, built first if needed.
pub fn pg_bank_bin() -> anyhow::Result<PathBuf> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        workspace_bin("PG_BANK_BIN", "arbiter-examples", "pg-bank").map_err(|e| format!("{e:#}"))
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

/// A binary of this workspace, from `env_override` or built with cargo into
/// the target directory this test runs from.
fn workspace_bin(env_override: &str, package: &str, bin: &str) -> anyhow::Result<PathBuf> {
    if let Ok(path) = std::env::var(env_override) {
        return Ok(PathBuf::from(path));
    }
    let profile_dir = profile_dir()?;
    let path = profile_dir.join(bin);
    let mut build = Command::new(env!("CARGO"));
    build.args(["build", "-q", "-p", package, "--bin", bin]);
    if profile_dir.ends_with("release") {
        build.arg("--release");
    }
    let status = build
        .status()
        .with_context(|| format!("running cargo build for {bin}"))?;
    if !status.success() || !path.is_file() {
        bail!("could not build {}", path.display());
    }
    Ok(path)
}

/// A free loopback port (bound then released).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// An `arbiter serve` child process on a fixed port and data dir, which can
/// be stopped and started again.
pub struct ArbiterProcess {
    child: Option<Child>,
    pub endpoint: String,
    pub data_dir: PathBuf,
    port: u16,
    args: Vec<String>,
    /// `FAILPOINTS` for the next start; `None` runs without failpoints.
    failpoints: Option<String>,
    /// Extra environment variables.
    env: Vec<(String, String)>,
    /// Where stderr goes; inherited when `None`.
    stderr: Option<PathBuf>,
    /// How the process last exited during start-up.
    last_exit: Option<std::process::ExitStatus>,
    /// Open-file limit (soft and hard) to run under.
    fd_limit: Option<u64>,
}

/// How to start an [`ArbiterProcess`] beyond its arguments.
#[derive(Default)]
pub struct Launch<'a> {
    /// `FAILPOINTS` (e.g. `"after-decision-persisted=return"`).
    pub failpoints: Option<&'a str>,
    /// Extra environment variables.
    pub env: &'a [(&'a str, &'a str)],
    /// Run under this open-file limit, soft and hard (`ulimit -n`).
    pub fd_limit: Option<u64>,
    /// Send stderr to this file instead of inheriting it.
    pub stderr: Option<&'a Path>,
}

/// How a start that the coordinator may refuse ended.
pub enum Start {
    Serving(ArbiterProcess),
    /// It exited before serving: its exit code and what it wrote to stderr.
    Refused {
        code: Option<i32>,
        stderr: String,
    },
}

impl ArbiterProcess {
    /// Starts `arbiter serve` on `data_dir` with `args` and waits until it answers.
    pub async fn start(data_dir: &Path, args: &[&str]) -> anyhow::Result<ArbiterProcess> {
        Self::launch(data_dir, args, None, &[]).await
    }

    /// Like [`ArbiterProcess::start`], with `FAILPOINTS` set (e.g. `"after-decision-persisted=return"`).
    pub async fn start_with_failpoints(
        data_dir: &Path,
        args: &[&str],
        failpoints: &str,
    ) -> anyhow::Result<ArbiterProcess> {
        Self::launch(data_dir, args, Some(failpoints), &[]).await
    }

    /// Like [`ArbiterProcess::start`], with extra environment variables.
    pub async fn start_with_env(
        data_dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<ArbiterProcess> {
        Self::launch(data_dir, args, None, env).await
    }

    async fn launch(
        data_dir: &Path,
        args: &[&str],
        failpoints: Option<&str>,
        env: &[(&str, &str)],
    ) -> anyhow::Result<ArbiterProcess> {
        let options = Launch {
            failpoints,
            env,
            ..Launch::default()
        };
        Self::start_launch(data_dir, args, options).await
    }

    /// Like [`ArbiterProcess::start`], with everything [`Launch`] can set.
    pub async fn start_launch(
        data_dir: &Path,
        args: &[&str],
        options: Launch<'_>,
    ) -> anyhow::Result<ArbiterProcess> {
        let mut process = Self::new(data_dir, args, options.stderr)?;
        process.failpoints = options.failpoints.map(str::to_string);
        process.env = options
            .env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        process.fd_limit = options.fd_limit;
        process.restart().await?;
        Ok(process)
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Not started yet: on a free port, stderr to `stderr` (else inherited).
    fn new(
        data_dir: &Path,
        args: &[&str],
        stderr: Option<&Path>,
    ) -> anyhow::Result<ArbiterProcess> {
        let port = free_port()?;
        Ok(ArbiterProcess {
            child: None,
            endpoint: format!("http://127.0.0.1:{port}"),
            data_dir: data_dir.to_path_buf(),
            port,
            args: args.iter().map(|s| s.to_string()).collect(),
            failpoints: None,
            env: Vec::new(),
            stderr: stderr.map(Path::to_path_buf),
            last_exit: None,
            fd_limit: None,
        })
    }

    /// Starts `arbiter serve` on `data_dir` with `args`, stderr going to
    /// `stderr`: serving, or refused (exited before answering).
    pub async fn try_start(data_dir: &Path, args: &[&str], stderr: &Path) -> anyhow::Result<Start> {
        let mut process = Self::new(data_dir, args, Some(stderr))?;
        process.spawn()?;
        // The port accepts connections before the log is open: wait for an
        // answer from the server itself, or for the exit.
        let ready = async {
            process.wait_ready().await?;
            let deadline = Instant::now() + crate::PATIENCE;
            loop {
                if !process.is_running()? {
                    bail!("arbiter exited during start-up");
                }
                let Ok(client) = process.client().await else {
                    tokio::time::sleep(Duration::from_millis(25)).await;
                    continue;
                };
                match client.get_transaction("start-probe").await {
                    Err(arbiter_sdk::ClientError::NotFound(_)) => return Ok(()),
                    Ok(_) => return Ok(()),
                    Err(_) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(25)).await;
                    }
                    Err(e) => bail!("arbiter did not answer in time: {e}"),
                }
            }
        };
        let ready: anyhow::Result<()> = ready.await;
        match ready {
            Ok(()) => Ok(Start::Serving(process)),
            Err(e) => {
                if process.child.is_some()
                    && process
                        .exited_within(Duration::from_secs(10))
                        .await?
                        .is_none()
                {
                    return Err(e);
                }
                let code = process.last_exit.and_then(|s| s.code());
                Ok(Start::Refused {
                    code,
                    stderr: std::fs::read_to_string(stderr).unwrap_or_default(),
                })
            }
        }
    }

    /// Failpoints for the next [`ArbiterProcess::restart`].
    pub fn set_failpoints(&mut self, failpoints: Option<&str>) {
        self.failpoints = failpoints.map(str::to_string);
    }

    /// Whether the process is still running (reaping it if it exited).
    pub fn is_running(&mut self) -> anyhow::Result<bool> {
        let Some(child) = self.child.as_mut() else {
            return Ok(false);
        };
        if let Some(status) = child.try_wait()? {
            self.child = None;
            self.last_exit = Some(status);
            return Ok(false);
        }
        Ok(true)
    }

    /// Waits up to `within` for the process to exit by itself; returns how it
    /// exited, or `None` if it is still running.
    pub async fn exited_within(
        &mut self,
        within: Duration,
    ) -> anyhow::Result<Option<std::process::ExitStatus>> {
        let deadline = Instant::now() + within;
        loop {
            let Some(child) = self.child.as_mut() else {
                bail!("arbiter is not running");
            };
            if let Some(status) = child.try_wait()? {
                self.child = None;
                self.last_exit = Some(status);
                return Ok(Some(status));
            }
            if Instant::now() > deadline {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts the process again (same port, data dir and arguments).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.spawn()?;
        self.wait_ready().await
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("arbiter is still running");
        }
        let mut command = match self.fd_limit {
            Some(limit) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(r#"ulimit -n "$0" && exec "$@""#)
                    .arg(limit.to_string())
                    .arg(arbiter_bin()?);
                sh
            }
            None => Command::new(arbiter_bin()?),
        };
        match &self.failpoints {
            Some(failpoints) => command.env("FAILPOINTS", failpoints),
            None => command.env_remove("FAILPOINTS"),
        };
        let child = command
            .arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stderr(match &self.stderr {
                Some(path) => Stdio::from(std::fs::File::create(path)?),
                None => Stdio::inherit(),
            })
            .spawn()
            .context("starting arbiter")?;
        self.child = Some(child);
        Ok(())
    }

    fn child(&mut self) -> anyhow::Result<&mut Child> {
        self.child.as_mut().context("arbiter is not running")
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + crate::PATIENCE;
        loop {
            if let Some(status) = self.child()?.try_wait()? {
                self.child = None;
                self.last_exit = Some(status);
                bail!("arbiter exited during start-up with {status}");
            }
            if self.answers().await {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("arbiter did not answer on {} in time", self.endpoint);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Whether it answers a call (any status but a transport failure): a
    /// bound port alone may still be opening its log, and refuse it.
    async fn answers(&self) -> bool {
        let Ok(client) = Client::connect(self.endpoint.clone()).await else {
            return false;
        };
        let probe = client.get_transaction("readiness-probe");
        match tokio::time::timeout(Duration::from_secs(2), probe).await {
            Ok(Ok(_)) | Ok(Err(arbiter_sdk::ClientError::NotFound(_))) => true,
            Ok(Err(e)) => !matches!(
                crate::code_of(&e),
                tonic::Code::Unavailable | tonic::Code::Unknown
            ),
            Err(_) => false,
        }
    }

    pub async fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::connect(self.endpoint.clone()).await?)
    }

    /// SIGTERM, then waits for the exit; returns whether it exited successfully.
    pub async fn terminate(&mut self) -> anyhow::Result<bool> {
        let pid = self.child()?.id();
        signal(pid, libc::SIGTERM)?;
        self.wait_exit().await
    }

    /// SIGSTOP: the process stays, frozen (a long pause, as a stalled VM).
    pub fn pause(&mut self) -> anyhow::Result<()> {
        let pid = self.child()?.id();
        signal(pid, libc::SIGSTOP)
    }

    /// SIGCONT after [`ArbiterProcess::pause`].
    pub fn resume(&mut self) -> anyhow::Result<()> {
        let pid = self.child()?.id();
        signal(pid, libc::SIGCONT)
    }

    /// SIGKILL: no chance to clean up.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        let pid = self.child()?.id();
        signal(pid, libc::SIGKILL)?;
        self.wait_exit().await.map(|_| ())
    }

    async fn wait_exit(&mut self) -> anyhow::Result<bool> {
        let deadline = Instant::now() + crate::PATIENCE;
        loop {
            if let Some(status) = self.child()?.try_wait()? {
                self.child = None;
                return Ok(status.success());
            }
            if Instant::now() > deadline {
                bail!("arbiter did not exit in time");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for ArbiterProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[allow(unsafe_code)]
fn signal(pid: u32, sig: libc::c_int) -> anyhow::Result<()> {
    // SAFETY: kill(2) with a pid we spawned and own; no memory is involved.
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    if rc != 0 {
        bail!(
            "kill({pid}, {sig}) failed: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// What a process holds, from `/proc`: open descriptors and resident memory.
#[derive(Clone, Copy, Debug)]
pub struct Usage {
    pub fds: usize,
    /// Of the descriptors, the sockets (connections and listeners).
    pub sockets: usize,
    pub rss_bytes: u64,
}

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} fds ({} sockets), {:.1} MB RSS",
            self.fds,
            self.sockets,
            self.rss_bytes as f64 / 1e6
        )
    }
}

/// The [`Usage`] of process `pid` now.
pub fn usage(pid: u32) -> anyhow::Result<Usage> {
    let mut fds = 0;
    let mut sockets = 0;
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        fds += 1;
        // A descriptor may close between listing and reading its link.
        if let Ok(target) = std::fs::read_link(fd?.path()) {
            sockets += usize::from(target.to_string_lossy().starts_with("socket:"));
        }
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS in /proc status")?;
    Ok(Usage {
        fds,
        sockets,
        rss_bytes: rss_kb * 1024,
    })
}

/// After a scenario that may hit a `return` failpoint: checks that
/// `arbiter` died by the failpoint (SIGABRT) exactly when `expect_crash`,
/// restarts it without failpoints if it did, and waits until `txn_id` is
/// final. Returns whether it crashed, and the final transaction.
pub async fn crash_restart_final(
    arbiter: &mut ArbiterProcess,
    expect_crash: bool,
    txn_id: &str,
    answered: &dyn std::fmt::Debug,
) -> anyhow::Result<(bool, arbiter_sdk::Transaction)> {
    use std::os::unix::process::ExitStatusExt;
    let crashed = match arbiter
        .exited_within(Duration::from_secs(if expect_crash { 20 } else { 1 }))
        .await?
    {
        Some(status) => {
            assert_eq!(
                status.signal(),
                Some(libc::SIGABRT),
                "{txn_id}: died by the failpoint, not otherwise"
            );
            true
        }
        None => false,
    };
    assert_eq!(
        crashed, expect_crash,
        "{txn_id}: crash expected = {expect_crash}, answer {answered:?}"
    );
    if crashed {
        arbiter.set_failpoints(None);
        arbiter.restart().await?;
    }
    let client = arbiter.client().await?;
    let txn = crate::eventually(&format!("{txn_id} is final after the restart"), || async {
        let txn = client.get_transaction(txn_id).await.ok()?;
        matches!(
            txn.state(),
            arbiter_sdk::TxnState::Committed | arbiter_sdk::TxnState::Aborted
        )
        .then_some(txn)
    })
    .await;
    Ok((crashed, txn))
}
