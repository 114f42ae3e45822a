//! Upgrades never misread the log: the format-1 data directory in
//! `tests/fixtures/log-v1` (written by the release before format 2) is opened
//! by today's binary, upgraded in place, and every transaction in it is
//! recovered as the rules say, with its audit trail kept.
#![allow(clippy::expect_used)] // a test's expectation failing is the test failing

use std::path::Path;
use std::sync::Arc;

use arbiter_proto::v1 as pb;
use arbiter_proto::v1::admin_client::AdminClient;
use arbiter_tests::{ArbiterProcess, Recorder, copy_dir, eventually, serve_recorder};

const T0: u64 = 1_764_000_000_000;

async fn state_of(
    admin: &mut AdminClient<tonic::transport::Channel>,
    id: &str,
) -> Option<pb::TxnState> {
    let got = admin
        .get_transaction(pb::AdminGetTransactionRequest { txn_id: id.into() })
        .await
        .ok()?;
    got.into_inner().transaction.map(|t| t.state())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_format_1_log_is_upgraded_and_recovered_as_written() -> anyhow::Result<()> {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/log-v1");
    let root = tempfile::tempdir()?;
    let dir = root.path().join("log");
    copy_dir(&fixture, &dir)?;
    // The fixture's participants, at the addresses it names.
    let (p1, p2) = (Arc::new(Recorder::new()), Arc::new(Recorder::new()));
    let _s1 = serve_recorder(p1.clone(), "127.0.0.1:17471".parse()?).await?;
    let _s2 = serve_recorder(p2.clone(), "127.0.0.1:17472".parse()?).await?;

    // Finished a year ago: keep them readable.
    let args = [
        "--retention-secs",
        "3153600000",
        "--retry-base-ms",
        "20",
        "--retry-max-ms",
        "200",
    ];
    let mut arbiter = ArbiterProcess::start(&dir, &args).await?;
    let mut admin = AdminClient::connect(arbiter.endpoint.clone()).await?;

    // Finished ones read back exactly as written.
    let committed = admin
        .get_transaction(pb::AdminGetTransactionRequest {
            txn_id: "v1-committed".into(),
        })
        .await?
        .into_inner();
    let txn = committed.transaction.expect("a transaction");
    assert_eq!(txn.state(), pb::TxnState::Committed);
    assert_eq!((txn.created_at_ms, txn.finished_at_ms), (T0, T0 + 10));
    assert_eq!(txn.branches.len(), 2);
    assert_eq!(txn.branches[0].payload_size, "debit:10".len() as u32);
    assert_eq!(txn.branches[1].participant, "http://127.0.0.1:17472");
    let history: Vec<(String, String)> = committed.branches[0]
        .history
        .iter()
        .map(|a| (a.call.clone(), a.result.clone()))
        .collect();
    assert_eq!(
        history,
        vec![
            ("prepare".into(), "YES".into()),
            ("commit".into(), "acknowledged".into())
        ]
    );
    let aborted = admin
        .get_transaction(pb::AdminGetTransactionRequest {
            txn_id: "v1-aborted".into(),
        })
        .await?
        .into_inner()
        .transaction
        .expect("a transaction");
    assert_eq!(aborted.state(), pb::TxnState::Aborted);
    assert_eq!(aborted.reason, "branch 2 voted NO: out of stock");
    assert_eq!(aborted.mode(), pb::Mode::Tcc);

    // Undecided ones are aborted (presumed abort), decided ones finish as decided.
    for (id, end) in [
        ("v1-active", pb::TxnState::Aborted),
        ("v1-preparing", pb::TxnState::Aborted),
        ("v1-committing", pb::TxnState::Committed),
        ("v1-stuck", pb::TxnState::Aborted),
    ] {
        eventually(&format!("{id} becomes {end:?}"), || {
            let mut admin = admin.clone();
            async move { (state_of(&mut admin, id).await == Some(end)).then_some(()) }
        })
        .await;
    }
    // Who heard what: phase 2 only where it was still owed.
    assert_eq!(p2.branch_calls("v1-committing", "2"), vec!["commit"]);
    assert!(
        p1.calls("v1-committing").is_empty(),
        "branch 1 had acknowledged already"
    );
    assert_eq!(p1.branch_calls("v1-preparing", "1"), vec!["cancel"]);
    assert_eq!(p2.branch_calls("v1-preparing", "2"), vec!["cancel"]);
    assert_eq!(p1.branch_calls("v1-stuck", "1"), vec!["cancel"]);
    assert!(
        p2.calls("v1-stuck").is_empty(),
        "branch 2 was resolved by hand"
    );
    for p in [&p1, &p2] {
        assert!(
            !p.seen()
                .iter()
                .any(|s| s.call == "commit" && s.txn_id != "v1-committing"),
            "no commit for anything but the decided commit"
        );
    }
    let stuck = admin
        .get_transaction(pb::AdminGetTransactionRequest {
            txn_id: "v1-stuck".into(),
        })
        .await?
        .into_inner()
        .transaction
        .expect("a transaction");
    assert_eq!(
        stuck.branches[1].heuristic,
        "rolled back by ops: checked by hand"
    );
    let active = admin
        .get_transaction(pb::AdminGetTransactionRequest {
            txn_id: "v1-active".into(),
        })
        .await?
        .into_inner()
        .transaction
        .expect("a transaction");
    assert_eq!(active.branches[0].payload_size, 3072);
    assert_eq!(active.branches[1].branch_id, "a-client-id");

    // The audit trail is kept, and the upgrade is in it once.
    let audit = |admin: &mut AdminClient<tonic::transport::Channel>| {
        let mut admin = admin.clone();
        async move {
            let entries = admin
                .list_audit(pb::ListAuditRequest { limit: 100 })
                .await?
                .into_inner()
                .entries;
            anyhow::Ok(
                entries
                    .into_iter()
                    .map(|e| (e.action, e.txn_id, e.reason))
                    .collect::<Vec<_>>(),
            )
        }
    };
    let entries = audit(&mut admin).await?;
    for (action, txn, reason) in [
        ("resolve-branch", "v1-stuck", "fixture reason 0"),
        ("retry-now", "v1-stuck", "fixture reason 1"),
        ("force-abort", "v1-aborted", "fixture reason 2"),
    ] {
        assert!(
            entries.contains(&(action.into(), txn.into(), reason.into())),
            "{action} kept: {entries:?}"
        );
    }
    let upgrades = |entries: &[(String, String, String)]| {
        entries.iter().filter(|e| e.0 == "upgrade-log").count()
    };
    assert_eq!(upgrades(&entries), 1);

    // Again: already format 2, nothing to upgrade, everything there.
    assert!(arbiter.terminate().await?, "clean stop");
    arbiter.restart().await?;
    let mut admin = AdminClient::connect(arbiter.endpoint.clone()).await?;
    assert_eq!(upgrades(&audit(&mut admin).await?), 1);
    for id in [
        "v1-committed",
        "v1-aborted",
        "v1-active",
        "v1-preparing",
        "v1-committing",
        "v1-stuck",
    ] {
        assert!(state_of(&mut admin, id).await.is_some(), "{id} still there");
    }
    Ok(())
}
