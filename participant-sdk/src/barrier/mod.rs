//! The exactly-once barrier: what a participant records per branch so that a
//! call delivered twice, out of order, or never, still has its business
//! effect exactly once.
//!
//! The coordinator delivers every call at least once and sometimes out of
//! order. Three things happen in practice:
//!
//! - **repeats**: a prepare/try, commit/confirm or rollback/cancel arrives
//!   again (a lost answer, a coordinator restart);
//! - **empty rollback**: a rollback/cancel arrives for a branch whose
//!   prepare/try never ran here (it was lost, or timed out on the way);
//! - **hanging**: a prepare/try arrives *after* the rollback/cancel of its
//!   branch (it was delayed in the network).
//!
//! The barrier keeps one record per (txn id, branch id, phase) in the
//! participant's own store, **written in the same local transaction as the
//! business change**, so the effect and its record commit or fail together:
//!
//! | call | barrier already holds | what happens |
//! |---|---|---|
//! | prepare / try | nothing | the handler runs; its vote is recorded |
//! | prepare / try | a vote | the first vote is returned; the handler does not run |
//! | prepare / try | a rollback marker | refused with a NO vote; the handler does not run (hanging) |
//! | commit / confirm | a YES vote | the handler runs once; repeats are no-ops |
//! | commit / confirm | no YES vote | an error (`INTERNAL`): the coordinator keeps retrying and flags the branch stuck; the barrier never guesses |
//! | rollback / cancel | nothing | a rollback marker is recorded; the handler does not run (empty rollback) |
//! | rollback / cancel | a YES vote | the handler runs once; repeats are no-ops |
//! | rollback / cancel | a NO or READ_ONLY vote | recorded; nothing to undo, the handler does not run |
//!
//! A saga step goes through the same barrier: its action is the phase-1
//! call (the handler's `prepare`, whose YES is the step's success, kept for
//! good), its compensation the rollback. So a compensation that arrives
//! before its action is recorded as empty, and the late action is refused
//! (answered FAILED) without running.
//!
//! A handler that returns an error leaves no record: the local transaction
//! is rolled back, and the coordinator's retry runs the handler again.
//!
//! **Retention.** Records are collected once older than the barrier's
//! retention. A record must outlive every call the coordinator may still
//! send for its branch, so the retention must exceed the coordinator's
//! longest retry horizon: the transaction timeout plus the time a
//! participant may stay unreachable while the coordinator keeps retrying
//! phase 2 (which it does forever, flagging the branch stuck). The default
//! is 7 days; lower it only together with an alerting rule on stuck
//! transactions that is much shorter.
//!
//! Backends: [`SledBarrier`](crate::SledBarrier) (feature `sled`) for
//! participants that embed their state, and
//! [`PgBarrier`](crate::PgBarrier) (feature `postgres`) for participants
//! with a PostgreSQL database.

// What the backends share goes unused in a build with neither of them.
#![cfg_attr(not(any(feature = "sled", feature = "postgres")), allow(dead_code))]

#[cfg(feature = "sled")]
pub(crate) mod sled;

use std::time::Duration;

use crate::handler::Vote;

/// How long barrier records are kept unless configured otherwise.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// The record names, as stored.
pub(crate) const PHASE1: &str = "phase1";
pub(crate) const COMMIT: &str = "commit";
pub(crate) const ROLLBACK: &str = "rollback";

/// What the barrier holds for a branch's phase 1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Phase1 {
    /// Prepare/try ran and voted.
    Voted(Vote),
    /// Rolled back before (or instead of) a YES vote: any later prepare/try
    /// is refused.
    RolledBack,
}

impl Phase1 {
    pub(crate) fn encode(&self) -> String {
        match self {
            Phase1::Voted(Vote::Yes) => "yes".into(),
            Phase1::Voted(Vote::YesWith(result)) => format!("yes-with:{}", hex(result)),
            Phase1::Voted(Vote::No(reason)) => format!("no:{reason}"),
            Phase1::Voted(Vote::ReadOnly) => "read-only".into(),
            Phase1::RolledBack => "rolled-back".into(),
        }
    }

