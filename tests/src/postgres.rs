//! Throwaway PostgreSQL clusters for tests: `initdb` into a temp dir, started
//! with `pg_ctl` on a free loopback port, stopped (immediately) on drop.
//! As root, the server runs as the `postgres` user (PostgreSQL refuses root).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use arbiter_sdk::tokio_postgres::{self, NoTls};

use crate::process::free_port;

pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    run_as: Option<String>,
    pub port: u16,
    /// The server options it was started with, to start it again.
    options: String,
}

/// Where `initdb` and `pg_ctl` are: on `PATH`, or Debian's versioned directory.
fn pg_bin_dir() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let mut candidates = on_path;
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<PathBuf> = entries.flatten().map(|e| e.path().join("bin")).collect();
        versions.sort();
        candidates.extend(versions.into_iter().rev());
    }
    candidates
        .into_iter()
        .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file())
        .context("PostgreSQL server binaries (initdb, pg_ctl) not found; install the postgresql package or set PG_BIN")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl PgCluster {
    /// A new cluster with `max_prepared_transactions` set, started and ready.
    pub fn start(max_prepared_transactions: u32) -> anyhow::Result<PgCluster> {
        let bin = pg_bin_dir()?;
        let dir = tempfile::tempdir()?;
        let run_as = is_root().then(|| "postgres".to_string());
        if let Some(user) = &run_as {
            let status = Command::new("chown")
                .arg(format!("{user}:"))
                .arg(dir.path())
                .status()?;
            if !status.success() {
                bail!("could not hand {} to {user}", dir.path().display());
            }
        }
        let mut cluster = PgCluster {
            dir,
            bin,
            run_as,
            port: 0,
            options: String::new(),
        };
        let data = cluster.data_dir();
        cluster.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        )?;
        // A port can be taken between picking and binding: try a few.
        let mut last_error = None;
        for _ in 0..5 {
            cluster.port = free_port()?;
            let options = format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_prepared_transactions={} \
                 -c max_connections=200 -c fsync=off -c shared_buffers=32MB",
                cluster.port,
                cluster.dir.path().display(),
                max_prepared_transactions
            );
            cluster.options = options;
            match cluster.start_server() {
                Ok(()) => return Ok(cluster),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("pg_ctl start failed")))
    }

    fn start_server(&self) -> anyhow::Result<()> {
        let data = self.data_dir();
        let log = self.dir.path().join("server.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                &data,
                "-l",
                &log.to_string_lossy(),
                "-w",
                "-t",
                "60",
                "-o",
                &self.options,
                "start",
            ],
        )
    }

    /// Stops the server at once (`-m immediate`: like a crash).
    pub fn stop(&self) -> anyhow::Result<()> {
        self.run(
            "pg_ctl",
            &["-D", &self.data_dir(), "-m", "immediate", "-w", "stop"],
        )
    }

    /// Starts the server again after [`PgCluster::stop`], on the same port.
    pub fn start_again(&self) -> anyhow::Result<()> {
        self.start_server()
    }

    fn data_dir(&self) -> String {
        self.dir.path().join("data").to_string_lossy().into_owned()
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(path);
                c
            }
            None => Command::new(path),
        }
    }

    fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<()> {
        let output = self
            .command(program)
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {program}"))?;
        if !output.status.success() {
            let log =
                std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
            bail!(
                "{program} failed: {}{}\n{log}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    /// The connection string of database `db`.
    pub fn url(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={db}",
            self.port
        )
    }

    /// The `postgres://` URL of database `db`, as `arbiter serve --store` takes it.
    pub fn store_url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// A single connection to `db` (its driver runs in the background).
    pub async fn connect(&self, db: &str) -> anyhow::Result<tokio_postgres::Client> {
        let (client, connection) = tokio_postgres::connect(&self.url(db), NoTls).await?;
        tokio::spawn(connection);
        Ok(client)
    }

    /// Creates database `name`.
    pub async fn create_database(&self, name: &str) -> anyhow::Result<()> {
        let admin = self.connect("postgres").await?;
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await?;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let data = self.data_dir();
        let _ = self
            .command("pg_ctl")
            .args(["-D", &data, "-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
