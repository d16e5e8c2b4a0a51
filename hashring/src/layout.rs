//! Ring membership: which nodes, how many points each, how many copies of each key.

use serde::{Deserialize, Serialize};

/// Points per node on the circle. With 256, over 10,000 DASH-like keys on three nodes, the largest node holds
/// 1.02× the mean share with one copy and 1.08× with two (the target is ≤ 1.15×; 64 points gave 1.18×), and a
/// fourth node takes 0.9× its ideal quarter. A ring of 4 nodes is 1024 points, cheap to build.
pub const DEFAULT_VNODES: u32 = 256;

/// Copies of each key on distinct nodes: one node can be lost without losing data.
pub const DEFAULT_REPLICATION: usize = 2;

/// Largest accepted number of points per node: beyond this, building a ring gets slow for nothing.
pub const MAX_VNODES: u32 = 65_536;

/// Why a layout or a node address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    #[error("bad node address {node:?}: {reason} (expected host:port)")]
    BadNode { node: String, reason: String },
    #[error("node {0} is already in the ring")]
    Duplicate(String),
    #[error("node {0} is not in the ring")]
    Unknown(String),
    #[error("node {0} is the last node of the ring and cannot be removed")]
    LastNode(String),
    #[error("invalid ring parameter: {0}")]
    BadParameter(String),
}

/// The ring's membership at one version. Stored as JSON in the metadata store; every change bumps `version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// Increases by one with every membership change, so readers can tell which layout is newer.
    pub version: u64,
    /// Member nodes, `host:port`, in the order they joined (the order does not affect placement).
    pub nodes: Vec<String>,
    /// Points per node on the circle.
    pub vnodes: u32,
    /// Copies of each key on distinct nodes (fewer when the ring has fewer nodes).
    pub replication: usize,
}

impl Layout {
    /// A first layout (version 1) with `nodes`, which may be empty (no ring yet).
    pub fn new(nodes: Vec<String>, vnodes: u32, replication: usize) -> Result<Self, RingError> {
        let layout = Self {
            version: 1,
            nodes,
            vnodes,
            replication,
        };
        layout.validate()?;
        Ok(layout)
    }

    /// Checks every node address, that no node appears twice, and the parameters' ranges.
    pub fn validate(&self) -> Result<(), RingError> {
        if self.vnodes == 0 || self.vnodes > MAX_VNODES {
            return Err(RingError::BadParameter(format!(
                "vnodes must be between 1 and {MAX_VNODES}, got {}",
                self.vnodes
            )));
        }
        if self.replication == 0 {
            return Err(RingError::BadParameter(
                "replication must be at least 1".into(),
            ));
        }
        for (i, node) in self.nodes.iter().enumerate() {
            validate_node(node)?;
            if self.nodes[..i].contains(node) {
                return Err(RingError::Duplicate(node.clone()));
            }
        }
        Ok(())
    }

    /// Whether `node` is a member.
    pub fn contains(&self, node: &str) -> bool {
        self.nodes.iter().any(|n| n == node)
    }

    /// Copies each key actually gets: the replication factor, capped by the number of nodes.
    pub fn effective_replication(&self) -> usize {
        self.replication.min(self.nodes.len())
    }

    /// The next version with `node` added.
    pub fn with_node(&self, node: &str) -> Result<Self, RingError> {
        validate_node(node)?;
        if self.contains(node) {
            return Err(RingError::Duplicate(node.to_owned()));
        }
        let mut next = self.clone();
        next.version += 1;
        next.nodes.push(node.to_owned());
        Ok(next)
    }

    /// The next version with `node` removed; refuses to leave the ring without nodes, which would lose every
    /// blob.
    pub fn without_node(&self, node: &str) -> Result<Self, RingError> {
        let Some(pos) = self.nodes.iter().position(|n| n == node) else {
            return Err(RingError::Unknown(node.to_owned()));
        };
        if self.nodes.len() == 1 {
            return Err(RingError::LastNode(node.to_owned()));
        }
        let mut next = self.clone();
        next.version += 1;
        next.nodes.remove(pos);
        Ok(next)
    }
}

