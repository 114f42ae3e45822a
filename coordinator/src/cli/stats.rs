//! `arbiter stats`: counts by state, stuck, oldest unfinished, retry queue.

use arbiter_proto::v1 as pb;
use clap::Args;
use serde_json::json;

use crate::cli::connect::Conn;
use crate::cli::output::say;
use crate::cli::output::{self, Format};

#[derive(Debug, Args)]
pub struct StatsArgs {
    #[command(flatten)]
    pub conn: Conn,
}

pub async fn run(args: StatsArgs) -> anyhow::Result<()> {
    let s = args
        .conn
        .admin()
        .await?
        .stats(pb::StatsRequest {})
        .await?
        .into_inner();
    let per_flush = if s.log_batches == 0 {
        0.0
    } else {
        s.log_records as f64 / s.log_batches as f64
    };
    match args.conn.output {
        Format::Json => output::json(&json!({
            "unfinished": s.unfinished.iter().map(|c| (output::state_name(c.state).to_string(), json!(c.count))).collect::<serde_json::Map<_, _>>(),
            "committed_since_start": s.committed_since_start,
            "aborted_since_start": s.aborted_since_start,
            "stuck": s.stuck,
            "oldest_unfinished_age_ms": s.oldest_unfinished_age_ms,
            "retry_queue_depth": s.retry_queue_depth,
            "log_batches": s.log_batches,
            "log_records": s.log_records,
            "log_bytes": s.log_bytes,
            "log_damaged_reads": s.log_damaged_reads,
        })),
        Format::Table => {
            for c in &s.unfinished {
                say!("{:<26}{}", output::state_name(c.state), c.count);
            }
            say!("{:<26}{}", "COMMITTED since start", s.committed_since_start);
            say!("{:<26}{}", "ABORTED since start", s.aborted_since_start);
            say!("{:<26}{}", "stuck", s.stuck);
            say!(
                "{:<26}{}",
                "oldest unfinished",
                output::age(s.oldest_unfinished_age_ms)
            );
            say!("{:<26}{}", "retry queue", s.retry_queue_depth);
            say!(
                "{:<26}{} records in {} flushes ({per_flush:.1} per flush), {} bytes",
                "log writes",
                s.log_records,
                s.log_batches,
                s.log_bytes
            );
            if s.log_damaged_reads > 0 {
                say!(
                    "{:<26}{} (see the coordinator's log)",
                    "DAMAGED log reads",
                    s.log_damaged_reads
                );
            }
        }
    }
    Ok(())
}
