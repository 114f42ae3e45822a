//! What every admin command shares: the coordinator address, the output
//! format, the gRPC client, confirmations, and exit codes
//! (0 ok, 1 failure, 2 usage error, 3 not found).

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{Context, bail};
use arbiter_proto::v1::admin_client::AdminClient;
use clap::Args;
use std::path::{Path, PathBuf};

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::cli::output::Format;

#[derive(Debug, Args)]
pub struct Conn {
    /// Coordinator to talk to.
    #[arg(
        long,
        global = true,
        env = "ARBITER_ADDR",
        default_value = "http://127.0.0.1:7089"
    )]
    pub addr: String,
    /// Output: aligned table for people, JSON for scripts.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// Admin bearer token (the secret part of the coordinator's --admin-token).
    #[arg(long, global = true, env = "ARBITER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CA (PEM file) to verify an https:// coordinator with.
    #[arg(long, global = true, env = "ARBITER_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM file) for a coordinator that requires one.
    #[arg(
        long,
        global = true,
        env = "ARBITER_TLS_CLIENT_CERT",
        requires = "tls_client_key"
    )]
    pub tls_client_cert: Option<PathBuf>,
    /// The private key of --tls-client-cert (PEM file).
    #[arg(long, global = true, env = "ARBITER_TLS_CLIENT_KEY")]
    pub tls_client_key: Option<PathBuf>,
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        Ok(request)
    }
}

/// The admin client the commands use.
pub type Admin = AdminClient<InterceptedService<Channel, Bearer>>;

fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    crate::security::read_pem(path, what).map_err(|e| UsageError(e).into())
}

/// The coordinator client `txn watch` uses.
pub type Coordinator =
    arbiter_proto::v1::coordinator_client::CoordinatorClient<InterceptedService<Channel, Bearer>>;

impl Conn {
    pub async fn admin(&self) -> anyhow::Result<Admin> {
        let (channel, bearer) = self.channel().await?;
        Ok(AdminClient::with_interceptor(channel, bearer))
    }

    pub async fn coordinator(&self) -> anyhow::Result<Coordinator> {
        let (channel, bearer) = self.channel().await?;
        Ok(
            arbiter_proto::v1::coordinator_client::CoordinatorClient::with_interceptor(
                channel, bearer,
            ),
        )
    }

    async fn channel(&self) -> anyhow::Result<(Channel, Bearer)> {
        let addr = coordinator_uri(&self.addr)?;
        let mut endpoint = Endpoint::from_shared(addr.clone())
            .map_err(|e| UsageError(format!("--addr {:?} is not a URI: {e}", self.addr)))?;
        if addr.starts_with("https://") || self.tls_ca.is_some() {
            let mut tls = ClientTlsConfig::new();
            if let Some(ca) = &self.tls_ca {
                tls = tls.ca_certificate(Certificate::from_pem(read(ca, "--tls-ca")?));
            }
            if let (Some(cert), Some(key)) = (&self.tls_client_cert, &self.tls_client_key) {
                tls = tls.identity(Identity::from_pem(
                    read(cert, "--tls-client-cert")?,
                    read(key, "--tls-client-key")?,
                ));
            }
            endpoint = endpoint.tls_config(tls)?;
        }
        let token =
            match &self.token {
                Some(t) => Some(format!("Bearer {t}").parse().map_err(|_| {
                    UsageError("--token has characters a header cannot carry".into())
                })?),
                None => None,
            };
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("cannot reach the coordinator at {}", self.addr))?;
        Ok((channel, Bearer(token)))
    }
}

/// The coordinator's URI from `--addr`: `http://host:port`,
/// `https://host:port`, or `host:port` (what `serve --listen` takes and
/// prints) meaning `http://`.
pub fn coordinator_uri(addr: &str) -> Result<String, UsageError> {
    let bad = |why: &str| {
        UsageError(format!(
            "--addr {addr:?} {why}; give host:port, http://host:port or https://host:port"
        ))
    };
    let uri = match addr.split_once("://") {
        Some(("http" | "https", _)) => addr.to_string(),
        Some((scheme, _)) => return Err(bad(&format!("has the scheme {scheme:?}"))),
        None => format!("http://{addr}"),
    };
    let parsed: http::Uri = uri.parse().map_err(|_| bad("is not an address"))?;
    match (parsed.host(), parsed.port_u16()) {
        (Some(host), Some(_)) if !host.is_empty() => {}
        (_, None) => return Err(bad("has no port")),
        _ => return Err(bad("has no host")),
    }
    if parsed.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err(bad("has a path"));
    }
    Ok(uri)
}

/// A mistake in how the command was called (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// The process exit code for a failed command.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    for cause in error.chain() {
        if cause.is::<UsageError>() {
            return 2;
        }
        if let Some(status) = cause.downcast_ref::<tonic::Status>() {
            return match status.code() {
                tonic::Code::NotFound => 3,
                tonic::Code::InvalidArgument => 2,
                _ => 1,
            };
        }
    }
    1
}

/// A one-line message for a person: the server's own message for a gRPC
/// error, the whole cause chain otherwise.
pub fn describe(error: &anyhow::Error) -> String {
    for cause in error.chain() {
        if let Some(status) = cause.downcast_ref::<tonic::Status>() {
            return match status.code() {
                tonic::Code::Unavailable => {
                    format!("coordinator unavailable: {}", status.message())
                }
                _ => status.message().to_string(),
            };
        }
    }
    format!("{error:#}")
}

/// Asks "question [y/N]" on a terminal; elsewhere (scripts) or with `--yes`
/// it goes ahead.
pub fn confirm(question: &str, yes: bool) -> anyhow::Result<()> {
    if yes || !std::io::stdin().is_terminal() {
        return Ok(());
    }
    let mut stderr = std::io::stderr();
    write!(stderr, "{question} [y/N] ")?;
    stderr.flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        bail!("cancelled; nothing was changed")
    }
}

#[cfg(test)]
mod tests {
    use super::coordinator_uri;

    #[test]
    fn addr_takes_what_serve_listen_takes_and_says_what_is_wrong() {
        assert_eq!(
            coordinator_uri("127.0.0.1:7089").ok().as_deref(),
            Some("http://127.0.0.1:7089")
        );
        assert_eq!(
            coordinator_uri("[::1]:7089").ok().as_deref(),
            Some("http://[::1]:7089")
        );
        assert_eq!(
            coordinator_uri("https://a.example:443").ok().as_deref(),
            Some("https://a.example:443")
        );
        for (bad, says) in [
            ("ftp://h:1", "scheme"),
            ("localhost", "no port"),
            ("http://:80", "host"),
            ("h:1/x", "path"),
            ("h:port", "port"),
            ("h/:1 x", "address"),
        ] {
            let e = coordinator_uri(bad).err().map(|e| e.0).unwrap_or_default();
            assert!(e.contains(says), "{bad}: {e}");
            assert!(e.contains("host:port"), "{bad}: says what works: {e}");
        }
    }
}
