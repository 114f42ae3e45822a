//! The transaction log over any ordered key-value store: sled on disk, a
//! `BTreeMap` in memory. A backend only implements [`Kv`] (get, ordered visit,
//! atomic apply, sync); everything else, the key layout, index maintenance,
//! folding records back into transactions and the durable batch counter, is
//! written once here.

use std::ops::ControlFlow;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::engine::{Change, Txn};
use crate::store::hwm::Hwm;
pub use crate::store::load::load;
use crate::store::record::{self, Op, TxnRecord};
use crate::store::{AuditEntry, Owner, StoreError, TakenOver, TxnLog, Write, Wrote, history, keys};

/// What [`Kv::visit`] calls with each key and value.
pub type Visitor<'a> = dyn FnMut(&[u8], &[u8]) -> ControlFlow<()> + 'a;
/// A key and its value.
pub type Pair = (Vec<u8>, Vec<u8>);

/// The ops of one transaction in a batch, with what its ownership needs.
pub struct TxnOps<'a> {
    pub txn_id: &'a str,
    /// Its first record is among them: the writing node becomes its owner.
    pub creates: bool,
    /// It is final with them: its owner lets go of it.
    pub finishes: bool,
    /// The claim they are written under.
    pub claim: i64,
    pub ops: Vec<&'a Op>,
}

/// An ordered key-value store with atomic batches.
pub trait Kv: Send + Sync + 'static {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Calls `f` for each key in `start..end`, in key order (or reverse),
    /// until it says `Break`.
    fn visit(
        &self,
        start: &[u8],
        end: &[u8],
        reverse: bool,
        f: &mut Visitor<'_>,
    ) -> Result<(), StoreError>;

    /// Applies every op, all or none.
    fn apply<'a>(&self, ops: impl IntoIterator<Item = &'a Op>) -> Result<(), StoreError>;

    /// Makes everything applied so far durable.
    fn sync(&self) -> Result<(), StoreError>;

    /// The values of `keys` that exist, and every pair in `start..end` in
    /// key order, read as of one moment.
    fn read_together(
        &self,
        keys: &[Vec<u8>],
        start: &[u8],
        end: &[u8],
    ) -> Result<Vec<Pair>, StoreError> {
        let mut out = Vec::new();
        for key in keys {
            if let Some(v) = self.get(key)? {
                out.push((key.clone(), v));
            }
        }
        self.visit(start, end, false, &mut |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            ControlFlow::Continue(())
        })?;
        Ok(out)
    }

    /// The coordinators sharing this store, if it can be shared.
    fn nodes(&self) -> Result<Option<Vec<crate::store::NodeInfo>>, StoreError> {
        Ok(None)
    }

    /// For a store nodes share ([`Kv::shared`]): applies `shared` and the
    /// ops of each transaction this node owns (or creates), all or none, and
    /// returns the transactions it left out because another node owns them.
    /// A store one coordinator has to itself owns everything.
    fn apply_owned(
        &self,
        txns: &[TxnOps<'_>],
        shared: &[Op],
    ) -> Result<Vec<(String, i64)>, StoreError> {
        self.apply(
            txns.iter()
                .flat_map(|t| t.ops.iter().copied())
                .chain(shared),
        )?;
        Ok(Vec::new())
    }

    /// Whether nodes share this store (see [`TxnLog::shared`]).
    fn shared(&self) -> bool {
        false
    }

    /// See [`TxnLog::lease_lapses`].
    fn lease_lapses(&self) -> u64 {
        0
    }

    /// See [`TxnLog::owner`].
    fn owner(&self, _txn_id: &str) -> Result<Option<Owner>, StoreError> {
        Ok(None)
    }

    /// See [`TxnLog::owners`].
    fn owners(&self, _txn_ids: &[String]) -> Result<Vec<(String, String)>, StoreError> {
        Ok(Vec::new())
    }

    /// Claims transactions whose owner is gone (see [`TxnLog::take_over`]);
    /// returns each id with the node that owned it and the new claim.
    fn claim(
        &self,
        _limit: usize,
        _txn_id: Option<&str>,
    ) -> Result<Vec<(String, String, i64)>, StoreError> {
        Ok(Vec::new())
    }

    /// The transactions this node owns, with their claims.
    fn owned_here(&self) -> Result<Vec<(String, i64)>, StoreError> {
        Ok(Vec::new())
    }

    /// Gives up the owner rows of `txn_ids` (final transactions).
    fn release(&self, _txn_ids: &[String]) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Groups the records of `batch` by transaction and claim, in first-seen
/// order (a slot left over from an older claim is refused apart).
fn by_transaction(batch: &[Write]) -> Vec<TxnOps<'_>> {
    let mut txns: Vec<TxnOps<'_>> = Vec::new();
    let mut index: std::collections::HashMap<(&str, i64), usize> = std::collections::HashMap::new();
    for write in batch {
        let Write::Txn(record) = write else { continue };
        let key = (record.txn_id.as_str(), record.claim);
        let i = *index.entry(key).or_insert_with(|| {
            txns.push(TxnOps {
                txn_id: &record.txn_id,
                creates: false,
                finishes: false,
                claim: record.claim,
                ops: Vec::new(),
            });
            txns.len() - 1
        });
        let txn = &mut txns[i];
        txn.creates |= record.creates;
        txn.finishes |= record.finishes;
        txn.ops.extend(record.ops.iter());
    }
    txns
}

