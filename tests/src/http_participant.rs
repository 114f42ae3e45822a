//! HTTP/JSON participants for tests: the example bank services in Python and
//! Node (`examples/http/`) as child processes, and a scripted participant
//! that answers each call as the test says (a status, a body, a delay, or
//! nothing at all) and records what it was sent.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::http::request;

/// An example bank service (`bank.py` or `bank.js`), killed when dropped.
pub struct ExampleBank {
    child: Child,
    pub addr: String,
}

impl ExampleBank {
    /// Starts `examples/http/<script>` with `interpreter` and `accounts`
    /// ("alice=100,bob=50"); waits until it answers.
    pub async fn start(interpreter: &str, script: &str, accounts: &str) -> anyhow::Result<Self> {
        let port = crate::process::free_port()?;
        let path = format!("{}/../examples/http/{script}", env!("CARGO_MANIFEST_DIR"));
        let child = Command::new(interpreter)
            .args([&path, "--port", &port.to_string(), "--accounts", accounts])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()?;
        let bank = ExampleBank {
            child,
            addr: format!("127.0.0.1:{port}"),
        };
        let addr = bank.addr.clone();
        crate::eventually(&format!("{script} answers"), || async {
            request(&addr, "GET", "/balances", None, None)
                .await
                .ok()
                .filter(|a| a.status == 200)
        })
        .await;
        Ok(bank)
    }

    /// The base URL to register branches with.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn balances(&self) -> anyhow::Result<HashMap<String, i64>> {
        let answer = request(&self.addr, "GET", "/balances", None, None).await?;
        Ok(serde_json::from_str(&answer.body)?)
    }

    /// Branches holding work until phase 2.
    pub async fn held(&self) -> anyhow::Result<i64> {
        let answer = request(&self.addr, "GET", "/pending", None, None).await?;
        let value: serde_json::Value = serde_json::from_str(&answer.body)?;
        Ok(value["held"].as_i64().unwrap_or(-1))
    }
}

impl Drop for ExampleBank {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `program` runs here (`node`, `python3`).
pub fn available(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// How the scripted participant answers one call.
#[derive(Clone, Debug)]
pub enum Reply {
    /// This status and body (JSON or not), with extra headers.
    Say {
        status: u16,
        body: String,
        headers: Vec<(String, String)>,
    },
    /// After a pause, this reply.
    After(Duration, Box<Reply>),
    /// Never answers (holds the connection).
    Hang,
    /// Closes the connection without a word.
    Hangup,
}

impl Reply {
    pub fn ok(body: &str) -> Reply {
        Reply::Say {
            status: 200,
            body: body.to_string(),
            headers: Vec::new(),
        }
    }

    pub fn status(status: u16, body: &str) -> Reply {
        Reply::Say {
            status,
            body: body.to_string(),
            headers: Vec::new(),
        }
    }
}

/// One call the scripted participant received.
#[derive(Clone, Debug)]
pub struct Received {
    /// The last path segment: `prepare`, `commit`, ...
    pub call: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: serde_json::Value,
    pub at: std::time::Instant,
}

type Script = Arc<Mutex<HashMap<String, Vec<Reply>>>>;

/// A participant that answers each call (by its last path segment) with
/// the next reply scripted for it, then with `{"vote":"yes"}`.
pub struct Scripted {
    pub addr: String,
    script: Script,
    received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Scripted {
    pub async fn start() -> anyhow::Result<Scripted> {
        Self::start_with(None).await
    }

    /// Over TLS with `config` (which may require client certificates).
    pub async fn start_tls(
        config: Arc<tokio_rustls::rustls::ServerConfig>,
    ) -> anyhow::Result<Scripted> {
        Self::start_with(Some(tokio_rustls::TlsAcceptor::from(config))).await
    }

    async fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> anyhow::Result<Scripted> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let script: Script = Arc::default();
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let (s, r) = (script.clone(), received.clone());
        let scheme = if tls.is_some() { "https" } else { "http" };
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (s, r, tls) = (s.clone(), r.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        None => serve(stream, s, r).await,
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                serve(stream, s, r).await;
                            }
                        }
                    }
                });
            }
        });
        Ok(Scripted {
            addr: format!("{scheme}://{addr}"),
            script,
            received,
            task,
        })
    }

    pub fn base(&self) -> String {
        format!("{}/arbiter", self.addr)
    }

    /// The next calls named `call` get `replies`, in order.
    pub fn script(&self, call: &str, replies: Vec<Reply>) {
        self.script
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(call.to_string())
            .or_default()
            .extend(replies);
    }

    /// Drops the replies still scripted for `call`.
    pub fn clear(&self, call: &str) {
        self.script
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(call);
    }

    /// Every call received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The calls (`prepare`, `commit`, ...) of one transaction, in order.
    pub fn calls(&self, txn_id: &str) -> Vec<String> {
        self.received()
            .into_iter()
            .filter(|r| r.body["txn_id"] == txn_id)
            .map(|r| r.call)
            .collect()
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    mut stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    script: Script,
    received: Arc<Mutex<Vec<Received>>>,
) {
    loop {
        // One request: head, then Content-Length bytes.
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        let split = loop {
            if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
        };
        let head = String::from_utf8_lossy(&raw[..split]).to_string();
        let mut lines = head.lines();
        let path = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("/")
            .to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = raw[split + 4..].to_vec();
        while body.len() < length {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => body.extend_from_slice(&buf[..n]),
            }
        }
        let call = path.rsplit('/').next().unwrap_or("").to_string();
        received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Received {
                call: call.clone(),
                path: path.clone(),
                headers,
                body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
                at: std::time::Instant::now(),
            });
        let reply = {
            let mut script = script.lock().unwrap_or_else(|p| p.into_inner());
            match script.get_mut(&call) {
                Some(replies) if !replies.is_empty() => replies.remove(0),
                _ => Reply::ok(r#"{"vote":"yes"}"#),
            }
        };
        if !answer(&mut stream, reply).await {
            return;
        }
    }
}

/// Sends `reply`; false when the connection is done with.
async fn answer(stream: &mut (impl tokio::io::AsyncWrite + Unpin), mut reply: Reply) -> bool {
    loop {
        match reply {
            Reply::After(pause, next) => {
                tokio::time::sleep(pause).await;
                reply = *next;
            }
            Reply::Hang => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return false;
            }
            Reply::Hangup => return false,
            Reply::Say {
                status,
                body,
                headers,
            } => {
                let mut head = format!(
                    "HTTP/1.1 {status} Scripted\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
                    body.len()
                );
                for (k, v) in headers {
                    head.push_str(&format!("{k}: {v}\r\n"));
                }
                head.push_str("\r\n");
                return stream.write_all(head.as_bytes()).await.is_ok()
                    && stream.write_all(body.as_bytes()).await.is_ok();
            }
        }
    }
}
