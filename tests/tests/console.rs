//! The web console over HTTP, against a real `arbiter serve`: login is
//! required and a wrong token refused; the session cookie is HttpOnly and
//! SameSite=Strict; every page renders; a stuck transaction is listed and
//! shown; an action without the CSRF token is refused, a read-only token
//! may look but not act; retry and abort work and land in the audit log with
//! the user and the reason; unknown ids are a 404 page; payloads are not in
//! the HTML unless asked for; without tokens the console refuses to start
//! unless --console-insecure. With --tls-cert the console serves HTTPS
//! only, with the configured certificate, and the cookie is Secure.

use arbiter_sdk::{Branch, Client, ConnectOptions, Execute};
use arbiter_tests::http::{Answer, form_value, request, request_tls};
use arbiter_tests::process::{Start, free_port};
use arbiter_tests::{ArbiterProcess, eventually, recorder_participant};

const ADMIN: &str = "ops-0123456789abcdef";
const VIEWER: &str = "app-abcdefabcdefabcd";

struct Console {
    arbiter: ArbiterProcess,
    addr: String,
}

async fn start(dir: &std::path::Path) -> anyhow::Result<Console> {
    let port = free_port()?;
    let addr = format!("127.0.0.1:{port}");
    let arbiter = ArbiterProcess::start(
        dir,
        &[
            "--console-listen",
            &addr,
            "--admin-token",
            &format!("ops={ADMIN}"),
            "--coordinator-token",
            &format!("app={VIEWER}"),
            "--retry-base-ms",
            "50",
            "--retry-max-ms",
            "200",
            "--stuck-after-attempts",
            "2",
        ],
    )
    .await?;
    Ok(Console { arbiter, addr })
}

impl Console {
    async fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::connect_with(
            self.arbiter.endpoint.clone(),
            ConnectOptions::new().token(ADMIN),
        )
        .await?)
    }

    /// Logs in with `token`: the session cookie (`name=value`).
    async fn login(&self, token: &str) -> anyhow::Result<String> {
        let answer = self.post("/login", None, &format!("token={token}")).await?;
        anyhow::ensure!(answer.status == 303, "login: {answer:?}");
        let cookie = answer
            .header("set-cookie")
            .ok_or_else(|| anyhow::anyhow!("no cookie"))?;
        assert!(
            cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
            "{cookie}"
        );
        assert!(cookie.contains("Max-Age="), "the session expires: {cookie}");
        Ok(cookie.split(';').next().unwrap_or_default().to_string())
    }

    async fn get(&self, path: &str, cookie: Option<&str>) -> anyhow::Result<Answer> {
        request(&self.addr, "GET", path, cookie, None).await
    }

    async fn post(&self, path: &str, cookie: Option<&str>, form: &str) -> anyhow::Result<Answer> {
        request(&self.addr, "POST", path, cookie, Some(form)).await
    }
}