/// Feeds `items` (a store's range, in key order) to `f`, backwards if
/// `reverse`, until `f` says `Break` or an item is an error.
pub fn walk<K: AsRef<[u8]>, V: AsRef<[u8]>>(
    items: impl DoubleEndedIterator<Item = Result<(K, V), StoreError>>,
    reverse: bool,
    f: &mut Visitor<'_>,
) -> Result<(), StoreError> {
    let items: Box<dyn Iterator<Item = _>> = if reverse {
        Box::new(items.rev())
    } else {
        Box::new(items)
    };
    for item in items {
        let (k, v) = item?;
        if f(k.as_ref(), v.as_ref()).is_break() {
            break;
        }
    }
    Ok(())
}

/// The end (exclusive) of the keys starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    vec![u8::MAX; prefix.len() + 1]
}

/// Collects the key-value pairs under `prefix`.
pub fn pairs_under<K: Kv + ?Sized>(kv: &K, prefix: &[u8]) -> Result<Vec<Pair>, StoreError> {
    let mut out = Vec::new();
    kv.visit(prefix, &prefix_end(prefix), false, &mut |k, v| {
        out.push((k.to_vec(), v.to_vec()));
        ControlFlow::Continue(())
    })?;
    Ok(out)
}

/// The transaction log over a [`Kv`].
pub struct KvLog<K: Kv> {
    pub(crate) kv: K,
    /// Number of the last durable batch; every synced write stores the next
    /// one under the meta key `batch`, in the same atomic apply.
    batch: AtomicU64,
    /// The acknowledged high-water mark kept outside the store, if any.
    hwm: Option<Mutex<Hwm>>,
    /// Damaged records met while serving (reads that failed their checks).
    damaged: AtomicU64,
    /// Transactions this node owns but cannot read: reported once, not at
    /// every look for idle ones.
    unreadable: Mutex<std::collections::HashSet<String>>,
}

impl<K: Kv> KvLog<K> {
    pub(crate) fn over(kv: K, batch: u64, hwm: Option<Hwm>) -> KvLog<K> {
        KvLog {
            kv,
            batch: AtomicU64::new(batch),
            hwm: hwm.map(Mutex::new),
            damaged: AtomicU64::new(0),
            unreadable: Mutex::default(),
        }
    }

    /// A damaged record was met while serving: report it and go on with the rest.
    fn damaged_read(&self, what: &str, error: &StoreError) {
        self.damaged.fetch_add(1, Ordering::Relaxed);
        crate::metrics::log_damaged_read();
        tracing::error!(%error, "damaged record in the transaction log while reading {what}; serving the rest");
    }

    fn checked<T>(&self, what: &str, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(e @ StoreError::Corrupt(_)) = &result {
            self.damaged_read(what, e);
        }
        result
    }

