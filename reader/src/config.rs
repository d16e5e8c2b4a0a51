//! `READER_*` environment variables: read raw with `envy`, then validated into [`Config`].

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use common::env::{self, EnvError};
use serde::Deserialize;

/// Default port.
pub const DEFAULT_HTTP_PORT: u16 = 8081;
/// Default write buffer: large enough that a write is one syscall per network chunk.
pub const DEFAULT_BUFFER_SIZE: usize = 64 * 1024;
/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "./data/reader";
/// Staged uploads nobody committed or aborted are removed after this long (a broadcaster died mid-upload).
pub const DEFAULT_STAGING_TTL_SECS: u64 = 3600;
/// How long in-flight requests may run after SIGTERM.
pub const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 30;
/// Where a dash reader finds the ring layout: the broadcaster's default, so a local setup needs nothing.
pub const DEFAULT_METADATA: &str = "sqlite:./data/meta.db";
/// Transcodes at once: ffmpeg already uses every core for one.
pub const DEFAULT_TRANSCODE_CONCURRENCY: usize = 1;
/// x264 preset: `veryfast` keeps a 2-core machine near real time for a 1080p ladder.
pub const DEFAULT_FFMPEG_PRESET: &str = "veryfast";
/// Video uploads that may wait (being received, probed, or queued) beside those transcoding; more get 503.
pub const DEFAULT_TRANSCODE_QUEUE: usize = 8;
/// Default `READER_LEASE_TTL_SECS`.
pub const DEFAULT_LEASE_TTL_SECS: u64 = 60;
/// Longest `READER_MAX_VIDEO_SECS` / `READER_TRANSCODE_TIMEOUT_SECS` accepted: a week.
pub const MAX_VIDEO_SECS_LIMIT: u64 = 7 * 24 * 3600;
/// Largest `READER_MAX_VIDEO_PIXELS` accepted: libx264's 16384×16384.
pub const MAX_VIDEO_PIXELS_LIMIT: u64 = 16_384 * 16_384;

/// Where a reader puts what it receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    /// Files on local disk, served back at `/files/{name}`.
    Disk,
    /// An S3 multipart upload per stream, completed on commit ([`S3Config`]).
    S3,
    /// Videos transcoded to MPEG-DASH onto the storage ring.
    Dash,
}

/// Validated reader configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to bind: loopback unless the cluster secret is configured.
    pub http_host: IpAddr,
    /// The cluster secret: every route but `/healthz` and `/metrics` needs requests signed with it.
    pub cluster_secret: Option<common::cluster::ClusterSecret>,
    /// Port to bind; 0 picks a free one.
    pub http_port: u16,
    /// Write buffer size in bytes.
    pub buffer_size: usize,
    /// The sink.
    pub sink: Sink,
    /// Holds `files/` (committed) and `staging/`.
    pub data_dir: PathBuf,
    /// Lifetime of an uncommitted staged upload.
    pub staging_ttl: Duration,
    /// Largest accepted upload in bytes; `None` means no limit.
    pub max_upload_bytes: Option<u64>,
    /// Grace period on shutdown.
    pub shutdown_grace: Duration,
    /// Metadata store holding the ring layout (dash sink).
    pub metadata: meta::MetaSpec,
    /// Concurrent transcodes (dash sink); more uploads wait.
    pub transcode_concurrency: usize,
    /// x264 preset (dash sink).
    pub ffmpeg_preset: String,
    /// Video uploads that may wait beside the running transcodes (dash sink); beyond, 503.
    pub transcode_queue: usize,
    /// Lease a committed transcode holds on its video (dash sink): renewed every third of it, lapsed this long
    /// after the reader stopped (then the sweep may fail a video nobody resumed).
    pub lease_ttl: Duration,
    /// What one video may cost (dash sink): `READER_MAX_VIDEO_SECS`, `READER_MAX_VIDEO_PIXELS`,
    /// `READER_TRANSCODE_TIMEOUT_SECS`.
    pub video_limits: crate::dash::Limits,
    /// The S3 target; present exactly when `sink` is [`Sink::S3`].
    pub s3: Option<S3Config>,
    /// The listener: TLS (`READER_TLS_CERT_FILE`, `READER_TLS_KEY_FILE`) and connection limits
    /// (`READER_HEADER_TIMEOUT_SECS`, `READER_KEEP_ALIVE_SECS`, `READER_MAX_CONNECTIONS`, `READER_H2_MAX_STREAMS`).
    pub server: common::server::ServerOptions,
    /// The CA bundle `https://` peers are verified against (`DISTRIBUTARY_TLS_CA_FILE`).
    pub tls_ca: Option<common::tls::CaBundle>,
}

