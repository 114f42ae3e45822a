//! The web console (`--console-listen`): the same power as the admin CLI,
//! visible and live, for a browser. Server-rendered HTML ([`pages`]), one
//! small embedded script, no build step, works offline.
//!
//! Security: a login form takes an admin token (may act) or a coordinator
//! token (may only look) and opens a session ([`session`]) in an HttpOnly,
//! SameSite=Strict cookie that expires; every action is a POST carrying the
//! session's CSRF token and a reason, and is written to the audit log as
//! `console:<token name>`. With no token configured the console refuses to
//! start unless `--console-insecure` is given. With `--tls-cert` the console
//! serves HTTPS with the gRPC port's settings ([`tls`]) and the cookie is
//! `Secure`.

mod actions;
mod pages;
mod session;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use crate::driver::{Driver, DriverError, ListFilter, latency};
use crate::engine::{Mode, Txn, TxnState};
use crate::security::Auth;
use session::{COOKIE, Session, Sessions};

/// `--console-listen` and `--console-insecure`.
#[derive(Clone, Debug)]
pub struct ConsoleConfig {
    pub listen: SocketAddr,
    /// Serve without tokens (anyone who reaches the port may act).
    pub insecure: bool,
    /// HTTPS, with the gRPC port's certificate, key and client CA.
    pub tls: Option<Arc<tls::rustls::ServerConfig>>,
}

pub(crate) struct Console {
    driver: Driver,
    auth: Auth,
    /// Sends actions on transactions another node drives to that node.
    forward: Arc<crate::server::forward::Forwarder>,
    sessions: Sessions,
    /// With no tokens (and `--console-insecure`): everyone is this session.
    open: Option<Session>,
    /// Finished transactions so far, sampled every [`SAMPLE`] (the charts).
    samples: std::sync::Mutex<std::collections::VecDeque<Sample>>,
    /// Served over TLS: the session cookie is `Secure`.
    secure: bool,
    /// Login attempts checked at once; a refused one holds its place for
    /// [`REFUSED_LOGIN`], so guessing tokens is slow.
    logins: tokio::sync::Semaphore,
}

const LOGINS: usize = 4;
const REFUSED_LOGIN: std::time::Duration = std::time::Duration::from_millis(500);

/// How often the overview's throughput is sampled, and how many are kept.
const SAMPLE: std::time::Duration = std::time::Duration::from_secs(10);
const SAMPLES: usize = 61;

/// What the sampler read at one time.
struct Sample {
    at_ms: u64,
    finished: u64,
    latencies: [u64; latency::BUCKETS],
}

/// One interval between consecutive samples: the charts' points.
pub(crate) struct Interval {
    /// Transactions finished per second.
    pub rate: f64,
    /// Quantiles of how long they took, begin to final state; none when
    /// nothing finished.
    pub p50: Option<std::time::Duration>,
    pub p99: Option<std::time::Duration>,
}

/// The intervals between consecutive samples, oldest first.
fn intervals(samples: &std::collections::VecDeque<Sample>) -> Vec<Interval> {
    samples
        .iter()
        .zip(samples.iter().skip(1))
        .map(|(a, b)| {
            let secs = (b.at_ms.saturating_sub(a.at_ms) as f64 / 1000.0).max(0.001);
            Interval {
                rate: b.finished.saturating_sub(a.finished) as f64 / secs,
                p50: latency::quantile(&a.latencies, &b.latencies, 0.5),
                p99: latency::quantile(&a.latencies, &b.latencies, 0.99),
            }
        })
        .collect()
}

type Shared = Arc<Console>;

