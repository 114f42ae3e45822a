//! Checks of everything a client sends, with messages that say what is wrong.

use std::time::Duration;

use crate::config::Config;
use crate::driver::DriverError;

const MAX_ID_LEN: usize = 128;
const MAX_RESOURCE_LEN: usize = 256;

/// What a client asks one branch to be, before validation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BranchSpec {
    pub participant: String,
    pub resource: String,
    pub payload: Vec<u8>,
    /// 0 means the server default.
    pub call_timeout_ms: u64,
}

fn invalid(msg: String) -> DriverError {
    DriverError::InvalidArgument(msg)
}

/// Ids (of transactions and client-chosen branches): 1-128 chars of `[A-Za-z0-9._:-]`.
pub fn id(what: &str, value: &str) -> Result<(), DriverError> {
    if value.is_empty() {
        return Err(invalid(format!("{what} is empty")));
    }
    if value.len() > MAX_ID_LEN {
        return Err(invalid(format!(
            "{what} is {} bytes long; the limit is {MAX_ID_LEN}",
            value.len()
        )));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        return Err(invalid(format!(
            "{what} {value:?} contains {bad:?}; use only letters, digits and . _ : -"
        )));
    }
    Ok(())
}

/// A transaction id a client chooses in `Begin`/`Execute`: an [`id`] not in
/// the server's reserved form (see `driver::ids`).
pub fn client_txn_id(value: &str) -> Result<(), DriverError> {
    id("txn_id", value)?;
    if crate::driver::ids::is_reserved(value) {
        return Err(invalid(format!(
            "txn_id {value:?} begins with '{}', which is reserved for ids the server \
             generates; leave txn_id empty to get one, or choose another",
            crate::driver::ids::SERVER_PREFIX
        )));
    }
    Ok(())
}

/// A timeout in ms, 0 meaning `default`, at most `max`.
pub fn timeout(what: &str, ms: u64, default: Duration, max: Duration) -> Result<u64, DriverError> {
    if ms == 0 {
        return Ok(default.as_millis() as u64);
    }
    let max_ms = max.as_millis() as u64;
    if ms > max_ms {
        return Err(invalid(format!(
            "{what} {ms} ms is over the limit of {max_ms} ms"
        )));
    }
    Ok(ms)
}

/// A participant endpoint: an absolute `http://host:port` URI (`https://`
/// when `tls` is set).
pub fn endpoint(uri: &str, tls: bool) -> Result<(), DriverError> {
    if uri.is_empty() {
        return Err(invalid("participant endpoint is empty".into()));
    }
    let parsed: http::Uri = uri
        .parse()
        .map_err(|e| invalid(format!("participant endpoint {uri:?} is not a URI: {e}")))?;
    match parsed.scheme_str() {
        Some("http") => {}
        Some("https") if tls => {}
        Some("https") => {
            return Err(invalid(format!(
                "participant endpoint {uri:?} uses https, but the coordinator has no \
                 --participant-tls-ca to verify participants with"
            )));
        }
        _ => {
            return Err(invalid(format!(
                "participant endpoint {uri:?} needs the scheme http://, e.g. http://127.0.0.1:9001"
            )));
        }
    }
    if parsed.host().is_none_or(str::is_empty) {
        return Err(invalid(format!("participant endpoint {uri:?} has no host")));
    }
    if !matches!(parsed.path(), "" | "/") || parsed.query().is_some() {
        return Err(invalid(format!(
            "participant endpoint {uri:?} must not have a path or query"
        )));
    }
    Ok(())
}

/// Checks one branch and fills in its call timeout default.
pub fn branch(config: &Config, spec: &mut BranchSpec) -> Result<(), DriverError> {
    endpoint(&spec.participant, config.tls.participants.is_some())?;
    if !crate::security::allowed(&config.allow_participants, &spec.participant) {
        return Err(DriverError::PermissionDenied(format!(
            "participant endpoint {:?} is not in the allowlist (--allow-participant)",
            spec.participant
        )));
    }
    if spec.resource.is_empty() {
        return Err(invalid("branch resource is empty".into()));
    }
    if spec.resource.len() > MAX_RESOURCE_LEN || spec.resource.chars().any(char::is_control) {
        return Err(invalid(format!(
            "branch resource must be at most {MAX_RESOURCE_LEN} bytes without control characters"
        )));
    }
    if spec.payload.len() > config.max_payload_bytes {
        return Err(invalid(format!(
            "branch payload is {} bytes; the limit is {} bytes",
            spec.payload.len(),
            config.max_payload_bytes
        )));
    }
    spec.call_timeout_ms = timeout(
        "call_timeout_ms",
        spec.call_timeout_ms,
        config.default_call_timeout,
        config.max_call_timeout,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(r: Result<(), DriverError>) -> String {
        match r {
            Err(DriverError::InvalidArgument(m)) => m,
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    #[test]
    fn endpoints_must_be_plain_http_host_port() {
        assert!(endpoint("http://127.0.0.1:9001", false).is_ok());
        assert!(endpoint("http://accounts.internal:80/", false).is_ok());
        assert!(message(endpoint("", false)).contains("empty"));
        assert!(message(endpoint("127.0.0.1:9001", false)).contains("http://"));
        assert!(message(endpoint("ftp://x:1", false)).contains("http://"));
        assert!(message(endpoint("http://x:1/api", false)).contains("path"));
        assert!(message(endpoint("http://exa mple:1", false)).contains("not a URI"));
        assert!(message(endpoint("https://x:1", false)).contains("https"));
    }

    #[test]
    fn ids_are_short_and_plain() {
        assert!(id("txn_id", "order-42:payment.v1").is_ok());
        assert!(message(id("txn_id", "")).contains("empty"));
        assert!(message(id("txn_id", "a/b")).contains("'/'"));
        assert!(message(id("txn_id", &"x".repeat(129))).contains("limit"));
    }

    #[test]
    fn branches_get_defaults_and_limits() {
        let config = Config::default();
        let mut spec = BranchSpec {
            participant: "http://127.0.0.1:1".into(),
            resource: "account.debit".into(),
            payload: vec![0; 10],
            call_timeout_ms: 0,
        };
        assert!(branch(&config, &mut spec).is_ok());
        assert_eq!(spec.call_timeout_ms, 5_000);
        spec.payload = vec![0; config.max_payload_bytes + 1];
        assert!(message(branch(&config, &mut spec)).contains("payload"));
        spec.payload.clear();
        spec.resource.clear();
        assert!(message(branch(&config, &mut spec)).contains("resource"));
        spec.resource = "r".into();
        spec.call_timeout_ms = 10_000_000;
        assert!(message(branch(&config, &mut spec)).contains("call_timeout_ms"));
    }
}
