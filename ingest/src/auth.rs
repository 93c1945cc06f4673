//! Who may use the operations listener (issue 14, item 7): API tokens with a role, `read` or
//! `admin`, presented as `Authorization: Bearer <token>` or as the password of HTTP Basic (so a
//! browser can open the dashboard). Writes need `admin`; reads need a token unless
//! `ops_reads_require_token = false`; `/healthz` and `/readyz` are always open, for load
//! balancers.
//!
//! Only the SHA-256 of a token is stored. Lookups are cached for [`CACHE_TTL`] so a page view
//! does not cost a database round-trip, which is also how long a revoked token may still work.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::Serialize;

use crate::storage::admin::TokenMatch;
use crate::storage::{Storage, StorageError};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Dashboard pages, the read API, `/metrics`.
    Read,
    /// Everything `read` may, and writes (lifecycle, revocations, tokens).
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "read" => Some(Role::Read),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// Every token starts with this, so a leaked one is recognisable (secret scanners, logs).
pub const TOKEN_PREFIX: &str = "phk_";
/// How long a token lookup is trusted: a revoked token stops working within this.
pub const CACHE_TTL: Duration = Duration::from_secs(5);
/// `last_used_at` is written at most this often per token and replica: a busy dashboard is
/// not a write per page.
pub const TOUCH_EVERY: Duration = Duration::from_secs(60);
/// Longest token name: it is shown on pages and in the audit log.
pub const MAX_NAME_CHARS: usize = 64;

/// A new token: the secret (shown once) and the digest that is stored.
pub struct NewToken {
    pub secret: String,
    pub sha256: [u8; 32],
}

impl std::fmt::Debug for NewToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NewToken([redacted])")
    }
}

/// Makes a token from 32 bytes of the operating system's random generator.
pub fn generate() -> anyhow::Result<NewToken> {
    generate_with_prefix(TOKEN_PREFIX)
}

/// A secret of 32 random bytes after `prefix`, which says what kind of secret it is when one
/// turns up in a log or a paste.
pub fn generate_with_prefix(prefix: &str) -> anyhow::Result<NewToken> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("the operating system's random generator failed"))?;
    let secret = format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let sha256 = digest(&secret);
    Ok(NewToken { secret, sha256 })
}

/// The stored form of a presented secret.
pub fn digest(secret: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// A token name: letters, digits, `.`, `_`, `-`, at most [`MAX_NAME_CHARS`].
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Err(format!("a token name has 1 to {MAX_NAME_CHARS} characters"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err("a token name holds only letters, digits, '.', '_' and '-'".into());
    }
    Ok(())
}

/// Who made a request, for handlers that write (and the audit log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub token: String,
    pub role: Role,
}

impl Actor {
    /// How the audit log names this actor.
    pub fn audit_name(&self) -> String {
        format!("token:{}", self.token)
    }
}

/// Why a request was not let through; also the `reason` label of the failure counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization` header.
    Missing,
    /// A header that is neither Bearer nor Basic, or does not decode.
    Malformed,
    /// No token has this secret.
    Unknown,
    /// The token was revoked.
    Revoked,
    /// A `read` token on a write.
    Forbidden,
}

impl Refusal {
    pub const ALL: [Refusal; 5] = [
        Refusal::Missing,
        Refusal::Malformed,
        Refusal::Unknown,
        Refusal::Revoked,
        Refusal::Forbidden,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Malformed => "malformed",
            Refusal::Unknown => "unknown",
            Refusal::Revoked => "revoked",
            Refusal::Forbidden => "forbidden",
        }
    }
}

/// The role a request needs, `None` when it is open to all.
pub fn required(method: &Method, path: &str, reads_open: bool) -> Option<Role> {
    // Load balancers probe these without credentials; they say nothing about the fleet.
    // The stylesheet and icon are the same for everyone, and a browser asks for them before
    // it has been told to authenticate.
    if matches!(path, "/healthz" | "/readyz" | "/favicon.ico") || path.starts_with("/assets/") {
        return None;
    }
    if method == Method::GET || method == Method::HEAD {
        return (!reads_open).then_some(Role::Read);
    }
    Some(Role::Admin)
}

/// The secret in an `Authorization` header: `Bearer <token>`, or Basic with the token as the
/// password (any user name), or as the user name with an empty password (`curl -u TOKEN:`).
pub fn presented_secret(headers: &HeaderMap) -> Result<String, Refusal> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(Refusal::Missing)?
        .to_str()
        .map_err(|_| Refusal::Malformed)?
        .trim();
    let (scheme, rest) = value.split_once(' ').ok_or(Refusal::Malformed)?;
    let rest = rest.trim();
    let secret = if scheme.eq_ignore_ascii_case("bearer") {
        rest.to_owned()
    } else if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .map_err(|_| Refusal::Malformed)?;
        let text = String::from_utf8(decoded).map_err(|_| Refusal::Malformed)?;
        let (user, password) = text.split_once(':').ok_or(Refusal::Malformed)?;
        if password.is_empty() {
            user.to_owned()
        } else {
            password.to_owned()
        }
    } else {
        return Err(Refusal::Malformed);
    };
    if secret.is_empty() {
        return Err(Refusal::Malformed);
    }
    Ok(secret)
}

