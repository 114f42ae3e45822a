//! What happens before a log is served: its format is read (a newer one is
//! refused, format 1 is upgraded in place), and every record is checked: its
//! seal, its decoding, and that the indexes and the transactions agree.

use std::ops::ControlFlow;

use crate::store::kv::{Kv, Pair, load};
use crate::store::record::{self, FORMAT, Op, Record, TxnRecord, Written, v1};
use crate::store::{OpenOptions, StoreError, keys};

/// Most problems listed in a refusal; the rest are counted.
const LISTED: usize = 20;
/// Most record problems kept (and remembered once accepted).
const KEPT: usize = 100_000;
/// Keys read per step of a scan.
const CHUNK: usize = 1024;

/// The format number a log says it has; `None` when it says nothing.
pub fn format_of<K: Kv>(kv: &K) -> Result<Option<u64>, StoreError> {
    let key = keys::meta_key(keys::META_FORMAT);
    match kv.get(&key)? {
        None => Ok(None),
        // Format 1 stored the bare number.
        Some(value) if value == [1] => Ok(Some(1)),
        Some(value) => record::decode_meta(&key, &value).map(Some),
    }
}

/// Refuses a format newer than this binary's.
pub fn check_format(format: u64) -> Result<(), String> {
    if format > FORMAT {
        return Err(format!(
            "the log has format {format}, written by a newer Arbiter; this binary reads formats 1 to {FORMAT}. \
             Run a release that knows format {format}, or restore the backup taken before the upgrade"
        ));
    }
    Ok(())
}

/// Marks a checked log of an older format (2 to 4) as this binary's: format
/// 3 only added key ranges, formats 4 and 5 a mode and fields older records
/// do not use, so nothing is rewritten. Returns whether it did.
pub fn upgrade_format<K: Kv>(kv: &K, format: u64) -> Result<bool, StoreError> {
    if format >= FORMAT {
        return Ok(false);
    }
    kv.apply(&[record::meta_op(keys::META_FORMAT, FORMAT)])?;
    kv.sync()?;
    tracing::warn!(
        "marked the log as format {FORMAT} (was {format}); older releases will refuse it"
    );
    Ok(true)
}

