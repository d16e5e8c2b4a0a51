//! `STORAGE_NODE_*` environment variables: read raw with `envy`, then validated into [`Config`].

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use common::env::{self, EnvError};
use serde::Deserialize;

/// Default port.
pub const DEFAULT_HTTP_PORT: u16 = 8090;
/// Default write buffer: one syscall per network chunk.
pub const DEFAULT_BUFFER_SIZE: usize = 64 * 1024;
/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "./data/storage";
/// Staged uploads nobody committed or aborted are removed after this long (a broadcaster died mid-upload).
pub const DEFAULT_STAGING_TTL_SECS: u64 = 3600;
/// How long in-flight requests may run after SIGTERM.
pub const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 30;

/// Validated storage node configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to bind.
    pub http_host: IpAddr,
    /// Port to bind; 0 picks a free one.
    pub http_port: u16,
    /// Holds `blobs/` (published) and `staging/` (being written).
    pub data_dir: PathBuf,
    /// Write buffer size in bytes.
    pub buffer_size: usize,
    /// Largest accepted blob payload in bytes; `None` means no limit.
    pub max_blob_bytes: Option<u64>,
    /// Grace period on shutdown.
    pub shutdown_grace: Duration,
    /// Lifetime of a staged stream-protocol upload that was neither committed nor aborted.
    pub staging_ttl: Duration,
    /// The cluster secret (`DISTRIBUTARY_CLUSTER_SECRET_FILE`): the node proves its identity with it.
    pub cluster_secret: Option<common::cluster::ClusterSecret>,
    /// The listener: TLS (`STORAGE_NODE_TLS_CERT_FILE`, `STORAGE_NODE_TLS_KEY_FILE`) and connection limits
    /// (`STORAGE_NODE_HEADER_TIMEOUT_SECS`, `STORAGE_NODE_KEEP_ALIVE_SECS`, `STORAGE_NODE_MAX_CONNECTIONS`, `STORAGE_NODE_H2_MAX_STREAMS`).
    pub server: common::server::ServerOptions,
    /// The CA bundle `https://` peers are verified against (`DISTRIBUTARY_TLS_CA_FILE`).
    pub tls_ca: Option<common::tls::CaBundle>,
}

/// Every variable this service reads; any other `STORAGE_NODE_*` variable stops it at start (a typo must not
/// be silently ignored). Kept in sync with `RawConfig` by a unit test.
pub const VARS: &[&str] = &[
    "STORAGE_NODE_HTTP_HOST",
    "STORAGE_NODE_HTTP_PORT",
    "STORAGE_NODE_DATA_DIR",
    "STORAGE_NODE_BUFFER_SIZE",
    "STORAGE_NODE_MAX_BLOB_BYTES",
    "STORAGE_NODE_SHUTDOWN_GRACE_SECS",
    "STORAGE_NODE_STAGING_TTL_SECS",
    "STORAGE_NODE_TLS_CERT_FILE",
    "STORAGE_NODE_TLS_KEY_FILE",
    "STORAGE_NODE_HEADER_TIMEOUT_SECS",
    "STORAGE_NODE_KEEP_ALIVE_SECS",
    "STORAGE_NODE_MAX_CONNECTIONS",
    "STORAGE_NODE_H2_MAX_STREAMS",
];

#[derive(Debug, Default, Deserialize)]
struct RawConfig {
    http_host: Option<String>,
    http_port: Option<String>,
    data_dir: Option<String>,
    buffer_size: Option<String>,
    max_blob_bytes: Option<String>,
    shutdown_grace_secs: Option<String>,
    staging_ttl_secs: Option<String>,
    tls_cert_file: Option<String>,
    tls_key_file: Option<String>,
    header_timeout_secs: Option<String>,
    keep_alive_secs: Option<String>,
    max_connections: Option<String>,
    h2_max_streams: Option<String>,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, EnvError> {
        Self::from_vars(std::env::vars())
    }

    /// Reads configuration from `(name, value)` pairs, as if they were the environment.
    pub fn from_vars<I: IntoIterator<Item = (String, String)>>(vars: I) -> Result<Self, EnvError> {
        let vars: Vec<(String, String)> = vars.into_iter().collect();
        let secret = common::cluster::ClusterSecret::from_vars(&vars)?;
        let tls_ca = common::tls::CaBundle::from_vars(&vars)?;
        let mut config = Self::try_from(env::load::<RawConfig>("STORAGE_NODE_", VARS, vars)?)?;
        common::tls::install_client_ca(tls_ca.as_ref());
        config.tls_ca = tls_ca;
        common::cluster::require_secret_off_loopback(
            "STORAGE_NODE_HTTP_HOST",
            config.http_host,
            &secret,
        )?;
        config.cluster_secret = secret;
        Ok(config)
    }
}

impl TryFrom<RawConfig> for Config {
    type Error = EnvError;

