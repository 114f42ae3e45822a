//! The `arbiter.v1.Admin` service: decode, call the driver, encode; an
//! action on a transaction another node drives is forwarded to it.

use arbiter_proto::v1 as pb;
use arbiter_proto::v1::admin_client::AdminClient;
use arbiter_proto::v1::admin_server::Admin;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::server::forward::Forwarder;

use crate::driver::validate::truncated;
use crate::driver::{Driver, ListFilter, ids};
use crate::engine::{Mode, Txn};
use crate::server::convert::{
    answer_by, mode_from_pb, mode_to_pb, optional, state_from_pb, state_to_pb, txn_to_pb,
};

pub struct AdminService {
    pub driver: Driver,
    pub forward: std::sync::Arc<Forwarder>,
}

/// A client of another node's Admin service.
pub(crate) fn client(channel: Channel, max_message: usize) -> AdminClient<Channel> {
    AdminClient::new(channel)
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message)
}

/// Who is calling, for the audit log: the token's name when authentication
/// is on, and the peer address. An action the web console of another node
/// forwarded here is `console:<name>`, as on that node.
fn caller<T>(request: &Request<T>) -> String {
    let peer = request
        .remote_addr()
        .map_or_else(|| "unknown peer".to_string(), |addr| format!("peer {addr}"));
    let console = request
        .metadata()
        .get(crate::server::forward::VIA)
        .is_some_and(|v| v == "console");
    match (
        request.extensions().get::<crate::security::Caller>(),
        console,
    ) {
        (Some(caller), true) => {
            let name = caller.0.strip_prefix("token:").unwrap_or(&caller.0);
            format!("console:{name} (via {peer})")
        }
        (Some(caller), false) => format!("{} ({peer})", caller.0),
        (None, true) => format!("console:anonymous (via {peer})"),
        (None, false) => peer,
    }
}

fn summary(txn: &Txn, now_ms: u64, owner_node: String) -> pb::TxnSummary {
    let last_error = txn
        .branches
        .iter()
        .filter_map(|b| {
            b.history
                .iter()
                .rev()
                .find(|a| !a.ok)
                .map(|a| (a.at_ms, &b.id, &a.result))
        })
        .max_by_key(|(at, _, _)| *at)
        .map(|(_, id, error)| format!("branch {id}: {error}"))
        .unwrap_or_default();
    // A listing carries a bounded line per transaction, whatever an older
    // log holds (`txn show` has the whole record).
    pb::TxnSummary {
        owner_node,
        txn_id: txn.id.clone(),
        mode: mode_to_pb(txn.mode) as i32,
        state: state_to_pb(txn.state) as i32,
        age_ms: now_ms.saturating_sub(txn.created_at_ms),
        branch_count: txn.branches.len() as u32,
        stuck: txn.stuck_since_ms.is_some(),
        attempts: txn.branches.iter().map(|b| b.attempts).sum(),
        last_error: truncated(last_error),
        reason: truncated(txn.reason.clone()),
        created_at_ms: txn.created_at_ms,
    }
}

fn detail(txn: &Txn) -> Vec<pb::BranchDetail> {
    txn.branches
        .iter()
        .map(|b| pb::BranchDetail {
            branch_id: b.id.clone(),
            history: b
                .history
                .iter()
                .map(|a| pb::Attempt {
                    at_ms: a.at_ms,
                    call: a.call.rpc_name(txn.mode).to_string(),
                    attempt: a.attempt,
                    ok: a.ok,
                    result: a.result.clone(),
                })
                .collect(),
            next_retry_at_ms: b.next_retry_at_ms.unwrap_or(0),
        })
        .collect()
}

#[tonic::async_trait]
impl Admin for AdminService {
    type WatchTransactionsStream = crate::server::watch::FeedStream;

