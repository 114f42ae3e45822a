//! Writes the v1 log fixture (`tests/fixtures/log-v1`) with the format-1 code
//! of commit 478c200. Kept in the commit that added the fixture; later formats
//! cannot produce v1 any more, which is the point of the fixture.
//!
//! Participants of the fixture: 2PC and TCC recorders at 127.0.0.1:17471 and
//! 127.0.0.1:17472 (outside Linux's ephemeral port range).
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;

use arbiter::engine::{Attempt, Branch, BranchState, CallKind, Mode, Txn, TxnState};
use arbiter::store::{AuditEntry, LogWriter, Record, SledLog, TxnLog, Write};

const P1: &str = "http://127.0.0.1:17471";
const P2: &str = "http://127.0.0.1:17472";
const T0: u64 = 1_764_000_000_000;

fn branch(
    id: &str,
    participant: &str,
    resource: &str,
    payload: &[u8],
    state: BranchState,
) -> Branch {
    let mut b = Branch::new(
        id.into(),
        participant.into(),
        resource.into(),
        payload.to_vec(),
        5_000,
    );
    b.state = state;
    b
}

fn attempt(at: u64, call: CallKind, n: u32, ok: bool, result: &str) -> Attempt {
    Attempt {
        at_ms: T0 + at,
        call,
        attempt: n,
        ok,
        result: result.into(),
    }
}