    /// `None` for text no version of the barrier wrote.
    pub(crate) fn decode(text: &str) -> Option<Phase1> {
        Some(match text {
            "yes" => Phase1::Voted(Vote::Yes),
            "read-only" => Phase1::Voted(Vote::ReadOnly),
            "rolled-back" => Phase1::RolledBack,
            other if other.starts_with("yes-with:") => {
                Phase1::Voted(Vote::YesWith(unhex(other.strip_prefix("yes-with:")?)?))
            }
            other => Phase1::Voted(Vote::No(other.strip_prefix("no:")?.to_string())),
        })
    }

    /// The answer to a prepare/try that finds this record.
    pub(crate) fn repeated_vote(&self) -> Vote {
        match self {
            Phase1::Voted(vote) => vote.clone(),
            Phase1::RolledBack => Vote::No("the branch was already rolled back here".into()),
        }
    }

    /// Whether a rollback/cancel must run the handler to undo held work.
    pub(crate) fn holds_work(&self) -> bool {
        matches!(self, Phase1::Voted(vote) if vote.is_yes())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A barrier's phase-1 answer as a saga step's outcome: the action ran and
/// succeeded (YES), or failed or was refused after its compensation (NO).
pub(crate) fn vote_as_step(vote: Vote) -> crate::StepOutcome {
    match vote {
        Vote::Yes | Vote::ReadOnly => crate::StepOutcome::Succeeded,
        Vote::YesWith(result) => crate::StepOutcome::SucceededWith(result),
        Vote::No(reason) => crate::StepOutcome::Failed(reason),
    }
}

/// The error for a commit/confirm of a branch already rolled back here.
pub(crate) fn commit_after_rollback() -> crate::ParticipantError {
    crate::ParticipantError::Internal(
        "commit/confirm for a branch already rolled back here; resolve it by hand".into(),
    )
}

/// The error for a rollback/cancel of a branch already committed here.
pub(crate) fn rollback_after_commit() -> crate::ParticipantError {
    crate::ParticipantError::Internal(
        "rollback/cancel for a branch already committed here; resolve it by hand".into(),
    )
}

/// The error for a commit/confirm of a branch that did not vote YES here.
pub(crate) fn commit_without_yes(found: Option<&Phase1>) -> crate::ParticipantError {
    let found = match found {
        None => "no prepare/try on record".to_string(),
        Some(Phase1::RolledBack) => "it was rolled back".to_string(),
        Some(Phase1::Voted(vote)) => format!("it voted {vote:?}"),
    };
    crate::ParticipantError::Internal(format!(
        "commit/confirm for a branch that did not vote YES here ({found}); \
         refusing to guess: resolve it by hand"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase1_records_round_trip() {
        for record in [
            Phase1::Voted(Vote::Yes),
            Phase1::Voted(Vote::YesWith(b"r-17\x00\xff".to_vec())),
            Phase1::Voted(Vote::YesWith(Vec::new())),
            Phase1::Voted(Vote::ReadOnly),
            Phase1::Voted(Vote::No("insufficient: funds".into())),
            Phase1::Voted(Vote::No(String::new())),
            Phase1::RolledBack,
        ] {
            assert_eq!(Phase1::decode(&record.encode()), Some(record));
        }
        assert_eq!(Phase1::decode("garbage"), None);
    }

    #[test]
    fn only_a_yes_vote_holds_work() {
        assert!(Phase1::Voted(Vote::Yes).holds_work());
        assert!(Phase1::Voted(Vote::YesWith(vec![1])).holds_work());
        assert!(!Phase1::Voted(Vote::No("x".into())).holds_work());
        assert!(!Phase1::Voted(Vote::ReadOnly).holds_work());
        assert!(!Phase1::RolledBack.holds_work());
        assert!(matches!(Phase1::RolledBack.repeated_vote(), Vote::No(_)));
    }
}
