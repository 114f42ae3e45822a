//! The `arbiter.v1.Coordinator` service: decode, call the driver, encode.

use arbiter_proto::v1 as pb;
use arbiter_proto::v1::coordinator_server::Coordinator;
use tonic::{Request, Response, Status};

use crate::driver::{Driver, Wait, trace};
use crate::server::convert::{
    answer_by, branch_spec, mode_from_pb, optional, state_to_pb, txn_to_pb,
};

pub struct CoordinatorService {
    pub driver: Driver,
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
        let req = request.into_inner();
        let spec = branch_spec(pb::BranchSpec {
            participant: req.participant,
            resource: req.resource,
            payload: req.payload,
            call_timeout_ms: req.call_timeout_ms,
        });
        let branch_id = self
            .driver
            .register(&req.txn_id, spec, optional(req.branch_id))
            .await?;
        Ok(Response::new(pb::RegisterBranchResponse { branch_id }))
    }

    async fn commit(
        &self,
        request: Request<pb::CommitRequest>,
    ) -> Result<Response<pb::CommitResponse>, Status> {
        let deadline = answer_by(&request);
        let req = request.into_inner();
        let outcome = self
            .driver
            .commit(&req.txn_id, wait_mode(req.wait), deadline)
            .await?;
        Ok(Response::new(pb::CommitResponse {
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
        let req = request.into_inner();
        let outcome = self
            .driver
            .rollback(&req.txn_id, req.reason, deadline)
            .await?;
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
        let req = request.into_inner();
        let mode = mode_from_pb(req.mode)?;
        let branches = req.branches.into_iter().map(branch_spec).collect();
        let (outcome, branch_ids) = trace::scope(
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
        .await?;
        Ok(Response::new(pb::ExecuteResponse {
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
        Ok(Response::new(pb::GetTransactionResponse {
            transaction: Some(txn_to_pb(&txn)),
        }))
    }
}
