//! The behaviour every [`TxnLog`] must have. Each backend runs [`run_all`]
//! with a factory for fresh, empty logs; a backend that can be reopened also
//! passes [`reopen_keeps_everything`]. Lives with the tests, not in the
//! release library.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;

use arbiter::engine::{Attempt, Branch, BranchState, CallKind, Mode, Txn, TxnState};
use arbiter::store::{
    AuditEntry, LogWriter, MemoryLog, OpenOptions, Record, SledLog, StoreError, TxnLog, Write,
    Written,
};

/// A transaction with two branches, in `state`.
pub fn sample_txn(id: &str, state: TxnState, finished_at_ms: Option<u64>) -> Txn {
    let mut txn = Txn::new(id.to_string(), Mode::TwoPhase, 10_000, 1_000);
    txn.state = state;
    txn.finished_at_ms = finished_at_ms;
    for n in 1..=2 {
        let mut branch = Branch::new(
            n.to_string(),
            format!("http://127.0.0.1:{}", 9000 + n),
            "account.debit".to_string(),
            vec![n as u8; 3],
            2_000,
        );
        branch.state = BranchState::Prepared;
        txn.branches.push(branch);
    }
    txn
}

/// A transaction's full record, as its first write would be.
pub fn record(txn: &Txn) -> Write {
    match Record::of(txn, &mut Written::default()) {
        Ok(record) => Write::Txn(record),
        Err(e) => panic!("sample transaction does not encode: {e}"),
    }
}

fn ids(mut txns: Vec<Txn>) -> Vec<String> {
    let mut ids: Vec<String> = txns.drain(..).map(|t| t.id).collect();
    ids.sort();
    ids
}

/// Runs every check against fresh logs made by `fresh`.
pub fn run_all(fresh: &dyn Fn() -> Box<dyn TxnLog>) {
    written_records_read_back(fresh().as_ref());
    later_record_replaces_earlier_in_one_batch(fresh().as_ref());
    unfinished_lists_exactly_the_unfinished(fresh().as_ref());
    collection_takes_only_old_finished(fresh().as_ref());
    unknown_id_is_none(fresh().as_ref());
    scans_page_in_id_order_both_ways(fresh().as_ref());
    audit_entries_come_back_newest_first(fresh().as_ref());
    records_of_changes_fold_back_into_the_whole(fresh().as_ref());
}

/// A transaction written step by step (each record only what changed since
/// the last) reads back whole at every step.
pub fn records_of_changes_fold_back_into_the_whole(log: &dyn TxnLog) {
    let mut written = Written::default();
    let mut txn = sample_txn("steps", TxnState::Active, None);
    let mut write = |txn: &Txn| {
        let record = Record::of(txn, &mut written).expect_ok("encode");
        let ops = record.ops.len();
        log.write(&[Write::Txn(record)], true).expect_ok("write");
        assert_eq!(log.get(&txn.id).expect_ok("get").as_ref(), Some(txn));
        ops
    };
    let first = write(&txn);
    txn.branches.push(Branch::new(
        "3".into(),
        "http://127.0.0.1:9003".into(),
        "r".into(),
        vec![9; 5_000],
        1_000,
    ));
    txn.state = TxnState::Preparing;
    let with_branch = write(&txn);
    assert_eq!(with_branch, 2, "the new spec and the transaction's record");
    txn.branches[0].state = BranchState::Committed;
    txn.branches[0].history.push(Attempt {
        at_ms: 7,
        call: CallKind::Commit,
        attempt: 1,
        ok: true,
        result: "acknowledged".into(),
    });
    txn.state = TxnState::Committing;
    txn.decided_at_ms = Some(6);
    assert_eq!(
        write(&txn),
        1,
        "only the transaction's record: no payload rewritten"
    );
    txn.state = TxnState::Committed;
    txn.finished_at_ms = Some(8);
    write(&txn);
    assert_eq!(first, 3, "specs, record and the unfinished index");
    assert!(log.unfinished().expect_ok("unfinished").is_empty());
    assert_eq!(log.collect_finished(9, 10).expect_ok("collect"), 1);
    assert_eq!(log.get("steps").expect_ok("get"), None);
    assert!(
        log.scan(None, false, 10).expect_ok("scan").is_empty(),
        "nothing of it is left"
    );
}

