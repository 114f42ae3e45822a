//! The initiator client: start transactions, add branches, commit, and read
//! outcomes from a coordinator.

use std::time::Duration;

use arbiter_proto::v1 as pb;
use arbiter_proto::v1::coordinator_client::CoordinatorClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status};

pub use pb::{BranchResult, BranchState, Mode, Protocol, SagaStep, Transaction, TxnState};

/// Errors of the initiator client, by what the caller can do about them.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("not found: {0}")]
    NotFound(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("wrong state: {0}")]
    FailedPrecondition(String),
    #[error("already exists: {0}")]
    AlreadyExists(String),
    #[error("coordinator unavailable: {0}")]
    Unavailable(String),
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),
    #[error("cannot connect: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("coordinator error: {0}")]
    Other(Status),
}

impl From<Status> for ClientError {
    fn from(s: Status) -> Self {
        let m = s.message().to_string();
        match s.code() {
            Code::NotFound => ClientError::NotFound(m),
            Code::InvalidArgument => ClientError::InvalidArgument(m),
            Code::FailedPrecondition => ClientError::FailedPrecondition(m),
            Code::AlreadyExists => ClientError::AlreadyExists(m),
            Code::Unavailable => ClientError::Unavailable(m),
            Code::DeadlineExceeded => ClientError::DeadlineExceeded(m),
            _ => ClientError::Other(s),
        }
    }
}

/// One branch: a call to `resource` at the participant endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Branch {
    pub participant: String,
    pub resource: String,
    pub payload: Vec<u8>,
    /// `None` for the coordinator's default.
    pub call_timeout: Option<Duration>,
    /// For a saga step: its order and whether it has a compensation
    /// ([`Branch::after`], [`Branch::at_once`], [`Branch::must_succeed`]).
    pub step: SagaStep,
    /// gRPC (the default), or HTTP/JSON ([`Branch::http`]).
    pub protocol: Protocol,
    /// HTTP/JSON only: send the payload as JSON too (`payload_json`).
    pub payload_as_json: bool,
}

impl Branch {
    pub fn new(participant: impl Into<String>, resource: impl Into<String>) -> Self {
        Branch {
            participant: participant.into(),
            resource: resource.into(),
            payload: Vec::new(),
            call_timeout: None,
            step: SagaStep::default(),
            protocol: Protocol::Grpc,
            payload_as_json: false,
        }
    }

    /// A branch at a plain HTTP/JSON participant: the coordinator POSTs each
    /// call to `<base_url>/<call>` (README, "Participants over HTTP").
    pub fn http(base_url: impl Into<String>, resource: impl Into<String>) -> Self {
        Branch {
            protocol: Protocol::HttpJson,
            ..Branch::new(base_url, resource)
        }
    }

    /// HTTP/JSON only: also send the payload as JSON (`payload_json`) when
    /// it is valid JSON.
    pub fn payload_as_json(mut self) -> Self {
        self.payload_as_json = true;
        self
    }

    /// A saga step that runs once these steps (branch ids: "1", "2", ... in
    /// the order given to [`Execute`]) succeeded, instead of after the step
    /// before it.
    pub fn after<S: Into<String>>(mut self, steps: impl IntoIterator<Item = S>) -> Self {
        self.step.depends_on = steps.into_iter().map(Into::into).collect();
        self
    }

    /// A saga step that starts with the saga, in parallel with the others
    /// that do.
    pub fn at_once(mut self) -> Self {
        self.step.start_at_once = true;
        self
    }

    /// A saga step with no compensation: retried until it succeeds, after
    /// every compensable step succeeded (it must come last).
    pub fn must_succeed(mut self) -> Self {
        self.step.must_succeed = true;
        self
    }

    pub fn payload(mut self, payload: impl Into<Vec<u8>>) -> Self {
        self.payload = payload.into();
        self
    }

    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = Some(timeout);
        self
    }

    fn to_pb(&self) -> pb::BranchSpec {
        pb::BranchSpec {
            participant: self.participant.clone(),
            resource: self.resource.clone(),
            payload: self.payload.clone(),
            call_timeout_ms: self.call_timeout.map_or(0, |d| d.as_millis() as u64),
            saga: (self.step != SagaStep::default()).then(|| self.step.clone()),
            protocol: self.protocol as i32,
            payload_as_json: self.payload_as_json,
        }
    }
}

