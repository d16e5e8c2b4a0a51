//! TLS, both ways, with rustls and its `ring` provider (the one reqwest uses: no second crypto library).
//!
//! Server side: `{PREFIX}TLS_CERT_FILE` and `{PREFIX}TLS_KEY_FILE` name a PEM certificate chain and its
//! private key; the listener then serves HTTPS only, offering HTTP/2 and HTTP/1.1 by ALPN. The pair is read
//! and checked at start (a bad one stops the process, naming the variable) and re-read whenever either file
//! changes (checked every [`RELOAD_INTERVAL`], and at once on SIGHUP), so a renewed certificate is served to
//! new connections without a restart. A new pair that does not load (half written, key not matching the
//! certificate) is logged and the previous one kept.
//!
//! Client side: `DISTRIBUTARY_TLS_CA_FILE` names a PEM bundle of CA certificates; every HTTP client that
//! calls peers (targets, storage nodes, the admin CLI's broadcaster) verifies `https://` peers against it
//! instead of the built-in web roots. [`install_client_ca`] makes it the process's bundle for clients built
//! far from the configuration (the storage ring's node client).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::env::EnvError;

/// The variable naming the CA bundle clients verify peers with.
pub const CA_FILE_VAR: &str = "DISTRIBUTARY_TLS_CA_FILE";

/// How often the certificate files are checked for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// ALPN protocols offered by every TLS listener, preferred first.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The crypto provider of every TLS endpoint here.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The listeners' provider: the same suites, AES-128-GCM first. Servers pick the suite (see
/// [`ServerTls::server_config`]): AES-128-GCM is as safe for this use and about a third cheaper than
/// AES-256-GCM, which rustls and OpenSSL clients list first; a fan-out encrypts every byte once per target.
fn server_provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    let rank = |s: &rustls::SupportedCipherSuite| {
        let name = format!("{:?}", s.suite());
        let cipher = if name.contains("AES_128_GCM") {
            0
        } else if name.contains("AES_256_GCM") {
            1
        } else {
            2
        };
        (s.version() != &rustls::version::TLS13, cipher)
    };
    p.cipher_suites.sort_by_key(rank);
    Arc::new(p)
}

// -------------------------------------------------------------------------------------------------------------
// Server certificates

/// A listener's certificate files and the pair loaded from them at start.
#[derive(Clone)]
pub struct ServerTls {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    initial: Arc<CertifiedKey>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .finish_non_exhaustive()
    }
}

/// Why a certificate pair did not load; says which file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PairError {
    #[error("certificate file: {0}")]
    Cert(String),
    #[error("key file: {0}")]
    Key(String),
    #[error("the private key does not match the certificate: {0}")]
    Mismatch(String),
}

/// Reads and checks a certificate chain and its key.
pub fn load_pair(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, PairError> {
    let cert_pem =
        std::fs::read(cert_file).map_err(|e| PairError::Cert(format!("cannot read: {e}")))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PairError::Cert(format!("not PEM: {e}")))?;
    if chain.is_empty() {
        return Err(PairError::Cert("holds no CERTIFICATE block".into()));
    }
    let key_pem =
        std::fs::read(key_file).map_err(|e| PairError::Key(format!("cannot read: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| PairError::Key(format!("no usable PEM private key: {e}")))?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => PairError::Mismatch(e.to_string()),
        other => PairError::Key(other.to_string()),
    })
}

impl ServerTls {
    /// Validates `{prefix}TLS_CERT_FILE` / `{prefix}TLS_KEY_FILE`: both or neither; the pair must load.
    pub fn parse(
        prefix: &str,
        cert: Option<&str>,
        key: Option<&str>,
    ) -> Result<Option<Self>, EnvError> {
        let cert_var = format!("{prefix}TLS_CERT_FILE");
        let key_var = format!("{prefix}TLS_KEY_FILE");
        fn set(v: Option<&str>) -> Option<&str> {
            v.map(str::trim).filter(|s| !s.is_empty())
        }
        let (cert, key) = match (set(cert), set(key)) {
            (None, None) => return Ok(None),
            (Some(_), None) => {
                return Err(EnvError::Missing {
                    var: key_var,
                    reason: format!("{cert_var} is set; a certificate needs its private key"),
                })
            }
            (None, Some(_)) => {
                return Err(EnvError::Missing {
                    var: cert_var,
                    reason: format!("{key_var} is set; a private key needs its certificate"),
                })
            }
            (Some(c), Some(k)) => (PathBuf::from(c), PathBuf::from(k)),
        };
        let initial = load_pair(&cert, &key).map_err(|e| match e {
            PairError::Cert(why) => EnvError::invalid(&cert_var, &cert.display().to_string(), why),
            PairError::Key(why) => EnvError::invalid(&key_var, &key.display().to_string(), why),
            PairError::Mismatch(why) => EnvError::invalid(
                &key_var,
                &key.display().to_string(),
                format!("does not match the certificate in {cert_var}: {why}"),
            ),
        })?;
        Ok(Some(Self {
            cert_file: cert,
            key_file: key,
            initial: Arc::new(initial),
        }))
    }

    /// A rustls server configuration (ALPN `h2`, `http/1.1`) whose certificate follows the files.
    pub fn server_config(
        &self,
    ) -> Result<(Arc<rustls::ServerConfig>, Arc<ReloadingCert>), rustls::Error> {
        let resolver = Arc::new(ReloadingCert::new(
            self.cert_file.clone(),
            self.key_file.clone(),
            self.initial.clone(),
        ));
        let mut config = rustls::ServerConfig::builder_with_provider(server_provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        config.ignore_client_order = true;
        Ok((Arc::new(config), resolver))
    }
}

/// What identifies a version of a file: a rewrite, a rename over it or a symlink swap changes it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp(Option<(SystemTime, u64, u64)>);

fn stamp(path: &Path) -> Stamp {
    let Ok(m) = std::fs::metadata(path) else {
        return Stamp(None);
    };
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let ino = 0;
    Stamp(m.modified().ok().map(|t| (t, m.len(), ino)))
}

/// Serves the current certificate pair and swaps in a new one when its files change.
pub struct ReloadingCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    /// Stamps of the files as last tried (loaded or refused), so a bad pair is reported once.
    seen: std::sync::Mutex<(Stamp, Stamp)>,
}

impl fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .finish_non_exhaustive()
    }
}