pub fn scans_page_in_id_order_both_ways(log: &dyn TxnLog) {
    let batch: Vec<Write> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|id| record(&sample_txn(id, TxnState::Active, None)))
        .collect();
    log.write(&batch, true).expect_ok("write");
    let page = |after: Option<&str>, newest: bool, limit: usize| -> Vec<String> {
        ids_in_order(log.scan(after, newest, limit).expect_ok("scan"))
    };
    assert_eq!(page(None, false, 2), vec!["a", "b"]);
    assert_eq!(page(Some("b"), false, 2), vec!["c", "d"]);
    assert_eq!(page(Some("d"), false, 9), vec!["e"]);
    assert_eq!(page(None, true, 2), vec!["e", "d"]);
    assert_eq!(page(Some("d"), true, 9), vec!["c", "b", "a"]);
    assert!(page(Some("a"), true, 9).is_empty());
}

pub fn audit_entries_come_back_newest_first(log: &dyn TxnLog) {
    let entry = |at_ms: u64, seq: u64, action: &str| AuditEntry {
        at_ms,
        seq,
        action: action.to_string(),
        txn_id: "t".into(),
        branch_id: String::new(),
        reason: "because".into(),
        caller: "127.0.0.1:1".into(),
        result: "ABORTING".into(),
    };
    log.write(
        &[
            Write::Audit(entry(10, 1, "force-abort")),
            Write::Audit(entry(10, 2, "retry-now")),
            Write::Audit(entry(5, 9, "resolve-branch")),
        ],
        true,
    )
    .expect_ok("write");
    let actions: Vec<String> = log
        .audit(10)
        .expect_ok("audit")
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(actions, vec!["retry-now", "force-abort", "resolve-branch"]);
    assert_eq!(log.audit(1).expect_ok("audit").len(), 1);
    assert!(
        log.unfinished().expect_ok("unfinished").is_empty(),
        "audit entries are not transactions"
    );
}

fn ids_in_order(txns: Vec<Txn>) -> Vec<String> {
    txns.into_iter().map(|t| t.id).collect()
}

pub fn written_records_read_back(log: &dyn TxnLog) {
    let txn = sample_txn("a", TxnState::Active, None);
    log.write(&[record(&txn)], true).expect_ok("write");
    assert_eq!(log.get("a").expect_ok("get"), Some(txn));
}

pub fn later_record_replaces_earlier_in_one_batch(log: &dyn TxnLog) {
    let first = sample_txn("a", TxnState::Active, None);
    let mut second = first.clone();
    second.state = TxnState::Committing;
    second.decided_at_ms = Some(2_000);
    log.write(&[record(&first), record(&second)], true)
        .expect_ok("write");
    assert_eq!(log.get("a").expect_ok("get"), Some(second));
}

pub fn unfinished_lists_exactly_the_unfinished(log: &dyn TxnLog) {
    log.write(
        &[
            record(&sample_txn("open", TxnState::Active, None)),
            record(&sample_txn("deciding", TxnState::Committing, None)),
            record(&sample_txn("done", TxnState::Committing, None)),
        ],
        true,
    )
    .expect_ok("write");
    log.write(
        &[record(&sample_txn(
            "done",
            TxnState::Committed,
            Some(5_000),
        ))],
        true,
    )
    .expect_ok("write");
    assert_eq!(
        ids(log.unfinished().expect_ok("unfinished")),
        vec!["deciding".to_string(), "open".to_string()]
    );
    assert_eq!(
        log.get("done").expect_ok("get").map(|t| t.state),
        Some(TxnState::Committed)
    );
}

pub fn collection_takes_only_old_finished(log: &dyn TxnLog) {
    log.write(
        &[
            record(&sample_txn("old1", TxnState::Committed, Some(100))),
            record(&sample_txn("old2", TxnState::Aborted, Some(200))),
            record(&sample_txn("new", TxnState::Committed, Some(900))),
            record(&sample_txn("open", TxnState::Aborting, None)),
        ],
        true,
    )
    .expect_ok("write");
    assert_eq!(log.collect_finished(500, 1).expect_ok("collect"), 1);
    assert_eq!(log.get("old1").expect_ok("get"), None, "oldest goes first");
    assert!(log.get("old2").expect_ok("get").is_some());
    assert_eq!(log.collect_finished(500, 100).expect_ok("collect"), 1);
    assert_eq!(log.get("old2").expect_ok("get"), None);
    assert!(log.get("new").expect_ok("get").is_some());
    assert!(log.get("open").expect_ok("get").is_some());
    assert_eq!(log.collect_finished(u64::MAX, 100).expect_ok("collect"), 1);
    assert!(
        log.get("open").expect_ok("get").is_some(),
        "unfinished is never collected"
    );
    assert_eq!(ids(log.unfinished().expect_ok("unfinished")), vec!["open"]);
}