/// Calls `f` with the pairs in `start..end`, [`CHUNK`] at a time, outside
/// the store's iteration (so `f` may read the store).
fn in_chunks<K: Kv>(
    kv: &K,
    start: &[u8],
    end: &[u8],
    mut f: impl FnMut(Vec<Pair>) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let mut from = start.to_vec();
    loop {
        let mut pairs = Vec::with_capacity(CHUNK);
        kv.visit(&from, end, false, &mut |k, v| {
            pairs.push((k.to_vec(), v.to_vec()));
            if pairs.len() >= CHUNK {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })?;
        let Some((last, _)) = pairs.last() else {
            return Ok(());
        };
        from = last.clone();
        from.push(0);
        let full = pairs.len() >= CHUNK;
        f(pairs)?;
        if !full {
            return Ok(());
        }
    }
}

/// What an upgrade from format 1 did.
#[derive(Debug, Default)]
pub struct Upgraded {
    pub transactions: usize,
    pub audit_entries: usize,
    /// Format-1 records that could not be read; left in place for the check
    /// to report.
    pub unreadable: usize,
}

/// Rewrites a format-1 log as format 2, a chunk of records per atomic apply,
/// then marks it format 2 and syncs. Safe to run again after a crash: what
/// was converted is gone from the format-1 keys.
pub fn upgrade_v1<K: Kv>(kv: &K) -> Result<Upgraded, StoreError> {
    let mut done = Upgraded::default();
    in_chunks(kv, &[keys::TXN_V1], &[keys::TXN_V1 + 1], |pairs| {
        let mut ops = Vec::new();
        for (key, value) in pairs {
            // Format 1 has no checksum: a record is taken only if it decodes
            // whole and names the transaction its key names. Anything else
            // stays where it is, for the check to report.
            let id = keys::parse_id_key(keys::TXN_V1, &key).ok();
            let converted = v1::decode_txn(&value)
                .ok()
                .filter(|txn| Some(&txn.id) == id.as_ref())
                .and_then(|txn| Record::of(&txn, &mut Written::default()).ok());
            match converted {
                Some(record) => {
                    ops.extend(record.ops);
                    ops.push(Op::Delete(key));
                    done.transactions += 1;
                }
                None => done.unreadable += 1,
            }
        }
        kv.apply(&ops)
    })?;
    in_chunks(kv, &[keys::AUDIT], &[keys::AUDIT + 1], |pairs| {
        let mut ops = Vec::new();
        for (key, value) in pairs.iter().filter(|(_, v)| v1::is_v1(v)) {
            // Kept only if it belongs under its key (at, seq).
            match v1::decode_audit(value).map(|entry| record::audit_op(&entry)) {
                Ok(op @ Op::Put(..)) if matches!(&op, Op::Put(k, _) if k == key) => {
                    ops.push(op);
                    done.audit_entries += 1;
                }
                _ => done.unreadable += 1,
            }
        }
        kv.apply(&ops)
    })?;
    kv.apply(&[
        record::meta_op(keys::META_FORMAT, FORMAT),
        record::meta_op(keys::META_BATCH, 0),
    ])?;
    kv.sync()?;
    Ok(done)
}

/// Puts back the index entry of every transaction whose record says it
/// belongs there and which is missing (after damage was accepted), so that
/// recovery drives every unfinished one. Returns how many were put back.
pub fn repair_indexes<K: Kv>(kv: &K) -> Result<usize, StoreError> {
    let mut repaired = 0;
    in_chunks(kv, &[keys::HEADER], &[keys::HEADER + 1], |pairs| {
        let mut ops = Vec::new();
        for (k, v) in pairs {
            let (Ok(id), Ok(txn)) = (
                keys::parse_id_key(keys::HEADER, &k),
                TxnRecord::decode(&k, &v),
            ) else {
                continue;
            };
            let index = match txn.finished_at_ms {
                Some(at) => keys::finished_key(at, &id),
                None => keys::unfinished_key(&id),
            };
            if kv.get(&index)?.is_none() {
                ops.push(Op::Put(index.clone(), record::seal_empty(&index)));
                repaired += 1;
            }
        }
        kv.apply(&ops)
    })?;
    kv.sync()?;
    Ok(repaired)
}

/// What the check of every record found.
#[derive(Debug, Default)]
pub struct Checked {
    pub records: u64,
    pub transactions: u64,
    /// The last durable batch the log holds (meta `batch`).
    pub batch: Option<u64>,
    /// Damaged or inconsistent records, one line each.
    pub problems: Vec<String>,
    /// Problems beyond `KEPT`.
    pub more_problems: usize,
}

impl Checked {
    fn problem(&mut self, what: String) {
        if self.problems.len() < KEPT {
            self.problems.push(what);
        } else {
            self.more_problems += 1;
        }
    }

    fn note<T>(&mut self, result: Result<T, StoreError>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                self.problem(e.to_string());
                None
            }
        }
    }
}

/// Problems as lines of a message: the first `LISTED`, then a count.
pub fn describe(problems: &[String], more: usize) -> String {
    let mut text: String = problems
        .iter()
        .take(LISTED)
        .map(|p| format!("\n  - {p}"))
        .collect();
    let rest = problems.len().saturating_sub(LISTED) + more;
    if rest > 0 {
        text.push_str(&format!("\n  - ... and {rest} more"));
    }
    text
}

/// Damage an operator accepted earlier (`--accept-damaged-log`): the problem
/// lines of that start, kept in the log so later starts do not refuse it again.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AcceptedDamage {
    #[prost(string, repeated, tag = "1")]
    pub problems: Vec<String>,
}

pub fn accepted_damage<K: Kv>(kv: &K) -> Result<Vec<String>, StoreError> {
    let key = keys::meta_key(keys::META_ACCEPTED);
    match kv.get(&key)? {
        None => Ok(Vec::new()),
        Some(value) => {
            let body = record::unseal(&key, &value)?;
            <AcceptedDamage as prost::Message>::decode(body)
                .map(|a| a.problems)
                .map_err(|e| StoreError::Corrupt(format!("the accepted-damage list: {e}")))
        }
    }
}

