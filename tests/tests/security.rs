//! Who may do what: bearer tokens by role, the participant allowlist, TLS
//! and mutual TLS both ways, the limits, and trace context propagation.

use std::time::Duration;

use arbiter::Config;
use arbiter::security::{Auth, Tls};
use arbiter_proto::v1 as pb;
use arbiter_proto::v1::admin_client::AdminClient;
use arbiter_sdk::tls::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};
use arbiter_sdk::{Branch, Client, ClientError, ConnectOptions, Execute, ParticipantServer};
use arbiter_tests::certs::TestCa;
use arbiter_tests::{TestCoordinator, code_of, recorder_participant};
use tonic::Code;

const COORDINATOR_SECRET: &str = "svc-secret-0123456789";
const ADMIN_SECRET: &str = "ops-secret-0123456789";

/// A coordinator with `config`, serving on 127.0.0.1; returns its address.
async fn serve(config: Config) -> anyhow::Result<(String, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let storage = arbiter::server::Storage::Sled(dir.path().join("log"));
    tokio::spawn(arbiter::run(
        config,
        storage,
        listener,
        std::future::pending(),
    ));
    Ok((addr, dir))
}

fn secured() -> anyhow::Result<Config> {
    Ok(Config {
        auth: Auth {
            coordinator: vec![
                format!("payments={COORDINATOR_SECRET}")
                    .parse()
                    .map_err(anyhow::Error::msg)?,
            ],
            admin: vec![
                format!("ops={ADMIN_SECRET}")
                    .parse()
                    .map_err(anyhow::Error::msg)?,
            ],
        },
        ..Config::default()
    })
}

async fn admin_with(
    endpoint: &str,
    token: &str,
) -> anyhow::Result<
    AdminClient<
        tonic::service::interceptor::InterceptedService<
            tonic::transport::Channel,
            impl tonic::service::Interceptor,
        >,
    >,
> {
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())?
        .connect()
        .await?;
    let header: tonic::metadata::MetadataValue<_> = format!("Bearer {token}").parse()?;
    Ok(AdminClient::with_interceptor(
        channel,
        move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("authorization", header.clone());
            Ok(r)
        },
    ))
}

#[tokio::test]
async fn tokens_authenticate_and_roles_separate_coordinator_from_admin() -> anyhow::Result<()> {
    let (addr, _dir) = serve(secured()?).await?;
    let endpoint = format!("http://{addr}");
    let (participant, _recorder) = recorder_participant().await?;
    let txn = || Execute::two_phase().branch(Branch::new(participant.endpoint(), "r1"));

    let anonymous = Client::connect(&endpoint).await?;
    let refused = anonymous.execute(txn()).await.err();
    assert_eq!(
        refused.as_ref().map(code_of),
        Some(Code::Unauthenticated),
        "{refused:?}"
    );

    let wrong = Client::connect_with(&endpoint, ConnectOptions::new().token("not-a-token")).await?;
    let refused = wrong.execute(txn()).await.err();
    assert_eq!(refused.as_ref().map(code_of), Some(Code::Unauthenticated));

    let service =
        Client::connect_with(&endpoint, ConnectOptions::new().token(COORDINATOR_SECRET)).await?;
    let done = service.execute(txn()).await?;
    assert!(done.is_committed());

    // A coordinator token cannot use Admin; an admin token can, and the
    // audit log names it.
    let mut as_service = admin_with(&endpoint, COORDINATOR_SECRET).await?;
    let denied = as_service
        .stats(pb::StatsRequest {})
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(denied, Some(Code::PermissionDenied));

    let id = service
        .begin(arbiter_sdk::Mode::TwoPhase, Some(Duration::from_secs(60)))
        .await?;
    let mut ops = admin_with(&endpoint, ADMIN_SECRET).await?;
    ops.force_outcome(pb::ForceOutcomeRequest {
        txn_id: id.clone(),
        outcome: pb::ForcedOutcome::Abort as i32,
        reason: "test".into(),
    })
    .await?;
    let audit = ops
        .list_audit(pb::ListAuditRequest::default())
        .await?
        .into_inner();
    let entry = audit.entries.iter().find(|e| e.txn_id == id);
    assert!(
        entry.is_some_and(|e| e.caller.starts_with("token:ops")),
        "the audit log records the caller: {:?}",
        audit.entries
    );
    Ok(())
}

