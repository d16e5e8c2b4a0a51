//! The cluster secret (`DISTRIBUTARY_CLUSTER_SECRET_FILE`): one shared secret read by every service, used
//! only to make and check proofs (HMAC-SHA256 over a challenge), so the secret itself never crosses the wire.
//!
//! Internal requests carry [`AUTH_HEADER`]: `v1 <unix secs> <nonce> <hex HMAC>` over the method, the path
//! and query, the time and the nonce. A receiver accepts it within [`MAX_SKEW`] of its own clock and only
//! once ([`ReplayGuard`]), so a captured request cannot be sent again, nor changed to another route.
//!
//! Node identity: a broadcaster sends a fresh random nonce; a storage node answers its id and
//! `HMAC(secret, "distributary-node-identity/v1" ‖ nonce ‖ id)`. Only a holder of the secret can answer a
//! nonce it has never seen, so a host that merely answers `/healthz` cannot pass as a storage node.

use std::fmt;
use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::env::EnvError;

/// The variable naming the file that holds the secret.
pub const SECRET_FILE_VAR: &str = "DISTRIBUTARY_CLUSTER_SECRET_FILE";

/// Shortest accepted secret: 32 bytes, as many as the HMAC's output.
pub const MIN_SECRET_LEN: usize = 32;

/// Longest nonce a node signs; bounds the work an unauthenticated caller can ask for.
pub const MAX_NONCE_LEN: usize = 128;

const IDENTITY_CONTEXT: &[u8] = b"distributary-node-identity/v1";
const REQUEST_CONTEXT: &[u8] = b"distributary-request/v1";

/// Header carrying an internal request's proof.
pub const AUTH_HEADER: &str = "x-distributary-auth";

/// How far a request's timestamp may be from the receiver's clock.
pub const MAX_SKEW: std::time::Duration = std::time::Duration::from_secs(300);

/// Why an internal request was refused (said in the 401, never with the expected value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestAuthError {
    #[error(
        "this route needs the cluster secret: the request carries no x-distributary-auth header"
    )]
    Missing,
    #[error("malformed x-distributary-auth header")]
    Malformed,
    #[error("the request's timestamp is more than 300 s from this server's clock")]
    Stale,
    #[error("the request's proof does not match the cluster secret")]
    BadProof,
    #[error("this request was already received once")]
    Replayed,
}

/// The shared secret. `Debug` never prints it.
#[derive(Clone)]
pub struct ClusterSecret(Vec<u8>);

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSecret(<redacted>)")
    }
}

impl ClusterSecret {
    /// Builds a secret from its bytes; surrounding whitespace (a trailing newline in the file) is dropped.
    pub fn new(bytes: &[u8]) -> Result<Self, String> {
        let trimmed = bytes.trim_ascii();
        if trimmed.len() < MIN_SECRET_LEN {
            return Err(format!(
                "the secret must be at least {MIN_SECRET_LEN} bytes, the file holds {}",
                trimmed.len()
            ));
        }
        Ok(Self(trimmed.to_vec()))
    }

