//! HTTP client for storage nodes' blob API (`/v1/blobs/{id}/{file}`).

use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;

/// Characters escaped when a key part becomes one path segment.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A blob key: `{id}/{file}`, each part a valid name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobKey {
    /// The namespace (a video id, or `raw.{upload id}` for raw uploads).
    pub id: String,
    /// The file within it.
    pub file: String,
}

impl BlobKey {
    /// Builds a key from its parts.
    pub fn new(id: impl Into<String>, file: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            file: file.into(),
        }
    }

    /// Parses `id/file`.
    pub fn parse(key: &str) -> Option<Self> {
        let (id, file) = key.split_once('/')?;
        (common::name::validate_name(id).is_ok() && common::name::validate_name(file).is_ok())
            .then(|| Self::new(id, file))
    }

    /// The ring position is computed over this string.
    pub fn ring_key(&self) -> String {
        format!("{}/{}", self.id, self.file)
    }

    fn path(&self) -> String {
        format!(
            "/v1/blobs/{}/{}",
            percent_encoding::utf8_percent_encode(&self.id, SEGMENT),
            percent_encoding::utf8_percent_encode(&self.file, SEGMENT)
        )
    }
}

impl std::fmt::Display for BlobKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.id, self.file)
    }
}

/// One blob as a node lists it.
#[derive(Debug, Clone, Deserialize)]
pub struct BlobInfo {
    /// `id/file`.
    pub key: String,
    /// Payload length.
    pub bytes: u64,
    /// SHA-256 of the payload, hex.
    pub sha256: String,
}

#[derive(Debug, Deserialize)]
struct BlobList {
    blobs: Vec<BlobInfo>,
}

/// Why a node request failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("node {node} unreachable: {detail}")]
    Unreachable { node: String, detail: String },
    #[error("node {node} answered {status}: {detail}")]
    Status {
        node: String,
        status: u16,
        detail: String,
    },
    #[error("node {node} has no blob {key}")]
    NotFound { node: String, key: String },
}

/// Talks to storage nodes; one pooled client for all of them.
#[derive(Debug, Clone)]
pub struct NodeClient {
    http: reqwest::Client,
}

/// A blob read back, possibly a byte range of it.
#[derive(Debug)]
pub struct Fetched {
    /// The payload bytes asked for.
    pub data: Bytes,
    /// SHA-256 of the whole blob as the node stored it.
    pub sha256: Option<String>,
}

impl NodeClient {
    /// Builds the client; `timeout` bounds each request (blobs are a few MiB at most).
    pub fn new(connect_timeout: Duration, timeout: Duration) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .timeout(timeout)
            .tcp_nodelay(true)
            .http1_only()
            .pool_max_idle_per_host(64)
            .build()?;
        Ok(Self { http })
    }

    fn url(node: &str, path: &str) -> String {
        format!("http://{node}{path}")
    }

    /// Stores a blob on `node`; the node checks `sha256` and refuses a copy that differs.
    pub async fn put(
        &self,
        node: &str,
        key: &BlobKey,
        data: Bytes,
        sha256: &str,
    ) -> Result<(), NodeError> {
        let resp = self
            .http
            .put(Self::url(node, &key.path()))
            .header("x-content-sha256", sha256)
            .body(data)
            .send()
            .await
            .map_err(|e| unreachable(node, &e))?;
        check(node, key, resp).await.map(|_| ())
    }

    /// Reads a blob (or `range`, inclusive) from `node`; the node verifies its checksum before answering.
    pub async fn get(
        &self,
        node: &str,
        key: &BlobKey,
        range: Option<(u64, u64)>,
    ) -> Result<Fetched, NodeError> {
        let mut req = self.http.get(Self::url(node, &key.path()));
        if let Some((a, b)) = range {
            req = req.header(reqwest::header::RANGE, format!("bytes={a}-{b}"));
        }
        let resp = req.send().await.map_err(|e| unreachable(node, &e))?;
        let resp = check(node, key, resp).await?;
        let sha256 = resp
            .headers()
            .get("x-content-sha256")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let data = resp.bytes().await.map_err(|e| unreachable(node, &e))?;
        Ok(Fetched { data, sha256 })
    }

    /// Deletes a blob; absent is fine.
    pub async fn delete(&self, node: &str, key: &BlobKey) -> Result<(), NodeError> {
        let resp = self
            .http
            .delete(Self::url(node, &key.path()))
            .send()
            .await
            .map_err(|e| unreachable(node, &e))?;
        match check(node, key, resp).await {
            Ok(_) | Err(NodeError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Lists every blob on `node`.
    pub async fn list(&self, node: &str) -> Result<Vec<BlobInfo>, NodeError> {
        let resp = self
            .http
            .get(Self::url(node, "/v1/blobs"))
            .send()
            .await
            .map_err(|e| unreachable(node, &e))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(NodeError::Status {
                node: node.to_owned(),
                status: status.as_u16(),
                detail: resp.text().await.unwrap_or_default(),
            });
        }
        let list: BlobList = resp.json().await.map_err(|e| unreachable(node, &e))?;
        Ok(list.blobs)
    }

    /// Whether `node` answers its health check.
    pub async fn healthy(&self, node: &str) -> Result<(), NodeError> {
        let resp = self
            .http
            .get(Self::url(node, "/healthz"))
            .timeout(Duration::from_secs(3))
            .send()
            .await
            .map_err(|e| unreachable(node, &e))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(NodeError::Status {
                node: node.to_owned(),
                status: resp.status().as_u16(),
                detail: "health check failed".into(),
            })
        }
    }
}

fn unreachable(node: &str, e: &reqwest::Error) -> NodeError {
    use std::error::Error;
    let mut detail = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        detail.push_str(": ");
        detail.push_str(&c.to_string());
        src = c.source();
    }
    NodeError::Unreachable {
        node: node.to_owned(),
        detail,
    }
}

async fn check(
    node: &str,
    key: &BlobKey,
    resp: reqwest::Response,
) -> Result<reqwest::Response, NodeError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    if status == reqwest::StatusCode::NOT_FOUND {
        return Err(NodeError::NotFound {
            node: node.to_owned(),
            key: key.to_string(),
        });
    }
    Err(NodeError::Status {
        node: node.to_owned(),
        status: status.as_u16(),
        detail: resp.text().await.unwrap_or_default(),
    })
}
