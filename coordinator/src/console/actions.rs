//! What the console changes: retry now, abort, commit, resolve a branch.
//! Each is a POST from a logged-in session that may act, carrying that
//! session's CSRF token and (except retry) a reason; each lands in the
//! audit log as `console:<user>`. Also the live-update event stream.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};

use super::session::{self, Session};
use super::{Shared, failed, page, pages, path_escape};

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
    let done = match action.as_str() {
        "retry" => driver.retry_now(&id, &caller).await.map(|_| ()),
        "abort" => driver
            .force_outcome(&id, false, &form.reason, &caller)
            .await
            .map(|_| ()),
        "commit" => driver
            .force_outcome(&id, true, &form.reason, &caller)
            .await
            .map(|_| ()),
        _ => {
            return page(
                StatusCode::NOT_FOUND,
                pages::message("Not found", "There is no such action.", Some(&session)),
            );
        }
    };
    match done {
        Ok(()) => Redirect::to(&format!("/txns/{}", path_escape(&id))).into_response(),
        Err(e) => failed(e, &session),
    }
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
    match console
        .driver
        .resolve_branch(&id, &branch, committed, &form.reason, &caller)
        .await
    {
        Ok(_) => Redirect::to(&format!("/txns/{}", path_escape(&id))).into_response(),
        Err(e) => failed(e, &session),
    }
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