/// Remembers `problems` as accepted, durably.
pub fn accept_damage<K: Kv>(kv: &K, problems: Vec<String>) -> Result<(), StoreError> {
    let key = keys::meta_key(keys::META_ACCEPTED);
    let body = prost::Message::encode_to_vec(&AcceptedDamage { problems });
    kv.apply(&[Op::Put(key.clone(), record::seal(&key, &body))])?;
    kv.sync()
}

fn header_of<K: Kv>(kv: &K, id: &str) -> Result<Option<TxnRecord>, StoreError> {
    let key = keys::header_key(id);
    kv.get(&key)?
        .map(|v| TxnRecord::decode(&key, &v))
        .transpose()
}

/// Reads every record of the log and checks it. Reading errors of the store
/// itself (a missing page or blob) are problems too.
/// A store out of reach (a database restarting) is not damage: that is an
/// error, and the start can be tried again.
pub fn check_all<K: Kv>(kv: &K) -> Result<Checked, StoreError> {
    let mut c = Checked::default();
    match check_into(kv, &mut c) {
        Err(e @ StoreError::Unreachable(_)) => return Err(e),
        Err(e) => c.problem(format!("the log cannot be read to the end: {e}")),
        Ok(()) => {}
    }
    Ok(c)
}

fn check_into<K: Kv>(kv: &K, c: &mut Checked) -> Result<(), StoreError> {
    in_chunks(kv, &[keys::META], &[keys::META + 1], |pairs| {
        for (k, v) in pairs {
            c.records += 1;
            if k == keys::meta_key(keys::META_ACCEPTED) {
                c.note(record::unseal(&k, &v));
                continue;
            }
            let value = c.note(record::decode_meta(&k, &v));
            if k == keys::meta_key(keys::META_BATCH) {
                c.batch = value;
            }
        }
        Ok(())
    })?;
    in_chunks(kv, &[keys::TXN_V1], &[keys::TXN_V1 + 1], |pairs| {
        for (k, _) in pairs {
            c.records += 1;
            c.problem(format!(
                "a format-1 record that could not be upgraded at key {}",
                keys::describe(&k)
            ));
        }
        Ok(())
    })?;
    in_chunks(kv, &[keys::UNFINISHED], &[keys::UNFINISHED + 1], |pairs| {
        for (k, v) in pairs {
            c.records += 1;
            let Some(id) = c.note(
                record::unseal(&k, &v).and_then(|_| keys::parse_id_key(keys::UNFINISHED, &k)),
            ) else {
                continue;
            };
            match header_of(kv, &id) {
                Ok(Some(h)) if h.finished_at_ms.is_none() => {}
                Ok(Some(_)) => c.problem(format!(
                    "transaction {id} is finished but still in the unfinished index"
                )),
                Ok(None) => c.problem(format!(
                    "the unfinished index names transaction {id}, which the log does not hold"
                )),
                Err(e) => c.problem(e.to_string()),
            }
        }
        Ok(())
    })?;
    in_chunks(kv, &[keys::FINISHED], &[keys::FINISHED + 1], |pairs| {
        for (k, v) in pairs {
            c.records += 1;
            let Some((at, id)) =
                c.note(record::unseal(&k, &v).and_then(|_| keys::parse_finished_key(&k)))
            else {
                continue;
            };
            match header_of(kv, &id) {
                Ok(Some(h)) if h.finished_at_ms == Some(at) => {}
                Ok(Some(_)) => c.problem(format!(
                    "the retention index disagrees with transaction {id}"
                )),
                Ok(None) => c.problem(format!(
                    "the retention index names transaction {id}, which the log does not hold"
                )),
                Err(e) => c.problem(e.to_string()),
            }
        }
        Ok(())
    })?;
    in_chunks(kv, &[keys::AUDIT], &[keys::AUDIT + 1], |pairs| {
        for (k, v) in pairs {
            c.records += 1;
            c.note(record::decode_audit(&k, &v));
        }
        Ok(())
    })?;
    in_chunks(kv, &[keys::HEADER], &[keys::HEADER + 1], |pairs| {
        for (k, _) in pairs {
            c.records += 1;
            c.transactions += 1;
            let Some(id) = c.note(keys::parse_id_key(keys::HEADER, &k)) else {
                continue;
            };
            let Some(Some(txn)) = c.note(load(kv, &id)) else {
                continue;
            };
            let index = match txn.finished_at_ms {
                Some(at) => keys::finished_key(at, &id),
                None => keys::unfinished_key(&id),
            };
            if kv.get(&index)?.is_none() {
                c.problem(format!(
                    "transaction {id} is missing from its index ({})",
                    keys::describe(&index)
                ));
            }
        }
        Ok(())
    })?;
    let mut owner: Option<(String, usize)> = None;
    in_chunks(kv, &[keys::SPEC], &[keys::SPEC + 1], |pairs| {
        for (k, _) in pairs {
            c.records += 1;
            let Some(id) = c.note(keys::parse_branch_owner(&k)) else {
                continue;
            };
            if owner.as_ref().map(|(o, _)| o) != Some(&id) {
                let branches = header_of(kv, &id)
                    .ok()
                    .flatten()
                    .map_or(0, |h| h.branches.len());
                owner = Some((id.clone(), branches));
            }
            let branches = owner.as_ref().map_or(0, |(_, n)| *n);
            let first = keys::parse_branch_index(keys::spec_prefix(&id).len(), &k);
            if !matches!(first, Ok(i) if i < branches) {
                c.problem(format!(
                    "branch specs {} that belong to no transaction",
                    keys::describe(&k)
                ));
            }
        }
        Ok(())
    })?;
    check_changes_and_notices(kv, c)?;
    let end = [keys::UNASSIGNED];
    kv.visit(&end, &[u8::MAX; 256], false, &mut |k, _| {
        c.records += 1;
        c.problem(format!("an unknown key {}", keys::describe(k)));
        ControlFlow::Continue(())
    })?;
    Ok(())
}

