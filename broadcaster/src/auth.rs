//! Who may do what at the gateway.
//!
//! - Tokens (`Authorization: Bearer`, or the sign-in cookie a browser carries): the bootstrap admin token
//!   from `BROADCASTER_ADMIN_TOKEN_FILE`, and tokens made with `POST /admin/tokens`, stored only as the
//!   SHA-256 of their secret in the metadata store, so every broadcaster sharing it honours them. A lookup is
//!   cached for at most [`CACHE_TTL`], so a revoked token is refused everywhere within that.
//! - Rights are scopes (`read`, `upload`, `delete`, `admin`), optionally limited to names and video ids
//!   starting with a prefix. Missing or unknown token: 401 with `WWW-Authenticate: Bearer`; a valid token
//!   without the right: 403.
//! - Every state-changing request from a browser must come from this origin (`Sec-Fetch-Site`, `Origin`),
//!   so another site cannot post a form here with the user's cookie.
//! - Without authentication (`BROADCASTER_AUTH=none`) on a loopback bind, only loopback Host names are
//!   served: a DNS name an attacker points at 127.0.0.1 (DNS rebinding) reaches nothing.
//!
//! The middleware puts the caller's [`Principal`] in the request's extensions; handlers that learn a name
//! only from the body (multipart) check it there.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use common::protocol::ErrorBody;
use meta::{MetaStore, TokenRecord};
use sha2::{Digest, Sha256};

use crate::config::{AuthMode, Config};

/// How long a token lookup is trusted: a revoked token is refused within this on every broadcaster.
pub const CACHE_TTL: Duration = Duration::from_secs(2);

/// Most cached lookups (good and bad tokens alike) before the cache is emptied.
const CACHE_MAX: usize = 10_000;

/// Name of the sign-in cookie.
pub const COOKIE: &str = "distributary_token";

/// A right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Pages, videos, files.
    Read,
    /// Uploads of any kind.
    Upload,
    /// Removing files and videos.
    Delete,
    /// Ring administration, tokens, metrics.
    Admin,
}

impl Scope {
    /// Every scope, as spelt in requests.
    pub const ALL: [(&'static str, Scope); 4] = [
        ("read", Scope::Read),
        ("upload", Scope::Upload),
        ("delete", Scope::Delete),
        ("admin", Scope::Admin),
    ];

    /// Parses one scope name.
    pub fn parse(s: &str) -> Option<Scope> {
        Self::ALL.iter().find(|(n, _)| *n == s).map(|(_, sc)| *sc)
    }

    fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, s)| *s == self)
            .map(|(n, _)| *n)
            .unwrap_or("?")
    }
}

/// The caller, as the middleware established it.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Token id (`admin` for the bootstrap token, `anonymous` without authentication).
    pub id: String,
    scopes: Vec<Scope>,
    prefix: Option<String>,
}

impl Principal {
    fn unrestricted(id: &str) -> Self {
        Self {
            id: id.to_owned(),
            scopes: Scope::ALL.iter().map(|(_, s)| *s).collect(),
            prefix: None,
        }
    }

    /// Whether the caller has `scope` for `name` (a file name or video id; `None`: no particular name).
    pub fn allows(&self, scope: Scope, name: Option<&str>) -> bool {
        if !self.scopes.contains(&scope) {
            return false;
        }
        match (&self.prefix, name) {
            (None, _) => true,
            (Some(p), Some(n)) => n.starts_with(p.as_str()),
            // A prefix-limited token reaches only named things within its prefix.
            (Some(_), None) => scope == Scope::Read,
        }
    }

    /// [`Principal::allows`], as a 403 when not.
    pub fn check(&self, scope: Scope, name: Option<&str>) -> Result<(), Denied> {
        if self.allows(scope, name) {
            return Ok(());
        }
        let what = match (&self.prefix, name) {
            (Some(p), Some(n)) if self.scopes.contains(&scope) => {
                format!("this token covers only names starting with {p:?}, not {n:?}")
            }
            _ => format!("this token does not have the `{}` right", scope.name()),
        };
        Err(Denied(what))
    }

    /// The prefix this caller is limited to, if any.
    pub fn prefix(&self) -> Option<&str> {
        self.prefix.as_deref()
    }
}

/// A valid token without the right: 403 with what is missing.
#[derive(Debug)]
pub struct Denied(String);

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        forbidden(&self.0)
    }
}

/// Recent token lookups by token hash, with when they were made.
type TokenCache = HashMap<[u8; 32], (Option<TokenRecord>, Instant)>;

