//! Participants over plain HTTP/JSON (branches registered with
//! `PROTOCOL_HTTP_JSON`): each call is a POST of a JSON body to
//! `<base>/<call>` (`prepare`, `commit`, `rollback`, `try`, `confirm`,
//! `cancel`, `action`, `compensate`), and the answer's status and body are
//! read by one table (README, "Participants over HTTP"), the same meanings
//! as the gRPC one. One pooled client (connection reuse), the participant
//! TLS settings for `https://`, the call timeout, and `Retry-After` kept as
//! a hint for the next retry.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use tokio_rustls::rustls;

use super::participants::{CallSpec, Phase1Result, Phase2Result};
use super::validate;
use crate::engine::{MAX_RESULT, VoteResult};

/// The largest answer body read; a larger one is a broken answer.
const MAX_BODY: usize = 64 * 1024;
/// `Retry-After` hints held at most (a bound, should retries never come).
const MAX_HINTS: usize = 100_000;

/// A status that is a definitive NO in phase 1.
fn definitive(code: u16) -> bool {
    matches!(code, 400 | 409 | 422)
}

/// What an HTTP participant answered.
#[derive(Debug, PartialEq)]
pub enum Answer {
    /// A 2xx status: the body as JSON, `None` when empty, `Err` when it is
    /// not JSON.
    Ok(Option<Result<serde_json::Value, String>>),
    /// Another status: what it said, and its `Retry-After`.
    Status {
        code: u16,
        said: String,
        retry_after: Option<Duration>,
    },
    /// No answer: unreachable, timed out, or cut off.
    Failed(String),
}

pub struct HttpCaller {
    /// `Err` says why the client could not be set up (every call fails
    /// with it).
    client: Result<Client<HttpsConnector<HttpConnector>, Full<Bytes>>, String>,
    /// `Retry-After` of the last refused call of a branch, taken by the
    /// retry that follows it.
    hints: Mutex<HashMap<(String, String), Duration>>,
    /// Calls in flight to each participant host (`host:port`), at most
    /// [`PER_HOST`]: a slow participant cannot make the coordinator open a
    /// socket per call without bound.
    per_host: Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
    limit: usize,
}

/// Calls in flight to one participant host at most; more wait (within
/// the call timeout) and are then retried.
const PER_HOST: usize = 256;

/// A TLS configuration that trusts nothing: with no participant CA,
/// `https://` endpoints are refused at registration anyway.
fn untrusting() -> Result<rustls::ClientConfig, String> {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map(|b| {
            b.with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        })
        .map_err(|e| format!("cannot set up TLS for HTTP participants: {e}"))
}

impl HttpCaller {
    /// A client; `tls` trusts the participant CA (and presents the
    /// coordinator's certificate) for `https://` endpoints.
    pub fn new(tls: Option<Arc<rustls::ClientConfig>>) -> HttpCaller {
        Self::with_limit(tls, PER_HOST)
    }

    /// Like [`HttpCaller::new`], with `per_host` calls in flight to one
    /// host at most.
    pub fn with_limit(tls: Option<Arc<rustls::ClientConfig>>, per_host: usize) -> HttpCaller {
        let client = tls
            .map_or_else(untrusting, |c| Ok((*c).clone()))
            .map(|config| {
                let mut http = HttpConnector::new();
                http.enforce_http(false);
                http.set_nodelay(true);
                http.set_connect_timeout(Some(Duration::from_secs(3)));
                let https = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(config)
                    .https_or_http()
                    .enable_http1()
                    .wrap_connector(http);
                Client::builder(TokioExecutor::new())
                    // Without a timer idle connections would never expire.
                    .pool_timer(hyper_util::rt::TokioTimer::new())
                    .pool_idle_timeout(Duration::from_secs(90))
                    .pool_max_idle_per_host(64)
                    .build(https)
            });
        if let Err(e) = &client {
            tracing::error!(error = %e, "HTTP participants cannot be called");
        }
        HttpCaller {
            client,
            hints: Mutex::new(HashMap::new()),
            per_host: Mutex::new(HashMap::new()),
            limit: per_host.max(1),
        }
    }

