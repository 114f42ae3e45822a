//! Participants over plain HTTP/JSON, against a real `arbiter serve`:
//! 2PC, TCC and saga transactions mixing a Rust gRPC participant with the
//! Python and Node example banks (written from the README alone); every
//! row of the answer table against a scripted participant, including one
//! that hangs, answers slowly, answers garbage, or asks to retry later; and
//! kill -9 of the coordinator during transfers between HTTP banks.

use std::sync::Arc;
use std::time::Duration;

use arbiter_examples::{Bank, RESOURCE};
use arbiter_sdk::{Branch, Client, Execute, ParticipantServer, TxnState};
use arbiter_tests::ArbiterProcess;
use arbiter_tests::http_participant::{ExampleBank, Reply, Scripted, available};

async fn arbiter(dir: &std::path::Path) -> anyhow::Result<ArbiterProcess> {
    ArbiterProcess::start(dir, &["--retry-base-ms", "20", "--retry-max-ms", "200"]).await
}

/// Node is installed by `.ci/run`; elsewhere a test needing it says so and
/// passes.
fn node_or_skip() -> bool {
    if available("node") {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "CI must have node");
    eprintln!("node is not installed: skipping");
    false
}

fn http_leg(bank: &ExampleBank, account: &str, delta: i64) -> Branch {
    Branch::http(bank.base(), "account")
        .payload(format!(r#"{{"account":"{account}","delta":{delta}}}"#))
        .payload_as_json()
}

#[tokio::test]
async fn transactions_mix_grpc_python_and_node_participants() -> anyhow::Result<()> {
    if !node_or_skip() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let arbiter = arbiter(dir.path()).await?;
    let client = arbiter.client().await?;
    let rust = Arc::new(Bank::with_accounts(&[("alice", 100)]));
    let rust_service = ParticipantServer::new()
        .two_phase(RESOURCE, rust.clone())
        .tcc(RESOURCE, rust.clone())
        .serve("127.0.0.1:0".parse()?)
        .await?;
    let python = ExampleBank::start("python3", "bank.py", "bob=100").await?;
    let node = ExampleBank::start("node", "bank.js", "carol=100").await?;
    let alice = |delta: i64| {
        Branch::new(rust_service.endpoint(), RESOURCE).payload(format!("alice {delta}"))
    };

    // 2PC: Rust (gRPC) pays Python (HTTP).
    let paid = client
        .execute(
            Execute::two_phase()
                .branch(alice(-30))
                .branch(http_leg(&python, "bob", 30)),
        )
        .await?;
    assert_eq!(paid.state, TxnState::Committed, "{paid:?}");
    // TCC: Python pays Node, the payload as base64 only on the Python side.
    let moved = client
        .execute(
            Execute::tcc()
                .branch(
                    Branch::http(python.base(), "account")
                        .payload(r#"{"account":"bob","delta":-50}"#),
                )
                .branch(http_leg(&node, "carol", 50)),
        )
        .await?;
    assert_eq!(moved.state, TxnState::Committed, "{moved:?}");
    // Refused by Node (insufficient funds): nothing moves anywhere.
    let refused = client
        .execute(
            Execute::two_phase()
                .branch(http_leg(&node, "carol", -1000))
                .branch(alice(1000)),
        )
        .await?;
    assert_eq!(refused.state, TxnState::Aborted);
    assert!(
        refused.reason.contains("insufficient funds"),
        "{}",
        refused.reason
    );
    // A saga across both HTTP banks, and one that fails at its second step.
    let saga = client
        .execute(
            Execute::saga()
                .branch(http_leg(&python, "bob", -10))
                .branch(http_leg(&node, "carol", 10)),
        )
        .await?;
    assert_eq!(saga.state, TxnState::Committed, "{saga:?}");
    let failed = client
        .execute(
            Execute::saga()
                .branch(http_leg(&python, "bob", -10))
                .branch(http_leg(&node, "nobody", 10)),
        )
        .await?;
    assert_eq!(failed.state, TxnState::Aborted, "{failed:?}");
    // A payload the banks cannot read (a fractional amount) is refused
    // (422), and its rollback still goes through: nothing stuck.
    for bank in [&python, &node] {
        let bad = Branch::http(bank.base(), "account")
            .payload(r#"{"account":"bob","delta":1.5}"#)
            .payload_as_json();
        let refused = client.execute(Execute::two_phase().branch(bad)).await?;
        assert_eq!(refused.state, TxnState::Aborted, "{refused:?}");
        assert!(refused.reason.contains("HTTP 422"), "{}", refused.reason);
    }

    let bob = python.balances().await?["bob"];
    let carol = node.balances().await?["carol"];
    let alice_now = rust.balance("alice").unwrap_or(0);
    assert_eq!((alice_now, bob, carol), (70, 70, 160));
    assert_eq!(alice_now + bob + carol, 300, "no money made or lost");
    assert_eq!(
        (python.held().await?, node.held().await?),
        (0, 0),
        "nothing left held"
    );
    Ok(())
}

async fn scripted_txn(
    client: &Client,
    p: &Scripted,
    timeout: Duration,
) -> anyhow::Result<arbiter_sdk::Outcome> {
    Ok(client
        .execute(
            Execute::two_phase().timeout(timeout).branch(
                Branch::http(p.base(), "stock")
                    .payload(r#"{"sku":"A-1"}"#)
                    .payload_as_json()
                    .call_timeout(Duration::from_millis(400)),
            ),
        )
        .await?)
}

#[tokio::test]
async fn every_row_of_the_answer_table_against_a_real_coordinator() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // A backoff cap above the Retry-After asked for below, so it shows.
    let arbiter = ArbiterProcess::start(
        dir.path(),
        &["--retry-base-ms", "20", "--retry-max-ms", "5000"],
    )
    .await?;
    let client = arbiter.client().await?;
    let p = Scripted::start().await?;
    let long = Duration::from_secs(20);

    // What a call carries.
    let plain = scripted_txn(&client, &p, long).await?;
    assert_eq!(plain.state, TxnState::Committed);
    assert_eq!(p.calls(&plain.txn_id), ["prepare", "commit"]);
    let first = &p.received()[0];
    assert_eq!(first.path, "/arbiter/prepare");
    assert_eq!(first.body["branch_id"], "1");
    assert_eq!(first.body["resource"], "stock");
    assert_eq!(first.body["attempt"], 1);
    assert_eq!(first.body["payload"], "eyJza3UiOiJBLTEifQ==");
    assert_eq!(first.body["payload_json"]["sku"], "A-1");
    assert!(
        first
            .headers
            .iter()
            .any(|(k, v)| k == "traceparent" && v.starts_with("00-"))
    );

    // Definitive NO: a NO vote, 409, 422, 400, a 2xx that is not JSON.
    for (reply, says) in [
        (
            Reply::ok(r#"{"vote":"no","reason":"out of stock"}"#),
            "out of stock",
        ),
        (
            Reply::status(409, r#"{"error":"locked by order 7"}"#),
            "HTTP 409: locked by order 7",
        ),
        (Reply::status(422, "unprocessable"), "HTTP 422"),
        (Reply::status(400, "bad"), "HTTP 400"),
        (Reply::ok("<html>oops</html>"), "not JSON"),
        (Reply::ok(&"x".repeat(100_000)), "over 65536 bytes"),
    ] {
        p.script("prepare", vec![reply]);
        let no = scripted_txn(&client, &p, long).await?;
        assert_eq!(no.state, TxnState::Aborted, "{says}");
        assert!(no.reason.contains(says), "{says}: {}", no.reason);
        assert_eq!(p.calls(&no.txn_id), ["prepare", "rollback"]);
    }

    // READ_ONLY: no phase 2 for it.
    p.script("prepare", vec![Reply::ok(r#"{"vote":"read_only"}"#)]);
    let read_only = scripted_txn(&client, &p, long).await?;
    assert_eq!(read_only.state, TxnState::Committed);
    assert_eq!(p.calls(&read_only.txn_id), ["prepare"]);

    // Transient: 503, 429, 408, a dropped connection, an answer too slow
    // for the call timeout; then YES.
    p.script(
        "prepare",
        vec![
            Reply::status(503, "busy"),
            Reply::status(429, "slow down"),
            Reply::status(408, "timeout"),
            Reply::Hangup,
            Reply::After(Duration::from_secs(2), Box::new(Reply::ok("{}"))),
            Reply::ok(r#"{"vote":"retry","reason":"warming up"}"#),
        ],
    );
    let retried = scripted_txn(&client, &p, long).await?;
    assert_eq!(retried.state, TxnState::Committed, "{retried:?}");
    assert_eq!(
        p.calls(&retried.txn_id),
        [
            "prepare", "prepare", "prepare", "prepare", "prepare", "prepare", "prepare", "commit"
        ]
    );

    // Retry-After is honoured (within the backoff cap): the retry waits
    // the second asked for, not the 20 ms backoff.
    p.script(
        "prepare",
        vec![Reply::Say {
            status: 503,
            body: "later".into(),
            headers: vec![("Retry-After".into(), "1".into())],
        }],
    );
    let later = scripted_txn(&client, &p, long).await?;
    assert_eq!(later.state, TxnState::Committed);
    let prepares: Vec<std::time::Instant> = p
        .received()
        .into_iter()
        .filter(|r| r.body["txn_id"] == later.txn_id.as_str() && r.call == "prepare")
        .map(|r| r.at)
        .collect();
    assert_eq!(prepares.len(), 2);
    assert!(
        prepares[1] - prepares[0] >= Duration::from_millis(950),
        "Retry-After: 1 waited {:?}",
        prepares[1] - prepares[0]
    );

    // A participant that hangs until the transaction timeout: aborted.
    p.script(
        "prepare",
        vec![
            Reply::Hang,
            Reply::Hang,
            Reply::Hang,
            Reply::Hang,
            Reply::Hang,
        ],
    );
    let hung = scripted_txn(&client, &p, Duration::from_millis(1500)).await?;
    assert_eq!(hung.state, TxnState::Aborted, "{hung:?}");
    assert!(hung.reason.contains("did not finish"), "{}", hung.reason);
    p.clear("prepare");

    // Phase 2 is retried through 500s and garbage-free 2xx ends it; the
    // result of an ack travels back.
    p.script(
        "commit",
        vec![
            Reply::status(500, "db down"),
            Reply::Hangup,
            Reply::ok(r#"{"result":"receipt-9"}"#),
        ],
    );
    let acked = scripted_txn(&client, &p, long).await?;
    assert_eq!(acked.state, TxnState::Committed, "{acked:?}");
    assert_eq!(
        p.calls(&acked.txn_id),
        ["prepare", "commit", "commit", "commit"]
    );
    assert_eq!(acked.result_of("1"), Some(&b"receipt-9"[..]));
    Ok(())
}

#[tokio::test]
async fn bad_http_endpoints_are_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let arbiter = arbiter(dir.path()).await?;
    let client = arbiter.client().await?;
    for base in [
        "http://127.0.0.1:9/a?b=c",
        "http://127.0.0.1:9/../x",
        "ftp://127.0.0.1:9/",
        "https://127.0.0.1:9/", // no --participant-tls-ca
        "http://127.0.0.1:9/a/%2e%2e/b",
        "http://127.0.0.1:9/a/./b",
        "http://user@127.0.0.1:9/a",
    ] {
        let bad = client
            .execute(Execute::two_phase().branch(Branch::http(base, "r")))
            .await;
        assert!(
            matches!(bad, Err(arbiter_sdk::ClientError::InvalidArgument(_))),
            "{base}: {bad:?}"
        );
    }
    let long = format!("http://127.0.0.1:9/{}", "a".repeat(3000));
    let too_long = client
        .execute(Execute::two_phase().branch(Branch::http(long, "r")))
        .await;
    assert!(matches!(
        too_long,
        Err(arbiter_sdk::ClientError::InvalidArgument(_))
    ));
    let grpc_json = client
        .execute(
            Execute::two_phase().branch(Branch::new("http://127.0.0.1:9", "r").payload_as_json()),
        )
        .await;
    assert!(matches!(
        grpc_json,
        Err(arbiter_sdk::ClientError::InvalidArgument(_))
    ));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_banks_stay_whole_when_the_coordinator_is_killed() -> anyhow::Result<()> {
    use arbiter_tests::chaos::{self, final_state, kill_repeatedly};
    use std::sync::atomic::{AtomicBool, Ordering};
    if !node_or_skip() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let mut arbiter = ArbiterProcess::start(dir.path(), &chaos::ARBITER_ARGS).await?;
    let python = Arc::new(ExampleBank::start("python3", "bank.py", "bob=10000,dave=10000").await?);
    let node = Arc::new(ExampleBank::start("node", "bank.js", "carol=10000,erin=10000").await?);
    let client = arbiter.client().await?;
    let stop = Arc::new(AtomicBool::new(false));
    let ids = Arc::new(std::sync::Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (client, stop, ids) = (client.clone(), stop.clone(), ids.clone());
            let (python, node) = (python.clone(), node.clone());
            tokio::spawn(async move {
                let mut seq = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    seq += 1;
                    let id = format!("h{w}-{seq}");
                    ids.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(id.clone());
                    let amount = fastrand::i64(1..=300);
                    let (from, to) = if fastrand::bool() {
                        (
                            http_leg(&python, ["bob", "dave"][w % 2], -amount),
                            http_leg(&node, ["carol", "erin"][w % 2], amount),
                        )
                    } else {
                        (
                            http_leg(&node, ["carol", "erin"][w % 2], -amount),
                            http_leg(&python, ["bob", "dave"][w % 2], amount),
                        )
                    };
                    let txn = if fastrand::bool() {
                        Execute::tcc()
                    } else {
                        Execute::two_phase()
                    };
                    let txn = txn
                        .txn_id(id)
                        .timeout(Duration::from_secs(5))
                        .branch(from)
                        .branch(to);
                    let answered =
                        tokio::time::timeout(Duration::from_secs(15), client.execute(txn)).await;
                    if !matches!(answered, Ok(Ok(_))) {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            })
        })
        .collect();
    kill_repeatedly(&mut arbiter, chaos::kills(4), 200..700).await?;
    stop.store(true, Ordering::SeqCst);
    for worker in workers {
        worker.await?;
    }
    let ids = ids.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut committed = 0;
    for id in &ids {
        if final_state(&client, id).await == Some(TxnState::Committed) {
            committed += 1;
        }
    }
    let total: i64 = python.balances().await?.values().sum::<i64>()
        + node.balances().await?.values().sum::<i64>();
    println!("http chaos: {} transfers, {committed} committed", ids.len());
    assert_eq!(total, 40_000, "money was created or destroyed");
    assert_eq!(
        (python.held().await?, node.held().await?),
        (0, 0),
        "holds left behind"
    );
    assert!(committed > 0);
    Ok(())
}

/// A TLS server configuration for the scripted participant: the test CA's
/// server certificate, and client certificates signed by the CA required.
fn participant_tls(
    ca: &arbiter_tests::certs::TestCa,
) -> anyhow::Result<Arc<tokio_rustls::rustls::ServerConfig>> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let server = ca.server()?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.cert().as_bytes()) {
        roots.add(cert?)?;
    }
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider.clone())
            .build()?;
    let chain =
        CertificateDer::pem_slice_iter(server.cert.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(server.key.as_bytes())?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    Ok(Arc::new(config))
}

#[tokio::test]
async fn https_participants_with_client_certificates_and_the_allowlist() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = arbiter_tests::certs::TestCa::new()?;
    let client_cert = ca.client("coordinator")?;
    let files = [
        ("ca.pem", ca.cert()),
        ("client.pem", client_cert.cert.clone()),
        ("client.key", client_cert.key.clone()),
    ];
    for (name, text) in &files {
        std::fs::write(dir.path().join(name), text)?;
    }
    let path = |name: &str| dir.path().join(name).display().to_string();
    let p = Scripted::start_tls(participant_tls(&ca)?).await?;
    let port = p.addr.rsplit(':').next().unwrap_or_default().to_string();
    let arbiter = ArbiterProcess::start(
        &dir.path().join("log"),
        &[
            "--participant-tls-ca",
            &path("ca.pem"),
            "--participant-tls-cert",
            &path("client.pem"),
            "--participant-tls-key",
            &path("client.key"),
            "--allow-participant",
            &format!("127.0.0.1:{port}"),
        ],
    )
    .await?;
    let client = arbiter.client().await?;
    assert!(p.base().starts_with("https://"));
    let done = client
        .execute(Execute::two_phase().branch(Branch::http(p.base(), "stock")))
        .await?;
    assert_eq!(done.state, TxnState::Committed, "{done:?}");
    assert_eq!(p.calls(&done.txn_id), ["prepare", "commit"]);

    // Not in the allowlist: refused before any call.
    let elsewhere = client
        .execute(Execute::two_phase().branch(Branch::http("https://127.0.0.1:1/x", "stock")))
        .await;
    assert!(
        matches!(&elsewhere, Err(arbiter_sdk::ClientError::Other(s)) if s.code() == tonic::Code::PermissionDenied),
        "{elsewhere:?}"
    );
    Ok(())
}