/// What a reload check did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// The files did not change.
    Unchanged,
    /// A new pair is served from now on.
    Reloaded,
    /// The files changed but did not load; the previous pair is still served.
    Refused(PairError),
}

impl ReloadingCert {
    fn new(cert_file: PathBuf, key_file: PathBuf, initial: Arc<CertifiedKey>) -> Self {
        let seen = (stamp(&cert_file), stamp(&key_file));
        Self {
            cert_file,
            key_file,
            current: RwLock::new(initial),
            seen: std::sync::Mutex::new(seen),
        }
    }

    fn current(&self) -> Arc<CertifiedKey> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Re-reads the pair if either file changed since the last check (or always, with `force`).
    pub fn check(&self, force: bool) -> Reload {
        let now = (stamp(&self.cert_file), stamp(&self.key_file));
        {
            let mut seen = match self.seen.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            if !force && *seen == now {
                return Reload::Unchanged;
            }
            *seen = now;
        }
        match load_pair(&self.cert_file, &self.key_file) {
            Ok(pair) => {
                let mut cur = match self.current.write() {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
                *cur = Arc::new(pair);
                Reload::Reloaded
            }
            Err(e) => Reload::Refused(e),
        }
    }

    /// Checks the files every [`RELOAD_INTERVAL`] and on SIGHUP until `stop` fires; logs what happened.
    pub async fn watch(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(RELOAD_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            #[cfg(unix)]
            let hangup = async {
                match hup.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            #[cfg(not(unix))]
            let hangup = std::future::pending::<()>();
            let force = tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => false,
                _ = hangup => true,
            };
            let me = self.clone();
            let outcome = match tokio::task::spawn_blocking(move || me.check(force)).await {
                Ok(o) => o,
                Err(_) => continue,
            };
            match outcome {
                Reload::Unchanged => {}
                Reload::Reloaded => tracing::info!(
                    cert = %self.cert_file.display(),
                    key = %self.key_file.display(),
                    "TLS certificate reloaded; new connections get the new one"
                ),
                Reload::Refused(e) => tracing::warn!(
                    cert = %self.cert_file.display(),
                    key = %self.key_file.display(),
                    "TLS certificate files changed but do not load ({e}); still serving the previous certificate"
                ),
            }
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

// -------------------------------------------------------------------------------------------------------------
// Client side: the CA bundle

/// The CA certificates `https://` peers are verified against. `Debug` shows the file and the count.
#[derive(Clone)]
pub struct CaBundle {
    path: PathBuf,
    certs: Arc<Vec<reqwest::Certificate>>,
}

impl fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaBundle")
            .field("path", &self.path)
            .field("certificates", &self.certs.len())
            .finish()
    }
}

impl CaBundle {
    /// Reads a PEM bundle; it must hold at least one certificate.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let pem = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
        let der = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("not PEM: {e}"))?;
        if der.is_empty() {
            return Err("holds no CERTIFICATE block".into());
        }
        let certs = der
            .iter()
            .map(|d| reqwest::Certificate::from_der(d.as_ref()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("unusable certificate: {e}"))?;
        Ok(Self {
            path: path.to_path_buf(),
            certs: Arc::new(certs),
        })
    }

    /// The bundle named by `DISTRIBUTARY_TLS_CA_FILE` among `vars`, if set; errors name the variable.
    pub fn from_vars<'a>(
        vars: impl IntoIterator<Item = &'a (String, String)>,
    ) -> Result<Option<Self>, EnvError> {
        match vars.into_iter().find(|(k, _)| k == CA_FILE_VAR) {
            None => Ok(None),
            Some((_, v)) if v.trim().is_empty() => Ok(None),
            Some((_, v)) => Self::from_file(Path::new(v.trim()))
                .map(Some)
                .map_err(|e| EnvError::invalid(CA_FILE_VAR, v.trim(), e)),
        }
    }

