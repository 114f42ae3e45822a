//! The stored form of a webhook notification not yet delivered to every
//! endpoint (format 3), under `0x08 txn id 0x00 kind`.

use prost::Message;

use super::{Op, decode, seal};
use crate::store::{StoreError, keys};

/// A notification: what to send. It is deleted once every endpoint took it
/// (which endpoints did so far is kept in memory only: after a restart all
/// get it again, which at-least-once delivery allows).
#[derive(Clone, PartialEq, Message)]
pub struct NoticeRecord {
    #[prost(uint64, tag = "1")]
    pub at_ms: u64,
    /// The node that wrote it (empty on a store one coordinator uses); the
    /// others deliver it only once it is old (its node may be gone).
    #[prost(string, tag = "2")]
    pub node_id: String,
    /// The JSON body, exactly as sent (its signature covers these bytes).
    #[prost(bytes = "vec", tag = "3")]
    pub body: Vec<u8>,
}

/// Kinds of notification (the last byte of the key); never renumbered.
pub const NOTICE_ENDED: u8 = 1;
pub const NOTICE_STUCK: u8 = 2;

pub fn notice_op(txn_id: &str, kind: u8, notice: &NoticeRecord) -> Op {
    let key = keys::notice_key(txn_id, kind);
    let value = seal(&key, &notice.encode_to_vec());
    Op::Put(key, value)
}

pub fn decode_notice(key: &[u8], value: &[u8]) -> Result<NoticeRecord, StoreError> {
    keys::parse_notice_key(key)?;
    decode(key, value)
}
