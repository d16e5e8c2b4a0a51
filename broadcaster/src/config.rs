//! `BROADCASTER_*` environment variables: read raw with `envy`, then validated into [`Config`].

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use common::env::{self, EnvError};
use serde::Deserialize;

use crate::target::Target;

/// Default port.
pub const DEFAULT_HTTP_PORT: u16 = 8080;
/// Default chunk size: with the queue depth it bounds memory per upload.
pub const DEFAULT_BUFFER_SIZE: usize = 64 * 1024;
/// Default chunks queued per target. Chunks are shared, so this bounds memory once, not per target.
pub const DEFAULT_QUEUE_DEPTH: usize = 16;
/// A target whose queue stays full this long is detached.
pub const DEFAULT_STALL_TIMEOUT_MS: u64 = 10_000;
/// TCP connect timeout to a target.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 3_000;
/// After the body ended, how long a target may take to fsync and report its staged copy, or to commit.
pub const DEFAULT_STAGE_TIMEOUT_MS: u64 = 3_600_000;
/// Incomplete resumable uploads live a day untouched (DESIGN §7).
pub const DEFAULT_RESUMABLE_TTL_SECS: u64 = 86_400;
/// A checkpoint every 64 MiB: a restart costs a client at most that much, and checkpoints stay rare.
pub const DEFAULT_RESUMABLE_CHECKPOINT_BYTES: u64 = 64 << 20;
/// How long in-flight uploads may run after SIGTERM.
pub const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 30;
/// Embedded metadata by default.
pub const DEFAULT_METADATA: &str = "sqlite:./data/meta.db";
/// Copies of each blob on distinct storage nodes.
pub const DEFAULT_REPLICATION: usize = 2;
/// Raw uploads on the ring are cut into chunks of this size: large enough for throughput, small enough that
/// a chunk in flight per replica stays cheap.
pub const DEFAULT_RING_CHUNK_SIZE: usize = 4 << 20;
/// Per-request timeout to storage nodes.
pub const DEFAULT_NODE_TIMEOUT_MS: u64 = 30_000;
/// How often the housekeeping sweep runs.
pub const DEFAULT_GC_INTERVAL_SECS: u64 = 300;
/// Nothing younger than this is swept: uploads in flight have had ample time to take their lease.
pub const DEFAULT_ORPHAN_GRACE_SECS: u64 = 3600;
/// How often a background repair (with a scrub of every node) runs; 0 turns it off.
pub const DEFAULT_REPAIR_INTERVAL_SECS: u64 = 86_400;
/// A live upload's lease lapses this long after its broadcaster stopped renewing it.
pub const DEFAULT_LEASE_TTL_SECS: u64 = 60;
/// Uploads in progress at once; each holds about BUFFER_SIZE × QUEUE_DEPTH of memory and a connection per
/// target.
pub const DEFAULT_MAX_UPLOADS: usize = 64;
/// An upload whose client sends nothing for this long is cut.
pub const DEFAULT_BODY_IDLE_TIMEOUT_SECS: u64 = 30;
/// Holds `package.json` and `node_modules/` with the dash.js player the watch page loads.
pub const DEFAULT_WEB_DIR: &str = "./web";

