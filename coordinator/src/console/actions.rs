//! What the console changes: retry now, abort, commit, resolve a branch.
//! Each is a POST from a logged-in session that may act, carrying that
//! session's CSRF token and (except retry) a reason; each lands in the
//! audit log as `console:<user>`. In a cluster, an action on a transaction
//! another node drives is sent to that node over the Admin API with the
//! session's token, and audited there as `console:<user>` too. Also the
//! live-update event stream.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};

use arbiter_proto::v1 as pb;

use super::session::{self, Session};
use super::{Shared, failed, page, pages, path_escape};
use crate::driver::DriverError;

#[derive(serde::Deserialize)]
pub(crate) struct ActForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    reason: String,
    /// For a branch: `committed` or `rolled-back`.
    #[serde(default, rename = "as")]
    outcome: String,
}

pub(crate) fn forbidden(why: &str, session: &Session) -> Response {
    page(
        StatusCode::FORBIDDEN,
        pages::message("Not allowed", why, Some(session)),
    )
}

/// The session behind an action, if it may act and sent its CSRF token.
fn allowed(
    console: &super::Console,
    headers: &HeaderMap,
    form: &ActForm,
) -> Result<Session, Box<Response>> {
    let session = super::session(console, headers, false)?;
    if !session::same(&form.csrf, &session.csrf) {
        return Err(Box::new(forbidden(
            "the form's CSRF token is missing or wrong; reload the page and try again",
            &session,
        )));
    }
    if !session.can_act {
        return Err(Box::new(forbidden(
            "this token may look but not act: log in with an admin token",
            &session,
        )));
    }
    Ok(session)
}

pub(crate) async fn act(
    State(console): State<Shared>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    axum::Form(form): axum::Form<ActForm>,
) -> Response {
    let session = match allowed(&console, &headers, &form) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let caller = format!("console:{}", session.user);
    let driver = &console.driver;
    let (done, act) = match action.as_str() {
        "retry" => (driver.retry_now(&id, &caller).await.map(|_| ()), Act::Retry),
        "abort" | "commit" => {
            let commit = action == "commit";
            let done = driver
                .force_outcome(&id, commit, &form.reason, &caller)
                .await
                .map(|_| ());
            (done, Act::Force { commit })
        }
        _ => {
            return page(
                StatusCode::NOT_FOUND,
                pages::message("Not found", "There is no such action.", Some(&session)),
            );
        }
    };
    settle(&console, &session, &id, done, act, &form.reason).await
}

/// What an action was, to send it on to the node that drives the
/// transaction.
enum Act {
    Retry,
    Force { commit: bool },
    Resolve { branch: String, committed: bool },
}

/// The answer to an action: back to the transaction's page when done; sent
/// on to the owning node when the driver says another node drives it.
async fn settle(
    console: &super::Console,
    session: &Session,
    id: &str,
    done: Result<(), DriverError>,
    act: Act,
    reason: &str,
) -> Response {
    let back = || Redirect::to(&format!("/txns/{}", path_escape(id))).into_response();
    match done {
        Ok(()) => back(),
        Err(e @ DriverError::Elsewhere { .. }) => {
            match on_owner(console, session, e, id, act, reason).await {
                Ok(()) => back(),
                Err(status) => refused_there(&status, session),
            }
        }
        Err(e) => failed(e, session),
    }
}

