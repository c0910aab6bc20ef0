//! Roles from bearer tokens (SPEC §8): ingest tokens (gateways, OTLP clients), admin tokens,
//! user tokens mapped to a user id, and an optional token for `/metrics`.
//!
//! [`Auth::guard`] puts a route group behind a role check and hands the handlers the caller's
//! [`Principal`] as a request extension. Tokens are compared in constant time, are never logged,
//! and never appear in `Debug` output. With no ingest, admin or user token configured the API is
//! open (every caller is [`Principal::Open`], seeing everything); the server then refuses a
//! non-loopback listener unless `auth.allow_open` is set (checked in `app.rs`, where it binds).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;

use crate::api::ApiError;

/// Token settings, validated by `config.rs`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AuthConfig {
    /// Tokens that may ingest (`/v1/*`).
    pub ingest_tokens: Vec<String>,
    /// Tokens that may ingest, query and export everything, and read the audit trail.
    pub admin_tokens: Vec<String>,
    /// Token → user id: may query and export that user's rows only.
    pub user_tokens: Vec<(String, String)>,
    /// When set, `/metrics` needs this token (or an admin token).
    pub metrics_token: Option<String>,
    /// Allow a non-loopback listener with no tokens configured.
    pub allow_open: bool,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Counts only: tokens are secrets.
        f.debug_struct("AuthConfig")
            .field("ingest_tokens", &self.ingest_tokens.len())
            .field("admin_tokens", &self.admin_tokens.len())
            .field("user_tokens", &self.user_tokens.len())
            .field("metrics_token", &self.metrics_token.is_some())
            .field("allow_open", &self.allow_open)
            .finish()
    }
}

impl AuthConfig {
    /// Whether any ingest, admin or user token is configured (the API is not open).
    pub fn has_tokens(&self) -> bool {
        !(self.ingest_tokens.is_empty()
            && self.admin_tokens.is_empty()
            && self.user_tokens.is_empty())
    }
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// No tokens are configured: everything is open (and sees everything).
    Open,
    /// An admin token: its position in `auth.admin_tokens` (the config's, then the
    /// environment's), which names it in the audit trail without showing it.
    Admin(usize),
    /// A user token, with its user id.
    User(String),
    /// An ingest token.
    Ingest,
    /// The metrics token.
    Metrics,
}

impl Principal {
    /// The user id every query of this caller is forced to, if any.
    pub fn forced_user(&self) -> Option<&str> {
        match self {
            Self::User(id) => Some(id),
            _ => None,
        }
    }

    /// Who the audit trail records as the actor: a user token's user id, an admin token's
    /// place in the token list (`auth.admin_tokens[0]`); nobody when the API is open.
    pub fn actor(&self) -> Option<String> {
        match self {
            Self::User(id) => Some(id.clone()),
            Self::Admin(i) => Some(format!("auth.admin_tokens[{i}]")),
            Self::Open | Self::Ingest | Self::Metrics => None,
        }
    }

    /// The role with its article (`a user`, `an ingest`), for messages.
    fn article_role(&self) -> &'static str {
        match self {
            Self::Open => "an open",
            Self::Admin(_) => "an admin",
            Self::User(_) => "a user",
            Self::Ingest => "an ingest",
            Self::Metrics => "a metrics",
        }
    }

    /// `open`, `admin`, `user`, `ingest` or `metrics` (for the audit trail).
    pub fn role(&self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Admin(_) => "admin",
            Self::User(_) => "user",
            Self::Ingest => "ingest",
            Self::Metrics => "metrics",
        }
    }
}

/// What a route group needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Ingest (`/v1/*`): ingest or admin tokens.
    Ingest,
    /// Query and export: admin or user tokens.
    Query,
    /// Admin only (audit trail).
    Admin,
    /// `/metrics`: the metrics token or an admin token, when a metrics token is configured.
    Metrics,
}

/// The token table, shared by every guarded route.
#[derive(Clone, Debug)]
pub struct Auth {
    config: Arc<AuthConfig>,
}

