//! Entry points for the fuzz targets (`fuzz/fuzz_targets/`) and for the
//! seeded fuzz tests that CI runs: each takes arbitrary bytes where stored or
//! received bytes go in, and must return without panicking, whatever they are.

use arbiter_proto::v1 as pb;
use prost::Message;

use crate::config::Config;
use crate::driver::validate;
use crate::server::convert;
use crate::store::keys;
use crate::store::record::{self, BranchSpecs, TxnRecord, v1};

/// Bytes as the log would hand them back: the first byte picks a key, the
/// rest is the value, read by every decoder (sealed as found, and sealed
/// afresh so the body decoders and the fold see them too).
pub fn stored_bytes(data: &[u8]) {
    let Some((&pick, value)) = data.split_first() else {
        return;
    };
    let key = match pick % 7 {
        0 => keys::header_key("t-1"),
        1 => keys::spec_key("t-1", usize::from(pick)),
        2 => keys::meta_key(keys::META_BATCH),
        3 => value
            .get(..value.len().min(24))
            .unwrap_or_default()
            .to_vec(),
        4 => keys::finished_key(u64::from(pick), "t-1"),
        5 => keys::changes_key("t-1", u64::from(pick / 7)),
        _ => keys::notice_key("t-1", pick / 7),
    };
    let _ = TxnRecord::decode(&key, value);
    let _ = BranchSpecs::decode(&key, value);
    let _ = record::decode_audit(&key, value);
    let _ = record::decode_meta(&key, value);
    let _ = record::decode_changes(&key, value);
    let _ = record::decode_notice(&key, value);
    let _ = keys::parse_changes_key(&key);
    let _ = keys::parse_notice_key(&key);
    let _ = record::unseal(&key, value);
    let _ = v1::decode_txn(value);
    let _ = v1::decode_audit(value);
    let _ = keys::parse_finished_key(&key);
    let _ = keys::parse_branch_owner(&key);
    let _ = keys::parse_id_key(keys::HEADER, &key);
    let _ = keys::parse_branch_index(keys::spec_prefix("t-1").len(), &key);
    let _ = keys::describe(&key);
    let sealed = record::seal(&key, value);
    let _ = record::decode_changes(&key, &sealed);
    let _ = record::decode_notice(&key, &sealed);
    if let Ok(txn) = TxnRecord::decode(&key, &sealed) {
        let specs = BranchSpecs::decode(&key, &sealed).ok();
        let chunks = specs.into_iter().map(|s| (0, s)).collect();
        let _ = record::fold("t-1", txn, chunks);
    }
}