    fn try_from(raw: RawConfig) -> Result<Self, EnvError> {
        let data_dir = match raw.data_dir.as_deref().map(str::trim) {
            None => PathBuf::from(DEFAULT_DATA_DIR),
            Some("") => {
                return Err(EnvError::invalid(
                    "STORAGE_NODE_DATA_DIR",
                    "",
                    "must not be empty",
                ))
            }
            Some(s) => PathBuf::from(s),
        };
        let max: u64 = env::number(
            "STORAGE_NODE_MAX_BLOB_BYTES",
            raw.max_blob_bytes.as_deref(),
            0,
            0,
            u64::MAX,
        )?;
        Ok(Self {
            http_host: env::ip(
                "STORAGE_NODE_HTTP_HOST",
                raw.http_host.as_deref(),
                Ipv4Addr::LOCALHOST.into(),
            )?,
            http_port: env::number(
                "STORAGE_NODE_HTTP_PORT",
                raw.http_port.as_deref(),
                DEFAULT_HTTP_PORT,
                0,
                u16::MAX,
            )?,
            data_dir,
            buffer_size: env::number(
                "STORAGE_NODE_BUFFER_SIZE",
                raw.buffer_size.as_deref(),
                DEFAULT_BUFFER_SIZE,
                4096,
                16 << 20,
            )?,
            max_blob_bytes: (max > 0).then_some(max),
            shutdown_grace: Duration::from_secs(env::number(
                "STORAGE_NODE_SHUTDOWN_GRACE_SECS",
                raw.shutdown_grace_secs.as_deref(),
                DEFAULT_SHUTDOWN_GRACE_SECS,
                0,
                3600,
            )?),
            staging_ttl: Duration::from_secs(env::number(
                "STORAGE_NODE_STAGING_TTL_SECS",
                raw.staging_ttl_secs.as_deref(),
                DEFAULT_STAGING_TTL_SECS,
                1,
                u64::MAX / 2,
            )?),
            cluster_secret: None,
            server: common::server::ServerOptions::parse(
                "STORAGE_NODE_",
                common::server::ServerVars {
                    tls_cert_file: raw.tls_cert_file.as_deref(),
                    tls_key_file: raw.tls_key_file.as_deref(),
                    header_timeout_secs: raw.header_timeout_secs.as_deref(),
                    keep_alive_secs: raw.keep_alive_secs.as_deref(),
                    max_connections: raw.max_connections.as_deref(),
                    h2_max_streams: raw.h2_max_streams.as_deref(),
                },
            )?,
            tls_ca: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> Result<Config, EnvError> {
        Config::from_vars(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn defaults() {
        let c = cfg(&[]).expect("defaults");
        assert_eq!(c.http_host, IpAddr::from(Ipv4Addr::LOCALHOST));
        assert_eq!(c.http_port, DEFAULT_HTTP_PORT);
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(c.buffer_size, DEFAULT_BUFFER_SIZE);
        assert_eq!(c.max_blob_bytes, None);
        assert_eq!(
            c.shutdown_grace,
            Duration::from_secs(DEFAULT_SHUTDOWN_GRACE_SECS)
        );
        assert_eq!(c.staging_ttl, Duration::from_secs(DEFAULT_STAGING_TTL_SECS));
    }

    #[test]
    fn values_are_read() {
        let c = cfg(&[
            ("STORAGE_NODE_HTTP_HOST", "127.0.0.1"),
            ("STORAGE_NODE_HTTP_PORT", "0"),
            ("STORAGE_NODE_DATA_DIR", "/tmp/x"),
            ("STORAGE_NODE_BUFFER_SIZE", "8192"),
            ("STORAGE_NODE_MAX_BLOB_BYTES", "1000"),
            ("STORAGE_NODE_SHUTDOWN_GRACE_SECS", "2"),
            ("STORAGE_NODE_STAGING_TTL_SECS", "5"),
            ("READER_HTTP_PORT", "not ours"),
        ])
        .expect("config");
        assert_eq!(c.http_host, IpAddr::from(Ipv4Addr::LOCALHOST));
        assert_eq!(c.http_port, 0);
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.buffer_size, 8192);
        assert_eq!(c.max_blob_bytes, Some(1000));
        assert_eq!(c.shutdown_grace, Duration::from_secs(2));
        assert_eq!(c.staging_ttl, Duration::from_secs(5));
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (k, v) in [
            ("STORAGE_NODE_HTTP_HOST", "not-an-ip"),
            ("STORAGE_NODE_HTTP_PORT", "70000"),
            ("STORAGE_NODE_HTTP_PORT", "-1"),
            ("STORAGE_NODE_DATA_DIR", ""),
            ("STORAGE_NODE_BUFFER_SIZE", "abc"),
            ("STORAGE_NODE_BUFFER_SIZE", "1"),
            ("STORAGE_NODE_MAX_BLOB_BYTES", "-5"),
            ("STORAGE_NODE_SHUTDOWN_GRACE_SECS", "forever"),
            ("STORAGE_NODE_STAGING_TTL_SECS", "0"),
        ] {
            let e = cfg(&[(k, v)]).expect_err(k);
            assert!(e.to_string().contains(k), "{e}");
        }
    }

    #[test]
    fn vars_match_raw_config() {
        let mut fields: Vec<String> = env::struct_fields::<RawConfig>()
            .iter()
            .map(|f| format!("STORAGE_NODE_{}", f.to_ascii_uppercase()))
            .collect();
        fields.sort();
        let mut vars = VARS.to_vec();
        vars.sort_unstable();
        assert_eq!(fields, vars, "VARS must list exactly the RawConfig fields");
        let e = cfg(&[("STORAGE_NODE_HTTP_PROT", "1")]).expect_err("typo");
        assert!(
            e.to_string()
                .contains("did you mean STORAGE_NODE_HTTP_PORT?"),
            "{e}"
        );
    }
}