/// Validated broadcaster configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to bind.
    pub http_host: IpAddr,
    /// Port to bind; 0 picks a free one.
    pub http_port: u16,
    /// Where uploads go.
    pub targets: Vec<Target>,
    /// Chunk size in bytes.
    pub buffer_size: usize,
    /// Chunks queued per target.
    pub queue_depth: usize,
    /// A target that accepts no chunk for this long is detached.
    pub stall_timeout: Duration,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Time a target may take to report its staged copy after the body ended, and to commit.
    pub stage_timeout: Duration,
    /// Targets that must commit for an upload to succeed.
    pub min_success: usize,
    /// Largest accepted upload; `None` means no limit.
    pub max_upload_bytes: Option<u64>,
    /// Grace period on shutdown.
    pub shutdown_grace: Duration,
    /// Where metadata (ring layout, files on the ring, videos) lives.
    pub metadata: meta::MetaSpec,
    /// Ring members to seed the layout with when the metadata store has none.
    pub storage_nodes: Vec<String>,
    /// Copies of each blob.
    pub replication: usize,
    /// Virtual nodes per ring member.
    pub vnodes: u32,
    /// Chunk size of raw uploads stored on the ring.
    pub ring_chunk_size: usize,
    /// Byte budget of the cache of checked windows that reads share (0: none).
    pub read_cache_bytes: usize,
    /// Per-request timeout to storage nodes.
    pub node_timeout: Duration,
    /// Web assets directory (dash.js under `node_modules/`).
    pub web_dir: std::path::PathBuf,
    /// Period of the housekeeping sweep (orphan blobs, videos stuck in `processing`).
    pub gc_interval: Duration,
    /// Nothing younger than this is swept.
    pub orphan_grace: Duration,
    /// Period of the background repair; zero: never.
    pub repair_interval: Duration,
    /// How long a live upload's lease holds without renewal.
    pub lease_ttl: Duration,
    /// How long an incomplete resumable upload lives untouched (`BROADCASTER_RESUMABLE_TTL_SECS`).
    pub resumable_ttl: Duration,
    /// A long append to a resumable upload is made durable (a checkpoint) every this many bytes
    /// (`BROADCASTER_RESUMABLE_CHECKPOINT_BYTES`): what a broadcaster crash can cost the client.
    pub resumable_checkpoint: u64,
    /// The cluster secret (`DISTRIBUTARY_CLUSTER_SECRET_FILE`): signs requests to targets and storage
    /// nodes, and storage nodes prove their identity with it.
    pub cluster_secret: Option<common::cluster::ClusterSecret>,
    /// The bootstrap admin token (`BROADCASTER_ADMIN_TOKEN_FILE`).
    pub admin_token: Option<AdminToken>,
    /// Whether requests need a token.
    pub auth: AuthMode,
    /// Read routes need no token (`BROADCASTER_PUBLIC_READ`).
    pub public_read: bool,
    /// Uploads in progress at once; more are refused with 503 and `Retry-After`.
    pub max_uploads: usize,
    /// An upload body that sends nothing for this long is cut and aborted everywhere.
    pub body_idle_timeout: Duration,
    /// The listener: TLS (`BROADCASTER_TLS_CERT_FILE`, `BROADCASTER_TLS_KEY_FILE`) and connection limits
    /// (`BROADCASTER_HEADER_TIMEOUT_SECS`, `BROADCASTER_KEEP_ALIVE_SECS`, `BROADCASTER_MAX_CONNECTIONS`, `BROADCASTER_H2_MAX_STREAMS`).
    pub server: common::server::ServerOptions,
    /// The CA bundle `https://` peers are verified against (`DISTRIBUTARY_TLS_CA_FILE`).
    pub tls_ca: Option<common::tls::CaBundle>,
}

