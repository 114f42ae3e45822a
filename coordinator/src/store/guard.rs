//! Turns a panic inside a storage library (sled panics on some damaged files
//! instead of returning an error) into a clear [`StoreError::Damaged`], with
//! the panic's message and without a backtrace on the terminal.

use std::panic::{self, AssertUnwindSafe};
use std::sync::Mutex;

use crate::store::StoreError;

/// The message of the last panic caught while a guard was up.
static CAUGHT: Mutex<Option<String>> = Mutex::new(None);

/// Runs `f`; a panic in it becomes `StoreError::Damaged` naming `what`.
///
/// The process-wide panic hook is replaced while `f` runs, so this is for
/// start-up only, before anything else runs.
pub fn no_panic<T>(what: &str, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    let previous = panic::take_hook();
    panic::set_hook(Box::new(|info| {
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
        *CAUGHT.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("{message}{at}"));
    }));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    panic::set_hook(previous);
    match result {
        Ok(result) => result,
        Err(_) => {
            let message = CAUGHT
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
                .unwrap_or_default();
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