fn main() {
    let dir = std::env::args()
        .nth(1)
        .expect("usage: write_v1_fixture DIR");
    let log: Arc<dyn TxnLog> = Arc::new(SledLog::open(std::path::Path::new(&dir)).expect("opens"));
    let writer = LogWriter::start(log.clone()).expect("writer");
    let mut txns = Vec::new();

    // Committed and finished (2PC).
    let mut t = Txn::new("v1-committed".into(), Mode::TwoPhase, 30_000, T0);
    t.branches
        .push(branch("1", P1, "r1", b"debit:10", BranchState::Committed));
    t.branches
        .push(branch("2", P2, "r2", b"credit:10", BranchState::Committed));
    for b in &mut t.branches {
        b.attempts = 2;
        b.phase_attempts = 1;
        b.prepare_sent = true;
        b.history = vec![
            attempt(5, CallKind::Prepare, 1, true, "YES"),
            attempt(9, CallKind::Commit, 1, true, "acknowledged"),
        ];
    }
    t.state = TxnState::Committed;
    t.decided_at_ms = Some(T0 + 6);
    t.finished_at_ms = Some(T0 + 10);
    t.updated_at_ms = T0 + 10;
    txns.push(t);

    // Aborted and finished (TCC): a NO vote.
    let mut t = Txn::new("v1-aborted".into(), Mode::Tcc, 30_000, T0 + 100);
    t.branches
        .push(branch("1", P1, "r1", b"reserve:1", BranchState::RolledBack));
    t.branches
        .push(branch("2", P2, "r2", b"reserve:2", BranchState::RolledBack));
    t.branches[0].prepare_sent = true;
    t.branches[1].prepare_sent = true;
    t.branches[1].history = vec![attempt(
        105,
        CallKind::Prepare,
        1,
        false,
        "NO: out of stock",
    )];
    t.state = TxnState::Aborted;
    t.reason = "branch 2 voted NO: out of stock".into();
    t.decided_at_ms = Some(T0 + 106);
    t.finished_at_ms = Some(T0 + 110);
    t.updated_at_ms = T0 + 110;
    txns.push(t);

    // Undecided: ACTIVE with two registered branches (2PC), payload of 3 KiB.
    let mut t = Txn::new("v1-active".into(), Mode::TwoPhase, 86_400_000, T0 + 200);
    t.branches
        .push(branch("1", P1, "r1", &[7u8; 3072], BranchState::Registered));
    t.branches.push(branch(
        "a-client-id",
        P2,
        "r3",
        b"",
        BranchState::Registered,
    ));
    txns.push(t);

    // Undecided: PREPARING (TCC), one try answered YES, one outstanding.
    let mut t = Txn::new("v1-preparing".into(), Mode::Tcc, 86_400_000, T0 + 300);
    t.branches
        .push(branch("1", P1, "r1", b"hold:5", BranchState::Prepared));
    t.branches
        .push(branch("2", P2, "r2", b"hold:6", BranchState::Registered));
    for b in &mut t.branches {
        b.prepare_sent = true;
        b.attempts = 1;
        b.phase_attempts = 1;
    }
    t.branches[0].history = vec![attempt(305, CallKind::Prepare, 1, true, "YES")];
    t.state = TxnState::Preparing;
    t.updated_at_ms = T0 + 305;
    txns.push(t);

    // Decided, unfinished: COMMITTING (2PC), one branch acknowledged, one failing.
    let mut t = Txn::new("v1-committing".into(), Mode::TwoPhase, 30_000, T0 + 400);
    t.branches
        .push(branch("1", P1, "r1", b"debit:7", BranchState::Committed));
    t.branches
        .push(branch("2", P2, "r2", b"credit:7", BranchState::Prepared));
    for b in &mut t.branches {
        b.prepare_sent = true;
    }
    t.branches[1].attempts = 3;
    t.branches[1].phase_attempts = 2;
    t.branches[1].last_error = Some("UNAVAILABLE: connection refused".into());
    t.branches[1].failing_since_ms = Some(T0 + 420);
    t.branches[1].retry_seq = 2;
    t.branches[1].next_retry_at_ms = Some(T0 + 600);
    t.branches[1].history = vec![
        attempt(405, CallKind::Prepare, 1, true, "YES"),
        attempt(
            420,
            CallKind::Commit,
            1,
            false,
            "UNAVAILABLE: connection refused",
        ),
    ];
    t.state = TxnState::Committing;
    t.decided_at_ms = Some(T0 + 410);
    t.updated_at_ms = T0 + 420;
    txns.push(t);

    // Decided, unfinished and stuck: ABORTING (TCC) with a failing cancel,
    // and a branch an operator resolved by hand.
    let mut t = Txn::new("v1-stuck".into(), Mode::Tcc, 30_000, T0 + 500);
    t.branches
        .push(branch("1", P1, "r1", b"hold:9", BranchState::Registered));
    t.branches
        .push(branch("2", P2, "r2", b"hold:10", BranchState::RolledBack));
    t.branches[0].prepare_sent = true;
    t.branches[0].attempts = 12;
    t.branches[0].phase_attempts = 11;
    t.branches[0].last_error = Some("INTERNAL: cancel failed".into());
    t.branches[0].failing_since_ms = Some(T0 + 520);
    t.branches[1].prepare_sent = true;
    t.branches[1].heuristic = Some("rolled back by ops: checked by hand".into());
    t.state = TxnState::Aborting;
    t.reason = "timed out".into();
    t.decided_at_ms = Some(T0 + 510);
    t.stuck_since_ms = Some(T0 + 900);
    t.updated_at_ms = T0 + 900;
    txns.push(t);

    let mut pending = Vec::new();
    for t in &txns {
        pending.push(writer.submit(Write::Txn(Record::of(t).expect("encodes"))));
    }
    for (i, (action, txn, branch_id)) in [
        ("resolve-branch", "v1-stuck", "2"),
        ("retry-now", "v1-stuck", ""),
        ("force-abort", "v1-aborted", ""),
    ]
    .into_iter()
    .enumerate()
    {
        pending.push(writer.submit(Write::Audit(AuditEntry {
            at_ms: T0 + 1_000 + i as u64,
            seq: i as u64 + 1,
            action: action.into(),
            txn_id: txn.into(),
            branch_id: branch_id.into(),
            reason: format!("fixture reason {i}"),
            caller: "token:ops".into(),
            result: "ok".into(),
        })));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(async {
        for p in pending {
            p.await.expect("answered").expect("durable");
        }
    });
    writer.close();
    println!(
        "wrote {} transactions and 3 audit entries to {dir}",
        txns.len()
    );
}