    async fn watch_transactions(
        &self,
        request: Request<pb::WatchTransactionsRequest>,
    ) -> Result<Response<Self::WatchTransactionsStream>, Status> {
        let stream = crate::server::watch::watch_feed(&self.driver, request.into_inner())?;
        Ok(Response::new(stream))
    }

    async fn list_transactions(
        &self,
        request: Request<pb::ListTransactionsRequest>,
    ) -> Result<Response<pb::ListTransactionsResponse>, Status> {
        let req = request.into_inner();
        let mode: Option<Mode> = match req.mode {
            0 => None,
            m => Some(mode_from_pb(m)?),
        };
        let filter = ListFilter {
            states: req
                .states
                .iter()
                .map(|s| state_from_pb(*s))
                .collect::<Result<_, _>>()?,
            mode,
            stuck_only: req.stuck_only,
            older_than_ms: (req.older_than_ms > 0).then_some(req.older_than_ms),
            participant: optional(req.participant),
            newest_first: !req.oldest_first,
            limit: if req.page_size == 0 {
                50
            } else {
                req.page_size as usize
            },
            after: optional(req.page_token),
        };
        let page = self.driver.list(&filter)?;
        let mut owners = self.driver.owners_of(&page.txns)?;
        let now = ids::now_ms();
        Ok(Response::new(pb::ListTransactionsResponse {
            transactions: page
                .txns
                .iter()
                .map(|t| summary(t, now, owners.remove(&t.id).unwrap_or_default()))
                .collect(),
            next_page_token: page.next.unwrap_or_default(),
        }))
    }

    async fn get_transaction(
        &self,
        request: Request<pb::AdminGetTransactionRequest>,
    ) -> Result<Response<pb::AdminGetTransactionResponse>, Status> {
        let txn = self.driver.get(&request.into_inner().txn_id)?;
        let mut transaction = txn_to_pb(&txn);
        transaction.owner_node = self.driver.owner_node(&txn)?;
        Ok(Response::new(pb::AdminGetTransactionResponse {
            branches: detail(&txn),
            transaction: Some(transaction),
        }))
    }

    async fn retry_now(
        &self,
        request: Request<pb::RetryNowRequest>,
    ) -> Result<Response<pb::RetryNowResponse>, Status> {
        let caller = caller(&request);
        let deadline = answer_by(&request);
        let (metadata, _, req) = request.into_parts();
        let txn_ids = match (req.all_stuck, req.txn_id.is_empty()) {
            (true, true) => self.driver.retry_all_stuck(&caller).await?,
            (false, false) => match self.driver.retry_now(&req.txn_id, &caller).await {
                Ok(txn) => vec![txn.id],
                Err(e) => {
                    return self
                        .forward
                        .forward(e, &metadata, req, deadline, |c, m, r| async move {
                            client(c, m).retry_now(r).await
                        })
                        .await;
                }
            },
            (true, false) => {
                return Err(Status::invalid_argument(
                    "give either txn_id or all_stuck, not both",
                ));
            }
            (false, true) => {
                return Err(Status::invalid_argument("give a txn_id, or set all_stuck"));
            }
        };
        Ok(Response::new(pb::RetryNowResponse { txn_ids }))
    }

    async fn force_outcome(
        &self,
        request: Request<pb::ForceOutcomeRequest>,
    ) -> Result<Response<pb::ForceOutcomeResponse>, Status> {
        let caller = caller(&request);
        let deadline = answer_by(&request);
        let (metadata, _, req) = request.into_parts();
        let commit = match pb::ForcedOutcome::try_from(req.outcome) {
            Ok(pb::ForcedOutcome::Commit) => true,
            Ok(pb::ForcedOutcome::Abort) => false,
            _ => {
                return Err(Status::invalid_argument(
                    "outcome must be FORCED_OUTCOME_COMMIT or FORCED_OUTCOME_ABORT",
                ));
            }
        };
        let outcome = match self
            .driver
            .force_outcome(&req.txn_id, commit, &req.reason, &caller)
            .await
        {
            Ok(outcome) => outcome,
            Err(e) => {
                return self
                    .forward
                    .forward(e, &metadata, req, deadline, |c, m, r| async move {
                        client(c, m).force_outcome(r).await
                    })
                    .await;
            }
        };
        Ok(Response::new(pb::ForceOutcomeResponse {
            txn_id: outcome.txn_id,
            state: state_to_pb(outcome.state) as i32,
            reason: outcome.reason,
        }))
    }

