//! `arbiter txn watch ID` (one transaction's changes as they happen, until
//! its final state) and `arbiter txn ls --watch` (the live feed of every
//! transaction's changes). `-o json` prints one object a line.

use std::time::Duration;

use arbiter_proto::v1 as pb;
use base64::Engine;
use clap::Args;
use serde_json::json;
use tonic::Code;

use crate::cli::connect::Conn;
use crate::cli::output::{self, Format, say};

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Transaction id.
    pub id: String,
    /// Start at this change (the last seq seen + 1 to resume).
    #[arg(long, default_value_t = 1)]
    pub from: u64,
}

fn kind_name(kind: i32) -> &'static str {
    match pb::EventKind::try_from(kind) {
        Ok(pb::EventKind::State) => "STATE",
        Ok(pb::EventKind::BranchRegistered) => "BRANCH_REGISTERED",
        Ok(pb::EventKind::BranchVoted) => "BRANCH_VOTED",
        Ok(pb::EventKind::BranchAcked) => "BRANCH_ACKED",
        Ok(pb::EventKind::CallFailed) => "CALL_FAILED",
        Ok(pb::EventKind::Stuck) => "STUCK",
        Ok(pb::EventKind::RetryNow) => "RETRY_NOW",
        Ok(pb::EventKind::BranchResolved) => "BRANCH_RESOLVED",
        _ => "UNKNOWN",
    }
}

fn vote_name(vote: i32) -> &'static str {
    match pb::BranchVote::try_from(vote) {
        Ok(pb::BranchVote::Yes) => "YES",
        Ok(pb::BranchVote::ReadOnly) => "READ_ONLY",
        Ok(pb::BranchVote::No) => "NO",
        _ => "",
    }
}

/// One event as a JSON object.
pub fn event_json(e: &pb::TxnEvent) -> serde_json::Value {
    let result_text = std::str::from_utf8(&e.result).ok();
    json!({
        "txn_id": e.txn_id,
        "seq": e.seq,
        "at_ms": e.at_ms,
        "kind": kind_name(e.kind),
        "state": output::state_name(e.state),
        "branch_id": e.branch_id,
        "vote": vote_name(e.vote),
        "call": e.call,
        "attempt": e.attempt,
        "committed": e.committed,
        "detail": e.detail,
        "result_text": result_text,
        "result_base64": base64::engine::general_purpose::STANDARD.encode(&e.result),
        "final": e.r#final,
    })
}

/// One event as a line for people.
pub fn event_line(e: &pb::TxnEvent, with_id: bool) -> String {
    let mut what = match pb::EventKind::try_from(e.kind) {
        Ok(pb::EventKind::State) => output::state_name(e.state).to_string(),
        Ok(pb::EventKind::BranchRegistered) => format!("branch {} registered", e.branch_id),
        Ok(pb::EventKind::BranchVoted) => {
            format!("branch {} voted {}", e.branch_id, vote_name(e.vote))
        }
        Ok(pb::EventKind::BranchAcked) => format!("branch {} acknowledged {}", e.branch_id, e.call),
        Ok(pb::EventKind::CallFailed) => {
            format!(
                "{} to branch {} failed (attempt {})",
                e.call, e.branch_id, e.attempt
            )
        }
        Ok(pb::EventKind::Stuck) => "STUCK: phase 2 keeps failing (still retried)".to_string(),
        Ok(pb::EventKind::RetryNow) => "retry now (operator)".to_string(),
        Ok(pb::EventKind::BranchResolved) => format!(
            "branch {} resolved by hand as {}",
            e.branch_id,
            if e.committed {
                "committed"
            } else {
                "rolled back"
            }
        ),
        _ => "an unknown change".to_string(),
    };
    if !e.detail.is_empty() {
        what.push_str(": ");
        what.push_str(&e.detail);
    }
    if !e.result.is_empty() {
        match std::str::from_utf8(&e.result) {
            Ok(text) => what.push_str(&format!(" [result {text:?}]")),
            Err(_) => what.push_str(&format!(" [result {} bytes]", e.result.len())),
        }
    }
    let id = if with_id {
        format!("{}  ", e.txn_id)
    } else {
        String::new()
    };
    format!("{}  {id}#{:<3} {what}", output::timestamp(e.at_ms), e.seq)
}

fn print(conn: &Conn, e: &pb::TxnEvent, with_id: bool) {
    match conn.output {
        Format::Json => say!("{}", event_json(e)),
        Format::Table => say!("{}", event_line(e, with_id)),
    }
}

/// Follows one transaction to its final state; reconnects (for a minute)
/// if the stream breaks, resuming after the last change printed.
pub async fn run(conn: &Conn, args: WatchArgs) -> anyhow::Result<()> {
    let mut next = args.from.max(1);
    let mut failing_since: Option<std::time::Instant> = None;
    loop {
        let error = match open(conn, &args.id, next).await {
            Ok(mut stream) => loop {
                match stream.message().await {
                    Ok(Some(event)) => {
                        failing_since = None;
                        if event.seq != 0 && event.seq < next {
                            continue;
                        }
                        next = event.seq.saturating_add(1);
                        print(conn, &event, false);
                        if event.r#final {
                            return Ok(());
                        }
                    }
                    Ok(None) => break anyhow::anyhow!("the coordinator ended the stream"),
                    Err(status) => break status.into(),
                }
            },
            Err(e) => e,
        };
        let retryable = error
            .downcast_ref::<tonic::Status>()
            .is_none_or(|s| matches!(s.code(), Code::Unavailable | Code::Unknown));
        let since = *failing_since.get_or_insert_with(std::time::Instant::now);
        if !retryable || since.elapsed() > Duration::from_secs(60) {
            return Err(error);
        }
        eprintln!("arbiter: watch interrupted ({error}); resuming at change {next}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn open(
    conn: &Conn,
    id: &str,
    from_seq: u64,
) -> anyhow::Result<tonic::Streaming<pb::TxnEvent>> {
    let request = pb::WatchTransactionRequest {
        txn_id: id.to_string(),
        from_seq,
    };
    Ok(conn
        .coordinator()
        .await?
        .watch_transaction(request)
        .await?
        .into_inner())
}

/// `txn ls --watch`: every change matching `request` as it happens, until
/// interrupted. A watcher that fell behind says so and starts again from now.
pub async fn feed(
    conn: &Conn,
    mut admin: crate::cli::connect::Admin,
    mut request: pb::WatchTransactionsRequest,
    first: tonic::Streaming<pb::WatchTransactionsResponse>,
) -> anyhow::Result<()> {
    let mut first = Some(first);
    loop {
        let mut stream = match first.take() {
            Some(stream) => stream,
            None => admin
                .watch_transactions(request.clone())
                .await?
                .into_inner(),
        };
        while let Some(message) = stream.message().await? {
            for event in message.events.iter().filter_map(|e| e.event.as_ref()) {
                print(conn, event, true);
            }
            if let Some(lagged) = message.lagged {
                eprintln!("arbiter: {} — watching again from now", lagged.message);
                request.from_position = 0;
            }
        }
        if request.from_position != 0 {
            return Ok(());
        }
    }
}
