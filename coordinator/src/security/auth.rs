//! Bearer-token authentication with two roles. `Coordinator` tokens may run
//! transactions; `Admin` tokens may also inspect and force them. With no
//! token configured, authentication is off (for a trusted network only).

use std::sync::Arc;

use tonic::metadata::MetadataMap;
use tonic::{Request, Status};

/// What a token may call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The `Coordinator` service: begin, register, commit, execute, read.
    Coordinator,
    /// The `Admin` service, and everything a coordinator token may do.
    Admin,
}

/// A named secret, given as `name=secret`. Debug output hides the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    pub name: String,
    secret: String,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token({}=<redacted>)", self.name)
    }
}

impl std::str::FromStr for Token {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (name, secret) = text
            .split_once('=')
            .ok_or_else(|| "a token is name=secret, e.g. payments=3f9c...".to_string())?;
        if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("bad token name {name:?}"));
        }
        if secret.len() < 16 {
            return Err(format!(
                "the secret of token {name:?} is shorter than 16 characters"
            ));
        }
        Ok(Token {
            name: name.to_string(),
            secret: secret.to_string(),
        })
    }
}

/// Who made a request, as the audit log records it. Put into the request's
/// extensions by the interceptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller(pub String);

/// The configured tokens.
#[derive(Clone, Debug, Default)]
pub struct Auth {
    pub coordinator: Vec<Token>,
    pub admin: Vec<Token>,
}

/// Compares without stopping at the first difference (secrets, tokens,
/// signatures).
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl Auth {
    pub fn enabled(&self) -> bool {
        !self.coordinator.is_empty() || !self.admin.is_empty()
    }

    fn find<'a>(tokens: &'a [Token], secret: &str) -> Option<&'a Token> {
        // Look at every token, so timing does not tell which one matched.
        tokens.iter().fold(None, |found, t| {
            if same(&t.secret, secret) {
                Some(t)
            } else {
                found
            }
        })
    }

    /// The console's login: the name of the token `secret` is, and whether
    /// it may act (an admin token) or only look (a coordinator token).
    pub fn console_login(&self, secret: &str) -> Option<(String, bool)> {
        if let Some(token) = Self::find(&self.admin, secret) {
            return Some((token.name.clone(), true));
        }
        Self::find(&self.coordinator, secret).map(|t| (t.name.clone(), false))
    }

    /// The caller of a request that needs `role`, or the status refusing it.
    pub fn check(&self, role: Role, metadata: &MetadataMap) -> Result<Option<Caller>, Status> {
        if !self.enabled() {
            return Ok(None);
        }
        let header = metadata.get("authorization").ok_or_else(|| {
            Status::unauthenticated("missing bearer token (authorization: Bearer <token>)")
        })?;
        let secret = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Status::unauthenticated("the authorization header is not 'Bearer <token>'")
            })?;
        if let Some(token) = Self::find(&self.admin, secret) {
            return Ok(Some(Caller(format!("token:{}", token.name))));
        }
        match (Self::find(&self.coordinator, secret), role) {
            (Some(token), Role::Coordinator) => Ok(Some(Caller(format!("token:{}", token.name)))),
            (Some(token), Role::Admin) => Err(Status::permission_denied(format!(
                "token {:?} has the coordinator role; the Admin service needs an admin token",
                token.name
            ))),
            (None, _) => Err(Status::unauthenticated("unknown bearer token")),
        }
    }
}

/// A tonic interceptor enforcing `role`; records the caller in the request.
pub fn interceptor(
    auth: Arc<Auth>,
    role: Role,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |mut request: Request<()>| {
        if let Some(caller) = auth.check(role, request.metadata())? {
            request.extensions_mut().insert(caller);
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        Auth {
            coordinator: vec![
                "svc=coordinator-secret-1"
                    .parse()
                    .unwrap_or_else(|e| panic!("{e}")),
            ],
            admin: vec![
                "ops=admin-secret-0123456"
                    .parse()
                    .unwrap_or_else(|e| panic!("{e}")),
            ],
        }
    }

    fn with(token: Option<&str>) -> MetadataMap {
        let mut m = MetadataMap::new();
        if let Some(Ok(v)) = token.map(|t| format!("Bearer {t}").parse()) {
            m.insert("authorization", v);
        }
        m
    }

    #[test]
    fn roles_and_refusals() {
        let a = auth();
        let code = |r: Result<Option<Caller>, Status>| r.err().map(|s| s.code());
        assert_eq!(
            code(a.check(Role::Coordinator, &with(None))),
            Some(tonic::Code::Unauthenticated)
        );
        assert_eq!(
            code(a.check(Role::Coordinator, &with(Some("wrong")))),
            Some(tonic::Code::Unauthenticated)
        );
        assert_eq!(
            a.check(Role::Coordinator, &with(Some("coordinator-secret-1")))
                .ok()
                .flatten(),
            Some(Caller("token:svc".into()))
        );
        assert_eq!(
            code(a.check(Role::Admin, &with(Some("coordinator-secret-1")))),
            Some(tonic::Code::PermissionDenied)
        );
        assert_eq!(
            a.check(Role::Admin, &with(Some("admin-secret-0123456")))
                .ok()
                .flatten(),
            Some(Caller("token:ops".into()))
        );
        assert!(
            a.check(Role::Coordinator, &with(Some("admin-secret-0123456")))
                .is_ok()
        );
        assert_eq!(
            Auth::default().check(Role::Admin, &with(None)).ok(),
            Some(None)
        );
    }

    #[test]
    fn tokens_parse_and_hide_their_secret() {
        assert!("short=abc".parse::<Token>().is_err());
        assert!("nosecret".parse::<Token>().is_err());
        let t: Result<Token, _> = "ops=0123456789abcdef".parse();
        assert!(format!("{t:?}").contains("redacted") && !format!("{t:?}").contains("0123"));
    }
}
