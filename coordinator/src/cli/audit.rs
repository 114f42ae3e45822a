//! `arbiter audit ls`: every admin action that changed something.

use arbiter_proto::v1 as pb;
use clap::{Args, Subcommand};
use serde_json::json;

use crate::cli::connect::Conn;
use crate::cli::output::{self, Cell, Format, Table};

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(flatten)]
    pub conn: Conn,
    #[command(subcommand)]
    pub command: AuditCommand,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// List admin actions, newest first.
    Ls {
        /// At most this many entries.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        limit: u32,
    },
}

pub async fn run(args: AuditArgs) -> anyhow::Result<()> {
    let AuditCommand::Ls { limit } = args.command;
    let entries = args
        .conn
        .admin()
        .await?
        .list_audit(pb::ListAuditRequest { limit })
        .await?
        .into_inner()
        .entries;
    match args.conn.output {
        Format::Json => output::json(&json!({
            "entries": entries.iter().map(|e| json!({
                "at_ms": e.at_ms,
                "action": e.action,
                "txn_id": e.txn_id,
                "branch_id": e.branch_id,
                "reason": e.reason,
                "caller": e.caller,
                "result": e.result,
            })).collect::<Vec<_>>(),
        })),
        Format::Table => {
            let mut table = Table::new(vec![
                "TIME", "ACTION", "TXN", "BRANCH", "CALLER", "RESULT", "REASON",
            ]);
            for e in &entries {
                let dash = |s: &str| {
                    if s.is_empty() {
                        "-".to_string()
                    } else {
                        s.to_string()
                    }
                };
                table.row(vec![
                    Cell::from(output::timestamp(e.at_ms)),
                    Cell::from(e.action.as_str()),
                    Cell::from(dash(&e.txn_id)),
                    Cell::from(dash(&e.branch_id)),
                    Cell::from(e.caller.as_str()),
                    Cell::from(e.result.as_str()),
                    Cell::from(dash(&e.reason)),
                ]);
            }
            table.print();
        }
    }
    Ok(())
}
