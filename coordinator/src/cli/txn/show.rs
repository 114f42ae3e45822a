//! `arbiter txn show ID`: one transaction, its branches, and every branch's
//! latest attempts, so a person sees at a glance which participant fails and how.

use arbiter_proto::v1 as pb;
use clap::Args;
use serde_json::json;

use crate::cli::connect::Conn;
use crate::cli::output::say;
use crate::cli::output::{self, Cell, Format, Table};
use crate::driver::ids::now_ms;

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Transaction id.
    pub id: String,
}

pub async fn run(conn: &Conn, args: ShowArgs) -> anyhow::Result<()> {
    let response = conn
        .admin()
        .await?
        .get_transaction(pb::AdminGetTransactionRequest { txn_id: args.id })
        .await?
        .into_inner();
    let Some(txn) = response.transaction else {
        anyhow::bail!("the coordinator sent no transaction");
    };
    match conn.output {
        Format::Json => output::json(&to_json(&txn, &response.branches)),
        Format::Table => print_table(&txn, &response.branches),
    }
    Ok(())
}

fn to_json(txn: &pb::Transaction, details: &[pb::BranchDetail]) -> serde_json::Value {
    json!({
        "txn_id": txn.txn_id,
        "mode": output::mode_name(txn.mode),
        "state": output::state_name(txn.state),
        "reason": txn.reason,
        "stuck": txn.stuck,
        "mixed_branches": txn.mixed_branches,
        "owner_node": txn.owner_node,
        "saga": output::saga_position(txn),
        "current_steps": txn.current_steps,
        "stuck_since_ms": txn.stuck_since_ms,
        "timeout_ms": txn.timeout_ms,
        "created_at_ms": txn.created_at_ms,
        "updated_at_ms": txn.updated_at_ms,
        "decided_at_ms": txn.decided_at_ms,
        "finished_at_ms": txn.finished_at_ms,
        "branches": txn.branches.iter().zip(details).map(|(b, d)| json!({
            "branch_id": b.branch_id,
            "participant": b.participant,
            "resource": b.resource,
            "state": output::branch_state_name(b.state),
            "attempts": b.attempts,
            "last_error": b.last_error,
            "failing_since_ms": b.failing_since_ms,
            "next_retry_at_ms": d.next_retry_at_ms,
            "heuristic": b.heuristic,
            "result_text": std::str::from_utf8(&b.result).ok(),
            "result_hex": b.result.iter().map(|x| format!("{x:02x}")).collect::<String>(),
            "history": d.history.iter().map(|a| json!({
                "at_ms": a.at_ms,
                "call": a.call,
                "attempt": a.attempt,
                "ok": a.ok,
                "result": a.result,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

fn print_table(txn: &pb::Transaction, details: &[pb::BranchDetail]) {
    let now = now_ms();
    let stuck = if txn.stuck {
        format!(
            "  STUCK for {}",
            output::age(now.saturating_sub(txn.stuck_since_ms))
        )
    } else {
        String::new()
    };
    say!("transaction  {}", txn.txn_id);
    say!("mode         {}", output::mode_name(txn.mode));
    let mixed = if txn.mixed_branches.is_empty() {
        String::new()
    } else {
        format!(
            "  MIXED (heuristic): branch {} resolved by hand against the decision",
            txn.mixed_branches.join(", ")
        )
    };
    say!(
        "state        {}{stuck}{mixed}",
        output::state_name(txn.state)
    );
    if let Some(saga) = output::saga_position(txn) {
        say!("saga         {saga}");
    }
    if !txn.reason.is_empty() {
        say!("reason       {}", txn.reason);
    }
    if !txn.owner_node.is_empty() {
        say!("owner node   {}", txn.owner_node);
    }
    say!(
        "created      {} ({} ago), timeout {}",
        output::timestamp(txn.created_at_ms),
        output::age(now.saturating_sub(txn.created_at_ms)),
        output::age(txn.timeout_ms)
    );
    say!("decided      {}", output::timestamp(txn.decided_at_ms));
    say!("finished     {}", output::timestamp(txn.finished_at_ms));
    say!();

    let mut branches = Table::new(vec![
        "BRANCH",
        "PARTICIPANT",
        "RESOURCE",
        "STATE",
        "ATTEMPTS",
        "NEXT RETRY",
        "LAST ERROR",
    ]);
    for (b, d) in txn.branches.iter().zip(details) {
        let next = if d.next_retry_at_ms == 0 {
            "-".to_string()
        } else {
            format!("in {}", output::age(d.next_retry_at_ms.saturating_sub(now)))
        };
        let error = match (b.heuristic.is_empty(), b.last_error.is_empty()) {
            (false, _) => b.heuristic.clone(),
            (true, false) => b.last_error.clone(),
            (true, true) => "-".to_string(),
        };
        branches.row(vec![
            Cell::from(b.branch_id.as_str()),
            Cell::from(b.participant.as_str()),
            Cell::from(b.resource.as_str()),
            Cell::from(output::branch_state_name(b.state)),
            Cell::from(b.attempts.to_string()),
            Cell::from(next),
            Cell::coloured(
                error,
                (!b.last_error.is_empty() || !b.heuristic.is_empty()).then_some("31"),
            ),
        ]);
    }
    branches.print();
    for b in txn.branches.iter().filter(|b| !b.result.is_empty()) {
        say!(
            "result of branch {}: {}",
            b.branch_id,
            result_text(&b.result)
        );
    }
    say!();

    let mut history = Table::new(vec!["TIME", "BRANCH", "CALL", "ATTEMPT", "RESULT"]);
    let mut attempts: Vec<(&str, &pb::Attempt)> = details
        .iter()
        .flat_map(|d| d.history.iter().map(move |a| (d.branch_id.as_str(), a)))
        .collect();
    attempts.sort_by_key(|(_, a)| a.at_ms);
    for (branch, a) in attempts {
        let result = if a.ok {
            a.result.clone()
        } else {
            format!("ERROR {}", a.result)
        };
        history.row(vec![
            Cell::from(output::timestamp(a.at_ms)),
            Cell::from(branch),
            Cell::from(a.call.as_str()),
            Cell::from(a.attempt.to_string()),
            Cell::coloured(result, (!a.ok).then_some("31")),
        ]);
    }
    history.print();
}

/// A branch result for a terminal: quoted and escaped when it is text,
/// else `0x` and hex.
fn result_text(result: &[u8]) -> String {
    match std::str::from_utf8(result) {
        Ok(text) => format!("{text:?}"),
        Err(_) => {
            let hex: String = result.iter().map(|b| format!("{b:02x}")).collect();
            format!("0x{hex}")
        }
    }
}
