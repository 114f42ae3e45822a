//! The web console in a real browser: headless Chromium driven over
//! WebDriver. It logs in, watches a stuck transaction appear without a
//! reload, opens it, retries it and sees it become COMMITTED, then aborts
//! another with a reason and finds it in the audit page. Screenshots go to
//! `target/console-screenshots/`.

use std::path::PathBuf;
use std::time::Duration;

use arbiter_sdk::{Branch, Client, ConnectOptions, Execute, Mode};
use arbiter_tests::process::free_port;
use arbiter_tests::webdriver::{Browser, installed};
use arbiter_tests::{ArbiterProcess, recorder_participant};

const ADMIN: &str = "ops-0123456789abcdef";

fn shots() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots")
}

/// Polls the page's live HTML until `check` holds.
async fn until(browser: &Browser, what: &str, check: impl Fn(&str) -> bool) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + arbiter_tests::PATIENCE;
    loop {
        let html = browser.source().await?;
        if check(&html) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = browser.screenshot(&shots().join("failed.png")).await;
            let at = html.find("txn-state").unwrap_or(0);
            let end = (at + 300).min(html.len());
            anyhow::bail!(
                "timed out waiting for: {what}; the page has: {}",
                html.get(at..end).unwrap_or("")
            );
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_finds_retries_and_aborts_in_a_real_browser() -> anyhow::Result<()> {
    let Some((chromium, chromedriver)) = installed() else {
        // CI installs them (.ci/run); elsewhere, say so rather than pass.
        anyhow::ensure!(
            std::env::var_os("CI").is_none(),
            "chromium and chromedriver are needed (apt install chromium chromium-driver)"
        );
        eprintln!("skipped: no chromium/chromedriver here");
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let console = format!("127.0.0.1:{}", free_port()?);
    let arbiter = ArbiterProcess::start(
        dir.path(),
        &[
            "--console-listen",
            &console,
            "--admin-token",
            &format!("ops={ADMIN}"),
            // Only the operator's retry commits the stuck transaction.
            "--retry-base-ms",
            "600000",
            "--retry-max-ms",
            "600000",
            "--stuck-after-attempts",
            "1",
        ],
    )
    .await?;
    let client =
        Client::connect_with(arbiter.endpoint.clone(), ConnectOptions::new().token(ADMIN)).await?;
    let (p, rec) = recorder_participant().await?;
    // Something to show in the overview.
    for _ in 0..3 {
        client
            .execute(Execute::tcc().branch(Branch::new(p.endpoint(), "r1")))
            .await?;
    }

    let browser = Browser::start(&chromium, &chromedriver).await?;
    let base = format!("http://{console}");
    browser.goto(&format!("{base}/")).await?;
    // Sent to the login form; log in.
    let token = browser.wait_for("input#token").await?;
    browser.type_into(&token, ADMIN).await?;
    let submit = browser.wait_for("form.login button[type=submit]").await?;
    browser.click(&submit).await?;
    browser.wait_for("section.cards").await?;
    browser.screenshot(&shots().join("overview.png")).await?;

    // The stuck list is open when the transaction gets stuck: it appears
    // without a reload.
    browser.goto(&format!("{base}/txns?stuck=1")).await?;
    browser.wait_for("form.filter").await?;
    rec.set_fail_phase2(true);
    let stuck = client
        .execute(
            Execute::two_phase()
                .wait(false)
                .branch(Branch::new(p.endpoint(), "r1")),
        )
        .await?;
    let id = stuck.txn_id.clone();
    let row = format!("span.id[title='{id}'] a");
    let link = browser.wait_for(&row).await?;
    browser.screenshot(&shots().join("stuck-list.png")).await?;
    browser.click(&link).await?;
    let state = browser.wait_for("#txn-state").await?;
    assert_eq!(browser.text(&state).await?, "COMMITTING");
    until(&browser, "the branch's last error", |html| {
        html.contains("commit refused by the test")
    })
    .await?;
    browser
        .screenshot(&shots().join("stuck-transaction.png"))
        .await?;

    // The participant is back; retry now, confirm, and watch it commit.
    rec.set_fail_phase2(false);
    let retry = browser.wait_for("#act-retry").await?;
    browser.click(&retry).await?;
    browser.accept_dialog().await?;
    until(&browser, "the transaction COMMITTED on its page", |html| {
        html.contains("id=\"txn-state\">COMMITTED")
    })
    .await?;
    browser.screenshot(&shots().join("retried.png")).await?;

    // Another, undecided: abort it with a reason.
    let victim = client.begin(Mode::TwoPhase, None).await?;
    client
        .register_branch(&victim, &Branch::new(p.endpoint(), "r1"))
        .await?;
    browser.goto(&format!("{base}/txns/{victim}")).await?;
    let reason_box = browser
        .wait_for("form[action$='/abort'] input[name=reason]")
        .await?;
    let reason = "stock count was wrong";
    browser.type_into(&reason_box, reason).await?;
    let abort = browser.wait_for("#act-abort").await?;
    browser.click(&abort).await?;
    browser.accept_dialog().await?;
    until(&browser, "the transaction ABORTED", |html| {
        html.contains("id=\"txn-state\">ABORTED")
    })
    .await?;
    browser.goto(&format!("{base}/audit")).await?;
    until(&browser, "the abort in the audit log", |html| {
        html.contains("force-abort") && html.contains(reason) && html.contains("console:ops")
    })
    .await?;
    browser.screenshot(&shots().join("audit.png")).await?;

    // Phone width: still usable (the list renders, no horizontal page).
    browser.resize(390, 844).await?;
    browser.goto(&format!("{base}/txns")).await?;
    browser.wait_for("table.txns").await?;
    browser.screenshot(&shots().join("phone-list.png")).await?;
    browser.quit().await;
    Ok(())
}
