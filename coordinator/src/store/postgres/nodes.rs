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

/// Joins (or rejoins) as `node`; returns its new epoch.
pub async fn join(pool: &Pool, node: &NodeIdentity) -> Result<i64, StoreError> {
    let client = pool.get().await.map_err(pool_error)?;
    let row = client
        .query_one(
            "INSERT INTO arbiter_nodes (node_id, address, epoch, lease_until, joined_at) \
             VALUES ($1, $2, 1, now() + make_interval(secs => $3), now()) \
             ON CONFLICT (node_id) DO UPDATE SET address = excluded.address, \
               epoch = arbiter_nodes.epoch + 1, lease_until = excluded.lease_until, \
               joined_at = now() \
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
pub async fn renew_forever(pool: Pool, node: NodeIdentity, epoch: i64) {
    let every = node.lease / 3;
    let mut replaced = false;
    loop {
        tokio::time::sleep(every).await;
        let renewed = async {
            let client = pool.get().await.map_err(pool_error)?;
            client
                .execute(
                    "UPDATE arbiter_nodes SET lease_until = now() + make_interval(secs => $3) \
                     WHERE node_id = $1 AND epoch = $2",
                    &[&node.id, &epoch, &node.lease.as_secs_f64()],
                )
                .await
                .map_err(pg_error("renewing the lease"))
        };
        // A renewal slower than its period is as good as lost.
        match tokio::time::timeout(every, renewed).await {
            Ok(Ok(1)) => {}
            Ok(Ok(_)) if !replaced => {
                replaced = true;
                tracing::error!(node = %node.id, epoch,
                    "this node's lease belongs to a newer instance of it; no longer renewed");
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not renew this node's lease"),
            Err(_) => tracing::warn!("renewing this node's lease took longer than its period"),
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
            "SELECT node_id, address, epoch, \
               (extract(epoch FROM lease_until) * 1000)::bigint, lease_until > now() \
             FROM arbiter_nodes ORDER BY node_id",
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
        })
        .collect())
}

/// How long giving up the lease may take when stopping.
pub const LEAVE_PATIENCE: Duration = Duration::from_secs(2);
