//! Child processes: the `arbiter` coordinator under test and the echo server,
//! both started the same way, plus their CPU time and memory from `/proc`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A child process serving gRPC on a loopback port.
pub struct Server {
    child: Option<Child>,
    pub endpoint: String,
    port: u16,
    program: PathBuf,
    args: Vec<String>,
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The `arbiter` binary of the same profile: the one next to this bench
/// binary (as `cargo build --workspace` leaves it), else built with
/// `cargo build -p arbiter` first. `ARBITER_BIN` names another one.
///
/// Using the workspace's own binary matters on a small machine: a `-p`
/// build resolves features for a different graph and can rebuild it.
pub fn arbiter_bin() -> anyhow::Result<PathBuf> {
    if let Ok(path) = std::env::var("ARBITER_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("no directory for the bench binary")?;
    let bin = dir.join("arbiter");
    if bin.is_file() {
        eprintln!(
            "arbiter-bench: using {} (rebuild it with cargo build --workspace{} after changes)",
            bin.display(),
            if dir.ends_with("release") {
                " --release"
            } else {
                ""
            }
        );
        return Ok(bin);
    }
    let mut build = Command::new(env!("CARGO"));
    build.args(["build", "-q", "-p", "arbiter", "--bin", "arbiter"]);
    if dir.ends_with("release") {
        build.arg("--release");
    }
    if !build.status().context("cargo build of arbiter")?.success() || !bin.is_file() {
        bail!("could not build {}", bin.display());
    }
    Ok(bin)
}

impl Server {
    /// `arbiter serve` on a fresh port and `data_dir`, with `extra` arguments.
    pub async fn arbiter(data_dir: &Path, extra: &str) -> anyhow::Result<Server> {
        let port = free_port()?;
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--data-dir".into(),
            data_dir.display().to_string(),
        ];
        args.extend(extra.split_whitespace().map(str::to_string));
        Server::start(arbiter_bin()?, args, port).await
    }

    /// This binary's hidden echo server mode.
    pub async fn echo() -> anyhow::Result<Server> {
        let port = free_port()?;
        let args = vec![
            "echo-server".into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
        ];
        Server::start(std::env::current_exe()?, args, port).await
    }

    async fn start(program: PathBuf, args: Vec<String>, port: u16) -> anyhow::Result<Server> {
        let mut server = Server {
            child: None,
            endpoint: format!("http://127.0.0.1:{port}"),
            port,
            program,
            args,
        };
        server.restart().await?;
        Ok(server)
    }

    /// Starts the process again with the same arguments; waits until it answers.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        let child = Command::new(&self.program)
            .args(&self.args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", self.program.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                bail!("{} did not start listening", self.program.display());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// Waits until it answers a call (a bound port may still be opening
    /// its log).
    pub async fn wait_answering(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(mut admin) =
                arbiter_proto::v1::admin_client::AdminClient::connect(self.endpoint.clone()).await
                && admin
                    .stats(arbiter_proto::v1::StatsRequest {})
                    .await
                    .is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{} did not answer in time", self.endpoint);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `signal` (e.g. SIGTERM) and waits for the exit.
    #[allow(unsafe_code)]
    pub fn signal_and_wait(&mut self, signal: i32) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on a child we spawned; no memory is involved.
            unsafe { libc::kill(child.id() as libc::pid_t, signal) };
            let _ = child.wait();
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// CPU seconds (user + system) a process has used so far.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

#[allow(unsafe_code)]
fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// Resident memory of a process, in MiB.
/// Bytes the process has caused to be written to storage (`write_bytes` of
/// `/proc/PID/io`), log files and sled's own rewrites included.
pub fn write_bytes(pid: u32) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    let line = io.lines().find(|l| l.starts_with("write_bytes:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

pub fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Total size of the files under `dir`, in MiB.
pub fn dir_mib(dir: &Path) -> f64 {
    fn walk(dir: &Path) -> u64 {
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| match e.metadata() {
                        Ok(m) if m.is_dir() => walk(&e.path()),
                        Ok(m) => m.len(),
                        Err(_) => 0,
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    walk(dir) as f64 / (1024.0 * 1024.0)
}