/// Serves the console on `listener` (over TLS with `tls`) until `shutdown`
/// completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<tls::rustls::ServerConfig>>,
    driver: Driver,
    auth: Auth,
    forward: Arc<crate::server::forward::Forwarder>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let open = (!auth.enabled()).then(Session::anonymous);
    let console = Arc::new(Console {
        driver,
        auth,
        forward,
        sessions: Sessions::default(),
        open,
        samples: Default::default(),
        secure: tls.is_some(),
        logins: tokio::sync::Semaphore::new(LOGINS),
    });
    let sampler = {
        let console = console.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(SAMPLE);
            loop {
                every.tick().await;
                let stats = console.driver.stats();
                let sample = Sample {
                    at_ms: crate::driver::ids::now_ms(),
                    finished: stats.committed_since_start + stats.aborted_since_start,
                    latencies: console.driver.latencies(),
                };
                let mut samples = console.samples.lock().unwrap_or_else(|p| p.into_inner());
                if samples.len() >= SAMPLES {
                    samples.pop_front();
                }
                samples.push_back(sample);
            }
        })
    };
    let app = router(console);
    let served = match tls {
        Some(config) => {
            axum::serve(tls::TlsListener::new(listener, config)?, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
    };
    sampler.abort();
    served
}

fn router(console: Shared) -> Router {
    Router::new()
        .route("/", get(overview))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/txns", get(list))
        .route("/txns/{id}", get(detail))
        .route("/txns/{id}/branches/{branch}/payload", get(payload))
        .route("/txns/{id}/{action}", post(actions::act))
        .route(
            "/txns/{id}/branches/{branch}/resolve",
            post(actions::resolve),
        )
        .route("/audit", get(audit))
        .route("/events", get(actions::events))
        .fallback(not_found)
        .with_state(console)
}

/// A page, never cached (it shows live state).
fn page(status: StatusCode, markup: maud::Markup) -> Response {
    (
        status,
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "same-origin"),
        ],
        Html(markup.into_string()),
    )
        .into_response()
}

/// The caller's session, or the answer to send instead (a GET goes to the
/// login form; anything else is 401).
fn session(console: &Console, headers: &HeaderMap, is_get: bool) -> Result<Session, Box<Response>> {
    if let Some(open) = &console.open {
        return Ok(open.clone());
    }
    match session::cookie_of(headers).and_then(|id| console.sessions.get(&id)) {
        Some(s) => Ok(s),
        None if is_get => Err(Box::new(Redirect::to("/login").into_response())),
        None => Err(Box::new(page(
            StatusCode::UNAUTHORIZED,
            pages::message(
                "Not logged in",
                "Log in again: your session is missing or has expired.",
                None,
            ),
        ))),
    }
}

/// An error of the driver as a page.
fn failed(e: DriverError, session: &Session) -> Response {
    let status = match &e {
        DriverError::NotFound(_) | DriverError::BranchNotFound { .. } => StatusCode::NOT_FOUND,
        DriverError::InvalidArgument(_) => StatusCode::BAD_REQUEST,
        DriverError::FailedPrecondition(_) | DriverError::AlreadyExists(_) => StatusCode::CONFLICT,
        DriverError::PermissionDenied(_) => StatusCode::FORBIDDEN,
        DriverError::Unavailable(_)
        | DriverError::Moved(_)
        | DriverError::Elsewhere { .. }
        | DriverError::ResourceExhausted(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let title = match status {
        StatusCode::NOT_FOUND => "Not found",
        StatusCode::CONFLICT => "Not possible now",
        _ => "Failed",
    };
    page(status, pages::message(title, &e.to_string(), Some(session)))
}

async fn not_found(State(console): State<Shared>, headers: HeaderMap) -> Response {
    let session = session(&console, &headers, true).ok();
    page(
        StatusCode::NOT_FOUND,
        pages::message("Not found", "There is no such page.", session.as_ref()),
    )
}

async fn login_form(State(console): State<Shared>) -> Response {
    if console.open.is_some() {
        return Redirect::to("/").into_response();
    }
    page(StatusCode::OK, pages::login(None))
}

#[derive(serde::Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: String,
}

async fn login(State(console): State<Shared>, axum::Form(form): axum::Form<LoginForm>) -> Response {
    let Ok(_turn) = console.logins.acquire().await else {
        return (StatusCode::SERVICE_UNAVAILABLE, "the console is stopping").into_response();
    };
    let Some((user, can_act)) = console.auth.console_login(form.token.trim()) else {
        tracing::warn!("console login with an unknown token refused");
        tokio::time::sleep(REFUSED_LOGIN).await;
        return page(
            StatusCode::UNAUTHORIZED,
            pages::login(Some("That token is not known.")),
        );
    };
    let id = console.sessions.open(
        user,
        can_act,
        session::Secret(form.token.trim().to_string()),
    );
    let cookie = format!(
        "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{}",
        session::LIFETIME.as_secs(),
        secure(&console)
    );
    ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
}

/// The cookie attribute that keeps it off plain HTTP, under TLS.
fn secure(console: &Console) -> &'static str {
    if console.secure { "; Secure" } else { "" }
}

