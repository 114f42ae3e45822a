//! Golden bytes freeze format 2 of every record type (rule 5 of the module
//! doc); damage is refused, not guessed at. (Arbitrary bytes: `crate::fuzz`.)

use prost::Message;

use super::*;
use crate::engine::{Attempt, Branch, BranchState, CallKind, Mode, Protocol, Txn, TxnState};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sample() -> Txn {
    let mut txn = Txn::new("t-1".into(), Mode::Tcc, 30_000, 1_700_000_000_000);
    txn.state = TxnState::Committing;
    txn.reason = "why".into();
    txn.updated_at_ms = 1_700_000_000_500;
    txn.decided_at_ms = Some(1_700_000_000_400);
    txn.stuck_since_ms = Some(1_700_000_000_450);
    let mut b = Branch::new(
        "1".into(),
        "http://127.0.0.1:9".into(),
        "stock".into(),
        vec![0, 1, 255],
        5_000,
    );
    b.state = BranchState::Prepared;
    b.attempts = 3;
    b.phase_attempts = 2;
    b.last_error = Some("UNAVAILABLE".into());
    b.prepare_sent = true;
    b.failing_since_ms = Some(1_700_000_000_410);
    b.history = vec![Attempt {
        at_ms: 1_700_000_000_300,
        call: CallKind::Prepare,
        attempt: 1,
        ok: true,
        result: "YES".into(),
    }];
    b.retry_seq = 4;
    b.backoff_from = 1;
    b.next_retry_at_ms = Some(1_700_000_000_900);
    b.heuristic = Some("ops".into());
    txn.branches.push(b);
    txn
}

fn audit() -> AuditEntry {
    AuditEntry {
        at_ms: 1_700_000_001_000,
        seq: 7,
        action: "force-abort".into(),
        txn_id: "t-1".into(),
        branch_id: String::new(),
        reason: "stuck".into(),
        caller: "token:ops".into(),
        result: "ABORTING".into(),
    }
}

fn ops_of(txn: &Txn) -> Vec<Op> {
    Record::of(txn, &mut Written::default())
        .map(|r| r.ops)
        .unwrap_or_default()
}

#[test]
fn format_2_golden_bytes() {
    let ops = ops_of(&sample());
    let golden: Vec<(&str, &str)> = ops
        .iter()
        .map(|op| match op {
            Op::Put(k, v) => (k.as_slice(), v.as_slice()),
            Op::Delete(k) => (k.as_slice(), &[][..]),
        })
        .map(|(k, v)| (keys::describe(k), hex(v)))
        .map(|(k, v)| {
            (
                Box::leak(k.into_boxed_str()) as &str,
                Box::leak(v.into_boxed_str()) as &str,
            )
        })
        .collect();
    assert_eq!(
        golden,
        vec![
            (
                "branch-specs/t-1\\x00\\x00\\x00\\x00\\x00",
                "020a260a01311212687474703a2f2f3132372e302e302e313a391a0573746f636b22030001ff288827dbaba071"
            ),
            (
                "txn/t-1",
                "02080210031a0377687920b0ea012880d095ffbc3130f4d395ffbc313890d395ffbc3148c2d395ffbc315240080210031802220b554e415641494c41424c452801309ad395ffbc313a1208acd295ffbc311001180120012a03594553400448015084d795ffbc315a036f70730d8a59b5"
            ),
            ("unfinished/t-1", "029b207940"),
        ]
    );
    let Op::Put(_, audit_value) = audit_op(&audit()) else {
        panic!("an audit entry is a put");
    };
    assert_eq!(
        hex(&audit_value),
        "0208e8d795ffbc3110071a0b666f7263652d61626f72742203742d313205737475636b3a09746f6b656e3a6f7073420841424f5254494e4722f563ae"
    );
    let Op::Put(_, meta_value) = meta_op(keys::META_BATCH, 300) else {
        panic!("a meta number is a put");
    };
    assert_eq!(hex(&meta_value), "0208ac02cbdffdfa");
    let mut done = sample();
    done.state = TxnState::Committed;
    done.finished_at_ms = Some(1_700_000_002_000);
    let finished = keys::index_ops("t-1", done.finished_at_ms, false);
    let Some(Op::Put(k, v)) = finished.get(1) else {
        panic!("a retention entry is a put");
    };
    assert_eq!(
        (hex(k), hex(v)),
        (
            "030000018bcfe56fd0742d31".to_string(),
            "02fb45aec7".to_string()
        )
    );
}

/// Reads back what `ops` put, as `load` would.
fn fold_ops(id: &str, ops: &[Op]) -> Result<Txn, StoreError> {
    let mut record = None;
    let mut chunks = Vec::new();
    let prefix = keys::spec_prefix(id).len();
    for op in ops {
        if let Op::Put(k, v) = op {
            match k[0] {
                keys::HEADER => record = Some(TxnRecord::decode(k, v)?),
                keys::SPEC => {
                    let first = keys::parse_branch_index(prefix, k)?;
                    chunks.push((first, BranchSpecs::decode(k, v)?));
                }
                _ => {}
            }
        }
    }
    let record = record.ok_or_else(|| StoreError::Corrupt("no record".into()))?;
    fold(id, record, chunks)
}

