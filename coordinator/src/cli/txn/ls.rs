//! `arbiter txn ls`: transactions matching a filter.

use std::time::Duration;

use arbiter_proto::v1 as pb;
use clap::{Args, ValueEnum};
use serde_json::json;

use crate::cli::connect::Conn;
use crate::cli::duration;
use crate::cli::output::{self, Cell, Format, Table};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StateArg {
    Active,
    Preparing,
    Committing,
    Aborting,
    Committed,
    Aborted,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    #[value(name = "2pc")]
    TwoPhase,
    Tcc,
    Saga,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Only these states (repeatable).
    #[arg(long = "state", value_enum, ignore_case = true)]
    pub states: Vec<StateArg>,
    /// Only stuck transactions.
    #[arg(long)]
    pub stuck: bool,
    /// Only transactions at least this old, e.g. 5m, 2h.
    #[arg(long, value_parser = duration::parse)]
    pub older_than: Option<Duration>,
    #[arg(long, value_enum, ignore_case = true)]
    pub mode: Option<ModeArg>,
    /// Only transactions with a branch at this participant endpoint.
    #[arg(long)]
    pub participant: Option<String>,
    /// Oldest first instead of newest first.
    #[arg(long)]
    pub oldest_first: bool,
    /// At most this many rows.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: u32,
    /// Continue a previous listing.
    #[arg(long)]
    pub page_token: Option<String>,
    /// After the listing, print every change of a matching transaction as it
    /// happens (until interrupted).
    #[arg(long)]
    pub watch: bool,
}

fn state_pb(state: StateArg) -> pb::TxnState {
    match state {
        StateArg::Active => pb::TxnState::Active,
        StateArg::Preparing => pb::TxnState::Preparing,
        StateArg::Committing => pb::TxnState::Committing,
        StateArg::Aborting => pb::TxnState::Aborting,
        StateArg::Committed => pb::TxnState::Committed,
        StateArg::Aborted => pb::TxnState::Aborted,
    }
}

pub async fn run(conn: &Conn, args: LsArgs) -> anyhow::Result<()> {
    let request = pb::ListTransactionsRequest {
        states: args.states.iter().map(|s| state_pb(*s) as i32).collect(),
        mode: match args.mode {
            None => pb::Mode::Unspecified,
            Some(ModeArg::TwoPhase) => pb::Mode::TwoPhase,
            Some(ModeArg::Tcc) => pb::Mode::Tcc,
            Some(ModeArg::Saga) => pb::Mode::Saga,
        } as i32,
        stuck_only: args.stuck,
        older_than_ms: args.older_than.map_or(0, |d| d.as_millis() as u64),
        participant: args.participant.unwrap_or_default(),
        oldest_first: args.oldest_first,
        page_size: args.limit,
        page_token: args.page_token.unwrap_or_default(),
    };
    let feed = pb::WatchTransactionsRequest {
        states: request.states.clone(),
        mode: request.mode,
        stuck_only: request.stuck_only,
        participant: request.participant.clone(),
        from_position: 0,
        feed_id: String::new(),
    };
    let mut admin = conn.admin().await?;
    // Subscribe before listing, so no change falls between the two.
    let first = if args.watch {
        Some(admin.watch_transactions(feed.clone()).await?.into_inner())
    } else {
        None
    };
    let page = admin.list_transactions(request).await?.into_inner();
    print_page(conn, &page);
    if let Some(first) = first {
        super::watch::feed(conn, admin, feed, first).await?;
    }
    Ok(())
}

fn print_page(conn: &Conn, page: &pb::ListTransactionsResponse) {
    match conn.output {
        Format::Json => output::json(&json!({
            "transactions": page.transactions.iter().map(|t| json!({
                "txn_id": t.txn_id,
                "mode": output::mode_name(t.mode),
                "state": output::state_name(t.state),
                "age_ms": t.age_ms,
                "created_at_ms": t.created_at_ms,
                "branches": t.branch_count,
                "attempts": t.attempts,
                "stuck": t.stuck,
                "last_error": t.last_error,
                "reason": t.reason,
            })).collect::<Vec<_>>(),
            "next_page_token": page.next_page_token,
        })),
        Format::Table => {
            let mut table = Table::new(vec![
                "ID",
                "MODE",
                "STATE",
                "AGE",
                "BRANCHES",
                "ATTEMPTS",
                "STUCK",
                "LAST ERROR",
            ]);
            for t in &page.transactions {
                table.row(vec![
                    Cell::from(t.txn_id.as_str()),
                    Cell::from(output::mode_name(t.mode)),
                    Cell::coloured(output::state_name(t.state), output::state_colour(t.state)),
                    Cell::from(output::age(t.age_ms)),
                    Cell::from(t.branch_count.to_string()),
                    Cell::from(t.attempts.to_string()),
                    Cell::coloured(if t.stuck { "yes" } else { "-" }, t.stuck.then_some("31")),
                    Cell::from(if t.last_error.is_empty() {
                        "-".to_string()
                    } else {
                        t.last_error.clone()
                    }),
                ]);
            }
            table.print();
            if !page.next_page_token.is_empty() {
                eprintln!("more: --page-token {}", page.next_page_token);
            }
        }
    }
}