/// Token checks for the operations listener; shared by every request.
#[derive(Debug)]
pub struct Auth {
    storage: Storage,
    reads_open: bool,
    /// Tokens found, by digest, with when they were read. Only tokens that exist are kept,
    /// so the map is as large as the token table at most; a new token works at once.
    cache: Mutex<HashMap<[u8; 32], (Instant, TokenMatch)>>,
    /// When each token's `last_used_at` was last written by this replica.
    touched: Mutex<HashMap<i32, Instant>>,
    failures: prometheus::IntCounterVec,
}

impl Auth {
    /// Registers the failure counter in `registry`.
    pub fn new(
        storage: Storage,
        reads_open: bool,
        registry: &prometheus::Registry,
    ) -> Result<Self, prometheus::Error> {
        let failures = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "phonehome_ops_auth_failures_total",
                "Operations requests refused for their credentials, by reason (missing, \
                 malformed, unknown, revoked: 401; forbidden: a read token on a write, 403).",
            ),
            &["reason"],
        )?;
        for r in Refusal::ALL {
            failures.with_label_values(&[r.as_str()]).reset();
        }
        registry.register(Box::new(failures.clone()))?;
        Ok(Auth {
            storage,
            reads_open,
            cache: Mutex::default(),
            touched: Mutex::default(),
            failures,
        })
    }

    /// The same checks (and failure counter, already registered) with reads open or not.
    pub fn with_reads_open(&self, reads_open: bool) -> Self {
        Auth {
            storage: self.storage.clone(),
            reads_open,
            cache: Mutex::default(),
            touched: Mutex::default(),
            failures: self.failures.clone(),
        }
    }

    /// Whether reads (pages, read API, `/metrics`) are open without a token.
    pub fn reads_open(&self) -> bool {
        self.reads_open
    }

    /// The token behind `secret`, from the cache when it is fresh enough.
    async fn lookup(&self, secret: &str) -> Result<Option<TokenMatch>, StorageError> {
        let digest = digest(secret);
        let now = Instant::now();
        if let Some((at, m)) = self.cache.lock().ok().and_then(|c| c.get(&digest).cloned()) {
            if now.duration_since(at) < CACHE_TTL {
                return Ok(Some(m));
            }
        }
        let found = self.storage.api_token_by_digest(&digest).await?;
        if let Ok(mut cache) = self.cache.lock() {
            match &found {
                Some(m) => {
                    cache.insert(digest, (now, m.clone()));
                }
                None => {
                    cache.remove(&digest);
                }
            }
        }
        Ok(found)
    }

    /// Writes `last_used_at` in the background when this replica has not for a minute.
    fn touch(&self, id: i32) {
        let now = Instant::now();
        let due = match self.touched.lock() {
            Ok(mut t) => match t.get(&id) {
                Some(at) if now.duration_since(*at) < TOUCH_EVERY => false,
                _ => {
                    t.insert(id, now);
                    true
                }
            },
            Err(_) => false,
        };
        if due {
            let storage = self.storage.clone();
            tokio::spawn(async move {
                // Only a convenience for `token list`: a failure is logged, never an error.
                if let Err(e) = storage.touch_api_token(id).await {
                    tracing::debug!(error = %e, "cannot record a token's last use");
                }
            });
        }
    }

    /// Decides on one request needing `need`: the actor, or the refusal.
    pub async fn check(&self, headers: &HeaderMap, need: Role) -> Result<Actor, Denied> {
        let secret = presented_secret(headers).map_err(Denied::Refused)?;
        let found = self
            .lookup(&secret)
            .await
            .map_err(Denied::Unavailable)?
            .ok_or(Denied::Refused(Refusal::Unknown))?;
        if found.revoked {
            return Err(Denied::Refused(Refusal::Revoked));
        }
        self.touch(found.id);
        if found.role < need {
            return Err(Denied::Refused(Refusal::Forbidden));
        }
        Ok(Actor {
            token: found.name,
            role: found.role,
        })
    }

    fn count(&self, r: Refusal) {
        self.failures.with_label_values(&[r.as_str()]).inc();
    }
}

/// Why [`Auth::check`] said no.
#[derive(Debug)]
pub enum Denied {
    Refused(Refusal),
    /// The token table cannot be read: neither yes nor no.
    Unavailable(StorageError),
}

/// The operations listener's gate (an axum middleware): lets a request through with its
/// [`Actor`] as an extension, or answers 401, 403 or 503 itself.
pub async fn gate(State(auth): State<Arc<Auth>>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let Some(need) = required(req.method(), path, auth.reads_open) else {
        return next.run(req).await;
    };
    // Scripts and Prometheus get JSON and a Bearer challenge; people get a page and a Basic
    // challenge, which makes a browser ask for the token.
    let machine = path.starts_with("/api/") || path == "/metrics";
    match auth.check(req.headers(), need).await {
        Ok(actor) => {
            req.extensions_mut().insert(actor);
            next.run(req).await
        }
        Err(Denied::Refused(r)) => {
            auth.count(r);
            refusal(r, machine)
        }
        Err(Denied::Unavailable(e)) => {
            tracing::warn!(error = %e, "cannot check an API token: database unavailable");
            let mut response = (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "5")],
                "cannot check credentials right now: database unavailable\n",
            )
                .into_response();
            no_store(&mut response);
            response
        }
    }
}