/// Equality that takes the same time wherever the inputs differ.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

impl Auth {
    /// Wraps a validated token table.
    pub fn new(config: AuthConfig) -> Self {
        Self {
            config: Arc::new(config),
        }
    }

    /// Who presents `token`, comparing against every configured token (no early exit).
    fn identify(&self, token: &str) -> Option<Principal> {
        let t = token.as_bytes();
        let mut found = None;
        for (i, k) in self.config.admin_tokens.iter().enumerate() {
            if ct_eq(k.as_bytes(), t) {
                found = Some(Principal::Admin(i));
            }
        }
        for (k, user) in &self.config.user_tokens {
            if ct_eq(k.as_bytes(), t) {
                found = Some(Principal::User(user.clone()));
            }
        }
        for k in &self.config.ingest_tokens {
            if ct_eq(k.as_bytes(), t) {
                found = Some(Principal::Ingest);
            }
        }
        if let Some(k) = &self.config.metrics_token
            && ct_eq(k.as_bytes(), t)
        {
            found = Some(Principal::Metrics);
        }
        found
    }

    /// Whether `access` needs no token: `/metrics` without a metrics token, anything else when
    /// no tokens are configured at all.
    fn is_open(&self, access: Access) -> bool {
        match access {
            Access::Metrics => self.config.metrics_token.is_none(),
            _ => !self.config.has_tokens(),
        }
    }

    /// Checks the `Authorization: Bearer …` header for `access`.
    pub fn check(&self, headers: &HeaderMap, access: Access) -> Result<Principal, ApiError> {
        if self.is_open(access) {
            return Ok(Principal::Open);
        }
        let token = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                // The scheme's name is case-insensitive (RFC 9110 §11.1): `BEARER` too.
                let (scheme, token) = v.trim_start().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then_some(token)
            })
            .map(str::trim);
        let Some(token) = token else {
            return Err(ApiError::Unauthorized {
                message: "missing Authorization: Bearer token".into(),
            });
        };
        let Some(who) = self.identify(token) else {
            return Err(ApiError::Unauthorized {
                message: "unknown token".into(),
            });
        };
        let allowed = match access {
            Access::Ingest => matches!(who, Principal::Ingest | Principal::Admin(_)),
            Access::Query => matches!(who, Principal::Admin(_) | Principal::User(_)),
            Access::Admin => matches!(who, Principal::Admin(_)),
            Access::Metrics => matches!(who, Principal::Metrics | Principal::Admin(_)),
        };
        if allowed {
            Ok(who)
        } else {
            Err(ApiError::Forbidden {
                message: format!("{} token may not use this endpoint", who.article_role()),
            })
        }
    }

    /// [`Auth::guard`] for routes that carry their OpenAPI description.
    pub fn guard_documented<S: Clone + Send + Sync + 'static>(
        &self,
        routes: utoipa_axum::router::OpenApiRouter<S>,
        access: Access,
    ) -> utoipa_axum::router::OpenApiRouter<S> {
        if matches!(access, Access::Ingest | Access::Metrics) && self.is_open(access) {
            return routes;
        }
        routes.route_layer(axum::middleware::from_fn_with_state(
            (self.clone(), access),
            guard,
        ))
    }

    /// Puts every route of `routes` behind `access`; handlers may take
    /// `Extension<Principal>`. Apply it to a whole group (e.g. every `/v1/*` ingest route).
    pub fn guard<S: Clone + Send + Sync + 'static>(
        &self,
        routes: Router<S>,
        access: Access,
    ) -> Router<S> {
        // Ingest and /metrics handlers take no principal: with nothing to check, no layer
        // (a middleware per request is a measurable share of a single-record request).
        if matches!(access, Access::Ingest | Access::Metrics) && self.is_open(access) {
            return routes;
        }
        routes.route_layer(axum::middleware::from_fn_with_state(
            (self.clone(), access),
            guard,
        ))
    }
}

