//! `arbiter txn abort|commit ID --reason R`: force the outcome of an
//! undecided transaction. Recorded in the audit log.

use arbiter_proto::v1 as pb;
use clap::Args;
use serde_json::json;

use crate::cli::connect::{Conn, confirm};
use crate::cli::output::say;
use crate::cli::output::{self, Format};

#[derive(Debug, Args)]
pub struct ForceArgs {
    /// Transaction id.
    pub id: String,
    /// Why (required; goes into the audit log).
    #[arg(long)]
    pub reason: String,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
}

pub async fn run(conn: &Conn, args: ForceArgs, commit: bool) -> anyhow::Result<()> {
    let verb = if commit { "Commit" } else { "Abort" };
    confirm(
        &format!("{verb} transaction {} ({})?", args.id, args.reason),
        args.yes,
    )?;
    let outcome = if commit {
        pb::ForcedOutcome::Commit
    } else {
        pb::ForcedOutcome::Abort
    };
    let response = conn
        .admin()
        .await?
        .force_outcome(pb::ForceOutcomeRequest {
            txn_id: args.id,
            outcome: outcome as i32,
            reason: args.reason,
        })
        .await?
        .into_inner();
    match conn.output {
        Format::Json => output::json(&json!({
            "txn_id": response.txn_id,
            "state": output::state_name(response.state),
            "reason": response.reason,
        })),
        Format::Table => say!(
            "transaction {} is now {}: {}",
            response.txn_id,
            output::state_name(response.state),
            response.reason
        ),
    }
    Ok(())
}
