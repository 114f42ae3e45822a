//! The log is never served damaged: real `arbiter` processes, a committed
//! workload, a clean stop, then the data directory is damaged as a bad
//! restore, a full disk or a storage fault would. Each start must either
//! refuse with one clear message (no panic, no backtrace) or serve every
//! acknowledged transaction intact; never answer NOT_FOUND for one of them.
#![allow(clippy::expect_used)] // a test's expectation failing is the test failing

use std::path::{Path, PathBuf};

use arbiter_proto::v1 as pb;
use arbiter_proto::v1::admin_client::AdminClient;
use arbiter_sdk::{Branch, Execute, TxnState};
use arbiter_tests::process::Start;
use arbiter_tests::{ArbiterProcess, code_of, copy_dir, recorder_participant};

/// Commits `n` 2PC transactions of two branches with `payload` bytes each
/// on a fresh log in `dir`, stops the coordinator cleanly, returns their ids.
async fn committed_log(dir: &Path, n: usize, payload: usize) -> anyhow::Result<Vec<String>> {
    let (participant, _recorder) = recorder_participant().await?;
    let endpoint = participant.endpoint();
    let mut arbiter = ArbiterProcess::start(dir, &[]).await?;
    let client = arbiter.client().await?;
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        // A payload the recorder reads as "yes", padded to size.
        let body = format!("yes:{}", "x".repeat(payload.saturating_sub(4)));
        let outcome = client
            .execute(
                Execute::two_phase()
                    .branch(Branch::new(&endpoint, "r1").payload(body.clone()))
                    .branch(Branch::new(&endpoint, "r2").payload(body)),
            )
            .await?;
        anyhow::ensure!(outcome.state == TxnState::Committed, "{outcome:?}");
        ids.push(outcome.txn_id);
    }
    anyhow::ensure!(arbiter.terminate().await?, "clean stop");
    Ok(ids)
}

/// Starts on `dir` with `args`: refused with a clear message, or serving
/// every one of `ids` as COMMITTED. Returns the refusal text, if refused.
async fn refused_or_intact(
    dir: &Path,
    args: &[&str],
    ids: &[String],
) -> anyhow::Result<Option<String>> {
    let stderr = dir.with_extension("stderr");
    match ArbiterProcess::try_start(dir, args, &stderr).await? {
        Start::Refused { code, stderr } => {
            assert_eq!(code, Some(1), "refusal exit code; stderr:\n{stderr}");
            assert!(!stderr.contains("panicked"), "no panic text:\n{stderr}");
            assert!(
                !stderr.contains("stack backtrace"),
                "no backtrace:\n{stderr}"
            );
            assert!(
                stderr.contains(&dir.display().to_string()),
                "names the directory:\n{stderr}"
            );
            Ok(Some(stderr))
        }
        Start::Serving(mut arbiter) => {
            let client = arbiter.client().await?;
            for id in ids {
                let txn = client.get_transaction(id).await;
                let state = txn.as_ref().map(|t| t.state());
                assert_eq!(
                    state.map_err(code_of),
                    Ok(pb::TxnState::Committed),
                    "transaction {id} after the damage"
                );
            }
            arbiter.terminate().await?;
            Ok(None)
        }
    }
}

/// Starts on `dir` with `--accept-damaged-log`; it must serve.
async fn accepted(dir: &Path) -> anyhow::Result<ArbiterProcess> {
    let stderr = dir.with_extension("accept.stderr");
    match ArbiterProcess::try_start(dir, &["--accept-damaged-log"], &stderr).await? {
        Start::Serving(arbiter) => Ok(arbiter),
        Start::Refused { stderr, .. } => anyhow::bail!("refused despite the flag: {stderr}"),
    }
}

fn blob_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("blobs"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.sort();
    Ok(files)
}

fn truncate(file: &Path, fraction: f64) -> anyhow::Result<()> {
    let len = std::fs::metadata(file)?.len();
    let f = std::fs::OpenOptions::new().write(true).open(file)?;
    f.set_len((len as f64 * fraction) as u64)?;
    Ok(())
}

