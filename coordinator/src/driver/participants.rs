//! Calls to participants: one reused gRPC channel per endpoint, and the mapping
//! of answers onto what the engine understands (DESIGN.md, "Participant call
//! semantics").
//!
//! Channels are keyed by the normalised endpoint (`driver::validate`), at
//! most `max_participant_channels` are kept (the least recently used goes to
//! make room), and one unused for the idle timeout is closed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use arbiter_proto::v1 as pb;
use arbiter_proto::v1::saga_participant_client::SagaParticipantClient;
use arbiter_proto::v1::tcc_participant_client::TccParticipantClient;
use arbiter_proto::v1::two_phase_participant_client::TwoPhaseParticipantClient;
use arbiter_proto::v1::{BranchCall, StepOutcome, Vote, VoteKind};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

use crate::driver::http::{self, HttpCaller};
use crate::driver::validate;
use crate::engine::{CallKind, MAX_RESULT, Mode, Protocol, VoteResult};

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
    pub protocol: Protocol,
    /// HTTP/JSON only: send the payload as JSON too.
    pub json_payload: bool,
}

/// What came back from a phase-2 call.
/// A phase-2 answer: OK with the participant's result (maybe empty), or why
/// the call failed.
pub type Phase2Result = Result<Vec<u8>, String>;

/// A phase-1 answer: the vote, and the result sent with a YES.
pub type Phase1Result = (VoteResult, Vec<u8>);

pub struct Participants {
    channels: RwLock<HashMap<String, Cached>>,
    /// For `https://` endpoints.
    tls: Option<ClientTlsConfig>,
    max_channels: usize,
    idle: Duration,
    /// What "now" is measured from for `Cached::last_used`.
    epoch: Instant,
    /// HTTP/JSON participants.
    pub http: HttpCaller,
}

/// One cached channel, when it was last handed out (ms since `epoch`), and
/// how many calls on it are running.
struct Cached {
    channel: Channel,
    last_used: Arc<AtomicU64>,
    in_flight: Arc<AtomicUsize>,
}

/// A channel lent to one call; counts as in flight until dropped, so that a
/// busy channel is never closed to make room (its socket would live on
/// outside the cap).
struct Lent {
    channel: Channel,
    in_flight: Arc<AtomicUsize>,
}

