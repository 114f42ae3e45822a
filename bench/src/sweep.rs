//! `arbiter-bench sweep`: one coordinator, a table over concurrency and
//! branch count, each row with its own echo ceiling.

use std::collections::HashMap;

use crate::RunArgs;
use crate::load::{Setup, echo_ceiling, measure};

const CONCURRENCY: [usize; 5] = [1, 4, 16, 64, 256];
const BRANCHES: [usize; 4] = [1, 2, 4, 8];

pub async fn run(args: &RunArgs) -> anyhow::Result<()> {
    let mut base = args.clone();
    base.participants = base.participants.max(*BRANCHES.iter().max().unwrap_or(&8));
    let setup = Setup::new(&base).await?;
    let mut echo: HashMap<usize, f64> = HashMap::new();
    let mut rows = Vec::new();
    if !args.json {
        println!(
            "concurrency  branches  tx/s     p50 ms  p99 ms  RPCs/tx  echo RPC/s  efficiency  flushes/tx"
        );
    }
    for c in CONCURRENCY {
        if !args.no_echo {
            echo.insert(c, echo_ceiling(args, c).await?);
        }
        for k in BRANCHES {
            let mut run = base.clone();
            run.concurrency = c;
            run.branches = k;
            let report = measure(&setup, &run, echo.get(&c).copied()).await?;
            if args.json {
                rows.push(report.to_json());
            } else {
                println!(
                    "{c:<12} {k:<9} {:<8.0} {:<7.2} {:<7.2} {:<8.2} {:<11} {:<11} {:.3}",
                    report.tx_per_s,
                    report.latency_ms[0],
                    report.latency_ms[2],
                    report.rpcs_per_tx,
                    report
                        .echo_rpc_per_s
                        .map_or("-".into(), |e| format!("{e:.0}")),
                    report
                        .efficiency()
                        .map_or("-".into(), |e| format!("{e:.2}")),
                    report.flushes_per_tx,
                );
            }
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    }
    Ok(())
}
