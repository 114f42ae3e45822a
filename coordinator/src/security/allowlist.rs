//! The participant endpoint allowlist: which `http(s)://host:port` a client
//! may register as a branch. Without it the coordinator would call any
//! address a client names (server-side request forgery).
//!
//! Patterns:
//! - `host:port`, `host:*` or `host` (any port), for a DNS name or an IP;
//! - `*.example.com:port`: any name under `example.com`;
//! - `10.0.0.0/8`, `10.0.0.0/8:7100`, `[fd00::/8]:*`: addresses in a CIDR
//!   block (IPv6 in brackets when a port follows).
//!
//! Names are compared as written, never resolved: to allow by address, list
//! the addresses clients will register.

use std::net::IpAddr;

/// One allowlist entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointPattern {
    host: HostPattern,
    /// `None`: any port.
    port: Option<u16>,
    text: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum HostPattern {
    Name(String),
    /// `*.suffix`: matches `a.suffix`, `a.b.suffix`, not `suffix` itself.
    Suffix(String),
    Net {
        addr: IpAddr,
        prefix: u8,
    },
}

impl std::fmt::Display for EndpointPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for EndpointPattern {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("bad participant pattern {text:?}: {why}");
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (host, after) = rest.split_once(']').ok_or_else(|| bad("missing ']'"))?;
            match after {
                "" => (host, None),
                _ => (
                    host,
                    Some(
                        after
                            .strip_prefix(':')
                            .ok_or_else(|| bad("expected ':' after ']'"))?,
                    ),
                ),
            }
        } else if text.matches(':').count() > 1 {
            (text, None) // a bare IPv6 address or block
        } else {
            match text.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (text, None),
            }
        };
        let port = match port {
            None | Some("*") => None,
            Some(p) => Some(
                p.parse::<u16>()
                    .map_err(|_| bad("the port must be a number or *"))?,
            ),
        };
        let host = if let Some((addr, prefix)) = host.split_once('/') {
            let addr: IpAddr = addr.parse().map_err(|_| bad("not an IP network"))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let prefix: u8 = prefix
                .parse()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| bad("bad prefix length"))?;
            HostPattern::Net { addr, prefix }
        } else if let Ok(addr) = host.parse::<IpAddr>() {
            let prefix = if addr.is_ipv4() { 32 } else { 128 };
            HostPattern::Net { addr, prefix }
        } else if let Some(suffix) = host.strip_prefix("*.") {
            if suffix.is_empty() {
                return Err(bad("empty domain after '*.'"));
            }
            HostPattern::Suffix(suffix.to_ascii_lowercase())
        } else if host.is_empty() || host.contains(['*', '/', ' ']) {
            return Err(bad("expected a host name, an IP, or a CIDR block"));
        } else {
            HostPattern::Name(host.to_ascii_lowercase())
        };
        Ok(EndpointPattern {
            host,
            port,
            text: text.to_string(),
        })
    }
}

impl EndpointPattern {
    fn matches(&self, host: &str, port: u16) -> bool {
        if self.port.is_some_and(|p| p != port) {
            return false;
        }
        match &self.host {
            HostPattern::Name(name) => host.eq_ignore_ascii_case(name),
            HostPattern::Suffix(suffix) => {
                let host = host.to_ascii_lowercase();
                host.len() > suffix.len() + 1
                    && host.ends_with(suffix.as_str())
                    && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
            }
            HostPattern::Net { addr, prefix } => host
                .parse::<IpAddr>()
                .is_ok_and(|ip| in_network(ip, *addr, *prefix)),
        }
    }
}

fn in_network(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

/// Whether `endpoint` (an already validated `http(s)://host:port` URI) is
/// allowed. An empty allowlist allows everything.
pub fn allowed(patterns: &[EndpointPattern], endpoint: &str) -> bool {
    if patterns.is_empty() {
        return true;
    }
    let Ok(uri) = endpoint.parse::<http::Uri>() else {
        return false;
    };
    let Some(host) = uri.host() else { return false };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    patterns.iter().any(|p| p.matches(host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(patterns: &[&str]) -> Vec<EndpointPattern> {
        patterns.iter().filter_map(|p| p.parse().ok()).collect()
    }

    #[test]
    fn patterns_match_hosts_ports_and_networks() {
        let allow = list(&[
            "accounts.internal:7100",
            "*.bank.svc:*",
            "10.1.0.0/16",
            "127.0.0.1:9000",
            "[fd00::/8]:7200",
        ]);
        assert_eq!(allow.len(), 5);
        for ok in [
            "http://accounts.internal:7100",
            "http://ACCOUNTS.internal:7100",
            "http://east.bank.svc:1",
            "https://a.b.bank.svc",
            "http://10.1.200.3:80",
            "http://127.0.0.1:9000",
            "http://[fd12::1]:7200",
        ] {
            assert!(allowed(&allow, ok), "{ok} should be allowed");
        }
        for refused in [
            "http://accounts.internal:7101",
            "http://bank.svc:1",
            "http://evilbank.svc:1",
            "http://10.2.0.1:80",
            "http://127.0.0.1:9001",
            "http://169.254.169.254:80",
            "http://[fe80::1]:7200",
            "http://[fd12::1]:7201",
        ] {
            assert!(!allowed(&allow, refused), "{refused} should be refused");
        }
        assert!(allowed(&[], "http://anything:1"), "no list: everything");
    }

    #[test]
    fn bad_patterns_are_refused_with_the_reason() {
        for bad in [
            "",
            "*",
            "host:port",
            "10.0.0.0/33",
            "[fd00::/8",
            "*.:80",
            "a b",
        ] {
            let err = bad.parse::<EndpointPattern>().err();
            assert!(err.is_some(), "{bad:?} should not parse");
        }
        assert!("fd00::1".parse::<EndpointPattern>().is_ok());
    }
}