    /// Reads the secret file; the error names the variable but never the file's content.
    pub fn from_file(path: &Path) -> Result<Self, EnvError> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path)
            .map_err(|e| EnvError::invalid(SECRET_FILE_VAR, &shown, format!("cannot read: {e}")))?;
        Self::new(&bytes).map_err(|e| EnvError::invalid(SECRET_FILE_VAR, &shown, e))
    }

    /// The secret named by `DISTRIBUTARY_CLUSTER_SECRET_FILE` among `vars`, if it is set.
    pub fn from_vars<'a>(
        vars: impl IntoIterator<Item = &'a (String, String)>,
    ) -> Result<Option<Self>, EnvError> {
        match vars.into_iter().find(|(k, _)| k == SECRET_FILE_VAR) {
            None => Ok(None),
            Some((_, v)) if v.trim().is_empty() => Err(EnvError::invalid(
                SECRET_FILE_VAR,
                v,
                "must name a file when set",
            )),
            Some((_, v)) => Self::from_file(Path::new(v.trim())).map(Some),
        }
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes keys of any length, so this cannot fail.
        <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC accepts any key length")
    }

    fn identity_mac(&self, nonce: &str, node_id: &str) -> Hmac<Sha256> {
        let mut mac = self.mac();
        for part in [IDENTITY_CONTEXT, nonce.as_bytes(), node_id.as_bytes()] {
            // Length prefixes keep ("ab", "c") and ("a", "bc") apart.
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac
    }

    fn request_mac(
        &self,
        method: &str,
        path_and_query: &str,
        ts: u64,
        nonce: &str,
    ) -> Hmac<Sha256> {
        let mut mac = self.mac();
        let ts = ts.to_string();
        for part in [
            REQUEST_CONTEXT,
            method.as_bytes(),
            path_and_query.as_bytes(),
            ts.as_bytes(),
            nonce.as_bytes(),
        ] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac
    }

    /// The [`AUTH_HEADER`] value for a request, made now.
    pub fn sign_request(&self, method: &str, path_and_query: &str) -> String {
        let ts = unix_secs();
        let nonce = nonce();
        let mac = self.request_mac(method, path_and_query, ts, &nonce);
        format!(
            "v1 {ts} {nonce} {}",
            hex::encode(mac.finalize().into_bytes())
        )
    }

    /// Checks an [`AUTH_HEADER`] value; the nonce is then remembered by `replay` so it is accepted once.
    pub fn verify_request(
        &self,
        method: &str,
        path_and_query: &str,
        header: Option<&str>,
        replay: &ReplayGuard,
    ) -> Result<(), RequestAuthError> {
        let header = header.ok_or(RequestAuthError::Missing)?;
        let mut parts = header.split(' ');
        let (Some("v1"), Some(ts), Some(nonce), Some(proof), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(RequestAuthError::Malformed);
        };
        let ts: u64 = ts.parse().map_err(|_| RequestAuthError::Malformed)?;
        if !valid_token(nonce) {
            return Err(RequestAuthError::Malformed);
        }
        let now = unix_secs();
        if now.abs_diff(ts) > MAX_SKEW.as_secs() {
            return Err(RequestAuthError::Stale);
        }
        let proof = hex::decode(proof).map_err(|_| RequestAuthError::Malformed)?;
        self.request_mac(method, path_and_query, ts, nonce)
            .verify_slice(&proof)
            .map_err(|_| RequestAuthError::BadProof)?;
        replay.check(nonce, ts, now)
    }

    /// The proof a node with `node_id` gives for `nonce`, hex.
    pub fn identity_proof(&self, nonce: &str, node_id: &str) -> String {
        hex::encode(self.identity_mac(nonce, node_id).finalize().into_bytes())
    }

    /// Whether `proof` is the right answer to `nonce` for `node_id` (compared in constant time).
    pub fn verify_identity(&self, nonce: &str, node_id: &str, proof: &str) -> bool {
        match hex::decode(proof) {
            Ok(bytes) => self
                .identity_mac(nonce, node_id)
                .verify_slice(&bytes)
                .is_ok(),
            Err(_) => false,
        }
    }
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Nonces of requests accepted within the last [`MAX_SKEW`] × 2, so each is accepted once. Bounded: past
/// [`ReplayGuard::CAPACITY`] live entries the oldest are forgotten early, which only narrows the window in
/// which a captured request could be replayed.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    seen: std::sync::Mutex<std::collections::HashMap<String, u64>>,
}

impl ReplayGuard {
    /// Most nonces remembered at once.
    pub const CAPACITY: usize = 200_000;

    fn check(&self, nonce: &str, ts: u64, now: u64) -> Result<(), RequestAuthError> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= Self::CAPACITY {
            let horizon = now.saturating_sub(MAX_SKEW.as_secs());
            seen.retain(|_, t| *t >= horizon);
            if seen.len() >= Self::CAPACITY {
                seen.clear();
            }
        }
        if seen.insert(nonce.to_owned(), ts).is_some() {
            return Err(RequestAuthError::Replayed);
        }
        Ok(())
    }
}

/// The server side: every request but the public ones must carry a valid [`AUTH_HEADER`].
#[derive(Debug, Clone)]
pub struct ClusterGate {
    inner: std::sync::Arc<(ClusterSecret, ReplayGuard)>,
}

/// Routes open without the secret: liveness, metrics, and the identity challenge (whose answer is itself
/// a proof, useless without the secret).
const PUBLIC_PATHS: &[&str] = &["/healthz", "/metrics", "/v1/identity"];

impl ClusterGate {
    /// A gate checking requests against `secret`.
    pub fn new(secret: ClusterSecret) -> Self {
        Self {
            inner: std::sync::Arc::new((secret, ReplayGuard::default())),
        }
    }

    /// Wraps `router` so that every route but the public ones answers 401 without a valid proof.
    pub fn protect(self, router: axum::Router) -> axum::Router {
        router.layer(axum::middleware::from_fn_with_state(self, require_cluster))
    }
}

