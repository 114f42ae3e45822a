//! Who may do what: bearer tokens by role, the participant endpoint
//! allowlist, and the TLS settings of both directions.

mod allowlist;
mod auth;

pub use allowlist::{EndpointPattern, allowed};
pub use auth::{Auth, Caller, Role, Token, interceptor, same};

use tonic::transport::{ClientTlsConfig, ServerTlsConfig};

/// TLS of the coordinator's own server and of its calls to participants.
#[derive(Clone, Debug, Default)]
pub struct Tls {
    /// Serve gRPC over TLS (optionally requiring client certificates).
    pub server: Option<ServerTlsConfig>,
    /// Trust and identity for `https://` participant endpoints.
    pub participants: Option<ClientTlsConfig>,
}

/// Reads a PEM file named by the setting `what`; refuses anything else.
pub fn read_pem(path: &std::path::Path, what: &str) -> Result<Vec<u8>, String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(format!("{what} {} is not a PEM file", path.display()));
    }
    Ok(bytes)
}
