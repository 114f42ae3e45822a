//! Console sessions: an admin (or read-only coordinator) token is exchanged
//! once, at the login form, for a random session id in an HttpOnly,
//! SameSite=Strict cookie. Each session has its own CSRF token, which every
//! form that changes something must send back.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a session lasts after login.
pub const LIFETIME: Duration = Duration::from_secs(8 * 3600);
/// Sessions held at once; the oldest go first beyond it.
const MAX_SESSIONS: usize = 10_000;
/// The cookie's name.
pub const COOKIE: &str = "arbiter_session";

/// Who is logged in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// The token's name, as the audit log records it (`console:<name>`).
    pub user: String,
    /// An admin token: may act. A coordinator token may only look.
    pub can_act: bool,
    pub csrf: String,
    /// The token logged in with, kept in this process only: an action on a
    /// transaction another node drives is sent there with it.
    pub token: Option<Secret>,
    expires: Instant,
}

/// A token that never shows in logs or debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Session {
    /// Everyone, on a console without tokens (`--console-insecure`).
    pub fn anonymous() -> Session {
        Session {
            user: "anonymous".to_string(),
            can_act: true,
            csrf: random_id(),
            token: None,
            expires: Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600),
        }
    }
}

#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

/// 32 random hex digits.
pub fn random_id() -> String {
    crate::driver::ids::random_hex::<16>()
}

impl Sessions {
    /// Starts a session for the token `token` named `user`; returns its id
    /// (the cookie's value).
    pub fn open(&self, user: String, can_act: bool, token: Secret) -> String {
        let id = random_id();
        let session = Session {
            user,
            can_act,
            csrf: random_id(),
            token: Some(token),
            expires: Instant::now() + LIFETIME,
        };
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        map.retain(|_, s| s.expires > now);
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(id.clone(), session);
        id
    }

    /// The live session with this id.
    pub fn get(&self, id: &str) -> Option<Session> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(id).filter(|s| s.expires > Instant::now()).cloned()
    }

    pub fn close(&self, id: &str) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
}

/// The session id in a `Cookie` header, if any.
pub fn cookie_of(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string())
}

pub use crate::security::same;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_found_by_its_id_until_closed() {
        let sessions = Sessions::default();
        let id = sessions.open("ops".into(), true, Secret("t".into()));
        let s = sessions.get(&id).unwrap_or_else(|| panic!("open"));
        assert_eq!(
            (s.user.as_str(), s.can_act, s.csrf.len()),
            ("ops", true, 32)
        );
        assert!(sessions.get("nope").is_none());
        assert!(
            !format!("{s:?}").contains("\"t\""),
            "the token stays out of debug output"
        );
        sessions.close(&id);
        assert!(sessions.get(&id).is_none());
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(
            axum::http::header::COOKIE,
            axum::http::HeaderValue::from_static("a=1; arbiter_session=abc; b=2"),
        );
        assert_eq!(cookie_of(&headers).as_deref(), Some("abc"));
    }
}
