//! `arbiter cluster ls`: the coordinators sharing a store, their addresses
//! and leases (judged on the store's clock), alive or not, and the
//! unfinished transactions each owns. A dead node's count falls to zero as
//! the live ones take its transactions over.

use arbiter_proto::v1 as pb;
use clap::{Args, Subcommand};
use serde_json::json;

use crate::cli::connect::Conn;
use crate::cli::output::{self, Cell, Format, Table};

#[derive(Debug, Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    pub command: ClusterCommand,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Each node: id, address, lease expiry, alive or not, and the
    /// unfinished transactions it owns.
    Ls(LsArgs),
}

#[derive(Debug, Args)]
pub struct LsArgs {
    #[command(flatten)]
    pub conn: Conn,
}

pub async fn run(args: ClusterArgs) -> anyhow::Result<()> {
    let ClusterCommand::Ls(args) = args.command;
    let nodes = args
        .conn
        .admin()
        .await?
        .list_nodes(pb::ListNodesRequest {})
        .await?
        .into_inner()
        .nodes;
    match args.conn.output {
        Format::Json => output::json(&json!({
            "nodes": nodes.iter().map(|n| json!({
                "node_id": n.node_id,
                "address": n.address,
                "epoch": n.epoch,
                "lease_expires_at_ms": n.lease_expires_at_ms,
                "alive": n.alive,
                "this_node": n.this_node,
                "owned": n.unfinished,
            })).collect::<Vec<_>>(),
        })),
        Format::Table => {
            let mut table = Table::new(vec![
                "NODE",
                "ADDRESS",
                "EPOCH",
                "LEASE UNTIL",
                "ALIVE",
                "OWNED",
            ]);
            for n in &nodes {
                let id = if n.this_node {
                    format!("{} (this)", n.node_id)
                } else {
                    n.node_id.clone()
                };
                let lease = if n.lease_expires_at_ms == 0 {
                    "-".to_string()
                } else {
                    output::timestamp(n.lease_expires_at_ms)
                };
                let (alive, colour) = if n.alive {
                    ("yes", Some("32"))
                } else {
                    ("no", Some("31"))
                };
                let unfinished = n.unfinished.to_string();
                table.row(vec![
                    id.into(),
                    n.address.clone().into(),
                    n.epoch.to_string().into(),
                    lease.into(),
                    Cell::coloured(alive, colour),
                    unfinished.into(),
                ]);
            }
            table.print();
        }
    }
    Ok(())
}
