//! What a client without any token can do to a running coordinator's
//! descriptors and memory, on real processes: idle sockets by the thousand,
//! and messages that are declared large and never finished. Each test prints
//! the process's descriptors and RSS before, during and after the load
//! (`--nocapture` shows them).
//!
//! Also: when the log does fail, the process says so, stops serving and
//! exits, whatever connections are open.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use arbiter_sdk::{Branch, Execute, Mode};
use arbiter_tests::process::{Launch, Usage, usage};
use arbiter_tests::{ArbiterProcess, PATIENCE, recorder_participant};
use bytes::Bytes;

/// Runs one 2-branch transaction to its end; the error if it cannot.
async fn one_transaction(process: &ArbiterProcess, participant: &str) -> anyhow::Result<()> {
    let client = process.client().await?;
    let outcome = client
        .execute(
            Execute::two_phase()
                .branch(Branch::new(participant, "r1"))
                .branch(Branch::new(participant, "r2"))
                .wait(true),
        )
        .await?;
    anyhow::ensure!(outcome.is_committed(), "{outcome:?}");
    Ok(())
}

/// Polls `check` on the process's usage until it holds or `PATIENCE` ends.
async fn until_usage(
    pid: u32,
    what: &str,
    check: impl Fn(&Usage) -> bool,
) -> anyhow::Result<Usage> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let now = usage(pid)?;
        if check(&now) {
            return Ok(now);
        }
        if Instant::now() > deadline {
            anyhow::bail!("{what}: still {now} after {PATIENCE:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A TCP connection to `address` from 127.0.0.2, so the attacker's address
/// differs from the legitimate client's (127.0.0.1).
async fn attacker_connect(address: &str) -> anyhow::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind("127.0.0.2:0".parse()?)?;
    Ok(socket.connect(address.parse()?).await?)
}

/// 1,100 idle TCP connections against a 1,024-descriptor limit used to take
/// the log down for good while health still said SERVING.
#[tokio::test]
async fn idle_connections_cannot_exhaust_descriptors() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let (participant, _rec) = recorder_participant().await?;
    let endpoint = participant.endpoint();
    let process = ArbiterProcess::start_launch(
        data.path(),
        &[
            "--handshake-timeout",
            "2s",
            "--max-connections-per-ip",
            "256",
        ],
        Launch {
            fd_limit: Some(1024),
            ..Launch::default()
        },
    )
    .await?;
    let pid = process.pid().ok_or_else(|| anyhow::anyhow!("no pid"))?;
    one_transaction(&process, &endpoint).await?;
    let before = usage(pid)?;

    let address = process.endpoint.trim_start_matches("http://").to_string();
    let mut idle = Vec::new();
    for _ in 0..1100 {
        if let Ok(socket) = attacker_connect(&address).await {
            idle.push(socket);
        }
    }
    let peak = until_usage(pid, "the attacker's connections accepted", |u| {
        u.fds >= before.fds + 200
    })
    .await?;
    anyhow::ensure!(peak.fds < 1024, "descriptors ran out: {peak}");
    // The log keeps working and another client is served at once: the
    // attacker's address holds only its 256 places.
    one_transaction(&process, &endpoint).await?;
    anyhow::ensure!(
        usage(pid)?.fds <= before.fds + 256 + 8,
        "one address held more than its places"
    );
    // Still held open by the attacker, its silent connections are closed.
    let after = until_usage(pid, "silent connections closed", |u| {
        u.fds <= before.fds + 8
    })
    .await?;
    one_transaction(&process, &endpoint).await?;
    drop(idle);
    println!("1,100 idle connections, fd limit 1,024: before {before}; peak {peak}; after {after}");
    Ok(())
}