async fn guard(
    State((auth, access)): State<(Auth, Access)>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let who = auth.check(req.headers(), access)?;
    req.extensions_mut().insert(who);
    Ok(next.run(req).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        Auth::new(AuthConfig {
            ingest_tokens: vec!["ingest-token-0123456789".into()],
            admin_tokens: vec!["admin-token-0123456789".into()],
            user_tokens: vec![("alice-token-0123456789".into(), "alice".into())],
            metrics_token: None,
            allow_open: false,
        })
    }

    fn bearer(t: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            axum::http::header::AUTHORIZATION,
            format!("Bearer {t}").parse().expect("header"),
        );
        h
    }

    /// The scheme is matched in any case; another scheme, or none, is no token.
    #[test]
    fn the_scheme_is_case_insensitive() {
        let a = auth();
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                axum::http::header::AUTHORIZATION,
                v.parse().expect("header"),
            );
            a.check(&h, Access::Query)
        };
        for v in [
            "BEARER alice-token-0123456789",
            "bearer alice-token-0123456789",
            "BeArEr  alice-token-0123456789",
        ] {
            assert_eq!(with(v).expect(v), Principal::User("alice".into()), "{v}");
        }
        for v in [
            "Basic alice-token-0123456789",
            "Bearer",
            "Bearer\talice-token-0123456789",
            "alice-token-0123456789",
        ] {
            assert!(matches!(with(v), Err(ApiError::Unauthorized { .. })), "{v}");
        }
    }

    #[test]
    fn roles_map_to_access() {
        let a = auth();
        assert_eq!(
            a.check(&bearer("admin-token-0123456789"), Access::Query)
                .expect("admin"),
            Principal::Admin(0)
        );
        assert_eq!(
            a.check(&bearer("alice-token-0123456789"), Access::Query)
                .expect("user"),
            Principal::User("alice".into())
        );
        assert!(matches!(
            a.check(&bearer("alice-token-0123456789"), Access::Admin),
            Err(ApiError::Forbidden { .. })
        ));
        match a.check(&bearer("ingest-token-0123456789"), Access::Query) {
            Err(ApiError::Forbidden { message }) => {
                assert_eq!(message, "an ingest token may not use this endpoint");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            a.check(&bearer("ingest-token-012345678"), Access::Ingest),
            Err(ApiError::Unauthorized { .. })
        ));
        assert!(matches!(
            a.check(&HeaderMap::new(), Access::Ingest),
            Err(ApiError::Unauthorized { .. })
        ));
        // No metrics token configured: /metrics stays open.
        assert_eq!(
            a.check(&HeaderMap::new(), Access::Metrics).expect("open"),
            Principal::Open
        );
    }

    /// An admin's export is audited with the token's place in the list, never the token.
    #[test]
    fn actors_name_the_token_not_its_secret() {
        let a = Auth::new(AuthConfig {
            admin_tokens: vec![
                "admin-token-0123456789".into(),
                "admin-token-9876543210".into(),
            ],
            ..AuthConfig::default()
        });
        let who = a
            .check(&bearer("admin-token-9876543210"), Access::Query)
            .expect("admin");
        assert_eq!(who.actor().as_deref(), Some("auth.admin_tokens[1]"));
        assert_eq!(
            Principal::User("alice".into()).actor().as_deref(),
            Some("alice")
        );
        assert_eq!(Principal::Open.actor(), None);
    }

    #[test]
    fn no_tokens_means_open_and_debug_hides_tokens() {
        let open = Auth::new(AuthConfig::default());
        assert_eq!(
            open.check(&HeaderMap::new(), Access::Admin).expect("open"),
            Principal::Open
        );
        let dbg = format!("{:?}", auth());
        assert!(!dbg.contains("0123456789"), "{dbg}");
    }

    #[test]
    fn constant_time_equality_is_equality() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"abcd"));
        assert!(!ct_eq(b"", b"a"));
    }
}
