//! Closed-loop load: `concurrency` tasks each run one transaction after the
//! other against the coordinator; the measured window follows a warmup.

use std::sync::Arc;
use std::time::Instant;

use arbiter_proto::v1 as pb;
use arbiter_proto::v1::admin_client::AdminClient;
use arbiter_sdk::{Branch, Client, Execute, Mode, TxnState};

use crate::child::{self, Server};
use crate::participants::{Participants, RESOURCE};
use crate::report::{Report, percentiles};
use crate::{Api, ModeArg, Protocol, RunArgs, echo};

/// The coordinator nodes (started, or one given) and the participants.
pub struct Setup {
    pub coordinators: Vec<Server>,
    /// Where clients reach each node; the load is spread over them.
    pub endpoints: Vec<String>,
    pub participants: Participants,
    pub data_dir: Option<tempfile::TempDir>,
}

impl Setup {
    pub async fn new(args: &RunArgs) -> anyhow::Result<Setup> {
        let participants = Participants::start(args.participants).await?;
        if let Some(endpoint) = &args.coordinator {
            return Ok(Setup {
                coordinators: Vec::new(),
                endpoints: vec![endpoint.clone()],
                participants,
                data_dir: None,
            });
        }
        let dir = tempfile::tempdir()?;
        let mut coordinators = Vec::new();
        for n in 0..args.nodes.max(1) {
            let extra = format!("{} --node-id bench-{n}", args.arbiter_args);
            let server = Server::arbiter(&dir.path().join(format!("data{n}")), &extra).await?;
            server.wait_answering().await?;
            coordinators.push(server);
        }
        Ok(Setup {
            endpoints: coordinators.iter().map(|s| s.endpoint.clone()).collect(),
            coordinators,
            participants,
            data_dir: Some(dir),
        })
    }

    fn pids(&self) -> Vec<u32> {
        self.coordinators.iter().filter_map(Server::pid).collect()
    }

    /// A measure summed over the coordinator processes; `None` if any is
    /// unknown.
    fn sum(&self, of: impl Fn(u32) -> Option<f64>) -> Option<f64> {
        let pids = self.pids();
        if pids.is_empty() {
            return None;
        }
        pids.into_iter().map(of).sum()
    }
}

#[derive(Default)]
struct Tally {
    committed: u64,
    aborted: u64,
    errors: u64,
    latencies_us: Vec<u32>,
    client_rpcs: u64,
    txns: u64,
}

pub async fn one_txn(
    client: &Client,
    args: &RunArgs,
    endpoints: &[String],
    abort: bool,
) -> (Option<TxnState>, u64) {
    let mode = match args.mode {
        ModeArg::TwoPhase => Mode::TwoPhase,
        ModeArg::Tcc => Mode::Tcc,
        ModeArg::Saga => Mode::Saga,
    };
    let branch = |i: usize| {
        let marker: &[u8] = if abort && i == 0 {
            b"no"
        } else if i + args.read_only_branches >= args.branches {
            b"ro"
        } else {
            b"+1"
        };
        let mut payload = marker.to_vec();
        payload.resize(args.payload_bytes.max(marker.len()), b'.');
        let endpoint = &endpoints[i % endpoints.len()];
        match args.protocol {
            Protocol::Grpc => Branch::new(endpoint, RESOURCE),
            Protocol::Http => Branch::http(endpoint, RESOURCE),
        }
        .payload(payload)
    };
    match args.api {
        Api::Execute => {
            let mut txn = match mode {
                Mode::Tcc => Execute::tcc(),
                Mode::Saga => Execute::saga(),
                _ => Execute::two_phase(),
            };
            for i in 0..args.branches {
                txn = txn.branch(branch(i));
            }
            let outcome = client.execute(txn.wait(args.wait)).await;
            (outcome.ok().map(|o| o.state), 1)
        }
        Api::Steps => {
            let mut rpcs = 1;
            let Ok(id) = client.begin(mode, None).await else {
                return (None, rpcs);
            };
            for i in 0..args.branches {
                rpcs += 1;
                if client.register_branch(&id, &branch(i)).await.is_err() {
                    return (None, rpcs);
                }
            }
            rpcs += 1;
            (
                client.commit(&id, args.wait).await.ok().map(|o| o.state),
                rpcs,
            )
        }
    }
}

/// The coordinators' log counters, summed: (batches, records, bytes).
async fn admin_log_counts(
    admins: &mut [AdminClient<tonic::transport::Channel>],
) -> (u64, u64, u64) {
    let mut total = (0, 0, 0);
    for admin in admins {
        if let Ok(s) = admin.stats(pb::StatsRequest {}).await {
            let s = s.into_inner();
            total.0 += s.log_batches;
            total.1 += s.log_records;
            total.2 += s.log_bytes;
        }
    }
    total
}