#[test]
fn every_field_round_trips() {
    let txn = sample();
    assert_eq!(fold_ops("t-1", &ops_of(&txn)), Ok(txn));
    let entry = audit();
    let Op::Put(k, v) = audit_op(&entry) else {
        panic!("put");
    };
    assert_eq!(decode_audit(&k, &v), Ok(entry));
    let Op::Put(k, v) = meta_op("batch", u64::MAX) else {
        panic!("put");
    };
    assert_eq!(decode_meta(&k, &v), Ok(u64::MAX));
}

#[test]
fn a_branch_result_round_trips_and_its_absence_reads_as_none() {
    let mut txn = sample();
    txn.branches[0].result = b"receipt \x00\xff".to_vec();
    assert_eq!(fold_ops("t-1", &ops_of(&txn)), Ok(txn.clone()));
    // Records written before results existed (the golden bytes) carry none.
    txn.branches[0].result.clear();
    assert_eq!(fold_ops("t-1", &ops_of(&txn)), Ok(txn));
}

#[test]
fn a_record_with_a_field_this_binary_does_not_know_still_reads() {
    // A later release adds field 99 to the header (rule 2): this one skips it.
    let mut body = TxnRecord::of(&sample()).encode_to_vec();
    body.extend_from_slice(&[0xfa, 0x06, 0x03, b'n', b'e', b'w']); // tag 99, length-delimited
    let key = keys::header_key("t-1");
    let header = TxnRecord::decode(&key, &seal(&key, &body));
    assert_eq!(header, Ok(TxnRecord::of(&sample())));
}

#[test]
fn a_value_under_another_key_or_with_a_flipped_bit_is_refused() {
    let key = keys::header_key("t-1");
    let value = seal(&key, &TxnRecord::of(&sample()).encode_to_vec());
    assert!(TxnRecord::decode(&keys::header_key("t-2"), &value).is_err());
    for i in 0..value.len() {
        for bit in 0..8 {
            let mut damaged = value.clone();
            damaged[i] ^= 1 << bit;
            assert!(
                matches!(
                    TxnRecord::decode(&key, &damaged),
                    Err(StoreError::Corrupt(_))
                ),
                "bit {bit} of byte {i}"
            );
        }
    }
    assert!(TxnRecord::decode(&key, &value[..value.len() - 1]).is_err());
    assert!(TxnRecord::decode(&key, &[]).is_err());
}

#[test]
fn unknown_enum_numbers_are_damage_not_guesses() {
    let specs = || BranchSpecs {
        specs: vec![BranchSpec::of(&sample().branches[0])],
    };
    assert!(fold("t-1", TxnRecord::of(&sample()), vec![(0, specs())]).is_ok());
    let mut record = TxnRecord::of(&sample());
    record.state = 77;
    assert!(fold("t-1", record, vec![(0, specs())]).is_err());
    let mut record = TxnRecord::of(&sample());
    record.branches[0].state = 0;
    assert!(fold("t-1", record, vec![(0, specs())]).is_err());
    let mut record = TxnRecord::of(&sample());
    record.branches.push(record.branches[0].clone());
    assert!(
        fold("t-1", record, vec![(0, specs())]).is_err(),
        "a branch without its spec"
    );
    assert!(
        fold("t-1", TxnRecord::of(&sample()), vec![(1, specs())]).is_err(),
        "specs that do not start at the first branch"
    );
}

/// Format 4: a saga (mode 3) and its steps' order round-trip, and the bytes
/// of a step's spec are frozen.
#[test]
fn a_saga_and_its_steps_order_round_trip_with_frozen_bytes() {
    let mut txn = sample();
    txn.mode = Mode::Saga;
    txn.state = TxnState::Preparing;
    txn.decided_at_ms = None;
    txn.stuck_since_ms = None;
    txn.branches[0].heuristic = None;
    let mut second = Branch::new(
        "2".into(),
        "http://127.0.0.1:9".into(),
        "hotel".into(),
        vec![7],
        1_000,
    );
    second.depends_on = vec!["1".into()];
    let mut third = second.clone();
    third.id = "3".into();
    third.depends_on = Vec::new();
    third.start_at_once = true;
    third.must_succeed = true;
    txn.branches.push(second.clone());
    txn.branches.push(third);
    assert_eq!(fold_ops("t-1", &ops_of(&txn)), Ok(txn));
    let spec = BranchSpec::of(&second).encode_to_vec();
    assert_eq!(
        hex(&spec),
        "0a01321212687474703a2f2f3132372e302e302e313a391a05686f74656c22010728e807320131"
    );
    assert_eq!(mode_of(3), Ok(Mode::Saga));
}

/// Format 5: an HTTP/JSON branch round-trips; an unknown protocol is damage.
#[test]
fn an_http_branch_round_trips_and_an_unknown_protocol_is_damage() {
    let mut txn = sample();
    txn.branches[0].protocol = Protocol::HttpJson;
    txn.branches[0].json_payload = true;
    txn.branches[0].participant = "http://orders:8080/arbiter".into();
    assert_eq!(fold_ops("t-1", &ops_of(&txn)), Ok(txn.clone()));
    let mut spec = BranchSpec::of(&txn.branches[0]);
    assert_eq!((spec.protocol, spec.json_payload), (1, true));
    spec.protocol = 9;
    let specs = BranchSpecs { specs: vec![spec] };
    assert!(fold("t-1", TxnRecord::of(&txn), vec![(0, specs)]).is_err());
}