#[tokio::test]
async fn the_console_needs_a_login_shows_transactions_and_acts_safely() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let console = start(dir.path()).await?;
    let client = console.client().await?;

    // Nothing without a login; a wrong token is refused.
    let anonymous = console.get("/", None).await?;
    assert_eq!(
        (anonymous.status, anonymous.header("location")),
        (303, Some("/login"))
    );
    assert_eq!(console.get("/login", None).await?.status, 200);
    let wrong = console
        .post("/login", None, "token=not-a-token-at-all")
        .await?;
    assert_eq!(wrong.status, 401);
    assert!(wrong.body.contains("not known"));
    let posted = console.post("/txns/x/retry", None, "csrf=x").await?;
    assert_eq!(posted.status, 401, "an action without a session");

    let ops = console.login(ADMIN).await?;
    let overview = console.get("/", Some(&ops)).await?;
    assert_eq!(overview.status, 200);
    assert!(overview.body.contains("Overview") && overview.body.contains("unfinished"));
    let csrf = overview
        .input("csrf")
        .ok_or_else(|| anyhow::anyhow!("no CSRF token in the page"))?;

    // A stuck transaction: listed, shown, retried.
    let (p, rec) = recorder_participant().await?;
    rec.set_fail_phase2(true);
    let stuck = client
        .execute(
            Execute::two_phase()
                .wait(false)
                .branch(Branch::new(p.endpoint(), "r1").payload("yes:secret-payload-bytes")),
        )
        .await?;
    let id = stuck.txn_id.clone();
    let listed = eventually("the stuck transaction is listed", || async {
        let page = console.get("/txns?stuck=1", Some(&ops)).await.ok()?;
        page.body.contains(&id).then_some(page)
    })
    .await;
    assert!(listed.body.contains("STUCK"));
    let shown = console.get(&format!("/txns/{id}"), Some(&ops)).await?;
    assert_eq!(shown.status, 200);
    assert!(shown.body.contains("COMMITTING") && shown.body.contains("commit refused by the test"));
    assert!(
        !shown.body.contains("secret-payload-bytes"),
        "payloads stay out of the page unless asked for"
    );
    let payload = console
        .get(&format!("/txns/{id}/branches/1/payload"), Some(&ops))
        .await?;
    assert!(payload.body.contains("secret-payload-bytes"));

    // No CSRF token, a wrong one: refused, nothing done.
    let no_csrf = console
        .post(&format!("/txns/{id}/retry"), Some(&ops), "")
        .await?;
    assert_eq!(no_csrf.status, 403);
    let bad_csrf = console
        .post(&format!("/txns/{id}/retry"), Some(&ops), "csrf=0000")
        .await?;
    assert_eq!(bad_csrf.status, 403);

    // A read-only token looks but does not act, even with its own CSRF token.
    let viewer = console.login(VIEWER).await?;
    let seen = console.get(&format!("/txns/{id}"), Some(&viewer)).await?;
    assert_eq!(seen.status, 200);
    assert!(
        !seen.body.contains("Retry now"),
        "no action buttons for a read-only token"
    );
    let viewer_csrf = seen.input("csrf").unwrap_or_default();
    let refused = console
        .post(
            &format!("/txns/{id}/retry"),
            Some(&viewer),
            &format!("csrf={viewer_csrf}"),
        )
        .await?;
    assert_eq!(refused.status, 403);
    assert!(refused.body.contains("may look but not act"));

    // The operator retries now; the participant comes back. (It comes back
    // after the retry is accepted, so no scheduled retry can finish the
    // transaction first and make the retry moot.)
    let retried = console
        .post(
            &format!("/txns/{id}/retry"),
            Some(&ops),
            &format!("csrf={csrf}"),
        )
        .await?;
    assert_eq!(retried.status, 303, "{}", retried.body);
    rec.set_fail_phase2(false);
    eventually("retried to COMMITTED", || async {
        let txn = client.get_transaction(&id).await.ok()?;
        (txn.state() == arbiter_sdk::proto::TxnState::Committed).then_some(())
    })
    .await;

    // An undecided transaction, aborted with a reason (none: refused).
    let victim = client.begin(arbiter_sdk::Mode::TwoPhase, None).await?;
    client
        .register_branch(&victim, &Branch::new(p.endpoint(), "r1"))
        .await?;
    let no_reason = console
        .post(
            &format!("/txns/{victim}/abort"),
            Some(&ops),
            &format!("csrf={csrf}&reason="),
        )
        .await?;
    assert_eq!(no_reason.status, 400, "{}", no_reason.body);
    let reason = "customer cancelled the order";
    let aborted = console
        .post(
            &format!("/txns/{victim}/abort"),
            Some(&ops),
            &format!("csrf={csrf}&reason={}", form_value(reason)),
        )
        .await?;
    assert_eq!(aborted.status, 303, "{}", aborted.body);
    let txn = client.get_transaction(&victim).await?;
    assert!(txn.reason.contains(reason), "{}", txn.reason);
    let audit = console.get("/audit", Some(&ops)).await?;
    assert!(
        audit.body.contains("force-abort") && audit.body.contains(reason),
        "{}",
        audit.body
    );
    assert!(audit.body.contains("console:ops") && audit.body.contains("retry-now"));

    // Unknown ids and pages: 404 pages, not errors.
    let unknown = console.get("/txns/no-such-txn", Some(&ops)).await?;
    assert_eq!(unknown.status, 404);
    assert!(unknown.body.contains("not found"));
    assert_eq!(console.get("/nowhere", Some(&ops)).await?.status, 404);

    // Hostile input: a huge form, a malformed one, odd paths. Refused, and
    // the console keeps serving.
    let huge = format!("token={}", "x".repeat(3 << 20));
    let refused = console.post("/login", None, &huge).await?;
    assert!(matches!(refused.status, 400 | 413), "{}", refused.status);
    let garbled = console.post("/login", None, "token=%ZZ%&&==").await?;
    assert!(
        matches!(garbled.status, 400 | 401 | 422),
        "{}",
        garbled.status
    );
    let odd = console.get("/txns/%00%FF..%2F", Some(&ops)).await?;
    assert!(matches!(odd.status, 400 | 404), "{}", odd.status);
    assert_eq!(console.get("/", Some(&ops)).await?.status, 200);

    // The overview charts throughput and latency (sampled every 10 s): the
    // transactions finished above show up as points once two samples exist.
    let charted = eventually("the overview charts latency", || async {
        let page = console.get("/", Some(&ops)).await.ok()?;
        let at = page.body.find("class=\"p50\" points=\"")?;
        let points = &page.body[at + "class=\"p50\" points=\"".len()..];
        points
            .starts_with(|c: char| c.is_ascii_digit())
            .then_some(page)
    })
    .await;
    assert!(charted.body.contains("Latency (this node)"));
    assert!(charted.body.contains("tx/s"), "the throughput chart");

    // Logging out ends the session.
    let out = console
        .post("/logout", Some(&ops), &format!("csrf={csrf}"))
        .await?;
    assert_eq!(out.status, 303);
    assert_eq!(console.get("/", Some(&ops)).await?.status, 303);
    Ok(())
}

