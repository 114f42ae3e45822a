//! The admin CLI, invoked as a process against a live `arbiter serve` with a
//! participant that is down: stuck transactions are listed with their last
//! error, retried on demand, aborted, committed only when allowed, resolved
//! by hand; everything is audited; JSON parses; exit codes hold.

use std::process::{Command, Stdio};
use std::time::Duration;

use arbiter_sdk::{Branch, Execute, Mode, TxnState};
use arbiter_tests::cli::{Output, cli, json, patient_server as server, stuck_with_a_gone_branch};
use arbiter_tests::process::{arbiter_bin, free_port};
use arbiter_tests::{eventually, recorder_participant};
use serde_json::Value;

#[tokio::test]
async fn stuck_transaction_is_listed_shown_and_completed_by_retry() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let arbiter = server(dir.path()).await?;
    let addr = arbiter.endpoint.clone();
    let (a, _rec_a) = recorder_participant().await?;
    let (b, rec_b) = recorder_participant().await?;
    rec_b.set_fail_phase2(true);
    let client = arbiter.client().await?;
    let decided = client
        .execute(
            Execute::two_phase()
                .wait(false)
                .branch(Branch::new(a.endpoint(), "r1"))
                .branch(Branch::new(b.endpoint(), "r2")),
        )
        .await?;
    let id = decided.txn_id.clone();

    let listed = eventually("the transaction shows up in txn ls --stuck", || async {
        let rows = json(&addr, &["txn", "ls", "--stuck"]).ok()?;
        let row = rows["transactions"]
            .as_array()?
            .iter()
            .find(|t| t["txn_id"] == id.as_str())?
            .clone();
        Some(row)
    })
    .await;
    assert_eq!(listed["state"], "COMMITTING");
    assert_eq!(listed["stuck"], true);
    assert!(
        listed["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("commit refused by the test"),
        "{listed}"
    );

    let table = cli(&addr, &["txn", "ls", "--stuck"])?;
    println!("$ arbiter txn ls --stuck\n{}", table.stdout);
    assert_eq!(table.code, 0);
    assert!(table.stdout.starts_with("ID"), "{}", table.stdout);
    assert!(
        table.stdout.contains(&id) && table.stdout.contains("yes"),
        "{}",
        table.stdout
    );
    let none = json(&addr, &["txn", "ls", "--state", "aborted"])?;
    assert!(
        none["transactions"]
            .as_array()
            .is_some_and(|t| t.is_empty())
    );

    let show = cli(&addr, &["txn", "show", &id])?;
    println!("$ arbiter txn show {id}\n{}", show.stdout);
    assert_eq!(show.code, 0, "{}", show.stderr);
    for expected in [
        "STUCK",
        "LAST ERROR",
        "commit refused by the test",
        "ERROR",
        "voted YES",
        b.endpoint().as_str(),
    ] {
        assert!(
            show.stdout.contains(expected),
            "txn show lacks {expected:?}:\n{}",
            show.stdout
        );
    }
    let detail = json(&addr, &["txn", "show", &id])?;
    let failing = &detail["branches"][1];
    assert!(
        failing["history"]
            .as_array()
            .is_some_and(|h| h.iter().any(|a| a["ok"] == false))
    );
    assert!(
        failing["next_retry_at_ms"].as_u64().unwrap_or(0) > 0,
        "{failing}"
    );

    rec_b.set_fail_phase2(false);
    let retried = json(&addr, &["txn", "retry", &id])?;
    assert_eq!(retried["retried"][0], id.as_str());
    eventually(
        "txn retry completes it without waiting for the backoff",
        || async {
            let txn = client.get_transaction(&id).await.ok()?;
            (txn.state() == TxnState::Committed).then_some(())
        },
    )
    .await;
    let audit = json(&addr, &["audit", "ls"])?;
    let entry = &audit["entries"][0];
    assert_eq!(
        (entry["action"].as_str(), entry["txn_id"].as_str()),
        (Some("retry-now"), Some(id.as_str()))
    );
    assert!(
        entry["caller"]
            .as_str()
            .unwrap_or("")
            .starts_with("peer 127.0.0.1:")
    );
    Ok(())
}

