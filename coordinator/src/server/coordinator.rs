//! The `arbiter.v1.Coordinator` service: decode, call the driver, encode;
//! a call on a transaction another node drives is forwarded to it.

use arbiter_proto::v1 as pb;
use arbiter_proto::v1::coordinator_client::CoordinatorClient;
use arbiter_proto::v1::coordinator_server::Coordinator;
use tonic::{Request, Response, Status};

use crate::driver::DriverError;
use crate::server::forward::Forwarder;

use crate::driver::{Driver, Wait, trace};
use crate::server::convert::{
    answer_by, branch_results, branch_spec, mode_from_pb, optional, state_to_pb, txn_to_pb,
};

pub struct CoordinatorService {
    pub driver: Driver,
    pub forward: std::sync::Arc<Forwarder>,
}

/// A client of another node's Coordinator service.
fn client(
    channel: tonic::transport::Channel,
    max_message: usize,
) -> CoordinatorClient<tonic::transport::Channel> {
    CoordinatorClient::new(channel)
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message)
}

/// The trace id of the caller's `traceparent`, if it sent a valid one.
fn trace_of<T>(request: &Request<T>) -> Option<String> {
    request
        .metadata()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(trace::trace_id_of)
}

fn wait_mode(wait: bool) -> Wait {
    if wait { Wait::Final } else { Wait::Decided }
}

#[tonic::async_trait]
impl Coordinator for CoordinatorService {
    type WatchTransactionStream = crate::server::watch::EventStream;

    async fn watch_transaction(
        &self,
        request: Request<pb::WatchTransactionRequest>,
    ) -> Result<Response<Self::WatchTransactionStream>, Status> {
        let stream = crate::server::watch::watch_transaction(&self.driver, request.into_inner())?;
        Ok(Response::new(stream))
    }

    async fn begin(
        &self,
        request: Request<pb::BeginRequest>,
    ) -> Result<Response<pb::BeginResponse>, Status> {
        let trace_id = trace_of(&request);
        let req = request.into_inner();
        let mode = mode_from_pb(req.mode)?;
        let txn_id = trace::scope(
            trace_id,
            self.driver
                .begin(mode, req.timeout_ms, optional(req.txn_id)),
        )
        .await?;
        Ok(Response::new(pb::BeginResponse { txn_id }))
    }

    async fn register_branch(
        &self,
        request: Request<pb::RegisterBranchRequest>,
    ) -> Result<Response<pb::RegisterBranchResponse>, Status> {
        let deadline = answer_by(&request);
        let (metadata, _, req) = request.into_parts();
        let copy = self.driver.is_shared().then(|| req.clone());
        let spec = branch_spec(pb::BranchSpec {
            participant: req.participant,
            resource: req.resource,
            payload: req.payload,
            call_timeout_ms: req.call_timeout_ms,
            saga: req.saga,
            protocol: req.protocol,
            payload_as_json: req.payload_as_json,
        })?;
        match self
            .driver
            .register(&req.txn_id, spec, optional(req.branch_id))
            .await
        {
            Ok(branch_id) => Ok(Response::new(pb::RegisterBranchResponse { branch_id })),
            Err(e) => {
                self.elsewhere(e, &metadata, copy, deadline, |c, m, r| async move {
                    client(c, m).register_branch(r).await
                })
                .await
            }
        }
    }

    async fn commit(
        &self,
        request: Request<pb::CommitRequest>,
    ) -> Result<Response<pb::CommitResponse>, Status> {
        let deadline = answer_by(&request);
        let (metadata, _, req) = request.into_parts();
        let outcome = match self
            .driver
            .commit(&req.txn_id, wait_mode(req.wait), deadline)
            .await
        {
            Ok(outcome) => outcome,
            Err(e) => {
                return self
                    .elsewhere(e, &metadata, Some(req), deadline, |c, m, r| async move {
                        client(c, m).commit(r).await
                    })
                    .await;
            }
        };
        Ok(Response::new(pb::CommitResponse {
            branch_results: branch_results(&outcome),
            txn_id: outcome.txn_id,
            state: state_to_pb(outcome.state) as i32,
            reason: outcome.reason,
            mixed_branches: outcome.mixed_branches,
        }))
    }

    async fn rollback(
        &self,
        request: Request<pb::RollbackRequest>,
    ) -> Result<Response<pb::RollbackResponse>, Status> {
        let deadline = answer_by(&request);
        let (metadata, _, req) = request.into_parts();
        let copy = self.driver.is_shared().then(|| req.clone());
        let outcome = match self
            .driver
            .rollback(&req.txn_id, req.reason, deadline)
            .await
        {
            Ok(outcome) => outcome,
            Err(e) => {
                return self
                    .elsewhere(e, &metadata, copy, deadline, |c, m, r| async move {
                        client(c, m).rollback(r).await
                    })
                    .await;
            }
        };
        Ok(Response::new(pb::RollbackResponse {
            txn_id: outcome.txn_id,
            state: state_to_pb(outcome.state) as i32,
        }))
    }

    async fn execute(
        &self,
        request: Request<pb::ExecuteRequest>,
    ) -> Result<Response<pb::ExecuteResponse>, Status> {
        let deadline = answer_by(&request);
        let trace_id = trace_of(&request);
        let (metadata, _, req) = request.into_parts();
        let copy = self.driver.is_shared().then(|| req.clone());
        let mode = mode_from_pb(req.mode)?;
        let branches = req
            .branches
            .into_iter()
            .map(branch_spec)
            .collect::<Result<Vec<_>, Status>>()?;
        let executed = trace::scope(
            trace_id,
            self.driver.execute(
                mode,
                req.timeout_ms,
                optional(req.txn_id),
                branches,
                wait_mode(req.wait),
                deadline,
            ),
        )
        .await;
        let (outcome, branch_ids) = match executed {
            Ok(executed) => executed,
            Err(e) => {
                return self
                    .elsewhere(e, &metadata, copy, deadline, |c, m, r| async move {
                        client(c, m).execute(r).await
                    })
                    .await;
            }
        };
        Ok(Response::new(pb::ExecuteResponse {
            branch_results: branch_results(&outcome),
            txn_id: outcome.txn_id,
            state: state_to_pb(outcome.state) as i32,
            reason: outcome.reason,
            mixed_branches: outcome.mixed_branches,
            branch_ids,
        }))
    }

    async fn get_transaction(
        &self,
        request: Request<pb::GetTransactionRequest>,
    ) -> Result<Response<pb::GetTransactionResponse>, Status> {
        let txn = self.driver.get(&request.into_inner().txn_id)?;
        let mut transaction = txn_to_pb(&txn);
        transaction.owner_node = self.driver.owner_node(&txn)?;
        Ok(Response::new(pb::GetTransactionResponse {
            transaction: Some(transaction),
        }))
    }
}

impl CoordinatorService {
    /// Forwards the call `message` to the node `error` names, if it names
    /// one; otherwise answers with `error`.
    async fn elsewhere<Req, Resp, Fut>(
        &self,
        error: DriverError,
        metadata: &tonic::metadata::MetadataMap,
        message: Option<Req>,
        deadline: Option<std::time::Instant>,
        call: impl FnOnce(tonic::transport::Channel, usize, Request<Req>) -> Fut,
    ) -> Result<Response<Resp>, Status>
    where
        Fut: std::future::Future<Output = Result<Response<Resp>, Status>>,
    {
        match message {
            Some(message) => {
                self.forward
                    .forward(error, metadata, message, deadline, call)
                    .await
            }
            None => Err(error.into()),
        }
    }
}
