//! A participant written in Python from the `.proto` files alone (no SDK)
//! takes part in 2PC and TCC transactions next to a Rust one.
//!
//! Needs `python3` with `grpcio` and `grpcio-tools` (the README's test command
//! installs them).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};
use arbiter_sdk::{Branch, Execute, TxnState};
use arbiter_tests::process::free_port;
use arbiter_tests::{TestCoordinator, recorder_participant};

struct PythonParticipant {
    child: Child,
    endpoint: String,
    log: PathBuf,
}

impl PythonParticipant {
    fn start(dir: &Path) -> anyhow::Result<PythonParticipant> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let port = free_port()?;
        let log = dir.join("python-calls.tsv");
        let mut child = Command::new("python3")
            .arg(root.join("python/participant.py"))
            .args(["--port", &port.to_string(), "--log"])
            .arg(&log)
            .arg("--proto-dir")
            .arg(root.join("../proto"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting python3 (install python3 with grpcio and grpcio-tools)")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut first = String::new();
        BufReader::new(stdout).read_line(&mut first)?;
        if first.trim() != "ready" {
            let status = child.wait()?;
            bail!("the python participant did not start ({status}); is grpcio-tools installed?");
        }
        Ok(PythonParticipant {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            log,
        })
    }

    /// The calls it received for `txn_id`, in order.
    fn calls(&self, txn_id: &str) -> anyhow::Result<Vec<String>> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        Ok(text
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split('\t').collect();
                (fields.get(1) == Some(&txn_id)).then(|| fields[0].to_string())
            })
            .collect())
    }
}

impl Drop for PythonParticipant {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn python_participant_takes_part_in_two_phase_and_tcc() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let python = PythonParticipant::start(dir.path())?;
    let coordinator = TestCoordinator::start().await?;
    let (rust, rec) = recorder_participant().await?;

    let committed = coordinator
        .client
        .execute(
            Execute::two_phase()
                .branch(Branch::new(&python.endpoint, "inventory.reserve").payload("sku-1 x2"))
                .branch(Branch::new(rust.endpoint(), "r1")),
        )
        .await?;
    assert_eq!(committed.state, TxnState::Committed, "{}", committed.reason);
    assert_eq!(python.calls(&committed.txn_id)?, vec!["prepare", "commit"]);
    assert_eq!(rec.calls(&committed.txn_id), vec!["prepare", "commit"]);

    let refused = coordinator
        .client
        .execute(
            Execute::tcc()
                .branch(Branch::new(rust.endpoint(), "r1"))
                .branch(Branch::new(&python.endpoint, "inventory.reserve").payload("no:sold out")),
        )
        .await?;
    assert_eq!(refused.state, TxnState::Aborted);
    assert!(refused.reason.contains("sold out"), "{}", refused.reason);
    assert_eq!(python.calls(&refused.txn_id)?, vec!["try", "cancel"]);
    assert_eq!(rec.calls(&refused.txn_id), vec!["try", "cancel"]);

    let confirmed = coordinator
        .client
        .execute(Execute::tcc().branch(Branch::new(&python.endpoint, "inventory.reserve")))
        .await?;
    assert!(confirmed.is_committed());
    assert_eq!(python.calls(&confirmed.txn_id)?, vec!["try", "confirm"]);

    // Branch results from a participant built from the protos alone: with
    // the vote, then replaced by the ack's.
    for execute in [Execute::two_phase(), Execute::tcc()] {
        let answered = coordinator
            .client
            .execute(
                execute
                    .branch(
                        Branch::new(&python.endpoint, "inventory.reserve").payload("result:box 9"),
                    )
                    .wait(true),
            )
            .await?;
        assert!(answered.is_committed(), "{answered:?}");
        assert_eq!(answered.result_of("1"), Some(&b"done:box 9"[..]));
    }

    // An ack with a result over the limit still counts; the result is dropped.
    let oversized = coordinator
        .client
        .execute(
            Execute::two_phase()
                .branch(Branch::new(&python.endpoint, "inventory.reserve").payload("huge-ack"))
                .wait(true),
        )
        .await?;
    assert!(oversized.is_committed(), "{oversized:?}");
    assert_eq!(oversized.result_of("1"), None);
    assert_eq!(python.calls(&oversized.txn_id)?, vec!["prepare", "commit"]);
    Ok(())
}