/// A whole transaction for [`Client::execute`].
#[derive(Clone, Debug)]
pub struct Execute {
    mode: Mode,
    timeout: Option<Duration>,
    txn_id: Option<String>,
    branches: Vec<Branch>,
    wait: bool,
    traceparent: Option<String>,
}

impl Execute {
    pub fn two_phase() -> Self {
        Self::new(Mode::TwoPhase)
    }

    pub fn tcc() -> Self {
        Self::new(Mode::Tcc)
    }

    /// A saga: each branch a step ([`SagaHandler`](crate::SagaHandler)),
    /// one after another unless ordered otherwise ([`Branch::after`],
    /// [`Branch::at_once`]).
    pub fn saga() -> Self {
        Self::new(Mode::Saga)
    }

    fn new(mode: Mode) -> Self {
        Execute {
            mode,
            timeout: None,
            txn_id: None,
            branches: Vec::new(),
            wait: true,
            traceparent: None,
        }
    }

    /// The caller's W3C `traceparent`: the coordinator continues this trace
    /// and sends it on to every participant call
    /// ([`CallContext::traceparent`](crate::CallContext)).
    pub fn traceparent(mut self, traceparent: impl Into<String>) -> Self {
        self.traceparent = Some(traceparent.into());
        self
    }

    pub fn branch(mut self, branch: Branch) -> Self {
        self.branches.push(branch);
        self
    }

    /// Transaction timeout (also the phase-1 deadline).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// A client-chosen id: repeating the same `Execute` is then safe.
    pub fn txn_id(mut self, id: impl Into<String>) -> Self {
        self.txn_id = Some(id.into());
        self
    }

    /// `true` (the default): answer when final; `false`: when the decision is durable.
    pub fn wait(mut self, wait: bool) -> Self {
        self.wait = wait;
        self
    }
}

/// What `commit` / `execute` answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub txn_id: String,
    pub state: TxnState,
    /// Why, e.g. which branch voted NO.
    pub reason: String,
    /// For `execute`: the branch ids, in the order the branches were given.
    pub branch_ids: Vec<String>,
    /// Branches an operator resolved by hand against the decision: a
    /// heuristic, mixed outcome. Empty for an atomic one.
    pub mixed_branches: Vec<String>,
    /// What each branch answered: the result it sent with its YES vote or
    /// ack ([`Vote::YesWith`](crate::Vote::YesWith),
    /// [`TwoPhaseHandler::commit_with_result`](crate::TwoPhaseHandler::commit_with_result)),
    /// or why it voted NO.
    pub branch_results: Vec<BranchResult>,
}

impl Outcome {
    /// The result branch `branch_id` sent, if any.
    pub fn result_of(&self, branch_id: &str) -> Option<&[u8]> {
        self.branch_results
            .iter()
            .find(|b| b.branch_id == branch_id && !b.result.is_empty())
            .map(|b| b.result.as_slice())
    }

    /// Committed (every branch, unless [`Outcome::is_mixed`]).
    pub fn is_committed(&self) -> bool {
        self.state == TxnState::Committed
    }

    /// Whether an operator resolved some branch against the decision, so
    /// not every branch went the way `state` says.
    pub fn is_mixed(&self) -> bool {
        !self.mixed_branches.is_empty()
    }

    pub fn is_aborted(&self) -> bool {
        self.state == TxnState::Aborted
    }
}

/// What a participant holding a prepared branch should do, per the
/// coordinator (see [`Client::resolve`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// The commit decision is durable: commit/confirm your branch.
    Commit,
    /// The transaction aborted, or the coordinator has never heard of it
    /// (presumed abort): roll back/cancel your branch.
    Abort,
    /// Not decided yet (or the decision is not yet durable): keep holding and
    /// ask again later; the coordinator will also call you.
    Wait,
}

/// A connection to a coordinator. Cheap to clone; clones share the connection.
#[derive(Clone, Debug)]
pub struct Client {
    inner: RawClient,
}

/// The generated client with this connection's credentials applied.
pub type RawClient = CoordinatorClient<InterceptedService<Channel, Credentials>>;

