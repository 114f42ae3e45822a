//! No binary a user builds from the README has failpoints: only the tests'
//! own `arbiter-failpoints` binary reads them.

use std::process::Command;
use std::time::{Duration, Instant};

/// The features `arbiter` is built with when cargo builds `args`' packages
/// for use (not for tests): `cargo tree` over normal and build edges.
fn arbiter_features(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "-e",
            "normal,build,features",
            "-i",
            "arbiter",
        ])
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output();
    match output {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
        Ok(out) => panic!(
            "cargo tree failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!("cannot run cargo tree: {e}"),
    }
}

#[test]
fn a_workspace_build_has_no_failpoints() {
    for args in [&["--workspace"][..], &["-p", "arbiter"][..]] {
        let tree = arbiter_features(args);
        assert!(tree.contains("arbiter v"), "{args:?}: {tree}");
        assert!(
            !tree.contains("failpoints"),
            "`cargo build {args:?}` would compile failpoints into arbiter:\n{tree}"
        );
    }
}

#[tokio::test]
async fn the_arbiter_binary_ignores_failpoints() -> anyhow::Result<()> {
    // Built by `cargo test --workspace` with failpoints compiled into the
    // library: the user's binary must still not arm them.
    let Some(bin) = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("arbiter")))
        .filter(|bin| bin.is_file())
    else {
        eprintln!("no arbiter binary next to this test (run with cargo test --workspace)");
        return Ok(());
    };
    let data = tempfile::tempdir()?;
    let port = arbiter_tests::process::free_port()?;
    // `after-begin-persisted` aborts on the first Begin when armed.
    let mut child = Command::new(&bin)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(data.path())
        .env("FAILPOINTS", "after-begin-persisted=return")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let began = loop {
        let endpoint = format!("http://127.0.0.1:{port}");
        if let Ok(client) = arbiter_sdk::Client::connect(endpoint).await
            && let Ok(id) = client.begin(arbiter_sdk::Mode::TwoPhase, None).await
        {
            break Some(id);
        }
        if Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let still_running = matches!(child.try_wait(), Ok(None));
    let _ = child.kill();
    let _ = child.wait();
    assert!(began.is_some(), "no Begin answered within 30 s");
    assert!(still_running, "the arbiter binary armed a failpoint");
    Ok(())
}
