//! The `arbiter` admin CLI run as a process, as an operator would run it.

use std::process::{Command, Stdio};

use crate::process::arbiter_bin;

/// What one CLI run printed and how it exited.
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `arbiter <args> --addr <addr>` with no terminal (so no prompts).
pub fn cli(addr: &str, args: &[&str]) -> anyhow::Result<Output> {
    let out = Command::new(arbiter_bin()?)
        .args(args)
        .args(["--addr", addr])
        .stdin(Stdio::null())
        .output()?;
    Ok(Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Runs `arbiter <args> -o json` and parses what it printed; an error if it
/// failed.
pub fn json(addr: &str, args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let out = cli(addr, &all)?;
    anyhow::ensure!(
        out.code == 0,
        "{args:?} failed ({}): {}",
        out.code,
        out.stderr
    );
    Ok(serde_json::from_str(&out.stdout)?)
}

/// A server whose natural retries are far apart (up to 10 minutes), so that
/// an operator's command is what makes things happen; one failure flags
/// stuck.
pub async fn patient_server(dir: &std::path::Path) -> anyhow::Result<crate::ArbiterProcess> {
    let args = [
        "--retry-base-ms",
        "600000",
        "--retry-max-ms",
        "600000",
        "--stuck-after-attempts",
        "1",
    ];
    crate::ArbiterProcess::start(dir, &args).await
}

/// A decided transaction stuck on a participant that is gone for good:
/// branch 1 finished, branch 2's participant refused phase 2 and then went
/// away. Returns the transaction id, and branch 1's participant and recorder.
pub async fn stuck_with_a_gone_branch(
    client: &arbiter_sdk::Client,
    execute: arbiter_sdk::Execute,
) -> anyhow::Result<(
    String,
    arbiter_sdk::RunningParticipant,
    std::sync::Arc<crate::Recorder>,
)> {
    use arbiter_sdk::Branch;
    let (a, rec_a) = crate::recorder_participant().await?;
    let (gone, rec_gone) = crate::recorder_participant().await?;
    rec_gone.set_fail_phase2(true);
    let decided = client
        .execute(
            execute
                .wait(false)
                .branch(Branch::new(a.endpoint(), "r1"))
                .branch(Branch::new(gone.endpoint(), "r2")),
        )
        .await?;
    let id = decided.txn_id;
    crate::eventually("branch 1 finished, branch 2 stuck", || async {
        let txn = client.get_transaction(&id).await.ok()?;
        (txn.stuck && txn.branches[0].state() == arbiter_sdk::BranchState::Committed).then_some(())
    })
    .await;
    gone.shutdown().await; // gone for good
    Ok((id, a, rec_a))
}
