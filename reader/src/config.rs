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

/// Where a reader puts what it receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    /// Files on local disk, served back at `/files/{name}`.
    Disk,
    /// Videos transcoded to MPEG-DASH onto the storage ring.
    Dash,
}

/// Validated reader configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to bind.
    pub http_host: IpAddr,
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
}

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
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, EnvError> {
        Self::from_vars(std::env::vars())
    }

    /// Reads configuration from `(name, value)` pairs, as if they were the environment.
    pub fn from_vars<I: IntoIterator<Item = (String, String)>>(vars: I) -> Result<Self, EnvError> {
        let raw: RawConfig = envy::prefixed("READER_").from_iter(vars)?;
        Self::try_from(raw)
    }
}

impl TryFrom<RawConfig> for Config {
    type Error = EnvError;

    fn try_from(raw: RawConfig) -> Result<Self, EnvError> {
        let sink = match raw.sink.as_deref().map(str::trim) {
            None | Some("") | Some("disk") => Sink::Disk,
            Some("dash") => Sink::Dash,
            Some(s @ "s3") => {
                return Err(EnvError::invalid(
                    "READER_SINK",
                    s,
                    "this build has the `disk` and `dash` sinks",
                ))
            }
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
        Ok(Self {
            metadata,
            ffmpeg_preset,
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
                Ipv4Addr::UNSPECIFIED.into(),
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
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (k, v) in [
            ("READER_HTTP_PORT", "70000"),
            ("READER_BUFFER_SIZE", "abc"),
            ("READER_SINK", "tape"),
            ("READER_SINK", "s3"),
            ("READER_METADATA", "nosql:x"),
            ("READER_FFMPEG_PRESET", "turbo"),
            ("READER_TRANSCODE_CONCURRENCY", "0"),
            ("READER_HTTP_HOST", "not-an-ip"),
            ("READER_DATA_DIR", ""),
        ] {
            let e = cfg(&[(k, v)]).expect_err(k);
            assert!(e.to_string().contains(k), "{e}");
        }
    }
}
