//! Broadcast targets as named in `BROADCASTER_HOST_LIST`.

use std::fmt;

/// Characters escaped when a name becomes one path segment of a target URL.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// One destination of the fan-out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// As the operator wrote it; used in summaries and logs.
    pub label: String,
    /// Base URL without a trailing slash, e.g. `http://127.0.0.1:8081`; empty for the ring.
    pub base: String,
    /// Whether this is the storage ring rather than a stream-protocol peer.
    pub is_ring: bool,
}

/// Why a host list was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error("`{0}` is not host:port or an http(s):// URL")]
    Malformed(String),
    #[error("`{0}` is listed twice")]
    Duplicate(String),
}

impl Target {
    /// Parses `host:port;host:port;…` (URLs allowed); empty entries are ignored.
    pub fn parse_list(list: &str) -> Result<Vec<Target>, TargetError> {
        let mut out: Vec<Target> = Vec::new();
        for item in list.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            let t = Self::parse(item)?;
            if out
                .iter()
                .any(|o| o.base == t.base && o.is_ring == t.is_ring)
            {
                return Err(TargetError::Duplicate(item.to_owned()));
            }
            out.push(t);
        }
        Ok(out)
    }

    fn parse(item: &str) -> Result<Target, TargetError> {
        if item.eq_ignore_ascii_case("ring") {
            return Ok(Target {
                label: "ring".to_owned(),
                base: String::new(),
                is_ring: true,
            });
        }
        let malformed = || TargetError::Malformed(item.to_owned());
        let url = if item.contains("://") {
            item.to_owned()
        } else {
            // A bare host:port must have a port: a silent default would hide a typo.
            let (host, port) = item.rsplit_once(':').ok_or_else(malformed)?;
            if host.is_empty() || port.parse::<u16>().is_err() {
                return Err(malformed());
            }
            format!("http://{item}")
        };
        let parsed = reqwest::Url::parse(&url).map_err(|_| malformed())?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(malformed());
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(malformed());
        }
        let base = parsed.as_str().trim_end_matches('/').to_owned();
        // Credentials in the URL are used (reqwest sends them as Basic auth) but never shown: the label
        // is what summaries, metrics and logs print.
        let label = if parsed.username().is_empty() && parsed.password().is_none() {
            item.to_owned()
        } else {
            let mut shown = parsed.clone();
            let _ = shown.set_username("");
            let _ = shown.set_password(None);
            shown.as_str().trim_end_matches('/').to_owned()
        };
        Ok(Target {
            label,
            base,
            is_ring: false,
        })
    }

    /// URL of the stage request for upload `id` of `name`.
    pub fn stage_url(&self, id: &str, name: &str) -> String {
        format!(
            "{}{}/{id}/{}",
            self.base,
            common::protocol::UPLOADS_PATH,
            percent_encoding::utf8_percent_encode(name, SEGMENT)
        )
    }

    /// URL of the commit request for upload `id`.
    pub fn commit_url(&self, id: &str) -> String {
        format!(
            "{}{}/{id}/commit",
            self.base,
            common::protocol::UPLOADS_PATH
        )
    }

    /// URL of the abort request for upload `id`.
    pub fn abort_url(&self, id: &str) -> String {
        format!("{}{}/{id}", self.base, common::protocol::UPLOADS_PATH)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists() {
        let t = Target::parse_list(" 127.0.0.1:8081 ; https://r.example:9443/base/ ;").expect("ok");
        assert_eq!(t[0].base, "http://127.0.0.1:8081");
        assert_eq!(t[1].base, "https://r.example:9443/base");
        assert_eq!(t[0].label, "127.0.0.1:8081");
        assert!(Target::parse_list("").expect("empty").is_empty());
        assert!(Target::parse_list("localhost").is_err());
        assert!(Target::parse_list("h:99999").is_err());
        assert!(Target::parse_list("a:1;a:1").is_err());
        assert!(Target::parse_list("ring;h:1").expect("ring")[0].is_ring);
        assert!(Target::parse_list("ring;RING").is_err());
    }

    #[test]
    fn credentials_are_never_in_the_label() {
        let t = &Target::parse_list("http://user:hunter2@r.example:8081").expect("ok")[0];
        assert_eq!(t.label, "http://r.example:8081");
        assert!(!format!("{t}").contains("hunter2"));
        assert!(t.base.contains("hunter2"), "still used to authenticate");
    }

    #[test]
    fn urls_escape_names() {
        let t = &Target::parse_list("h:1").expect("ok")[0];
        assert_eq!(
            t.stage_url("ab", "a b/c%.iso"),
            "http://h:1/v1/uploads/ab/a%20b%2Fc%25.iso"
        );
        assert_eq!(t.commit_url("ab"), "http://h:1/v1/uploads/ab/commit");
    }
}
