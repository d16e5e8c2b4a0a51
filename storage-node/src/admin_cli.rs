//! The command line: `storage-node` serves; `storage-node admin list|add|remove|repair` administers the ring
//! through a broadcaster's admin API.
//!
//! | command | request | printed on success |
//! |---|---|---|
//! | `admin list B` | `GET http://B/admin/nodes` | `Storage cluster nodes:` then `  - host:port` per node |
//! | `admin add B N` | `POST http://B/admin/nodes` `{"node":N}` | `Successfully added node: N`, `Number of files migrated: M` |
//! | `admin remove B N` | `DELETE http://B/admin/nodes/N` | `Successfully removed node: N`, `Number of files migrated: M` |
//! | `admin repair B` | `POST http://B/admin/repair` | `Repair checked N blobs`, `Number of copies made: M`, ... |
//!
//! `add` and `remove` answer only once migration is done, which can take long, so requests have no overall
//! timeout (only a connect timeout). A non-2xx answer carries `{"error": "..."}`, shown as is.
//!
//! `B` is `host:port` (plain HTTP), `http://host:port` or `https://host:port`; an `https://` broadcaster is
//! verified against `DISTRIBUTARY_TLS_CA_FILE` when it is set (else the built-in web roots). When
//! `DISTRIBUTARY_TOKEN` is set, every request carries it as `Authorization: Bearer <token>`.

use std::time::Duration;

use clap::{Parser, Subcommand};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::{Deserialize, Serialize};

use crate::error::AdminError;

/// How long to wait for a TCP connection to the broadcaster.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The variable holding the token sent as `Authorization: Bearer`.
pub const TOKEN_VAR: &str = "DISTRIBUTARY_TOKEN";

/// Characters escaped in a node address used as a path segment (`:` and the unreserved ones stay).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b':');

/// Distributary storage node: a durable blob store, one member of the storage ring.
///
/// Without a command it serves, configured by STORAGE_NODE_* environment variables.
#[derive(Debug, Parser)]
#[command(name = "storage-node", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Administer the storage ring through a broadcaster.
    #[command(subcommand)]
    Admin(AdminCommand),
}

/// Ring administration.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum AdminCommand {
    /// List the ring's nodes.
    List {
        /// The broadcaster, host:port.
        #[arg(value_parser = parse_broadcaster)]
        broadcaster: String,
    },
    /// Add a node; returns once the blobs it now owns were migrated to it.
    Add {
        /// The broadcaster, host:port.
        #[arg(value_parser = parse_broadcaster)]
        broadcaster: String,
        /// The storage node to add, host:port.
        #[arg(value_parser = parse_node)]
        node: String,
    },
    /// Remove a node; returns once its blobs were migrated to the remaining nodes.
    Remove {
        /// The broadcaster, host:port.
        #[arg(value_parser = parse_broadcaster)]
        broadcaster: String,
        /// The storage node to remove, host:port.
        #[arg(value_parser = parse_node)]
        node: String,
    },
    /// Bring every blob back to R verified copies on its owners; prints how many copies were made.
    Repair {
        /// The broadcaster, host:port.
        #[arg(value_parser = parse_broadcaster)]
        broadcaster: String,
    },
}

fn parse_node(s: &str) -> Result<String, String> {
    hashring::validate_node(s).map_err(|e| e.to_string())?;
    Ok(s.to_owned())
}

/// A broadcaster is `host:port`; `http://host:port` and `https://host:port` are accepted too, as in
/// `BROADCASTER_HOST_LIST`. Plain HTTP comes back as `host:port`, HTTPS as `https://host:port`.
fn parse_broadcaster(s: &str) -> Result<String, String> {
    let (https, rest) = match s.strip_prefix("https://") {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix("http://").unwrap_or(s)),
    };
    let bare = rest.trim_end_matches('/');
    hashring::validate_node(bare).map_err(|e| e.to_string())?;
    Ok(if https {
        format!("https://{bare}")
    } else {
        bare.to_owned()
    })
}

/// The base URL of a broadcaster as [`parse_broadcaster`] returns it.
fn base_url(broadcaster: &str) -> String {
    if broadcaster.starts_with("https://") {
        broadcaster.to_owned()
    } else {
        format!("http://{broadcaster}")
    }
}

