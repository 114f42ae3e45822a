//! The acknowledged high-water mark: a small file beside sled's, outside it,
//! holding the number of the last durable batch the coordinator may have
//! acknowledged anything from. It is only ever written with a batch number
//! that is already durable in the log, at least once a second while writes
//! happen and at shutdown, so a log whose own batch counter is behind it has
//! lost acknowledged writes (a bad restore, a truncated file).
//!
//! The file has two fixed 64-byte text slots, written alternately, each with
//! its own checksum: a write torn by a crash spoils one slot, and the other
//! still holds the previous value. Readers take the highest valid slot.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::store::StoreError;

/// The file's name in the data directory.
pub const FILE: &str = "ACKNOWLEDGED";
const SLOT: usize = 64;
/// How often the mark follows the log while writes happen.
pub const EVERY: Duration = Duration::from_secs(1);

pub struct Hwm {
    file: File,
    path: PathBuf,
    value: u64,
    /// The slot the next store writes.
    next_slot: u64,
    stored_at: Instant,
}

fn slot_text(value: u64) -> [u8; SLOT] {
    let body = format!("batch={value:020}");
    let crc = crc32fast::hash(body.as_bytes());
    let line = format!("arbiter acknowledged {body} crc={crc:08x}");
    let mut slot = [b' '; SLOT];
    slot[..line.len()].copy_from_slice(line.as_bytes());
    slot[SLOT - 1] = b'\n';
    slot
}

fn parse_slot(slot: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(slot).ok()?;
    let rest = text.strip_prefix("arbiter acknowledged ")?;
    let (body, rest) = rest.split_once(" crc=")?;
    let crc = u32::from_str_radix(rest.get(..8)?, 16).ok()?;
    if crc32fast::hash(body.as_bytes()) != crc {
        return None;
    }
    body.strip_prefix("batch=")?.parse().ok()
}

/// What the file says, if anything.
pub enum Reading {
    Missing,
    Unreadable(String),
    Value(u64),
}

impl Hwm {
    /// Reads the mark of `dir` without opening it for writing.
    pub fn read(dir: &Path) -> Reading {
        let path = dir.join(FILE);
        let mut bytes = Vec::new();
        // Two slots are all there is to read, however large the file.
        let limit = 2 * SLOT as u64;
        match File::open(&path).and_then(|f| f.take(limit).read_to_end(&mut bytes)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Reading::Missing,
            Err(e) => Reading::Unreadable(format!("{}: {e}", path.display())),
            Ok(_) => bytes.chunks(SLOT).filter_map(parse_slot).max().map_or_else(
                || {
                    Reading::Unreadable(format!(
                        "{} holds no valid mark (both slots fail their checksum)",
                        path.display()
                    ))
                },
                Reading::Value,
            ),
        }
    }

    /// Opens (creating if needed) the mark of `dir` and sets it to `value`.
    pub fn create(dir: &Path, value: u64) -> Result<Hwm, StoreError> {
        let path = dir.join(FILE);
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(StoreError::io("opening the acknowledged mark"))?;
        let mut hwm = Hwm {
            file,
            path,
            value: 0,
            next_slot: 0,
            stored_at: Instant::now(),
        };
        // Both slots, so that no stale value survives in either.
        hwm.store(value)?;
        hwm.store(value)?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(StoreError::io("fsync of the data directory"))?;
        Ok(hwm)
    }

    pub fn value(&self) -> u64 {
        self.value
    }

    /// Whether a second has passed since the last store.
    pub fn due(&self) -> bool {
        self.stored_at.elapsed() >= EVERY
    }

    /// Durably sets the mark to `value`, which must already be durable in the log.
    pub fn store(&mut self, value: u64) -> Result<(), StoreError> {
        let offset = (self.next_slot % 2) * SLOT as u64;
        self.file
            .write_all_at(&slot_text(value), offset)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| StoreError::Io {
                op: "writing the acknowledged mark",
                message: format!("{}: {e}", self.path.display()),
            })?;
        self.next_slot += 1;
        self.value = value;
        self.stored_at = Instant::now();
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn the_highest_valid_slot_wins_and_a_torn_slot_is_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut hwm = Hwm::create(dir.path(), 7).expect("create");
        hwm.store(8).expect("store");
        hwm.store(9).expect("store");
        assert!(matches!(Hwm::read(dir.path()), Reading::Value(9)));
        // Tear the slot holding 9 (the second): 8 is still there.
        let path = dir.path().join(FILE);
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[SLOT + 30] ^= 0x01;
        std::fs::write(&path, &bytes).expect("write");
        assert!(matches!(Hwm::read(dir.path()), Reading::Value(8)));
        bytes[30] ^= 0x01;
        std::fs::write(&path, &bytes).expect("write");
        assert!(matches!(Hwm::read(dir.path()), Reading::Unreadable(_)));
        // Whatever follows the two slots is never read.
        let mut longer = slot_text(5).repeat(2);
        longer.extend(std::iter::repeat_n(b'x', 1 << 20));
        std::fs::write(&path, &longer).expect("write");
        assert!(matches!(Hwm::read(dir.path()), Reading::Value(5)));
        std::fs::remove_file(&path).expect("remove");
        assert!(matches!(Hwm::read(dir.path()), Reading::Missing));
    }

    #[test]
    fn slots_are_readable_text() {
        let text = slot_text(42);
        let line = std::str::from_utf8(&text).expect("utf-8");
        assert!(line.starts_with("arbiter acknowledged batch=00000000000000000042 crc="));
        assert_eq!(parse_slot(&text), Some(42));
    }
}