/// What the authentication middleware needs.
#[derive(Debug)]
pub struct Auth {
    mode: AuthMode,
    admin_hash: Option<[u8; 32]>,
    public_read: bool,
    loopback_only: bool,
    secure_cookie: bool,
    meta: Arc<dyn MetaStore>,
    cache: Mutex<TokenCache>,
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// Why a token was not accepted.
enum Rejection {
    Invalid,
    Unavailable(String),
}

impl Auth {
    /// Builds the gate from the configuration.
    pub fn new(config: &Config, meta: Arc<dyn MetaStore>, tls: bool) -> Self {
        Self {
            mode: config.auth,
            admin_hash: config.admin_token.as_ref().map(|t| hash(&t.0)),
            public_read: config.public_read,
            loopback_only: config.http_host.is_loopback(),
            secure_cookie: tls,
            meta,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The principal a presented token stands for.
    async fn resolve(&self, token: &str) -> Result<Principal, Rejection> {
        let h = hash(token);
        if self.admin_hash == Some(h) {
            return Ok(Principal::unrestricted("admin"));
        }
        let cached = {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            cache
                .get(&h)
                .filter(|(_, at)| at.elapsed() < CACHE_TTL)
                .map(|(r, _)| r.clone())
        };
        let record = match cached {
            Some(r) => r,
            None => {
                let r = self
                    .meta
                    .get_token_by_hash(&hex::encode(h))
                    .await
                    .map_err(|e| Rejection::Unavailable(e.to_string()))?;
                let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
                if cache.len() >= CACHE_MAX {
                    cache.clear();
                }
                cache.insert(h, (r.clone(), Instant::now()));
                r
            }
        };
        let record = record.ok_or(Rejection::Invalid)?;
        if record.expires_unix_ms.is_some_and(|e| e <= now_ms()) {
            return Err(Rejection::Invalid);
        }
        Ok(Principal {
            id: record.id,
            scopes: record
                .scopes
                .iter()
                .filter_map(|s| Scope::parse(s))
                .collect(),
            prefix: record.prefix,
        })
    }

    /// Forgets every cached lookup (after a revocation here, so this broadcaster refuses at once).
    pub fn forget_cached(&self) {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// The token a request presents: the bearer token, else the sign-in cookie.
fn presented(headers: &HeaderMap) -> Option<String> {
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let v = v.to_str().ok()?;
        let (scheme, token) = v.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_owned())
            .filter(|t| !t.is_empty());
    }
    for v in headers.get_all(header::COOKIE) {
        let Ok(v) = v.to_str() else { continue };
        for pair in v.split(';') {
            if let Some((k, val)) = pair.trim().split_once('=') {
                if k == COOKIE && !val.is_empty() {
                    return Some(val.to_owned());
                }
            }
        }
    }
    None
}

/// What a route needs, from its method and path: the scope and the name it concerns.
fn required(method: &Method, path: &str) -> Requirement {
    let seg: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let name = |i: usize| seg.get(i).map(|s| percent_decode(s));
    match (method, seg.as_slice()) {
        (_, ["healthz"]) => Requirement::Open,
        (_, ["signin"]) | (_, ["signout"]) => Requirement::Open,
        // The site's own code and styles hold no data; the sign-in page needs them.
        (_, ["assets", ..]) => Requirement::Open,
        (&Method::PUT, ["broadcast", _]) => Requirement::Scope(Scope::Upload, name(1)),
        // The name is in the body (or the upload's metadata); the handler checks it against the prefix.
        (&Method::POST, ["broadcast"]) | (&Method::POST, ["upload"]) | (_, ["uploads", ..]) => {
            Requirement::NameInBody(Scope::Upload)
        }
        (&Method::DELETE, ["files", _]) | (&Method::DELETE, ["videos", _]) => {
            Requirement::Scope(Scope::Delete, name(1))
        }
        (_, ["files", _]) | (_, ["videos", _]) | (_, ["content", _, _]) => {
            Requirement::Read(name(1))
        }
        (_, [""]) => Requirement::Read(None),
        (_, ["admin", ..]) | (_, ["metrics"]) => Requirement::Scope(Scope::Admin, None),
        _ => Requirement::AnyToken,
    }
}

enum Requirement {
    Open,
    /// The scope, for a name the handler learns from the body and checks itself.
    NameInBody(Scope),
    Read(Option<String>),
    Scope(Scope, Option<String>),
    AnyToken,
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Methods that change state: the ones a cross-site form or script must not send with a user's cookie.
fn changes_state(m: &Method) -> bool {
    !matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Whether a state-changing request comes from this origin (or from no browser at all: curl and scripts
/// send neither header).
fn same_origin(headers: &HeaderMap) -> Result<(), &'static str> {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        return match site {
            "same-origin" | "none" => Ok(()),
            _ => Err("cross-site requests that change state are refused"),
        };
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let origin_host = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .unwrap_or("");
    if !host.is_empty() && origin_host.eq_ignore_ascii_case(host) {
        Ok(())
    } else {
        Err("cross-origin requests that change state are refused")
    }
}

/// Whether a Host header names this machine's loopback interface.
fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        // HTTP/1.0 without Host, or HTTP/2 (`:authority` is the URI's): judged elsewhere.
        return true;
    };
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
    };
    let name = name.to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn error(status: StatusCode, msg: &str) -> Response {
    (
        status,
        Json(ErrorBody {
            error: msg.to_owned(),
        }),
    )
        .into_response()
}

fn forbidden(msg: &str) -> Response {
    error(StatusCode::FORBIDDEN, msg)
}

fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"))
}

fn unauthorized(headers: &HeaderMap, invalid: bool) -> Response {
    let challenge = if invalid {
        "Bearer realm=\"distributary\", error=\"invalid_token\""
    } else {
        "Bearer realm=\"distributary\""
    };
    let msg = if invalid {
        "the token is unknown, revoked or expired"
    } else {
        "this route needs a token: send `Authorization: Bearer <token>` (browsers: sign in at /signin)"
    };
    let mut resp = if wants_html(headers) {
        (StatusCode::UNAUTHORIZED, Html(signin_page(Some(msg)))).into_response()
    } else {
        error(StatusCode::UNAUTHORIZED, msg)
    };
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    resp
}

/// The middleware: CSRF and Host checks, then the token and the right the route needs.
pub async fn authenticate(State(auth): State<Arc<Auth>>, mut req: Request, next: Next) -> Response {
    let headers = req.headers();
    if changes_state(req.method()) {
        if let Err(why) = same_origin(headers) {
            return forbidden(why);
        }
    }
    if auth.mode == AuthMode::None {
        if auth.loopback_only && !loopback_host(headers) {
            return error(
                StatusCode::MISDIRECTED_REQUEST,
                "this server runs without authentication and answers only to loopback host names \
                 (localhost, 127.0.0.1, [::1])",
            );
        }
        req.extensions_mut()
            .insert(Principal::unrestricted("anonymous"));
        return next.run(req).await;
    }
    let need = required(req.method(), req.uri().path());
    if matches!(need, Requirement::Open) {
        return next.run(req).await;
    }
    let principal = match presented(headers) {
        None => match need {
            Requirement::Read(_) if auth.public_read => Principal {
                id: "anonymous".into(),
                scopes: vec![Scope::Read],
                prefix: None,
            },
            _ => return unauthorized(headers, false),
        },
        Some(token) => match auth.resolve(&token).await {
            Ok(p) => p,
            Err(Rejection::Invalid) => return unauthorized(headers, true),
            Err(Rejection::Unavailable(e)) => {
                tracing::warn!(error = %e, "token lookup failed");
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the metadata store does not answer; the token cannot be checked",
                );
            }
        },
    };
    let allowed = match &need {
        Requirement::Open | Requirement::AnyToken => Ok(()),
        Requirement::Read(_) if auth.public_read => Ok(()),
        Requirement::Read(name) => principal.check(Scope::Read, name.as_deref()),
        Requirement::Scope(scope, name) => principal.check(*scope, name.as_deref()),
        Requirement::NameInBody(scope) if principal.scopes.contains(scope) => Ok(()),
        Requirement::NameInBody(scope) => principal.check(*scope, None),
    };
    if let Err(denied) = allowed {
        return denied.into_response();
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}

/// `GET /signin`: a form that takes a token once and sets the HttpOnly, SameSite=Strict cookie.
pub async fn signin_form() -> Response {
    (StatusCode::OK, Html(signin_page(None))).into_response()
}

/// Body of `POST /signin`.
#[derive(Debug, serde::Deserialize)]
pub struct SigninForm {
    token: String,
}

/// `POST /signin`: checks the token, then sets the cookie and goes to `/`.
pub async fn signin(
    State(auth): State<Arc<Auth>>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<SigninForm>,
) -> Response {
    if let Err(why) = same_origin(&headers) {
        return forbidden(why);
    }
    let token = form.token.trim();
    if token.is_empty() || token.len() > 512 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return (
            StatusCode::UNAUTHORIZED,
            Html(signin_page(Some("That is not a token."))),
        )
            .into_response();
    }
    match auth.resolve(token).await {
        Ok(_) => {
            let secure = if auth.secure_cookie { "; Secure" } else { "" };
            let cookie = format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict{secure}");
            let mut resp = (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                resp.headers_mut().insert(header::SET_COOKIE, v);
            }
            resp
        }
        Err(Rejection::Unavailable(_)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Html(signin_page(Some(
                "The token cannot be checked right now; try again.",
            ))),
        )
            .into_response(),
        Err(_) => (
            StatusCode::UNAUTHORIZED,
            Html(signin_page(Some(
                "That token is unknown, revoked or expired.",
            ))),
        )
            .into_response(),
    }
}