#[tokio::test]
async fn only_allowlisted_participants_can_be_registered() -> anyhow::Result<()> {
    let (allowed, recorder) = recorder_participant().await?;
    let (other, _) = recorder_participant().await?;
    let coordinator = TestCoordinator::start_with(|c| {
        c.allow_participants = vec![
            allowed
                .endpoint()
                .trim_start_matches("http://")
                .parse()
                .unwrap_or_else(|e| panic!("{e}")),
        ];
    })
    .await?;
    let client = &coordinator.client;

    let refused = client
        .execute(Execute::two_phase().branch(Branch::new(other.endpoint(), "r1")))
        .await
        .err();
    assert_eq!(
        refused.as_ref().map(code_of),
        Some(Code::PermissionDenied),
        "{refused:?}"
    );
    // Not even the cloud metadata address slips through a registration.
    let id = client.begin(arbiter_sdk::Mode::TwoPhase, None).await?;
    let refused = client
        .register_branch(&id, &Branch::new("http://169.254.169.254:80", "r1"))
        .await
        .err();
    assert_eq!(refused.as_ref().map(code_of), Some(Code::PermissionDenied));

    let done = client
        .execute(Execute::two_phase().branch(Branch::new(allowed.endpoint(), "r1")))
        .await?;
    assert!(done.is_committed());
    assert_eq!(recorder.calls(&done.txn_id), ["prepare", "commit"]);
    Ok(())
}

#[tokio::test]
async fn each_limit_answers_with_its_status() -> anyhow::Result<()> {
    let coordinator = TestCoordinator::start_with(|c| {
        c.max_payload_bytes = 16;
        c.max_branches = 2;
        c.max_unfinished = 2;
        c.max_message_bytes = 4096;
    })
    .await?;
    let (participant, _) = recorder_participant().await?;
    let client = &coordinator.client;
    let branch = || Branch::new(participant.endpoint(), "r1");

    let big_payload = client
        .execute(Execute::two_phase().branch(branch().payload(vec![b'x'; 17])))
        .await
        .err();
    assert_eq!(
        big_payload.as_ref().map(code_of),
        Some(Code::InvalidArgument)
    );

    let too_many = client
        .execute(
            Execute::two_phase()
                .branch(branch())
                .branch(branch())
                .branch(branch()),
        )
        .await
        .err();
    assert_eq!(too_many.as_ref().map(code_of), Some(Code::InvalidArgument));

    let too_big_message = client
        .execute(Execute::two_phase().branch(branch().payload(vec![b'x'; 8192])))
        .await
        .err();
    assert!(
        matches!(
            too_big_message.as_ref().map(code_of),
            Some(Code::ResourceExhausted | Code::OutOfRange)
        ),
        "{too_big_message:?}"
    );

    client
        .begin(arbiter_sdk::Mode::TwoPhase, Some(Duration::from_secs(60)))
        .await?;
    client
        .begin(arbiter_sdk::Mode::TwoPhase, Some(Duration::from_secs(60)))
        .await?;
    let full = client
        .begin(arbiter_sdk::Mode::TwoPhase, Some(Duration::from_secs(60)))
        .await
        .err();
    assert_eq!(
        full.as_ref().map(code_of),
        Some(Code::ResourceExhausted),
        "{full:?}"
    );
    Ok(())
}

fn server_tls(ca: &TestCa, require_client: bool) -> anyhow::Result<ServerTlsConfig> {
    let server = ca.server()?;
    let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(server.cert, server.key));
    if require_client {
        tls = tls.client_ca_root(Certificate::from_pem(ca.cert()));
    }
    Ok(tls)
}

fn client_tls(ca: &TestCa, identity: Option<&str>) -> anyhow::Result<ClientTlsConfig> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca.cert()));
    if let Some(name) = identity {
        let client = ca.client(name)?;
        tls = tls.identity(Identity::from_pem(client.cert, client.key));
    }
    Ok(tls)
}