/// Every variable this service reads; any other `BROADCASTER_*` variable stops it at start (a typo must not
/// be silently ignored). Kept in sync with `RawConfig` by a unit test.
pub const VARS: &[&str] = &[
    "BROADCASTER_HTTP_HOST",
    "BROADCASTER_HTTP_PORT",
    "BROADCASTER_HOST_LIST",
    "BROADCASTER_BUFFER_SIZE",
    "BROADCASTER_QUEUE_DEPTH",
    "BROADCASTER_STALL_TIMEOUT_MS",
    "BROADCASTER_CONNECT_TIMEOUT_MS",
    "BROADCASTER_STAGE_TIMEOUT_MS",
    "BROADCASTER_MIN_SUCCESS",
    "BROADCASTER_MAX_UPLOAD_BYTES",
    "BROADCASTER_SHUTDOWN_GRACE_SECS",
    "BROADCASTER_METADATA",
    "BROADCASTER_STORAGE_NODES",
    "BROADCASTER_REPLICATION",
    "BROADCASTER_VNODES",
    "BROADCASTER_RING_CHUNK_SIZE",
    "BROADCASTER_READ_CACHE_BYTES",
    "BROADCASTER_NODE_TIMEOUT_MS",
    "BROADCASTER_WEB_DIR",
    "BROADCASTER_GC_INTERVAL_SECS",
    "BROADCASTER_ORPHAN_GRACE_SECS",
    "BROADCASTER_REPAIR_INTERVAL_SECS",
    "BROADCASTER_LEASE_TTL_SECS",
    "BROADCASTER_RESUMABLE_TTL_SECS",
    "BROADCASTER_RESUMABLE_CHECKPOINT_BYTES",
    "BROADCASTER_ADMIN_TOKEN_FILE",
    "BROADCASTER_AUTH",
    "BROADCASTER_PUBLIC_READ",
    "BROADCASTER_MAX_UPLOADS",
    "BROADCASTER_BODY_IDLE_TIMEOUT_SECS",
    "BROADCASTER_TLS_CERT_FILE",
    "BROADCASTER_TLS_KEY_FILE",
    "BROADCASTER_HEADER_TIMEOUT_SECS",
    "BROADCASTER_KEEP_ALIVE_SECS",
    "BROADCASTER_MAX_CONNECTIONS",
    "BROADCASTER_H2_MAX_STREAMS",
];

#[derive(Debug, Default, Deserialize)]
struct RawConfig {
    http_host: Option<String>,
    http_port: Option<String>,
    host_list: Option<String>,
    buffer_size: Option<String>,
    queue_depth: Option<String>,
    stall_timeout_ms: Option<String>,
    connect_timeout_ms: Option<String>,
    stage_timeout_ms: Option<String>,
    min_success: Option<String>,
    max_upload_bytes: Option<String>,
    shutdown_grace_secs: Option<String>,
    metadata: Option<String>,
    storage_nodes: Option<String>,
    replication: Option<String>,
    vnodes: Option<String>,
    ring_chunk_size: Option<String>,
    read_cache_bytes: Option<String>,
    node_timeout_ms: Option<String>,
    web_dir: Option<String>,
    gc_interval_secs: Option<String>,
    orphan_grace_secs: Option<String>,
    repair_interval_secs: Option<String>,
    lease_ttl_secs: Option<String>,
    resumable_ttl_secs: Option<String>,
    resumable_checkpoint_bytes: Option<String>,
    admin_token_file: Option<String>,
    auth: Option<String>,
    public_read: Option<String>,
    max_uploads: Option<String>,
    body_idle_timeout_secs: Option<String>,
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
        let mut config = Self::try_from(env::load::<RawConfig>("BROADCASTER_", VARS, vars)?)?;
        config.cluster_secret = secret;
        // The storage ring's node client is built far from this config: it takes the installed bundle.
        common::tls::install_client_ca(tls_ca.as_ref());
        config.tls_ca = tls_ca;
        Ok(config)
    }
}

/// Shortest accepted bootstrap admin token.
pub const MIN_ADMIN_TOKEN_LEN: usize = 32;

/// Whether requests need a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Every route but `/healthz` (and the read routes with `BROADCASTER_PUBLIC_READ`) needs a token.
    Tokens,
    /// No authentication at all (only safe on a loopback bind, where only loopback Host names are served).
    None,
}

fn read_admin_token(raw: Option<&str>) -> Result<Option<AdminToken>, EnvError> {
    const VAR: &str = "BROADCASTER_ADMIN_TOKEN_FILE";
    let Some(path) = raw.map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| EnvError::invalid(VAR, path, format!("cannot read: {e}")))?;
    let token = text.trim();
    if token.chars().count() < MIN_ADMIN_TOKEN_LEN {
        return Err(EnvError::invalid(
            VAR,
            path,
            format!("the token must be at least {MIN_ADMIN_TOKEN_LEN} characters"),
        ));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(EnvError::invalid(
            VAR,
            path,
            "the token must be printable ASCII without spaces",
        ));
    }
    Ok(Some(AdminToken(token.to_owned())))
}

/// The bootstrap admin token; `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(pub String);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

