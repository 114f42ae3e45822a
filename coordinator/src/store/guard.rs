//! Turns a panic inside a storage library (sled panics on some damaged files
//! instead of returning an error) into a clear [`StoreError::Damaged`], with
//! the panic's message and without a backtrace on the terminal.
//!
//! A panic hook is installed once for the process; it stays silent (and
//! keeps the message) only on a thread that is inside [`no_panic`], and
//! passes every other panic to the hook that was there before.

use std::cell::RefCell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

use crate::store::StoreError;

thread_local! {
    /// `Some` while this thread runs inside `no_panic`: the last panic's message.
    static CAUGHT: RefCell<Option<String>> = const { RefCell::new(None) };
    static GUARDED: RefCell<bool> = const { RefCell::new(false) };
}

fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !GUARDED.with(|g| *g.borrow()) {
                return previous(info);
            }
            let message = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".to_string());
            let at = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            CAUGHT.with(|c| *c.borrow_mut() = Some(format!("{message}{at}")));
        }));
    });
}

/// Runs `f`; a panic in it becomes `StoreError::Damaged` naming `what`.
pub fn no_panic<T>(what: &str, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    install_hook();
    GUARDED.with(|g| *g.borrow_mut() = true);
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|g| *g.borrow_mut() = false);
    match result {
        Ok(result) => result,
        Err(_) => {
            let message = CAUGHT.with(|c| c.borrow_mut().take()).unwrap_or_default();
            Err(StoreError::Damaged(format!(
                "the storage library failed while {what} ({message}); the log is damaged. \
                 Restore the data directory from a backup"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_a_damaged_error_naming_it() {
        let result: Result<(), StoreError> =
            no_panic("testing", || panic!("tried to serialize Uninitialized"));
        match result {
            Err(StoreError::Damaged(message)) => {
                assert!(
                    message.contains("tried to serialize Uninitialized"),
                    "{message}"
                );
                assert!(message.contains("while testing"), "{message}");
            }
            other => panic!("expected Damaged, got {other:?}"),
        }
        assert_eq!(no_panic("testing", || Ok(5)), Ok(5));
    }
}