fn no_store(response: &mut Response) {
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
}

/// The answer to a refused request.
fn refusal(r: Refusal, machine: bool) -> Response {
    let (status, message) = match r {
        Refusal::Forbidden => (
            StatusCode::FORBIDDEN,
            "this token has the read role; the request needs an admin token",
        ),
        Refusal::Missing => (
            StatusCode::UNAUTHORIZED,
            "an API token is required: Authorization: Bearer <token>, or HTTP Basic with the \
             token as the password",
        ),
        Refusal::Malformed => (
            StatusCode::UNAUTHORIZED,
            "the Authorization header is neither Bearer <token> nor Basic credentials",
        ),
        Refusal::Unknown | Refusal::Revoked => (
            StatusCode::UNAUTHORIZED,
            "this token is not valid (unknown or revoked)",
        ),
    };
    let mut response = if machine {
        (
            status,
            axum::Json(serde_json::json!({
                "error": if status == StatusCode::FORBIDDEN { "forbidden" } else { "unauthorized" },
                "message": message,
            })),
        )
            .into_response()
    } else {
        let title = if status == StatusCode::FORBIDDEN {
            "Forbidden"
        } else {
            "Authentication required"
        };
        // Fixed text only, nothing from the request: no escaping needed.
        (
            status,
            axum::response::Html(format!(
                "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
                 <title>{title} · phonehome</title></head><body><h1>{title}</h1>\
                 <p>{message}. Ask an administrator for a token \
                 (<code>phonehome-ingest token create</code>).</p></body></html>"
            )),
        )
            .into_response()
    };
    if status == StatusCode::UNAUTHORIZED {
        let challenge = if machine {
            "Bearer realm=\"phonehome\""
        } else {
            "Basic realm=\"phonehome\", charset=\"UTF-8\""
        };
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
    }
    no_store(&mut response);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(value).expect("valid header"),
        );
        h
    }

    fn basic(user_pass: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_pass)
        )
    }

    #[test]
    fn tokens_are_random_prefixed_and_stored_by_digest_only() {
        let a = generate().expect("token");
        let b = generate().expect("token");
        assert!(a.secret.starts_with(TOKEN_PREFIX));
        // 32 bytes in unpadded base64url.
        assert_eq!(a.secret.len(), TOKEN_PREFIX.len() + 43);
        assert_ne!(a.secret, b.secret);
        assert_eq!(a.sha256, digest(&a.secret));
        assert!(!format!("{a:?}").contains(&a.secret));
    }

    #[test]
    fn bearer_and_basic_carry_the_token() {
        assert_eq!(
            presented_secret(&headers("Bearer phk_x")),
            Ok("phk_x".into())
        );
        assert_eq!(
            presented_secret(&headers("bearer  phk_x ")),
            Ok("phk_x".into())
        );
        assert_eq!(
            presented_secret(&headers(&basic("anyone:phk_y"))),
            Ok("phk_y".into())
        );
        assert_eq!(
            presented_secret(&headers(&basic("phk_z:"))),
            Ok("phk_z".into())
        );
        assert_eq!(presented_secret(&HeaderMap::new()), Err(Refusal::Missing));
        for bad in ["Bearer", "Bearer ", "Digest abc", "Basic !!!", "phk_x"] {
            assert_eq!(
                presented_secret(&headers(bad)),
                Err(Refusal::Malformed),
                "{bad}"
            );
        }
        assert_eq!(
            presented_secret(&headers(&basic("no-colon"))),
            Err(Refusal::Malformed)
        );
    }

    #[test]
    fn writes_need_admin_reads_need_read_unless_open_probes_never() {
        assert_eq!(required(&Method::GET, "/", false), Some(Role::Read));
        assert_eq!(required(&Method::GET, "/metrics", false), Some(Role::Read));
        assert_eq!(required(&Method::GET, "/", true), None);
        assert_eq!(
            required(&Method::PUT, "/api/v1/appliances/X/lifecycle", true),
            Some(Role::Admin)
        );
        assert_eq!(
            required(&Method::POST, "/anything", false),
            Some(Role::Admin)
        );
        for open in ["/healthz", "/readyz", "/assets/style.css"] {
            assert_eq!(required(&Method::GET, open, false), None, "{open}");
        }
        assert!(Role::Admin > Role::Read);
    }

    #[test]
    fn token_names_are_plain() {
        assert!(check_name("ops-alice_2.laptop").is_ok());
        for bad in [
            "",
            "a b",
            "cli:root",
            "<b>",
            &"x".repeat(MAX_NAME_CHARS + 1),
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