    /// POSTs the call to `<base>/<call>` and reads the answer, within the
    /// call timeout.
    pub async fn call(&self, spec: &CallSpec) -> Answer {
        let rpc = spec.call.rpc_name(spec.mode);
        let url = format!("{}/{rpc}", spec.participant.trim_end_matches('/'));
        let mut body = serde_json::json!({
            "txn_id": spec.txn_id,
            "branch_id": spec.branch_id,
            "resource": spec.resource,
            "call": rpc,
            "attempt": spec.attempt,
            "payload": base64::engine::general_purpose::STANDARD.encode(&spec.payload),
        });
        if spec.json_payload
            && let Ok(value) = serde_json::from_slice::<serde_json::Value>(&spec.payload)
        {
            body["payload_json"] = value;
        }
        let mut request = http::Request::post(&url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::USER_AGENT, "arbiter");
        if !spec.traceparent.is_empty() {
            request = request.header("traceparent", &spec.traceparent);
        }
        let request = match request.body(Full::new(Bytes::from(body.to_string()))) {
            Ok(request) => request,
            Err(e) => return Answer::Failed(format!("{rpc}: cannot make the request: {e}")),
        };
        let client = match &self.client {
            Ok(client) => client,
            Err(why) => return Answer::Failed(why.clone()),
        };
        let started = tokio::time::Instant::now();
        let Ok(Ok(_turn)) =
            tokio::time::timeout(spec.timeout, self.host(&url).acquire_owned()).await
        else {
            return Answer::Failed(format!(
                "{rpc}: {} calls to this participant are already in flight; retried",
                self.limit
            ));
        };
        let left = spec.timeout.saturating_sub(started.elapsed());
        let exchange = async {
            let response = client
                .request(request)
                .await
                .map_err(|e| format!("{rpc} to {url} failed: {}", error_chain(&e)))?;
            let status = response.status();
            let retry_after = response
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let body = match Limited::new(response.into_body(), MAX_BODY).collect().await {
                Ok(body) => Ok(body.to_bytes()),
                Err(e) => Err(format!(
                    "{rpc}: the answer broke off or is over {MAX_BODY} bytes: {e}"
                )),
            };
            Ok::<_, String>((status, retry_after, body))
        };
        let (status, retry_after, body) = match tokio::time::timeout(left, exchange).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => return Answer::Failed(e),
            Err(_) => {
                return Answer::Failed(format!(
                    "{rpc} timed out after {} ms",
                    spec.timeout.as_millis()
                ));
            }
        };
        if status.is_success() {
            // A 2xx whose body cannot be read still says the call was
            // done; phase 1 reads it as no vote.
            let body = match body {
                Ok(body) => body,
                Err(why) => return Answer::Ok(Some(Err(why))),
            };
            if body.iter().all(u8::is_ascii_whitespace) {
                return Answer::Ok(None);
            }
            return Answer::Ok(Some(
                serde_json::from_slice(&body)
                    .map_err(|e| format!("{rpc}: the answer is not JSON: {e}")),
            ));
        }
        let body = match body {
            Ok(body) => body,
            Err(why) => return Answer::Failed(why),
        };
        let code = status.as_u16();
        // Kept only where a retry follows (not for a definitive NO), and
        // dropped with the transaction (`forget`).
        if let Some(after) = retry_after.filter(|_| !definitive(code)) {
            let mut hints = self.hints.lock().unwrap_or_else(|p| p.into_inner());
            if hints.len() >= MAX_HINTS {
                hints.clear();
            }
            hints.insert((spec.txn_id.clone(), spec.branch_id.clone()), after);
        }
        Answer::Status {
            code,
            said: said(&body),
            retry_after,
        }
    }

    /// The in-flight bound of the host (`host:port`) of `url`. Hosts with
    /// nothing in flight are let go of once many are held.
    fn host(&self, url: &str) -> Arc<tokio::sync::Semaphore> {
        let host = url
            .parse::<http::Uri>()
            .ok()
            .and_then(|u| u.authority().map(|a| a.as_str().to_string()))
            .unwrap_or_default();
        let mut hosts = self.per_host.lock().unwrap_or_else(|p| p.into_inner());
        if hosts.len() >= 4096 {
            hosts.retain(|_, s| s.available_permits() < self.limit);
        }
        hosts
            .entry(host)
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(self.limit)))
            .clone()
    }

    /// Drops the hints of a transaction that is done with.
    pub fn forget(&self, txn_id: &str) {
        self.hints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(txn, _), _| txn != txn_id);
    }

    /// The `Retry-After` the last refused call of this branch asked for.
    pub fn take_hint(&self, txn_id: &str, branch_id: &str) -> Option<Duration> {
        self.hints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(txn_id.to_string(), branch_id.to_string()))
    }
}

/// What a refusal's body says: its `reason` or `error`, or its text.
fn said(body: &[u8]) -> String {
    let text = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) => ["reason", "error", "message"]
            .iter()
            .find_map(|k| v.get(k).and_then(|s| s.as_str()).map(str::to_string))
            .unwrap_or_else(|| v.to_string()),
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    };
    validate::truncated(text.trim().to_string())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// A 2xx body's `result` (a string), checked against the limit.
