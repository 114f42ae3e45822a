//! Forwarding a call to the coordinator node that drives its transaction.
//!
//! In a cluster any node answers any call. When the driver says another
//! live node owns the transaction ([`DriverError::Elsewhere`]), the call is
//! sent on to that node's `--advertise-addr` with the caller's token, trace
//! context and remaining deadline, and its answer (or status) passed back.
//! A forwarded call is marked, and never forwarded a second time: a node
//! that receives one it does not own answers UNAVAILABLE, and the client's
//! retry finds the new owner.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tonic::metadata::MetadataMap;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Response, Status};

use crate::driver::DriverError;

/// Marks a call one node sent to another.
const FORWARDED: &str = "x-arbiter-forwarded";

/// Says an admin call came from the web console (`console`): the node that
/// acts records the caller as `console:<token name>`.
pub const VIA: &str = "x-arbiter-via";

/// Headers a forwarded call carries on.
const CARRIED: [&str; 4] = ["authorization", "traceparent", "tracestate", VIA];

/// How long a forwarded call may take when its caller set no deadline.
const DEFAULT_PATIENCE: Duration = Duration::from_secs(60);

/// Channels to the other nodes, by address.
pub struct Forwarder {
    channels: Mutex<HashMap<String, Channel>>,
    tls: Option<ClientTlsConfig>,
    max_message: usize,
}

impl Forwarder {
    pub fn new(tls: Option<ClientTlsConfig>, max_message: usize) -> Forwarder {
        Forwarder {
            channels: Mutex::new(HashMap::new()),
            tls,
            max_message,
        }
    }

    /// Sends `message` to the node `error` names (or answers with `error`
    /// if it is not about another node, or the call was forwarded once).
    pub async fn forward<Req, Resp, Fut>(
        &self,
        error: DriverError,
        incoming: &MetadataMap,
        message: Req,
        deadline: Option<Instant>,
        call: impl FnOnce(Channel, usize, Request<Req>) -> Fut,
    ) -> Result<Response<Resp>, Status>
    where
        Fut: std::future::Future<Output = Result<Response<Resp>, Status>>,
    {
        let DriverError::Elsewhere { txn, node, address } = &error else {
            return Err(error.into());
        };
        if incoming.contains_key(FORWARDED) {
            return Err(Status::unavailable(format!(
                "transaction {txn} moved to coordinator node {node} while this call was \
                 forwarded; retry"
            )));
        }
        let channel = self.channel(address).map_err(|why| {
            Status::unavailable(format!(
                "transaction {txn} is driven by coordinator node {node} at {address}, \
                 which cannot be reached from here ({why}); retry"
            ))
        })?;
        let mut request = Request::new(message);
        for name in CARRIED {
            if let Some(value) = incoming.get(name) {
                request.metadata_mut().insert(name, value.clone());
            }
        }
        request
            .metadata_mut()
            .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
        let patience = deadline.map_or(DEFAULT_PATIENCE, |d| {
            d.saturating_duration_since(Instant::now())
        });
        request.set_timeout(patience.max(Duration::from_millis(1)));
        tracing::debug!(%txn, %node, %address, "forwarding a call to the transaction's owner");
        call(channel, self.max_message, request)
            .await
            .map_err(|status| {
                if status.code() == tonic::Code::Unavailable
                    || status.code() == tonic::Code::Unknown
                {
                    // The owner went away under the call: say who, so the retry
                    // can be understood.
                    Status::unavailable(format!(
                        "forwarded to coordinator node {node} at {address}: {}",
                        status.message()
                    ))
                } else {
                    status
                }
            })
    }

    fn channel(&self, address: &str) -> Result<Channel, String> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        let mut endpoint =
            Endpoint::from_shared(address.to_string()).map_err(|e| format!("bad address: {e}"))?;
        if address.starts_with("https://") {
            let tls = self.tls.clone().unwrap_or_default();
            endpoint = endpoint.tls_config(tls).map_err(|e| format!("TLS: {e}"))?;
        }
        let channel = endpoint
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(3))
            .http2_keep_alive_interval(Duration::from_secs(30))
            .connect_lazy();
        // Few nodes: one channel each, kept.
        channels.insert(address.to_string(), channel.clone());
        Ok(channel)
    }
}
