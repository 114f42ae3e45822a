//! The participant gRPC server: routes `TwoPhaseParticipant`,
//! `TccParticipant` and `SagaParticipant` calls to handlers by resource
//! name.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use arbiter_proto::v1 as pb;
use arbiter_proto::v1::saga_participant_server::{SagaParticipant, SagaParticipantServer};
use arbiter_proto::v1::tcc_participant_server::{TccParticipant, TccParticipantServer};
use arbiter_proto::v1::two_phase_participant_server::{
    TwoPhaseParticipant, TwoPhaseParticipantServer,
};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Server, ServerTlsConfig};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::handler::{
    CallContext, DynHandler, Phase2, Saga, SagaHandler, Tcc, TccHandler, TwoPhase, TwoPhaseHandler,
    Vote,
};

type Routes = Arc<HashMap<String, Arc<dyn DynHandler>>>;

/// Handlers by resource name, for one participant process.
///
/// ```no_run
/// # use arbiter_sdk::*;
/// # struct Accounts;
/// # impl TwoPhaseHandler for Accounts {
/// #   async fn prepare(&self, _: &CallContext, _: &[u8]) -> Result<Vote, ParticipantError> { Ok(Vote::Yes) }
/// #   async fn commit(&self, _: &CallContext, _: &[u8]) -> Result<(), ParticipantError> { Ok(()) }
/// #   async fn rollback(&self, _: &CallContext, _: &[u8]) -> Result<(), ParticipantError> { Ok(()) }
/// # }
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let running = ParticipantServer::new()
///     .two_phase("account.debit", Accounts)
///     .serve("127.0.0.1:0".parse()?)
///     .await?;
/// println!("register branches with participant = {}", running.endpoint());
/// # Ok(()) }
/// ```
#[derive(Default)]
pub struct ParticipantServer {
    two_phase: HashMap<String, Arc<dyn DynHandler>>,
    tcc: HashMap<String, Arc<dyn DynHandler>>,
    saga: HashMap<String, Arc<dyn DynHandler>>,
    tls: Option<ServerTlsConfig>,
}

impl ParticipantServer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves 2PC calls for `resource` with `handler`.
    pub fn two_phase(mut self, resource: impl Into<String>, handler: impl TwoPhaseHandler) -> Self {
        self.two_phase
            .insert(resource.into(), Arc::new(TwoPhase(handler)));
        self
    }

    /// Serves TCC calls for `resource` with `handler`.
    pub fn tcc(mut self, resource: impl Into<String>, handler: impl TccHandler) -> Self {
        self.tcc.insert(resource.into(), Arc::new(Tcc(handler)));
        self
    }

    /// Serves saga steps for `resource` with `handler`.
    pub fn saga(mut self, resource: impl Into<String>, handler: impl SagaHandler) -> Self {
        self.saga.insert(resource.into(), Arc::new(Saga(handler)));
        self
    }

    /// Serves over TLS (the coordinator then registers `https://` endpoints
    /// and needs `--participant-tls-ca`); with a client CA in `tls`, only
    /// coordinators presenting a certificate it signed may call (mutual TLS).
    pub fn tls(mut self, tls: ServerTlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Binds `addr` (port 0 picks a free port) and serves in the background.
    pub async fn serve(self, addr: SocketAddr) -> std::io::Result<RunningParticipant> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let tls = self.tls.is_some();
        let task = tokio::spawn(self.serve_with_listener(listener, async {
            let _ = stopped.await;
        }));
        Ok(RunningParticipant {
            addr,
            tls,
            stop: Some(stop),
            task,
        })
    }

    /// Serves on `listener` until `shutdown` resolves.
    pub async fn serve_with_listener(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        let two_phase = Dispatch {
            routes: Arc::new(self.two_phase),
            kind: "2PC",
        };
        let tcc = Dispatch {
            routes: Arc::new(self.tcc),
            kind: "TCC",
        };
        let saga = Dispatch {
            routes: Arc::new(self.saga),
            kind: "saga",
        };
        let mut builder = Server::builder();
        if let Some(tls) = self.tls {
            builder = builder.tls_config(tls)?;
        }
        builder
            .add_service(TwoPhaseParticipantServer::new(two_phase))
            .add_service(TccParticipantServer::new(tcc))
            .add_service(SagaParticipantServer::new(saga))
            .serve_with_incoming_shutdown(
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                shutdown,
            )
            .await
    }
}