/// The HTTP client of the admin commands: the CA bundle and the token come from the environment.
fn client() -> Result<reqwest::Client, AdminError> {
    let ca = common::tls::CaBundle::from_env().map_err(|e| AdminError::Client(e.to_string()))?;
    let mut headers = reqwest::header::HeaderMap::new();
    if let Ok(token) = std::env::var(TOKEN_VAR) {
        let token = token.trim();
        if !token.is_empty() {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| {
                    AdminError::Client(format!(
                        "{TOKEN_VAR} holds characters a header cannot carry"
                    ))
                })?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
    }
    let builder = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        // A broadcaster that stops answering mid-reply is noticed; migration (before the reply) may take long.
        .tcp_keepalive(Duration::from_secs(30))
        .default_headers(headers)
        // The token must not follow a redirect to another host.
        .redirect(reqwest::redirect::Policy::none());
    common::tls::trust(builder, ca.as_ref())
        .build()
        .map_err(|e| AdminError::Client(describe(&e)))
}

/// `GET /admin/nodes` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodesAnswer {
    /// Layout version.
    #[serde(default)]
    pub version: u64,
    /// Replication factor.
    #[serde(default)]
    pub replication: usize,
    /// Member nodes.
    pub nodes: Vec<String>,
}

/// `POST /admin/nodes` request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddRequest {
    /// The node to add.
    pub node: String,
}

/// `POST /admin/nodes` and `DELETE /admin/nodes/{node}` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeAnswer {
    /// The node added or removed.
    pub node: String,
    /// Blobs copied to their new owners.
    pub migrated: u64,
}

/// `POST /admin/repair` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairAnswer {
    /// Recorded blobs checked.
    pub checked: u64,
    /// Copies written to owners that lacked a good one.
    pub copies_made: u64,
    /// Copies removed from nodes that do not own them, once every owner held a good copy.
    #[serde(default)]
    pub surplus_removed: u64,
    /// Blobs with no good copy anywhere.
    #[serde(default)]
    pub unrecoverable: Vec<String>,
}

/// What `repair` prints.
pub fn format_repair(answer: &RepairAnswer) -> String {
    let mut out = format!(
        "Repair checked {} blobs\nNumber of copies made: {}\nSurplus copies removed: {}\n",
        answer.checked, answer.copies_made, answer.surplus_removed
    );
    if !answer.unrecoverable.is_empty() {
        out.push_str(&format!(
            "Blobs with no good copy left: {}\n",
            answer.unrecoverable.len()
        ));
        for k in &answer.unrecoverable {
            out.push_str(&format!("  - {k}\n"));
        }
    }
    out
}

/// What `list` prints.
pub fn format_list(answer: &NodesAnswer) -> String {
    let mut out = String::from("Storage cluster nodes:\n");
    for n in &answer.nodes {
        out.push_str(&format!("  - {n}\n"));
    }
    out
}

/// What `add` (`added = true`) or `remove` prints.
pub fn format_change(answer: &ChangeAnswer, added: bool) -> String {
    let verb = if added { "added" } else { "removed" };
    format!(
        "Successfully {verb} node: {}\nNumber of files migrated: {}\n",
        answer.node, answer.migrated
    )
}

/// Runs one admin command against its broadcaster; returns what to print on stdout.
pub async fn run(cmd: &AdminCommand) -> Result<String, AdminError> {
    let client = client()?;
    match cmd {
        AdminCommand::List { broadcaster } => {
            let url = format!("{}/admin/nodes", base_url(broadcaster));
            let answer: NodesAnswer = call(broadcaster, client.get(url)).await?;
            Ok(format_list(&answer))
        }
        AdminCommand::Add { broadcaster, node } => {
            let url = format!("{}/admin/nodes", base_url(broadcaster));
            let req = client.post(url).json(&AddRequest { node: node.clone() });
            let answer: ChangeAnswer = call(broadcaster, req).await?;
            Ok(format_change(&answer, true))
        }
        AdminCommand::Remove { broadcaster, node } => {
            let url = format!(
                "{}/admin/nodes/{}",
                base_url(broadcaster),
                utf8_percent_encode(node, SEGMENT)
            );
            let answer: ChangeAnswer = call(broadcaster, client.delete(url)).await?;
            Ok(format_change(&answer, false))
        }
        AdminCommand::Repair { broadcaster } => {
            let url = format!("{}/admin/repair", base_url(broadcaster));
            let answer: RepairAnswer = call(broadcaster, client.post(url)).await?;
            if !answer.unrecoverable.is_empty() {
                return Err(AdminError::Refused {
                    status: 500,
                    message: format_repair(&answer),
                });
            }
            Ok(format_repair(&answer))
        }
    }
}

