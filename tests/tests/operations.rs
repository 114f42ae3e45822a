//! Operating the `arbiter` binary: the standard health protocol (not serving
//! during start-up recovery), server reflection, the Prometheus endpoint,
//! and the config file with its precedence below env and flags.

use std::io::{Read, Write};
use std::time::Duration;

use arbiter_sdk::{Branch, Execute, Mode, TxnState};
use arbiter_tests::process::{arbiter_bin, free_port};
use arbiter_tests::{ArbiterProcess, code_of, eventually, recorder_participant};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

async fn health(endpoint: &str, service: &str) -> anyhow::Result<ServingStatus> {
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())?
        .connect()
        .await?;
    let mut client = HealthClient::new(channel);
    let response = client
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await?;
    Ok(response.into_inner().status())
}

/// Waits until the whole server reports SERVING.
async fn serving(endpoint: &str) {
    eventually("health SERVING", || async {
        (health(endpoint, "").await.ok()? == ServingStatus::Serving).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_not_serving_until_recovery_is_done() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut arbiter = ArbiterProcess::start(
        dir.path(),
        &["--retry-base-ms", "20", "--retry-max-ms", "100"],
    )
    .await?;
    // Serving once the (empty) recovery has run; that may be just after the
    // port answers.
    serving(&arbiter.endpoint).await;
    assert_eq!(
        health(&arbiter.endpoint, "arbiter.v1.Coordinator").await?,
        ServingStatus::Serving
    );

    // A decided transaction whose participant refuses phase 2, and a long
    // call timeout: after a restart, recovery cannot finish until the
    // participant recovers.
    let (participant, recorder) = recorder_participant().await?;
    recorder.set_fail_phase2(true);
    let client = arbiter.client().await?;
    let decided = client
        .execute(
            Execute::two_phase()
                .branch(
                    Branch::new(participant.endpoint(), "r1").call_timeout(Duration::from_secs(60)),
                )
                .wait(false),
        )
        .await?;
    assert_eq!(decided.state, TxnState::Committing);
    arbiter.kill().await?;
    arbiter.restart().await?;
    assert_eq!(
        health(&arbiter.endpoint, "").await?,
        ServingStatus::NotServing
    );
    assert_eq!(
        health(&arbiter.endpoint, "arbiter.v1.Admin").await?,
        ServingStatus::NotServing
    );

    recorder.set_fail_phase2(false);
    serving(&arbiter.endpoint).await;
    let client = arbiter.client().await?;
    assert_eq!(
        client.get_transaction(&decided.txn_id).await?.state(),
        TxnState::Committed
    );
    Ok(())
}

/// The services a reflection client of protocol `$version` lists.
macro_rules! list_services {
    ($version:ident, $channel:expr) => {{
        use tonic_reflection::pb::$version::ServerReflectionRequest;
        use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::$version::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut answers = ServerReflectionClient::new($channel)
            .server_reflection_info(tokio_stream::iter([request]))
            .await?
            .into_inner();
        let answer = answers.message().await?.and_then(|m| m.message_response);
        let Some(MessageResponse::ListServicesResponse(list)) = answer else {
            anyhow::bail!("no service list over {}: {answer:?}", stringify!($version));
        };
        list.service
            .into_iter()
            .map(|s| s.name)
            .collect::<Vec<String>>()
    }};
}

#[tokio::test]
async fn reflection_lists_every_service() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let arbiter = ArbiterProcess::start(dir.path(), &[]).await?;
    let channel = tonic::transport::Endpoint::from_shared(arbiter.endpoint.clone())?
        .connect()
        .await?;
    // v1, and v1alpha for grpcio-reflection, Postman and older grpcurl.
    let v1 = list_services!(v1, channel.clone());
    let v1alpha = list_services!(v1alpha, channel);
    for names in [v1, v1alpha] {
        for expected in [
            "arbiter.v1.Coordinator",
            "arbiter.v1.Admin",
            "grpc.health.v1.Health",
        ] {
            assert!(
                names.iter().any(|n| n == expected),
                "{expected} missing from {names:?}"
            );
        }
    }
    Ok(())
}

/// `GET /metrics` over a plain socket.
fn scrape(addr: &str) -> anyhow::Result<String> {
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    // Read until the whole body (by its Content-Length) has arrived: the
    // exporter may keep the connection open.
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        bytes.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&bytes);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse::<usize>().ok());
            if length.is_some_and(|len| body.len() >= len) {
                return Ok(body.to_string());
            }
        }
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The value of the sample whose line starts with `series`.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_transactions_calls_and_flushes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let metrics = format!("127.0.0.1:{}", free_port()?);
    let arbiter = ArbiterProcess::start(dir.path(), &["--metrics-listen", &metrics]).await?;
    let (participant, _) = recorder_participant().await?;
    let client = arbiter.client().await?;
    for payload in ["yes", "yes", "yes", "no:refused"] {
        client
            .execute(
                Execute::two_phase()
                    .branch(Branch::new(participant.endpoint(), "r1").payload(payload))
                    .branch(Branch::new(participant.endpoint(), "r2")),
            )
            .await?;
    }
    let text = eventually("the metrics show the transactions", || {
        let metrics = metrics.clone();
        async move {
            let text = scrape(&metrics).ok()?;
            (sample(
                &text,
                "arbiter_transactions_total{mode=\"2pc\",outcome=\"committed\"}",
            ) >= 3.0
                && sample(
                    &text,
                    "arbiter_transactions_total{mode=\"2pc\",outcome=\"aborted\"}",
                ) >= 1.0)
                .then_some(text)
        }
    })
    .await;
    assert!(
        sample(
            &text,
            "arbiter_branch_calls_total{call=\"prepare\",code=\"OK\",protocol=\"grpc\"}"
        ) >= 8.0,
        "{text}"
    );
    assert!(
        sample(
            &text,
            "arbiter_branch_calls_total{call=\"commit\",code=\"OK\",protocol=\"grpc\"}"
        ) >= 6.0
    );
    assert!(sample(&text, "arbiter_log_flush_seconds_count") >= 4.0);
    assert!(sample(&text, "arbiter_transaction_duration_seconds_count") >= 4.0);
    assert!(text.contains("arbiter_unfinished_transactions"));
    // Low cardinality: no transaction id appears in any label.
    let ids = client
        .execute(Execute::two_phase().branch(Branch::new(participant.endpoint(), "r1")))
        .await?;
    let later = eventually("the fifth transaction is counted", || {
        let metrics = metrics.clone();
        async move {
            let text = scrape(&metrics).ok()?;
            (sample(
                &text,
                "arbiter_transactions_total{mode=\"2pc\",outcome=\"committed\"}",
            ) >= 4.0)
                .then_some(text)
        }
    })
    .await;
    assert!(!later.contains(&ids.txn_id));
    Ok(())
}

