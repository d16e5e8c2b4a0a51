//! The cluster secret (`DISTRIBUTARY_CLUSTER_SECRET_FILE`): one shared secret read by every service, used
//! only to make and check proofs (HMAC-SHA256 over a challenge), so the secret itself never crosses the wire.
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
    fn nonces_differ_and_are_valid_tokens() {
        let (a, b) = (nonce(), nonce());
        assert_ne!(a, b);
        assert!(valid_token(&a) && valid_token(&b));
        assert!(!valid_token("a/b") && !valid_token(""));
    }
}