#[tokio::test]
async fn without_tokens_the_console_starts_only_when_told_it_is_insecure() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let addr = format!("127.0.0.1:{}", free_port()?);
    let stderr = dir.path().join("stderr");
    match ArbiterProcess::try_start(&dir.path().join("a"), &["--console-listen", &addr], &stderr)
        .await?
    {
        Start::Refused { stderr, .. } => {
            assert!(stderr.contains("--console-insecure"), "{stderr}");
        }
        Start::Serving(_) => panic!("a console without tokens started"),
    }
    let mut open = ArbiterProcess::start(
        &dir.path().join("b"),
        &["--console-listen", &addr, "--console-insecure"],
    )
    .await?;
    let page = eventually("the open console answers", || async {
        request(&addr, "GET", "/", None, None).await.ok()
    })
    .await;
    assert_eq!(page.status, 200, "no login on an open console");
    assert!(page.body.contains("anonymous"));
    let csrf = page.input("csrf").unwrap_or_default();
    let no_csrf = request(&addr, "POST", "/txns/x/retry", None, Some("")).await?;
    assert_eq!(no_csrf.status, 403, "CSRF still holds on an open console");
    let with = request(
        &addr,
        "POST",
        "/txns/x/retry",
        None,
        Some(&format!("csrf={csrf}")),
    )
    .await?;
    assert_eq!(with.status, 404, "{}", with.body);
    open.terminate().await?;
    Ok(())
}