#[tokio::test]
async fn abort_rolls_back_is_audited_and_commit_is_refused_unless_all_prepared()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let arbiter = server(dir.path()).await?;
    let addr = arbiter.endpoint.clone();
    let (a, rec_a) = recorder_participant().await?;
    let (b, _rec_b) = recorder_participant().await?;
    let client = arbiter.client().await?;
    // Branch 2's prepare keeps failing: the transaction waits in PREPARING.
    let txn_id = client
        .begin(Mode::TwoPhase, Some(Duration::from_secs(600)))
        .await?;
    client
        .register_branch(&txn_id, &Branch::new(a.endpoint(), "r1"))
        .await?;
    client
        .register_branch(
            &txn_id,
            &Branch::new(b.endpoint(), "r1").payload("unavailable"),
        )
        .await?;
    let waiting_commit = {
        let (client, txn_id) = (client.clone(), txn_id.clone());
        tokio::spawn(async move { client.commit(&txn_id, false).await })
    };
    eventually("branch 1 prepared, branch 2 failing", || async {
        let txn = client.get_transaction(&txn_id).await.ok()?;
        (txn.state() == TxnState::Preparing && txn.branches[1].attempts >= 1).then_some(())
    })
    .await;

    let refused = cli(
        &addr,
        &["txn", "commit", &txn_id, "--reason", "customer insists"],
    )?;
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("not prepared") && refused.stderr.contains('2'),
        "{}",
        refused.stderr
    );

    let no_reason = cli(&addr, &["txn", "abort", &txn_id])?;
    assert_eq!(
        no_reason.code, 2,
        "--reason is required: {}",
        no_reason.stderr
    );

    let aborted = cli(
        &addr,
        &[
            "txn",
            "abort",
            &txn_id,
            "--reason",
            "payment provider is gone",
        ],
    )?;
    assert_eq!(aborted.code, 0, "{}", aborted.stderr);
    assert!(aborted.stdout.contains("ABORT"), "{}", aborted.stdout);
    eventually(
        "the abort completes and branch 1 is rolled back",
        || async {
            let txn = client.get_transaction(&txn_id).await.ok()?;
            (txn.state() == TxnState::Aborted).then_some(())
        },
    )
    .await;
    assert_eq!(rec_a.calls(&txn_id), vec!["prepare", "rollback"]);
    let answered = waiting_commit.await??;
    assert!(
        matches!(answered.state, TxnState::Aborting | TxnState::Aborted),
        "the client waiting in Commit learns of the abort: {:?}",
        answered.state
    );

    let audit = json(&addr, &["audit", "ls"])?;
    let entry = &audit["entries"][0];
    assert_eq!(entry["action"], "force-abort");
    assert_eq!(entry["txn_id"], txn_id.as_str());
    assert_eq!(entry["reason"], "payment provider is gone");
    let table = cli(&addr, &["audit", "ls"])?;
    println!("$ arbiter audit ls\n{}", table.stdout);
    assert!(
        table.stdout.contains("force-abort") && table.stdout.contains("payment provider is gone")
    );
    Ok(())
}

#[tokio::test]
async fn resolve_branch_lets_a_decided_stuck_transaction_finish() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let arbiter = server(dir.path()).await?;
    let addr = arbiter.endpoint.clone();
    let client = arbiter.client().await?;
    let (id, _a, rec_a) = stuck_with_a_gone_branch(&client, Execute::tcc()).await?;

    let early = cli(
        &addr,
        &[
            "txn",
            "resolve-branch",
            &id,
            "1",
            "--as",
            "committed",
            "--reason",
            "x",
        ],
    )?;
    assert_eq!(early.code, 1, "branch 1 needs nothing: {}", early.stderr);
    let unknown = cli(
        &addr,
        &[
            "txn",
            "resolve-branch",
            &id,
            "9",
            "--as",
            "committed",
            "--reason",
            "x",
        ],
    )?;
    assert_eq!(unknown.code, 3, "{}", unknown.stderr);

    let resolved = cli(
        &addr,
        &[
            "txn",
            "resolve-branch",
            &id,
            "2",
            "--as",
            "committed",
            "--reason",
            "confirmed by hand, ticket OPS-7",
        ],
    )?;
    assert_eq!(resolved.code, 0, "{}", resolved.stderr);
    assert!(resolved.stdout.contains("COMMITTED"), "{}", resolved.stdout);
    let txn = client.get_transaction(&id).await?;
    assert_eq!(txn.state(), TxnState::Committed);
    assert!(
        txn.branches[1].heuristic.contains("ticket OPS-7"),
        "{}",
        txn.branches[1].heuristic
    );
    assert_eq!(rec_a.calls(&id), vec!["try", "confirm"]);
    let show = cli(&addr, &["txn", "show", &id])?;
    assert!(
        show.stdout.contains("resolved by hand as committed"),
        "{}",
        show.stdout
    );
    let audit = json(&addr, &["audit", "ls"])?;
    assert_eq!(audit["entries"][0]["action"], "resolve-branch-committed");
    assert_eq!(audit["entries"][0]["branch_id"], "2");
    Ok(())
}