impl Drop for Lent {
    fn drop(&mut self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why no channel could be had.
enum NoChannel {
    /// The endpoint itself is unusable: a NO vote.
    Bad(String),
    /// Every channel is busy: try again later.
    Busy(String),
}

impl Cached {
    fn lend(&self, now_ms: u64) -> Lent {
        self.last_used.store(now_ms, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Lent {
            channel: self.channel.clone(),
            in_flight: self.in_flight.clone(),
        }
    }

    fn idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }
}

impl Participants {
    pub fn new(
        tls: Option<ClientTlsConfig>,
        http_tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
        max_channels: usize,
        idle: Duration,
    ) -> Participants {
        Participants {
            channels: RwLock::default(),
            tls,
            max_channels: max_channels.max(1),
            idle,
            epoch: Instant::now(),
            http: HttpCaller::new(http_tls),
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
        self.evict_idle_at(self.now_ms())
    }

    fn evict_idle_at(&self, now_ms: u64) -> usize {
        let cutoff = now_ms.saturating_sub(self.idle.as_millis() as u64);
        let mut channels = self.channels.write().unwrap_or_else(|p| p.into_inner());
        let before = channels.len();
        channels.retain(|_, cached| {
            !cached.idle() || cached.last_used.load(Ordering::Relaxed) >= cutoff
        });
        before - channels.len()
    }

    /// The shared channel to `endpoint`, created (lazily connecting) on
    /// first use, lent to one call.
    fn channel(&self, endpoint: &str) -> Result<Lent, NoChannel> {
        if let Some(cached) = self
            .channels
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(endpoint)
        {
            return Ok(cached.lend(self.now_ms()));
        }
        let mut builder = Endpoint::from_shared(endpoint.to_string())
            .map_err(|e| NoChannel::Bad(format!("bad participant endpoint {endpoint:?}: {e}")))?;
        if let (true, Some(tls)) = (endpoint.starts_with("https://"), &self.tls) {
            builder = builder
                .tls_config(tls.clone())
                .map_err(|e| NoChannel::Bad(format!("TLS for participant {endpoint:?}: {e}")))?;
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
            // that no call is using.
            let oldest = channels
                .iter()
                .filter(|(_, cached)| cached.idle())
                .min_by_key(|(_, cached)| cached.last_used.load(Ordering::Relaxed))
                .map(|(key, _)| key.clone());
            match oldest {
                Some(oldest) => {
                    channels.remove(&oldest);
                }
                None => {
                    return Err(NoChannel::Busy(format!(
                        "all {} participant channels are busy; the call will be retried",
                        self.max_channels
                    )));
                }
            }
        }
        let cached = channels.entry(endpoint.to_string()).or_insert(Cached {
            channel,
            last_used: Arc::new(AtomicU64::new(now)),
            in_flight: Arc::new(AtomicUsize::new(0)),
        });
        Ok(cached.lend(now))
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

    /// Prepare / try / a saga's action.
    pub async fn prepare(&self, spec: &CallSpec) -> Phase1Result {
        if spec.protocol == Protocol::HttpJson {
            let started = std::time::Instant::now();
            let answer = self.http.call(spec).await;
            record_http(spec, &answer, started);
            return http::phase1(CallKind::Prepare.rpc_name(spec.mode), answer);
        }
        let lent = match self.channel(&spec.participant) {
            Ok(lent) => lent,
            Err(NoChannel::Bad(e)) => return (VoteResult::No(e), Vec::new()),
            Err(NoChannel::Busy(e)) => return (VoteResult::Transient(e), Vec::new()),
        };
        let channel = lent.channel.clone();
        let request = Self::request(spec);
        let call = async {
            match spec.mode {
                Mode::TwoPhase => TwoPhaseParticipantClient::new(channel)
                    .prepare(request)
                    .await
                    .map(|r| vote_result(r.into_inner())),
                Mode::Tcc => TccParticipantClient::new(channel)
                    .r#try(request)
                    .await
                    .map(|r| vote_result(r.into_inner())),
                Mode::Saga => SagaParticipantClient::new(channel)
                    .action(request)
                    .await
                    .map(|r| step_vote(r.into_inner())),
            }
        };
        let rpc = CallKind::Prepare.rpc_name(spec.mode);
        let started = std::time::Instant::now();
        let answer = tokio::time::timeout(spec.timeout, call).await;
        record(spec, &answer, started);
        match answer {
            Ok(Ok(voted)) => voted,
            Ok(Err(status)) => (status_vote(rpc, &status), Vec::new()),
            Err(_) => (
                VoteResult::Transient(format!(
                    "{rpc} timed out after {} ms",
                    spec.timeout.as_millis()
                )),
                Vec::new(),
            ),
        }
    }

    /// Commit / confirm or rollback / cancel (a saga: a must-succeed step's
    /// action, or a compensation).
    pub async fn finish(&self, spec: &CallSpec) -> Phase2Result {
        if spec.protocol == Protocol::HttpJson {
            let started = std::time::Instant::now();
            let answer = self.http.call(spec).await;
            record_http(spec, &answer, started);
            let must_succeed = spec.mode == Mode::Saga && spec.call != CallKind::Rollback;
            let rpc = spec.call.rpc_name(spec.mode);
            return http::phase2(rpc, answer, must_succeed).map(|mut result| {
                if result.len() > MAX_RESULT {
                    result.clear(); // the ack counts; the result cannot travel
                }
                result
            });
        }
        let lent = self.channel(&spec.participant).map_err(|e| match e {
            NoChannel::Bad(e) | NoChannel::Busy(e) => e,
        })?;
        let channel = lent.channel.clone();
        let request = Self::request(spec);
        let call = async {
            let ack = |r: tonic::Response<pb::Ack>| Ok(r.into_inner().result);
            match (spec.mode, spec.call) {
                (Mode::TwoPhase, CallKind::Commit) => TwoPhaseParticipantClient::new(channel)
                    .commit(request)
                    .await
                    .map(ack),
                (Mode::TwoPhase, _) => TwoPhaseParticipantClient::new(channel)
                    .rollback(request)
                    .await
                    .map(ack),
                (Mode::Tcc, CallKind::Commit) => TccParticipantClient::new(channel)
                    .confirm(request)
                    .await
                    .map(ack),
                (Mode::Tcc, _) => TccParticipantClient::new(channel)
                    .cancel(request)
                    .await
                    .map(ack),
                // A must-succeed step: its action, until it succeeds.
                (Mode::Saga, CallKind::Commit | CallKind::Prepare) => {
                    SagaParticipantClient::new(channel)
                        .action(request)
                        .await
                        .map(|r| step_done(r.into_inner()))
                }
                (Mode::Saga, CallKind::Rollback) => SagaParticipantClient::new(channel)
                    .compensate(request)
                    .await
                    .map(ack),
            }
        };
        let rpc = spec.call.rpc_name(spec.mode);
        let started = std::time::Instant::now();
        let answer = tokio::time::timeout(spec.timeout, call).await;
        record(spec, &answer, started);
        match answer {
            Ok(Ok(Ok(result))) => {
                if result.len() > MAX_RESULT {
                    // The call still counts: the work is done.
                    tracing::warn!(txn = %spec.txn_id, branch = %spec.branch_id, bytes = result.len(),
                        "a participant acknowledged with a result over {MAX_RESULT} bytes; result dropped");
                    return Ok(Vec::new());
                }
                Ok(result)
            }
            Ok(Ok(Err(why))) => Err(why),
            Ok(Err(status)) => Err(describe_status(rpc, &status)),
            Err(_) => Err(format!(
                "{rpc} timed out after {} ms",
                spec.timeout.as_millis()
            )),
        }
    }
}

/// A saga step's answer to its action, as a vote: succeeded = YES, failed
/// = a definitive NO, retry = transient.
fn step_vote(answer: pb::StepResult) -> Phase1Result {
    match StepOutcome::try_from(answer.outcome) {
        Ok(StepOutcome::StepSucceeded) if answer.result.len() > MAX_RESULT => {
            let why = format!(
                "succeeded with a result of {} bytes, over the {MAX_RESULT}-byte limit",
                answer.result.len()
            );
            (VoteResult::No(why), Vec::new())
        }
        Ok(StepOutcome::StepSucceeded) => (VoteResult::Yes, answer.result),
        Ok(StepOutcome::StepFailed) if answer.reason.is_empty() => {
            (VoteResult::No("failed, no reason given".into()), Vec::new())
        }
        Ok(StepOutcome::StepFailed) => (
            VoteResult::No(validate::truncated(answer.reason)),
            Vec::new(),
        ),
        Ok(StepOutcome::StepRetry) => (
            VoteResult::Transient(format!(
                "action asked to retry: {}",
                validate::truncated(answer.reason)
            )),
            Vec::new(),
        ),
        // Not a success: the step has not happened.
        Ok(StepOutcome::Unspecified) | Err(_) => (
            VoteResult::No(format!(
                "participant answered the action without an outcome ({})",
                answer.outcome
            )),
            Vec::new(),
        ),
    }
}

/// A must-succeed step's answer to its action: done, or why it is retried.
/// A success with an oversized result still counts (the result is dropped
/// by the caller, as for an ack).
fn step_done(answer: pb::StepResult) -> Result<Vec<u8>, String> {
    if answer.outcome == StepOutcome::StepSucceeded as i32 {
        return Ok(answer.result);
    }
    match step_vote(answer) {
        (VoteResult::Yes, result) => Ok(result),
        (VoteResult::No(why) | VoteResult::Transient(why), _) => Err(format!(
            "a must-succeed step's action did not succeed (retried): {why}"
        )),
        (VoteResult::ReadOnly, _) => Ok(Vec::new()),
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

/// Counts an HTTP call by its answer (`HTTP_503`, `FAILED`).
fn record_http(spec: &CallSpec, answer: &http::Answer, started: std::time::Instant) {
    let code = match answer {
        http::Answer::Ok(_) => "OK".to_string(),
        // The participant picks the status: common ones by name, the rest
        // by class, so the label stays low-cardinality.
        http::Answer::Status { code, .. } => match code {
            400 | 401 | 403 | 404 | 405 | 408 | 409 | 410 | 413 | 422 | 425 | 429 | 500 | 501
            | 502 | 503 | 504 => format!("HTTP_{code}"),
            _ => format!("HTTP_{}xx", code / 100),
        },
        http::Answer::Failed(_) => "FAILED".to_string(),
    };
    crate::metrics::branch_call_http(spec.call.rpc_name(spec.mode), code, started.elapsed());
}

fn vote_result(vote: Vote) -> Phase1Result {
    if vote.vote == VoteKind::VoteYes as i32 {
        if vote.result.len() > MAX_RESULT {
            let why = format!(
                "voted YES with a result of {} bytes, over the {MAX_RESULT}-byte limit",
                vote.result.len()
            );
            return (VoteResult::No(why), Vec::new());
        }
        return (VoteResult::Yes, vote.result);
    }
    let result = match VoteKind::try_from(vote.vote) {
        Ok(VoteKind::VoteYes) => VoteResult::Yes,
        Ok(VoteKind::VoteReadOnly) => VoteResult::ReadOnly,
        Ok(VoteKind::VoteNo) if vote.reason.is_empty() => VoteResult::No("no reason given".into()),
        Ok(VoteKind::VoteNo) => VoteResult::No(validate::truncated(vote.reason)),
        // A participant that answers without a vote has not agreed to commit.
        Ok(VoteKind::VoteUnspecified) | Err(_) => VoteResult::No(format!(
            "participant answered without a vote ({})",
            vote.vote
        )),
    };
    (result, Vec::new())
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
    async fn the_channel_cache_is_bounded_and_spares_busy_channels() {
        let participants = Participants::new(None, None, 2, Duration::from_secs(60));
        let endpoint = |port: u16| format!("http://127.0.0.1:{port}");
        let used_at = |port: u16, ms: u64| {
            if let Some(cached) = participants
                .channels
                .read()
                .ok()
                .as_ref()
                .and_then(|c| c.get(&endpoint(port)))
            {
                cached.last_used.store(ms, Ordering::Relaxed);
            }
        };
        let held = participants.channel(&endpoint(7001)).ok();
        drop(participants.channel(&endpoint(7002)));
        used_at(7001, 1);
        used_at(7002, 2);
        // Full: 7001 is the least recently used but busy, so 7002 goes.
        drop(participants.channel(&endpoint(7003)));
        let kept = |port| {
            participants
                .channels
                .read()
                .map(|c| c.contains_key(&endpoint(port)))
                .unwrap_or(false)
        };
        assert!(kept(7001) && kept(7003) && !kept(7002));
        assert_eq!(participants.channel_count(), 2, "at most the cap");
        // Both busy: no room, and the call is told to retry.
        let also_held = participants.channel(&endpoint(7003)).ok();
        assert!(matches!(
            participants.channel(&endpoint(7004)),
            Err(NoChannel::Busy(_))
        ));
        drop((held, also_held));
        // Idle past the timeout: closed by the sweep; a busy one never is.
        let busy = participants.channel(&endpoint(7003)).ok();
        used_at(7001, 0);
        used_at(7003, 0);
        let later = participants.now_ms() + 61_000;
        assert_eq!(participants.evict_idle_at(later), 1);
        assert!(kept(7003) && !kept(7001));
        drop(busy);
        assert_eq!(participants.evict_idle_at(later), 1);
        assert_eq!(participants.channel_count(), 0);
    }

    #[test]
    fn answers_map_as_the_design_table_says() {
        let vote = |kind: VoteKind, reason: &str| Vote {
            vote: kind as i32,
            reason: reason.into(),
            result: Vec::new(),
        };
        assert_eq!(vote_result(vote(VoteKind::VoteYes, "")).0, VoteResult::Yes);
        assert_eq!(
            vote_result(vote(VoteKind::VoteReadOnly, "")).0,
            VoteResult::ReadOnly
        );
        assert_eq!(
            vote_result(vote(VoteKind::VoteNo, "insufficient funds")).0,
            VoteResult::No("insufficient funds".into())
        );
        assert!(matches!(
            vote_result(vote(VoteKind::VoteUnspecified, "")).0,
            VoteResult::No(_)
        ));
        // A result rides with YES, up to the limit; a larger one is a NO.
        let with = |bytes: usize| Vote {
            result: vec![7; bytes],
            ..vote(VoteKind::VoteYes, "")
        };
        assert_eq!(
            vote_result(with(MAX_RESULT)),
            (VoteResult::Yes, vec![7; MAX_RESULT])
        );
        assert!(matches!(
            vote_result(with(MAX_RESULT + 1)),
            (VoteResult::No(_), ref r) if r.is_empty()
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
