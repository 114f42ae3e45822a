//! Who may do what: bearer tokens by role, the participant endpoint
//! allowlist, and the TLS settings of both directions.

mod allowlist;
mod auth;

pub use allowlist::{EndpointPattern, allowed};
pub use auth::{Auth, Caller, Role, Token, interceptor};

use tonic::transport::{ClientTlsConfig, ServerTlsConfig};

/// TLS of the coordinator's own server and of its calls to participants.
#[derive(Clone, Debug, Default)]
pub struct Tls {
    /// Serve gRPC over TLS (optionally requiring client certificates).
    pub server: Option<ServerTlsConfig>,
    /// Trust and identity for `https://` participant endpoints.
    pub participants: Option<ClientTlsConfig>,
}