/// Every variable this service reads; any other `READER_*` variable stops it at start (a typo must not
/// be silently ignored). Kept in sync with `RawConfig` by a unit test.
pub const VARS: &[&str] = &[
    "READER_HTTP_HOST",
    "READER_HTTP_PORT",
    "READER_BUFFER_SIZE",
    "READER_SINK",
    "READER_DATA_DIR",
    "READER_STAGING_TTL_SECS",
    "READER_MAX_UPLOAD_BYTES",
    "READER_SHUTDOWN_GRACE_SECS",
    "READER_METADATA",
    "READER_TRANSCODE_CONCURRENCY",
    "READER_FFMPEG_PRESET",
    "READER_TRANSCODE_QUEUE",
    "READER_LEASE_TTL_SECS",
    "READER_TRANSCODE_TIMEOUT_SECS",
    "READER_MAX_VIDEO_SECS",
    "READER_MAX_VIDEO_PIXELS",
    "READER_S3_ENDPOINT",
    "READER_S3_BUCKET",
    "READER_S3_REGION",
    "READER_S3_ACCESS_KEY_ID",
    "READER_S3_SECRET_ACCESS_KEY",
    "READER_S3_PREFIX",
    "READER_S3_PART_SIZE",
    "READER_S3_CONCURRENCY",
    "READER_TLS_CERT_FILE",
    "READER_TLS_KEY_FILE",
    "READER_HEADER_TIMEOUT_SECS",
    "READER_KEEP_ALIVE_SECS",
    "READER_MAX_CONNECTIONS",
    "READER_H2_MAX_STREAMS",
];