/// `POST /signout`: drops the cookie.
pub async fn signout(headers: HeaderMap) -> Response {
    if let Err(why) = same_origin(&headers) {
        return forbidden(why);
    }
    let mut resp = (StatusCode::SEE_OTHER, [(header::LOCATION, "/signin")]).into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "distributary_token=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    resp
}

fn signin_page(message: Option<&str>) -> String {
    let note = message
        .map(|m| format!("<p class=\"error\">{}</p>", crate::web::html::escape(m)))
        .unwrap_or_default();
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Sign in · Distributary</title>\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <link rel=\"stylesheet\" href=\"/assets/style.css\">\
         <link rel=\"icon\" href=\"/assets/icon.svg\" type=\"image/svg+xml\"></head><body><main>\
         <h1>Sign in</h1>{note}\
         <form method=\"post\" action=\"/signin\"><label>Token \
         <input type=\"password\" name=\"token\" autocomplete=\"current-password\" required></label> \
         <button type=\"submit\">Sign in</button></form>\
         <p>Ask an administrator for a token (<code>POST /admin/tokens</code>).</p></main></body></html>"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).expect("header"));
        }
        h
    }

    #[test]
    fn prefixes_and_scopes() {
        let p = Principal {
            id: "t".into(),
            scopes: vec![Scope::Upload, Scope::Read],
            prefix: Some("alice-".into()),
        };
        assert!(p.allows(Scope::Upload, Some("alice-1.iso")));
        assert!(!p.allows(Scope::Upload, Some("bob.iso")));
        assert!(!p.allows(Scope::Upload, None));
        assert!(p.allows(Scope::Read, None));
        assert!(!p.allows(Scope::Admin, None));
        assert!(!p.allows(Scope::Delete, Some("alice-1.iso")));
    }

    #[test]
    fn cross_site_state_changes_are_refused() {
        assert!(same_origin(&headers(&[])).is_ok());
        assert!(same_origin(&headers(&[("sec-fetch-site", "same-origin")])).is_ok());
        assert!(same_origin(&headers(&[("sec-fetch-site", "cross-site")])).is_err());
        assert!(same_origin(&headers(&[("sec-fetch-site", "same-site")])).is_err());
        assert!(same_origin(&headers(&[
            ("origin", "http://127.0.0.1:8080"),
            ("host", "127.0.0.1:8080")
        ]))
        .is_ok());
        assert!(same_origin(&headers(&[
            ("origin", "http://evil.example"),
            ("host", "127.0.0.1:8080")
        ]))
        .is_err());
        assert!(same_origin(&headers(&[("origin", "null"), ("host", "a:1")])).is_err());
    }

    #[test]
    fn only_loopback_host_names() {
        for ok in [
            "localhost:8080",
            "127.0.0.1:8080",
            "[::1]:8080",
            "127.0.0.1",
            "app.localhost:1",
        ] {
            assert!(loopback_host(&headers(&[("host", ok)])), "{ok}");
        }
        for bad in [
            "evil.example:8080",
            "10.0.0.1:8080",
            "localhost.evil.example",
        ] {
            assert!(!loopback_host(&headers(&[("host", bad)])), "{bad}");
        }
    }

    #[test]
    fn tokens_come_from_bearer_or_cookie() {
        assert_eq!(
            presented(&headers(&[("authorization", "Bearer abc")])).as_deref(),
            Some("abc")
        );
        assert_eq!(
            presented(&headers(&[("cookie", "a=b; distributary_token=xyz")])).as_deref(),
            Some("xyz")
        );
        assert_eq!(presented(&headers(&[("authorization", "Basic abc")])), None);
        assert_eq!(presented(&headers(&[])), None);
    }

    #[test]
    fn routes_need_what_they_touch() {
        assert!(matches!(
            required(&Method::GET, "/healthz"),
            Requirement::Open
        ));
        assert!(matches!(
            required(&Method::PUT, "/broadcast/a%20b"),
            Requirement::Scope(Scope::Upload, Some(ref n)) if n == "a b"
        ));
        assert!(matches!(
            required(&Method::GET, "/content/vid/manifest.mpd"),
            Requirement::Read(Some(ref n)) if n == "vid"
        ));
        assert!(matches!(
            required(&Method::POST, "/admin/nodes"),
            Requirement::Scope(Scope::Admin, None)
        ));
        assert!(matches!(
            required(&Method::GET, "/metrics"),
            Requirement::Scope(Scope::Admin, None)
        ));
        assert!(matches!(
            required(&Method::GET, "/"),
            Requirement::Read(None)
        ));
        assert!(matches!(
            required(&Method::GET, "/nope"),
            Requirement::AnyToken
        ));
    }
}
