//! A batch PostgreSQL committed but whose answer was lost is sent again by
//! the writer: it must count as written, not as refused, even though the
//! first attempt already released the owner of a transaction it finished.
//! A file of its own: the failpoint is global to the test process.

use arbiter::config::NodeIdentity;
use arbiter::engine::{Branch, Mode, Txn, TxnState};
use arbiter::store::{OpenOptions, PgLog, Record, StoreError, TxnLog, Write, Written};
use arbiter_tests::postgres::PgCluster;

#[test]
fn a_batch_written_again_after_a_lost_answer_is_not_refused() -> anyhow::Result<()> {
    let cluster = PgCluster::start(0)?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(cluster.create_database("again"))?;
    let node = NodeIdentity {
        id: "a".into(),
        ..NodeIdentity::default()
    };
    let (log, _) = PgLog::open_postgres(&cluster.store_url("again"), OpenOptions::default(), node)?;

    // Begun and finished in one batch.
    let mut t = Txn::new("again".into(), Mode::TwoPhase, 10_000, 1_000);
    t.branches.push(Branch::new(
        "1".into(),
        "http://127.0.0.1:9001".into(),
        "r".into(),
        vec![1],
        2_000,
    ));
    let mut written = Written::default();
    let begun = Write::Txn(Record::of(&t, &mut written)?);
    t.state = TxnState::Aborted;
    t.finished_at_ms = Some(1_001);
    let over = Write::Txn(Record::of(&t, &mut written)?);
    let batch = [begun, over];

    fail::cfg("pg-commit-answer-lost", "1*return").map_err(anyhow::Error::msg)?;
    let first = log.write(&batch, true);
    assert!(
        matches!(first, Err(StoreError::Unreachable(_))),
        "{first:?}"
    );
    fail::remove("pg-commit-answer-lost");
    let again = log.write(&batch, true)?;
    assert!(
        again.fenced.is_empty(),
        "refused when sent again: {again:?}"
    );
    assert_eq!(log.get("again")?.map(|t| t.state), Some(TxnState::Aborted));
    Ok(())
}