#[derive(Debug, Default, Deserialize)]
struct RawConfig {
    http_host: Option<String>,
    http_port: Option<String>,
    buffer_size: Option<String>,
    sink: Option<String>,
    data_dir: Option<String>,
    staging_ttl_secs: Option<String>,
    max_upload_bytes: Option<String>,
    shutdown_grace_secs: Option<String>,
    metadata: Option<String>,
    transcode_concurrency: Option<String>,
    ffmpeg_preset: Option<String>,
    transcode_queue: Option<String>,
    lease_ttl_secs: Option<String>,
    transcode_timeout_secs: Option<String>,
    max_video_secs: Option<String>,
    max_video_pixels: Option<String>,
    s3_endpoint: Option<String>,
    s3_bucket: Option<String>,
    s3_region: Option<String>,
    s3_access_key_id: Option<String>,
    s3_secret_access_key: Option<String>,
    s3_prefix: Option<String>,
    s3_part_size: Option<String>,
    s3_concurrency: Option<String>,
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
        let mut config = Self::try_from(env::load::<RawConfig>("READER_", VARS, vars)?)?;
        // The dash sink's ring client verifies `https://` storage nodes with the installed bundle.
        common::tls::install_client_ca(tls_ca.as_ref());
        config.tls_ca = tls_ca;
        common::cluster::require_secret_off_loopback(
            "READER_HTTP_HOST",
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
        let sink = match raw.sink.as_deref().map(str::trim) {
            None | Some("") | Some("disk") => Sink::Disk,
            Some("dash") => Sink::Dash,
            Some("s3") => Sink::S3,
            Some(s) => {
                return Err(EnvError::invalid(
                    "READER_SINK",
                    s,
                    "expected `disk`, `s3` or `dash`",
                ))
            }
        };
        let data_dir = match raw.data_dir.as_deref().map(str::trim) {
            None => PathBuf::from(DEFAULT_DATA_DIR),
            Some("") => {
                return Err(EnvError::invalid(
                    "READER_DATA_DIR",
                    "",
                    "must not be empty",
                ))
            }
            Some(s) => PathBuf::from(s),
        };
        let max: u64 = env::number(
            "READER_MAX_UPLOAD_BYTES",
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
            .map_err(|e| EnvError::invalid("READER_METADATA", metadata_raw, e))?;
        let presets = [
            "ultrafast",
            "superfast",
            "veryfast",
            "faster",
            "fast",
            "medium",
            "slow",
            "slower",
            "veryslow",
        ];
        let ffmpeg_preset = match raw.ffmpeg_preset.as_deref().map(str::trim) {
            None | Some("") => DEFAULT_FFMPEG_PRESET.to_owned(),
            Some(p) if presets.contains(&p) => p.to_owned(),
            Some(p) => {
                return Err(EnvError::invalid(
                    "READER_FFMPEG_PRESET",
                    p,
                    format_args!("expected one of {}", presets.join(", ")),
                ))
            }
        };
        let video_limits = crate::dash::Limits {
            max_duration: Duration::from_secs(env::number(
                "READER_MAX_VIDEO_SECS",
                raw.max_video_secs.as_deref(),
                crate::dash::DEFAULT_MAX_VIDEO_SECS,
                1,
                MAX_VIDEO_SECS_LIMIT,
            )?),
            max_pixels: video_pixels(raw.max_video_pixels.as_deref())?,
            timeout: transcode_timeout(raw.transcode_timeout_secs.as_deref())?,
        };
        let s3 = match sink {
            Sink::S3 => Some(S3Config::from_raw(&raw)?),
            Sink::Disk | Sink::Dash => None,
        };
        Ok(Self {
            cluster_secret: None,
            server: common::server::ServerOptions::parse(
                "READER_",
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
            s3,
            metadata,
            ffmpeg_preset,
            video_limits,
            transcode_queue: env::number(
                "READER_TRANSCODE_QUEUE",
                raw.transcode_queue.as_deref(),
                DEFAULT_TRANSCODE_QUEUE,
                0,
                1024,
            )?,
            lease_ttl: Duration::from_secs(env::number(
                "READER_LEASE_TTL_SECS",
                raw.lease_ttl_secs.as_deref(),
                DEFAULT_LEASE_TTL_SECS,
                3,
                86_400,
            )?),
            transcode_concurrency: env::number(
                "READER_TRANSCODE_CONCURRENCY",
                raw.transcode_concurrency.as_deref(),
                DEFAULT_TRANSCODE_CONCURRENCY,
                1,
                64,
            )?,
            http_host: env::ip(
                "READER_HTTP_HOST",
                raw.http_host.as_deref(),
                Ipv4Addr::LOCALHOST.into(),
            )?,
            http_port: env::number(
                "READER_HTTP_PORT",
                raw.http_port.as_deref(),
                DEFAULT_HTTP_PORT,
                0,
                u16::MAX,
            )?,
            buffer_size: env::number(
                "READER_BUFFER_SIZE",
                raw.buffer_size.as_deref(),
                DEFAULT_BUFFER_SIZE,
                4096,
                16 << 20,
            )?,
            sink,
            data_dir,
            staging_ttl: Duration::from_secs(env::number(
                "READER_STAGING_TTL_SECS",
                raw.staging_ttl_secs.as_deref(),
                DEFAULT_STAGING_TTL_SECS,
                1,
                u64::MAX / 2,
            )?),
            max_upload_bytes: (max > 0).then_some(max),
            shutdown_grace: Duration::from_secs(env::number(
                "READER_SHUTDOWN_GRACE_SECS",
                raw.shutdown_grace_secs.as_deref(),
                DEFAULT_SHUTDOWN_GRACE_SECS,
                0,
                3600,
            )?),
        })
    }
}

/// `READER_MAX_VIDEO_PIXELS`: a pixel count (`8294400`) or a frame size (`3840x2160`).
fn video_pixels(raw: Option<&str>) -> Result<u64, EnvError> {
    const VAR: &str = "READER_MAX_VIDEO_PIXELS";
    let Some(v) = raw.map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(crate::dash::DEFAULT_MAX_VIDEO_PIXELS);
    };
    let bad = || {
        EnvError::invalid(
            VAR,
            v,
            format_args!(
                "expected a pixel count or WIDTHxHEIGHT, from 64 to {MAX_VIDEO_PIXELS_LIMIT} pixels \
                 (e.g. 3840x2160)"
            ),
        )
    };
    let pixels = match v.split_once(['x', 'X', '×']) {
        Some((w, h)) => {
            let w: u64 = w.trim().parse().map_err(|_| bad())?;
            let h: u64 = h.trim().parse().map_err(|_| bad())?;
            w.checked_mul(h).ok_or_else(bad)?
        }
        None => v.parse().map_err(|_| bad())?,
    };
    if (64..=MAX_VIDEO_PIXELS_LIMIT).contains(&pixels) {
        Ok(pixels)
    } else {
        Err(bad())
    }
}

/// `READER_TRANSCODE_TIMEOUT_SECS`: `auto` (or unset) for 60 s + 4 × the video's duration, or fixed seconds.
fn transcode_timeout(raw: Option<&str>) -> Result<crate::dash::TranscodeTimeout, EnvError> {
    const VAR: &str = "READER_TRANSCODE_TIMEOUT_SECS";
    match raw.map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(crate::dash::TranscodeTimeout::Auto),
        Some(v) if v.eq_ignore_ascii_case("auto") => Ok(crate::dash::TranscodeTimeout::Auto),
        Some(v) => match v.parse::<u64>() {
            Ok(secs) if (1..=MAX_VIDEO_SECS_LIMIT).contains(&secs) => Ok(
                crate::dash::TranscodeTimeout::Fixed(Duration::from_secs(secs)),
            ),
            _ => Err(EnvError::invalid(
                VAR,
                v,
                format_args!(
                    "expected `auto` (60 s + 4 × the video's duration) or seconds from 1 to \
                     {MAX_VIDEO_SECS_LIMIT}"
                ),
            )),
        },
    }
}

