//! Webhooks: a receiver written here from the README's description checks
//! every notification's HMAC-SHA256 signature and timestamp. A notification
//! the receiver could not take is delivered again after a kill -9 of the
//! coordinator (it was pending in the log), and a forged or replayed body is
//! rejected. A transaction whose phase 2 keeps failing is notified as stuck,
//! then again when it ends.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use arbiter_sdk::{Branch, Execute};
use arbiter_tests::{ArbiterProcess, eventually, recorder_participant};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "whsec-test-3f9a";

/// One POST the receiver got.
#[derive(Clone, Debug)]
struct Received {
    delivery: String,
    event: String,
    body: serde_json::Value,
    /// The signature checked out and the timestamp is fresh.
    genuine: bool,
}

/// The check a receiver makes: HMAC-SHA256 of "<timestamp>.<body>" with the
/// shared secret, hex, as `v1=<hex>`; the timestamp within five minutes.
fn genuine(timestamp: &str, body: &[u8], signature: &str) -> bool {
    let Ok(ts) = timestamp.parse::<u64>() else {
        return false;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if now.abs_diff(ts) > 300 {
        return false;
    }
    let Some(hex) = signature.strip_prefix("v1=") else {
        return false;
    };
    let Ok(bytes) = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("zz"), 16))
        .collect::<Result<Vec<u8>, _>>()
    else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()) else {
        return false;
    };
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&bytes).is_ok()
}

struct Receiver {
    port: u16,
    /// The status a genuine notification is answered with.
    answer: Arc<AtomicU16>,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    fn got(&self) -> Vec<Received> {
        self.got.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

async fn receiver() -> anyhow::Result<Receiver> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let answer = Arc::new(AtomicU16::new(204));
    let got = Arc::new(Mutex::new(Vec::new()));
    let (a, g) = (answer.clone(), got.clone());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (a, g) = (a.clone(), g.clone());
            tokio::spawn(async move {
                let Some((headers, body)) = read_request(&mut stream).await else {
                    return;
                };
                let header = |name: &str| {
                    headers
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(name))
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default()
                };
                let ok = genuine(
                    &header("x-arbiter-timestamp"),
                    &body,
                    &header("x-arbiter-signature"),
                );
                g.lock().unwrap_or_else(|p| p.into_inner()).push(Received {
                    delivery: header("x-arbiter-delivery"),
                    event: header("x-arbiter-event"),
                    body: serde_json::from_slice(&body).unwrap_or_default(),
                    genuine: ok,
                });
                let status = if ok { a.load(Ordering::SeqCst) } else { 401 };
                let reply = format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                let _ = stream.write_all(reply.as_bytes()).await;
            });
        }
    });
    Ok(Receiver { port, answer, got })
}

/// Reads one HTTP/1.1 request: its headers and its body (Content-Length).
async fn read_request(
    stream: &mut tokio::net::TcpStream,
) -> Option<(Vec<(String, String)>, Vec<u8>)> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_string();
    let headers: Vec<(String, String)> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = data[head_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&buf[..n]);
    }
    body.truncate(length);
    Some((headers, body))
}

/// POSTs `body` to the receiver with the given signature headers; its status.
async fn post(port: u16, body: &[u8], timestamp: &str, signature: &str) -> anyhow::Result<u16> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let head = format!(
        "POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nX-Arbiter-Timestamp: {timestamp}\r\nX-Arbiter-Signature: {signature}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    Ok(answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0))
}

