//! The crash matrix: for every failpoint × {2PC, TCC} × {commit, abort}, a real
//! `arbiter` process is aborted at that step, restarted on the same data dir
//! without failpoints, and then:
//! - the transaction reaches a final state;
//! - it is committed if and only if the commit decision was durable before the crash;
//! - every participant saw a consistent outcome, and none saw commit/confirm
//!   for a transaction that ended aborted.

use std::time::Duration;

use arbiter_sdk::{Branch, Mode, TxnState};
use arbiter_tests::process::crash_restart_final;
use arbiter_tests::{ArbiterProcess, PATIENCE, Recorder, recorder_participant};

/// Where the crash happens relative to the decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Point {
    /// Before any decision: reached by both outcomes; ends aborted.
    Undecided,
    /// On the commit path, before the commit decision is durable: ends aborted.
    BeforeCommitDecision,
    /// On the commit path, after the commit decision is durable: ends committed.
    AfterCommitDecision,
    /// On the abort path only.
    AbortPath,
}

const POINTS: [(&str, Point); 12] = [
    ("after-begin-persisted", Point::Undecided),
    ("after-branch-persisted", Point::Undecided),
    ("before-phase1-sent", Point::Undecided),
    ("after-some-phase1-sent", Point::Undecided),
    ("before-decision-persisted", Point::BeforeCommitDecision),
    ("after-decision-persisted", Point::AfterCommitDecision),
    ("after-some-phase2-sent", Point::AfterCommitDecision),
    ("before-committed-persisted", Point::AfterCommitDecision),
    ("before-abort-persisted", Point::AbortPath),
    ("after-abort-persisted", Point::AbortPath),
    ("after-some-rollbacks-sent", Point::AbortPath),
    ("before-aborted-persisted", Point::AbortPath),
];

const ARGS: [&str; 4] = ["--retry-base-ms", "20", "--retry-max-ms", "200"];

/// Runs one scenario; returns whether the process crashed.
async fn scenario(point: &str, kind: Point, mode: Mode, commit: bool) -> anyhow::Result<bool> {
    let dir = tempfile::tempdir()?;
    let mut arbiter =
        ArbiterProcess::start_with_failpoints(dir.path(), &ARGS, &format!("{point}=return"))
            .await?;
    let (a, rec_a) = recorder_participant().await?;
    let (b, rec_b) = recorder_participant().await?;
    let txn_id = format!(
        "{point}.{mode:?}.{}",
        if commit { "commit" } else { "abort" }
    );
    let second_payload = if commit {
        "yes"
    } else {
        "no:refused by the test"
    };

    let client = arbiter.client().await?;
    let run = async {
        client
            .begin_with_id(mode, Some(Duration::from_secs(20)), &txn_id)
            .await?;
        client
            .register_branch(&txn_id, &Branch::new(a.endpoint(), "r1"))
            .await?;
        client
            .register_branch(
                &txn_id,
                &Branch::new(b.endpoint(), "r2").payload(second_payload),
            )
            .await?;
        client.commit(&txn_id, true).await
    };
    let answered = tokio::time::timeout(PATIENCE, run).await?;

    let expect_crash = match kind {
        Point::Undecided => true,
        Point::BeforeCommitDecision | Point::AfterCommitDecision => commit,
        Point::AbortPath => !commit,
    };
    let (crashed, txn) =
        crash_restart_final(&mut arbiter, expect_crash, &txn_id, &answered).await?;
    let expected = if commit && (kind == Point::AfterCommitDecision || !crashed) {
        TxnState::Committed
    } else {
        TxnState::Aborted
    };
    assert_eq!(txn.state(), expected, "{txn_id}: {}", txn.reason);
    assert_consistent(&txn_id, mode, expected, &[&rec_a, &rec_b]);
    Ok(crashed)
}

fn assert_consistent(txn_id: &str, mode: Mode, state: TxnState, participants: &[&Recorder]) {
    let (confirm, cancel) = match mode {
        Mode::Tcc => ("confirm", "cancel"),
        _ => ("commit", "rollback"),
    };
    for (n, rec) in participants.iter().enumerate() {
        let calls = rec.calls(txn_id);
        match state {
            TxnState::Committed => {
                assert!(
                    calls.contains(&confirm),
                    "{txn_id}: branch {n} committed: {calls:?}"
                );
                assert!(
                    !calls.contains(&cancel),
                    "{txn_id}: branch {n} never rolled back: {calls:?}"
                );
            }
            _ => {
                assert!(
                    !calls.contains(&confirm),
                    "{txn_id}: branch {n} never committed: {calls:?}"
                );
                let prepared = calls.iter().any(|c| *c == "prepare" || *c == "try");
                if prepared {
                    assert_eq!(
                        calls.last(),
                        Some(&cancel),
                        "{txn_id}: branch {n} rolled back: {calls:?}"
                    );
                }
            }
        }
    }
}

async fn all_combinations(point: &str, kind: Point) -> anyhow::Result<()> {
    let mut crashes = 0;
    for mode in [Mode::TwoPhase, Mode::Tcc] {
        for commit in [true, false] {
            crashes += usize::from(scenario(point, kind, mode, commit).await?);
        }
    }
    println!("{point}: 4 scenarios, {crashes} crashed and recovered");
    Ok(())
}

macro_rules! matrix {
    ($($test:ident => $index:expr),* $(,)?) => {$(
        #[tokio::test]
        async fn $test() -> anyhow::Result<()> {
            let (point, kind) = POINTS[$index];
            all_combinations(point, kind).await
        }
    )*};
}

matrix! {
    crash_after_begin_persisted => 0,
    crash_after_branch_persisted => 1,
    crash_before_phase1_sent => 2,
    crash_after_some_phase1_sent => 3,
    crash_before_decision_persisted => 4,
    crash_after_decision_persisted => 5,
    crash_after_some_phase2_sent => 6,
    crash_before_committed_persisted => 7,
    crash_before_abort_persisted => 8,
    crash_after_abort_persisted => 9,
    crash_after_some_rollbacks_sent => 10,
    crash_before_aborted_persisted => 11,
}