fn flip_bytes(file: &Path, seed: u64, count: usize) -> anyhow::Result<()> {
    let mut bytes = std::fs::read(file)?;
    let mut rng = fastrand::Rng::with_seed(seed);
    // Away from the very start, where a header would be easy to spot.
    let from = bytes.len() / 8;
    for _ in 0..count {
        let i = rng.usize(from..bytes.len());
        bytes[i] ^= 1 << rng.u8(..8);
    }
    std::fs::write(file, bytes)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_truncated_or_flipped_db_is_refused_or_served_whole() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let pristine = root.path().join("pristine");
    let ids = committed_log(&pristine, 300, 200).await?;
    let mut refusals = Vec::new();
    for (name, damage) in [
        (
            "truncated-10",
            Box::new(|d: &Path| truncate(&d.join("db"), 0.10))
                as Box<dyn Fn(&Path) -> anyhow::Result<()>>,
        ),
        (
            "truncated-50",
            Box::new(|d: &Path| truncate(&d.join("db"), 0.50)),
        ),
        (
            "flipped-1",
            Box::new(|d: &Path| flip_bytes(&d.join("db"), 1, 1)),
        ),
        (
            "flipped-16",
            Box::new(|d: &Path| flip_bytes(&d.join("db"), 2, 16)),
        ),
        (
            "flipped-256",
            Box::new(|d: &Path| flip_bytes(&d.join("db"), 3, 256)),
        ),
    ] {
        let dir = root.path().join(name);
        copy_dir(&pristine, &dir)?;
        damage(&dir)?;
        if let Some(message) = refused_or_intact(&dir, &[], &ids).await? {
            refusals.push((name, message));
        }
    }
    let names: Vec<&str> = refusals.iter().map(|(n, _)| *n).collect();
    assert!(
        names.contains(&"truncated-10"),
        "a db cut to 10% is refused: {names:?}"
    );
    for (name, message) in &refusals {
        println!("--- {name}\n{message}");
        assert!(message.contains("damaged"), "{name}: {message}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flipped_or_missing_blob_is_refused_even_with_the_flag() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let pristine = root.path().join("pristine");
    // 60 KiB payloads: sled keeps pages that large in blob files.
    let ids = committed_log(&pristine, 12, 60 * 1024).await?;
    anyhow::ensure!(
        !blob_files(&pristine)?.is_empty(),
        "the workload made blob files"
    );

    let flipped = root.path().join("flipped");
    copy_dir(&pristine, &flipped)?;
    for blob in blob_files(&flipped)? {
        flip_bytes(&blob, 7, 1)?;
    }
    let message = refused_or_intact(&flipped, &[], &ids).await?;
    let message = message.expect("a flipped blob is refused");
    assert!(message.contains("damaged"), "{message}");

    let missing = root.path().join("missing");
    copy_dir(&pristine, &missing)?;
    std::fs::remove_dir_all(missing.join("blobs"))?;
    // Refused, or (when sled still holds older copies of the pages the
    // blobs held, which depends on when it wrote its snapshot) served with
    // every transaction whole: never served damaged.
    if let Some(message) = refused_or_intact(&missing, &[], &ids).await? {
        assert!(message.contains("damaged"), "{message}");
    }

    // Usually sled cannot open these at all, so there is nothing to accept.
    // When the flipped blob is one sled does not read at start (it depends
    // on when sled wrote its snapshot), sled may serve older copies of the
    // pages the blob held: an operator who accepts that damage gets what
    // the log still holds. What must hold: the acceptance is audited, the
    // coordinator serves without crashing, and every transaction answers a
    // real state of its life (committed, or an earlier one sled kept),
    // DATA_LOSS, or NOT_FOUND (lost with the pages), never anything else.
    let stderr = root.path().join("accept.stderr");
    match ArbiterProcess::try_start(&flipped, &["--accept-damaged-log"], &stderr).await? {
        Start::Refused { code, .. } => assert_eq!(code, Some(1)),
        Start::Serving(mut arbiter) => {
            let client = arbiter.client().await?;
            for id in &ids {
                let answer = client.get_transaction(id).await;
                let state = answer.as_ref().map(|t| t.state()).map_err(code_of);
                assert!(
                    matches!(
                        state,
                        Ok(pb::TxnState::Committed
                            | pb::TxnState::Committing
                            | pb::TxnState::Active
                            | pb::TxnState::Aborting
                            | pb::TxnState::Aborted)
                            | Err(tonic::Code::DataLoss | tonic::Code::NotFound)
                    ),
                    "transaction {id} on a flipped blob accepted: {state:?}"
                );
            }
            assert!(arbiter.is_running()?, "still serving");
            arbiter.terminate().await?;
        }
    }
    Ok(())
}

/// Overwrites the value of every key that starts with `prefix` and contains
/// `needle` with `value`, through sled itself (as a storage fault under sled's
/// own checksums would leave it).
fn overwrite_records(dir: &Path, prefix: u8, needle: &str, value: &[u8]) -> anyhow::Result<usize> {
    let db = sled::open(dir)?;
    let mut n = 0;
    for entry in db.scan_prefix([prefix]) {
        let (key, _) = entry?;
        if key.windows(needle.len()).any(|w| w == needle.as_bytes()) {
            db.insert(key, value)?;
            n += 1;
        }
    }
    db.flush()?;
    Ok(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_damaged_record_is_refused_and_once_accepted_only_its_transaction_is_lost()
-> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let dir = root.path().join("log");
    let ids = committed_log(&dir, 10, 100).await?;
    let victim = &ids[4];
    // The record of one transaction, with one bit flipped.
    let db = sled::open(&dir)?;
    let key = db
        .scan_prefix([0x05])
        .keys()
        .filter_map(Result::ok)
        .find(|k| k.windows(victim.len()).any(|w| w == victim.as_bytes()))
        .expect("the victim has a record");
    let mut value = db.get(&key)?.expect("a value").to_vec();
    value[2] ^= 0x10;
    db.insert(&key, value)?;
    db.flush()?;
    drop(db);

    let message = refused_or_intact(&dir, &[], &ids).await?.expect("refused");
    assert!(message.contains("checksum mismatch"), "{message}");
    assert!(
        message.contains(victim.as_str()),
        "names the record: {message}"
    );

    let mut arbiter = accepted(&dir).await?;
    let client = arbiter.client().await?;
    for id in &ids {
        let got = client.get_transaction(id).await;
        if id == victim {
            // Never NOT_FOUND, which a participant would read as "aborted".
            let code = got.as_ref().err().map(code_of);
            assert_eq!(code, Some(tonic::Code::DataLoss), "{got:?}");
        } else {
            assert_eq!(got?.state(), pb::TxnState::Committed, "{id} is served");
        }
    }
    let mut admin = AdminClient::connect(arbiter.endpoint.clone()).await?;
    let audit = admin
        .list_audit(pb::ListAuditRequest { limit: 10 })
        .await?
        .into_inner();
    let accepted = audit
        .entries
        .iter()
        .find(|e| e.action == "accept-damaged-log")
        .expect("the acceptance is audited");
    assert!(
        accepted.reason.contains(victim.as_str()),
        "{}",
        accepted.reason
    );
    let stats = admin.stats(pb::StatsRequest {}).await?.into_inner();
    assert!(stats.log_damaged_reads >= 1, "the damaged read is counted");
    arbiter.terminate().await?;

    // Accepted once, remembered: the next start needs no flag, and the
    // damaged transaction still answers DATA_LOSS.
    let stderr = root.path().join("restart.stderr");
    let Start::Serving(mut arbiter) = ArbiterProcess::try_start(&dir, &[], &stderr).await? else {
        panic!(
            "restart after acceptance: {}",
            std::fs::read_to_string(&stderr)?
        );
    };
    let got = arbiter.client().await?.get_transaction(victim).await;
    assert_eq!(got.as_ref().err().map(code_of), Some(tonic::Code::DataLoss));
    arbiter.terminate().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_log_of_a_newer_format_is_refused_naming_both_versions() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let dir = root.path().join("log");
    committed_log(&dir, 1, 10).await?;
    let ours = arbiter::store::record::FORMAT;
    let newer = ours + 1;
    let arbiter::store::record::Op::Put(_, value) =
        arbiter::store::record::meta_op("format", newer)
    else {
        panic!("a put");
    };
    assert_eq!(overwrite_records(&dir, 0x00, "format", &value)?, 1);
    let message = refused_or_intact(&dir, &[], &[]).await?.expect("refused");
    assert!(message.contains(&format!("format {newer}")), "{message}");
    assert!(
        message.contains(&format!("formats 1 to {ours}")),
        "{message}"
    );
    // Accepting damage does not make a newer format readable.
    let message = refused_or_intact(&dir, &["--accept-damaged-log"], &[]).await?;
    assert!(message.is_some_and(|m| m.contains(&format!("format {newer}"))));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_older_format_log_is_served_and_marked_current_without_rewriting() -> anyhow::Result<()>
{
    let current = arbiter::store::record::FORMAT;
    for older in 2..current {
        let root = tempfile::tempdir()?;
        let dir = root.path().join("log");
        let ids = committed_log(&dir, 3, 10).await?;
        // What an earlier release would have left: the same records, its format.
        let arbiter::store::record::Op::Put(_, value) =
            arbiter::store::record::meta_op("format", older)
        else {
            panic!("a put");
        };
        assert_eq!(overwrite_records(&dir, 0x00, "format", &value)?, 1);
        let stderr = root.path().join("upgrade.stderr");
        let Start::Serving(mut arbiter) = ArbiterProcess::try_start(&dir, &[], &stderr).await?
        else {
            panic!("refused: {}", std::fs::read_to_string(&stderr)?);
        };
        let client = arbiter.client().await?;
        for id in &ids {
            assert_eq!(
                client.get_transaction(id).await?.state(),
                pb::TxnState::Committed
            );
        }
        arbiter.terminate().await?;
        let said = std::fs::read_to_string(&stderr)?;
        assert!(
            said.contains(&format!("marked the log as format {current} (was {older})")),
            "{said}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_log_behind_what_was_acknowledged_is_refused_until_accepted() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let dir = root.path().join("log");
    let early = committed_log(&dir, 20, 100).await?;
    // A backup of the db file, then more acknowledged work.
    let backup = root.path().join("db.backup");
    std::fs::copy(dir.join("db"), &backup)?;
    let later = committed_log(&dir, 20, 100).await?;
    // The bad restore: the old db under the newer mark.
    std::fs::copy(&backup, dir.join("db"))?;
    let message = refused_or_intact(&dir, &[], &later)
        .await?
        .expect("refused");
    assert!(message.contains("was acknowledged"), "{message}");
    assert!(
        message.contains("--accept-damaged-log"),
        "says how to start anyway: {message}"
    );

    let mut arbiter = accepted(&dir).await?;
    let client = arbiter.client().await?;
    for id in &early {
        assert_eq!(
            client.get_transaction(id).await?.state(),
            pb::TxnState::Committed
        );
    }
    arbiter.terminate().await?;
    // Accepted once: the mark now follows the restored log.
    assert!(
        refused_or_intact(&dir, &[], &early).await?.is_none(),
        "starts without the flag now"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_coordinator_on_the_same_directory_is_refused() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let dir = root.path().join("log");
    let mut first = ArbiterProcess::start(&dir, &[]).await?;
    let client = first.client().await?;
    arbiter_tests::eventually("the first serves", || {
        let client = client.clone();
        async move {
            client
                .get_transaction("probe")
                .await
                .err()
                .filter(|e| code_of(e) == tonic::Code::NotFound)
        }
    })
    .await;
    let message = refused_or_intact(&dir, &[], &[])
        .await?
        .expect("the second is refused");
    assert!(
        message.contains("another process is using this log"),
        "{message}"
    );
    assert!(first.is_running()?, "the first goes on serving");
    drop(client);
    first.terminate().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_garbled_or_missing_acknowledged_mark_is_refused() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let pristine = root.path().join("pristine");
    let ids = committed_log(&pristine, 5, 100).await?;
    let garbled = root.path().join("garbled");
    copy_dir(&pristine, &garbled)?;
    std::fs::write(garbled.join("ACKNOWLEDGED"), vec![0xffu8; 4096])?;
    let message = refused_or_intact(&garbled, &[], &ids)
        .await?
        .expect("refused");
    assert!(
        message.contains("acknowledged mark is unreadable"),
        "{message}"
    );
    let missing = root.path().join("missing");
    copy_dir(&pristine, &missing)?;
    std::fs::remove_file(missing.join("ACKNOWLEDGED"))?;
    let message = refused_or_intact(&missing, &[], &ids)
        .await?
        .expect("refused");
    assert!(message.contains("is missing"), "{message}");
    Ok(())
}
