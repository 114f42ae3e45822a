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
    /// The same, for HTTP/JSON participants (built from the same files).
    pub participants_http: Option<std::sync::Arc<tokio_rustls::rustls::ClientConfig>>,
}

/// A TLS client configuration for HTTP/JSON participants: trust `ca`, and
/// present `identity` (certificate chain, key) when given. All PEM.
pub fn http_client_tls(
    ca: &[u8],
    identity: Option<(&[u8], &[u8])>,
) -> Result<std::sync::Arc<tokio_rustls::rustls::ClientConfig>, String> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca) {
        let cert = cert.map_err(|e| format!("--participant-tls-ca: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("--participant-tls-ca: {e}"))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS: {e}"))?
    .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("--participant-tls-cert: {e}"))?;
            let key = PrivateKeyDer::from_pem_slice(key)
                .map_err(|e| format!("--participant-tls-key: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("--participant-tls-cert and --participant-tls-key: {e}"))?
        }
    };
    // ALPN is left to the HTTP connector (it refuses a preset one).
    Ok(std::sync::Arc::new(config))
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