/// One byte now and then used to turn the handshake deadline into the idle
/// one; and one address could take every place under the cap.
#[tokio::test]
async fn a_trickle_of_bytes_does_not_hold_a_connection() -> anyhow::Result<()> {
    use std::io::Write as _;
    let data = tempfile::tempdir()?;
    let process = ArbiterProcess::start(
        data.path(),
        &[
            "--handshake-timeout",
            "2s",
            "--max-connections-per-ip",
            "10",
        ],
    )
    .await?;
    let pid = process.pid().ok_or_else(|| anyhow::anyhow!("no pid"))?;
    let before = usage(pid)?;
    let address = process.endpoint.trim_start_matches("http://").to_string();
    let mut trickles = Vec::new();
    for _ in 0..50 {
        let mut socket = TcpStream::connect(&address)?;
        socket.write_all(b"P")?;
        trickles.push(socket);
    }
    // Some are accepted (at most 10: the rest are closed on accept)...
    let mut peak = until_usage(pid, "trickling connections accepted", |u| {
        u.sockets >= before.sockets + 5
    })
    .await?;
    for _ in 0..10 {
        let now = usage(pid)?;
        anyhow::ensure!(
            now.sockets <= before.sockets + 10,
            "one address held more than its 10 places: {now} (before: {before})"
        );
        peak = if now.sockets > peak.sockets {
            now
        } else {
            peak
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Still open on our side, each having sent a byte: closed anyway.
    let after = until_usage(pid, "trickling connections closed", |u| {
        u.sockets <= before.sockets
    })
    .await?;
    drop(trickles);
    println!(
        "50 one-byte connections from one address: before {before}; peak {peak}; after {after}"
    );
    Ok(())
}

/// Opens `streams` requests on one HTTP/2 connection, each declaring a
/// message of `declared` bytes and sending all of it but the last byte.
/// Returns the connection's task and the streams' response futures.
async fn half_send(
    address: &str,
    streams: usize,
    declared: usize,
) -> anyhow::Result<(tokio::task::JoinHandle<()>, Vec<h2::client::ResponseFuture>)> {
    let socket = attacker_connect(address).await?;
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .handshake::<_, Bytes>(socket)
        .await?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await?;
    let mut responses = Vec::new();
    let mut body = vec![0u8; declared + 4];
    body[1..5].copy_from_slice(&(declared as u32).to_be_bytes());
    let body = Bytes::from(body);
    for _ in 0..streams {
        let request =
            http::Request::post(format!("http://{address}/arbiter.v1.Coordinator/Execute"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(())?;
        client = client.ready().await?;
        let (response, mut stream) = client.send_request(request, false)?;
        // 5-byte gRPC frame header and all but the last byte of the message.
        stream.send_data(body.clone(), false)?;
        responses.push(response);
    }
    Ok((driver, responses))
}

/// 10 connections x 20 streams, each declaring a ~4 MiB message and sending
/// all but one byte, used to take RSS from 58 MB to 1.98 GB, and it stayed.
#[tokio::test]
async fn half_sent_messages_hold_bounded_memory() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let (participant, _rec) = recorder_participant().await?;
    let endpoint = participant.endpoint();
    let budget: u64 = 64 << 20;
    let process = ArbiterProcess::start(
        data.path(),
        &[
            "--request-read-timeout",
            "3s",
            "--max-request-memory",
            &budget.to_string(),
        ],
    )
    .await?;
    let pid = process.pid().ok_or_else(|| anyhow::anyhow!("no pid"))?;
    one_transaction(&process, &endpoint).await?;
    let before = usage(pid)?;
    let address = process.endpoint.trim_start_matches("http://").to_string();
    // Just under the default message limit (~4.3 MiB).
    let declared = 4 << 20;
    let mut attack = Vec::new();
    for _ in 0..10 {
        attack.push(half_send(&address, 20, declared).await?);
    }
    // Let the bytes arrive, then look while every stream is open.
    let mut peak = usage(pid)?;
    let settle = Instant::now() + Duration::from_secs(2);
    while Instant::now() < settle {
        let now = usage(pid)?;
        if now.rss_bytes > peak.rss_bytes {
            peak = now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Another client is served meanwhile: the attacker holds only its share.
    one_transaction(&process, &endpoint).await?;
    // Every half-sent request ends with an error status, none with OK.
    let mut refused = 0;
    for (_, responses) in &mut attack {
        for response in responses.drain(..) {
            let answer = tokio::time::timeout(PATIENCE, response).await?;
            if let Ok(response) = answer {
                let status = response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                anyhow::ensure!(status.as_deref() != Some("0"), "a half-sent request got OK");
            }
            refused += 1;
        }
    }
    let now = usage(pid)?;
    if now.rss_bytes > peak.rss_bytes {
        peak = now;
    }
    one_transaction(&process, &endpoint).await?;
    for (driver, _) in attack {
        driver.abort();
    }
    let limit = before.rss_bytes + budget + (96 << 20);
    anyhow::ensure!(
        peak.rss_bytes < limit,
        "RSS went to {peak} (before: {before}); bound {:.1} MB",
        limit as f64 / 1e6
    );
    let after = until_usage(pid, "memory comes back", |u| {
        u.rss_bytes < before.rss_bytes + (48 << 20)
    })
    .await?;
    println!(
        "200 streams x {declared} bytes half-sent, budget {budget}: before {before}; peak {peak}; after {after}; {refused} refused"
    );
    Ok(())
}

/// Starts a coordinator with `failpoints`, holds idle connections to it, and
/// returns its stderr once it has exited (failing if it does not).
async fn exits_after_log_failure(failpoints: &str, write: bool) -> anyhow::Result<String> {
    let data = tempfile::tempdir()?;
    let stderr = data.path().join("stderr");
    let mut process = ArbiterProcess::start_launch(
        &data.path().join("db"),
        &[],
        Launch {
            failpoints: Some(failpoints),
            stderr: Some(&stderr),
            ..Launch::default()
        },
    )
    .await?;
    let address = process.endpoint.trim_start_matches("http://").to_string();
    let idle: Vec<TcpStream> = (0..50)
        .filter_map(|_| TcpStream::connect(&address).ok())
        .collect();
    if write {
        let client = process.client().await?;
        let begun = client.begin(Mode::TwoPhase, None).await;
        anyhow::ensure!(begun.is_err(), "a Begin whose write failed answered OK");
    }
    let exit = process.exited_within(PATIENCE).await?;
    drop(idle);
    let Some(exit) = exit else {
        anyhow::bail!("the coordinator kept running after its log failed");
    };
    anyhow::ensure!(!exit.success(), "exit status {exit}");
    Ok(std::fs::read_to_string(&stderr)?)
}

#[tokio::test]
async fn a_failed_log_write_stops_the_process() -> anyhow::Result<()> {
    let stderr = exits_after_log_failure("log-sync-fails=return", true).await?;
    assert!(stderr.contains("transaction log failed"), "{stderr}");
    Ok(())
}

#[tokio::test]
async fn a_failed_checkpoint_stops_an_idle_process() -> anyhow::Result<()> {
    // The mark is written once a second; the third write fails, with no
    // request waiting on the log.
    let stderr = exits_after_log_failure("checkpoint-fails=2*off->return", false).await?;
    assert!(stderr.contains("transaction log failed"), "{stderr}");
    Ok(())
}
