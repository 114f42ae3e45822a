//! What one measurement found, printed as text or JSON.

use serde_json::json;

/// One measured configuration.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub mode: &'static str,
    pub api: &'static str,
    pub branches: usize,
    pub concurrency: usize,
    pub wait: bool,
    pub abort_ratio: f64,
    pub read_only_branches: usize,
    pub seconds: f64,
    pub committed: u64,
    pub aborted: u64,
    pub errors: u64,
    pub tx_per_s: f64,
    /// Latency percentiles in milliseconds: p50, p90, p99, p99.9.
    pub latency_ms: [f64; 4],
    pub rpcs_per_tx: f64,
    pub echo_rpc_per_s: Option<f64>,
    pub flushes_per_tx: f64,
    pub records_per_flush: f64,
    /// Bytes of keys and values the coordinator handed to its log per
    /// finished transaction.
    pub log_bytes_per_tx: f64,
    /// Bytes the coordinator process wrote to storage per finished
    /// transaction (from `/proc`; sled's own rewrites included).
    pub disk_bytes_per_tx: Option<f64>,
    pub cpu_cores: Option<f64>,
    pub rss_mib: Option<f64>,
    /// PostgreSQL transactions committed in the log's database per finished
    /// transaction (with `--store postgres://`).
    pub store_commits_per_tx: Option<f64>,
    /// Coordinator nodes the load was spread over.
    pub nodes: usize,
}

impl Report {
    /// tx/s × RPCs per tx ÷ echo RPC/s.
    pub fn efficiency(&self) -> Option<f64> {
        self.echo_rpc_per_s
            .filter(|e| *e > 0.0)
            .map(|echo| self.tx_per_s * self.rpcs_per_tx / echo)
    }

    /// Coordinator CPU time per finished transaction, in microseconds: less
    /// sensitive to a noisy machine than tx/s.
    pub fn cpu_us_per_tx(&self) -> Option<f64> {
        let txns = (self.committed + self.aborted) as f64;
        self.cpu_cores
            .filter(|_| txns > 0.0)
            .map(|cores| cores * self.seconds * 1e6 / txns)
    }

    pub fn print_text(&self) {
        let opt =
            |v: Option<f64>, unit: &str| v.map_or("-".to_string(), |v| format!("{v:.2}{unit}"));
        println!(
            "{} {} branches={} read-only={} concurrency={} wait={} abort-ratio={} nodes={}",
            self.mode,
            self.api,
            self.branches,
            self.read_only_branches,
            self.concurrency,
            self.wait,
            self.abort_ratio,
            self.nodes
        );
        println!(
            "  transactions/s   {:.0}   ({} committed, {} aborted, {} errors in {:.1}s)",
            self.tx_per_s, self.committed, self.aborted, self.errors, self.seconds
        );
        let [p50, p90, p99, p999] = self.latency_ms;
        println!("  latency ms       p50 {p50:.2}  p90 {p90:.2}  p99 {p99:.2}  p99.9 {p999:.2}");
        println!("  RPCs per tx      {:.2}", self.rpcs_per_tx);
        println!("  echo RPC/s       {}", opt(self.echo_rpc_per_s, ""));
        println!("  RPC efficiency   {}", opt(self.efficiency(), ""));
        println!(
            "  log flushes/tx   {:.3}   ({:.1} records per flush)",
            self.flushes_per_tx, self.records_per_flush
        );
        println!(
            "  log bytes/tx     {:.0}   (disk writes {} bytes/tx)",
            self.log_bytes_per_tx,
            self.disk_bytes_per_tx
                .map_or("-".to_string(), |b| format!("{b:.0}"))
        );
        if let Some(commits) = self.store_commits_per_tx {
            println!("  PostgreSQL       {commits:.3} commits per tx");
        }
        println!(
            "  coordinator      CPU {} cores ({} µs per tx), RSS {}",
            opt(self.cpu_cores, ""),
            self.cpu_us_per_tx()
                .map_or("-".to_string(), |us| format!("{us:.0}")),
            opt(self.rss_mib, " MiB")
        );
    }

    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "mode": self.mode,
            "api": self.api,
            "branches": self.branches,
            "concurrency": self.concurrency,
            "wait": self.wait,
            "abort_ratio": self.abort_ratio,
            "read_only_branches": self.read_only_branches,
            "seconds": self.seconds,
            "committed": self.committed,
            "aborted": self.aborted,
            "errors": self.errors,
            "tx_per_s": self.tx_per_s,
            "latency_ms": { "p50": self.latency_ms[0], "p90": self.latency_ms[1], "p99": self.latency_ms[2], "p999": self.latency_ms[3] },
            "rpcs_per_tx": self.rpcs_per_tx,
            "echo_rpc_per_s": self.echo_rpc_per_s,
            "rpc_efficiency": self.efficiency(),
            "flushes_per_tx": self.flushes_per_tx,
            "records_per_flush": self.records_per_flush,
            "log_bytes_per_tx": self.log_bytes_per_tx,
            "disk_bytes_per_tx": self.disk_bytes_per_tx,
            "coordinator_cpu_cores": self.cpu_cores,
            "coordinator_cpu_us_per_tx": self.cpu_us_per_tx(),
            "coordinator_rss_mib": self.rss_mib,
            "store_commits_per_tx": self.store_commits_per_tx,
            "nodes": self.nodes,
        })
    }
}

/// p50, p90, p99 and p99.9 of latencies in microseconds, in milliseconds.
pub fn percentiles(mut micros: Vec<u32>) -> [f64; 4] {
    if micros.is_empty() {
        return [0.0; 4];
    }
    micros.sort_unstable();
    let at = |q: f64| {
        let i = ((micros.len() as f64 * q).ceil() as usize).clamp(1, micros.len()) - 1;
        f64::from(micros[i]) / 1000.0
    };
    [at(0.50), at(0.90), at(0.99), at(0.999)]
}