#[tokio::test]
async fn exit_codes_and_messages_for_bad_input() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let arbiter = server(dir.path()).await?;
    let addr = arbiter.endpoint.clone();

    let missing = cli(&addr, &["txn", "show", "no-such-txn"])?;
    assert_eq!(missing.code, 3);
    assert!(
        missing.stderr.contains("transaction no-such-txn not found"),
        "{}",
        missing.stderr
    );
    // With -o json, every outcome is JSON on stdout, errors too.
    let missing_json = cli(&addr, &["txn", "show", "no-such-txn", "-o", "json"])?;
    assert_eq!(missing_json.code, 3);
    let error: Value = serde_json::from_str(&missing_json.stdout)?;
    assert_eq!(error["error"]["code"], 3);
    assert_eq!(error["error"]["kind"], "not_found");
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("no-such-txn"))
    );
    let bad_id = cli(&addr, &["txn", "show", "bad/id"])?;
    assert_eq!(bad_id.code, 2);
    assert!(bad_id.stderr.contains("contains '/'"), "{}", bad_id.stderr);
    let bad_flag = cli(&addr, &["txn", "ls", "--state", "sideways"])?;
    assert_eq!(bad_flag.code, 2);
    assert!(bad_flag.stderr.contains("sideways"), "{}", bad_flag.stderr);
    // A usage error clap itself finds is JSON too when asked for.
    let bad_flag_json = cli(&addr, &["txn", "ls", "--state", "sideways", "-o", "json"])?;
    assert_eq!(bad_flag_json.code, 2);
    let error: Value = serde_json::from_str(&bad_flag_json.stdout)?;
    assert_eq!(error["error"]["kind"], "usage");
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("sideways"))
    );
    let bad_age = cli(&addr, &["txn", "ls", "--older-than", "5 minutes"])?;
    assert_eq!(bad_age.code, 2);
    let no_target = cli(&addr, &["txn", "retry"])?;
    assert_eq!(no_target.code, 2);
    assert!(
        no_target.stderr.contains("--all-stuck"),
        "{}",
        no_target.stderr
    );
    let nothing_stuck = json(&addr, &["txn", "retry", "--all-stuck"])?;
    assert_eq!(nothing_stuck["retried"], serde_json::json!([]));

    let down = format!("http://127.0.0.1:{}", free_port()?);
    let unreachable = cli(&down, &["stats"])?;
    assert_eq!(unreachable.code, 1);
    assert!(
        unreachable.stderr.contains("cannot reach the coordinator"),
        "{}",
        unreachable.stderr
    );

    // --addr as `serve --listen` takes and prints it.
    let host_port = addr.trim_start_matches("http://");
    let plain = cli(host_port, &["stats"])?;
    assert_eq!(plain.code, 0, "{}", plain.stderr);
    let wrong = cli("ftp://127.0.0.1:1", &["stats"])?;
    assert_eq!(wrong.code, 2);
    assert!(
        wrong.stderr.contains("host:port") && !wrong.stderr.contains("cannot reach"),
        "says what is wrong with the address: {}",
        wrong.stderr
    );

    let stats = json(&addr, &["stats"])?;
    assert_eq!(stats["stuck"], 0);
    assert!(stats["unfinished"]["ACTIVE"].is_u64());
    let table = cli(&addr, &["stats"])?;
    println!("$ arbiter stats\n{}", table.stdout);
    assert!(table.stdout.contains("retry queue"), "{}", table.stdout);
    Ok(())
}

#[tokio::test]
async fn listing_filters_and_pages_through_everything() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let arbiter = server(dir.path()).await?;
    let addr = arbiter.endpoint.clone();
    let (a, _rec) = recorder_participant().await?;
    let client = arbiter.client().await?;
    let mut committed = Vec::new();
    for n in 0..5 {
        let mode = if n % 2 == 0 {
            Execute::two_phase()
        } else {
            Execute::tcc()
        };
        committed.push(
            client
                .execute(mode.branch(Branch::new(a.endpoint(), "r1")))
                .await?
                .txn_id,
        );
    }
    let open = client.begin(Mode::Tcc, None).await?;

    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let mut args = vec![
            "txn",
            "ls",
            "--state",
            "committed",
            "--limit",
            "2",
            "--oldest-first",
        ];
        if !token.is_empty() {
            args.extend(["--page-token", token.as_str()]);
        }
        let page = json(&addr, &args)?;
        let rows = page["transactions"].as_array().cloned().unwrap_or_default();
        assert!(rows.len() <= 2);
        seen.extend(
            rows.iter()
                .filter_map(|r| r["txn_id"].as_str().map(str::to_string)),
        );
        token = page["next_page_token"].as_str().unwrap_or("").to_string();
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(
        seen, committed,
        "every committed transaction once, oldest first"
    );

    let newest = json(&addr, &["txn", "ls", "--limit", "1"])?;
    assert_eq!(
        newest["transactions"][0]["txn_id"],
        open.as_str(),
        "newest first by default"
    );
    let tcc = json(
        &addr,
        &["txn", "ls", "--mode", "tcc", "--state", "committed"],
    )?;
    assert_eq!(tcc["transactions"].as_array().map(Vec::len), Some(2));
    let active = json(
        &addr,
        &[
            "txn",
            "ls",
            "--state",
            "active",
            "--participant",
            &a.endpoint(),
        ],
    )?;
    assert_eq!(
        active["transactions"].as_array().map(Vec::len),
        Some(0),
        "the open one has no branch there"
    );
    let old = json(&addr, &["txn", "ls", "--older-than", "1h"])?;
    assert_eq!(old["transactions"].as_array().map(Vec::len), Some(0));
    Ok(())
}