#[tokio::test]
async fn a_notification_is_signed_survives_a_kill_9_and_forgeries_are_rejected()
-> anyhow::Result<()> {
    let hooks = receiver().await?;
    hooks.answer.store(503, Ordering::SeqCst); // down for now
    let url = format!("http://127.0.0.1:{}/hook", hooks.port);
    let dir = tempfile::tempdir()?;
    let mut arbiter = ArbiterProcess::start(
        dir.path(),
        &["--notify-url", &url, "--notify-secret", SECRET],
    )
    .await?;
    let (p, _rec) = recorder_participant().await?;
    let client = arbiter.client().await?;
    let outcome = client
        .execute(
            Execute::tcc()
                .branch(Branch::new(p.endpoint(), "r1").payload("result:14C"))
                .wait(true),
        )
        .await?;
    assert!(outcome.is_committed());
    let txn_id = outcome.txn_id.clone();

    // The receiver was down: it saw a genuine attempt and refused it.
    let first = eventually("a first, refused delivery", || async {
        hooks
            .got()
            .into_iter()
            .find(|r| r.body["txn_id"] == txn_id.as_str())
    })
    .await;
    assert!(first.genuine, "{first:?}");

    // Killed before any delivery succeeded; the notification is in the log.
    arbiter.kill().await?;
    hooks.answer.store(204, Ordering::SeqCst);
    let refused_before = hooks.got().len();
    arbiter.restart().await?;
    let delivered = eventually("the notification delivered after the restart", || async {
        hooks
            .got()
            .into_iter()
            .skip(refused_before)
            .find(|r| r.body["txn_id"] == txn_id.as_str())
    })
    .await;
    assert!(delivered.genuine);
    assert_eq!(
        delivered.delivery, first.delivery,
        "the same delivery id: deduplicable"
    );
    assert_eq!(delivered.event, "transaction.committed");
    let body = &delivered.body;
    assert_eq!(body["type"], "transaction.committed");
    assert_eq!(body["state"], "COMMITTED");
    assert_eq!(body["mode"], "tcc");
    assert_eq!(body["branches"][0]["state"], "COMMITTED");
    // "done:14C", base64.
    assert_eq!(body["branches"][0]["result_base64"], "ZG9uZToxNEM=");

    // Forged: a changed body under a real signature, a made-up signature,
    // and a genuine one replayed with a stale timestamp.
    let genuine_body = serde_json::to_vec(body)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)?
        .as_secs()
        .to_string();
    let sign = |ts: &str, body: &[u8]| -> anyhow::Result<String> {
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes())?;
        mac.update(ts.as_bytes());
        mac.update(b".");
        mac.update(body);
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(format!("v1={hex}"))
    };
    let real = sign(&now, &genuine_body)?;
    assert_eq!(post(hooks.port, &genuine_body, &now, &real).await?, 204);
    let mut forged = body.clone();
    forged["state"] = "ABORTED".into();
    assert_eq!(
        post(hooks.port, &serde_json::to_vec(&forged)?, &now, &real).await?,
        401
    );
    assert_eq!(post(hooks.port, &genuine_body, &now, "v1=00ff").await?, 401);
    let stale = "1700000000";
    assert_eq!(
        post(
            hooks.port,
            &genuine_body,
            stale,
            &sign(stale, &genuine_body)?
        )
        .await?,
        401
    );
    Ok(())
}

#[tokio::test]
async fn a_notify_url_outside_the_allowlist_refuses_to_start() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let stderr = dir.path().join("stderr");
    let start = ArbiterProcess::try_start(
        &dir.path().join("data"),
        &[
            "--allow-participant",
            "127.0.0.1:9",
            "--notify-url",
            "http://10.1.2.3:8080/hook",
        ],
        &stderr,
    )
    .await?;
    match start {
        arbiter_tests::process::Start::Refused { stderr, .. } => {
            assert!(stderr.contains("not in --allow-participant"), "{stderr}");
        }
        arbiter_tests::process::Start::Serving(_) => {
            panic!("started with a forbidden --notify-url")
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_stuck_transaction_is_notified_then_its_end() -> anyhow::Result<()> {
    let hooks = receiver().await?;
    let url = format!("http://127.0.0.1:{}/hook", hooks.port);
    let dir = tempfile::tempdir()?;
    let arbiter = ArbiterProcess::start(
        dir.path(),
        &[
            "--notify-url",
            &url,
            "--notify-secret",
            SECRET,
            "--stuck-after-attempts",
            "2",
            "--retry-base-ms",
            "20",
            "--retry-max-ms",
            "100",
        ],
    )
    .await?;
    let (p, rec) = recorder_participant().await?;
    rec.set_fail_phase2(true);
    let client = arbiter.client().await?;
    let decided = client
        .execute(
            Execute::two_phase()
                .wait(false)
                .branch(Branch::new(p.endpoint(), "r1")),
        )
        .await?;
    let id = decided.txn_id.clone();
    let stuck = eventually("a stuck notification", || async {
        hooks
            .got()
            .into_iter()
            .find(|r| r.body["txn_id"] == id.as_str() && r.event == "transaction.stuck")
    })
    .await;
    assert!(stuck.genuine);
    assert_eq!(stuck.body["state"], "COMMITTING");
    assert!(stuck.body["stuck_since_ms"].as_u64().is_some());
    assert_eq!(stuck.delivery, format!("{id}:stuck"));
    rec.set_fail_phase2(false);
    let ended = eventually("the end notified after the stuck one", || async {
        hooks
            .got()
            .into_iter()
            .find(|r| r.body["txn_id"] == id.as_str() && r.event == "transaction.committed")
    })
    .await;
    assert!(ended.genuine);
    assert_eq!(ended.delivery, format!("{id}:ended"));
    Ok(())
}