#[tokio::test]
async fn with_tls_the_console_serves_https_only_and_the_cookie_is_secure() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = arbiter_tests::certs::TestCa::new()?;
    let server = ca.server()?;
    let cert = dir.path().join("server.pem");
    let key = dir.path().join("server.key");
    std::fs::write(&cert, &server.cert)?;
    std::fs::write(&key, &server.key)?;
    let addr = format!("127.0.0.1:{}", free_port()?);
    // The gRPC port serves TLS too, so the harness's plain readiness probe
    // does not apply: start the binary directly and wait for the console.
    let child = std::process::Command::new(arbiter_tests::process::arbiter_bin()?)
        .arg("serve")
        .arg("--listen")
        .arg(format!("127.0.0.1:{}", free_port()?))
        .arg("--data-dir")
        .arg(dir.path().join("log"))
        .args(["--console-listen", &addr])
        .arg("--admin-token")
        .arg(format!("ops={ADMIN}"))
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .spawn()?;
    let _child = KillOnDrop(child);
    let ca_pem = ca.cert();
    let login_page = eventually("the console answers over HTTPS", || async {
        request_tls(&addr, &ca_pem, "GET", "/login", None, None)
            .await
            .ok()
    })
    .await;
    assert_eq!(login_page.status, 200);
    assert!(login_page.body.contains("token"), "{}", login_page.body);

    // Plain HTTP gets no page: the port speaks TLS only.
    let plain = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        request(&addr, "GET", "/login", None, None),
    )
    .await?;
    assert!(
        !matches!(&plain, Ok(a) if a.status == 200),
        "plain HTTP was served: {plain:?}"
    );

    let refused = request_tls(
        &addr,
        &ca_pem,
        "POST",
        "/login",
        None,
        Some(&format!("token={}", form_value("wrong-token-123456"))),
    )
    .await?;
    assert_eq!(refused.status, 401);
    let answer = request_tls(
        &addr,
        &ca_pem,
        "POST",
        "/login",
        None,
        Some(&format!("token={ADMIN}")),
    )
    .await?;
    assert_eq!(answer.status, 303, "{answer:?}");
    let set = answer.header("set-cookie").unwrap_or_default().to_string();
    assert!(
        set.contains("; Secure") && set.contains("HttpOnly"),
        "under TLS the cookie is Secure: {set}"
    );
    let cookie = set.split(';').next().unwrap_or_default().to_string();
    let overview = request_tls(&addr, &ca_pem, "GET", "/", Some(&cookie), None).await?;
    assert_eq!(overview.status, 200);
    assert!(overview.body.contains("ops"), "{}", overview.body);

    // A client that trusts another CA does not get through.
    let stranger = arbiter_tests::certs::TestCa::new()?.cert();
    assert!(
        request_tls(&addr, &stranger, "GET", "/login", None, None)
            .await
            .is_err(),
        "the console's certificate is the one configured"
    );
    Ok(())
}

/// Kills (SIGKILL) and reaps the process when the test ends, pass or fail.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_saga_page_says_which_step_it_is_at() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let console = start(dir.path()).await?;
    let client = console.client().await?;
    let ops = console.login(ADMIN).await?;
    let (p, _rec) = recorder_participant().await?;
    let saga = client
        .execute(
            Execute::saga()
                .wait(false)
                .timeout(std::time::Duration::from_secs(60))
                .branch(Branch::new(p.endpoint(), "r1"))
                .branch(Branch::new(p.endpoint(), "r2").payload("unavailable")),
        )
        .await?;
    let id = saga.txn_id.clone();
    let page = eventually("the saga page shows step 2 running", || async {
        let page = console.get(&format!("/txns/{id}"), Some(&ops)).await.ok()?;
        page.body.contains("running: step 2").then_some(page)
    })
    .await;
    assert!(page.body.contains("saga"), "the mode is shown");
    let listed = console.get("/txns?mode=saga", Some(&ops)).await?;
    assert!(listed.body.contains(&id), "the mode filter lists sagas");
    Ok(())
}