    async fn resolve_branch(
        &self,
        request: Request<pb::ResolveBranchRequest>,
    ) -> Result<Response<pb::ResolveBranchResponse>, Status> {
        let caller = caller(&request);
        let deadline = answer_by(&request);
        let (metadata, _, req) = request.into_parts();
        let committed = match pb::BranchResolution::try_from(req.resolution) {
            Ok(pb::BranchResolution::Committed) => true,
            Ok(pb::BranchResolution::RolledBack) => false,
            _ => {
                return Err(Status::invalid_argument(
                    "resolution must be BRANCH_RESOLUTION_COMMITTED or BRANCH_RESOLUTION_ROLLED_BACK",
                ));
            }
        };
        if req.branch_id.is_empty() {
            return Err(Status::invalid_argument("branch_id is empty"));
        }
        let txn = match self
            .driver
            .resolve_branch(&req.txn_id, &req.branch_id, committed, &req.reason, &caller)
            .await
        {
            Ok(txn) => txn,
            Err(e) => {
                return self
                    .forward
                    .forward(e, &metadata, req, deadline, |c, m, r| async move {
                        client(c, m).resolve_branch(r).await
                    })
                    .await;
            }
        };
        Ok(Response::new(pb::ResolveBranchResponse {
            transaction: Some(txn_to_pb(&txn)),
        }))
    }

    async fn list_audit(
        &self,
        request: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        let limit = match request.into_inner().limit {
            0 => 100,
            n => n as usize,
        };
        let entries = self
            .driver
            .audit(limit)?
            .into_iter()
            .map(|e| pb::AuditEntry {
                at_ms: e.at_ms,
                action: e.action,
                txn_id: e.txn_id,
                branch_id: e.branch_id,
                reason: e.reason,
                caller: e.caller,
                result: e.result,
            })
            .collect();
        Ok(Response::new(pb::ListAuditResponse { entries }))
    }

    async fn list_nodes(
        &self,
        _: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let (me, unfinished, known) = self.driver.nodes()?;
        let nodes = match known {
            Some(known) => known
                .into_iter()
                .map(|n| pb::Node {
                    this_node: n.node_id == me.id,
                    unfinished: n.owned,
                    node_id: n.node_id,
                    address: n.address,
                    epoch: n.epoch,
                    lease_expires_at_ms: n.lease_expires_at_ms,
                    alive: n.alive,
                })
                .collect(),
            None => vec![pb::Node {
                node_id: me.id,
                address: me.address,
                epoch: 0,
                lease_expires_at_ms: 0,
                alive: true,
                this_node: true,
                unfinished,
            }],
        };
        Ok(Response::new(pb::ListNodesResponse { nodes }))
    }

    async fn stats(
        &self,
        _: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        let stats = self.driver.cluster_stats()?;
        Ok(Response::new(pb::StatsResponse {
            unfinished: stats
                .unfinished
                .iter()
                .map(|(state, count)| pb::StateCount {
                    state: state_to_pb(*state) as i32,
                    count: *count,
                })
                .collect(),
            committed_since_start: stats.committed_since_start,
            aborted_since_start: stats.aborted_since_start,
            stuck: stats.stuck,
            oldest_unfinished_age_ms: stats.oldest_unfinished_age_ms,
            retry_queue_depth: stats.retry_queue_depth,
            log_batches: stats.log_batches,
            log_records: stats.log_records,
            log_bytes: stats.log_bytes,
            log_damaged_reads: stats.log_damaged_reads,
        }))
    }
}
