//! `arbiter-bench watchers`: the same load on one coordinator without
//! watchers, with N subscribers of `Admin.WatchTransactions` reading every
//! change, and without again (to show the run's own drift), in one run. The
//! transaction path must not slow down for watchers that keep up.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arbiter_proto::v1 as pb;
use arbiter_proto::v1::admin_client::AdminClient;
use clap::Args;

use crate::RunArgs;
use crate::load::{Setup, measure};

#[derive(Clone, Debug, Args)]
pub struct WatchersArgs {
    /// Feed subscribers during the middle measurement.
    #[arg(long, default_value_t = 10)]
    pub watchers: usize,
    /// The watchers ask only for stuck transactions (none here): the cost
    /// of the feed itself, without delivering changes.
    #[arg(long)]
    pub stuck_only: bool,
    #[command(flatten)]
    pub run: RunArgs,
}

/// What the watchers saw.
#[derive(Default)]
struct Seen {
    events: AtomicU64,
    lagged: AtomicU64,
}

/// One subscriber reading everything until stopped; subscribes again from
/// now after a lag notice (counted).
async fn watch(endpoint: String, stuck_only: bool, seen: Arc<Seen>) -> anyhow::Result<()> {
    let mut admin = AdminClient::connect(endpoint).await?;
    loop {
        let request = pb::WatchTransactionsRequest {
            stuck_only,
            ..Default::default()
        };
        let mut stream = admin.watch_transactions(request).await?.into_inner();
        while let Some(message) = stream.message().await? {
            seen.events
                .fetch_add(message.events.len() as u64, Ordering::Relaxed);
            if message.lagged.is_some() {
                seen.lagged.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

pub async fn compare(args: &WatchersArgs) -> anyhow::Result<()> {
    let setup = Setup::new(&args.run).await?;
    let endpoint = setup
        .endpoints
        .first()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no coordinator started"))?;
    let without = measure(&setup, &args.run, None).await?;
    let seen = Arc::new(Seen::default());
    let tasks: Vec<_> = (0..args.watchers)
        .map(|_| tokio::spawn(watch(endpoint.clone(), args.stuck_only, seen.clone())))
        .collect();
    let with = measure(&setup, &args.run, None).await?;
    for task in &tasks {
        task.abort();
    }
    let events = seen.events.load(Ordering::Relaxed);
    let lagged = seen.lagged.load(Ordering::Relaxed);
    let again = measure(&setup, &args.run, None).await?;

    println!(
        "{} in flight, {} branch(es), {}, {} s per measurement",
        args.run.concurrency,
        args.run.branches,
        without.mode,
        args.run.duration.as_secs()
    );
    println!(
        "{:<22} {:>9} {:>9} {:>9} {:>10} {:>8}",
        "", "tx/s", "p50 ms", "p99 ms", "cpu cores", "RSS MiB"
    );
    let watched = format!("{} watchers", args.watchers);
    for (name, r) in [
        ("no watchers", &without),
        (watched.as_str(), &with),
        ("no watchers again", &again),
    ] {
        println!(
            "{:<22} {:>9.0} {:>9.2} {:>9.2} {:>10} {:>8}",
            name,
            r.tx_per_s,
            r.latency_ms[0],
            r.latency_ms[2],
            r.cpu_cores.map_or("-".into(), |c| format!("{c:.2}")),
            r.rss_mib.map_or("-".into(), |m| format!("{m:.0}")),
        );
    }
    let baseline = (without.tx_per_s + again.tx_per_s) / 2.0;
    println!(
        "with watchers / without: {:.2}x; changes delivered: {events} ({:.1} per transaction per watcher); lag notices: {lagged}",
        with.tx_per_s / baseline.max(f64::MIN_POSITIVE),
        events as f64
            / ((with.committed + with.aborted).max(1) as f64 * args.watchers.max(1) as f64),
    );
    if with.committed + with.aborted == 0 {
        anyhow::bail!("no transaction completed with watchers");
    }
    Ok(())
}
