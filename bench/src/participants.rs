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

pub struct Participants {
    pub counters: Vec<Arc<Counter>>,
    pub servers: Vec<RunningParticipant>,
}

impl Participants {
    pub async fn start(n: usize) -> anyhow::Result<Participants> {
        let mut counters = Vec::new();
        let mut servers = Vec::new();
        for _ in 0..n.max(1) {
            let counter = Arc::new(Counter::default());
            let server = ParticipantServer::new()
                .two_phase(RESOURCE, counter.clone())
                .tcc(RESOURCE, counter.clone())
                .saga(RESOURCE, counter.clone())
                .serve("127.0.0.1:0".parse()?)
                .await?;
            counters.push(counter);
            servers.push(server);
        }
        Ok(Participants { counters, servers })
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
