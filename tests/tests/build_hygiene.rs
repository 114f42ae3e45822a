//! No binary a user builds from the README has failpoints: only the tests'
//! own `arbiter-failpoints` binary reads them (and `coordinator/tests/
//! binary.rs` checks that even a test build's `arbiter` ignores them).

use std::process::Command;

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
