//! A minimal HTTP/1.1 client for webhook POSTs: one request per connection
//! (`Connection: close`), a deadline on the whole exchange, and only the
//! status line read back. Plain `http://` only.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An `http://host:port/path` endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `host:port`, as connected to and sent in `Host`.
    pub authority: String,
    pub path: String,
    /// As configured (for logs and the allowlist).
    pub url: String,
}

impl std::str::FromStr for Endpoint {
    type Err = String;

    fn from_str(url: &str) -> Result<Endpoint, String> {
        let bad = |why: &str| format!("bad --notify-url {url:?}: {why}");
        if url.starts_with("https://") {
            return Err(bad(
                "https:// is not supported yet; use http:// (to a relay on the same host or network)",
            ));
        }
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| bad("it must start with http://"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(bad("it needs a host (and no user info)"));
        }
        let authority = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        if path.chars().any(|c| c.is_control() || c == ' ') {
            return Err(bad("the path holds spaces or control characters"));
        }
        Ok(Endpoint {
            authority,
            path: path.to_string(),
            url: url.to_string(),
        })
    }
}

/// POSTs `body` with `headers`; returns the status code.
pub async fn post(
    endpoint: &Endpoint,
    headers: &[(&str, String)],
    body: &[u8],
    timeout: Duration,
) -> Result<u16, String> {
    tokio::time::timeout(timeout, exchange(endpoint, headers, body))
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}

async fn exchange(
    endpoint: &Endpoint,
    headers: &[(&str, String)],
    body: &[u8],
) -> Result<u16, String> {
    let mut stream = TcpStream::connect(&endpoint.authority)
        .await
        .map_err(|e| format!("connecting to {}: {e}", endpoint.authority))?;
    let mut head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nUser-Agent: arbiter\r\n",
        endpoint.path,
        endpoint.authority,
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    stream
        .write_all(&request)
        .await
        .map_err(|e| format!("sending: {e}"))?;
    // The status line is all we need: "HTTP/1.1 204 No Content".
    let mut answer = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    while !answer.contains(&b'\n') && answer.len() < 4096 {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("reading the answer: {e}"))?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&answer);
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|_| line.starts_with("HTTP/1."))
        .ok_or_else(|| "the answer is not HTTP".to_string())?;
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_or_are_refused_with_a_reason() {
        let e: Endpoint = "http://hooks.local:8080/arbiter?x=1"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(e.authority, "hooks.local:8080");
        assert_eq!(e.path, "/arbiter?x=1");
        let e: Endpoint = "http://hooks.local"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (e.authority.as_str(), e.path.as_str()),
            ("hooks.local:80", "/")
        );
        assert!("https://x:1/".parse::<Endpoint>().is_err());
        assert!("ftp://x:1/".parse::<Endpoint>().is_err());
        assert!("http://u@x:1/".parse::<Endpoint>().is_err());
        assert!("http://x:1/a b".parse::<Endpoint>().is_err());
    }
}
