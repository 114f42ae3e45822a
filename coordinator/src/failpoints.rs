//! Named crash points, compiled in only with the `failpoints` feature and
//! read only by the test-only `arbiter-failpoints` binary of `arbiter-tests`
//! (never by `arbiter`, whatever features it was built with).
//!
//! That binary reads them from the `FAILPOINTS` variable
//! (`FAILPOINTS="after-decision-persisted=return"`): a point set to `return`
//! aborts the process right there, as a power cut would. Each name says the
//! step it interrupts:
//!
//! | point | where |
//! |---|---|
//! | `after-begin-persisted` | the new transaction is durable, Begin/Execute not yet answered |
//! | `after-branch-persisted` | a registration is durable, RegisterBranch not yet answered |
//! | `before-phase1-sent` | Commit accepted, no prepare/try sent |
//! | `after-some-phase1-sent` | the first branch answered prepare/try, others may not have |
//! | `before-decision-persisted` | every vote is YES, the commit decision is not yet durable |
//! | `after-decision-persisted` | the commit decision is durable, no commit/confirm sent |
//! | `after-some-phase2-sent` | the first branch acknowledged commit/confirm, others may not have |
//! | `before-committed-persisted` | every branch acknowledged, COMMITTED not yet written |
//! | `before-abort-persisted` | the transaction must abort, the decision is not yet durable |
//! | `after-abort-persisted` | the abort decision is durable, no rollback/cancel sent |
//! | `after-some-rollbacks-sent` | the first branch acknowledged rollback/cancel, others may not have |
//! | `before-aborted-persisted` | every branch acknowledged, ABORTED not yet written |
//! | `saga-before-step-persisted` | a saga step succeeded, its outcome is not yet durable |
//! | `saga-after-step-persisted` | a saga step's outcome is durable, the next step not yet sent |
//! | `saga-after-some-compensations` | a saga step other than the first was compensated, the rest not |
//!
//! Sagas also pass the points above that fit: `before-phase1-sent` (the
//! first action), `after-some-phase1-sent` (the first step answered),
//! `before-`/`after-decision-persisted` (completion), the abort ones
//! (compensation).
//!
//! Two more make the log fail instead of aborting (see [`failing`]):
//! `log-sync-fails` (a synced batch) and `checkpoint-fails` (the
//! acknowledged mark, written once a second even when idle).

/// The failpoints set in `FAILPOINTS`, active while the guard lives; an
/// error when this build has none compiled in.
pub fn from_env() -> Result<Scenario, &'static str> {
    #[cfg(feature = "failpoints")]
    {
        Ok(Scenario {
            _armed: fail::FailScenario::setup(),
        })
    }
    #[cfg(not(feature = "failpoints"))]
    {
        Err("this build has no failpoints compiled in (they come with `cargo test`)")
    }
}

/// Keeps the failpoints of [`from_env`] set.
pub struct Scenario {
    #[cfg(feature = "failpoints")]
    _armed: fail::FailScenario<'static>,
}

/// Whether the named point is set, for points that inject a failure rather
/// than abort (always false without `failpoints`).
pub fn failing(name: &str) -> bool {
    #[cfg(feature = "failpoints")]
    {
        fail::eval(name, |_| ()).is_some()
    }
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = name;
        false
    }
}

/// Aborts the process if the named point is set (only with `failpoints`).
#[macro_export]
macro_rules! crash_point {
    ($name:expr) => {{
        #[cfg(feature = "failpoints")]
        {
            let name: &str = $name;
            if fail::eval(name, |_| ()).is_some() {
                eprintln!("arbiter: failpoint {name} hit, aborting the process");
                std::process::abort();
            }
        }
    }};
}