/// Default S3 region (also what S3-compatible servers that ignore regions expect).
pub const DEFAULT_S3_REGION: &str = "us-east-1";
/// Default S3 part size: 8 MiB, the size most S3 clients use.
pub const DEFAULT_S3_PART_SIZE: usize = 8 << 20;
/// Smallest part S3 accepts (every part but the last).
pub const MIN_S3_PART_SIZE: usize = 5 << 20;
/// Largest part S3 accepts.
pub const MAX_S3_PART_SIZE: usize = 5 << 30;
/// Default number of parts uploaded at once per stream.
pub const DEFAULT_S3_CONCURRENCY: usize = 4;

/// Where an S3 reader puts its uploads (`READER_S3_*`).
#[derive(Clone)]
pub struct S3Config {
    /// `http(s)://host[:port]` of an S3-compatible server (path-style requests); `None` means AWS
    /// (virtual-hosted-style requests to `https://{bucket}.s3.{region}.amazonaws.com`).
    pub endpoint: Option<String>,
    /// The bucket; it must exist.
    pub bucket: String,
    /// Signing region.
    pub region: String,
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key (never printed).
    pub secret_access_key: String,
    /// Prepended to every upload's name to form its key, e.g. `archive/`.
    pub prefix: String,
    /// Size of the first parts of an upload; later parts of a large upload of unknown size grow.
    pub part_size: usize,
    /// Parts of one upload in flight at once.
    pub concurrency: usize,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("prefix", &self.prefix)
            .field("part_size", &self.part_size)
            .field("concurrency", &self.concurrency)
            .finish()
    }
}

impl S3Config {
    /// `endpoint` as given, or the AWS endpoint of `region`: for messages.
    pub fn endpoint_label(&self) -> String {
        match &self.endpoint {
            Some(e) => e.clone(),
            None => format!("https://s3.{}.amazonaws.com", self.region),
        }
    }

