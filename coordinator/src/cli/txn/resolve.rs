//! `arbiter txn resolve-branch ID BRANCH --as committed|rolled-back --reason R`:
//! mark a branch whose participant is gone for good as finished by hand, so a
//! decided transaction can finish. Shown on the branch forever, and audited.

use arbiter_proto::v1 as pb;
use clap::{Args, ValueEnum};
use serde_json::json;

use crate::cli::connect::{Conn, confirm};
use crate::cli::output::say;
use crate::cli::output::{self, Format};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Resolution {
    Committed,
    RolledBack,
}

#[derive(Debug, Args)]
pub struct ResolveArgs {
    /// Transaction id.
    pub id: String,
    /// Branch id.
    pub branch: String,
    /// What was done to the branch by hand.
    #[arg(long = "as", value_enum)]
    pub resolution: Resolution,
    /// Why (required; goes into the audit log and onto the branch).
    #[arg(long)]
    pub reason: String,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
}

pub async fn run(conn: &Conn, args: ResolveArgs) -> anyhow::Result<()> {
    let as_word = match args.resolution {
        Resolution::Committed => "committed",
        Resolution::RolledBack => "rolled back",
    };
    confirm(
        &format!(
            "Mark branch {} of {} as {as_word} by hand ({})?",
            args.branch, args.id, args.reason
        ),
        args.yes,
    )?;
    let resolution = match args.resolution {
        Resolution::Committed => pb::BranchResolution::Committed,
        Resolution::RolledBack => pb::BranchResolution::RolledBack,
    };
    let txn = conn
        .admin()
        .await?
        .resolve_branch(pb::ResolveBranchRequest {
            txn_id: args.id,
            branch_id: args.branch.clone(),
            resolution: resolution as i32,
            reason: args.reason,
        })
        .await?
        .into_inner()
        .transaction
        .ok_or_else(|| anyhow::anyhow!("the coordinator sent no transaction"))?;
    match conn.output {
        Format::Json => output::json(&json!({
            "txn_id": txn.txn_id,
            "branch_id": args.branch,
            "resolved_as": as_word,
            "state": output::state_name(txn.state),
        })),
        Format::Table => say!(
            "branch {} of {} resolved as {as_word}; the transaction is now {}",
            args.branch,
            txn.txn_id,
            output::state_name(txn.state)
        ),
    }
    Ok(())
}