    fn hwm_update(&self, force: bool) -> Result<(), StoreError> {
        let Some(hwm) = &self.hwm else { return Ok(()) };
        let mut hwm = hwm.lock().unwrap_or_else(|p| p.into_inner());
        let batch = self.batch.load(Ordering::Acquire);
        if hwm.value() < batch && (force || hwm.due()) {
            hwm.store(batch)?;
        }
        Ok(())
    }
}

impl<K: Kv> TxnLog for KvLog<K> {
    fn write(&self, batch: &[Write], sync: bool) -> Result<Wrote, StoreError> {
        // The records' own ops are applied where they are (no copy of the
        // payloads); only audit entries and the batch counter are made here.
        let mut made = Vec::new();
        for write in batch {
            match write {
                Write::Audit(entry) => made.push(record::audit_op(entry)),
                Write::Plain(op) => made.push(op.clone()),
                Write::Txn(_) | Write::Barrier => {}
            }
        }
        let next = self
            .batch
            .load(Ordering::Acquire)
            .checked_add(1)
            .ok_or_else(|| StoreError::Corrupt("the log's batch counter is exhausted".into()))?;
        // The durable batch counter backs the acknowledged mark of a log
        // on one machine; nodes sharing a store would only contend for it.
        if sync && !self.kv.shared() {
            made.push(record::meta_op(keys::META_BATCH, next));
        }
        let (bytes, fenced) = if self.kv.shared() {
            let txns = by_transaction(batch);
            let fenced = self.kv.apply_owned(&txns, &made)?;
            let bytes = txns
                .iter()
                .filter(|t| !fenced.iter().any(|(id, c)| id == t.txn_id && *c == t.claim))
                .flat_map(|t| t.ops.iter().copied())
                .chain(made.iter())
                .map(|op| op.size() as u64)
                .sum();
            (bytes, fenced)
        } else {
            // One coordinator owns everything: no grouping on this path.
            let ops = || {
                batch
                    .iter()
                    .filter_map(|w| match w {
                        Write::Txn(record) => Some(record.ops.iter()),
                        Write::Audit(_) | Write::Plain(_) | Write::Barrier => None,
                    })
                    .flatten()
                    .chain(made.iter())
            };
            self.kv.apply(ops())?;
            (ops().map(|op| op.size() as u64).sum(), Vec::new())
        };
        if sync {
            if crate::failpoints::failing("log-sync-fails") {
                return Err(StoreError::Io {
                    op: "syncing the log",
                    message: "failpoint log-sync-fails".into(),
                });
            }
            self.kv.sync()?;
            self.batch.store(next, Ordering::Release);
            self.hwm_update(false)?;
        }
        Ok(Wrote { bytes, fenced })
    }

    fn checkpoint(&self) -> Result<(), StoreError> {
        if crate::failpoints::failing("checkpoint-fails") {
            return Err(StoreError::Io {
                op: "writing the acknowledged mark",
                message: "failpoint checkpoint-fails".into(),
            });
        }
        self.hwm_update(true)
    }

    fn get(&self, txn_id: &str) -> Result<Option<Txn>, StoreError> {
        self.checked(&format!("transaction {txn_id}"), load(&self.kv, txn_id))
    }

