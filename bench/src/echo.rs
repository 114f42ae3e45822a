//! The gRPC ceiling: an echo server (a participant whose prepare answers YES
//! at once) in its own process, loaded exactly like the coordinator.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arbiter_proto::v1 as pb;
use arbiter_proto::v1::two_phase_participant_client::TwoPhaseParticipantClient;
use arbiter_sdk::ParticipantServer;
use tonic::transport::Endpoint;

use crate::participants::{Counter, RESOURCE};

/// Serves until killed.
pub async fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    ParticipantServer::new()
        .two_phase(RESOURCE, Arc::new(Counter::default()))
        .serve_with_listener(listener, std::future::pending())
        .await?;
    Ok(())
}

/// Unary RPCs per second against `endpoint` with `concurrency` in flight.
pub async fn measure(
    endpoint: &str,
    concurrency: usize,
    connections: usize,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<f64> {
    let mut channels = Vec::new();
    for _ in 0..connections.max(1) {
        channels.push(
            Endpoint::from_shared(endpoint.to_string())?
                .tcp_nodelay(true)
                .connect()
                .await?,
        );
    }
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let mut tasks = Vec::new();
    for i in 0..concurrency.max(1) {
        let mut client = TwoPhaseParticipantClient::new(channels[i % channels.len()].clone());
        tasks.push(tokio::spawn(async move {
            let mut counted = 0u64;
            loop {
                let now = Instant::now();
                if now >= end {
                    return counted;
                }
                let call = pb::BranchCall {
                    txn_id: "01a2000000000000000000000".into(),
                    branch_id: "1".into(),
                    resource: RESOURCE.into(),
                    payload: b"echo".to_vec(),
                    attempt: 1,
                };
                if client.prepare(call).await.is_ok() && now >= measure_from {
                    counted += 1;
                }
            }
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await?;
    }
    Ok(total as f64 / duration.as_secs_f64())
}