pub fn unknown_id_is_none(log: &dyn TxnLog) {
    assert_eq!(log.get("nope").expect_ok("get"), None);
    assert!(log.unfinished().expect_ok("unfinished").is_empty());
    assert_eq!(log.collect_finished(u64::MAX, 10).expect_ok("collect"), 0);
}

/// For durable backends: what was written is all there after reopening.
pub fn reopen_keeps_everything(first: Box<dyn TxnLog>, reopen: &dyn Fn() -> Box<dyn TxnLog>) {
    let open = sample_txn("open", TxnState::Committing, None);
    let done = sample_txn("done", TxnState::Committed, Some(5));
    first
        .write(&[record(&open), record(&done)], true)
        .expect_ok("write");
    drop(first);
    let log = reopen();
    assert_eq!(log.get("open").expect_ok("get"), Some(open));
    assert_eq!(log.get("done").expect_ok("get"), Some(done));
    assert_eq!(ids(log.unfinished().expect_ok("unfinished")), vec!["open"]);
}

/// `expect` that names the operation, for results in the suite.
trait ExpectOk<T> {
    fn expect_ok(self, op: &str) -> T;
}

impl<T, E: std::fmt::Display> ExpectOk<T> for Result<T, E> {
    fn expect_ok(self, op: &str) -> T {
        match self {
            Ok(v) => v,
            Err(e) => panic!("{op} failed: {e}"),
        }
    }
}

fn open_sled(path: &std::path::Path) -> SledLog {
    SledLog::open(path, OpenOptions::default())
        .expect_ok("open")
        .0
}

#[test]
fn memory_log_conforms() {
    run_all(&|| Box::new(MemoryLog::new()));
}

#[test]
fn sled_log_conforms() {
    let dirs = std::cell::RefCell::new(Vec::new());
    run_all(&|| {
        let dir = tempfile::tempdir().expect_ok("tempdir");
        let log = open_sled(&dir.path().join("log"));
        dirs.borrow_mut().push(dir);
        Box::new(log)
    });
}

#[test]
fn sled_log_keeps_everything_across_reopen() {
    let dir = tempfile::tempdir().expect_ok("tempdir");
    let path = dir.path().join("log");
    let first = open_sled(&path);
    reopen_keeps_everything(Box::new(first), &|| Box::new(open_sled(&path)));
}

#[test]
fn sled_log_refuses_foreign_and_damaged_directories() {
    let dir = tempfile::tempdir().expect_ok("tempdir");
    std::fs::write(dir.path().join("notes.txt"), "hello").expect_ok("write");
    let err = SledLog::open(dir.path(), OpenOptions::default())
        .err()
        .map(|e| e.to_string());
    assert!(err.is_some_and(|e| e.contains("holds no Arbiter log")));

    let path = dir.path().join("log");
    drop(open_sled(&path));
    std::fs::remove_file(path.join("db")).expect_ok("remove db");
    let err = SledLog::open(&path, OpenOptions::default())
        .err()
        .map(|e| e.to_string());
    assert!(
        err.is_some_and(|e| e.contains("damaged")),
        "damaged log refused"
    );
}

#[test]
fn writer_completes_callers_once_durable_and_batches() {
    let dir = tempfile::tempdir().expect_ok("tempdir");
    let log: Arc<dyn TxnLog> = Arc::new(open_sled(dir.path()));
    let writer = LogWriter::start(log.clone(), Box::new(|_| {})).expect_ok("start");
    let pending: Vec<_> = (0..200)
        .map(|i| {
            writer.submit(record(&sample_txn(
                &format!("t{i:03}"),
                TxnState::Active,
                None,
            )))
        })
        .collect();
    for durable in pending {
        durable
            .blocking_recv()
            .expect_ok("writer answered")
            .expect_ok("durable");
    }
    assert_eq!(log.unfinished().expect_ok("unfinished").len(), 200);
    let stats = writer.stats();
    let batches = stats.batches.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        stats.records.load(std::sync::atomic::Ordering::Relaxed),
        200
    );
    assert!((1..=200).contains(&batches));
    writer.close();
    let late = writer.submit(record(&sample_txn("late", TxnState::Active, None)));
    assert_eq!(
        late.blocking_recv().expect_ok("answered"),
        Err(StoreError::Closed)
    );
}