/// Accepts `host:port` (a node serving plain HTTP) or `https://host:port` (a node serving HTTPS): a
/// non-empty host without spaces or slashes and a port that parses as a `u16`, nothing after the port.
/// An IPv6 host must be bracketed (`[::1]:8090`) so that the port is unambiguous.
pub fn validate_node(node: &str) -> Result<(), RingError> {
    let bad = |reason: &str| RingError::BadNode {
        node: node.to_owned(),
        reason: reason.to_owned(),
    };
    let addr = node.strip_prefix("https://").unwrap_or(node);
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(bad("no port"));
    };
    if host.is_empty() {
        return Err(bad("empty host"));
    }
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("port is not a number"));
    }
    if port.parse::<u16>().is_err() {
        return Err(bad("port is out of range"));
    }
    if addr
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '/' | '\\' | '?' | '#' | '@'))
    {
        return Err(bad("contains a space, slash or URL delimiter"));
    }
    let bracketed = host.starts_with('[') && host.ends_with(']');
    if host.contains(':') && !bracketed {
        return Err(bad("an IPv6 host must be written in brackets"));
    }
    if bracketed && host.len() == 2 {
        return Err(bad("empty host"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn node_addresses() {
        for ok in [
            "127.0.0.1:8090",
            "storage-1:1",
            "localhost:65535",
            "[::1]:8090",
            "h:0",
            "https://storage-1:8443",
            "https://127.0.0.1:1",
            "https://[::1]:8090",
        ] {
            assert_eq!(validate_node(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "host",
            ":8090",
            "host:",
            "host:65536",
            "host:-1",
            "host:+1",
            "host:80a",
            "my host:80",
            "a/b:80",
            "http://h:80",
            "::1:80",
            "[]:80",
            "h:80 ",
            "user@h:80",
            "https://",
            "https://h",
            "https://:80",
            "https://h:80/",
            "https://h:80/x",
            "https://user@h:80",
            "HTTPS://h:80",
            "https://https://h:80",
        ] {
            assert!(
                matches!(validate_node(bad), Err(RingError::BadNode { .. })),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn add_and_remove_bump_the_version() {
        let l = Layout::new(nodes(&["a:1", "b:2"]), 16, 2).expect("layout");
        assert_eq!(l.version, 1);
        let l2 = l.with_node("c:3").expect("add");
        assert_eq!(l2.version, 2);
        assert_eq!(l2.nodes, nodes(&["a:1", "b:2", "c:3"]));
        assert_eq!(l2.with_node("c:3"), Err(RingError::Duplicate("c:3".into())));
        assert!(matches!(l2.with_node("c"), Err(RingError::BadNode { .. })));
        let l3 = l2.without_node("a:1").expect("remove");
        assert_eq!(l3.version, 3);
        assert_eq!(l3.nodes, nodes(&["b:2", "c:3"]));
        assert_eq!(
            l3.without_node("a:1"),
            Err(RingError::Unknown("a:1".into()))
        );
        let single = l3.without_node("b:2").expect("remove");
        assert_eq!(
            single.without_node("c:3"),
            Err(RingError::LastNode("c:3".into()))
        );
        // The original is untouched: a failed or pending change never alters the layout in use.
        assert_eq!(l.nodes, nodes(&["a:1", "b:2"]));
    }

    #[test]
    fn validation() {
        assert_eq!(
            Layout::new(nodes(&["a:1", "a:1"]), 16, 2),
            Err(RingError::Duplicate("a:1".into()))
        );
        assert!(matches!(
            Layout::new(nodes(&["a:1"]), 0, 2),
            Err(RingError::BadParameter(_))
        ));
        assert!(matches!(
            Layout::new(nodes(&["a:1"]), 16, 0),
            Err(RingError::BadParameter(_))
        ));
        let empty = Layout::new(vec![], DEFAULT_VNODES, DEFAULT_REPLICATION).expect("empty");
        assert_eq!(empty.effective_replication(), 0);
        let one = empty.with_node("a:1").expect("add");
        assert_eq!(one.effective_replication(), 1);
    }

    #[test]
    fn serde_round_trip() {
        let l = Layout::new(nodes(&["a:1", "b:2"]), 8, 2).expect("layout");
        let json = serde_json::to_string(&l).expect("serialize");
        assert_eq!(
            json,
            r#"{"version":1,"nodes":["a:1","b:2"],"vnodes":8,"replication":2}"#
        );
        let back: Layout = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, l);
    }
}