/// Adds the bearer token (if any) to every call.
#[derive(Clone, Default)]
pub struct Credentials {
    token: Option<MetadataValue<Ascii>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let token = if self.token.is_some() {
            "<redacted>"
        } else {
            "none"
        };
        write!(f, "Credentials {{ token: {token} }}")
    }
}

impl Interceptor for Credentials {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(token) = &self.token {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        Ok(request)
    }
}

/// How to reach a secured coordinator: a bearer token and/or TLS.
#[derive(Clone, Debug, Default)]
pub struct ConnectOptions {
    token: Option<String>,
    tls: Option<ClientTlsConfig>,
}

impl ConnectOptions {
    pub fn new() -> Self {
        Self::default()
    }

    /// The bearer token sent with every call (`--coordinator-token` or
    /// `--admin-token` on the coordinator, without the `name=` part).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// TLS settings for an `https://` coordinator (CA, client identity).
    pub fn tls(mut self, tls: ClientTlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }
}

fn ms(d: Option<Duration>) -> u64 {
    d.map_or(0, |d| d.as_millis() as u64)
}

impl Client {
    /// Connects to a coordinator at `endpoint`, e.g. `http://127.0.0.1:7089`.
    pub async fn connect(endpoint: impl Into<String>) -> Result<Client, ClientError> {
        Self::connect_with(endpoint, ConnectOptions::default()).await
    }

    /// Connects with a token and/or TLS (for an `https://` endpoint).
    pub async fn connect_with(
        endpoint: impl Into<String>,
        options: ConnectOptions,
    ) -> Result<Client, ClientError> {
        let (endpoint, credentials) = Self::prepare(endpoint.into(), options)?;
        let channel = endpoint.connect().await?;
        Ok(Client {
            inner: CoordinatorClient::with_interceptor(channel, credentials),
        })
    }

    /// Like [`Client::connect_with`], but connects on first use, so a
    /// participant can start while the coordinator is down (its in-doubt
    /// resolver then retries until the coordinator answers).
    pub fn connect_lazy(
        endpoint: impl Into<String>,
        options: ConnectOptions,
    ) -> Result<Client, ClientError> {
        let (endpoint, credentials) = Self::prepare(endpoint.into(), options)?;
        Ok(Client {
            inner: CoordinatorClient::with_interceptor(endpoint.connect_lazy(), credentials),
        })
    }

    fn prepare(
        endpoint: String,
        options: ConnectOptions,
    ) -> Result<(Endpoint, Credentials), ClientError> {
        let mut endpoint = Endpoint::from_shared(endpoint)?.tcp_nodelay(true);
        if let Some(tls) = options.tls {
            endpoint = endpoint.tls_config(tls)?;
        }
        let token = match options.token {
            Some(token) => Some(format!("Bearer {token}").parse().map_err(|_| {
                ClientError::InvalidArgument(
                    "the token has characters a header cannot carry".into(),
                )
            })?),
            None => None,
        };
        Ok((endpoint, Credentials { token }))
    }

    /// The generated gRPC client, for calls this wrapper does not cover.
    pub fn raw(&self) -> RawClient {
        self.inner.clone()
    }

    /// Starts a transaction; returns its id.
    pub async fn begin(
        &self,
        mode: Mode,
        timeout: Option<Duration>,
    ) -> Result<String, ClientError> {
        self.begin_with_id(mode, timeout, "").await
    }

    /// Starts a transaction with a client-chosen id (idempotent for the same id and mode).
    pub async fn begin_with_id(
        &self,
        mode: Mode,
        timeout: Option<Duration>,
        txn_id: &str,
    ) -> Result<String, ClientError> {
        let response = self
            .inner
            .clone()
            .begin(pb::BeginRequest {
                mode: mode as i32,
                timeout_ms: ms(timeout),
                txn_id: txn_id.to_string(),
            })
            .await?;
        Ok(response.into_inner().txn_id)
    }

    /// Adds a branch; durable once this returns. Returns the branch id.
    pub async fn register_branch(
        &self,
        txn_id: &str,
        branch: &Branch,
    ) -> Result<String, ClientError> {
        self.register_branch_with_id(txn_id, branch, "").await
    }

