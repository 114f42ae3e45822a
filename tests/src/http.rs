//! A tiny HTTP/1.1 client for tests of the web console: one request per
//! connection, the whole answer read back (chunked bodies decoded).

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The value of `<input ... name="NAME" value="...">` in the body.
    pub fn input(&self, name: &str) -> Option<String> {
        let marker = format!("name=\"{name}\" value=\"");
        let start = self.body.find(&marker)? + marker.len();
        let end = self.body[start..].find('"')? + start;
        Some(self.body[start..end].to_string())
    }
}

/// `method path` at `addr` (host:port), with a cookie and a form body.
pub async fn request(
    addr: &str,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    form: Option<&str>,
) -> anyhow::Result<Answer> {
    let typed = form.map(|f| ("application/x-www-form-urlencoded", f));
    send(addr, method, path, cookie, typed).await
}

/// `method path` with a JSON body (WebDriver).
pub async fn request_json(
    addr: &str,
    method: &str,
    path: &str,
    json: Option<&serde_json::Value>,
) -> anyhow::Result<serde_json::Value> {
    let body = json.map(serde_json::Value::to_string);
    let typed = body
        .as_deref()
        .map(|b| ("application/json; charset=utf-8", b));
    let answer = send(addr, method, path, None, typed).await?;
    let value: serde_json::Value = serde_json::from_str(&answer.body)
        .map_err(|e| anyhow::anyhow!("{method} {path}: {e}: {}", answer.body))?;
    anyhow::ensure!(
        answer.status == 200,
        "{method} {path}: HTTP {}: {value}",
        answer.status
    );
    Ok(value)
}

/// `method path` at `addr` over HTTPS, trusting only `ca_pem` (the server's
/// certificate must name 127.0.0.1).
pub async fn request_tls(
    addr: &str,
    ca_pem: &str,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    form: Option<&str>,
) -> anyhow::Result<Answer> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from("127.0.0.1")?.to_owned();
    let stream = connector.connect(name, tcp).await?;
    let typed = form.map(|f| ("application/x-www-form-urlencoded", f));
    exchange(stream, addr, method, path, cookie, typed).await
}

async fn send(
    addr: &str,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    typed: Option<(&str, &str)>,
) -> anyhow::Result<Answer> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    exchange(stream, addr, method, path, cookie, typed).await
}

async fn exchange(
    mut stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    addr: &str,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    typed: Option<(&str, &str)>,
) -> anyhow::Result<Answer> {
    let body = typed.map_or("", |(_, b)| b);
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(c) = cookie {
        head.push_str(&format!("Cookie: {c}\r\n"));
    }
    if let Some((content_type, _)) = typed {
        head.push_str(&format!(
            "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    // Read the head, then exactly the body: some servers keep the
    // connection open whatever the request asked.
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let split = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = stream.read(&mut buf).await?;
        anyhow::ensure!(n > 0, "the connection closed before the end of the headers");
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let value = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.to_ascii_lowercase())
    };
    let mut rest = raw[split + 4..].to_vec();
    if let Some(length) = value("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while rest.len() < length {
            let n = stream.read(&mut buf).await?;
            anyhow::ensure!(n > 0, "the connection closed in the body");
            rest.extend_from_slice(&buf[..n]);
        }
        rest.truncate(length);
    } else if value("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        while !rest.windows(5).any(|w| w == b"0\r\n\r\n") {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            rest.extend_from_slice(&buf[..n]);
        }
        rest = dechunk(&rest);
    } else if status != 204 && status != 304 {
        stream.read_to_end(&mut rest).await?;
    }
    Ok(Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&rest).to_string(),
    })
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&data[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = eol + 2;
        let end = (start + size).min(data.len());
        out.extend_from_slice(&data[start..end]);
        data = data.get(end + 2..).unwrap_or_default();
    }
    out
}

/// Percent-encodes a form value.
pub fn form_value(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
