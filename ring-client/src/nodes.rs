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
    /// SHA-256 of the payload, hex, as the node claims it (checked against recorded digests by callers).
    pub sha256: String,
    /// Seconds since the node last wrote it, by the node's clock.
    #[serde(default)]
    pub age_secs: u64,
}

#[derive(Debug, Deserialize)]
struct BlobList {
    blobs: Vec<BlobInfo>,
}

/// A node's answer to an identity challenge.
#[derive(Debug, Clone, Deserialize)]
pub struct IdentityAnswer {
    /// The node's persistent id.
    pub node_id: String,
    /// HMAC of the nonce and id under the cluster secret, hex (empty when the node has no secret).
    #[serde(default)]
    pub proof: String,
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
    #[error("node {node} sent a reply over the {limit}-byte limit")]
    TooLarge { node: String, limit: u64 },
    #[error("node {node} sent a malformed reply: {detail}")]
    BadReply { node: String, detail: String },
}

/// Largest blob read back from a node: DASH segments and ring chunks are a few MiB; anything bigger is a
/// misbehaving peer, refused before it is buffered.
pub const MAX_BLOB_READ: u64 = 64 << 20;

/// Largest listing read from a node (about 400,000 blobs).
pub const MAX_LISTING_READ: u64 = 64 << 20;

/// Largest identity answer or error body read from a node.
const MAX_SMALL_READ: u64 = 4096;

/// Header of a conditional delete (see the storage node's routes).
pub const MIN_AGE_HEADER: &str = "x-if-older-than-secs";

/// Talks to storage nodes; one pooled client for all of them.
#[derive(Debug, Clone)]
pub struct NodeClient {
    http: reqwest::Client,
    /// Bound of one request (see [`NodeClient::new`]).
    timeout: Duration,
    /// Signs every request when the cluster has a secret.
    secret: Option<common::cluster::ClusterSecret>,
}

/// Adds the cluster-secret proof for `req`'s method, path and query (see [`common::cluster`]).
pub fn sign(req: &mut reqwest::Request, secret: &common::cluster::ClusterSecret) {
    let url = req.url();
    let pq = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    };
    let value = secret.sign_request(req.method().as_str(), &pq);
    if let Ok(v) = reqwest::header::HeaderValue::from_str(&value) {
        req.headers_mut().insert(common::cluster::AUTH_HEADER, v);
    }
}

/// Builds `builder`, signs it when there is a secret, and sends it with `client`.
pub async fn send_signed(
    client: &reqwest::Client,
    secret: Option<&common::cluster::ClusterSecret>,
    builder: reqwest::RequestBuilder,
) -> Result<reqwest::Response, reqwest::Error> {
    let mut req = builder.build()?;
    if let Some(s) = secret {
        sign(&mut req, s);
    }
    client.execute(req).await
}

/// A blob's window table as a node sent it (unchecked).
#[derive(Debug)]
pub struct WindowTable {
    /// Payload length the node claims.
    pub len: u64,
    /// 32 bytes per window.
    pub table: Bytes,
}

/// A blob read back, possibly a byte range of it.
#[derive(Debug)]
pub struct Fetched {
    /// The payload bytes asked for.
    pub data: Bytes,
    /// SHA-256 of the whole blob as the node claims it stored it.
    pub sha256: Option<String>,
}

impl NodeClient {
    /// Builds the client; `timeout` bounds each request (blobs are a few MiB at most). Redirects are never
    /// followed: a node answering 3xx must not turn the broadcaster into a fetcher of other URLs.
    /// `https://` nodes are verified against the process's CA bundle (`DISTRIBUTARY_TLS_CA_FILE`, installed
    /// by the service's config; see [`common::tls::client_ca`]).
    pub fn new(
        connect_timeout: Duration,
        timeout: Duration,
        secret: Option<common::cluster::ClusterSecret>,
    ) -> Result<Self, reqwest::Error> {
        let builder = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .timeout(timeout)
            .tcp_nodelay(true)
            .http1_only()
            .redirect(reqwest::redirect::Policy::none())
            // Above the window fetches a process runs at once (read.rs), so reads never close and reopen
            // connections (a handshake, and a TIME_WAIT socket, per request).
            .pool_max_idle_per_host(64)
            // Below the storage nodes' keep-alive timeout: the pool drops a connection before the node does.
            .pool_idle_timeout(Duration::from_secs(30));
        let http = common::tls::trust(builder, common::tls::client_ca().as_ref()).build()?;
        Ok(Self {
            http,
            timeout,
            secret,
        })
    }

    /// The bound of one request.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    async fn send(
        &self,
        builder: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, reqwest::Error> {
        send_signed(&self.http, self.secret.as_ref(), builder).await
    }

    /// `node` is `host:port` (plain HTTP) or an `http(s)://host:port` URL.
    fn url(node: &str, path: &str) -> String {
        if node.starts_with("https://") || node.starts_with("http://") {
            format!("{}{path}", node.trim_end_matches('/'))
        } else {
            format!("http://{node}{path}")
        }
    }