    fn from_raw(raw: &RawConfig) -> Result<Self, EnvError> {
        let set = |v: &Option<String>| {
            v.as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let endpoint = match set(&raw.s3_endpoint) {
            None => None,
            Some(e) => Some(s3_endpoint(&e)?),
        };
        let bucket = set(&raw.s3_bucket).ok_or_else(|| EnvError::Missing {
            var: "READER_S3_BUCKET".into(),
            reason: "READER_SINK=s3 needs the bucket to upload to".into(),
        })?;
        s3_bucket(&bucket)?;
        let region = set(&raw.s3_region).unwrap_or_else(|| DEFAULT_S3_REGION.to_owned());
        if region.len() > 64
            || !region
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(EnvError::invalid(
                "READER_S3_REGION",
                &region,
                "expected a region name such as us-east-1 (letters, digits, `-`, `_`)",
            ));
        }
        let key = |var: &str, v: &Option<String>, secret: bool| -> Result<String, EnvError> {
            let v = set(v).ok_or_else(|| EnvError::Missing {
                var: var.into(),
                reason: "READER_SINK=s3 signs every request with READER_S3_ACCESS_KEY_ID and READER_S3_SECRET_ACCESS_KEY".into(),
            })?;
            if v.len() > 1024 || !v.bytes().all(|b| b.is_ascii_graphic()) {
                let shown = if secret { "<redacted>" } else { v.as_str() };
                return Err(EnvError::invalid(
                    var,
                    shown,
                    "expected printable ASCII without spaces",
                ));
            }
            Ok(v)
        };
        let access_key_id = key("READER_S3_ACCESS_KEY_ID", &raw.s3_access_key_id, false)?;
        let secret_access_key = key(
            "READER_S3_SECRET_ACCESS_KEY",
            &raw.s3_secret_access_key,
            true,
        )?;
        // The prefix is used verbatim: surrounding spaces would be part of every key.
        let prefix = raw.s3_prefix.clone().unwrap_or_default();
        s3_prefix(&prefix)?;
        Ok(Self {
            endpoint,
            bucket,
            region,
            access_key_id,
            secret_access_key,
            prefix,
            part_size: env::number(
                "READER_S3_PART_SIZE",
                raw.s3_part_size.as_deref(),
                DEFAULT_S3_PART_SIZE,
                MIN_S3_PART_SIZE,
                MAX_S3_PART_SIZE,
            )?,
            concurrency: env::number(
                "READER_S3_CONCURRENCY",
                raw.s3_concurrency.as_deref(),
                DEFAULT_S3_CONCURRENCY,
                1,
                64,
            )?,
        })
    }
}

/// `http(s)://host[:port]`, nothing after it but an optional `/`; returned without the trailing `/`.
fn s3_endpoint(e: &str) -> Result<String, EnvError> {
    let bad = |why: &str| EnvError::invalid("READER_S3_ENDPOINT", e, why);
    let uri: axum::http::Uri = e
        .parse()
        .map_err(|_| bad("expected http://host:port or https://host"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(bad("expected an http:// or https:// URL")),
    }
    match uri.authority() {
        Some(a) if !a.host().is_empty() && !a.as_str().contains('@') => {}
        _ => return Err(bad("expected a host (and no user info)")),
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad(
            "expected no path or query: the bucket is READER_S3_BUCKET",
        ));
    }
    Ok(e.trim_end_matches('/').to_owned())
}

/// S3 bucket naming rules: 3-63 lowercase letters, digits, `.` and `-`, starting and ending with a
/// letter or digit.
fn s3_bucket(b: &str) -> Result<(), EnvError> {
    let edge = |c: Option<u8>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let ok = (3..=63).contains(&b.len())
        && b.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
        && edge(b.bytes().next())
        && edge(b.bytes().last())
        && !b.contains("..");
    if ok {
        Ok(())
    } else {
        Err(EnvError::invalid(
            "READER_S3_BUCKET",
            b,
            "expected a bucket name: 3-63 lowercase letters, digits, `.` and `-`",
        ))
    }
}