/// Sends `req` and decodes a 2xx JSON answer; anything else becomes the broadcaster's own error message.
async fn call<T: serde::de::DeserializeOwned>(
    broadcaster: &str,
    req: reqwest::RequestBuilder,
) -> Result<T, AdminError> {
    let resp = req.send().await.map_err(|e| AdminError::Unreachable {
        broadcaster: broadcaster.to_owned(),
        detail: describe(&e),
    })?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| AdminError::Unreachable {
        broadcaster: broadcaster.to_owned(),
        detail: format!("answer interrupted: {}", describe(&e)),
    })?;
    if !status.is_success() {
        let message = match serde_json::from_slice::<common::protocol::ErrorBody>(&body) {
            Ok(e) => e.error,
            // Not our JSON (a proxy, an older broadcaster): show what came back.
            Err(_) => {
                let text = String::from_utf8_lossy(&body);
                let text = text.trim();
                if text.is_empty() {
                    format!("broadcaster answered {status}")
                } else {
                    format!(
                        "broadcaster answered {status}: {}",
                        text.chars().take(200).collect::<String>()
                    )
                }
            }
        };
        return Err(AdminError::Refused {
            status: status.as_u16(),
            message,
        });
    }
    serde_json::from_slice(&body).map_err(|e| AdminError::BadAnswer {
        broadcaster: broadcaster.to_owned(),
        detail: e.to_string(),
    })
}

/// An error with its causes, `a: b: c`: reqwest's own message alone ("error sending request") hides why.
fn describe(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_formats() {
        let list = NodesAnswer {
            version: 3,
            replication: 2,
            nodes: vec!["127.0.0.1:8090".into(), "127.0.0.1:8091".into()],
        };
        assert_eq!(
            format_list(&list),
            "Storage cluster nodes:\n  - 127.0.0.1:8090\n  - 127.0.0.1:8091\n"
        );
        let change = ChangeAnswer {
            node: "127.0.0.1:8093".into(),
            migrated: 17,
        };
        assert_eq!(
            format_change(&change, true),
            "Successfully added node: 127.0.0.1:8093\nNumber of files migrated: 17\n"
        );
        assert_eq!(
            format_change(&change, false),
            "Successfully removed node: 127.0.0.1:8093\nNumber of files migrated: 17\n"
        );
    }

    #[test]
    fn arguments() {
        let cli = Cli::try_parse_from(["storage-node"]).expect("serve");
        assert!(cli.command.is_none());
        let cli =
            Cli::try_parse_from(["storage-node", "admin", "add", "b:8080", "n:8093"]).expect("add");
        let Some(Command::Admin(cmd)) = cli.command else {
            panic!("admin command expected");
        };
        assert_eq!(
            cmd,
            AdminCommand::Add {
                broadcaster: "b:8080".into(),
                node: "n:8093".into()
            }
        );
        let cli =
            Cli::try_parse_from(["storage-node", "admin", "list", "http://b:8080/"]).expect("list");
        assert!(matches!(
            cli.command,
            Some(Command::Admin(AdminCommand::List { broadcaster })) if broadcaster == "b:8080"
        ));
        let cli = Cli::try_parse_from(["storage-node", "admin", "list", "https://b:8443/"])
            .expect("https list");
        let Some(Command::Admin(AdminCommand::List { broadcaster })) = cli.command else {
            panic!("list expected");
        };
        assert_eq!(broadcaster, "https://b:8443");
        assert_eq!(base_url(&broadcaster), "https://b:8443");
        assert_eq!(base_url("b:8080"), "http://b:8080");
        let cli = Cli::try_parse_from([
            "storage-node",
            "admin",
            "add",
            "https://b:8443",
            "https://n:8093",
        ])
        .expect("https node");
        assert!(matches!(
            cli.command,
            Some(Command::Admin(AdminCommand::Add { node, .. })) if node == "https://n:8093"
        ));
        for bad in [
            &["storage-node", "admin", "add", "b:8080", "n"][..],
            &["storage-node", "admin", "remove", "b", "n:1"],
            &["storage-node", "admin", "list", "b:99999"],
            &["storage-node", "admin", "list", "ftp://b:1"],
            &["storage-node", "admin", "list", "https://b"],
            &["storage-node", "admin", "add", "b:1", "https://n:1/x"],
            &["storage-node", "admin", "list"],
            &["storage-node", "admin", "frobnicate", "b:1"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn node_in_path_is_escaped() {
        assert_eq!(
            utf8_percent_encode("[::1]:8090", SEGMENT).to_string(),
            "%5B::1%5D:8090"
        );
        assert_eq!(
            utf8_percent_encode("host-1.example:8090", SEGMENT).to_string(),
            "host-1.example:8090"
        );
    }
}
