//! Calls to participants: one reused gRPC channel per endpoint, and the mapping
//! of answers onto what the engine understands (DESIGN.md, "Participant call
//! semantics").
//!
//! Channels are keyed by the normalised endpoint (`driver::validate`), at
//! most `max_participant_channels` are kept (the least recently used goes to
//! make room), and one unused for the idle timeout is closed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use arbiter_proto::v1::tcc_participant_client::TccParticipantClient;
use arbiter_proto::v1::two_phase_participant_client::TwoPhaseParticipantClient;
use arbiter_proto::v1::{BranchCall, Vote, VoteKind};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

use crate::driver::validate;
use crate::engine::{CallKind, Mode, VoteResult};

/// Everything needed to make one call, copied out of the transaction.
#[derive(Clone, Debug)]
pub struct CallSpec {
    pub txn_id: String,
    pub mode: Mode,
    pub branch: usize,
    pub branch_id: String,
    pub participant: String,
    pub resource: String,
    pub payload: Vec<u8>,
    pub timeout: Duration,
    pub call: CallKind,
    pub attempt: u32,
    /// W3C trace context sent with the call.
    pub traceparent: String,
}

/// What came back from a phase-2 call.
pub type Phase2Result = Result<(), String>;

pub struct Participants {
    channels: RwLock<HashMap<String, Cached>>,
    /// For `https://` endpoints.
    tls: Option<ClientTlsConfig>,
    max_channels: usize,
    idle: Duration,
    /// What "now" is measured from for `Cached::last_used`.
    epoch: Instant,
}

/// One cached channel and when it was last handed out (ms since `epoch`).
struct Cached {
    channel: Channel,
    last_used: Arc<AtomicU64>,
}

