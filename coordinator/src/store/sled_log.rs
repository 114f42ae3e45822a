//! The sled-backed log, the default: [`SledKv`] under [`KvLog`], and how a
//! data directory is opened.
//!
//! Durability: sled's `flush` writes its buffers with `sync_file_range`, which
//! is not a full sync, and it writes large values to `blobs/` files without any
//! sync at all. So after each flush this log fdatasyncs sled's main file and
//! fsyncs every blob file it has not synced before (and the blob directory).
//!
//! Opening refuses, with one message naming what is wrong, a directory that
//! is foreign, a log of a newer format, and a log that is damaged: sled
//! cannot open it (or panics trying), a record fails its check, or the log's
//! batch counter is behind the acknowledged mark ([`hwm`]). An operator may
//! accept a damaged log knowingly ([`OpenOptions::accept_damage`]).
//!
//! [`hwm`]: crate::store::hwm

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::store::hwm::{self, Hwm, Reading};
use crate::store::kv::{Kv, KvLog, Visitor, walk};
use crate::store::open;
use crate::store::record::{self, FORMAT, Op};
use crate::store::{StoreError, keys};

const MARKER: &str = "ARBITER_LOG";
/// How long opening waits for sled's lock on `db` to be let go.
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(3);
const MARKER_CONTENT: &str = "arbiter transaction log\n";

/// The sled-backed transaction log.
pub type SledLog = KvLog<SledKv>;

pub struct SledKv {
    db: sled::Db,
    dir: PathBuf,
    /// sled's log file, kept open for fdatasync after each flush.
    db_file: File,
    /// Blob files already fsync'ed; only touched by the single writer thread.
    synced_blobs: Mutex<Blobs>,
}

/// sled reports its file lock held by another handle as an I/O error of
/// kind `Other` whose text says so.
fn lock_held(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock
        || io.to_string().contains("could not acquire lock"))
}

fn sled_err(op: &'static str) -> impl FnOnce(sled::Error) -> StoreError {
    move |e| match e {
        sled::Error::Corruption { .. } => StoreError::Corrupt(format!("{op}: {e}")),
        other => StoreError::Io {
            op,
            message: other.to_string(),
        },
    }
}

/// How to open a data directory.
#[derive(Clone, Copy, Debug, Default)]
pub struct OpenOptions {
    /// Start on a damaged log anyway: damaged records are left alone and
    /// reported, the acknowledged mark is reset to what the log holds.
    pub accept_damage: bool,
}

/// What opening found, for the start-up log and the audit trail.
#[derive(Debug, Default)]
pub struct OpenReport {
    pub upgraded: Option<open::Upgraded>,
    pub records: u64,
    pub transactions: u64,
    /// Damage accepted with [`OpenOptions::accept_damage`], one line each.
    pub accepted_damage: Option<String>,
}

impl SledKv {
    fn open(dir: &Path) -> Result<SledKv, StoreError> {
        let config = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            // One flusher only: the log writer. sled's background flusher would
            // run concurrently with it.
            .flush_every_ms(None);
        // sled's file lock outlives a closed `Db` for a moment (its I/O
        // threads let go late): wait a little for it, then say who holds it.
        let deadline = std::time::Instant::now() + LOCK_PATIENCE;
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(e) if lock_held(&e) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) if lock_held(&e) => {
                    return Err(StoreError::Refused(format!(
                        "{}: another process is using this log (sled's lock on `db` is held); \
                         one coordinator per data directory",
                        dir.display()
                    )));
                }
                Err(e) => {
                    return Err(StoreError::Damaged(format!(
                        "sled cannot open the log in {}: {e}",
                        dir.display()
                    )));
                }
            }
        };
        let db_file = File::options()
            .read(true)
            .write(true)
            .open(dir.join("db"))
            .map_err(StoreError::io("opening sled's db file"))?;
        Ok(SledKv {
            db,
            dir: dir.to_path_buf(),
            db_file,
            synced_blobs: Mutex::new(Blobs::default()),
        })
    }

    /// fsyncs blob files sled created since the last call. The blob
    /// directory is listed only when its modification time moved: a stat
    /// needs no descriptor, a listing does, and this runs on every flush.
    fn sync_new_blobs(&self) -> Result<(), StoreError> {
        let blob_dir = self.dir.join("blobs");
        let mut blobs = self
            .synced_blobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let modified = match std::fs::metadata(&blob_dir).and_then(|m| m.modified()) {
            Ok(modified) => modified,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(StoreError::io("looking at sled's blobs")(e)),
        };
        if blobs.unchanged(modified) {
            return Ok(());
        }
        let listed_at = std::time::SystemTime::now();
        let entries =
            std::fs::read_dir(&blob_dir).map_err(StoreError::io("listing sled's blobs"))?;
        let mut present = HashSet::new();
        let mut any_new = false;
        for entry in entries {
            let entry = entry.map_err(StoreError::io("listing sled's blobs"))?;
            let name = entry.file_name();
            if !blobs.synced.contains(&name) {
                File::open(entry.path())
                    .and_then(|f| f.sync_all())
                    .map_err(StoreError::io("fsync of a sled blob"))?;
                any_new = true;
            }
            present.insert(name);
        }
        if any_new {
            sync_dir(&blob_dir)?;
        }
        *blobs = Blobs {
            synced: present,
            listed: Some((modified, listed_at)),
        };
        Ok(())
    }
}

