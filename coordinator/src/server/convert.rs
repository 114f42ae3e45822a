//! Conversions between the `arbiter.v1` messages and the engine's types, and
//! reading the caller's deadline.

use std::time::{Duration, Instant};

use arbiter_proto::v1 as pb;
use tonic::Status;

use crate::driver::{BranchSpec, answer_margin};
use crate::engine::{Branch, BranchState, Mode, Txn, TxnState};

pub fn mode_from_pb(mode: i32) -> Result<Mode, Status> {
    match pb::Mode::try_from(mode) {
        Ok(pb::Mode::TwoPhase) => Ok(Mode::TwoPhase),
        Ok(pb::Mode::Tcc) => Ok(Mode::Tcc),
        Ok(pb::Mode::Saga) => Ok(Mode::Saga),
        Ok(pb::Mode::Unspecified) => Err(Status::invalid_argument(
            "mode is not set; use MODE_TWO_PHASE, MODE_TCC or MODE_SAGA",
        )),
        Err(_) => Err(Status::invalid_argument(format!(
            "unknown mode {mode}; use MODE_TWO_PHASE, MODE_TCC or MODE_SAGA"
        ))),
    }
}

pub fn mode_to_pb(mode: Mode) -> pb::Mode {
    match mode {
        Mode::TwoPhase => pb::Mode::TwoPhase,
        Mode::Tcc => pb::Mode::Tcc,
        Mode::Saga => pb::Mode::Saga,
    }
}

pub fn state_from_pb(state: i32) -> Result<TxnState, Status> {
    match pb::TxnState::try_from(state) {
        Ok(pb::TxnState::Active) => Ok(TxnState::Active),
        Ok(pb::TxnState::Preparing) => Ok(TxnState::Preparing),
        Ok(pb::TxnState::Committing) => Ok(TxnState::Committing),
        Ok(pb::TxnState::Aborting) => Ok(TxnState::Aborting),
        Ok(pb::TxnState::Committed) => Ok(TxnState::Committed),
        Ok(pb::TxnState::Aborted) => Ok(TxnState::Aborted),
        _ => Err(Status::invalid_argument(format!(
            "unknown transaction state {state}"
        ))),
    }
}

pub fn state_to_pb(state: TxnState) -> pb::TxnState {
    match state {
        TxnState::Active => pb::TxnState::Active,
        TxnState::Preparing => pb::TxnState::Preparing,
        TxnState::Committing => pb::TxnState::Committing,
        TxnState::Aborting => pb::TxnState::Aborting,
        TxnState::Committed => pb::TxnState::Committed,
        TxnState::Aborted => pb::TxnState::Aborted,
    }
}

pub fn branch_state_to_pb(state: BranchState) -> pb::BranchState {
    match state {
        BranchState::Registered => pb::BranchState::Registered,
        BranchState::Prepared => pb::BranchState::Prepared,
        BranchState::ReadOnly => pb::BranchState::ReadOnly,
        BranchState::Rejected => pb::BranchState::Rejected,
        BranchState::Committed => pb::BranchState::Committed,
        BranchState::RolledBack => pb::BranchState::RolledBack,
    }
}

/// A branch of a request; an unknown protocol is INVALID_ARGUMENT.
pub fn branch_spec(spec: pb::BranchSpec) -> Result<BranchSpec, Status> {
    let step = spec.saga.unwrap_or_default();
    let protocol = protocol_from_pb(spec.protocol).ok_or_else(|| {
        Status::invalid_argument(format!(
            "unknown protocol {}; use PROTOCOL_GRPC or PROTOCOL_HTTP_JSON",
            spec.protocol
        ))
    })?;
    Ok(BranchSpec {
        participant: spec.participant,
        resource: spec.resource,
        payload: spec.payload,
        call_timeout_ms: spec.call_timeout_ms,
        depends_on: step.depends_on,
        start_at_once: step.start_at_once,
        must_succeed: step.must_succeed,
        protocol,
        json_payload: spec.payload_as_json,
    })
}