impl Participants {
    pub fn new(tls: Option<ClientTlsConfig>, max_channels: usize, idle: Duration) -> Participants {
        Participants {
            channels: RwLock::default(),
            tls,
            max_channels: max_channels.max(1),
            idle,
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Channels held now.
    pub fn channel_count(&self) -> usize {
        self.channels
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Closes the channels unused for the idle timeout; returns how many.
    pub fn evict_idle(&self) -> usize {
        let cutoff = self.now_ms().saturating_sub(self.idle.as_millis() as u64);
        let mut channels = self.channels.write().unwrap_or_else(|p| p.into_inner());
        let before = channels.len();
        channels.retain(|_, cached| cached.last_used.load(Ordering::Relaxed) >= cutoff);
        before - channels.len()
    }

    /// The shared channel to `endpoint`, created (lazily connecting) on first use.
    fn channel(&self, endpoint: &str) -> Result<Channel, String> {
        if let Some(cached) = self
            .channels
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(endpoint)
        {
            cached.last_used.store(self.now_ms(), Ordering::Relaxed);
            return Ok(cached.channel.clone());
        }
        let mut builder = Endpoint::from_shared(endpoint.to_string())
            .map_err(|e| format!("bad participant endpoint {endpoint:?}: {e}"))?;
        if let (true, Some(tls)) = (endpoint.starts_with("https://"), &self.tls) {
            builder = builder
                .tls_config(tls.clone())
                .map_err(|e| format!("TLS for participant {endpoint:?}: {e}"))?;
        }
        let channel = builder
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(false)
            .connect_lazy();
        let now = self.now_ms();
        let mut channels = self.channels.write().unwrap_or_else(|p| p.into_inner());
        if !channels.contains_key(endpoint) && channels.len() >= self.max_channels {
            // Full: make room by closing the least recently used channel
            // (calls in flight on it keep their clone until they end).
            let oldest = channels
                .iter()
                .min_by_key(|(_, cached)| cached.last_used.load(Ordering::Relaxed))
                .map(|(key, _)| key.clone());
            if let Some(oldest) = oldest {
                channels.remove(&oldest);
            }
        }
        let cached = channels.entry(endpoint.to_string()).or_insert(Cached {
            channel,
            last_used: Arc::new(AtomicU64::new(now)),
        });
        cached.last_used.store(now, Ordering::Relaxed);
        Ok(cached.channel.clone())
    }

    fn request(spec: &CallSpec) -> tonic::Request<BranchCall> {
        let mut request = tonic::Request::new(BranchCall {
            txn_id: spec.txn_id.clone(),
            branch_id: spec.branch_id.clone(),
            resource: spec.resource.clone(),
            payload: spec.payload.clone(),
            attempt: spec.attempt,
        });
        request.set_timeout(spec.timeout);
        if let Ok(value) = spec.traceparent.parse() {
            request.metadata_mut().insert("traceparent", value);
        }
        request
    }

    /// Prepare / try.
    pub async fn prepare(&self, spec: &CallSpec) -> VoteResult {
        let channel = match self.channel(&spec.participant) {
            Ok(c) => c,
            Err(e) => return VoteResult::No(e),
        };
        let request = Self::request(spec);
        let call = async {
            match spec.mode {
                Mode::TwoPhase => {
                    TwoPhaseParticipantClient::new(channel)
                        .prepare(request)
                        .await
                }
                Mode::Tcc => TccParticipantClient::new(channel).r#try(request).await,
            }
        };
        let rpc = CallKind::Prepare.rpc_name(spec.mode);
        let started = std::time::Instant::now();
        let answer = tokio::time::timeout(spec.timeout, call).await;
        record(spec, &answer, started);
        match answer {
            Ok(Ok(response)) => vote_result(response.into_inner()),
            Ok(Err(status)) => status_vote(rpc, &status),
            Err(_) => VoteResult::Transient(format!(
                "{rpc} timed out after {} ms",
                spec.timeout.as_millis()
            )),
        }
    }

    /// Commit / confirm or rollback / cancel.
    pub async fn finish(&self, spec: &CallSpec) -> Phase2Result {
        let channel = self.channel(&spec.participant)?;
        let request = Self::request(spec);
        let call = async {
            match (spec.mode, spec.call) {
                (Mode::TwoPhase, CallKind::Commit) => {
                    TwoPhaseParticipantClient::new(channel)
                        .commit(request)
                        .await
                }
                (Mode::TwoPhase, _) => {
                    TwoPhaseParticipantClient::new(channel)
                        .rollback(request)
                        .await
                }
                (Mode::Tcc, CallKind::Commit) => {
                    TccParticipantClient::new(channel).confirm(request).await
                }
                (Mode::Tcc, _) => TccParticipantClient::new(channel).cancel(request).await,
            }
        };
        let rpc = spec.call.rpc_name(spec.mode);
        let started = std::time::Instant::now();
        let answer = tokio::time::timeout(spec.timeout, call).await;
        record(spec, &answer, started);
        match answer {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(status)) => Err(describe_status(rpc, &status)),
            Err(_) => Err(format!(
                "{rpc} timed out after {} ms",
                spec.timeout.as_millis()
            )),
        }
    }
}

/// Counts a call by its result code.
fn record<T>(
    spec: &CallSpec,
    answer: &Result<Result<T, Status>, tokio::time::error::Elapsed>,
    started: std::time::Instant,
) {
    let code = match answer {
        Ok(Ok(_)) => "OK",
        Ok(Err(status)) => crate::metrics::code_name(status.code()),
        Err(_) => "TIMEOUT",
    };
    crate::metrics::branch_call(spec.call.rpc_name(spec.mode), code, started.elapsed());
}

fn vote_result(vote: Vote) -> VoteResult {
    match VoteKind::try_from(vote.vote) {
        Ok(VoteKind::VoteYes) => VoteResult::Yes,
        Ok(VoteKind::VoteReadOnly) => VoteResult::ReadOnly,
        Ok(VoteKind::VoteNo) if vote.reason.is_empty() => VoteResult::No("no reason given".into()),
        Ok(VoteKind::VoteNo) => VoteResult::No(validate::truncated(vote.reason)),
        // A participant that answers without a vote has not agreed to commit.
        Ok(VoteKind::VoteUnspecified) | Err(_) => VoteResult::No(format!(
            "participant answered without a vote ({})",
            vote.vote
        )),
    }
}

fn status_vote(rpc: &str, status: &Status) -> VoteResult {
    match status.code() {
        Code::Aborted | Code::FailedPrecondition | Code::InvalidArgument => {
            VoteResult::No(describe_status(rpc, status))
        }
        _ => VoteResult::Transient(describe_status(rpc, status)),
    }
}

fn describe_status(rpc: &str, status: &Status) -> String {
    if status.message().is_empty() {
        format!("{rpc} failed with {:?}", status.code())
    } else {
        let message = validate::truncated(status.message().to_string());
        format!("{rpc} failed with {:?}: {message}", status.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_channel_cache_is_bounded_and_drops_idle_channels() {
        let participants = Participants::new(None, 2, Duration::from_millis(50));
        for port in [7001, 7002, 7001, 7003] {
            assert!(
                participants
                    .channel(&format!("http://127.0.0.1:{port}"))
                    .is_ok()
            );
            // Uses a few ms apart, so "least recently used" is one channel.
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(participants.channel_count(), 2, "at most the cap");
        let kept: Vec<String> = participants
            .channels
            .read()
            .map(|c| c.keys().cloned().collect())
            .unwrap_or_default();
        assert!(
            kept.contains(&"http://127.0.0.1:7003".to_string())
                && kept.contains(&"http://127.0.0.1:7001".to_string()),
            "the least recently used (7002) went: {kept:?}"
        );
        std::thread::sleep(Duration::from_millis(120));
        assert!(participants.channel("http://127.0.0.1:7003").is_ok());
        assert_eq!(
            participants.evict_idle(),
            1,
            "7001 was idle past the timeout"
        );
        assert_eq!(participants.channel_count(), 1);
    }

    #[test]
    fn answers_map_as_the_design_table_says() {
        let vote = |kind: VoteKind, reason: &str| Vote {
            vote: kind as i32,
            reason: reason.into(),
        };
        assert_eq!(vote_result(vote(VoteKind::VoteYes, "")), VoteResult::Yes);
        assert_eq!(
            vote_result(vote(VoteKind::VoteReadOnly, "")),
            VoteResult::ReadOnly
        );
        assert_eq!(
            vote_result(vote(VoteKind::VoteNo, "insufficient funds")),
            VoteResult::No("insufficient funds".into())
        );
        assert!(matches!(
            vote_result(vote(VoteKind::VoteUnspecified, "")),
            VoteResult::No(_)
        ));
        for code in [
            Code::Aborted,
            Code::FailedPrecondition,
            Code::InvalidArgument,
        ] {
            assert!(matches!(
                status_vote("prepare", &Status::new(code, "x")),
                VoteResult::No(_)
            ));
        }
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::Internal,
            Code::Unknown,
        ] {
            assert!(matches!(
                status_vote("try", &Status::new(code, "x")),
                VoteResult::Transient(_)
            ));
        }
    }
}
