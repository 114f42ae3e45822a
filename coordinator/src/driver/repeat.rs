//! A repeated `Begin`/`Execute` of a client-chosen id: the same transaction
//! again (an idempotent retry), or a conflict.

use crate::driver::ownership::Found;
use crate::driver::{BranchSpec, DriverError, validate};
use crate::engine::{Branch, Mode};

/// What a repeated `Begin`/`Execute` asks one branch to be.
pub(super) struct Wanted<'a> {
    participant: &'a str,
    resource: &'a str,
    payload: &'a [u8],
    step: (&'a [String], bool, bool),
    protocol: (crate::engine::Protocol, bool),
}

impl<'a> From<&'a BranchSpec> for Wanted<'a> {
    fn from(spec: &'a BranchSpec) -> Self {
        Wanted {
            participant: &spec.participant,
            resource: &spec.resource,
            payload: &spec.payload,
            step: (&spec.depends_on, spec.start_at_once, spec.must_succeed),
            protocol: (spec.protocol, spec.json_payload),
        }
    }
}

impl<'a> From<&'a Branch> for Wanted<'a> {
    fn from(branch: &'a Branch) -> Self {
        Wanted {
            participant: &branch.participant,
            resource: &branch.resource,
            payload: &branch.payload,
            step: (
                &branch.depends_on,
                branch.start_at_once,
                branch.must_succeed,
            ),
            protocol: (branch.protocol, branch.json_payload),
        }
    }
}

/// A repeated `Begin`/`Execute` of a client-chosen id: OK only when it asks
/// for the same transaction (mode, timeout unless it asked for the default,
/// and for `Execute` the branches); anything else is a conflict, never a
/// silent OK.
pub(super) fn repeated_begin(
    found: Found,
    mode: Mode,
    timeout_ms: Option<u64>,
    wanted: &[Wanted],
) -> Result<(), DriverError> {
    let existing = match found {
        Found::Live(slot) => slot.lock().clone(),
        Found::Stored(txn) | Found::Elsewhere(txn, _) => txn,
    };
    let same_branches = wanted.is_empty()
        || (existing.branches.len() == wanted.len()
            && existing.branches.iter().zip(wanted).all(|(b, w)| {
                validate::same_endpoint(&b.participant, w.participant)
                    && b.resource == w.resource
                    && b.payload == w.payload
                    && Wanted::from(b).step == w.step
                    && Wanted::from(b).protocol == w.protocol
            }));
    let different = if existing.mode != mode {
        "mode"
    } else if timeout_ms.is_some_and(|t| t != existing.timeout_ms) {
        "timeout"
    } else if !same_branches {
        "set of branches"
    } else {
        return Ok(());
    };
    Err(DriverError::AlreadyExists(format!(
        "transaction {} already exists with a different {different}",
        existing.id
    )))
}