fn result_of(body: &serde_json::Value) -> Result<Vec<u8>, usize> {
    let result = match body.get("result") {
        Some(serde_json::Value::String(s)) => s.as_bytes().to_vec(),
        Some(serde_json::Value::Null) | None => Vec::new(),
        Some(other) => other.to_string().into_bytes(),
    };
    if result.len() > MAX_RESULT {
        return Err(result.len());
    }
    Ok(result)
}

/// A phase-1 call's (prepare, try, action) answer as a vote.
pub fn phase1(rpc: &str, answer: Answer) -> Phase1Result {
    let no = |why: String| (VoteResult::No(why), Vec::new());
    match answer {
        Answer::Ok(None) => (VoteResult::Yes, Vec::new()),
        Answer::Ok(Some(Err(why))) => no(why),
        Answer::Ok(Some(Ok(body))) => {
            if !body.is_object() {
                return no(format!(
                    "{rpc} answered JSON that is not an object: no vote"
                ));
            }
            let vote = match body.get("vote").or_else(|| body.get("outcome")) {
                None => "yes".to_string(),
                Some(serde_json::Value::String(v)) => v.to_ascii_lowercase(),
                Some(other) => {
                    return no(format!(
                        "{rpc} answered a vote that is not a string: {other}"
                    ));
                }
            };
            let reason = || {
                body.get("reason")
                    .and_then(|r| r.as_str())
                    .map(|r| validate::truncated(r.to_string()))
                    .filter(|r| !r.is_empty())
                    .unwrap_or_else(|| "no reason given".to_string())
            };
            match vote.as_str() {
                "yes" | "succeeded" => match result_of(&body) {
                    Ok(result) => (VoteResult::Yes, result),
                    Err(n) => no(format!(
                        "{rpc} answered YES with a result of {n} bytes, over the {MAX_RESULT}-byte limit"
                    )),
                },
                "read_only" => (VoteResult::ReadOnly, Vec::new()),
                "no" | "failed" => no(reason()),
                "retry" => (
                    VoteResult::Transient(format!("{rpc} asked to retry: {}", reason())),
                    Vec::new(),
                ),
                other => no(format!("{rpc} answered an unknown vote {other:?}")),
            }
        }
        Answer::Status { code, said, .. } if definitive(code) => {
            no(format!("{rpc} answered HTTP {code}: {said}"))
        }
        Answer::Status { code, said, .. } => (
            VoteResult::Transient(format!("{rpc} answered HTTP {code}: {said}")),
            Vec::new(),
        ),
        Answer::Failed(why) => (VoteResult::Transient(why), Vec::new()),
    }
}