    fn unfinished(&self) -> Result<Vec<Txn>, StoreError> {
        let mut ids = Vec::new();
        let start = [keys::UNFINISHED];
        self.kv
            .visit(&start, &prefix_end(&start), false, &mut |k, _| {
                ids.push(keys::parse_id_key(keys::UNFINISHED, k));
                ControlFlow::Continue(())
            })?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            // Damage was found (and refused, or knowingly accepted) at start;
            // a transaction that cannot be read is reported and left alone.
            let loaded = id.and_then(|id| match load(&self.kv, &id)? {
                Some(txn) => Ok(txn),
                None => Err(StoreError::Corrupt(format!(
                    "the unfinished index names transaction {id}, which the log does not hold"
                ))),
            });
            match loaded {
                Ok(txn) => out.push(txn),
                Err(e @ StoreError::Corrupt(_)) => self.damaged_read("unfinished transactions", &e),
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    fn collect_finished(&self, before_ms: u64, limit: usize) -> Result<usize, StoreError> {
        let mut doomed = Vec::new();
        self.kv.visit(
            &[keys::FINISHED],
            &keys::finished_bound(before_ms),
            false,
            &mut |k, _| {
                doomed.push(k.to_vec());
                if doomed.len() >= limit {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            },
        )?;
        // Only what the transaction's own record confirms is final, with the
        // same finish time: a damaged index entry never takes a live
        // transaction with it.
        let mut ops = Vec::new();
        let mut collected = 0;
        for key in &doomed {
            let confirmed = keys::parse_finished_key(key).and_then(|(at, id)| {
                let record_key = keys::header_key(&id);
                let finished = match self.kv.get(&record_key)? {
                    Some(v) => TxnRecord::decode(&record_key, &v)?.finished_at_ms,
                    None => None,
                };
                Ok((finished == Some(at)).then_some(id))
            });
            match confirmed {
                Ok(Some(id)) => {
                    ops.push(Op::Delete(key.clone()));
                    ops.push(Op::Delete(keys::header_key(&id)));
                    for (k, _) in pairs_under(&self.kv, &keys::spec_prefix(&id))? {
                        ops.push(Op::Delete(k));
                    }
                    for k in history::keys_of(&self.kv, &id)? {
                        ops.push(Op::Delete(k));
                    }
                    collected += 1;
                }
                Ok(None) => self.damaged_read(
                    "the retention index",
                    &StoreError::Corrupt(format!(
                        "{} names no finished transaction; left alone",
                        keys::describe(key)
                    )),
                ),
                Err(e @ StoreError::Corrupt(_)) => self.damaged_read("the retention index", &e),
                Err(e) => return Err(e),
            }
        }
        self.kv.apply(&ops)?;
        Ok(collected)
    }

    fn scan(
        &self,
        after: Option<&str>,
        newest_first: bool,
        limit: usize,
    ) -> Result<Vec<Txn>, StoreError> {
        let (start, end) = keys::header_scan_range(after, newest_first);
        let mut ids = Vec::new();
        self.kv.visit(&start, &end, newest_first, &mut |k, _| {
            ids.push(k.to_vec());
            if ids.len() >= limit {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })?;
        let mut out = Vec::with_capacity(ids.len());
        for key in ids {
            let loaded = keys::parse_id_key(keys::HEADER, &key)
                .and_then(|id| load(&self.kv, &id))
                .transpose();
            match loaded {
                Some(Ok(txn)) => out.push(txn),
                Some(Err(e @ StoreError::Corrupt(_))) => self.damaged_read("a listing", &e),
                Some(Err(e)) => return Err(e),
                None => {}
            }
        }
        Ok(out)
    }

    fn audit(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let mut out = Vec::new();
        let mut damaged = Vec::new();
        self.kv
            .visit(&[keys::AUDIT], &[keys::AUDIT + 1], true, &mut |k, v| {
                match record::decode_audit(k, v) {
                    Ok(entry) => out.push(entry),
                    Err(e) => damaged.push(e),
                }
                if out.len() >= limit {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })?;
        for e in &damaged {
            self.damaged_read("the audit log", e);
        }
        Ok(out)
    }

    fn changes(&self, txn_id: &str, from_seq: u64) -> Result<Vec<Change>, StoreError> {
        self.checked(
            &format!("the changes of transaction {txn_id}"),
            history::changes(&self.kv, txn_id, from_seq),
        )
    }

    fn notices(
        &self,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<history::NoticePage, StoreError> {
        history::notices(&self.kv, after, limit)
    }

    fn damaged_reads(&self) -> u64 {
        self.damaged.load(Ordering::Relaxed)
    }

    fn nodes(&self) -> Result<Option<Vec<crate::store::NodeInfo>>, StoreError> {
        self.kv.nodes()
    }

    fn shared(&self) -> bool {
        self.kv.shared()
    }

    fn owner(&self, txn_id: &str) -> Result<Option<Owner>, StoreError> {
        self.kv.owner(txn_id)
    }

    fn lease_lapses(&self) -> u64 {
        self.kv.lease_lapses()
    }

    fn owners(&self, txn_ids: &[String]) -> Result<Vec<(String, String)>, StoreError> {
        self.kv.owners(txn_ids)
    }

    fn take_over(&self, limit: usize, txn_id: Option<&str>) -> Result<Vec<TakenOver>, StoreError> {
        let claimed = self.kv.claim(limit, txn_id)?;
        // Ours now. If loading stops half way, the rest is picked up by
        // `owned_but_idle`.
        self.load_claimed(claimed)
    }

    fn owned_but_idle(
        &self,
        live: &dyn Fn(&str, i64) -> bool,
    ) -> Result<Vec<TakenOver>, StoreError> {
        let idle: Vec<(String, String, i64)> = self
            .kv
            .owned_here()?
            .into_iter()
            .filter(|(id, claim)| !live(id, *claim) && !self.is_unreadable(id))
            .map(|(id, claim)| (id, String::new(), claim))
            .collect();
        self.load_claimed(idle)
    }
}

impl<K: Kv> KvLog<K> {
    fn is_unreadable(&self, id: &str) -> bool {
        self.unreadable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id)
    }

    fn mark_unreadable(&self, id: String) {
        self.unreadable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id);
    }

    /// Loads transactions this node holds under the given claims. A final
    /// one needs no owner: its row is given up. One that cannot be read is
    /// reported and left owned here, so it is not claimed round and round.
    fn load_claimed(
        &self,
        claimed: Vec<(String, String, i64)>,
    ) -> Result<Vec<TakenOver>, StoreError> {
        let mut out = Vec::with_capacity(claimed.len());
        let mut done = Vec::new();
        for (id, from, claim) in claimed {
            match self.get(&id) {
                Ok(Some(txn)) if !txn.state.is_final() => out.push(TakenOver { txn, from, claim }),
                Ok(Some(_)) => done.push(id),
                Ok(None) => {
                    self.damaged_read(
                        "a transaction taken over",
                        &StoreError::Corrupt(format!(
                            "transaction {id} has an owner but no record"
                        )),
                    );
                    self.mark_unreadable(id);
                }
                Err(StoreError::Corrupt(_)) => self.mark_unreadable(id),
                Err(e) => return Err(e),
            }
        }
        if !done.is_empty() {
            self.kv.release(&done)?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Branch, Mode, TxnState};
    use crate::store::MemoryLog;
    use crate::store::record::{Record, Written};

    fn two_branches(id: &str) -> Txn {
        let mut txn = Txn::new(id.into(), Mode::TwoPhase, 1_000, 5);
        for n in 1..=2 {
            txn.branches.push(Branch::new(
                n.to_string(),
                "http://127.0.0.1:9".into(),
                "r".into(),
                vec![n],
                100,
            ));
        }
        txn
    }

    fn put(log: &MemoryLog, txn: &Txn) {
        let record = Record::of(txn, &mut Written::default()).unwrap_or_else(|e| panic!("{e}"));
        log.write(&[Write::Txn(record)], true)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn a_transaction_whose_record_is_gone_but_not_its_specs_is_damage_not_absence() {
        let log = MemoryLog::new();
        let mut txn = two_branches("t");
        txn.state = TxnState::Committed;
        txn.finished_at_ms = Some(9);
        put(&log, &txn);
        log.kv
            .apply(&[Op::Delete(keys::header_key("t"))])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(log.get("t"), Err(StoreError::Corrupt(_))));
        assert_eq!(log.damaged_reads(), 1);
        assert_eq!(log.get("never-was"), Ok(None));
    }

    #[test]
    fn collection_never_takes_a_transaction_its_index_entry_lies_about() {
        let log = MemoryLog::new();
        put(&log, &two_branches("live"));
        let lie = keys::finished_key(3, "live");
        log.kv
            .apply(&[Op::Put(lie.clone(), record::seal_empty(&lie))])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(log.collect_finished(u64::MAX, 10), Ok(0));
        assert!(matches!(log.get("live"), Ok(Some(_))));
        assert!(log.damaged_reads() >= 1);
    }
}
