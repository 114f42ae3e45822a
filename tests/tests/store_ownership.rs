//! Ownership in a store several coordinator nodes share (PostgreSQL): each
//! unfinished transaction has one owner, every write of it is fenced on that
//! ownership, a dead node's transactions are claimed by the live ones without
//! overlap, and a final transaction has no owner. Store level: two or three
//! `PgLog`s on one database stand for the nodes.

use std::collections::HashSet;
use std::time::Duration;

use arbiter::config::NodeIdentity;
use arbiter::engine::{Branch, Mode, Txn, TxnState};
use arbiter::store::{OpenOptions, PgLog, Record, StoreError, TxnLog, Write, Written};
use arbiter_tests::postgres::PgCluster;

fn node(id: &str) -> NodeIdentity {
    NodeIdentity {
        id: id.into(),
        address: format!("http://{id}.invalid:7089"),
        lease: Duration::from_secs(30),
    }
}

fn open(url: &str, id: &str) -> anyhow::Result<PgLog> {
    Ok(PgLog::open_postgres(url, OpenOptions::default(), node(id))?.0)
}

fn txn(id: &str) -> Txn {
    let mut txn = Txn::new(id.into(), Mode::TwoPhase, 10_000, 1_000);
    txn.branches.push(Branch::new(
        "1".into(),
        "http://127.0.0.1:9001".into(),
        "r".into(),
        vec![1],
        2_000,
    ));
    txn
}

/// The first record of `txn` (this node creates it).
fn created(txn: &Txn) -> anyhow::Result<Write> {
    Ok(Write::Txn(Record::of(txn, &mut Written::default())?))
}

/// A later record of `txn`, by a node that created it and has it in memory.
fn updated(txn: &Txn) -> anyhow::Result<Write> {
    updated_under(txn, 0)
}

/// A later record of `txn`, by a node that holds it under `claim`.
fn updated_under(txn: &Txn, claim: i64) -> anyhow::Result<Write> {
    let mut before = txn.clone();
    before.updated_at_ms = before.updated_at_ms.wrapping_sub(1);
    let mut written = Written::claimed(&before, claim);
    Ok(Write::Txn(Record::of(txn, &mut written)?))
}

fn fenced(log: &PgLog, write: Write) -> anyhow::Result<Vec<String>> {
    Ok(ids(log.write(&[write], true)?.fenced))
}

fn ids(fenced: Vec<(String, i64)>) -> Vec<String> {
    fenced.into_iter().map(|(id, _)| id).collect()
}

/// Runs `work` on a runtime of its own (these tests are synchronous).
fn block_on<T>(work: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(work)
}

/// Ends `node`'s lease now, as if it had stopped renewing (paused, or cut
/// off), and makes the other nodes alive for long enough to claim (a node
/// claims others' transactions only after a lease alive): the test's
/// stand-in for waiting leases out.
fn expire(cluster: &PgCluster, db: &str, node: &str) -> anyhow::Result<()> {
    block_on(async {
        let client = cluster.connect(db).await?;
        client
            .execute(
                "UPDATE arbiter_nodes SET lease_until = now() - interval '1 second' \
                 WHERE node_id = $1",
                &[&node],
            )
            .await?;
        client
            .execute(
                "UPDATE arbiter_nodes SET alive_since = now() - interval '1 hour' \
                 WHERE node_id <> $1",
                &[&node],
            )
            .await?;
        Ok(())
    })
}

fn database(cluster: &PgCluster, name: &str) -> anyhow::Result<String> {
    block_on(cluster.create_database(name))?;
    Ok(cluster.store_url(name))
}

#[test]
fn a_node_claims_others_transactions_only_after_a_lease_alive() -> anyhow::Result<()> {
    let cluster = PgCluster::start(0)?;
    let url = database(&cluster, "patience")?;
    let a = open(&url, "a")?;
    assert!(fenced(&a, created(&txn("t"))?)?.is_empty());
    block_on(async {
        let client = cluster.connect("patience").await?;
        client
            .execute(
                "UPDATE arbiter_nodes SET lease_until = now() - interval '1 second'",
                &[],
            )
            .await?;
        Ok(())
    })?;
    // b just joined (as after a database outage, when every lease ran out
    // and the nodes come back one by one): a may still renew.
    let b = open(&url, "b")?;
    assert!(
        b.take_over(10, None)?.is_empty(),
        "b has not been alive for a lease"
    );
    expire(&cluster, "patience", "a")?;
    assert_eq!(b.take_over(10, None)?.len(), 1);
    Ok(())
}

