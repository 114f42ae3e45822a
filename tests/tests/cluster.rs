//! Coordinator nodes sharing one PostgreSQL database, as real processes:
//! any node answers any call (forwarding to the owner), a stopped node's
//! transactions are handed over at once and a dead one's after its lease,
//! and an owner that was paused or cut off from the database is fenced: it
//! commits nothing it lost, sends no commit for it, and says so.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arbiter_sdk::{Branch, Client, Execute, Mode, TxnState};
use arbiter_tests::postgres::PgCluster;
use arbiter_tests::process::Launch;
use arbiter_tests::proxy::Proxy;
use arbiter_tests::{ArbiterProcess, Recorder, eventually, recorder_participant};

const LEASE_MS: &str = "1500";

/// Starts node `id` on `store`, its stderr to `stderr` if given.
async fn node(
    dir: &Path,
    id: &str,
    store: &str,
    stderr: Option<&Path>,
) -> anyhow::Result<ArbiterProcess> {
    let args = [
        "--store",
        store,
        "--node-id",
        id,
        "--lease-ms",
        LEASE_MS,
        "--retry-base-ms",
        "20",
        "--retry-max-ms",
        "200",
    ];
    let launch = Launch {
        stderr,
        ..Launch::default()
    };
    ArbiterProcess::start_launch(&dir.join(id), &args, launch).await
}

/// A throwaway PostgreSQL server with an empty `arbiter` database.
async fn database() -> anyhow::Result<PgCluster> {
    let cluster = PgCluster::start(0)?;
    cluster.create_database("arbiter").await?;
    Ok(cluster)
}

/// Nodes n1 and n2 on the `arbiter` database of `cluster`.
async fn two_nodes(
    dir: &Path,
    cluster: &PgCluster,
) -> anyhow::Result<(ArbiterProcess, ArbiterProcess)> {
    let store = cluster.store_url("arbiter");
    let n1 = node(dir, "n1", &store, None).await?;
    let n2 = node(dir, "n2", &store, None).await?;
    Ok((n1, n2))
}

async fn owner(client: &Client, txn_id: &str) -> Option<String> {
    client
        .get_transaction(txn_id)
        .await
        .ok()
        .map(|t| t.owner_node)
}