fn auth_mode(raw: Option<&str>, admin: bool, host: IpAddr) -> Result<AuthMode, EnvError> {
    const VAR: &str = "BROADCASTER_AUTH";
    match raw.map(str::trim).filter(|s| !s.is_empty()) {
        Some("tokens") if admin => Ok(AuthMode::Tokens),
        Some("tokens") => Err(EnvError::Missing {
            var: "BROADCASTER_ADMIN_TOKEN_FILE".into(),
            reason: "BROADCASTER_AUTH=tokens needs a bootstrap admin token".into(),
        }),
        Some("none") => Ok(AuthMode::None),
        Some(other) => Err(EnvError::invalid(VAR, other, "expected `tokens` or `none`")),
        None if admin => Ok(AuthMode::Tokens),
        None if host.is_loopback() => Ok(AuthMode::None),
        None => Err(EnvError::Missing {
            var: "BROADCASTER_ADMIN_TOKEN_FILE".into(),
            reason: format!(
                "BROADCASTER_HTTP_HOST={host} is not a loopback address: set \
                 BROADCASTER_ADMIN_TOKEN_FILE (tokens), or BROADCASTER_AUTH=none to serve without \
                 authentication on purpose"
            ),
        }),
    }
}

fn millis(var: &str, raw: Option<&str>, default: u64) -> Result<Duration, EnvError> {
    Ok(Duration::from_millis(env::number(
        var, raw, default, 1, 86_400_000,
    )?))
}

impl TryFrom<RawConfig> for Config {
    type Error = EnvError;