#[test]
fn lazy_writes_cost_no_flush_and_are_durable_after_close() {
    let dir = tempfile::tempdir().expect_ok("tempdir");
    let path = dir.path().join("log");
    let log: Arc<dyn TxnLog> = Arc::new(open_sled(&path));
    let writer = LogWriter::start(log.clone(), Box::new(|_| {})).expect_ok("start");
    let done = sample_txn("done", TxnState::Committed, Some(5));
    writer
        .submit_lazy(record(&done))
        .blocking_recv()
        .expect_ok("answered")
        .expect_ok("written");
    let stats = writer.stats();
    assert_eq!(
        stats.batches.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "no flush for a lazy write"
    );
    assert_eq!(
        log.get("done").expect_ok("get"),
        Some(done.clone()),
        "readable at once"
    );
    writer.close();
    drop(writer);
    drop(log);
    let reopened = open_sled(&path);
    assert_eq!(
        reopened.get("done").expect_ok("get"),
        Some(done),
        "close made it durable"
    );
}

/// A fresh database of `cluster` per log, as a PostgreSQL-backed log.
fn open_postgres(url: &str) -> arbiter::store::PgLog {
    arbiter::store::PgLog::open_postgres(
        url,
        OpenOptions::default(),
        arbiter::config::NodeIdentity::default(),
    )
    .expect_ok("open on PostgreSQL")
    .0
}

/// Runs `work` to its end on a runtime of its own (the suite is synchronous).
fn block_on<T>(work: impl std::future::Future<Output = anyhow::Result<T>>, what: &str) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect_ok("runtime")
        .block_on(work)
        .expect_ok(what)
}

fn create_database(cluster: &arbiter_tests::postgres::PgCluster, name: &str) {
    block_on(cluster.create_database(name), "create database");
}

/// Why opening a PostgreSQL log at `url` failed, if it did.
fn open_error(url: &str) -> Option<String> {
    arbiter::store::PgLog::open_postgres(
        url,
        OpenOptions::default(),
        arbiter::config::NodeIdentity::default(),
    )
    .err()
    .map(|e| e.to_string())
}

#[test]
fn postgres_log_conforms_and_keeps_everything_across_reopen() {
    let cluster = arbiter_tests::postgres::PgCluster::start(0).expect_ok("PostgreSQL");
    let n = std::cell::Cell::new(0);
    run_all(&|| {
        n.set(n.get() + 1);
        let name = format!("conform{}", n.get());
        create_database(&cluster, &name);
        Box::new(open_postgres(&cluster.store_url(&name)))
    });
    create_database(&cluster, "reopen");
    let url = cluster.store_url("reopen");
    reopen_keeps_everything(Box::new(open_postgres(&url)), &|| {
        Box::new(open_postgres(&url))
    });
}

#[test]
fn postgres_log_refuses_a_newer_schema_and_a_bad_url() {
    let cluster = arbiter_tests::postgres::PgCluster::start(0).expect_ok("PostgreSQL");
    create_database(&cluster, "newer");
    let url = cluster.store_url("newer");
    drop(open_postgres(&url));
    block_on(
        async {
            let client = cluster.connect("newer").await?;
            client
                .batch_execute("UPDATE arbiter_schema SET version = version + 1")
                .await?;
            anyhow::Ok(())
        },
        "bump the schema",
    );
    let err = open_error(&url);
    assert!(
        err.as_ref()
            .is_some_and(|e| e.contains("newer than this binary")),
        "{err:?}"
    );
    let unreachable = format!(
        "postgres://postgres@127.0.0.1:{}/x",
        arbiter_tests::process::free_port().expect_ok("port")
    );
    let err = open_error(&unreachable);
    assert!(
        err.as_ref()
            .is_some_and(|e| e.contains("cannot use PostgreSQL")),
        "{err:?}"
    );
}