    /// The bundle named by `DISTRIBUTARY_TLS_CA_FILE` in the process environment.
    pub fn from_env() -> Result<Option<Self>, EnvError> {
        let vars: Vec<(String, String)> =
            std::env::vars().filter(|(k, _)| k == CA_FILE_VAR).collect();
        Self::from_vars(&vars)
    }

    /// The file it came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many certificates it holds.
    pub fn len(&self) -> usize {
        self.certs.len()
    }

    /// Never true: a bundle holds at least one certificate.
    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }
}

/// Makes `builder` verify `https://` peers against `ca` (and only it) when there is one; without, the
/// client keeps reqwest's built-in roots.
pub fn trust(builder: reqwest::ClientBuilder, ca: Option<&CaBundle>) -> reqwest::ClientBuilder {
    match ca {
        None => builder,
        Some(ca) => ca
            .certs
            .iter()
            .fold(builder.tls_built_in_root_certs(false), |b, c| {
                b.add_root_certificate(c.clone())
            }),
    }
}

static CLIENT_CA: RwLock<Option<CaBundle>> = RwLock::new(None);

/// Makes `ca` the bundle of clients built with [`client_ca`] (a service's config installs the one it read).
/// `None` leaves an installed bundle in place.
pub fn install_client_ca(ca: Option<&CaBundle>) {
    if let Some(ca) = ca {
        let mut g = match CLIENT_CA.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        *g = Some(ca.clone());
    }
}

/// The installed client bundle, if any.
pub fn client_ca() -> Option<CaBundle> {
    match CLIENT_CA.read() {
        Ok(g) => g.clone(),
        Err(p) => p.into_inner().clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_prefer_aes_128_gcm() {
        let p = server_provider();
        let names: Vec<String> = p
            .cipher_suites
            .iter()
            .map(|s| format!("{:?}", s.suite()))
            .collect();
        assert_eq!(names[0], "TLS13_AES_128_GCM_SHA256", "{names:?}");
        assert_eq!(names.len(), provider().cipher_suites.len());
        let first_tls12 = p
            .cipher_suites
            .iter()
            .position(|s| s.version() != &rustls::version::TLS13)
            .unwrap_or(names.len());
        assert!(
            p.cipher_suites[first_tls12..]
                .iter()
                .all(|s| s.version() != &rustls::version::TLS13),
            "TLS 1.3 suites first: {names:?}"
        );
    }

    #[test]
    fn both_or_neither() {
        assert!(ServerTls::parse("X_", None, None)
            .expect("neither")
            .is_none());
        assert!(ServerTls::parse("X_", Some(" "), Some(""))
            .expect("blank")
            .is_none());
        let e = ServerTls::parse("X_", Some("/c.pem"), None).expect_err("cert only");
        assert!(e.to_string().contains("X_TLS_KEY_FILE"), "{e}");
        let e = ServerTls::parse("X_", None, Some("/k.pem")).expect_err("key only");
        assert!(e.to_string().contains("X_TLS_CERT_FILE"), "{e}");
        let e = ServerTls::parse("X_", Some("/nonexistent/c.pem"), Some("/nonexistent/k.pem"))
            .expect_err("missing files");
        assert!(e.to_string().contains("X_TLS_CERT_FILE"), "{e}");
    }

    #[test]
    fn not_pem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "hello").expect("write");
        let e = ServerTls::parse(
            "X_",
            Some(junk.to_str().expect("utf-8")),
            Some(junk.to_str().expect("utf-8")),
        )
        .expect_err("junk");
        assert!(e.to_string().contains("X_TLS_CERT_FILE"), "{e}");
        let vars = vec![(CA_FILE_VAR.to_owned(), junk.display().to_string())];
        let e = CaBundle::from_vars(&vars).expect_err("junk CA");
        assert!(e.to_string().contains(CA_FILE_VAR), "{e}");
        assert!(CaBundle::from_vars(&[]).expect("unset").is_none());
    }
}
