//! Calls to participants: one reused gRPC channel per endpoint, and the mapping
//! of answers onto what the engine understands (DESIGN.md, "Participant call
//! semantics").

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

use arbiter_proto::v1::tcc_participant_client::TccParticipantClient;
use arbiter_proto::v1::two_phase_participant_client::TwoPhaseParticipantClient;
use arbiter_proto::v1::{BranchCall, Vote, VoteKind};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

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
    channels: RwLock<HashMap<String, Channel>>,
    /// For `https://` endpoints.
    tls: Option<ClientTlsConfig>,
}

impl Participants {
    pub fn new(tls: Option<ClientTlsConfig>) -> Participants {
        Participants {
            channels: RwLock::default(),
            tls,
        }
    }

    /// The shared channel to `endpoint`, created (lazily connecting) on first use.
    fn channel(&self, endpoint: &str) -> Result<Channel, String> {
        if let Some(channel) = self
            .channels
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(endpoint)
        {
            return Ok(channel.clone());
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
        let mut channels = self.channels.write().unwrap_or_else(|p| p.into_inner());
        Ok(channels
            .entry(endpoint.to_string())
            .or_insert(channel)
            .clone())
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
        Ok(VoteKind::VoteNo) => VoteResult::No(vote.reason),
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
        format!(
            "{rpc} failed with {:?}: {}",
            status.code(),
            status.message()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