/// Judges a checked log: damage accepted earlier is warned about; new damage
/// (or `whole`, problems of the log as a whole) refuses `what` unless
/// `options` accept it, in which case indexes are repaired and the damage
/// remembered. Returns the accepted problems, one line each, if any.
pub fn judge<K: Kv>(
    kv: &K,
    checked: &Checked,
    whole: Vec<String>,
    options: OpenOptions,
    what: &str,
    remedy: &str,
) -> Result<Option<String>, StoreError> {
    let accepted: std::collections::HashSet<String> = match accepted_damage(kv) {
        Err(e @ StoreError::Unreachable(_)) => return Err(e),
        other => other.unwrap_or_default().into_iter().collect(),
    };
    let (known, new): (Vec<String>, Vec<String>) = checked
        .problems
        .iter()
        .cloned()
        .partition(|p| accepted.contains(p));
    if !known.is_empty() {
        tracing::warn!(
            records = known.len(),
            "the log still holds damaged records accepted earlier with --accept-damaged-log; \
             their transactions answer DATA_LOSS:{}",
            describe(&known, 0)
        );
    }
    if whole.is_empty() && new.is_empty() && checked.more_problems == 0 {
        return Ok(None);
    }
    let mut listed = whole;
    listed.extend(new);
    let problems = describe(&listed, checked.more_problems);
    if !options.accept_damage {
        return Err(StoreError::Damaged(format!(
            "{what} is damaged; Arbiter will not serve it:{problems}\n\
             {remedy} To start on it anyway, accepting that the transactions named above \
             may be lost or wrong, start once with --accept-damaged-log (recorded in the \
             audit log)."
        )));
    }
    tracing::warn!(
        "starting on a damaged transaction log because --accept-damaged-log was given:{problems}"
    );
    let repaired = repair_indexes(kv)?;
    if repaired > 0 {
        tracing::warn!(
            repaired,
            "put back missing index entries, so every unfinished transaction is resumed"
        );
    }
    accept_damage(kv, checked.problems.clone())?;
    Ok(Some(problems))
}