/// Bytes as a client could send them: decoded as each request the server
/// takes, then converted and checked as the server does before the engine
/// sees anything.
pub fn request_bytes(data: &[u8]) {
    let config = Config::default();
    let id = |value: &str| {
        let _ = validate::id("txn_id", value);
    };
    let timeout = |ms: u64| {
        let _ = validate::timeout("timeout_ms", ms, config.default_timeout, config.max_timeout);
    };
    let branch = |spec: pb::BranchSpec| {
        if let Ok(mut spec) = convert::branch_spec(spec) {
            let _ = validate::branch(&config, &mut spec);
            let _ = validate::endpoint(&spec.participant, true, &[]);
            let _ = validate::http_base(&spec.participant, true, &[]);
        }
    };
    if let Ok(req) = pb::ExecuteRequest::decode(data) {
        let _ = convert::mode_from_pb(req.mode);
        timeout(req.timeout_ms);
        id(&req.txn_id);
        req.branches.into_iter().for_each(branch);
    }
    if let Ok(req) = pb::BeginRequest::decode(data) {
        let _ = convert::mode_from_pb(req.mode);
        timeout(req.timeout_ms);
        id(&req.txn_id);
    }
    if let Ok(req) = pb::RegisterBranchRequest::decode(data) {
        id(&req.txn_id);
        let _ = validate::id("branch_id", &req.branch_id);
        branch(pb::BranchSpec {
            participant: req.participant,
            resource: req.resource,
            payload: req.payload,
            call_timeout_ms: req.call_timeout_ms,
            saga: req.saga,
            protocol: req.protocol,
            payload_as_json: req.payload_as_json,
        });
    }
    if let Ok(req) = pb::ListTransactionsRequest::decode(data) {
        let _ = convert::mode_from_pb(req.mode);
        for state in req.states {
            let _ = convert::state_from_pb(state);
        }
        id(&req.page_token);
    }
    for decoded in [
        pb::CommitRequest::decode(data).map(|r| r.txn_id),
        pb::RollbackRequest::decode(data).map(|r| r.txn_id),
        pb::GetTransactionRequest::decode(data).map(|r| r.txn_id),
    ]
    .into_iter()
    .flatten()
    {
        id(&decoded);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Branch, Mode, Txn};
    use crate::store::record::{Op, Record, Written};

    fn cases() -> usize {
        std::env::var("ARBITER_FUZZ_CASES")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(20_000)
    }

    fn seed() -> u64 {
        std::env::var("ARBITER_FUZZ_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0x5eed)
    }

    /// Random bytes half the time; otherwise a valid input with a few bytes
    /// changed, cut or inserted, so the decoders get past their first checks.
    fn input(rng: &mut fastrand::Rng, valid: &[Vec<u8>]) -> Vec<u8> {
        if rng.bool() {
            let len = rng.usize(..512);
            return (0..len).map(|_| rng.u8(..)).collect();
        }
        let mut bytes = valid[rng.usize(..valid.len())].clone();
        for _ in 0..rng.usize(1..5) {
            match rng.u8(..3) {
                0 if !bytes.is_empty() => {
                    let i = rng.usize(..bytes.len());
                    bytes[i] = rng.u8(..);
                }
                1 => bytes.truncate(rng.usize(..=bytes.len())),
                _ => bytes.insert(rng.usize(..=bytes.len()), rng.u8(..)),
            }
        }
        bytes
    }

    #[test]
    fn stored_bytes_never_panic() {
        let mut txn = Txn::new("t-1".into(), Mode::Tcc, 1_000, 5);
        txn.branches.push(Branch::new(
            "1".into(),
            "http://127.0.0.1:9".into(),
            "r".into(),
            vec![1, 2, 3],
            100,
        ));
        crate::engine::begin(&mut txn, 5);
        let changes = std::mem::take(&mut txn.changes);
        let valid: Vec<Vec<u8>> = Record::of(&txn, &mut Written::default())
            .map(|r| r.with_changes(changes).ops)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|op| match op {
                // The first byte picks the same kind of key again.
                Op::Put(k, v) => {
                    let pick = match k[0] {
                        keys::HEADER => 0,
                        keys::SPEC => 1,
                        keys::CHANGES => 5,
                        keys::NOTICE => 6,
                        _ => 4,
                    };
                    Some([&[pick][..], &v[..]].concat())
                }
                Op::Delete(_) => None,
            })
            .collect();
        let mut rng = fastrand::Rng::with_seed(seed());
        for _ in 0..cases() {
            stored_bytes(&input(&mut rng, &valid));
        }
    }

    #[test]
    fn request_bytes_never_panic() {
        let valid = vec![
            pb::ExecuteRequest {
                mode: 1,
                timeout_ms: 500,
                txn_id: "order-1".into(),
                branches: vec![pb::BranchSpec {
                    participant: "http://127.0.0.1:9".into(),
                    resource: "r".into(),
                    payload: b"yes".to_vec(),
                    call_timeout_ms: 10,
                    saga: Some(pb::SagaStep {
                        depends_on: vec!["1".into()],
                        start_at_once: false,
                        must_succeed: true,
                    }),
                    protocol: 1,
                    payload_as_json: true,
                }],
                wait: true,
            }
            .encode_to_vec(),
            pb::RegisterBranchRequest {
                txn_id: "t".into(),
                participant: "https://[::1]:443".into(),
                ..Default::default()
            }
            .encode_to_vec(),
            pb::ListTransactionsRequest {
                states: vec![1, 2, 99],
                mode: 2,
                ..Default::default()
            }
            .encode_to_vec(),
        ];
        let mut rng = fastrand::Rng::with_seed(seed());
        for _ in 0..cases() {
            request_bytes(&input(&mut rng, &valid));
        }
    }
}