    fn try_from(raw: RawConfig) -> Result<Self, EnvError> {
        let targets =
            Target::parse_list(raw.host_list.as_deref().unwrap_or_default()).map_err(|e| {
                EnvError::invalid(
                    "BROADCASTER_HOST_LIST",
                    raw.host_list.as_deref().unwrap_or(""),
                    e,
                )
            })?;
        let n = targets.len();
        let min_success = match raw
            .min_success
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            None => n,
            Some(s) if n == 0 => {
                return Err(EnvError::invalid(
                    "BROADCASTER_MIN_SUCCESS",
                    s,
                    "BROADCASTER_HOST_LIST names no targets",
                ))
            }
            Some(s) => env::number("BROADCASTER_MIN_SUCCESS", Some(s), n, 1, n)?,
        };
        let max: u64 = env::number(
            "BROADCASTER_MAX_UPLOAD_BYTES",
            raw.max_upload_bytes.as_deref(),
            0,
            0,
            u64::MAX,
        )?;
        let metadata_raw = raw
            .metadata
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .unwrap_or(DEFAULT_METADATA);
        let metadata = meta::parse_spec(metadata_raw)
            .map_err(|e| EnvError::invalid("BROADCASTER_METADATA", metadata_raw, e))?;
        let nodes_raw = raw.storage_nodes.as_deref().unwrap_or_default();
        let mut storage_nodes: Vec<String> = Vec::new();
        for n in nodes_raw
            .split(';')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            hashring::validate_node(n)
                .map_err(|e| EnvError::invalid("BROADCASTER_STORAGE_NODES", nodes_raw, e))?;
            if storage_nodes.iter().any(|x| x == n) {
                return Err(EnvError::invalid(
                    "BROADCASTER_STORAGE_NODES",
                    nodes_raw,
                    format_args!("{n} is listed twice"),
                ));
            }
            storage_nodes.push(n.to_owned());
        }
        let http_host = env::ip(
            "BROADCASTER_HTTP_HOST",
            raw.http_host.as_deref(),
            Ipv4Addr::LOCALHOST.into(),
        )?;
        let admin_token = read_admin_token(raw.admin_token_file.as_deref())?;
        let auth = auth_mode(raw.auth.as_deref(), admin_token.is_some(), http_host)?;
        let public_read = match raw.public_read.as_deref().map(str::trim) {
            None | Some("") | Some("false") | Some("0") => false,
            Some("true") | Some("1") => true,
            Some(other) => {
                return Err(EnvError::invalid(
                    "BROADCASTER_PUBLIC_READ",
                    other,
                    "expected `true` or `false`",
                ))
            }
        };
        let secs = |var: &str, raw: Option<&str>, default: u64, min: u64| {
            env::number(var, raw, default, min, 10 * 365 * 86_400).map(Duration::from_secs)
        };
        Ok(Self {
            gc_interval: secs(
                "BROADCASTER_GC_INTERVAL_SECS",
                raw.gc_interval_secs.as_deref(),
                DEFAULT_GC_INTERVAL_SECS,
                1,
            )?,
            orphan_grace: secs(
                "BROADCASTER_ORPHAN_GRACE_SECS",
                raw.orphan_grace_secs.as_deref(),
                DEFAULT_ORPHAN_GRACE_SECS,
                0,
            )?,
            repair_interval: secs(
                "BROADCASTER_REPAIR_INTERVAL_SECS",
                raw.repair_interval_secs.as_deref(),
                DEFAULT_REPAIR_INTERVAL_SECS,
                0,
            )?,
            lease_ttl: secs(
                "BROADCASTER_LEASE_TTL_SECS",
                raw.lease_ttl_secs.as_deref(),
                DEFAULT_LEASE_TTL_SECS,
                3,
            )?,
            resumable_ttl: secs(
                "BROADCASTER_RESUMABLE_TTL_SECS",
                raw.resumable_ttl_secs.as_deref(),
                DEFAULT_RESUMABLE_TTL_SECS,
                1,
            )?,
            resumable_checkpoint: env::number(
                "BROADCASTER_RESUMABLE_CHECKPOINT_BYTES",
                raw.resumable_checkpoint_bytes.as_deref(),
                DEFAULT_RESUMABLE_CHECKPOINT_BYTES,
                1 << 16,
                1 << 40,
            )?,
            max_uploads: env::number(
                "BROADCASTER_MAX_UPLOADS",
                raw.max_uploads.as_deref(),
                DEFAULT_MAX_UPLOADS,
                1,
                100_000,
            )?,
            body_idle_timeout: secs(
                "BROADCASTER_BODY_IDLE_TIMEOUT_SECS",
                raw.body_idle_timeout_secs.as_deref(),
                DEFAULT_BODY_IDLE_TIMEOUT_SECS,
                1,
            )?,
            cluster_secret: None,
            server: common::server::ServerOptions::parse(
                "BROADCASTER_",
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
            admin_token,
            auth,
            public_read,
            web_dir: raw
                .web_dir
                .as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .unwrap_or(DEFAULT_WEB_DIR)
                .into(),
            metadata,
            storage_nodes,
            replication: env::number(
                "BROADCASTER_REPLICATION",
                raw.replication.as_deref(),
                DEFAULT_REPLICATION,
                1,
                16,
            )?,
            vnodes: env::number(
                "BROADCASTER_VNODES",
                raw.vnodes.as_deref(),
                hashring::DEFAULT_VNODES,
                1,
                4096,
            )?,
            ring_chunk_size: env::number(
                "BROADCASTER_RING_CHUNK_SIZE",
                raw.ring_chunk_size.as_deref(),
                DEFAULT_RING_CHUNK_SIZE,
                4096,
                64 << 20,
            )?,
            read_cache_bytes: env::number(
                "BROADCASTER_READ_CACHE_BYTES",
                raw.read_cache_bytes.as_deref(),
                crate::ring::read::DEFAULT_WINDOW_CACHE_BYTES,
                0,
                16 << 30,
            )?,
            node_timeout: millis(
                "BROADCASTER_NODE_TIMEOUT_MS",
                raw.node_timeout_ms.as_deref(),
                DEFAULT_NODE_TIMEOUT_MS,
            )?,
            http_host,
            http_port: env::number(
                "BROADCASTER_HTTP_PORT",
                raw.http_port.as_deref(),
                DEFAULT_HTTP_PORT,
                0,
                u16::MAX,
            )?,
            targets,
            buffer_size: env::number(
                "BROADCASTER_BUFFER_SIZE",
                raw.buffer_size.as_deref(),
                DEFAULT_BUFFER_SIZE,
                1024,
                16 << 20,
            )?,
            queue_depth: env::number(
                "BROADCASTER_QUEUE_DEPTH",
                raw.queue_depth.as_deref(),
                DEFAULT_QUEUE_DEPTH,
                1,
                1024,
            )?,
            stall_timeout: millis(
                "BROADCASTER_STALL_TIMEOUT_MS",
                raw.stall_timeout_ms.as_deref(),
                DEFAULT_STALL_TIMEOUT_MS,
            )?,
            connect_timeout: millis(
                "BROADCASTER_CONNECT_TIMEOUT_MS",
                raw.connect_timeout_ms.as_deref(),
                DEFAULT_CONNECT_TIMEOUT_MS,
            )?,
            stage_timeout: millis(
                "BROADCASTER_STAGE_TIMEOUT_MS",
                raw.stage_timeout_ms.as_deref(),
                DEFAULT_STAGE_TIMEOUT_MS,
            )?,
            min_success,
            max_upload_bytes: (max > 0).then_some(max),
            shutdown_grace: std::time::Duration::from_secs(env::number(
                "BROADCASTER_SHUTDOWN_GRACE_SECS",
                raw.shutdown_grace_secs.as_deref(),
                DEFAULT_SHUTDOWN_GRACE_SECS,
                0,
                3600,
            )?),
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
    fn defaults_and_quorum() {
        let c = cfg(&[(
            "BROADCASTER_HOST_LIST",
            "127.0.0.1:1;127.0.0.1:2;http://h:3/",
        )])
        .expect("ok");
        assert_eq!(c.targets.len(), 3);
        assert_eq!(c.min_success, 3, "default quorum is every target");
        assert_eq!(c.buffer_size, DEFAULT_BUFFER_SIZE);
        let c = cfg(&[
            ("BROADCASTER_HOST_LIST", "127.0.0.1:1;127.0.0.1:2"),
            ("BROADCASTER_MIN_SUCCESS", "1"),
        ])
        .expect("ok");
        assert_eq!(c.min_success, 1);
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (k, v) in [
            ("BROADCASTER_HTTP_PORT", "-1"),
            ("BROADCASTER_BUFFER_SIZE", "abc"),
            ("BROADCASTER_BUFFER_SIZE", "10"),
            ("BROADCASTER_QUEUE_DEPTH", "0"),
            ("BROADCASTER_HOST_LIST", "no-port"),
            ("BROADCASTER_HOST_LIST", "ftp://x:1"),
            ("BROADCASTER_MIN_SUCCESS", "5"),
            ("BROADCASTER_STALL_TIMEOUT_MS", "soon"),
            ("BROADCASTER_METADATA", "mysql:x"),
            ("BROADCASTER_STORAGE_NODES", "a:1;a:1"),
            ("BROADCASTER_STORAGE_NODES", "nope"),
            ("BROADCASTER_REPLICATION", "0"),
        ] {
            let mut pairs = vec![(k, v)];
            if k != "BROADCASTER_HOST_LIST" {
                pairs.push(("BROADCASTER_HOST_LIST", "127.0.0.1:1"));
            }
            let e = cfg(&pairs).expect_err(k);
            assert!(e.to_string().contains(k), "{e}");
        }
    }

    #[test]
    fn vars_match_raw_config() {
        let mut fields: Vec<String> = env::struct_fields::<RawConfig>()
            .iter()
            .map(|f| format!("BROADCASTER_{}", f.to_ascii_uppercase()))
            .collect();
        fields.sort();
        let mut vars = VARS.to_vec();
        vars.sort_unstable();
        assert_eq!(fields, vars, "VARS must list exactly the RawConfig fields");
        let e = cfg(&[("BROADCASTER_HTTP_PROT", "1")]).expect_err("typo");
        assert!(
            e.to_string()
                .contains("did you mean BROADCASTER_HTTP_PORT?"),
            "{e}"
        );
    }
}
