//! The crash matrix for sagas: for every crash point a saga passes × {all
//! steps succeed, the last step fails}, a real `arbiter` process is aborted
//! there, restarted on the same data dir without failpoints, and then:
//! - a saga whose RUNNING state was durable resumes forward and completes
//!   (or compensates, when a step fails); one that never started ends
//!   compensated with nothing run;
//! - a completed saga's steps saw no compensation; a compensated saga's
//!   steps that ran were each compensated last, in reverse step order.

use std::time::Duration;

use arbiter_sdk::{Branch, Mode, TxnState};
use arbiter_tests::process::crash_restart_final;
use arbiter_tests::{ArbiterProcess, PATIENCE, Recorder, recorder_participant};

/// A point, whether the saga passes it when every step succeeds, and when
/// the last step fails.
const POINTS: [(&str, bool, bool); 14] = [
    ("after-begin-persisted", true, true),
    ("after-branch-persisted", true, true),
    ("before-phase1-sent", true, true),
    ("after-some-phase1-sent", true, true),
    ("saga-before-step-persisted", true, true),
    ("saga-after-step-persisted", true, true),
    ("before-decision-persisted", true, false),
    ("after-decision-persisted", true, false),
    ("before-abort-persisted", false, true),
    ("after-abort-persisted", false, true),
    ("saga-after-some-compensations", false, true),
    ("after-some-rollbacks-sent", false, true),
    ("before-aborted-persisted", false, true),
    // Completion is written durable at once: no lazy COMMITTED for sagas
    // without a must-succeed step.
    ("before-committed-persisted", false, false),
];

const STEPS: usize = 3;
const ARGS: [&str; 4] = ["--retry-base-ms", "20", "--retry-max-ms", "200"];

async fn scenario(
    point: &str,
    crash_forward: bool,
    crash_backward: bool,
    fail: bool,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut arbiter =
        ArbiterProcess::start_with_failpoints(dir.path(), &ARGS, &format!("{point}=return"))
            .await?;
    let (p, rec) = recorder_participant().await?;
    let txn_id = format!("{point}.saga.{}", if fail { "fails" } else { "succeeds" });
    let client = arbiter.client().await?;
    let run = async {
        client
            .begin_with_id(Mode::Saga, Some(Duration::from_secs(20)), &txn_id)
            .await?;
        for step in 1..=STEPS {
            let payload = if fail && step == STEPS {
                "no:sold out"
            } else {
                "yes"
            };
            let branch = Branch::new(p.endpoint(), format!("r{step}")).payload(payload);
            client.register_branch(&txn_id, &branch).await?;
        }
        client.commit(&txn_id, true).await
    };
    let answered = tokio::time::timeout(PATIENCE, run).await?;
    let expect_crash = if fail { crash_backward } else { crash_forward };
    let (_, txn) = crash_restart_final(&mut arbiter, expect_crash, &txn_id, &answered).await?;
    let never_started = matches!(point, "after-begin-persisted" | "after-branch-persisted");
    let expected = if fail || never_started {
        TxnState::Aborted
    } else {
        TxnState::Committed
    };
    assert_eq!(txn.state(), expected, "{txn_id}: {}", txn.reason);
    assert_consistent(&txn_id, expected, &rec);
    Ok(())
}

fn assert_consistent(txn_id: &str, state: TxnState, rec: &Recorder) {
    let trail: Vec<(String, &str)> = rec
        .seen()
        .into_iter()
        .filter(|s| s.txn_id == txn_id)
        .map(|s| (s.resource, s.call))
        .collect();
    let last =
        |resource: &str, call: &str| trail.iter().rposition(|(r, c)| r == resource && *c == call);
    for step in 1..=STEPS {
        let resource = format!("r{step}");
        let calls: Vec<&str> = trail
            .iter()
            .filter(|(r, _)| *r == resource)
            .map(|(_, c)| *c)
            .collect();
        match state {
            TxnState::Committed => assert!(
                calls.contains(&"action") && !calls.contains(&"compensate"),
                "{txn_id}: step {step} done, never compensated: {trail:?}"
            ),
            _ => {
                if calls.contains(&"action") {
                    assert_eq!(
                        calls.last(),
                        Some(&"compensate"),
                        "{txn_id}: step {step}: {trail:?}"
                    );
                }
            }
        }
    }
    if state == TxnState::Aborted {
        // The final compensations come in reverse step order.
        let order: Vec<usize> = (1..=STEPS)
            .filter_map(|step| last(&format!("r{step}"), "compensate"))
            .collect();
        assert!(
            order.windows(2).all(|w| w[0] > w[1]),
            "{txn_id}: compensations in reverse order: {trail:?}"
        );
    }
}

macro_rules! matrix {
    ($($test:ident => $index:expr),* $(,)?) => {$(
        #[tokio::test]
        async fn $test() -> anyhow::Result<()> {
            let (point, forward, backward) = POINTS[$index];
            for fail in [false, true] {
                scenario(point, forward, backward, fail).await?;
            }
            Ok(())
        }
    )*};
}

matrix! {
    saga_crash_after_begin_persisted => 0,
    saga_crash_after_branch_persisted => 1,
    saga_crash_before_first_action => 2,
    saga_crash_after_first_step_answered => 3,
    saga_crash_before_step_persisted => 4,
    saga_crash_after_step_persisted => 5,
    saga_crash_before_completion_persisted => 6,
    saga_crash_after_completion_persisted => 7,
    saga_crash_before_compensating_persisted => 8,
    saga_crash_after_compensating_persisted => 9,
    saga_crash_mid_compensation => 10,
    saga_crash_after_first_compensated => 11,
    saga_crash_before_compensated_persisted => 12,
    saga_no_lazy_completion => 13,
}
