//! The sled-backed [`TxnLog`], the default.
//!
//! Durability: sled's `flush` writes its buffers with `sync_file_range`, which
//! is not a full sync, and it writes large values to `blobs/` files without any
//! sync at all. So after each flush this log fdatasyncs sled's main file and
//! fsyncs every blob file it has not synced before (and the blob directory).
//!
//! The data directory carries a marker file. A directory with the marker but
//! without sled's files, or a non-empty directory without the marker, is
//! refused: the coordinator must never start on an empty log in place of a
//! damaged or foreign one.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::engine::Txn;
use crate::store::{AuditEntry, StoreError, TxnLog, Write, keys};

const MARKER: &str = "ARBITER_LOG";
const MARKER_CONTENT: &str = "arbiter transaction log, format 1\n";

pub struct SledLog {
    db: sled::Db,
    dir: PathBuf,
    /// sled's log file, kept open for fdatasync after each flush.
    db_file: File,
    /// Blob files already fsync'ed; only touched by the single writer thread.
    synced_blobs: Mutex<HashSet<OsString>>,
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

impl SledLog {
    /// Opens (or, for a missing or empty directory, creates) the log in `dir`.
    pub fn open(dir: &Path) -> Result<SledLog, StoreError> {
        let fresh = prepare_dir(dir)?;
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            // One flusher only: the log writer. sled's background flusher would
            // run concurrently with it.
            .flush_every_ms(None)
            .open()
            .map_err(|e| {
                StoreError::Refused(format!(
                    "sled cannot open the log in {}: {e}",
                    dir.display()
                ))
            })?;
        let db_file = File::options()
            .read(true)
            .write(true)
            .open(dir.join("db"))
            .map_err(StoreError::io("opening sled's db file"))?;
        let log = SledLog {
            db,
            dir: dir.to_path_buf(),
            db_file,
            synced_blobs: Mutex::new(HashSet::new()),
        };
        if fresh {
            log.db
                .insert(keys::meta_key("format"), &[1u8][..])
                .map_err(sled_err("writing the format marker"))?;
            log.sync()?;
            write_marker(dir)?;
        }
        Ok(log)
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(sled_err("flushing sled"))?;
        self.db_file
            .sync_data()
            .map_err(StoreError::io("fdatasync of sled's db file"))?;
        self.sync_new_blobs()
    }

    fn sync_new_blobs(&self) -> Result<(), StoreError> {
        let blob_dir = self.dir.join("blobs");
        let entries = match std::fs::read_dir(&blob_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(StoreError::io("listing sled's blobs")(e)),
        };
        let mut synced = self
            .synced_blobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut present = HashSet::new();
        let mut any_new = false;
        for entry in entries {
            let entry = entry.map_err(StoreError::io("listing sled's blobs"))?;
            let name = entry.file_name();
            if !synced.contains(&name) {
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
        *synced = present;
        Ok(())
    }

    fn decode_at(&self, key: &[u8]) -> Result<Option<Txn>, StoreError> {
        match self
            .db
            .get(key)
            .map_err(sled_err("reading a transaction"))?
        {
            Some(value) => keys::decode_txn(&value).map(Some),
            None => Ok(None),
        }
    }
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
                        return refuse(format!(
                            "the log's file `{required}` is missing; the log is damaged \
                             (restore it from a backup; Arbiter will not start on an empty log)"
                        ));
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

impl TxnLog for SledLog {
    fn write(&self, batch: &[Write], sync: bool) -> Result<u64, StoreError> {
        let mut ops = sled::Batch::default();
        let mut bytes = 0u64;
        let mut insert = |ops: &mut sled::Batch, key: Vec<u8>, value: Vec<u8>| {
            bytes += (key.len() + value.len()) as u64;
            ops.insert(key, value);
        };
        for write in batch {
            let record = match write {
                Write::Txn(record) => record,
                Write::Audit(entry) => {
                    insert(&mut ops, keys::audit_key(entry), keys::encode_audit(entry)?);
                    continue;
                }
            };
            insert(
                &mut ops,
                keys::txn_key(&record.txn_id),
                record.value.clone(),
            );
            match record.finished_at_ms {
                None => insert(&mut ops, keys::unfinished_key(&record.txn_id), Vec::new()),
                Some(at) => {
                    ops.remove(keys::unfinished_key(&record.txn_id));
                    insert(&mut ops, keys::finished_key(at, &record.txn_id), Vec::new());
                }
            }
        }
        self.db
            .apply_batch(ops)
            .map_err(sled_err("writing a batch"))?;
        if sync {
            self.sync()?;
        }
        Ok(bytes)
    }

    fn get(&self, txn_id: &str) -> Result<Option<Txn>, StoreError> {
        self.decode_at(&keys::txn_key(txn_id))
    }

    fn unfinished(&self) -> Result<Vec<Txn>, StoreError> {
        let mut out = Vec::new();
        for entry in self.db.scan_prefix([keys::UNFINISHED]) {
            let (key, _) = entry.map_err(sled_err("scanning unfinished transactions"))?;
            let id = keys::parse_unfinished_key(&key)?;
            let txn = self.get(&id)?.ok_or_else(|| {
                StoreError::Corrupt(format!("unfinished index names missing transaction {id}"))
            })?;
            out.push(txn);
        }
        Ok(out)
    }

    fn collect_finished(&self, before_ms: u64, limit: usize) -> Result<usize, StoreError> {
        let mut ops = sled::Batch::default();
        let mut count = 0;
        for entry in self
            .db
            .range(vec![keys::FINISHED]..keys::finished_bound(before_ms))
            .take(limit)
        {
            let (key, _) = entry.map_err(sled_err("scanning finished transactions"))?;
            let (_, id) = keys::parse_finished_key(&key)?;
            ops.remove(key);
            ops.remove(keys::txn_key(&id));
            count += 1;
        }
        self.db
            .apply_batch(ops)
            .map_err(sled_err("collecting finished transactions"))?;
        Ok(count)
    }

    fn scan(
        &self,
        after: Option<&str>,
        newest_first: bool,
        limit: usize,
    ) -> Result<Vec<Txn>, StoreError> {
        let (start, end) = keys::txn_scan_range(after, newest_first);
        let range = self.db.range(start..end);
        let entries: Vec<sled::Result<(sled::IVec, sled::IVec)>> = if newest_first {
            range.rev().take(limit).collect()
        } else {
            range.take(limit).collect()
        };
        entries
            .into_iter()
            .map(|entry| {
                let (_, value) = entry.map_err(sled_err("scanning transactions"))?;
                keys::decode_txn(&value)
            })
            .collect()
    }

    fn audit(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        self.db
            .range(vec![keys::AUDIT]..vec![keys::AUDIT + 1])
            .rev()
            .take(limit)
            .map(|entry| {
                let (_, value) = entry.map_err(sled_err("reading the audit log"))?;
                keys::decode_audit(&value)
            })
            .collect()
    }
}