/// Blob files already fsynced, and when their directory was last listed.
#[derive(Default)]
struct Blobs {
    synced: HashSet<OsString>,
    /// The directory's modification time when listed, and when that was.
    listed: Option<(std::time::SystemTime, std::time::SystemTime)>,
}

impl Blobs {
    /// Whether the directory cannot have changed since it was listed: same
    /// modification time, and that time well before the listing. A change
    /// within the file system's timestamp granularity of it would not show:
    /// 3 s covers the coarsest in use (2 s on FAT; 1 s on ext3, HFS+ and
    /// ext4 with small inodes).
    fn unchanged(&self, modified: std::time::SystemTime) -> bool {
        self.listed.is_some_and(|(seen, listed_at)| {
            seen == modified
                && listed_at
                    .duration_since(seen)
                    .is_ok_and(|gap| gap > std::time::Duration::from_secs(3))
        })
    }
}

impl Kv for SledKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.db
            .get(key)
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(sled_err("reading the log"))
    }

    fn visit(
        &self,
        start: &[u8],
        end: &[u8],
        reverse: bool,
        f: &mut Visitor<'_>,
    ) -> Result<(), StoreError> {
        if start >= end {
            return Ok(());
        }
        let range = self
            .db
            .range(start..end)
            .map(|item| item.map_err(sled_err("scanning the log")));
        walk(range, reverse, f)
    }

    fn apply<'a>(&self, ops: impl IntoIterator<Item = &'a Op>) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for op in ops {
            match op {
                Op::Put(k, v) => batch.insert(k.as_slice(), v.as_slice()),
                Op::Delete(k) => batch.remove(k.as_slice()),
            }
        }
        self.db
            .apply_batch(batch)
            .map_err(sled_err("writing a batch"))
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(sled_err("flushing sled"))?;
        self.db_file
            .sync_data()
            .map_err(StoreError::io("fdatasync of sled's db file"))?;
        self.sync_new_blobs()
    }
}

impl KvLog<SledKv> {
    /// Opens (or, for a missing or empty directory, creates) the log in `dir`.
    pub fn open(dir: &Path, options: OpenOptions) -> Result<(SledLog, OpenReport), StoreError> {
        let fresh = prepare_dir(dir)?;
        crate::store::guard::no_panic(&format!("opening the log in {}", dir.display()), || {
            let kv = SledKv::open(dir)?;
            if fresh {
                return create(dir, kv);
            }
            open_existing(dir, kv, options)
        })
    }
}

fn create(dir: &Path, kv: SledKv) -> Result<(SledLog, OpenReport), StoreError> {
    kv.apply(&[
        record::meta_op(keys::META_FORMAT, FORMAT),
        record::meta_op(keys::META_BATCH, 0),
    ])?;
    kv.sync()?;
    let hwm = Hwm::create(dir, 0)?;
    write_marker(dir)?;
    Ok((KvLog::over(kv, 0, Some(hwm)), OpenReport::default()))
}