#[derive(serde::Deserialize)]
pub(crate) struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(
    State(console): State<Shared>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<CsrfForm>,
) -> Response {
    let session = match session(&console, &headers, false) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    if !session::same(&form.csrf, &session.csrf) {
        return actions::forbidden("the form's CSRF token is missing or wrong", &session);
    }
    if let Some(id) = session::cookie_of(&headers) {
        console.sessions.close(&id);
    }
    let cookie = format!(
        "{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{}",
        secure(&console)
    );
    ([(header::SET_COOKIE, cookie)], Redirect::to("/login")).into_response()
}

async fn overview(State(console): State<Shared>, headers: HeaderMap) -> Response {
    let session = match session(&console, &headers, true) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let stats = if console.driver.is_shared() {
        match console.driver.cluster_stats() {
            Ok(s) => s,
            Err(e) => return failed(e, &session),
        }
    } else {
        console.driver.stats()
    };
    let intervals = intervals(&console.samples.lock().unwrap_or_else(|p| p.into_inner()));
    page(
        StatusCode::OK,
        pages::overview(&stats, &intervals, &session),
    )
}

#[derive(serde::Deserialize, Default)]
struct ListQuery {
    #[serde(default)]
    state: String,
    #[serde(default)]
    mode: String,
    #[serde(default)]
    stuck: String,
    #[serde(default)]
    participant: String,
    #[serde(default)]
    older_than: String,
    #[serde(default)]
    after: String,
}

/// What the list page shows, with the filter it was asked for.
pub(crate) struct ListPage {
    pub txns: Vec<Txn>,
    pub next: Option<String>,
    pub state: Option<String>,
    pub mode: Option<String>,
    pub stuck: bool,
    pub participant: String,
    pub older_than: String,
}