/// Runs the CLI on a pseudo-terminal (util-linux `script`), typing `answer`.
fn cli_on_terminal(addr: &str, args: &str, answer: &str) -> anyhow::Result<Output> {
    use std::io::Write as _;
    let bin = arbiter_bin()?;
    let command = format!("{} {args} --addr {addr}", bin.display());
    let mut child = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(answer.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    Ok(Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

#[tokio::test]
async fn destructive_commands_ask_on_a_terminal_unless_yes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let arbiter = server(dir.path()).await?;
    let addr = arbiter.endpoint.clone();
    let client = arbiter.client().await?;
    let txn_id = client
        .begin(Mode::TwoPhase, Some(Duration::from_secs(600)))
        .await?;

    let declined = cli_on_terminal(&addr, &format!("txn abort {txn_id} --reason test"), "n\n")?;
    assert!(
        declined.stdout.contains("[y/N]"),
        "asked: {}",
        declined.stdout
    );
    assert!(declined.stdout.contains("cancelled"), "{}", declined.stdout);
    assert_eq!(declined.code, 1);
    assert_eq!(
        client.get_transaction(&txn_id).await?.state(),
        TxnState::Active,
        "nothing changed"
    );

    let confirmed = cli_on_terminal(&addr, &format!("txn abort {txn_id} --reason test"), "y\n")?;
    assert_eq!(confirmed.code, 0, "{}", confirmed.stdout);
    assert_eq!(
        client.get_transaction(&txn_id).await?.state(),
        TxnState::Aborted
    );

    let other = client
        .begin(Mode::TwoPhase, Some(Duration::from_secs(600)))
        .await?;
    let forced = cli_on_terminal(&addr, &format!("txn abort {other} --reason test --yes"), "")?;
    assert_eq!(forced.code, 0, "{}", forced.stdout);
    assert!(!forced.stdout.contains("[y/N]"), "--yes does not ask");
    Ok(())
}

#[tokio::test]
async fn output_into_a_closed_pipe_ends_quietly() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let arbiter = server(dir.path()).await?;
    let bin = arbiter_bin()?;
    for command in ["stats", "stats -o json", "txn ls", "audit ls"] {
        // `head -n 0` exits at once, so every write of the CLI meets a closed pipe.
        let script = format!(
            "{} {command} --addr {} | head -n 0; echo \"status=${{PIPESTATUS[0]}}\"",
            bin.display(),
            arbiter.endpoint
        );
        let out = Command::new("bash")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .output()?;
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(stdout.contains("status=0"), "{command}: {stdout} {stderr}");
        assert!(!stderr.contains("panicked"), "{command}: {stderr}");
    }
    Ok(())
}

#[tokio::test]
async fn txn_watch_prints_every_change_of_a_transaction_to_its_end() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let arbiter = server(dir.path()).await?;
    let addr = arbiter.endpoint.clone();
    let (a, _rec) = recorder_participant().await?;
    let outcome = arbiter
        .client()
        .await?
        .execute(
            Execute::tcc()
                .wait(true)
                .branch(Branch::new(a.endpoint(), "r1").payload("result:14C")),
        )
        .await?;
    assert_eq!(outcome.state, TxnState::Committed);
    let id = outcome.txn_id;

    // Finished already: replayed to its end, one JSON object a line.
    let out = cli(&addr, &["txn", "watch", &id, "-o", "json"])?;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let events: Vec<Value> = out
        .stdout
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let seqs: Vec<u64> = events.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>());
    let last = events.last().cloned().unwrap_or_default();
    assert_eq!(
        (last["state"].as_str(), last["final"].as_bool()),
        (Some("COMMITTED"), Some(true))
    );
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "BRANCH_ACKED" && e["result_text"] == "done:14C")
    );

    // For people; and from a later change on.
    let table = cli(&addr, &["txn", "watch", &id, "--from", "3"])?;
    assert_eq!(
        table.stdout.lines().count(),
        events.len() - 2,
        "{}",
        table.stdout
    );
    assert!(table.stdout.contains("COMMITTED") && table.stdout.contains("#3"));
    let unknown = cli(&addr, &["txn", "watch", "no-such-txn"])?;
    assert_ne!(unknown.code, 0);
    assert!(unknown.stderr.contains("no-such-txn"), "{}", unknown.stderr);
    Ok(())
}