fn open_existing(
    dir: &Path,
    kv: SledKv,
    options: OpenOptions,
) -> Result<(SledLog, OpenReport), StoreError> {
    let mut report = OpenReport::default();
    let format = open::format_of(&kv)?.ok_or_else(|| {
        StoreError::Damaged(format!(
            "{}: the log is damaged: it holds data but does not say its format (its metadata \
             is missing). Restore the data directory from a backup",
            dir.display()
        ))
    })?;
    open::check_format(format)
        .map_err(|e| StoreError::Refused(format!("{}: {e}", dir.display())))?;
    if format == 1 {
        // Format 1 had no mark; start it before the log says format 2, so a
        // crash during the upgrade leaves a log the next start accepts.
        Hwm::create(dir, 0)?;
        let upgraded = open::upgrade_v1(&kv)?;
        tracing::info!(
            transactions = upgraded.transactions,
            audit_entries = upgraded.audit_entries,
            "upgraded the log from format 1 to format {FORMAT}"
        );
        report.upgraded = Some(upgraded);
    }
    let started = std::time::Instant::now();
    let checked = open::check_all(&kv)?;
    tracing::info!(records = checked.records, transactions = checked.transactions,
        elapsed = ?started.elapsed(), "checked every record of the log");
    report.records = checked.records;
    report.transactions = checked.transactions;
    // Problems of the log as a whole come first; they are never remembered.
    let mut whole = Vec::new();
    let batch = checked.batch.unwrap_or_else(|| {
        whole.push("the log's batch counter is missing".to_string());
        0
    });
    let mark = match Hwm::read(dir) {
        // Format 1 had no mark: the upgrade starts it.
        Reading::Missing if report.upgraded.is_some() => None,
        Reading::Missing => {
            whole.push(format!(
                "the acknowledged mark {} is missing, so the log cannot be checked for lost writes",
                dir.join(hwm::FILE).display()
            ));
            None
        }
        Reading::Unreadable(why) => {
            whole.push(format!("the acknowledged mark is unreadable: {why}"));
            None
        }
        Reading::Value(mark) => Some(mark),
    };
    if let Some(mark) = mark.filter(|&m| batch < m) {
        whole.push(format!(
            "the log ends at batch {batch}, but batch {mark} was acknowledged ({}): \
             writes the coordinator acknowledged are missing (a truncated or restored `db` file?)",
            dir.join(hwm::FILE).display()
        ));
    }
    report.accepted_damage = open::judge(
        &kv,
        &checked,
        whole,
        options,
        &format!("the transaction log in {}", dir.display()),
        "Restore the data directory from a backup.",
    )?;
    // What the log holds may still be only in the page cache (a crash
    // between a write and its fdatasync): make it durable before the mark
    // says so.
    open::upgrade_format(&kv, format)?;
    kv.sync()?;
    let hwm = Hwm::create(dir, batch)?;
    Ok((KvLog::over(kv, batch, Some(hwm)), report))
}

/// Checks the directory; returns whether it is new (needs the marker).
fn prepare_dir(dir: &Path) -> Result<bool, StoreError> {
    let refuse = |why: String| Err(StoreError::Refused(format!("{}: {why}", dir.display())));
    match std::fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(StoreError::io("creating the data directory"))?;
            Ok(true)
        }
        Err(e) => refuse(format!("cannot read the data directory: {e}")),
        Ok(mut entries) => {
            let has_marker = dir.join(MARKER).is_file();
            if has_marker {
                for required in ["db", "conf"] {
                    if !dir.join(required).is_file() {
                        return Err(StoreError::Damaged(format!(
                            "{}: the log's file `{required}` is missing; the log is damaged \
                             (restore it from a backup; Arbiter will not start on an empty log)",
                            dir.display()
                        )));
                    }
                }
                Ok(false)
            } else if entries.next().is_none() {
                Ok(true)
            } else {
                refuse(
                    "the directory is not empty and holds no Arbiter log; \
                     choose an empty or new directory"
                        .to_string(),
                )
            }
        }
    }
}

fn write_marker(dir: &Path) -> Result<(), StoreError> {
    let mut file = File::create(dir.join(MARKER)).map_err(StoreError::io("writing the marker"))?;
    file.write_all(MARKER_CONTENT.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(StoreError::io("writing the marker"))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io("fsync of a directory"))
}