#[test]
fn a_taken_over_transaction_is_fenced_for_its_old_owner() -> anyhow::Result<()> {
    let cluster = PgCluster::start(0)?;
    let url = database(&cluster, "fencing")?;
    let a = open(&url, "a")?;
    let b = open(&url, "b")?;

    let mut t = txn("t1");
    assert!(
        fenced(&a, created(&t)?)?.is_empty(),
        "a creates and owns t1"
    );
    let owner = b
        .owner("t1")?
        .ok_or_else(|| anyhow::anyhow!("t1 has no owner"))?;
    assert_eq!(
        (owner.node_id.as_str(), owner.alive, owner.mine),
        ("a", true, false)
    );
    assert!(a.owner("t1")?.is_some_and(|o| o.mine));

    // b may neither write it nor claim it while a lives.
    t.state = TxnState::Aborting;
    assert_eq!(fenced(&b, updated(&t)?)?, vec!["t1".to_string()]);
    assert_eq!(
        b.get("t1")?.map(|t| t.state),
        Some(TxnState::Active),
        "nothing of b's written"
    );
    assert!(b.take_over(10, None)?.is_empty(), "a is alive");

    // a stops renewing: b takes t1 over; a's late decision is refused.
    expire(&cluster, "fencing", "a")?;
    let taken = b.take_over(10, None)?;
    assert_eq!(taken.len(), 1);
    assert_eq!(
        (taken[0].txn.id.as_str(), taken[0].from.as_str()),
        ("t1", "a")
    );
    let mut late = txn("t1");
    late.state = TxnState::Committing;
    assert_eq!(fenced(&a, updated(&late)?)?, vec!["t1".to_string()]);
    assert_eq!(b.get("t1")?.map(|t| t.state), Some(TxnState::Active));

    // The new owner writes (under its claim only), finishes, and the
    // transaction has no owner.
    let claim = taken[0].claim;
    assert_eq!(
        fenced(&b, updated(&t)?)?,
        vec!["t1".to_string()],
        "an older claim"
    );
    t.state = TxnState::Aborted;
    t.finished_at_ms = Some(2_000);
    assert!(fenced(&b, updated_under(&t, claim)?)?.is_empty());
    assert_eq!(b.owner("t1")?, None, "a final transaction has no owner");
    assert_eq!(a.get("t1")?.map(|t| t.state), Some(TxnState::Aborted));
    // ... and its old owner still cannot write it, nor create it anew.
    assert_eq!(fenced(&a, updated(&late)?)?, vec!["t1".to_string()]);
    assert_eq!(fenced(&a, created(&late)?)?, vec!["t1".to_string()]);
    assert_eq!(b.get("t1")?.map(|t| t.state), Some(TxnState::Aborted));
    Ok(())
}

#[test]
fn one_batch_writes_what_it_owns_and_refuses_only_the_rest() -> anyhow::Result<()> {
    let cluster = PgCluster::start(0)?;
    let url = database(&cluster, "mixed")?;
    let a = open(&url, "a")?;
    let b = open(&url, "b")?;
    let theirs = txn("theirs");
    assert!(fenced(&b, created(&theirs)?)?.is_empty());

    // The same client-chosen id begun on two nodes: one owner only.
    let both = txn("both");
    assert!(fenced(&b, created(&both)?)?.is_empty());
    let mut ours = txn("ours");
    let wrote = a.write(&[created(&ours)?, created(&both)?, updated(&theirs)?], true)?;
    let refused: HashSet<String> = ids(wrote.fenced).into_iter().collect();
    assert_eq!(
        refused,
        HashSet::from(["both".to_string(), "theirs".to_string()])
    );
    assert!(
        a.get("ours")?.is_some(),
        "the owned part of the batch is written"
    );
    ours.state = TxnState::Preparing;
    assert!(fenced(&a, updated(&ours)?)?.is_empty());
    assert_eq!(b.get("ours")?.map(|t| t.state), Some(TxnState::Preparing));
    Ok(())
}

#[test]
fn survivors_claim_a_dead_nodes_transactions_disjointly() -> anyhow::Result<()> {
    const COUNT: usize = 1_000;
    let cluster = PgCluster::start(0)?;
    let url = database(&cluster, "claims")?;
    let dead = open(&url, "dead")?;
    let batch: Vec<Write> = (0..COUNT)
        .map(|n| created(&txn(&format!("t{n:04}"))))
        .collect::<anyhow::Result<_>>()?;
    assert!(dead.write(&batch, true)?.fenced.is_empty());
    let survivors = [open(&url, "s1")?, open(&url, "s2")?, open(&url, "s3")?];
    expire(&cluster, "claims", "dead")?;

    // All three claim at once, in small batches, until nothing is left.
    let claimed: Vec<Vec<String>> = std::thread::scope(|scope| {
        let claims: Vec<_> = survivors
            .iter()
            .map(|log| {
                scope.spawn(move || -> Result<Vec<String>, StoreError> {
                    let mut mine = Vec::new();
                    loop {
                        let taken = log.take_over(16, None)?;
                        if taken.is_empty() {
                            return Ok(mine);
                        }
                        mine.extend(taken.into_iter().map(|t| t.txn.id));
                    }
                })
            })
            .collect();
        claims
            .into_iter()
            .map(|c| {
                c.join()
                    .map_err(|_| anyhow::anyhow!("claimer panicked"))?
                    .map_err(Into::into)
            })
            .collect::<anyhow::Result<_>>()
    })?;
    let mut all = HashSet::new();
    for (n, mine) in claimed.iter().enumerate() {
        for id in mine {
            assert!(
                all.insert(id.clone()),
                "{id} claimed twice (again by survivor {n})"
            );
        }
    }
    assert_eq!(all.len(), COUNT, "every transaction claimed once");
    for (log, mine) in survivors.iter().zip(&claimed) {
        for id in mine.iter().take(20) {
            assert!(log.owner(id)?.is_some_and(|o| o.mine), "{id}");
        }
    }
    let listed = survivors[0].nodes()?.unwrap_or_default();
    let owned: u64 = listed
        .iter()
        .filter(|n| n.node_id != "dead")
        .map(|n| n.owned)
        .sum();
    assert_eq!(owned, COUNT as u64, "{listed:?}");
    Ok(())
}