    /// Stores a blob on `node`; the node checks `sha256` and refuses a copy that differs.
    pub async fn put(
        &self,
        node: &str,
        key: &BlobKey,
        data: Bytes,
        sha256: &str,
    ) -> Result<(), NodeError> {
        let req = self
            .http
            .put(Self::url(node, &key.path()))
            .header("x-content-sha256", sha256)
            .body(data);
        let resp = self.send(req).await.map_err(|e| unreachable(node, &e))?;
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
        let resp = self.send(req).await.map_err(|e| unreachable(node, &e))?;
        let resp = check(node, key, resp).await?;
        let sha256 = resp
            .headers()
            .get("x-content-sha256")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let data = read_limited(node, resp, MAX_BLOB_READ).await?;
        Ok(Fetched { data, sha256 })
    }

    /// The window table of a blob with a windowed digest, as `node` claims it: the payload length, the
    /// digest and the table bytes. The caller checks the table against the digest it recorded.
    pub async fn window_table(&self, node: &str, key: &BlobKey) -> Result<WindowTable, NodeError> {
        let req = self
            .http
            .get(Self::url(node, &format!("{}?windows=1", key.path())));
        let resp = self.send(req).await.map_err(|e| unreachable(node, &e))?;
        let resp = check(node, key, resp).await?;
        let len = resp
            .headers()
            .get("x-blob-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| NodeError::BadReply {
                node: node.to_owned(),
                detail: "a window table without a valid x-blob-length".into(),
            })?;
        if len > MAX_BLOB_READ {
            return Err(NodeError::TooLarge {
                node: node.to_owned(),
                limit: MAX_BLOB_READ,
            });
        }
        let limit = common::blob_digest::window_count(len) * 32;
        let table = read_limited(node, resp, limit).await?;
        Ok(WindowTable { len, table })
    }

    /// Starts reading bytes `start..=end` of a blob's payload from `node`; the caller reads the body as it
    /// needs it (and checks it: the node does not hash a windowed blob before sending it). `timeout` bounds
    /// the whole exchange, body included.
    pub async fn get_range(
        &self,
        node: &str,
        key: &BlobKey,
        start: u64,
        end: u64,
        timeout: Duration,
    ) -> Result<reqwest::Response, NodeError> {
        let req = self
            .http
            .get(Self::url(node, &key.path()))
            .header(reqwest::header::RANGE, format!("bytes={start}-{end}"))
            .timeout(timeout);
        let resp = self.send(req).await.map_err(|e| unreachable(node, &e))?;
        let resp = check(node, key, resp).await?;
        // A node that ignores the range would send the blob from its first byte.
        if resp.status() != reqwest::StatusCode::PARTIAL_CONTENT {
            return Err(NodeError::BadReply {
                node: node.to_owned(),
                detail: format!("answered {} to a range request", resp.status()),
            });
        }
        Ok(resp)
    }

    /// Deletes a blob; absent is fine.
    pub async fn delete(&self, node: &str, key: &BlobKey) -> Result<(), NodeError> {
        self.delete_if_older(node, key, None).await.map(|_| ())
    }

    /// Deletes a blob only if the node last wrote it at least `min_age` ago. `Ok(false)` when the node
    /// kept it because it is younger (written again since it was listed); absent is `Ok(true)`.
    pub async fn delete_if_older(
        &self,
        node: &str,
        key: &BlobKey,
        min_age: Option<Duration>,
    ) -> Result<bool, NodeError> {
        let mut req = self.http.delete(Self::url(node, &key.path()));
        if let Some(age) = min_age {
            req = req.header(MIN_AGE_HEADER, age.as_secs().to_string());
        }
        let resp = self.send(req).await.map_err(|e| unreachable(node, &e))?;
        match check(node, key, resp).await {
            Ok(_) | Err(NodeError::NotFound { .. }) => Ok(true),
            Err(NodeError::Status { status: 412, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Lists every blob on `node`; with `verify` the node hashes every payload first and leaves damaged
    /// blobs out (a scrub).
    pub async fn list(&self, node: &str, verify: bool) -> Result<Vec<BlobInfo>, NodeError> {
        let path = if verify {
            "/v1/blobs?verify=1"
        } else {
            "/v1/blobs"
        };
        let mut req = self.http.get(Self::url(node, path));
        if verify {
            // A scrub reads the node's whole disk.
            req = req.timeout(Duration::from_secs(3600));
        }
        let resp = self.send(req).await.map_err(|e| unreachable(node, &e))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(status_error(node, resp).await);
        }
        let body = read_limited(node, resp, MAX_LISTING_READ).await?;
        let list: BlobList = serde_json::from_slice(&body).map_err(|e| NodeError::BadReply {
            node: node.to_owned(),
            detail: e.to_string(),
        })?;
        Ok(list.blobs)
    }

    /// Asks `node` who it is, with a fresh `nonce` it must sign.
    pub async fn identity(&self, node: &str, nonce: &str) -> Result<IdentityAnswer, NodeError> {
        let req = self
            .http
            .get(Self::url(node, &format!("/v1/identity?nonce={nonce}")))
            .timeout(Duration::from_secs(5));
        let resp = self.send(req).await.map_err(|e| unreachable(node, &e))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(status_error(node, resp).await);
        }
        let body = read_limited(node, resp, MAX_SMALL_READ).await?;
        let answer: IdentityAnswer =
            serde_json::from_slice(&body).map_err(|_| NodeError::BadReply {
                node: node.to_owned(),
                detail: "not an identity answer".into(),
            })?;
        if !common::cluster::valid_token(&answer.node_id) {
            return Err(NodeError::BadReply {
                node: node.to_owned(),
                detail: "malformed node id".into(),
            });
        }
        Ok(answer)
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

/// Reads a reply body, refusing one over `limit` bytes before buffering it.
async fn read_limited(node: &str, resp: reqwest::Response, limit: u64) -> Result<Bytes, NodeError> {
    read_body_limited(resp, limit).await.map_err(|e| match e {
        LimitedReadError::TooLarge => NodeError::TooLarge {
            node: node.to_owned(),
            limit,
        },
        LimitedReadError::Body(e) => unreachable(node, &e),
        LimitedReadError::Buffer(detail) => NodeError::Unreachable {
            node: node.to_owned(),
            detail,
        },
    })
}

/// Why a bounded read failed.
#[derive(Debug, thiserror::Error)]
pub enum LimitedReadError {
    #[error("the reply exceeds its size limit")]
    TooLarge,
    #[error("the reply broke off: {0}")]
    Body(#[from] reqwest::Error),
    #[error("cannot buffer the reply: {0}")]
    Buffer(String),
}

/// Bodies at least this long are read into an anonymous mapping.
const MAPPED_BODY: u64 = 256 << 10;

/// Reads any peer's reply body into memory, refusing one over `limit` bytes (announced or actual) before
/// it is buffered: a peer cannot make this process allocate what it likes.
pub async fn read_body_limited(
    mut resp: reqwest::Response,
    limit: u64,
) -> Result<Bytes, LimitedReadError> {
    if resp.content_length().is_some_and(|n| n > limit) {
        return Err(LimitedReadError::TooLarge);
    }
    // A large body (a chunk, a segment) goes into a mapping of its own, returned to the system when the
    // last copy is dropped: heap blocks of this size stay with the allocator and pile up under load. Its
    // pages are touched only as bytes arrive, so a peer announcing more than it sends costs nothing.
    if let Some(len) = resp.content_length().filter(|&n| n >= MAPPED_BODY) {
        let mut map = memmap2::MmapMut::map_anon(len as usize)
            .map_err(|e| LimitedReadError::Buffer(e.to_string()))?;
        let mut filled = 0usize;
        while let Some(chunk) = resp.chunk().await? {
            let end = filled + chunk.len();
            if end as u64 > len {
                return Err(LimitedReadError::TooLarge);
            }
            map[filled..end].copy_from_slice(&chunk);
            filled = end;
        }
        return Ok(Bytes::from_owner(map).slice(..filled));
    }
    let mut buf = bytes::BytesMut::with_capacity(resp.content_length().unwrap_or(0) as usize);
    while let Some(chunk) = resp.chunk().await? {
        if buf.len() as u64 + chunk.len() as u64 > limit {
            return Err(LimitedReadError::TooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
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

/// A non-2xx answer. Only a node's own JSON error message is kept, shortened: a peer's arbitrary body is
/// never passed on to clients.
async fn status_error(node: &str, resp: reqwest::Response) -> NodeError {
    let status = resp.status().as_u16();
    let body = read_limited(node, resp, MAX_SMALL_READ)
        .await
        .unwrap_or_default();
    // What the peer said goes to the log only: a reply from a node is never passed on to clients, so a
    // host posing as a node cannot put its words into the admin API's answers.
    let said = serde_json::from_slice::<common::protocol::ErrorBody>(&body)
        .map(|e| e.error.chars().take(200).collect::<String>())
        .unwrap_or_else(|_| "no error message".into());
    tracing::warn!(%node, status, reply = %said, "storage node refused a request");
    NodeError::Status {
        node: node.to_owned(),
        status,
        detail: "see the broadcaster's log".into(),
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
    Err(status_error(node, resp).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(body: Vec<u8>) -> reqwest::Response {
        reqwest::Response::from(http::Response::new(body))
    }

    #[tokio::test]
    async fn bounded_reads_small_and_mapped() {
        let small: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let got = read_body_limited(reply(small.clone()), 4096)
            .await
            .expect("small");
        assert_eq!(&got[..], &small[..]);

        // Past the mapping threshold: read into a mapping, every byte intact.
        let large: Vec<u8> = (0..(3u32 << 20)).map(|i| (i * 7) as u8).collect();
        let got = read_body_limited(reply(large.clone()), 4 << 20)
            .await
            .expect("large");
        assert_eq!(got.len(), large.len());
        assert!(got == large, "the mapped read differs");

        // Over the limit, announced: refused before anything is buffered.
        assert!(matches!(
            read_body_limited(reply(large), 1 << 20).await,
            Err(LimitedReadError::TooLarge)
        ));
    }
}