/// Runs the load for `args` against `setup` and measures it.
pub async fn measure(
    setup: &Setup,
    args: &RunArgs,
    echo_rpc_per_s: Option<f64>,
) -> anyhow::Result<Report> {
    let mut clients = Vec::new();
    for _ in 0..args.connections.max(1) {
        for endpoint in &setup.endpoints {
            clients.push(Client::connect(endpoint.clone()).await?);
        }
    }
    let mut admins = Vec::new();
    for endpoint in &setup.endpoints {
        admins.push(AdminClient::connect(endpoint.clone()).await?);
    }
    let pg = crate::cluster::PgStats::of(&args.arbiter_args).await;
    let endpoints = Arc::new(match args.protocol {
        Protocol::Grpc => setup.participants.endpoints(),
        Protocol::Http => setup.participants.http_endpoints(),
    });
    let args_shared = Arc::new(args.clone());
    let start = Instant::now();
    let measure_from = start + args.warmup;
    let end = measure_from + args.duration;
    let calls_before = setup.participants.calls();

    let mut tasks = Vec::new();
    for i in 0..args.concurrency.max(1) {
        let client = clients[i % clients.len()].clone();
        let (args, endpoints) = (args_shared.clone(), endpoints.clone());
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            loop {
                let began = Instant::now();
                if began >= end {
                    return tally;
                }
                let abort = args.abort_ratio > 0.0 && fastrand::f64() < args.abort_ratio;
                let (state, rpcs) = one_txn(&client, &args, &endpoints, abort).await;
                let done = Instant::now();
                tally.client_rpcs += rpcs;
                tally.txns += 1;
                if began < measure_from || done > end {
                    continue;
                }
                match state {
                    Some(TxnState::Committed | TxnState::Committing) => tally.committed += 1,
                    Some(TxnState::Aborted | TxnState::Aborting) => tally.aborted += 1,
                    _ => tally.errors += 1,
                }
                tally.latencies_us.push(
                    done.duration_since(began)
                        .as_micros()
                        .min(u128::from(u32::MAX)) as u32,
                );
            }
        }));
    }

    tokio::time::sleep_until(measure_from.into()).await;
    let cpu_before = setup.sum(child::cpu_seconds);
    let log_before = admin_log_counts(&mut admins).await;
    let disk_before = setup.sum(|pid| child::write_bytes(pid).map(|b| b as f64));
    let commits_before = pg.commits().await;
    tokio::time::sleep_until(end.into()).await;
    let cpu_after = setup.sum(child::cpu_seconds);
    let log_after = admin_log_counts(&mut admins).await;
    let disk_after = setup.sum(|pid| child::write_bytes(pid).map(|b| b as f64));
    let commits_after = pg.commits().await;
    let rss = setup.sum(child::rss_mib);

    let mut total = Tally::default();
    for task in tasks {
        let t = task.await?;
        total.committed += t.committed;
        total.aborted += t.aborted;
        total.errors += t.errors;
        total.client_rpcs += t.client_rpcs;
        total.txns += t.txns;
        total.latencies_us.extend(t.latencies_us);
    }
    let seconds = args.duration.as_secs_f64();
    let measured = total.committed + total.aborted;
    let participant_calls = setup.participants.calls() - calls_before;
    let (batches, records) = (log_after.0 - log_before.0, log_after.1 - log_before.1);
    let log_bytes = log_after.2 - log_before.2;
    let per_tx = |bytes: u64| bytes as f64 / measured.max(1) as f64;
    Ok(Report {
        mode: match args.mode {
            ModeArg::TwoPhase => "2pc",
            ModeArg::Tcc => "tcc",
            ModeArg::Saga => "saga",
        },
        api: match args.api {
            Api::Execute => "execute",
            Api::Steps => "steps",
        },
        branches: args.branches,
        concurrency: args.concurrency,
        wait: args.wait,
        abort_ratio: args.abort_ratio,
        read_only_branches: args.read_only_branches,
        seconds,
        committed: total.committed,
        aborted: total.aborted,
        errors: total.errors,
        tx_per_s: measured as f64 / seconds,
        latency_ms: percentiles(total.latencies_us),
        rpcs_per_tx: (total.client_rpcs + participant_calls) as f64 / total.txns.max(1) as f64,
        echo_rpc_per_s,
        flushes_per_tx: batches as f64 / measured.max(1) as f64,
        records_per_flush: records as f64 / batches.max(1) as f64,
        log_bytes_per_tx: per_tx(log_bytes),
        disk_bytes_per_tx: disk_before
            .zip(disk_after)
            .map(|(b, a)| (a - b).max(0.0) / measured.max(1) as f64),
        store_commits_per_tx: commits_before
            .zip(commits_after)
            .map(|(b, a)| a.saturating_sub(b) as f64 / measured.max(1) as f64),
        nodes: setup.endpoints.len(),
        cpu_cores: cpu_before.zip(cpu_after).map(|(b, a)| (a - b) / seconds),
        rss_mib: rss,
    })
}

/// The echo ceiling for `concurrency`, in its own process.
pub async fn echo_ceiling(args: &RunArgs, concurrency: usize) -> anyhow::Result<f64> {
    let server = Server::echo().await?;
    echo::measure(
        &server.endpoint,
        concurrency,
        args.connections,
        args.warmup,
        args.duration,
    )
    .await
}

/// `arbiter-bench run`.
pub async fn run_once(args: &RunArgs) -> anyhow::Result<()> {
    let echo = if args.no_echo {
        None
    } else {
        Some(echo_ceiling(args, args.concurrency).await?)
    };
    let setup = Setup::new(args).await?;
    let report = measure(&setup, args, echo).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    } else {
        report.print_text();
        if let (Some(dir), false) = (&setup.data_dir, args.arbiter_args.contains("--store")) {
            println!("  data dir         {:.1} MiB", child::dir_mib(dir.path()));
        }
    }
    if report.committed + report.aborted == 0 {
        anyhow::bail!("no transaction completed ({} errors)", report.errors);
    }
    Ok(())
}