async fn list(
    State(console): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Response {
    let session = match session(&console, &headers, true) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let bad = |why: String| {
        page(
            StatusCode::BAD_REQUEST,
            pages::message("Bad filter", &why, Some(&session)),
        )
    };
    let state = match q.state.as_str() {
        "" => None,
        s => match [
            TxnState::Active,
            TxnState::Preparing,
            TxnState::Committing,
            TxnState::Aborting,
            TxnState::Committed,
            TxnState::Aborted,
        ]
        .into_iter()
        .find(|t| t.name().eq_ignore_ascii_case(s))
        {
            Some(t) => Some(t),
            None => return bad(format!("unknown state {s:?}")),
        },
    };
    let mode = match q.mode.as_str() {
        "" => None,
        "2pc" => Some(Mode::TwoPhase),
        "tcc" => Some(Mode::Tcc),
        "saga" => Some(Mode::Saga),
        m => return bad(format!("unknown mode {m:?}")),
    };
    let older_than_ms = match q.older_than.trim() {
        "" => None,
        text => match crate::cli::duration::parse(text) {
            Ok(d) => Some(d.as_millis() as u64),
            Err(e) => return bad(format!("older than: {e}")),
        },
    };
    let filter = ListFilter {
        states: state.into_iter().collect(),
        mode,
        stuck_only: !q.stuck.is_empty(),
        older_than_ms,
        participant: (!q.participant.trim().is_empty()).then(|| q.participant.trim().to_string()),
        newest_first: true,
        limit: 50,
        after: (!q.after.is_empty()).then(|| q.after.clone()),
    };
    let found = {
        let driver = console.driver.clone();
        match tokio::task::spawn_blocking(move || driver.list(&filter)).await {
            Ok(Ok(page)) => page,
            Ok(Err(e)) => return failed(e, &session),
            Err(e) => return failed(DriverError::Internal(e.to_string()), &session),
        }
    };
    let query = format!(
        "state={}&mode={}&stuck={}&participant={}&older_than={}",
        path_escape(&q.state),
        path_escape(&q.mode),
        path_escape(&q.stuck),
        path_escape(&q.participant),
        path_escape(&q.older_than)
    );
    let listed = ListPage {
        txns: found.txns,
        next: found.next,
        state: state.map(|s| s.name().to_string()),
        mode: mode.map(|m| m.name().to_string()),
        stuck: !q.stuck.is_empty(),
        participant: q.participant,
        older_than: q.older_than,
    };
    page(StatusCode::OK, pages::list(&listed, &query, &session))
}

async fn detail(
    State(console): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let session = match session(&console, &headers, true) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let read = {
        let driver = console.driver.clone();
        tokio::task::spawn_blocking(move || {
            let txn = driver.get(&id)?;
            let owner = driver.owner_node(&txn)?;
            let audit: Vec<_> = driver
                .audit(2_000)?
                .into_iter()
                .filter(|e| e.txn_id == txn.id)
                .collect();
            Ok::<_, DriverError>((txn, owner, audit))
        })
        .await
    };
    match read {
        Ok(Ok((txn, owner, audit))) => page(
            StatusCode::OK,
            pages::detail(&txn, &owner, &audit, &session),
        ),
        Ok(Err(e)) => failed(e, &session),
        Err(e) => failed(DriverError::Internal(e.to_string()), &session),
    }
}

async fn payload(
    State(console): State<Shared>,
    headers: HeaderMap,
    Path((id, branch)): Path<(String, String)>,
) -> Response {
    let session = match session(&console, &headers, true) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    match console.driver.get(&id) {
        Ok(txn) => match txn.branches.iter().find(|b| b.id == branch) {
            Some(b) => page(
                StatusCode::OK,
                pages::payload(&txn.id, &b.id, &b.payload, &session),
            ),
            None => failed(
                DriverError::NotFound(format!("branch {branch} of {id}")),
                &session,
            ),
        },
        Err(e) => failed(e, &session),
    }
}

async fn audit(State(console): State<Shared>, headers: HeaderMap) -> Response {
    let session = match session(&console, &headers, true) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    match console.driver.audit(200) {
        Ok(entries) => page(StatusCode::OK, pages::audit(&entries, &session)),
        Err(e) => failed(e, &session),
    }
}

/// Percent-encodes everything but unreserved characters (for paths and
/// query values).
pub(crate) fn path_escape(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A duration for people: "42 s", "5 min", "3 h", "2 d".
/// A latency for people: "0.8 ms", "12 ms", "1.4 s".
pub(crate) fn duration_text(ms: f64) -> String {
    match ms {
        ms if ms < 10.0 => format!("{ms:.1} ms"),
        ms if ms < 1000.0 => format!("{ms:.0} ms"),
        ms => format!("{:.1} s", ms / 1000.0),
    }
}

pub(crate) fn age_text(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 if ms == 0 => "-".to_string(),
        0..90 => format!("{s} s"),
        90..5400 => format!("{} min", s / 60),
        5400..129_600 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    }
}