async fn state(client: &Client, txn_id: &str) -> Option<TxnState> {
    client.get_transaction(txn_id).await.ok().map(|t| t.state())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_node_answers_any_call_and_forwards_to_the_owner() -> anyhow::Result<()> {
    let (cluster, dir) = (database().await?, tempfile::tempdir()?);
    let (n1, n2) = two_nodes(dir.path(), &cluster).await?;
    let (c1, c2) = (n1.client().await?, n2.client().await?);
    let (a, rec_a) = recorder_participant().await?;
    let (b, rec_b) = recorder_participant().await?;

    // Begun on n1; every later step sent to n2, which forwards it.
    let id = c1.begin(Mode::TwoPhase, None).await?;
    c2.register_branch(&id, &Branch::new(a.endpoint(), "r1"))
        .await?;
    c2.register_branch(&id, &Branch::new(b.endpoint(), "r2"))
        .await?;
    assert_eq!(owner(&c2, &id).await.as_deref(), Some("n1"));
    assert_eq!(owner(&c1, &id).await.as_deref(), Some("n1"));
    let outcome = c2.commit(&id, true).await?;
    assert_eq!(outcome.state, TxnState::Committed, "{outcome:?}");
    assert_eq!(rec_a.calls(&id), ["prepare", "commit"]);
    assert_eq!(rec_b.calls(&id), ["prepare", "commit"]);
    assert_eq!(
        owner(&c2, &id).await.as_deref(),
        Some(""),
        "final: no owner"
    );

    let undone = c2.begin(Mode::Tcc, None).await?;
    c1.register_branch(&undone, &Branch::new(a.endpoint(), "r1"))
        .await?;
    assert_eq!(
        c1.rollback(&undone, "changed my mind").await?,
        TxnState::Aborted
    );
    assert_eq!(state(&c2, &undone).await, Some(TxnState::Aborted));

    // The same client-chosen id begun on both nodes is one transaction.
    let execute = || {
        Execute::two_phase()
            .txn_id("same-id")
            .branch(Branch::new(a.endpoint(), "r1"))
            .wait(true)
    };
    let (first, second) = tokio::join!(c1.execute(execute()), c2.execute(execute()));
    for answer in [first, second] {
        match answer {
            Ok(outcome) => assert_eq!(outcome.state, TxnState::Committed, "{outcome:?}"),
            // The loser of the race may be told to retry.
            Err(e) => assert_eq!(arbiter_tests::code_of(&e), tonic::Code::Unavailable, "{e}"),
        }
    }
    let again = c2.execute(execute()).await?;
    assert_eq!(again.state, TxnState::Committed);
    let prepares = rec_a
        .calls("same-id")
        .iter()
        .filter(|c| **c == "prepare")
        .count();
    assert_eq!(prepares, 1, "{:?}", rec_a.calls("same-id"));

    // A call claiming to be forwarded already is never forwarded again:
    // whoever sends the mark gets UNAVAILABLE, and nothing changes.
    let held = c1.begin(Mode::TwoPhase, None).await?;
    let mut marked = tonic::Request::new(arbiter_sdk::proto::CommitRequest {
        txn_id: held.clone(),
        wait: false,
    });
    marked.metadata_mut().insert(
        "x-arbiter-forwarded",
        tonic::metadata::MetadataValue::from_static("1"),
    );
    let refused = c2.raw().commit(marked).await;
    assert_eq!(
        refused.map_err(|s| s.code()).err(),
        Some(tonic::Code::Unavailable)
    );
    assert_eq!(state(&c1, &held).await, Some(TxnState::Active));

    let listed = arbiter_tests::cli::json(&n2.endpoint, &["cluster", "ls"])?;
    let nodes = listed["nodes"].as_array().cloned().unwrap_or_default();
    assert_eq!(nodes.len(), 2, "{listed}");
    assert!(nodes.iter().all(|n| n["alive"] == true), "{listed}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_hands_over_at_once_and_a_dead_one_after_its_lease() -> anyhow::Result<()> {
    let (cluster, dir) = (database().await?, tempfile::tempdir()?);
    let (mut n1, mut n2) = two_nodes(dir.path(), &cluster).await?;
    let (a, rec_a) = recorder_participant().await?;
    let (b, rec_b) = recorder_participant().await?;

    // Decided on n1, phase 2 failing: n1 owns it until it is final.
    let stuck = |c: Client| {
        let (a, b) = (a.endpoint(), b.endpoint());
        async move {
            c.execute(
                Execute::tcc()
                    .wait(false)
                    .branch(Branch::new(a, "r1"))
                    .branch(Branch::new(b, "r2")),
            )
            .await
        }
    };
    rec_b.set_fail_phase2(true);
    let first = stuck(n1.client().await?).await?;
    assert_eq!(first.state, TxnState::Committing);
    let c2 = n2.client().await?;
    assert_eq!(owner(&c2, &first.txn_id).await.as_deref(), Some("n1"));

    // SIGTERM gives the lease up: n2 takes the transaction over at once.
    let stopped = Instant::now();
    assert!(n1.terminate().await?, "clean stop");
    eventually("n2 takes over what n1 handed over", || async {
        (owner(&c2, &first.txn_id).await.as_deref() == Some("n2")).then_some(())
    })
    .await;
    println!("handover after SIGTERM: {:?}", stopped.elapsed());

    // n1 comes back; n2 gets its own stuck transaction, then is killed.
    n1.restart().await?;
    let c1 = n1.client().await?;
    let second = stuck(c2.clone()).await?;
    n2.kill().await?;
    let killed = Instant::now();
    eventually("n1 takes over once n2's lease runs out", || async {
        let both = [&first.txn_id, &second.txn_id];
        let mut owners = Vec::new();
        for id in both {
            owners.push(owner(&c1, id).await?);
        }
        owners.iter().all(|o| o == "n1").then_some(())
    })
    .await;
    println!(
        "takeover after kill -9 (lease {LEASE_MS} ms): {:?}",
        killed.elapsed()
    );

    rec_b.set_fail_phase2(false);
    for id in [&first.txn_id, &second.txn_id] {
        eventually("committed by the node that took it over", || async {
            (state(&c1, id).await == Some(TxnState::Committed)).then_some(())
        })
        .await;
        for rec in [&rec_a, &rec_b] {
            let calls = rec.calls(id);
            assert!(!calls.contains(&"cancel"), "{id}: {calls:?}");
        }
    }
    Ok(())
}

/// Undecided transactions on `n1`, each with its prepare (try) in flight
/// at a slow participant: their ids, and the commits waiting on them.
async fn undecided_with_prepares_in_flight(
    c1: &Client,
    slow: &str,
    fast: &str,
    rec_slow: &Recorder,
) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::new();
    for n in 0..4 {
        let mode = if n % 2 == 0 {
            Mode::TwoPhase
        } else {
            Mode::Tcc
        };
        let id = c1.begin(mode, Some(Duration::from_secs(60))).await?;
        c1.register_branch(&id, &Branch::new(slow, "r1").payload("slow:4000"))
            .await?;
        c1.register_branch(&id, &Branch::new(fast, "r2")).await?;
        let client = c1.clone();
        let committing = id.clone();
        tokio::spawn(async move {
            let _ = client.commit(&committing, false).await;
        });
        ids.push(id);
    }
    eventually("every prepare has reached the slow participant", || async {
        ids.iter()
            .all(|id| !rec_slow.calls(id).is_empty())
            .then_some(())
    })
    .await;
    Ok(ids)
}

/// n1 owns undecided transactions whose prepares are in flight; `isolate`
/// takes it away (paused, or cut off from PostgreSQL) until n2 has taken
/// them over and aborted them; `heal` brings it back. n1 must commit none
/// of them, send no commit for any, and log that it lost each.
async fn an_isolated_owner_is_fenced(
    isolate: impl FnOnce(&mut ArbiterProcess) -> anyhow::Result<()>,
    heal: impl FnOnce(&mut ArbiterProcess) -> anyhow::Result<()>,
    store_for_n1: impl FnOnce(&str) -> String,
    cluster: &PgCluster,
) -> anyhow::Result<()> {
    let store = cluster.store_url("arbiter");
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("n1.stderr");
    let mut n1 = node(dir.path(), "n1", &store_for_n1(&store), Some(&log)).await?;
    let n2 = node(dir.path(), "n2", &store, None).await?;
    let (c1, c2) = (n1.client().await?, n2.client().await?);
    let (slow, rec_slow) = recorder_participant().await?;
    let (fast, rec_fast) = recorder_participant().await?;
    let ids = undecided_with_prepares_in_flight(&c1, &slow.endpoint(), &fast.endpoint(), &rec_slow)
        .await?;

    isolate(&mut n1)?;
    let ids = Arc::new(ids);
    eventually("n2 takes the transactions over and aborts them", || {
        let (c2, ids) = (c2.clone(), ids.clone());
        async move {
            for id in ids.iter() {
                if state(&c2, id).await != Some(TxnState::Aborted) {
                    return None;
                }
            }
            Some(())
        }
    })
    .await;
    heal(&mut n1)?;

    eventually("n1 says it lost each transaction", || async {
        let said = std::fs::read_to_string(&log).ok()?;
        ids.iter()
            .all(|id| {
                said.lines()
                    .any(|l| l.contains("lost this transaction") && l.contains(id.as_str()))
            })
            .then_some(())
    })
    .await;
    for id in ids.iter() {
        for rec in [&rec_slow, &rec_fast] {
            let calls = rec.calls(id);
            assert!(
                !calls.iter().any(|c| matches!(*c, "commit" | "confirm")),
                "{id}: a lost transaction was committed: {calls:?}"
            );
        }
        assert_eq!(
            state(&c1, id).await,
            Some(TxnState::Aborted),
            "{id} as n1 tells it"
        );
    }
    // Losing transactions never stops the node: it goes on serving.
    let after = c1
        .execute(
            Execute::two_phase()
                .branch(Branch::new(fast.endpoint(), "r1"))
                .wait(true),
        )
        .await?;
    assert_eq!(after.state, TxnState::Committed);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_owner_is_fenced_and_commits_nothing_it_lost() -> anyhow::Result<()> {
    let cluster = database().await?;
    an_isolated_owner_is_fenced(
        ArbiterProcess::pause,
        ArbiterProcess::resume,
        str::to_string,
        &cluster,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_cut_off_from_postgres_is_fenced_and_commits_nothing_it_lost() -> anyhow::Result<()>
{
    let cluster = database().await?;
    let proxy = Arc::new(Proxy::start(cluster.port).await?);
    let via_proxy =
        |store: &str| store.replace(&format!(":{}/", cluster.port), &format!(":{}/", proxy.port));
    let (cut, restore) = (proxy.clone(), proxy.clone());
    an_isolated_owner_is_fenced(
        move |_| {
            cut.cut();
            Ok(())
        },
        move |_| {
            restore.restore();
            Ok(())
        },
        via_proxy,
        &cluster,
    )
    .await
}

/// PostgreSQL down for longer than the lease: when it is back every lease
/// has run out by its clock, yet no live node takes another's transactions
/// (each renews first), and each node finishes its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_the_lease_moves_no_transaction() -> anyhow::Result<()> {
    let (cluster, dir) = (database().await?, tempfile::tempdir()?);
    let (n1, n2) = two_nodes(dir.path(), &cluster).await?;
    let (c1, c2) = (n1.client().await?, n2.client().await?);
    let (a, rec_a) = recorder_participant().await?;
    rec_a.set_fail_phase2(true);
    let mut stuck = Vec::new();
    for (client, owner_id) in [(&c1, "n1"), (&c2, "n2")] {
        let outcome = client
            .execute(
                Execute::two_phase()
                    .wait(false)
                    .branch(Branch::new(a.endpoint(), "r1")),
            )
            .await?;
        assert_eq!(outcome.state, TxnState::Committing);
        stuck.push((outcome.txn_id, owner_id));
    }

    cluster.stop()?;
    tokio::time::sleep(Duration::from_millis(3 * 1500)).await;
    cluster.start_again()?;
    // Both nodes are back and renewing: give a takeover every chance to
    // happen, then check none did.
    eventually("both nodes answer from the database again", || async {
        for (id, _) in &stuck {
            owner(&c1, id).await?;
        }
        Some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(3 * 1500)).await;
    for (id, owner_id) in &stuck {
        assert_eq!(
            owner(&c1, id).await.as_deref(),
            Some(*owner_id),
            "{id} moved"
        );
    }
    rec_a.set_fail_phase2(false);
    for (id, _) in &stuck {
        eventually("finished by its own node", || async {
            (state(&c2, id).await == Some(TxnState::Committed)).then_some(())
        })
        .await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_on_another_node_follows_through_a_takeover_without_a_gap() -> anyhow::Result<()> {
    use tokio_stream::StreamExt;
    let (cluster, dir) = (database().await?, tempfile::tempdir()?);
    let (mut n1, n2) = two_nodes(dir.path(), &cluster).await?;
    let (a, rec) = recorder_participant().await?;
    rec.set_fail_phase2(true);
    let first = n1
        .client()
        .await?
        .execute(
            Execute::two_phase()
                .wait(false)
                .branch(Branch::new(a.endpoint(), "r1")),
        )
        .await?;
    let c2 = n2.client().await?;
    assert_eq!(owner(&c2, &first.txn_id).await.as_deref(), Some("n1"));

    // Watched on n2, which does not drive it; n1 dies after two failed commits.
    let mut watch = c2.watch(&first.txn_id).await?;
    let mut seen: Vec<arbiter_sdk::TxnEvent> = Vec::new();
    let deadline = tokio::time::Instant::now() + arbiter_tests::PATIENCE;
    while seen
        .iter()
        .filter(|e| e.kind() == arbiter_sdk::EventKind::CallFailed)
        .count()
        < 2
    {
        let next = tokio::time::timeout_at(deadline, watch.next()).await?;
        seen.push(next.ok_or_else(|| anyhow::anyhow!("the stream ended early"))??);
    }
    n1.kill().await?;
    rec.set_fail_phase2(false);
    while let Some(event) = tokio::time::timeout_at(deadline, watch.next()).await? {
        seen.push(event?);
    }
    let seqs: Vec<u64> = seen.iter().map(|e| e.seq).collect();
    let expected: Vec<u64> = (1..=seen.len() as u64).collect();
    assert_eq!(
        seqs, expected,
        "one numbering across the takeover, no gap, no repeat"
    );
    let last = seen.last().ok_or_else(|| anyhow::anyhow!("no events"))?;
    assert!(last.r#final && last.state() == arbiter_sdk::proto::TxnState::Committed);
    assert_eq!(owner(&c2, &first.txn_id).await.as_deref(), Some(""));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_on_one_node_acts_on_transactions_another_node_drives() -> anyhow::Result<()> {
    use arbiter_sdk::ConnectOptions;
    use arbiter_tests::http::{form_value, request};
    const ADMIN: &str = "ops-0123456789abcdef";
    let (cluster, dir) = (database().await?, tempfile::tempdir()?);
    let store = cluster.store_url("arbiter");
    let console = format!("127.0.0.1:{}", arbiter_tests::process::free_port()?);
    let token = format!("ops={ADMIN}");
    let start = |id: &'static str, extra: Vec<String>| {
        let mut args: Vec<String> = [
            "--store",
            &store,
            "--node-id",
            id,
            "--lease-ms",
            LEASE_MS,
            "--retry-base-ms",
            "20",
            "--retry-max-ms",
            "200",
            "--stuck-after-attempts",
            "2",
            "--admin-token",
            &token,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra);
        let path = dir.path().join(id);
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            ArbiterProcess::start(&path, &args).await
        }
    };
    let n1 = start("n1", vec![]).await?;
    let n2 = start("n2", vec!["--console-listen".to_string(), console.clone()]).await?;
    let c1 = Client::connect_with(n1.endpoint.clone(), ConnectOptions::new().token(ADMIN)).await?;

    // Stuck on n1: its commit keeps failing.
    let (p, rec) = recorder_participant().await?;
    rec.set_fail_phase2(true);
    let stuck = c1
        .execute(
            Execute::two_phase()
                .wait(false)
                .branch(Branch::new(p.endpoint(), "r1")),
        )
        .await?
        .txn_id;
    // Undecided on n1.
    let open = c1.begin(Mode::TwoPhase, None).await?;
    c1.register_branch(&open, &Branch::new(p.endpoint(), "r2"))
        .await?;

    // Log in on n2's console.
    let login = eventually("n2's console answers", || async {
        request(
            &console,
            "POST",
            "/login",
            None,
            Some(&format!("token={ADMIN}")),
        )
        .await
        .ok()
    })
    .await;
    assert_eq!(login.status, 303, "{login:?}");
    let cookie = login
        .header("set-cookie")
        .and_then(|c| c.split(';').next())
        .unwrap_or_default()
        .to_string();
    let shown = eventually("the stuck transaction shows on n2", || async {
        let page = request(
            &console,
            "GET",
            &format!("/txns/{stuck}"),
            Some(&cookie),
            None,
        )
        .await
        .ok()?;
        page.body.contains("STUCK").then_some(page)
    })
    .await;
    assert!(shown.body.contains("n1"), "the owner node is shown");
    let csrf = shown.input("csrf").unwrap_or_default();

    // Retry and abort from n2: sent to n1, which drives them. (The commit
    // still fails while the retry is sent, so no scheduled retry can finish
    // the transaction first and make the retry moot.)
    let retried = request(
        &console,
        "POST",
        &format!("/txns/{stuck}/retry"),
        Some(&cookie),
        Some(&format!("csrf={csrf}")),
    )
    .await?;
    assert_eq!(retried.status, 303, "{}", retried.body);
    rec.set_fail_phase2(false);
    eventually("the retried transaction commits", || async {
        (state(&c1, &stuck).await == Some(TxnState::Committed)).then_some(())
    })
    .await;
    let reason = "cleaning up after the drill";
    let aborted = request(
        &console,
        "POST",
        &format!("/txns/{open}/abort"),
        Some(&cookie),
        Some(&format!("csrf={csrf}&reason={}", form_value(reason))),
    )
    .await?;
    assert_eq!(aborted.status, 303, "{}", aborted.body);
    assert_eq!(state(&c1, &open).await, Some(TxnState::Aborted));

    // Both actions are audited as the console's user, whichever node acted.
    let audit = request(&console, "GET", "/audit", Some(&cookie), None).await?;
    assert!(
        audit.body.contains("console:ops")
            && audit.body.contains(reason)
            && audit.body.contains("retry-now")
            && audit.body.contains("force-abort"),
        "{}",
        audit.body
    );
    drop(n2);
    Ok(())
}