/// A phase-2 call's (commit, confirm, rollback, cancel, compensate, or a
/// must-succeed action's) answer: any 2xx acknowledges; anything else is
/// retried. A must-succeed action must also not say it failed.
pub fn phase2(rpc: &str, answer: Answer, must_succeed: bool) -> Phase2Result {
    match answer {
        Answer::Ok(body) => {
            if must_succeed {
                // A success with an oversized result still counts (the
                // result is dropped); anything else is retried.
                let oversized = matches!(&body, Some(Ok(b)) if result_of(b).is_err());
                let (vote, result) = phase1(rpc, Answer::Ok(body));
                return match vote {
                    VoteResult::Yes | VoteResult::ReadOnly => Ok(result),
                    VoteResult::No(_) if oversized => Ok(Vec::new()),
                    VoteResult::No(why) | VoteResult::Transient(why) => Err(format!(
                        "a must-succeed step's action did not succeed (retried): {why}"
                    )),
                };
            }
            let body = body.and_then(Result::ok).unwrap_or(serde_json::Value::Null);
            Ok(result_of(&body).unwrap_or_default())
        }
        Answer::Status { code, said, .. } => Err(format!("{rpc} answered HTTP {code}: {said}")),
        Answer::Failed(why) => Err(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(json: &str) -> Answer {
        Answer::Ok(Some(serde_json::from_str(json).map_err(|e| e.to_string())))
    }

    fn status(code: u16) -> Answer {
        Answer::Status {
            code,
            said: "busy".into(),
            retry_after: None,
        }
    }

    #[test]
    fn every_row_of_the_answer_table() {
        use VoteResult::*;
        let vote = |a| phase1("prepare", a).0;
        assert_eq!(vote(Answer::Ok(None)), Yes);
        assert_eq!(vote(ok(r#"{"vote":"yes"}"#)), Yes);
        assert_eq!(vote(ok(r#"{}"#)), Yes);
        assert_eq!(vote(ok(r#"{"vote":"read_only"}"#)), ReadOnly);
        assert_eq!(
            vote(ok(r#"{"vote":"no","reason":"funds"}"#)),
            No("funds".into())
        );
        assert_eq!(
            vote(ok(r#"{"outcome":"failed"}"#)),
            No("no reason given".into())
        );
        assert!(matches!(vote(ok(r#"{"vote":"retry"}"#)), Transient(_)));
        assert!(matches!(vote(ok(r#"{"vote":"maybe"}"#)), No(_)));
        assert!(matches!(
            vote(Answer::Ok(Some(Err("garbage".into())))),
            No(_)
        ));
        for code in [400, 409, 422] {
            assert!(matches!(vote(status(code)), No(_)), "{code}");
        }
        for code in [301, 401, 404, 408, 429, 500, 502, 503] {
            assert!(matches!(vote(status(code)), Transient(_)), "{code}");
        }
        assert!(matches!(
            vote(Answer::Failed("refused".into())),
            Transient(_)
        ));
        let huge = format!(
            r#"{{"vote":"yes","result":"{}"}}"#,
            "x".repeat(MAX_RESULT + 1)
        );
        assert!(matches!(vote(ok(&huge)), No(_)));
        assert_eq!(
            phase1("try", ok(r#"{"vote":"yes","result":"r-17"}"#)).1,
            b"r-17".to_vec()
        );

        assert_eq!(phase2("commit", Answer::Ok(None), false), Ok(Vec::new()));
        assert_eq!(
            phase2("commit", ok(r#"{"result":"receipt"}"#), false),
            Ok(b"receipt".to_vec())
        );
        assert_eq!(
            phase2("commit", Answer::Ok(Some(Err("garbage".into()))), false),
            Ok(Vec::new()),
            "a 2xx acknowledges whatever its body"
        );
        for code in [400, 409, 422, 500] {
            assert!(phase2("rollback", status(code), false).is_err());
        }
        assert!(phase2("action", ok(r#"{"outcome":"failed"}"#), true).is_err());
        assert!(phase2("action", ok(r#"{"outcome":"succeeded"}"#), true).is_ok());
        assert!(
            phase2("action", Answer::Ok(Some(Err("garbage".into()))), true).is_err(),
            "a must-succeed step needs a readable success"
        );
        let huge_success = format!(
            r#"{{"outcome":"succeeded","result":"{}"}}"#,
            "x".repeat(MAX_RESULT + 1)
        );
        assert_eq!(
            phase2("action", ok(&huge_success), true),
            Ok(Vec::new()),
            "an oversized result is dropped, the success counts"
        );
        for not_a_vote in [
            r#""no""#,
            "false",
            "0",
            "[]",
            "null",
            r#"{"vote":false}"#,
            r#"{"vote":0}"#,
        ] {
            assert!(matches!(vote(ok(not_a_vote)), No(_)), "{not_a_vote}");
        }
    }

    #[tokio::test]
    async fn calls_to_one_host_are_bounded() -> Result<(), Box<dyn std::error::Error>> {
        // A participant that accepts and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                open.push(stream);
            }
        });
        let caller = HttpCaller::with_limit(None, 1);
        let spec = CallSpec {
            txn_id: "t".into(),
            mode: crate::engine::Mode::TwoPhase,
            branch: 0,
            branch_id: "1".into(),
            participant: format!("http://{addr}"),
            resource: "r".into(),
            payload: Vec::new(),
            timeout: Duration::from_millis(300),
            call: crate::engine::CallKind::Prepare,
            attempt: 1,
            traceparent: String::new(),
            protocol: crate::engine::Protocol::HttpJson,
            json_payload: false,
        };
        // The second gives up waiting for its turn long before the first
        // (which holds the only one) times out.
        let hasty = CallSpec {
            timeout: Duration::from_millis(100),
            ..spec.clone()
        };
        let (first, second) = tokio::join!(caller.call(&spec), async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            caller.call(&hasty).await
        });
        assert!(
            matches!(&first, Answer::Failed(why) if why.contains("timed out")),
            "{first:?}"
        );
        assert!(
            matches!(&second, Answer::Failed(why) if why.contains("already in flight")),
            "{second:?}"
        );
        held.abort();
        Ok(())
    }

    #[test]
    fn a_refusal_says_what_its_body_says() {
        assert_eq!(said(br#"{"error":"sold out"}"#), "sold out");
        assert_eq!(said(b"plain text\n"), "plain text");
    }
}
