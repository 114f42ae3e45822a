//! The coordinators sharing one database: each joins with its id and address
//! (each join bumps its epoch), renews its lease every third of it, and gives
//! the lease up when it stops (bumping the epoch again, so that no renewal
//! still on its way can bring the lease back). Leases are judged on the database's clock
//! (`now()`), never on a node's own.

use std::time::Duration;

use deadpool_postgres::Pool;

use crate::config::NodeIdentity;
use crate::store::postgres::session::{pg_error, pool_error};
use crate::store::{NodeInfo, StoreError};

/// Joins (or rejoins) as `node`; returns its new epoch. Transactions an
/// earlier run of it owned are orphans from now on, taken over like a dead
/// node's (by this node too): none is revived from memory.
pub async fn join(pool: &Pool, node: &NodeIdentity) -> Result<i64, StoreError> {
    let client = pool.get().await.map_err(pool_error)?;
    let alive = client
        .query_opt(
            "SELECT address FROM arbiter_nodes WHERE node_id = $1 AND lease_until > now()",
            &[&node.id],
        )
        .await
        .map_err(pg_error("joining the cluster"))?;
    if let Some(row) = alive {
        let address: String = row.get(0);
        tracing::warn!(node = %node.id, %address,
            "a node with this id still held a lease: taking its place (its transactions are \
             taken over). If another process runs with this id, give each its own --node-id");
    }
    let row = client
        .query_one(
            "INSERT INTO arbiter_nodes (node_id, address, epoch, lease_until, joined_at) \
             VALUES ($1, $2, 1, now() + make_interval(secs => $3), now()) \
             ON CONFLICT (node_id) DO UPDATE SET address = excluded.address, \
               epoch = arbiter_nodes.epoch + 1, lease_until = excluded.lease_until, \
               joined_at = now(), alive_since = now() \
             RETURNING epoch",
            &[&node.id, &node.address, &node.lease.as_secs_f64()],
        )
        .await
        .map_err(pg_error("joining the cluster"))?;
    Ok(row.get(0))
}

/// Renews the lease of `node` at `epoch` every third of it, for as long as
/// the store runs. A renewal that finds another epoch means this node was
/// replaced by a newer instance of itself: said loudly, never overwritten.
/// One that finds the lease had run out (the process was paused, or cut off
/// from the database) counts a lapse in `lapses`: other nodes may have taken
/// over some of its transactions meanwhile.
pub async fn renew_forever(
    config: tokio_postgres::Config,
    node: NodeIdentity,
    epoch: i64,
    lapses: std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    let every = node.lease / 3;
    let mut replaced = false;
    // A connection of its own: reads filling the pool never delay a renewal.
    let mut session: Option<tokio_postgres::Client> = None;
    loop {
        tokio::time::sleep(every).await;
        let renewed = async {
            if session.as_ref().is_none_or(|c| c.is_closed()) {
                let (client, connection) = config
                    .connect(tokio_postgres::NoTls)
                    .await
                    .map_err(pg_error("connecting to renew the lease"))?;
                tokio::spawn(connection);
                session = Some(client);
            }
            let Some(client) = &session else {
                return Err(StoreError::Unreachable("no session".into()));
            };
            client
                .query_opt(
                    "WITH old AS (SELECT lease_until FROM arbiter_nodes \
                       WHERE node_id = $1 AND epoch = $2) \
                     UPDATE arbiter_nodes n SET lease_until = now() + make_interval(secs => $3), \
                       alive_since = CASE WHEN old.lease_until <= clock_timestamp() \
                         THEN now() ELSE n.alive_since END \
                     FROM old WHERE n.node_id = $1 AND n.epoch = $2 \
                     RETURNING old.lease_until <= clock_timestamp()",
                    &[&node.id, &epoch, &node.lease.as_secs_f64()],
                )
                .await
                .map_err(pg_error("renewing the lease"))
        };
        // A renewal slower than its period is as good as lost.
        match tokio::time::timeout(every, renewed).await {
            Ok(Ok(Some(row))) => {
                if row.get::<_, bool>(0) {
                    lapses.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                    tracing::warn!(node = %node.id, epoch,
                        "this node's lease had run out (paused, or cut off from the database); \
                         renewed, and checking which transactions it still owns");
                }
            }
            Ok(Ok(None)) => {
                // Replaced: nothing here is owned any more.
                lapses.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                if !replaced {
                    replaced = true;
                    tracing::error!(node = %node.id, epoch,
                        "this node's lease belongs to a newer instance of it; no longer renewed, \
                         and every transaction it held is let go of");
                }
            }
            Ok(Err(e)) => {
                session = None;
                tracing::warn!(error = %e, "could not renew this node's lease");
            }
            Err(_) => {
                session = None;
                tracing::warn!("renewing this node's lease took longer than its period");
            }
        }
    }
}

/// Gives up the lease of `node` at `epoch` now (a clean stop).
pub async fn leave(pool: &Pool, node: &NodeIdentity, epoch: i64) -> Result<(), StoreError> {
    let client = pool.get().await.map_err(pool_error)?;
    client
        .execute(
            "UPDATE arbiter_nodes SET lease_until = now(), epoch = epoch + 1 \
             WHERE node_id = $1 AND epoch = $2",
            &[&node.id, &epoch],
        )
        .await
        .map_err(pg_error("giving up the lease"))?;
    Ok(())
}

/// Every node the database knows of, by id.
pub async fn list(pool: &Pool) -> Result<Vec<NodeInfo>, StoreError> {
    let client = pool.get().await.map_err(pool_error)?;
    let rows = client
        .query(
            "SELECT n.node_id, n.address, n.epoch, \
               (extract(epoch FROM n.lease_until) * 1000)::bigint, n.lease_until > now(), \
               (SELECT count(*) FROM arbiter_owners o WHERE o.node_id = n.node_id) \
             FROM arbiter_nodes n ORDER BY n.node_id",
            &[],
        )
        .await
        .map_err(pg_error("listing the nodes"))?;
    Ok(rows
        .into_iter()
        .map(|row| NodeInfo {
            node_id: row.get(0),
            address: row.get(1),
            epoch: u64::try_from(row.get::<_, i64>(2)).unwrap_or(0),
            lease_expires_at_ms: u64::try_from(row.get::<_, i64>(3)).unwrap_or(0),
            alive: row.get(4),
            owned: u64::try_from(row.get::<_, i64>(5)).unwrap_or(0),
        })
        .collect())
}

/// How long giving up the lease may take when stopping.
pub const LEAVE_PATIENCE: Duration = Duration::from_secs(2);