async fn require_cluster(
    axum::extract::State(gate): axum::extract::State<ClusterGate>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let path = req.uri().path();
    if PUBLIC_PATHS.contains(&path) {
        return next.run(req).await;
    }
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or(path)
        .to_owned();
    let header = req.headers().get(AUTH_HEADER).and_then(|v| v.to_str().ok());
    let (secret, replay) = &*gate.inner;
    match secret.verify_request(req.method().as_str(), &pq, header, replay) {
        Ok(()) => next.run(req).await,
        Err(e) => {
            tracing::warn!(path = %path, error = %e, "internal request refused");
            (
                axum::http::StatusCode::UNAUTHORIZED,
                axum::Json(crate::protocol::ErrorBody {
                    error: e.to_string(),
                }),
            )
                .into_response()
        }
    }
}

/// Refuses a non-loopback bind without the cluster secret: a reader or storage node reachable from other
/// machines must not accept unauthenticated writes.
pub fn require_secret_off_loopback(
    host_var: &str,
    host: std::net::IpAddr,
    secret: &Option<ClusterSecret>,
) -> Result<(), EnvError> {
    if host.is_loopback() || secret.is_some() {
        return Ok(());
    }
    Err(EnvError::Missing {
        var: SECRET_FILE_VAR.to_owned(),
        reason: format!(
            "{host_var}={host} is not a loopback address, and a service reachable from other machines \
             needs the cluster secret (or bind {host_var} to 127.0.0.1)"
        ),
    })
}

/// A fresh random challenge (122 random bits, hex).
pub fn nonce() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Whether `s` is an acceptable identity or nonce: 1 to [`MAX_NONCE_LEN`] ASCII alphanumerics or `-`.
pub fn valid_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NONCE_LEN
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_verify_only_with_the_same_secret_nonce_and_id() {
        let a = ClusterSecret::new(&[7u8; 32]).expect("secret");
        let b = ClusterSecret::new(&[8u8; 40]).expect("secret");
        let p = a.identity_proof("n1", "node-a");
        assert!(a.verify_identity("n1", "node-a", &p));
        assert!(!a.verify_identity("n2", "node-a", &p));
        assert!(!a.verify_identity("n1", "node-b", &p));
        assert!(!b.verify_identity("n1", "node-a", &p));
        assert!(!a.verify_identity("n1", "node-a", "zz"));
    }

    #[test]
    fn short_secrets_are_refused_and_never_printed() {
        assert!(ClusterSecret::new(b"short\n").is_err());
        let s = ClusterSecret::new(b"0123456789abcdef0123456789abcdef\n").expect("secret");
        assert_eq!(format!("{s:?}"), "ClusterSecret(<redacted>)");
    }

    #[test]
    fn requests_verify_once_for_their_route_only() {
        let s = ClusterSecret::new(&[3u8; 32]).expect("secret");
        let other = ClusterSecret::new(&[4u8; 32]).expect("secret");
        let guard = ReplayGuard::default();
        let h = s.sign_request("PUT", "/v1/blobs/a/b");
        assert_eq!(
            s.verify_request("GET", "/v1/blobs/a/b", Some(&h), &guard),
            Err(RequestAuthError::BadProof)
        );
        assert_eq!(
            other.verify_request("PUT", "/v1/blobs/a/b", Some(&h), &guard),
            Err(RequestAuthError::BadProof)
        );
        assert_eq!(
            s.verify_request("PUT", "/v1/blobs/a/b", Some(&h), &guard),
            Ok(())
        );
        assert_eq!(
            s.verify_request("PUT", "/v1/blobs/a/b", Some(&h), &guard),
            Err(RequestAuthError::Replayed)
        );
        assert_eq!(
            s.verify_request("PUT", "/x", None, &guard),
            Err(RequestAuthError::Missing)
        );
        assert_eq!(
            s.verify_request("PUT", "/x", Some("v1 1 abc 00"), &guard),
            Err(RequestAuthError::Stale)
        );
        assert_eq!(
            s.verify_request("PUT", "/x", Some("v2 garbage"), &guard),
            Err(RequestAuthError::Malformed)
        );
    }

    #[test]
    fn nonces_differ_and_are_valid_tokens() {
        let (a, b) = (nonce(), nonce());
        assert_ne!(a, b);
        assert!(valid_token(&a) && valid_token(&b));
        assert!(!valid_token("a/b") && !valid_token(""));
    }
}
