//! The `arbiter` binary as users run it. Built here by `cargo test`, with
//! the failpoints of the test build compiled into the library: it must
//! still never arm them.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use arbiter_proto::v1 as pb;
use pb::coordinator_client::CoordinatorClient;

/// Kills the child when the test ends, however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_arbiter_binary_ignores_failpoints() -> Result<(), Box<dyn std::error::Error>> {
    let data = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    // `after-begin-persisted` would abort the process on the first Begin.
    let mut child = Child(
        Command::new(env!("CARGO_BIN_EXE_arbiter"))
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(data.path())
            .env("FAILPOINTS", "after-begin-persisted=return")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let began = loop {
        let endpoint = format!("http://127.0.0.1:{port}");
        if let Ok(mut client) = CoordinatorClient::connect(endpoint).await
            && let Ok(answer) = client
                .begin(pb::BeginRequest {
                    mode: pb::Mode::TwoPhase as i32,
                    ..Default::default()
                })
                .await
        {
            break Some(answer.into_inner().txn_id);
        }
        if Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(began.is_some(), "no Begin answered within 30 s");
    assert!(
        matches!(child.0.try_wait(), Ok(None)),
        "the arbiter binary armed a failpoint"
    );
    Ok(())
}
