//! Who drives each unfinished transaction (`arbiter_owners`): a row per
//! transaction with its owner node and the epoch that node held when it
//! took it. Every write of the transaction is conditional on that row (see
//! `session::WriterSession::write`), so a node that lost a transaction
//! writes nothing more for it.
//!
//! A transaction is up for takeover when its owner's lease ran out, or its
//! owner joined again since (a new epoch: the process that held it is
//! gone). Claims lock with `FOR UPDATE SKIP LOCKED`, so nodes claiming at
//! once split the work and never take the same transaction, and a batch
//! being written by the old owner is waited for or passed by, never
//! overwritten. A node claims only while its own lease runs, and another
//! node's transactions only once its lease has run unbroken for a lease.

use deadpool_postgres::Pool;

use crate::store::postgres::session::{pg_error, pool_error};
use crate::store::{Owner, StoreError};

/// The orphans' condition: no live node holds them at their epoch.
const ORPHANED: &str = "NOT EXISTS (SELECT 1 FROM arbiter_nodes n \
                         WHERE n.node_id = o.node_id AND n.epoch = o.epoch \
                         AND n.lease_until > now())";

/// Claims up to `limit` orphaned transactions (or only `txn_id`) for
/// `node` at `epoch`; returns each with the node that owned it.
///
/// Two statements in one transaction: the first locks candidates (passing
/// by rows another claimer or a writer holds), the second takes only those
/// still orphaned by a fresh look. One statement would not do: a row another
/// claimer took meanwhile is re-read after its lock, but the re-check does
/// not see that its new owner is alive, and it would be taken twice.
pub async fn claim(
    pool: &Pool,
    (node, epoch, lease): (&str, i64, std::time::Duration),
    limit: usize,
    txn_id: Option<&str>,
) -> Result<Vec<(String, String, i64)>, StoreError> {
    let claiming = pg_error("taking transactions over");
    let mut client = pool.get().await.map_err(pool_error)?;
    let tx = client.transaction().await.map_err(&claiming)?;
    // The claimer's lease must run, and must have run without a break for
    // a lease (its own earlier transactions excepted): a node back from a
    // database outage longer than the lease waits for the others to renew
    // theirs before any of them looks dead.
    let lock = format!(
        "SELECT o.txn_id, o.node_id FROM arbiter_owners o \
         WHERE EXISTS (SELECT 1 FROM arbiter_nodes \
             WHERE node_id = $1 AND epoch = $2 AND lease_until > now() \
               AND (o.node_id = $1 OR alive_since <= now() - make_interval(secs => $5))) \
           AND {ORPHANED} AND ($4::text IS NULL OR o.txn_id = $4) \
         ORDER BY o.txn_id LIMIT $3 FOR UPDATE OF o SKIP LOCKED"
    );
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let candidates = tx
        .query(
            &lock,
            &[&node, &epoch, &limit, &txn_id, &lease.as_secs_f64()],
        )
        .await
        .map_err(&claiming)?;
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let mut from = std::collections::HashMap::new();
    let ids: Vec<String> = candidates
        .into_iter()
        .map(|row| {
            let id: String = row.get(0);
            from.insert(id.clone(), row.get::<_, String>(1));
            id
        })
        .collect();
    let take = format!(
        "UPDATE arbiter_owners o SET node_id = $1, epoch = $2, claim = nextval('arbiter_claims') \
         WHERE o.txn_id = ANY($3::text[]) AND {ORPHANED} RETURNING o.txn_id, o.claim"
    );
    let taken = tx
        .query(&take, &[&node, &epoch, &ids])
        .await
        .map_err(&claiming)?;
    tx.commit().await.map_err(&claiming)?;
    Ok(taken
        .into_iter()
        .map(|row| {
            let id: String = row.get(0);
            let previous = from.remove(&id).unwrap_or_default();
            (id, previous, row.get(1))
        })
        .collect())
}

/// The transactions `node` owns at `epoch`, with their claims.
pub async fn owned_by(
    pool: &Pool,
    node: &str,
    epoch: i64,
) -> Result<Vec<(String, i64)>, StoreError> {
    let client = pool.get().await.map_err(pool_error)?;
    let rows = client
        .query(
            "SELECT txn_id, claim FROM arbiter_owners WHERE node_id = $1 AND epoch = $2",
            &[&node, &epoch],
        )
        .await
        .map_err(pg_error("listing the transactions this node owns"))?;
    Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Gives up the owner rows of final transactions.
pub async fn release(pool: &Pool, txn_ids: &[String]) -> Result<(), StoreError> {
    let client = pool.get().await.map_err(pool_error)?;
    client
        .execute(
            "DELETE FROM arbiter_owners WHERE txn_id = ANY($1::text[])",
            &[&txn_ids],
        )
        .await
        .map_err(pg_error("giving up final transactions"))?;
    Ok(())
}

/// The owner of `txn_id`, if it has one, as seen by `node` at `epoch`.
pub async fn owner(
    pool: &Pool,
    node: &str,
    epoch: i64,
    txn_id: &str,
) -> Result<Option<Owner>, StoreError> {
    let client = pool.get().await.map_err(pool_error)?;
    let statement = client
        .prepare_cached(
            "SELECT o.node_id, coalesce(n.address, ''), \
               coalesce(n.epoch = o.epoch AND n.lease_until > now(), false), o.epoch, o.claim \
             FROM arbiter_owners o LEFT JOIN arbiter_nodes n ON n.node_id = o.node_id \
             WHERE o.txn_id = $1",
        )
        .await
        .map_err(pg_error("finding a transaction's owner"))?;
    let row = client
        .query_opt(&statement, &[&txn_id])
        .await
        .map_err(pg_error("finding a transaction's owner"))?;
    Ok(row.map(|row| {
        let node_id: String = row.get(0);
        let mine = node_id == node && row.get::<_, i64>(3) == epoch;
        Owner {
            node_id,
            address: row.get(1),
            alive: row.get(2),
            mine,
            claim: row.get(4),
        }
    }))
}

/// The owner node of each of `txn_ids` that has one.
pub async fn owners(pool: &Pool, txn_ids: &[String]) -> Result<Vec<(String, String)>, StoreError> {
    if txn_ids.is_empty() {
        return Ok(Vec::new());
    }
    let client = pool.get().await.map_err(pool_error)?;
    let rows = client
        .query(
            "SELECT txn_id, node_id FROM arbiter_owners WHERE txn_id = ANY($1::text[])",
            &[&txn_ids],
        )
        .await
        .map_err(pg_error("finding transactions' owners"))?;
    Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
}