/// A key prefix: empty, or segments without control characters, `.`/`..` or empty segments; no
/// leading `/`. Leaves room for a 255-byte name within S3's 1024-byte key limit.
fn s3_prefix(p: &str) -> Result<(), EnvError> {
    let bad = |why: &str| Err(EnvError::invalid("READER_S3_PREFIX", p, why));
    if p.is_empty() {
        return Ok(());
    }
    if p.len() > 1024 - common::name::MAX_NAME_BYTES {
        return bad("too long: keys are limited to 1024 bytes");
    }
    if p.chars().any(char::is_control) {
        return bad("must not contain control characters");
    }
    if p.starts_with('/') {
        return bad("must not start with `/`");
    }
    // The last segment is completed by the name, so only the full segments before it are checked.
    let mut segments: Vec<&str> = p.split('/').collect();
    segments.pop();
    if segments.iter().any(|s| s.is_empty()) {
        return bad("must not contain an empty segment (`//`)");
    }
    if segments.iter().any(|s| *s == "." || *s == "..") {
        return bad("must not contain `.` or `..` segments");
    }
    Ok(())
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
        assert_eq!(c.http_port, DEFAULT_HTTP_PORT);
        assert_eq!(c.buffer_size, DEFAULT_BUFFER_SIZE);
        assert_eq!(c.sink, Sink::Disk);
        assert_eq!(c.max_upload_bytes, None);
        assert_eq!(c.transcode_queue, DEFAULT_TRANSCODE_QUEUE);
        assert_eq!(c.video_limits, crate::dash::Limits::default());
        assert_eq!(c.video_limits.max_duration, Duration::from_secs(4 * 3600));
        assert_eq!(c.video_limits.max_pixels, 3840 * 2160);
        assert_eq!(c.video_limits.timeout, crate::dash::TranscodeTimeout::Auto);
    }

    #[test]
    fn video_limits() {
        let c = cfg(&[
            ("READER_TRANSCODE_QUEUE", "0"),
            ("READER_TRANSCODE_TIMEOUT_SECS", "90"),
            ("READER_MAX_VIDEO_SECS", "600"),
            ("READER_MAX_VIDEO_PIXELS", "1920x1080"),
        ])
        .expect("limits");
        assert_eq!(c.transcode_queue, 0);
        assert_eq!(
            c.video_limits.timeout,
            crate::dash::TranscodeTimeout::Fixed(Duration::from_secs(90))
        );
        assert_eq!(c.video_limits.max_duration, Duration::from_secs(600));
        assert_eq!(c.video_limits.max_pixels, 1920 * 1080);
        let c = cfg(&[
            ("READER_TRANSCODE_TIMEOUT_SECS", "auto"),
            ("READER_MAX_VIDEO_PIXELS", "2073600"),
        ])
        .expect("auto");
        assert_eq!(c.video_limits.timeout, crate::dash::TranscodeTimeout::Auto);
        assert_eq!(c.video_limits.max_pixels, 1920 * 1080);
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (k, v) in [
            ("READER_HTTP_PORT", "70000"),
            ("READER_BUFFER_SIZE", "abc"),
            ("READER_SINK", "tape"),
            ("READER_METADATA", "nosql:x"),
            ("READER_FFMPEG_PRESET", "turbo"),
            ("READER_TRANSCODE_CONCURRENCY", "0"),
            ("READER_HTTP_HOST", "not-an-ip"),
            ("READER_DATA_DIR", ""),
            ("READER_TRANSCODE_QUEUE", "-1"),
            ("READER_TRANSCODE_QUEUE", "5000"),
            ("READER_TRANSCODE_TIMEOUT_SECS", "0"),
            ("READER_TRANSCODE_TIMEOUT_SECS", "soon"),
            ("READER_TRANSCODE_TIMEOUT_SECS", "99999999"),
            ("READER_MAX_VIDEO_SECS", "0"),
            ("READER_MAX_VIDEO_SECS", "4h"),
            ("READER_MAX_VIDEO_PIXELS", "0"),
            ("READER_MAX_VIDEO_PIXELS", "4kx2k"),
            ("READER_MAX_VIDEO_PIXELS", "20000x20000"),
        ] {
            let e = cfg(&[(k, v)]).expect_err(k);
            assert!(e.to_string().contains(k), "{e}");
        }
    }

    #[test]
    fn vars_match_raw_config() {
        let mut fields: Vec<String> = env::struct_fields::<RawConfig>()
            .iter()
            .map(|f| format!("READER_{}", f.to_ascii_uppercase()))
            .collect();
        fields.sort();
        let mut vars = VARS.to_vec();
        vars.sort_unstable();
        assert_eq!(fields, vars, "VARS must list exactly the RawConfig fields");
        let e = cfg(&[("READER_SNK", "disk")]).expect_err("typo");
        assert!(e.to_string().contains("did you mean READER_SINK?"), "{e}");
    }

    const S3_OK: [(&str, &str); 4] = [
        ("READER_SINK", "s3"),
        ("READER_S3_BUCKET", "archive"),
        ("READER_S3_ACCESS_KEY_ID", "AKID"),
        ("READER_S3_SECRET_ACCESS_KEY", "s3cr3t/key+x"),
    ];

    fn s3_cfg(extra: &[(&str, &str)]) -> Result<Config, EnvError> {
        let mut pairs: Vec<(&str, &str)> = S3_OK.to_vec();
        pairs.retain(|(k, _)| !extra.iter().any(|(e, _)| e == k));
        pairs.extend_from_slice(extra);
        cfg(&pairs)
    }

    #[test]
    fn s3_defaults() {
        let c = s3_cfg(&[]).expect("s3 config");
        assert_eq!(c.sink, Sink::S3);
        let s3 = c.s3.expect("s3 section");
        assert_eq!(s3.endpoint, None);
        assert_eq!(s3.region, DEFAULT_S3_REGION);
        assert_eq!(s3.prefix, "");
        assert_eq!(s3.part_size, DEFAULT_S3_PART_SIZE);
        assert_eq!(s3.concurrency, DEFAULT_S3_CONCURRENCY);
        assert_eq!(s3.endpoint_label(), "https://s3.us-east-1.amazonaws.com");
        assert!(
            !format!("{s3:?}").contains("s3cr3t"),
            "the secret is never printed"
        );
        let c = s3_cfg(&[
            ("READER_S3_ENDPOINT", "http://127.0.0.1:9000/"),
            ("READER_S3_REGION", "garage"),
            ("READER_S3_PREFIX", "archive/2024-"),
            ("READER_S3_PART_SIZE", "5242880"),
            ("READER_S3_CONCURRENCY", "2"),
        ])
        .expect("custom s3 config");
        let s3 = c.s3.expect("s3 section");
        assert_eq!(s3.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(s3.prefix, "archive/2024-");
        assert_eq!((s3.part_size, s3.concurrency), (5 << 20, 2));
        // Other sinks ignore the S3 variables.
        assert!(cfg(&[("READER_S3_PART_SIZE", "1")])
            .expect("disk")
            .s3
            .is_none());
    }

    #[test]
    fn s3_bad_values_name_the_variable() {
        for (k, v) in [
            ("READER_S3_BUCKET", ""),
            ("READER_S3_BUCKET", "No_Such"),
            ("READER_S3_BUCKET", "a/b"),
            ("READER_S3_BUCKET", "ab"),
            ("READER_S3_ACCESS_KEY_ID", ""),
            ("READER_S3_ACCESS_KEY_ID", "has space"),
            ("READER_S3_SECRET_ACCESS_KEY", ""),
            ("READER_S3_ENDPOINT", "127.0.0.1:9000"),
            ("READER_S3_ENDPOINT", "ftp://host"),
            ("READER_S3_ENDPOINT", "http://host/bucket"),
            ("READER_S3_ENDPOINT", "http://host?x=1"),
            ("READER_S3_ENDPOINT", "http://"),
            ("READER_S3_REGION", "us east"),
            ("READER_S3_PREFIX", "/abs/"),
            ("READER_S3_PREFIX", "a//b/"),
            ("READER_S3_PREFIX", "a/../b/"),
            ("READER_S3_PREFIX", "tab\there/"),
            ("READER_S3_PART_SIZE", "1048576"),
            ("READER_S3_PART_SIZE", "8MiB"),
            ("READER_S3_PART_SIZE", "6000000000"),
            ("READER_S3_CONCURRENCY", "0"),
        ] {
            let e = s3_cfg(&[(k, v)]).expect_err(&format!("{k}={v:?}"));
            assert!(e.to_string().contains(k), "{k}={v:?}: {e}");
        }
        let e = s3_cfg(&[("READER_S3_SECRET_ACCESS_KEY", "bad secret")]).expect_err("space");
        assert!(!e.to_string().contains("bad secret"), "{e}");
    }
}
