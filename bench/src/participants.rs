//! The participants the bench serves from its own process: real SDK
//! participants (2PC, TCC and saga) doing a tiny in-memory state change,
//! counting every call, and able to pause phase 2 (for the recovery
//! benchmark).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use arbiter_sdk::{
    CallContext, ParticipantError, ParticipantServer, RunningParticipant, SagaHandler, StepOutcome,
    TccHandler, TwoPhaseHandler, Vote,
};

pub const RESOURCE: &str = "bench";

#[derive(Default)]
pub struct Counter {
    /// The "state": sum of applied amounts.
    pub balance: AtomicI64,
    /// Every call received.
    pub calls: AtomicU64,
    /// While set, phase 2 answers UNAVAILABLE.
    pub paused: AtomicBool,
}

impl Counter {
    fn vote(&self, payload: &[u8]) -> Result<Vote, ParticipantError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if payload.starts_with(b"no") {
            return Ok(Vote::No("bench abort".into()));
        }
        if payload.starts_with(b"ro") {
            return Ok(Vote::ReadOnly);
        }
        Ok(Vote::Yes)
    }

    fn finish(&self, delta: i64) -> Result<(), ParticipantError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if self.paused.load(Ordering::Relaxed) {
            return Err(ParticipantError::Unavailable(
                "paused by the benchmark".into(),
            ));
        }
        self.balance.fetch_add(delta, Ordering::Relaxed);
        Ok(())
    }
}

impl TwoPhaseHandler for Counter {
    async fn prepare(&self, _: &CallContext, payload: &[u8]) -> Result<Vote, ParticipantError> {
        self.vote(payload)
    }
    async fn commit(&self, _: &CallContext, _: &[u8]) -> Result<(), ParticipantError> {
        self.finish(1)
    }
    async fn rollback(&self, _: &CallContext, _: &[u8]) -> Result<(), ParticipantError> {
        self.finish(0)
    }
}

impl TccHandler for Counter {
    async fn try_(&self, _: &CallContext, payload: &[u8]) -> Result<Vote, ParticipantError> {
        self.vote(payload)
    }
    async fn confirm(&self, _: &CallContext, _: &[u8]) -> Result<(), ParticipantError> {
        self.finish(1)
    }
    async fn cancel(&self, _: &CallContext, _: &[u8]) -> Result<(), ParticipantError> {
        self.finish(0)
    }
}

impl SagaHandler for Counter {
    async fn action(
        &self,
        _: &CallContext,
        payload: &[u8],
    ) -> Result<StepOutcome, ParticipantError> {
        Ok(match self.vote(payload)? {
            Vote::No(reason) => StepOutcome::Failed(reason),
            _ => {
                self.balance.fetch_add(1, Ordering::Relaxed);
                StepOutcome::Succeeded
            }
        })
    }
    async fn compensate(&self, _: &CallContext, _: &[u8]) -> Result<(), ParticipantError> {
        self.finish(-1)
    }
}

/// One counter served over HTTP/JSON (README, "Participants over HTTP"):
/// phase 1 votes as the gRPC one does (the payload's marker, read from its
/// base64), phase 2 acknowledges.
async fn serve_http(
    counter: Arc<Counter>,
) -> anyhow::Result<(String, tokio::task::JoinHandle<()>)> {
    use axum::extract::{Path, State};
    async fn call(
        State(counter): State<Arc<Counter>>,
        Path(call): Path<String>,
        body: axum::body::Bytes,
    ) -> (axum::http::StatusCode, String) {
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let payload = body["payload"].as_str().unwrap_or("");
        // "no" and "ro" in base64.
        let marker: &[u8] = if payload.starts_with("bm8") {
            b"no"
        } else if payload.starts_with("cm8") {
            b"ro"
        } else {
            b"+1"
        };
        let unavailable = (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "{}".to_string(),
        );
        let answer = match call.as_str() {
            "prepare" | "try" | "action" => match counter.vote(marker) {
                Ok(Vote::No(_)) => r#"{"vote":"no","reason":"bench abort"}"#,
                Ok(Vote::ReadOnly) => r#"{"vote":"read_only"}"#,
                _ => r#"{"vote":"yes"}"#,
            },
            "commit" | "confirm" => match counter.finish(1) {
                Ok(()) => "{}",
                Err(_) => return unavailable,
            },
            _ => match counter.finish(0) {
                Ok(()) => "{}",
                Err(_) => return unavailable,
            },
        };
        (axum::http::StatusCode::OK, answer.to_string())
    }
    let app = axum::Router::new()
        .route("/{call}", axum::routing::post(call))
        .with_state(counter);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((format!("http://{addr}"), task))
}

pub struct Participants {
    pub counters: Vec<Arc<Counter>>,
    pub servers: Vec<RunningParticipant>,
    /// The same counters over HTTP/JSON: base URLs, and their servers.
    pub http: Vec<(String, tokio::task::JoinHandle<()>)>,
}

impl Participants {
    pub async fn start(n: usize) -> anyhow::Result<Participants> {
        let mut counters = Vec::new();
        let mut servers = Vec::new();
        let mut http = Vec::new();
        for _ in 0..n.max(1) {
            let counter = Arc::new(Counter::default());
            let server = ParticipantServer::new()
                .two_phase(RESOURCE, counter.clone())
                .tcc(RESOURCE, counter.clone())
                .saga(RESOURCE, counter.clone())
                .serve("127.0.0.1:0".parse()?)
                .await?;
            http.push(serve_http(counter.clone()).await?);
            counters.push(counter);
            servers.push(server);
        }
        Ok(Participants {
            counters,
            servers,
            http,
        })
    }

    /// The HTTP/JSON base URLs of the same participants.
    pub fn http_endpoints(&self) -> Vec<String> {
        self.http.iter().map(|(url, _)| url.clone()).collect()
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.servers
            .iter()
            .map(RunningParticipant::endpoint)
            .collect()
    }

    pub fn calls(&self) -> u64 {
        self.counters
            .iter()
            .map(|c| c.calls.load(Ordering::Relaxed))
            .sum()
    }

    pub fn pause(&self, paused: bool) {
        for c in &self.counters {
            c.paused.store(paused, Ordering::Relaxed);
        }
    }
}
