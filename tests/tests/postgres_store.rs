//! `arbiter serve --store postgres://...` as a real process: transactions
//! run, a kill -9 loses nothing, recovery finishes what was decided and
//! aborts what was not, and start-up refuses what it cannot use.

use arbiter_sdk::{Branch, Execute, Mode, TxnState};
use arbiter_tests::postgres::PgCluster;
use arbiter_tests::process::Start;
use arbiter_tests::{ArbiterProcess, eventually, recorder_participant};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// A throwaway PostgreSQL cluster with an empty database, and its URL.
async fn fresh_database() -> anyhow::Result<(PgCluster, String)> {
    let cluster = PgCluster::start(0)?;
    cluster.create_database("arbiter").await?;
    let url = cluster.store_url("arbiter");
    Ok((cluster, url))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_on_postgres_survives_kill_9() -> anyhow::Result<()> {
    let (_cluster, url) = fresh_database().await?;
    let dir = tempfile::tempdir()?;
    let args = [
        "--store",
        &url,
        "--retry-base-ms",
        "20",
        "--retry-max-ms",
        "200",
    ];
    let mut arbiter = ArbiterProcess::start(dir.path(), &args).await?;
    let (a, rec_a) = recorder_participant().await?;
    let (b, rec_b) = recorder_participant().await?;
    let client = arbiter.client().await?;

    let committed = client
        .execute(
            Execute::two_phase()
                .branch(Branch::new(a.endpoint(), "r1"))
                .branch(Branch::new(b.endpoint(), "r2"))
                .wait(true),
        )
        .await?;
    assert!(committed.is_committed(), "{committed:?}");

    // One decided and stuck in phase 2, one undecided: then kill -9.
    rec_b.set_fail_phase2(true);
    let decided = client
        .execute(
            Execute::tcc()
                .wait(false)
                .branch(Branch::new(a.endpoint(), "r1"))
                .branch(Branch::new(b.endpoint(), "r1")),
        )
        .await?;
    assert_eq!(decided.state, TxnState::Committing);
    let undecided = client.begin(Mode::TwoPhase, None).await?;
    client
        .register_branch(&undecided, &Branch::new(a.endpoint(), "r1"))
        .await?;
    eventually("confirm is being retried", || async {
        (rec_b.calls(&decided.txn_id).len() >= 3).then_some(())
    })
    .await;
    arbiter.kill().await?;

    rec_b.set_fail_phase2(false);
    arbiter.restart().await?;
    let client = arbiter.client().await?;
    eventually("recovery finishes both", || async {
        let done = client.get_transaction(&decided.txn_id).await.ok()?;
        let aborted = client.get_transaction(&undecided).await.ok()?;
        (done.state() == TxnState::Committed && aborted.state() == TxnState::Aborted).then_some(())
    })
    .await;
    let first = client.get_transaction(&committed.txn_id).await?;
    assert_eq!(first.state(), TxnState::Committed, "kept across the kill");
    for rec in [&rec_a, &rec_b] {
        let calls = rec.calls(&decided.txn_id);
        assert!(!calls.contains(&"cancel"), "{calls:?}");
    }
    assert!(!rec_a.calls(&undecided).contains(&"commit"));
    Ok(())
}

#[tokio::test]
async fn a_store_it_cannot_use_is_refused_at_start() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let stderr = dir.path().join("stderr");
    let port = arbiter_tests::process::free_port()?;
    let url = format!("postgres://postgres:secret-pw@127.0.0.1:{port}/nowhere");
    let start = ArbiterProcess::try_start(dir.path(), &["--store", &url], &stderr).await?;
    let Start::Refused { code, stderr } = start else {
        anyhow::bail!("started on a database that is not there");
    };
    assert_eq!(code, Some(1));
    assert!(stderr.contains("cannot use PostgreSQL"), "{stderr}");
    assert!(
        !stderr.contains("secret-pw"),
        "the password is never printed: {stderr}"
    );
    Ok(())
}

/// The whole server's health status, if it answers.
async fn health(endpoint: &str) -> Option<ServingStatus> {
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())
        .ok()?
        .connect()
        .await
        .ok()?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .ok()?;
    Some(response.into_inner().status())
}

/// A transaction id, and what its client was told (`None`: an error, or
/// no answer in time).
type Seen = (String, Option<TxnState>);