#[test]
fn a_node_rejoining_under_its_id_takes_its_transactions_back_as_orphans() -> anyhow::Result<()> {
    let cluster = PgCluster::start(0)?;
    let url = database(&cluster, "rejoin")?;
    let first = open(&url, "n")?;
    let t = txn("t");
    assert!(fenced(&first, created(&t)?)?.is_empty());
    // A second process under the same id (a restart before the lease ran
    // out): the first run's transaction is an orphan, the first run fenced.
    let second = open(&url, "n")?;
    let taken = second.take_over(10, None)?;
    assert_eq!(
        taken.iter().map(|t| t.txn.id.as_str()).collect::<Vec<_>>(),
        ["t"]
    );
    assert_eq!(fenced(&first, updated(&t)?)?, vec!["t".to_string()]);
    assert!(fenced(&second, updated_under(&t, taken[0].claim)?)?.is_empty());
    Ok(())
}

#[test]
fn a_stale_copy_is_fenced_even_when_its_node_claims_the_transaction_back() -> anyhow::Result<()> {
    let cluster = PgCluster::start(0)?;
    let url = database(&cluster, "stale")?;
    let a = open(&url, "a")?;
    let b = open(&url, "b")?;
    let mut t = txn("t");
    assert!(fenced(&a, created(&t)?)?.is_empty());
    // a pauses; b takes t over and decides to abort; then b dies and a,
    // back, claims t again. The copy a kept from before must not write.
    expire(&cluster, "stale", "a")?;
    let by_b = b.take_over(10, None)?;
    t.state = TxnState::Aborting;
    assert!(fenced(&b, updated_under(&t, by_b[0].claim)?)?.is_empty());
    expire(&cluster, "stale", "b")?;
    block_on(async {
        let client = cluster.connect("stale").await?;
        client
            .execute(
                "UPDATE arbiter_nodes SET lease_until = now() + interval '30 seconds', \
                   alive_since = now() - interval '1 hour' WHERE node_id = 'a'",
                &[],
            )
            .await?;
        Ok(())
    })?;
    let by_a = a.take_over(10, None)?;
    assert_eq!(by_a.len(), 1);
    assert_eq!(by_a[0].txn.state, TxnState::Aborting, "a sees b's decision");
    let mut stale = txn("t");
    stale.state = TxnState::Committing;
    assert_eq!(
        fenced(&a, updated(&stale)?)?,
        vec!["t".to_string()],
        "the old copy"
    );
    assert_eq!(a.get("t")?.map(|t| t.state), Some(TxnState::Aborting));
    t.state = TxnState::Aborted;
    t.finished_at_ms = Some(3_000);
    assert!(fenced(&a, updated_under(&t, by_a[0].claim)?)?.is_empty());
    Ok(())
}

#[test]
fn a_transaction_over_in_one_batch_is_never_begun_again() -> anyhow::Result<()> {
    let cluster = PgCluster::start(0)?;
    let url = database(&cluster, "once")?;
    let a = open(&url, "a")?;
    let b = open(&url, "b")?;
    // Begun and aborted in one batch (a timeout of 1 ms): no owner is left.
    let mut t = txn("once");
    let mut written = Written::default();
    let begun = Write::Txn(Record::of(&t, &mut written)?);
    t.state = TxnState::Aborted;
    t.finished_at_ms = Some(1_001);
    let over = Write::Txn(Record::of(&t, &mut written)?);
    assert!(a.write(&[begun, over], true)?.fenced.is_empty());
    assert_eq!(a.owner("once")?, None);
    // The same client-chosen id begun on b afterwards is refused.
    assert_eq!(
        fenced(&b, created(&txn("once"))?)?,
        vec!["once".to_string()]
    );
    assert_eq!(b.get("once")?.map(|t| t.state), Some(TxnState::Aborted));
    Ok(())
}