#[tokio::test]
async fn flags_win_over_env_which_wins_over_the_config_file() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("arbiter.toml");
    std::fs::write(
        &file,
        "max-branches = 1\nmax-payload-bytes = 1000\nmax-unfinished = 5\nretention-secs = 3600\n",
    )?;
    let config = file.to_string_lossy().into_owned();
    let arbiter = ArbiterProcess::start_with_env(
        &dir.path().join("data"),
        &["--config", &config, "--max-unfinished", "1"],
        &[("ARBITER_MAX_PAYLOAD_BYTES", "10")],
    )
    .await?;
    let (participant, _) = recorder_participant().await?;
    let client = arbiter.client().await?;
    let branch = || Branch::new(participant.endpoint(), "r1");

    // From the file (nothing overrides it).
    let two = client
        .execute(Execute::two_phase().branch(branch()).branch(branch()))
        .await
        .err();
    assert_eq!(
        two.as_ref().map(code_of),
        Some(Code::InvalidArgument),
        "{two:?}"
    );
    // The environment (10) beats the file (1000).
    let payload = client
        .execute(Execute::two_phase().branch(branch().payload("twenty bytes of data")))
        .await
        .err();
    assert!(
        matches!(&payload, Some(e) if e.to_string().contains("limit is 10 bytes")),
        "{payload:?}"
    );
    // The flag (1) beats the file (5).
    client
        .begin(Mode::TwoPhase, Some(Duration::from_secs(60)))
        .await?;
    let second = client
        .begin(Mode::TwoPhase, Some(Duration::from_secs(60)))
        .await
        .err();
    assert_eq!(second.as_ref().map(code_of), Some(Code::ResourceExhausted));
    Ok(())
}

#[test]
fn config_check_accepts_a_good_file_and_explains_a_bad_one() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let check = |text: &str| -> anyhow::Result<(i32, String)> {
        let file = dir.path().join("check.toml");
        std::fs::write(&file, text)?;
        let out = std::process::Command::new(arbiter_bin()?)
            .args(["config", "check"])
            .arg(&file)
            .env_clear()
            .output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((out.status.code().unwrap_or(-1), text))
    };
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../arbiter.example.toml"
    ))?;
    let (code, text) = check(&example)?;
    assert_eq!(code, 0, "the example config must pass: {text}");
    assert!(
        text.contains("OK") && text.contains("admin tokens"),
        "{text}"
    );
    assert!(
        !text.contains("change-me"),
        "secrets are never printed: {text}"
    );

    for (bad, says) in [
        ("max-brnches = 3", "unknown setting"),
        ("accept-damaged-log = true", "on the command line"),
        ("max-branches = \"many\"", "invalid value"),
        (
            "allow-participant = [\"not a pattern\"]",
            "bad participant pattern",
        ),
        ("admin-token = [\"ops=short\"]", "shorter than 16"),
        (
            "tls-cert = \"/nonexistent.pem\"\ntls-key = \"/nonexistent.pem\"",
            "cannot read",
        ),
        ("listen = ", "not valid TOML"),
    ] {
        let (code, text) = check(bad)?;
        assert_eq!(code, 2, "{bad:?} must be refused: {text}");
        assert!(text.contains(says), "{bad:?}: expected {says:?} in {text}");
    }
    Ok(())
}

#[tokio::test]
async fn the_admin_cli_sends_its_token() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let arbiter = ArbiterProcess::start(
        dir.path(),
        &[
            "--admin-token",
            "ops=cli-secret-0123456789",
            "--coordinator-token",
            "svc=svc-secret-0123456789",
        ],
    )
    .await?;
    let stats = |token: Option<&str>| -> anyhow::Result<(i32, String)> {
        let mut command = std::process::Command::new(arbiter_bin()?);
        command
            .args(["stats", "--addr", &arbiter.endpoint])
            .env_remove("ARBITER_TOKEN");
        if let Some(token) = token {
            command.env("ARBITER_TOKEN", token);
        }
        let out = command.output()?;
        Ok((
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ))
    };
    let (code, text) = stats(None)?;
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("missing bearer token"), "{text}");
    let (code, text) = stats(Some("svc-secret-0123456789"))?;
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("admin token"), "{text}");
    let (code, text) = stats(Some("cli-secret-0123456789"))?;
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("COMMITTED since start"), "{text}");
    Ok(())
}