/// An unknown protocol number reads as itself so validation can refuse it.
fn protocol_from_pb(protocol: i32) -> Option<crate::engine::Protocol> {
    match pb::Protocol::try_from(protocol) {
        Ok(pb::Protocol::Grpc) => Some(crate::engine::Protocol::Grpc),
        Ok(pb::Protocol::HttpJson) => Some(crate::engine::Protocol::HttpJson),
        Err(_) => None,
    }
}

/// A saga step's order as registered; `None` for 2PC and TCC branches.
fn step_to_pb(b: &Branch) -> Option<pb::SagaStep> {
    (!b.depends_on.is_empty() || b.start_at_once || b.must_succeed).then(|| pb::SagaStep {
        depends_on: b.depends_on.clone(),
        start_at_once: b.start_at_once,
        must_succeed: b.must_succeed,
    })
}

fn branch_to_pb(b: &Branch) -> pb::Branch {
    pb::Branch {
        branch_id: b.id.clone(),
        participant: b.participant.clone(),
        resource: b.resource.clone(),
        state: branch_state_to_pb(b.state) as i32,
        attempts: b.attempts,
        last_error: b.last_error.clone().unwrap_or_default(),
        call_timeout_ms: b.call_timeout_ms,
        payload_size: b.payload.len() as u32,
        failing_since_ms: b.failing_since_ms.unwrap_or(0),
        heuristic: b.heuristic.clone().unwrap_or_default(),
        result: b.result.clone(),
        saga: step_to_pb(b),
        protocol: match b.protocol {
            crate::engine::Protocol::Grpc => pb::Protocol::Grpc,
            crate::engine::Protocol::HttpJson => pb::Protocol::HttpJson,
        } as i32,
    }
}

/// Each branch's answer, for a Commit/Execute response.
pub fn branch_results(outcome: &crate::driver::Outcome) -> Vec<pb::BranchResult> {
    outcome
        .branches
        .iter()
        .map(|b| pb::BranchResult {
            branch_id: b.branch_id.clone(),
            result: b.result.clone(),
            reason: b.reason.clone(),
            state: branch_state_to_pb(b.state) as i32,
        })
        .collect()
}

pub fn txn_to_pb(txn: &Txn) -> pb::Transaction {
    pb::Transaction {
        owner_node: String::new(),
        txn_id: txn.id.clone(),
        mode: mode_to_pb(txn.mode) as i32,
        state: state_to_pb(txn.state) as i32,
        reason: txn.reason.clone(),
        timeout_ms: txn.timeout_ms,
        created_at_ms: txn.created_at_ms,
        updated_at_ms: txn.updated_at_ms,
        decided_at_ms: txn.decided_at_ms.unwrap_or(0),
        finished_at_ms: txn.finished_at_ms.unwrap_or(0),
        branches: txn.branches.iter().map(branch_to_pb).collect(),
        stuck: txn.stuck_since_ms.is_some(),
        stuck_since_ms: txn.stuck_since_ms.unwrap_or(0),
        mixed_branches: txn
            .mixed_branches()
            .into_iter()
            .map(str::to_string)
            .collect(),
        current_steps: txn
            .current_steps()
            .into_iter()
            .map(str::to_string)
            .collect(),
    }
}

/// `Some(id)` for a client-chosen id, `None` for an empty field.
pub fn optional(id: String) -> Option<String> {
    if id.is_empty() { None } else { Some(id) }
}

/// When to answer a waiting call: a little before the caller's `grpc-timeout`.
pub fn answer_by<T>(request: &tonic::Request<T>) -> Option<Instant> {
    let header = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let timeout = parse_grpc_timeout(header)?;
    Some(Instant::now() + timeout.saturating_sub(answer_margin(timeout)))
}

/// Parses a `grpc-timeout` header value: up to 8 digits and a unit.
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_headers_parse() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("10"), None);
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
    }

    #[test]
    fn unset_and_unknown_modes_are_invalid() {
        assert_eq!(mode_from_pb(1).ok(), Some(Mode::TwoPhase));
        assert_eq!(mode_from_pb(2).ok(), Some(Mode::Tcc));
        assert_eq!(
            mode_from_pb(0).err().map(|s| s.code()),
            Some(tonic::Code::InvalidArgument)
        );
        assert_eq!(
            mode_from_pb(7).err().map(|s| s.code()),
            Some(tonic::Code::InvalidArgument)
        );
    }
}