/// Each batch of changes and each notification belongs to a transaction the
/// log holds; changes are numbered no further than its record says.
fn check_changes_and_notices<K: Kv>(kv: &K, c: &mut Checked) -> Result<(), StoreError> {
    let mut owner: Option<(String, Option<u64>)> = None;
    in_chunks(kv, &[keys::CHANGES], &[keys::CHANGES + 1], |pairs| {
        for (k, v) in pairs {
            c.records += 1;
            let Some(changes) = c.note(record::decode_changes(&k, &v)) else {
                continue;
            };
            let Some((id, _)) = c.note(keys::parse_changes_key(&k)) else {
                continue;
            };
            if owner.as_ref().map(|(o, _)| o) != Some(&id) {
                let last = header_of(kv, &id).ok().flatten().map(|h| h.last_seq);
                owner = Some((id.clone(), last));
            }
            // A record may say fewer changes than the log holds (rewritten
            // by a format-2 node sharing the store); the transaction must
            // exist, that is all.
            if owner.as_ref().and_then(|(_, l)| *l).is_none() || changes.is_empty() {
                c.problem(format!(
                    "changes {} that belong to no transaction",
                    keys::describe(&k)
                ));
            }
        }
        Ok(())
    })?;
    in_chunks(kv, &[keys::NOTICE], &[keys::NOTICE + 1], |pairs| {
        for (k, v) in pairs {
            c.records += 1;
            if c.note(record::decode_notice(&k, &v)).is_none() {
                continue;
            }
            if let Some((id, _)) = c.note(keys::parse_notice_key(&k))
                && !matches!(header_of(kv, &id), Ok(Some(_)))
            {
                c.problem(format!(
                    "a notification {} of a transaction the log does not hold",
                    keys::describe(&k)
                ));
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryKv;

    #[test]
    fn the_upgrade_takes_only_records_that_belong_under_their_key() {
        let kv = MemoryKv::default();
        kv.apply(&[
            Op::Put(keys::v1_txn_key("c"), v1::sample_bytes("c")),
            // Damage that still decodes: another transaction's bytes.
            Op::Put(keys::v1_txn_key("a"), v1::sample_bytes("b")),
            Op::Put(keys::meta_key(keys::META_FORMAT), vec![1]),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        let done = upgrade_v1(&kv).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((done.transactions, done.unreadable), (1, 1));
        assert!(matches!(load(&kv, "c"), Ok(Some(_))));
        assert_eq!(load(&kv, "b"), Ok(None), "nothing filed under the wrong id");
        assert!(
            matches!(load(&kv, "a"), Err(StoreError::Corrupt(_))),
            "an unreadable record is damage, never absence"
        );
        let checked = check_all(&kv).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(checked.problems.len(), 1, "{:?}", checked.problems);
        // Run again (as after a crash): nothing more to do, nothing lost.
        let again = upgrade_v1(&kv).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((again.transactions, again.unreadable), (0, 1));
        assert!(matches!(load(&kv, "c"), Ok(Some(_))));
    }

    #[test]
    fn the_accepted_damage_list_has_golden_bytes_and_reads_back() {
        let kv = MemoryKv::default();
        let problems = vec!["a checksum mismatch at key txn/t-1".to_string()];
        accept_damage(&kv, problems.clone()).unwrap_or_else(|e| panic!("{e}"));
        let key = keys::meta_key(keys::META_ACCEPTED);
        let value = kv.get(&key).ok().flatten().unwrap_or_default();
        let hex: String = value.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "020a226120636865636b73756d206d69736d61746368206174206b65792074786e2f742d314f9ea842"
        );
        assert_eq!(accepted_damage(&kv), Ok(problems));
        assert!(
            check_all(&kv)
                .unwrap_or_else(|e| panic!("{e}"))
                .problems
                .is_empty(),
            "the list itself is a valid record"
        );
    }

    #[test]
    fn missing_index_entries_are_put_back() {
        let kv = MemoryKv::default();
        let txn = crate::engine::Txn::new("t".into(), crate::engine::Mode::Tcc, 1_000, 5);
        let record = Record::of(&txn, &mut Written::default()).unwrap_or_else(|e| panic!("{e}"));
        kv.apply(&record.ops).unwrap_or_else(|e| panic!("{e}"));
        kv.apply(&[Op::Delete(keys::unfinished_key("t"))])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            check_all(&kv)
                .unwrap_or_else(|e| panic!("{e}"))
                .problems
                .len(),
            1
        );
        assert_eq!(repair_indexes(&kv), Ok(1));
        assert!(
            check_all(&kv)
                .unwrap_or_else(|e| panic!("{e}"))
                .problems
                .is_empty()
        );
    }
}