/// A participant server running in the background.
pub struct RunningParticipant {
    addr: SocketAddr,
    tls: bool,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl RunningParticipant {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URI to register branches with, e.g. `http://127.0.0.1:41234`
    /// (`https://` when serving TLS).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Stops accepting calls, lets calls in progress finish, and waits.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for RunningParticipant {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn traceparent<T>(request: &Request<T>) -> Option<String> {
    request
        .metadata()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The span a handler runs in: the branch and the caller's trace context.
fn span(ctx: &CallContext, kind: &str, call: &str) -> tracing::Span {
    tracing::info_span!("arbiter_participant_call", kind, call, txn = %ctx.txn_id,
        branch = %ctx.branch_id, resource = %ctx.resource, attempt = ctx.attempt,
        traceparent = ctx.traceparent.as_deref().unwrap_or(""))
}

struct Dispatch {
    routes: Routes,
    kind: &'static str,
}

impl Dispatch {
    fn route(
        &self,
        call: &pb::BranchCall,
        traceparent: Option<String>,
    ) -> Result<(Arc<dyn DynHandler>, CallContext), Status> {
        let handler = self.routes.get(&call.resource).cloned().ok_or_else(|| {
            Status::invalid_argument(format!(
                "this participant has no {} handler for resource {:?}",
                self.kind, call.resource
            ))
        })?;
        let ctx = CallContext {
            txn_id: call.txn_id.clone(),
            branch_id: call.branch_id.clone(),
            resource: call.resource.clone(),
            attempt: call.attempt,
            traceparent,
        };
        Ok((handler, ctx))
    }

    async fn vote(&self, request: Request<pb::BranchCall>) -> Result<Response<pb::Vote>, Status> {
        let traceparent = traceparent(&request);
        let call = request.into_inner();
        let (handler, ctx) = self.route(&call, traceparent)?;
        let vote = handler
            .vote(&ctx, &call.payload)
            .instrument(span(&ctx, self.kind, "phase1"))
            .await?;
        let (kind, reason, result) = match vote {
            Vote::Yes => (pb::VoteKind::VoteYes, String::new(), Vec::new()),
            Vote::YesWith(result) if result.len() > crate::MAX_RESULT => {
                // The coordinator would take it as a NO; say why here.
                return Err(Status::invalid_argument(format!(
                    "the handler voted YES with a result of {} bytes, over the {}-byte limit",
                    result.len(),
                    crate::MAX_RESULT
                )));
            }
            Vote::YesWith(result) => (pb::VoteKind::VoteYes, String::new(), result),
            Vote::No(reason) => (pb::VoteKind::VoteNo, reason, Vec::new()),
            Vote::ReadOnly => (pb::VoteKind::VoteReadOnly, String::new(), Vec::new()),
        };
        Ok(Response::new(pb::Vote {
            vote: kind as i32,
            reason,
            result,
        }))
    }

    async fn finish(
        &self,
        phase: Phase2,
        request: Request<pb::BranchCall>,
    ) -> Result<Response<pb::Ack>, Status> {
        let traceparent = traceparent(&request);
        let call = request.into_inner();
        let (handler, ctx) = self.route(&call, traceparent)?;
        let name = match phase {
            Phase2::Commit => "commit",
            Phase2::Rollback => "rollback",
        };
        let mut result = handler
            .finish(phase, &ctx, &call.payload)
            .instrument(span(&ctx, self.kind, name))
            .await?;
        if result.len() > crate::MAX_RESULT {
            // The work is done: the ack counts, the result cannot travel.
            tracing::warn!(txn = %ctx.txn_id, branch = %ctx.branch_id, bytes = result.len(),
                "a {name} result over {} bytes is dropped", crate::MAX_RESULT);
            result = Vec::new();
        }
        Ok(Response::new(pb::Ack { result }))
    }
}

#[tonic::async_trait]
impl TwoPhaseParticipant for Dispatch {
    async fn prepare(
        &self,
        request: Request<pb::BranchCall>,
    ) -> Result<Response<pb::Vote>, Status> {
        self.vote(request).await
    }
    async fn commit(&self, request: Request<pb::BranchCall>) -> Result<Response<pb::Ack>, Status> {
        self.finish(Phase2::Commit, request).await
    }
    async fn rollback(
        &self,
        request: Request<pb::BranchCall>,
    ) -> Result<Response<pb::Ack>, Status> {
        self.finish(Phase2::Rollback, request).await
    }
}

#[tonic::async_trait]
impl TccParticipant for Dispatch {
    async fn r#try(&self, request: Request<pb::BranchCall>) -> Result<Response<pb::Vote>, Status> {
        self.vote(request).await
    }
    async fn confirm(&self, request: Request<pb::BranchCall>) -> Result<Response<pb::Ack>, Status> {
        self.finish(Phase2::Commit, request).await
    }
    async fn cancel(&self, request: Request<pb::BranchCall>) -> Result<Response<pb::Ack>, Status> {
        self.finish(Phase2::Rollback, request).await
    }
}

#[tonic::async_trait]
impl SagaParticipant for Dispatch {
    async fn action(
        &self,
        request: Request<pb::BranchCall>,
    ) -> Result<Response<pb::StepResult>, Status> {
        let vote = self.vote(request).await?.into_inner();
        let outcome = match pb::VoteKind::try_from(vote.vote) {
            Ok(pb::VoteKind::VoteYes | pb::VoteKind::VoteReadOnly) => {
                pb::StepOutcome::StepSucceeded
            }
            _ => pb::StepOutcome::StepFailed,
        };
        Ok(Response::new(pb::StepResult {
            outcome: outcome as i32,
            reason: vote.reason,
            result: vote.result,
        }))
    }
    async fn compensate(
        &self,
        request: Request<pb::BranchCall>,
    ) -> Result<Response<pb::Ack>, Status> {
        self.finish(Phase2::Rollback, request).await
    }
}
