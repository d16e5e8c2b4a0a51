//! `BROADCASTER_METADATA` parsing: which backend, and where.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::MetaError;

/// The etcd client port used when an endpoint URL names none.
pub const DEFAULT_ETCD_PORT: u16 = 2379;

/// A validated metadata specification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaSpec {
    /// An embedded SQLite database file (`sqlite:PATH`).
    Sqlite {
        /// The database file; its directory is created on open.
        path: PathBuf,
    },
    /// An etcd cluster (`etcd:http://h:p,http://h:p,...`).
    Etcd {
        /// Client URLs, normalised to `http://host:port`; the client fails over between them.
        endpoints: Vec<String>,
    },
}

impl fmt::Display for MetaSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetaSpec::Sqlite { path } => write!(f, "sqlite:{}", path.display()),
            MetaSpec::Etcd { endpoints } => write!(f, "etcd:{}", endpoints.join(",")),
        }
    }
}

impl FromStr for MetaSpec {
    type Err = MetaError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_spec(s)
    }
}

/// Parses `sqlite:PATH` or `etcd:http://host:port,http://host:port,...`.
///
/// The error text says what is wrong with which part, so a bad `BROADCASTER_METADATA` stops the
/// broadcaster with a message a person can act on.
pub fn parse_spec(s: &str) -> Result<MetaSpec, MetaError> {
    let s = s.trim();
    let Some((scheme, rest)) = s.split_once(':') else {
        return Err(MetaError::Config(format!(
            "{s:?} is not a metadata specification: expected sqlite:PATH or etcd:http://host:port,..."
        )));
    };
    match scheme {
        "sqlite" => {
            if rest.is_empty() {
                return Err(MetaError::Config(
                    "sqlite: needs a database file path, as in sqlite:./data/meta.db".into(),
                ));
            }
            if rest.contains('\0') {
                return Err(MetaError::Config("sqlite path contains a NUL byte".into()));
            }
            Ok(MetaSpec::Sqlite { path: PathBuf::from(rest) })
        }
        "etcd" => {
            if rest.trim().is_empty() {
                return Err(MetaError::Config(
                    "etcd: needs at least one endpoint, as in etcd:http://127.0.0.1:2379".into(),
                ));
            }
            let endpoints = rest
                .split(',')
                .map(|e| parse_endpoint(e.trim()))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(MetaSpec::Etcd { endpoints })
        }
        other => Err(MetaError::Config(format!(
            "unknown metadata scheme {other:?} in {s:?}: expected sqlite:PATH or etcd:http://host:port,..."
        ))),
    }
}

/// Validates one etcd client URL and normalises it to `http://host:port`.
fn parse_endpoint(url: &str) -> Result<String, MetaError> {
    let bad = |why: &str| MetaError::Config(format!("bad etcd endpoint {url:?}: {why}"));
    if url.is_empty() {
        return Err(bad("empty (a stray comma?)"));
    }
    let Some(authority) = url.strip_prefix("http://") else {
        if url.starts_with("https://") {
            return Err(bad(
                "https is not supported (this build speaks plain http to etcd)",
            ));
        }
        return Err(bad("expected http://host:port"));
    };
    // A trailing slash is harmless; any other path means the user pasted something else.
    let authority = authority.strip_suffix('/').unwrap_or(authority);
    if authority.contains(['/', '?', '#', '@']) {
        return Err(bad(
            "expected only http://host:port, without a path, query or user",
        ));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let Some((host, after)) = v6.split_once(']') else {
            return Err(bad("unclosed '[' in an IPv6 address"));
        };
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| bad("expected ':' after ']'"))?,
            ),
        };
        (format!("[{host}]"), port)
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    if host.is_empty() || host == "[]" {
        return Err(bad("missing host"));
    }
    if !host.starts_with('[')
        && !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
    {
        return Err(bad("host has characters a host name cannot have"));
    }
    let port = match port {
        None => DEFAULT_ETCD_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(0) | Err(_) => return Err(bad("the port must be a number from 1 to 65535")),
            Ok(p) => p,
        },
    };
    Ok(format!("http://{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err_text(s: &str) -> String {
        match parse_spec(s) {
            Err(MetaError::Config(msg)) => msg,
            other => panic!("{s:?}: expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn sqlite_paths() {
        assert_eq!(
            parse_spec("sqlite:./data/meta.db").expect("valid"),
            MetaSpec::Sqlite {
                path: "./data/meta.db".into()
            }
        );
        assert_eq!(
            parse_spec("sqlite:/var/lib/x:y.db").expect("valid"),
            MetaSpec::Sqlite {
                path: "/var/lib/x:y.db".into()
            }
        );
        assert!(err_text("sqlite:").contains("path"));
    }

    #[test]
    fn etcd_endpoints() {
        let spec =
            parse_spec("etcd:http://127.0.0.1:2379, http://h2:32379/,http://[::1]:4000,http://h4")
                .expect("valid");
        assert_eq!(
            spec,
            MetaSpec::Etcd {
                endpoints: vec![
                    "http://127.0.0.1:2379".into(),
                    "http://h2:32379".into(),
                    "http://[::1]:4000".into(),
                    "http://h4:2379".into(),
                ]
            }
        );
        assert_eq!(
            spec.to_string(),
            "etcd:http://127.0.0.1:2379,http://h2:32379,http://[::1]:4000,http://h4:2379"
        );
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        assert!(err_text("postgres://x").contains("unknown metadata scheme"));
        assert!(err_text("meta.db").contains("not a metadata specification"));
        assert!(err_text("etcd:").contains("at least one endpoint"));
        assert!(err_text("etcd:127.0.0.1:2379").contains("expected http://host:port"));
        assert!(err_text("etcd:https://h:1").contains("https"));
        assert!(err_text("etcd:http://h:1,").contains("stray comma"));
        assert!(err_text("etcd:http://h:0").contains("port"));
        assert!(err_text("etcd:http://h:99999").contains("port"));
        assert!(err_text("etcd:http://h:x").contains("port"));
        assert!(err_text("etcd:http://:2379").contains("missing host"));
        assert!(err_text("etcd:http://h:1/v3").contains("path"));
        assert!(err_text("etcd:http://h h:1").contains("host"));
    }
}
