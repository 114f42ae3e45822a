//! Checks of everything a client sends, with messages that say what is wrong.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::config::Config;
use crate::driver::DriverError;

const MAX_ID_LEN: usize = 128;
const MAX_RESOURCE_LEN: usize = 256;
/// The longest reason a client or operator may give (Rollback, force,
/// resolve), and the most of a participant's reason or error that is kept.
pub const MAX_REASON_BYTES: usize = 1024;

/// What a client asks one branch to be, before validation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BranchSpec {
    pub participant: String,
    pub resource: String,
    pub payload: Vec<u8>,
    /// 0 means the server default.
    pub call_timeout_ms: u64,
    /// Saga steps only (see `engine::saga`).
    pub depends_on: Vec<String>,
    pub start_at_once: bool,
    pub must_succeed: bool,
    pub protocol: crate::engine::Protocol,
    /// HTTP/JSON only: send the payload as JSON too.
    pub json_payload: bool,
}

/// The longest HTTP/JSON participant base URL.
const MAX_HTTP_BASE: usize = 2048;

/// Steps one saga step may name in `depends_on`.
const MAX_DEPENDS_ON: usize = 64;

impl BranchSpec {
    /// The engine's branch `id` for this (checked) spec.
    pub fn into_branch(self, id: String) -> crate::engine::Branch {
        let mut branch = crate::engine::Branch::new(
            id,
            self.participant,
            self.resource,
            self.payload,
            self.call_timeout_ms,
        );
        branch.depends_on = self.depends_on;
        branch.start_at_once = self.start_at_once;
        branch.must_succeed = self.must_succeed;
        branch.protocol = self.protocol;
        branch.json_payload = self.json_payload;
        branch
    }
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

/// A reason a client or operator gives: at most [`MAX_REASON_BYTES`].
pub fn reason(value: &str) -> Result<(), DriverError> {
    if value.len() > MAX_REASON_BYTES {
        return Err(invalid(format!(
            "the reason is {} bytes; the limit is {MAX_REASON_BYTES}",
            value.len()
        )));
    }
    Ok(())
}

/// A participant's reason or error as it is kept: the first
/// [`MAX_REASON_BYTES`] of it, marked when cut.
pub fn truncated(text: String) -> String {
    if text.len() <= MAX_REASON_BYTES {
        return text;
    }
    let mut end = MAX_REASON_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... [truncated from {} bytes]", &text[..end], text.len())
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
/// when `tls` is set), without user info, path or query, on a port that can
/// be dialled, and not one of `own` (this coordinator's addresses: it would
/// call itself). Returns the normalised form every later use keys on:
/// lowercase scheme and host, explicit port, no trailing slash.
pub fn endpoint(uri: &str, tls: bool, own: &[SocketAddr]) -> Result<String, DriverError> {
    if uri.is_empty() {
        return Err(invalid("participant endpoint is empty".into()));
    }
    let parsed: http::Uri = uri
        .parse()
        .map_err(|e| invalid(format!("participant endpoint {uri:?} is not a URI: {e}")))?;
    let scheme = match parsed.scheme_str().map(str::to_ascii_lowercase).as_deref() {
        Some("http") => "http",
        Some("https") if tls => "https",
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
    };
    let Some(authority) = parsed.authority() else {
        return Err(invalid(format!("participant endpoint {uri:?} has no host")));
    };
    if authority.as_str().contains('@') {
        return Err(invalid(format!(
            "participant endpoint {uri:?} has user info (before '@'); \
             give only scheme://host:port"
        )));
    }
    let host = authority.host().to_ascii_lowercase();
    if host.is_empty() {
        return Err(invalid(format!("participant endpoint {uri:?} has no host")));
    }
    // `127.1`, `2130706433`, `0x7f.1`: numeric forms the resolver reads as
    // addresses, which would slip past the checks on addresses.
    let numeric = host.starts_with("0x") || host.chars().all(|c| c.is_ascii_digit() || c == '.');
    if numeric && host.parse::<std::net::Ipv4Addr>().is_err() {
        return Err(invalid(format!(
            "participant endpoint {uri:?}: write an IPv4 address as four decimal numbers"
        )));
    }
    if !matches!(parsed.path(), "" | "/") || parsed.query().is_some() {
        return Err(invalid(format!(
            "participant endpoint {uri:?} must not have a path or query"
        )));
    }
    // The port as written (`http::Uri` reads an out-of-range one as none).
    let text = authority.as_str();
    let after_host = match text.strip_prefix('[') {
        Some(v6) => v6.split_once(']').map_or("", |(_, rest)| rest),
        None => text.split_once(':').map_or("", |(_, port)| port),
    };
    let port_text = after_host.strip_prefix(':').unwrap_or(after_host);
    let port = match port_text.parse::<u16>() {
        _ if port_text.is_empty() => {
            if scheme == "https" {
                443
            } else {
                80
            }
        }
        Ok(port) if port > 0 => port,
        _ => {
            return Err(invalid(format!(
                "participant endpoint {uri:?} has port {port_text}; a port is 1-65535"
            )));
        }
    };
    if is_own(&host, port, own) {
        return Err(invalid(format!(
            "participant endpoint {uri:?} is this coordinator's own address; \
             a participant is another service"
        )));
    }
    Ok(format!("{scheme}://{host}:{port}"))
}

/// An HTTP/JSON participant's base URL: an endpoint as [`endpoint`] checks
/// it, and a path (no query or fragment) under which the calls are posted.
pub fn http_base(uri: &str, tls: bool, own: &[SocketAddr]) -> Result<String, DriverError> {
    let parsed: http::Uri = uri
        .parse()
        .map_err(|e| invalid(format!("participant endpoint {uri:?} is not a URI: {e}")))?;
    if parsed.query().is_some() || uri.contains('#') {
        return Err(invalid(format!(
            "participant endpoint {uri:?} must not have a query or fragment"
        )));
    }
    if uri.len() > MAX_HTTP_BASE {
        return Err(invalid(format!(
            "participant endpoint is {} bytes; the limit is {MAX_HTTP_BASE}",
            uri.len()
        )));
    }
    let path = parsed.path().trim_end_matches('/');
    let lower = path.to_ascii_lowercase();
    if path.split('/').any(|part| part == ".." || part == ".")
        || lower.contains("%2e")
        || lower.contains("%2f")
        || path.contains('\\')
        || !path.chars().all(|c| c.is_ascii_graphic())
    {
        return Err(invalid(format!(
            "participant endpoint {uri:?}: a base path is plain ASCII segments, \
             without '.', '..', backslashes or encoded dots and slashes"
        )));
    }
    let (Some(scheme), Some(authority)) = (parsed.scheme_str(), parsed.authority()) else {
        return endpoint(uri, tls, own); // says what is missing
    };
    let base = endpoint(&format!("{scheme}://{authority}"), tls, own)?;
    Ok(format!("{base}{path}"))
}

/// Whether two endpoints name the same participant: equal once normalised
/// (records written before endpoints were normalised hold them as given).
pub fn same_endpoint(a: &str, b: &str) -> bool {
    a == b || {
        let normal = |e: &str| endpoint(e, true, &[]).ok();
        normal(a).is_some_and(|n| Some(n) == normal(b))
    }
}

/// Normalises the endpoints of a transaction read from the log (written,
/// perhaps, before endpoints were normalised); ones that no longer pass are
/// kept as they are.
pub fn normalise_stored(txn: &mut crate::engine::Txn) {
    for branch in &mut txn.branches {
        if let Ok(normal) = endpoint(&branch.participant, true, &[]) {
            branch.participant = normal;
        }
    }
}

/// Whether `host:port` reaches one of this coordinator's own addresses, as
/// far as can be told without DNS: the same IP (or any loopback or
/// unspecified one where the coordinator listens on all or loopback
/// addresses), or `localhost`.
fn is_own(host: &str, port: u16, own: &[SocketAddr]) -> bool {
    let ip: Option<IpAddr> = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
        .map(|ip: IpAddr| ip.to_canonical());
    let local = host == "localhost" || ip.is_some_and(|ip| ip.is_loopback() || ip.is_unspecified());
    own.iter().any(|addr| {
        addr.port() == port
            && (ip == Some(addr.ip())
                || (local && (addr.ip().is_loopback() || addr.ip().is_unspecified())))
    })
}

/// Checks one branch and fills in its call timeout default.
pub fn branch(config: &Config, spec: &mut BranchSpec) -> Result<(), DriverError> {
    let tls = config.tls.participants.is_some();
    spec.participant = match spec.protocol {
        crate::engine::Protocol::Grpc => endpoint(&spec.participant, tls, &config.own_addresses)?,
        crate::engine::Protocol::HttpJson => {
            http_base(&spec.participant, tls, &config.own_addresses)?
        }
    };
    if spec.json_payload && spec.protocol != crate::engine::Protocol::HttpJson {
        return Err(invalid(
            "payload_as_json is for PROTOCOL_HTTP_JSON branches".into(),
        ));
    }
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
    if spec.depends_on.len() > MAX_DEPENDS_ON {
        return Err(invalid(format!(
            "saga.depends_on names {} steps; the limit is {MAX_DEPENDS_ON}",
            spec.depends_on.len()
        )));
    }
    for step in &spec.depends_on {
        id("saga.depends_on", step)?;
    }
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

    fn normal(uri: &str) -> String {
        match endpoint(uri, false, &[]) {
            Ok(normal) => normal,
            Err(e) => panic!("{uri}: {e}"),
        }
    }

    fn refused(uri: &str, own: &[SocketAddr]) -> String {
        message(endpoint(uri, false, own).map(|_| ()))
    }

    #[test]
    fn endpoints_must_be_plain_http_host_port() {
        assert_eq!(normal("http://127.0.0.1:9001"), "http://127.0.0.1:9001");
        assert_eq!(
            normal("http://accounts.internal:80/"),
            "http://accounts.internal:80"
        );
        assert_eq!(
            normal("HTTP://Accounts.Internal:7100/"),
            "http://accounts.internal:7100"
        );
        assert_eq!(
            normal("http://accounts.internal"),
            "http://accounts.internal:80"
        );
        assert_eq!(normal("http://[::1]:9001"), "http://[::1]:9001");
        assert!(refused("", &[]).contains("empty"));
        assert!(refused("127.0.0.1:9001", &[]).contains("http://"));
        assert!(refused("ftp://x:1", &[]).contains("http://"));
        assert!(refused("http://x:1/api", &[]).contains("path"));
        assert!(refused("http://exa mple:1", &[]).contains("not a URI"));
        assert!(refused("https://x:1", &[]).contains("https"));
    }

    #[test]
    fn endpoints_that_can_never_work_are_refused() {
        assert!(refused("http://u1@127.0.0.1:5000", &[]).contains("user info"));
        assert!(refused("http://u:p@127.0.0.1:5000", &[]).contains("user info"));
        assert!(refused("http://127.0.0.1:0", &[]).contains("port"));
        assert!(refused("http://127.0.0.1:99999", &[]).contains("port"));
        for numeric in [
            "http://127.1:7089",
            "http://2130706433:7089",
            "http://0x7f.1:7089",
        ] {
            assert!(
                refused(numeric, &[]).contains("four decimal numbers"),
                "{numeric}"
            );
        }
        let loopback: SocketAddr = "127.0.0.1:7089".parse().unwrap_or_else(|_| unreachable!());
        let any: SocketAddr = "0.0.0.0:7089".parse().unwrap_or_else(|_| unreachable!());
        for own in [
            "http://127.0.0.1:7089",
            "http://localhost:7089",
            "http://[::1]:7089",
        ] {
            assert!(refused(own, &[loopback]).contains("own address"), "{own}");
            assert!(refused(own, &[any]).contains("own address"), "{own}");
        }
        // Another host on the same port is fine (an interface address of
        // this host is not looked up: no DNS, no interface list).
        assert!(endpoint("http://10.1.2.3:7089", false, &[any]).is_ok());
        assert!(endpoint("http://127.0.0.1:7090", false, &[loopback]).is_ok());
    }

    #[test]
    fn reasons_are_capped_and_participants_cut() {
        assert!(reason(&"r".repeat(1024)).is_ok());
        assert!(message(reason(&"r".repeat(1025))).contains("limit"));
        assert_eq!(truncated("short".into()), "short");
        let cut = truncated("é".repeat(3000));
        assert!(
            cut.len() < 1100 && cut.ends_with("[truncated from 6000 bytes]"),
            "{cut}"
        );
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
            ..BranchSpec::default()
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
