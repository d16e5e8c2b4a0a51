//! Connection-level limits of every listener: how long a client may take to send a request head, how long
//! an idle connection is kept, how many connections are open at once, and the HTTP/2 stream limits.
//!
//! Each service reads them from its own variables (`{PREFIX}HEADER_TIMEOUT_SECS`, ...) through
//! [`crate::server::ServerOptions::parse`]; [`crate::server::serve`] enforces them.

use std::time::Duration;

use crate::env::{self, EnvError};

/// Default time a client has to deliver a complete request head (TLS handshake included).
pub const DEFAULT_HEADER_TIMEOUT_SECS: u64 = 10;
/// Default time an idle connection (no request in flight, no byte of a next one) is kept open.
pub const DEFAULT_KEEP_ALIVE_SECS: u64 = 60;
/// Default cap on concurrent HTTP/2 streams per connection.
pub const DEFAULT_H2_MAX_STREAMS: u32 = 128;
/// Upper bound of the default connection cap.
pub const DEFAULT_MAX_CONNECTIONS_CAP: usize = 4096;
/// Lower bound of the default connection cap (a tiny fd limit still serves a few clients).
pub const DEFAULT_MAX_CONNECTIONS_FLOOR: usize = 64;
/// Largest request head accepted over HTTP/2 (HTTP/1's is bounded by hyper's read buffer).
pub const H2_MAX_HEADER_LIST_BYTES: u32 = 64 << 10;
/// How often an HTTP/2 connection is pinged to notice a peer that vanished without closing.
pub const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);

/// Limits enforced by the listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A new connection must deliver a complete request head (after its TLS handshake) within this time,
    /// and a keep-alive connection must complete a request head within this time of its first byte;
    /// otherwise it is closed. This is what closes half-sent-header ("slowloris") sockets.
    pub header_timeout: Duration,
    /// A connection with no request in flight, and no byte of a next request received, is closed after
    /// this long (HTTP/1 keep-alive and idle HTTP/2 connections alike; HTTP/2 gets a GOAWAY).
    pub keep_alive: Duration,
    /// Connections open at once. Beyond it, the oldest idle connection (no request in flight) is closed to
    /// make room; when every connection has a request in flight, the new one is refused at once (plain
    /// HTTP: a `503` with `Retry-After`; HTTPS: closed). Bounds the file descriptors clients can hold.
    pub max_connections: usize,
    /// Concurrent streams per HTTP/2 connection.
    pub h2_max_streams: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(DEFAULT_HEADER_TIMEOUT_SECS),
            keep_alive: Duration::from_secs(DEFAULT_KEEP_ALIVE_SECS),
            max_connections: default_max_connections(),
            h2_max_streams: DEFAULT_H2_MAX_STREAMS,
        }
    }
}

/// Raw values of the limit variables, as a service's config read them.
#[derive(Debug, Default, Clone, Copy)]
pub struct LimitVars<'a> {
    /// `{PREFIX}HEADER_TIMEOUT_SECS`
    pub header_timeout_secs: Option<&'a str>,
    /// `{PREFIX}KEEP_ALIVE_SECS`
    pub keep_alive_secs: Option<&'a str>,
    /// `{PREFIX}MAX_CONNECTIONS`
    pub max_connections: Option<&'a str>,
    /// `{PREFIX}H2_MAX_STREAMS`
    pub h2_max_streams: Option<&'a str>,
}

impl Limits {
    /// Validates the variables of the service whose variables start with `prefix` (e.g. `BROADCASTER_`);
    /// errors name the variable.
    pub fn parse(prefix: &str, vars: LimitVars<'_>) -> Result<Self, EnvError> {
        let secs = |name: &str, raw: Option<&str>, default: u64| {
            env::number(&format!("{prefix}{name}"), raw, default, 1, 86_400)
                .map(Duration::from_secs)
        };
        Ok(Self {
            header_timeout: secs(
                "HEADER_TIMEOUT_SECS",
                vars.header_timeout_secs,
                DEFAULT_HEADER_TIMEOUT_SECS,
            )?,
            keep_alive: secs(
                "KEEP_ALIVE_SECS",
                vars.keep_alive_secs,
                DEFAULT_KEEP_ALIVE_SECS,
            )?,
            max_connections: env::number(
                &format!("{prefix}MAX_CONNECTIONS"),
                vars.max_connections,
                default_max_connections(),
                1,
                10_000_000,
            )?,
            h2_max_streams: env::number(
                &format!("{prefix}H2_MAX_STREAMS"),
                vars.h2_max_streams,
                DEFAULT_H2_MAX_STREAMS,
                1,
                65_536,
            )?,
        })
    }
}

/// The default connection cap: half the process's open-file limit (the other half stays for outgoing
/// connections to targets and nodes, staged files and the metadata store), between
/// [`DEFAULT_MAX_CONNECTIONS_FLOOR`] and [`DEFAULT_MAX_CONNECTIONS_CAP`].
pub fn default_max_connections() -> usize {
    let soft = open_file_limit().unwrap_or(1024);
    usize::try_from(soft / 2)
        .unwrap_or(usize::MAX)
        .clamp(DEFAULT_MAX_CONNECTIONS_FLOOR, DEFAULT_MAX_CONNECTIONS_CAP)
}

/// The soft `RLIMIT_NOFILE` of this process, from `/proc/self/limits` (Linux); `None` elsewhere.
pub fn open_file_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_open_files(&text)
}

fn parse_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..].split_whitespace().next()?;
    match soft {
        "unlimited" => Some(u64::MAX),
        s => s.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_bounds() {
        let l = Limits::parse("X_", LimitVars::default()).expect("defaults");
        assert_eq!(l.header_timeout, Duration::from_secs(10));
        assert_eq!(l.keep_alive, Duration::from_secs(60));
        assert_eq!(l.h2_max_streams, 128);
        assert!((64..=4096).contains(&l.max_connections), "{l:?}");
        let l = Limits::parse(
            "X_",
            LimitVars {
                header_timeout_secs: Some("3"),
                keep_alive_secs: Some("5"),
                max_connections: Some("100"),
                h2_max_streams: Some("8"),
            },
        )
        .expect("values");
        assert_eq!(
            l,
            Limits {
                header_timeout: Duration::from_secs(3),
                keep_alive: Duration::from_secs(5),
                max_connections: 100,
                h2_max_streams: 8,
            }
        );
        for (vars, name) in [
            (
                LimitVars {
                    header_timeout_secs: Some("0"),
                    ..LimitVars::default()
                },
                "X_HEADER_TIMEOUT_SECS",
            ),
            (
                LimitVars {
                    keep_alive_secs: Some("soon"),
                    ..LimitVars::default()
                },
                "X_KEEP_ALIVE_SECS",
            ),
            (
                LimitVars {
                    max_connections: Some("0"),
                    ..LimitVars::default()
                },
                "X_MAX_CONNECTIONS",
            ),
            (
                LimitVars {
                    h2_max_streams: Some("-1"),
                    ..LimitVars::default()
                },
                "X_H2_MAX_STREAMS",
            ),
        ] {
            let e = Limits::parse("X_", vars).expect_err(name);
            assert!(e.to_string().contains(name), "{e}");
        }
    }

    #[test]
    fn open_files_line() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                    Max cpu time              unlimited            unlimited            seconds   \n\
                    Max open files            1024                 1048576              files     \n";
        assert_eq!(parse_open_files(text), Some(1024));
        assert_eq!(
            parse_open_files("Max open files  unlimited unlimited files"),
            Some(u64::MAX)
        );
        assert_eq!(parse_open_files("nothing here"), None);
    }
}