#[tokio::test]
async fn tls_and_mutual_tls_both_ways() -> anyhow::Result<()> {
    let ca = TestCa::new()?;
    // A participant that only talks TLS to coordinators with a certificate.
    let (_, recorder) = recorder_participant().await?;
    let participant = ParticipantServer::new()
        .two_phase("r1", recorder.clone())
        .tls(server_tls(&ca, true)?)
        .serve("127.0.0.1:0".parse()?)
        .await?;
    assert!(participant.endpoint().starts_with("https://"));

    let config = Config {
        tls: Tls {
            server: Some(server_tls(&ca, true)?),
            participants: Some(client_tls(&ca, Some("coordinator"))?),
            ..Tls::default()
        },
        ..Config::default()
    };
    let (addr, _dir) = serve(config).await?;
    let txn = || Execute::two_phase().branch(Branch::new(participant.endpoint(), "r1"));

    // Plain text cannot talk to a TLS coordinator.
    let plain = match Client::connect(format!("http://{addr}")).await {
        Ok(client) => client.execute(txn()).await.err(),
        Err(e) => Some(e),
    };
    assert!(plain.is_some(), "a plain-text client must fail");
    // TLS without a client certificate is refused (mutual TLS).
    let anonymous = match Client::connect_with(
        format!("https://{addr}"),
        ConnectOptions::new().tls(client_tls(&ca, None)?),
    )
    .await
    {
        Ok(client) => client.execute(txn()).await.err(),
        Err(e) => Some(e),
    };
    assert!(
        anonymous.is_some(),
        "a client without a certificate must fail"
    );

    let client = Client::connect_with(
        format!("https://{addr}"),
        ConnectOptions::new().tls(client_tls(&ca, Some("payments"))?),
    )
    .await?;
    let done = client.execute(txn()).await?;
    assert!(done.is_committed(), "{}", done.reason);
    assert_eq!(recorder.calls(&done.txn_id), ["prepare", "commit"]);
    Ok(())
}

#[tokio::test]
async fn https_participants_need_a_participant_ca() -> anyhow::Result<()> {
    let coordinator = TestCoordinator::start().await?;
    let refused = coordinator
        .client
        .execute(Execute::two_phase().branch(Branch::new("https://127.0.0.1:9", "r1")))
        .await
        .err();
    assert!(
        matches!(&refused, Some(ClientError::InvalidArgument(m)) if m.contains("participant-tls-ca")),
        "{refused:?}"
    );
    Ok(())
}

#[tokio::test]
async fn the_initiators_trace_reaches_every_participant_call() -> anyhow::Result<()> {
    let coordinator = TestCoordinator::start().await?;
    let (participant, recorder) = recorder_participant().await?;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let done = coordinator
        .client
        .execute(
            Execute::two_phase()
                .branch(Branch::new(participant.endpoint(), "r1"))
                .branch(Branch::new(participant.endpoint(), "r2"))
                .traceparent(format!("00-{trace}-00f067aa0ba902b7-01")),
        )
        .await?;
    assert!(done.is_committed());
    let seen: Vec<_> = recorder
        .seen()
        .into_iter()
        .filter(|s| s.txn_id == done.txn_id)
        .collect();
    assert_eq!(seen.len(), 4);
    for call in &seen {
        let tp = call.traceparent.as_deref().unwrap_or_default();
        assert!(tp.starts_with(&format!("00-{trace}-")), "{call:?}");
        assert!(
            !tp.contains("00f067aa0ba902b7"),
            "each call gets its own span id"
        );
    }

    // Without one, the transaction still gets a trace shared by its calls.
    let done = coordinator
        .client
        .execute(
            Execute::two_phase()
                .branch(Branch::new(participant.endpoint(), "r1"))
                .branch(Branch::new(participant.endpoint(), "r2")),
        )
        .await?;
    let traces: std::collections::HashSet<String> = recorder
        .seen()
        .into_iter()
        .filter(|s| s.txn_id == done.txn_id)
        .filter_map(|s| {
            s.traceparent
                .and_then(|t| t.split('-').nth(1).map(str::to_string))
        })
        .collect();
    assert_eq!(traces.len(), 1, "{traces:?}");
    Ok(())
}
