//! Webhooks: a JSON POST to every `--notify-url` when a transaction ends or
//! becomes stuck, signed with `--notify-secret` (see [`sign`]).
//!
//! A notification is written to the log (`0x08 txn id 0x00 kind`) in the
//! same atomic write as the record that ended the transaction or flagged it
//! stuck ([`Notifier::add_to`]), so it survives any crash after that record
//! is durable. The delivery loop (`driver::notices`) sends it to each
//! endpoint until each answered 2xx, with backoff, then deletes it: at least
//! once, never lost. Receivers deduplicate on `X-Arbiter-Delivery`.

pub mod http;
pub mod sign;

use base64::Engine;

use crate::engine::{ChangeKind, Txn, TxnState};
use crate::store::Record;
use crate::store::record::{NOTICE_ENDED, NOTICE_STUCK, NoticeRecord, notice_op};

/// Where notifications go, and how they are signed.
#[derive(Clone, Debug, Default)]
pub struct NotifyConfig {
    pub endpoints: Vec<http::Endpoint>,
    /// The shared HMAC secret; without it notifications go unsigned.
    pub secret: Option<String>,
}

/// Makes the notifications of transactions as their records are written.
pub struct Notifier {
    pub config: NotifyConfig,
    /// This node's id in a shared store ("" otherwise).
    pub node_id: String,
}

impl Notifier {
    /// Adds to `record` the notification it calls for, if any: `txn` ended
    /// with it, or became stuck.
    pub fn add_to(&self, record: &mut Record, txn: &Txn) {
        let kind = if record.finishes && txn.state.is_final() {
            NOTICE_ENDED
        } else if record
            .changes
            .iter()
            .any(|c| matches!(c.kind, ChangeKind::Stuck))
        {
            NOTICE_STUCK
        } else {
            return;
        };
        let notice = NoticeRecord {
            at_ms: txn.updated_at_ms,
            node_id: self.node_id.clone(),
            body: body(txn, kind),
        };
        record.ops.push(notice_op(&txn.id, kind, &notice));
    }
}

/// The event name a notification carries (`type` and `X-Arbiter-Event`).
pub fn event_name(txn_state: TxnState, kind: u8) -> &'static str {
    match (kind, txn_state) {
        (NOTICE_STUCK, _) => "transaction.stuck",
        (_, TxnState::Committed) => "transaction.committed",
        _ => "transaction.aborted",
    }
}

/// The id receivers deduplicate on: the same for every redelivery.
pub fn delivery_id(txn_id: &str, kind: u8) -> String {
    let what = if kind == NOTICE_STUCK {
        "stuck"
    } else {
        "ended"
    };
    format!("{txn_id}:{what}")
}

/// The JSON body of a notification of `txn`.
pub fn body(txn: &Txn, kind: u8) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let branches: Vec<serde_json::Value> = txn
        .branches
        .iter()
        .map(|b| {
            serde_json::json!({
                "branch_id": b.id,
                "participant": b.participant,
                "resource": b.resource,
                "state": b.state.name(),
                "result_base64": b64.encode(&b.result),
                "error": b.last_error.clone().unwrap_or_default(),
                "heuristic": b.heuristic.clone().unwrap_or_default(),
            })
        })
        .collect();
    let value = serde_json::json!({
        "id": delivery_id(&txn.id, kind),
        "type": event_name(txn.state, kind),
        "txn_id": txn.id,
        "mode": txn.mode.name(),
        "state": txn.state.name(),
        "reason": txn.reason,
        "created_at_ms": txn.created_at_ms,
        "decided_at_ms": txn.decided_at_ms,
        "finished_at_ms": txn.finished_at_ms,
        "stuck_since_ms": txn.stuck_since_ms,
        "branches": branches,
    });
    serde_json::to_vec(&value).unwrap_or_default()
}