/// PostgreSQL restarted under load: while it is down nothing is
/// acknowledged that is not durable, the coordinator stays up, and after it
/// is back every transaction finishes consistently with what its client and
/// its participants were told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_under_load_loses_nothing() -> anyhow::Result<()> {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    let (cluster, url) = fresh_database().await?;
    let dir = tempfile::tempdir()?;
    let mut arbiter = ArbiterProcess::start(
        dir.path(),
        &[
            "--store",
            &url,
            "--retry-base-ms",
            "20",
            "--retry-max-ms",
            "200",
        ],
    )
    .await?;
    let (a, rec_a) = recorder_participant().await?;
    let (b, rec_b) = recorder_participant().await?;
    let client = arbiter.client().await?;

    // What each client saw: Some(state) for an answer, None for an error or
    // no answer in time.
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for worker in 0..8 {
        let (client, seen, stop) = (client.clone(), seen.clone(), stop.clone());
        let (a, b) = (a.endpoint(), b.endpoint());
        workers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let id = format!("load-{worker}-{n}");
                let execute = client.execute(
                    Execute::two_phase()
                        .txn_id(&id)
                        .branch(Branch::new(&a, "r1"))
                        .branch(Branch::new(&b, "r2"))
                        .wait(true),
                );
                let state = match tokio::time::timeout(Duration::from_secs(3), execute).await {
                    Ok(Ok(outcome)) => Some(outcome.state),
                    _ => {
                        // UNAVAILABLE at once while the database is down.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        None
                    }
                };
                seen.lock().map(|mut s| s.push((id, state))).ok();
            }
        }));
    }
    let committed = |seen: &Mutex<Vec<Seen>>| {
        seen.lock()
            .map(|s| {
                s.iter()
                    .filter(|(_, st)| *st == Some(TxnState::Committed))
                    .count()
            })
            .unwrap_or(0)
    };
    eventually("load runs", || async {
        (committed(&seen) >= 50).then_some(())
    })
    .await;
    cluster.stop()?;
    let during = committed(&seen);
    // Down under load: requests wait or fail, nothing is lost, and health
    // tells load balancers.
    eventually("NOT_SERVING while PostgreSQL is down", || async {
        (health(&arbiter.endpoint).await == Some(ServingStatus::NotServing)).then_some(())
    })
    .await;
    assert!(
        arbiter.is_running()?,
        "the coordinator stays up while PostgreSQL is down"
    );
    cluster.start_again()?;
    eventually("SERVING once it is back", || async {
        (health(&arbiter.endpoint).await == Some(ServingStatus::Serving)).then_some(())
    })
    .await;
    eventually("load runs again", || async {
        (committed(&seen) >= during + 50).then_some(())
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for worker in workers {
        worker.await?;
    }

    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
    let mut unknown = 0;
    for (id, state) in &seen {
        let final_state = eventually("every transaction ends", || async {
            let txn = client.get_transaction(id).await;
            match txn {
                Ok(txn) if matches!(txn.state(), TxnState::Committed | TxnState::Aborted) => {
                    Some(Some(txn.state()))
                }
                Err(arbiter_sdk::ClientError::NotFound(_)) => Some(None),
                _ => None,
            }
        })
        .await;
        match state {
            // What a client was told is what happened.
            Some(told) => assert_eq!(final_state, Some(*told), "{id}"),
            None => unknown += 1,
        }
        let calls = [rec_a.calls(id), rec_b.calls(id)];
        match final_state {
            Some(TxnState::Committed) => {
                for c in &calls {
                    assert!(
                        c.contains(&"commit") && !c.contains(&"rollback"),
                        "{id}: {c:?}"
                    );
                }
            }
            _ => {
                for c in &calls {
                    assert!(!c.contains(&"commit"), "{id}: {c:?}");
                }
            }
        }
    }
    println!(
        "{} transactions, {} answered, {unknown} without an answer while PostgreSQL was down",
        seen.len(),
        seen.len() - unknown
    );
    Ok(())
}

/// `arbiter cluster ls -o json` against `process`: its nodes, by id.
fn nodes(process: &ArbiterProcess) -> anyhow::Result<Vec<serde_json::Value>> {
    let listed = arbiter_tests::cli::json(&process.endpoint, &["cluster", "ls"])?;
    Ok(listed["nodes"].as_array().cloned().unwrap_or_default())
}

fn node<'a>(nodes: &'a [serde_json::Value], id: &str) -> Option<&'a serde_json::Value> {
    nodes.iter().find(|n| n["node_id"] == id)
}

/// Nodes join with their id and address, renew their leases on the
/// database's clock, give them up on SIGTERM, let them run out after a
/// kill -9, and rejoin with a new epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_join_renew_and_leave() -> anyhow::Result<()> {
    let (_cluster, url) = fresh_database().await?;
    let dir = tempfile::tempdir()?;
    let args = |id| {
        [
            "--store",
            url.as_str(),
            "--node-id",
            id,
            "--lease-ms",
            "1500",
        ]
    };

    let mut n1 = ArbiterProcess::start(&dir.path().join("n1"), &args("n1")).await?;
    let listed = nodes(&n1)?;
    let me = node(&listed, "n1").ok_or_else(|| anyhow::anyhow!("n1 not listed: {listed:?}"))?;
    assert_eq!(me["alive"], true);
    assert_eq!(me["this_node"], true);
    assert_eq!(me["epoch"], 1);
    assert_eq!(me["address"], n1.endpoint.as_str());
    let first_lease = me["lease_expires_at_ms"].as_u64().unwrap_or(0);
    eventually("the lease is renewed", || async {
        let listed = nodes(&n1).ok()?;
        let lease = node(&listed, "n1")?["lease_expires_at_ms"].as_u64()?;
        (lease > first_lease).then_some(())
    })
    .await;

    // SIGTERM gives the lease up at once.
    assert!(n1.terminate().await?, "clean stop");
    let mut n2 = ArbiterProcess::start(&dir.path().join("n2"), &args("n2")).await?;
    let listed = nodes(&n2)?;
    assert_eq!(
        node(&listed, "n1").map(|n| &n["alive"]),
        Some(&serde_json::json!(false))
    );
    assert_eq!(
        node(&listed, "n2").map(|n| &n["alive"]),
        Some(&serde_json::json!(true))
    );

    // After a kill -9 the lease runs out on its own; the node rejoins with
    // a new epoch (its clean leave bumped it too: 1, 2 at the leave, 3).
    n2.kill().await?;
    n1.restart().await?;
    let listed = nodes(&n1)?;
    assert_eq!(
        node(&listed, "n1").map(|n| &n["epoch"]),
        Some(&serde_json::json!(3))
    );
    eventually("n2's lease runs out", || async {
        let listed = nodes(&n1).ok()?;
        (node(&listed, "n2")?["alive"] == false).then_some(())
    })
    .await;
    Ok(())
}

#[tokio::test]
async fn a_sled_coordinator_lists_itself_alone() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let arbiter = ArbiterProcess::start(dir.path(), &["--node-id", "solo"]).await?;
    let listed = nodes(&arbiter)?;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["node_id"], "solo");
    assert_eq!(listed[0]["this_node"], true);
    Ok(())
}
