//! `arbiter txn retry ID | --all-stuck`: the next attempt runs now, backoff reset.

use arbiter_proto::v1 as pb;
use clap::Args;
use serde_json::json;

use crate::cli::connect::{Conn, UsageError};
use crate::cli::output::say;
use crate::cli::output::{self, Format};

#[derive(Debug, Args)]
pub struct RetryArgs {
    /// Transaction id (or use --all-stuck).
    pub id: Option<String>,
    /// Retry every stuck transaction.
    #[arg(long, conflicts_with = "id")]
    pub all_stuck: bool,
}

pub async fn run(conn: &Conn, args: RetryArgs) -> anyhow::Result<()> {
    if args.id.is_none() && !args.all_stuck {
        return Err(UsageError("give a transaction id, or --all-stuck".into()).into());
    }
    let retried = conn
        .admin()
        .await?
        .retry_now(pb::RetryNowRequest {
            txn_id: args.id.unwrap_or_default(),
            all_stuck: args.all_stuck,
        })
        .await?
        .into_inner()
        .txn_ids;
    match conn.output {
        Format::Json => output::json(&json!({ "retried": retried })),
        Format::Table if retried.is_empty() => say!("nothing to retry"),
        Format::Table => say!("retrying now: {}", retried.join(", ")),
    }
    Ok(())
}