    /// Adds a branch under an id of the caller's choosing, so that a retry
    /// (after a timeout, or on another coordinator node) is a no-op instead
    /// of a second branch. An empty id lets the coordinator number it.
    pub async fn register_branch_with_id(
        &self,
        txn_id: &str,
        branch: &Branch,
        branch_id: &str,
    ) -> Result<String, ClientError> {
        let spec = branch.to_pb();
        let response = self
            .inner
            .clone()
            .register_branch(pb::RegisterBranchRequest {
                txn_id: txn_id.to_string(),
                participant: spec.participant,
                resource: spec.resource,
                payload: spec.payload,
                call_timeout_ms: spec.call_timeout_ms,
                branch_id: branch_id.to_string(),
                saga: spec.saga,
                protocol: spec.protocol,
                payload_as_json: spec.payload_as_json,
            })
            .await?;
        Ok(response.into_inner().branch_id)
    }

    /// Commits: with `wait`, answers when final; otherwise once decided.
    pub async fn commit(&self, txn_id: &str, wait: bool) -> Result<Outcome, ClientError> {
        let response = self
            .inner
            .clone()
            .commit(pb::CommitRequest {
                txn_id: txn_id.to_string(),
                wait,
            })
            .await?
            .into_inner();
        Ok(Outcome {
            state: response.state(),
            txn_id: response.txn_id,
            reason: response.reason,
            branch_ids: Vec::new(),
            mixed_branches: response.mixed_branches,
            branch_results: response.branch_results,
        })
    }

    /// Aborts an undecided transaction; returns the state after the abort is durable.
    pub async fn rollback(&self, txn_id: &str, reason: &str) -> Result<TxnState, ClientError> {
        let response = self
            .inner
            .clone()
            .rollback(pb::RollbackRequest {
                txn_id: txn_id.to_string(),
                reason: reason.to_string(),
            })
            .await?;
        Ok(response.into_inner().state())
    }

    /// Begin + register every branch + commit, in one call.
    pub async fn execute(&self, txn: Execute) -> Result<Outcome, ClientError> {
        let mut request = Request::new(pb::ExecuteRequest {
            mode: txn.mode as i32,
            timeout_ms: ms(txn.timeout),
            branches: txn.branches.iter().map(Branch::to_pb).collect(),
            wait: txn.wait,
            txn_id: txn.txn_id.unwrap_or_default(),
        });
        if let Some(value) = txn.traceparent.and_then(|t| t.parse().ok()) {
            request.metadata_mut().insert("traceparent", value);
        }
        let response = self.inner.clone().execute(request).await?.into_inner();
        Ok(Outcome {
            state: response.state(),
            txn_id: response.txn_id,
            reason: response.reason,
            branch_ids: response.branch_ids,
            mixed_branches: response.mixed_branches,
            branch_results: response.branch_results,
        })
    }

    /// In-doubt resolution: what a participant holding a prepared branch of
    /// `txn_id` should do, e.g. after it restarted and lost track.
    ///
    /// The contract (presumed abort): a transaction the coordinator does not
    /// know, because it never became durable or because it finished longer
    /// ago than the coordinator's retention, counts as aborted, since a
    /// committed transaction is never collected before every branch has
    /// acknowledged its commit. The coordinator keeps re-sending phase 2
    /// anyway, so resolving is only needed to release resources sooner.
    pub async fn resolve(&self, txn_id: &str) -> Result<Resolution, ClientError> {
        match self.get_transaction(txn_id).await {
            Ok(txn) => Ok(match txn.state() {
                TxnState::Committing | TxnState::Committed => Resolution::Commit,
                TxnState::Aborting | TxnState::Aborted => Resolution::Abort,
                _ => Resolution::Wait,
            }),
            Err(ClientError::NotFound(_)) => Ok(Resolution::Abort),
            Err(e) => Err(e),
        }
    }

    /// The whole transaction with its branches.
    pub async fn get_transaction(&self, txn_id: &str) -> Result<Transaction, ClientError> {
        let response = self
            .inner
            .clone()
            .get_transaction(pb::GetTransactionRequest {
                txn_id: txn_id.to_string(),
            })
            .await?;
        response
            .into_inner()
            .transaction
            .ok_or_else(|| ClientError::Other(Status::internal("coordinator sent no transaction")))
    }
}