/// Sends the action to the node `error` names, as the Admin API call the
/// CLI would make, with this session's token.
async fn on_owner(
    console: &super::Console,
    session: &Session,
    error: DriverError,
    id: &str,
    act: Act,
    reason: &str,
) -> Result<(), tonic::Status> {
    use crate::server::admin::client;
    let mut metadata = tonic::metadata::MetadataMap::new();
    if let Some(token) = &session.token {
        let bearer = format!("Bearer {}", token.0)
            .parse()
            .map_err(|_| tonic::Status::unauthenticated("the session's token is not a header"))?;
        metadata.insert("authorization", bearer);
    }
    metadata.insert(
        crate::server::forward::VIA,
        tonic::metadata::MetadataValue::from_static("console"),
    );
    let deadline = Some(std::time::Instant::now() + Duration::from_secs(30));
    let forward = &console.forward;
    let txn_id = id.to_string();
    let reason = reason.to_string();
    match act {
        Act::Retry => {
            let req = pb::RetryNowRequest {
                txn_id,
                all_stuck: false,
            };
            forward
                .forward(error, &metadata, req, deadline, |c, m, r| async move {
                    client(c, m).retry_now(r).await
                })
                .await?;
        }
        Act::Force { commit } => {
            let outcome = if commit {
                pb::ForcedOutcome::Commit
            } else {
                pb::ForcedOutcome::Abort
            };
            let req = pb::ForceOutcomeRequest {
                txn_id,
                outcome: outcome as i32,
                reason,
            };
            forward
                .forward(error, &metadata, req, deadline, |c, m, r| async move {
                    client(c, m).force_outcome(r).await
                })
                .await?;
        }
        Act::Resolve { branch, committed } => {
            let resolution = if committed {
                pb::BranchResolution::Committed
            } else {
                pb::BranchResolution::RolledBack
            };
            let req = pb::ResolveBranchRequest {
                txn_id,
                branch_id: branch,
                resolution: resolution as i32,
                reason,
            };
            forward
                .forward(error, &metadata, req, deadline, |c, m, r| async move {
                    client(c, m).resolve_branch(r).await
                })
                .await?;
        }
    }
    Ok(())
}

/// The owning node's refusal, as a page.
fn refused_there(status: &tonic::Status, session: &Session) -> Response {
    use tonic::Code;
    let (code, title) = match status.code() {
        Code::NotFound => (StatusCode::NOT_FOUND, "Not found"),
        Code::InvalidArgument => (StatusCode::BAD_REQUEST, "Bad request"),
        Code::FailedPrecondition | Code::AlreadyExists => {
            (StatusCode::CONFLICT, "Not possible now")
        }
        Code::PermissionDenied | Code::Unauthenticated => (StatusCode::FORBIDDEN, "Not allowed"),
        Code::Unavailable | Code::ResourceExhausted | Code::DeadlineExceeded => {
            (StatusCode::SERVICE_UNAVAILABLE, "Failed")
        }
        _ => (StatusCode::BAD_GATEWAY, "Failed"),
    };
    let why = format!(
        "the node that drives this transaction answered: {}",
        status.message()
    );
    page(code, pages::message(title, &why, Some(session)))
}

pub(crate) async fn resolve(
    State(console): State<Shared>,
    headers: HeaderMap,
    Path((id, branch)): Path<(String, String)>,
    axum::Form(form): axum::Form<ActForm>,
) -> Response {
    let session = match allowed(&console, &headers, &form) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let committed = match form.outcome.as_str() {
        "committed" => true,
        "rolled-back" => false,
        other => {
            return page(
                StatusCode::BAD_REQUEST,
                pages::message(
                    "Bad request",
                    &format!("resolve as {other:?}? Choose committed or rolled-back."),
                    Some(&session),
                ),
            );
        }
    };
    let caller = format!("console:{}", session.user);
    let done = console
        .driver
        .resolve_branch(&id, &branch, committed, &form.reason, &caller)
        .await
        .map(|_| ());
    let act = Act::Resolve { branch, committed };
    settle(&console, &session, &id, done, act, &form.reason).await
}

/// Server-sent events: one `change` at most every half second while
/// transactions change, so open pages refresh themselves.
pub(crate) async fn events(State(console): State<Shared>, headers: HeaderMap) -> Response {
    if let Err(r) = super::session(&console, &headers, false) {
        return *r;
    }
    let Some(permit) = console.driver.watch_permit() else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    let mut changes = console.driver.feed().subscribe();
    let mut stopping = console.driver.stopping();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Event, Infallible>>(4);
    tokio::spawn(async move {
        let _permit = permit;
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                _ = stopping.changed() => return,
                changed = changes.changed() => if changed.is_err() { return },
            }
            if tx.send(Ok(Event::default().data("change"))).await.is_err() {
                return;
            }
            // At most two a second; a change during the pause is still
            // announced (the receiver has not seen it).
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    Sse::new(tokio_stream::wrappers::ReceiverStream::new(rx))
        .keep_alive(KeepAlive::default())
        .into_response()
}
