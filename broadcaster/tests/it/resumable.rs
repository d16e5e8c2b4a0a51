//! Resumable uploads end to end (issue 10, DESIGN.md §7): tus 1.0.0 and the IETF draft (interop version 6) on
//! `/uploads`, over the same fan-out and two-phase commit as `PUT /broadcast`.
//!
//! Real processes on loopback: broadcasters, disk readers, an S3 reader on `s3s-fs`, storage nodes, a
//! 3-member etcd, tus-js-client under node (`web/tests/tus-upload.mjs`) and the curl binary. Every upload is
//! checked byte for byte on every target it went to; "nothing staged anywhere" means no file under a disk
//! reader's `staging/`, no blob on any storage node (`GET /v1/blobs`), and no object nor open multipart upload
//! in the S3 bucket.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use reqwest::header::{HeaderMap, CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tempfile::TempDir;

use crate::data::{gen_bytes, sha256_hex, TestFile, XorShift, KIB, MIB};
use crate::etcd::EtcdCluster;
use crate::harness::{client, eventually, run_to_exit, scratch_dir, walk, Broadcaster, Reader};
use crate::ring::{holdings, Node};

/// The tus PATCH body type.
const TUS_CT: &str = "application/offset+octet-stream";
/// Ring chunk size for these tests: a few MiB span many blobs.
const RING_CHUNK: u64 = 256 * KIB;
/// Requests that carry no upload body must answer within this.
const QUICK: Duration = Duration::from_secs(15);
/// Housekeeping as eager as it gets: every second, nothing protected by age, leases lapse after 4 s.
const SWEEPING: &[(&str, &str)] = &[
    ("BROADCASTER_GC_INTERVAL_SECS", "1"),
    ("BROADCASTER_ORPHAN_GRACE_SECS", "0"),
    ("BROADCASTER_LEASE_TTL_SECS", "4"),
];

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

/// A response, read whole.
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Resp {
    async fn read(resp: reqwest::Response) -> Resp {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.text().await.unwrap_or_default();
        Resp {
            status,
            headers,
            body,
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn offset(&self) -> Option<u64> {
        self.header("upload-offset")
            .and_then(|v| v.trim().parse().ok())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// The `{"error": "..."}` message of a JSON error body.
    fn error(&self) -> Option<String> {
        self.json()["error"]
            .as_str()
            .filter(|e| !e.is_empty())
            .map(str::to_owned)
    }
}

impl std::fmt::Display for Resp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers: Vec<String> = self
            .headers
            .iter()
            .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("?")))
            .collect();
        write!(
            f,
            "{} [{}] {:?}",
            self.status,
            headers.join("; "),
            self.body.chars().take(600).collect::<String>()
        )
    }
}

async fn send(req: reqwest::RequestBuilder, what: &str) -> Resp {
    match req.send().await {
        Ok(resp) => Resp::read(resp).await,
        Err(e) => panic!("{what} failed at the HTTP level: {e:?}"),
    }
}

/// `filename <base64>` for `Upload-Metadata`.
fn metadata(name: &str) -> String {
    format!(
        "filename {}",
        base64::engine::general_purpose::STANDARD.encode(name)
    )
}

fn sha256_b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(data))
}

/// `/uploads/{id}` from a creation response's `Location` (relative or absolute), checking the id's shape.
fn upload_path(r: &Resp) -> String {
    let loc = r
        .header("location")
        .unwrap_or_else(|| panic!("creation answered without Location: {r}"));
    path_of(loc)
}

fn path_of(url: &str) -> String {
    let at = url
        .find("/uploads/")
        .unwrap_or_else(|| panic!("{url:?} is not an /uploads/{{id}} URL"));
    let path = &url[at..];
    let id = &path["/uploads/".len()..];
    assert!(
        id.len() == 32
            && id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "upload id should be 32 lowercase hex digits: {url:?}"
    );
    path.to_owned()
}

fn id_of(path: &str) -> &str {
    path.trim_start_matches("/uploads/")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    Tus,
    Ietf,
}

/// The resumable-upload routes of one broadcaster, as one client (protocol, optional bearer token) sees them.
#[derive(Clone, Debug)]
struct Tus {
    base: String,
    token: Option<String>,
    proto: Proto,
}

impl Tus {
    fn new(bc: &Broadcaster) -> Tus {
        Tus {
            base: format!("http://{}", bc.proc.addr),
            token: None,
            proto: Proto::Tus,
        }
    }

    fn token(mut self, token: &str) -> Tus {
        self.token = Some(token.to_owned());
        self
    }

    fn ietf(mut self) -> Tus {
        self.proto = Proto::Ietf;
        self
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let mut req = client().request(method, self.url(path));
        req = match self.proto {
            Proto::Tus => req.header("Tus-Resumable", "1.0.0"),
            Proto::Ietf => req.header("Upload-Draft-Interop-Version", "6"),
        };
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        req
    }

    /// `POST path_and_query` with these headers and an optional body (creation-with-upload).
    async fn post(
        &self,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Resp {
        let mut req = self.request(Method::POST, path_and_query);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req = match body {
            Some(b) => req.header(CONTENT_TYPE, TUS_CT).body(b),
            None => req.header(CONTENT_LENGTH, "0"),
        };
        send(req, &format!("POST {path_and_query}")).await
    }

    /// Creates an upload of `len` bytes named `name` (tus); its path.
    async fn create(&self, name: &str, len: u64) -> String {
        let r = self
            .post(
                "/uploads",
                &[
                    ("Upload-Length", &len.to_string()),
                    ("Upload-Metadata", &metadata(name)),
                ],
                None,
            )
            .await;
        assert_eq!(r.status, 201, "POST /uploads for {name}: {r}");
        assert_eq!(r.offset(), Some(0), "a new upload starts at 0: {r}");
        upload_path(&r)
    }

    async fn head(&self, path: &str) -> Resp {
        send(
            self.request(Method::HEAD, path).timeout(QUICK),
            &format!("HEAD {path}"),
        )
        .await
    }

    /// Whether `status` is a successful offset retrieval: 200 for tus (as the API pins it); the IETF draft's
    /// offset retrieval answers 204 (No Content), and 200 is accepted too.
    fn head_ok(&self, status: u16) -> bool {
        match self.proto {
            Proto::Tus => status == 200,
            Proto::Ietf => status == 200 || status == 204,
        }
    }

    /// `Upload-Offset` of a HEAD that must succeed.
    async fn offset(&self, path: &str) -> u64 {
        let r = self.head(path).await;
        assert!(self.head_ok(r.status), "HEAD {path}: {r}");
        r.offset()
            .unwrap_or_else(|| panic!("HEAD {path} without a numeric Upload-Offset: {r}"))
    }

    fn patch_request(&self, path: &str, offset: u64) -> reqwest::RequestBuilder {
        self.request(Method::PATCH, path)
            .header("Upload-Offset", offset.to_string())
            .header(CONTENT_TYPE, TUS_CT)
    }

    /// A tus append of `body` at `offset`, with extra headers.
    async fn patch(&self, path: &str, offset: u64, body: &[u8], extra: &[(&str, &str)]) -> Resp {
        let mut req = self.patch_request(path, offset);
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        send(
            req.body(body.to_vec()),
            &format!("PATCH {path} at {offset}"),
        )
        .await
    }

    /// `GET /uploads/{id}` (the project's JSON view).
    async fn info(&self, path: &str) -> Resp {
        send(
            self.request(Method::GET, path).timeout(QUICK),
            &format!("GET {path}"),
        )
        .await
    }

    async fn delete(&self, path: &str) -> Resp {
        send(
            self.request(Method::DELETE, path).timeout(QUICK),
            &format!("DELETE {path}"),
        )
        .await
    }

    /// Appends `data[from..]` in one PATCH that must complete the upload (204, offset = length).
    async fn finish(&self, path: &str, data: &[u8], from: u64) -> Resp {
        let r = self.patch(path, from, &data[from as usize..], &[]).await;
        assert_eq!(
            (r.status, r.offset()),
            (204, Some(data.len() as u64)),
            "the PATCH of bytes {from}..{} should complete the upload: {r}",
            data.len()
        );
        r
    }

    /// Waits until the upload's JSON view says `state` (or the time is up); the last view.
    async fn wait_state(&self, path: &str, state: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let r = self.info(path).await;
            let v = r.json();
            if v["state"] == state || Instant::now() > deadline {
                assert_eq!(r.status, 200, "GET {path}: {r}");
                return v;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A body of `data` handed over in `piece`-byte pieces, one every `pause`, counting what went.
fn paced(data: Bytes, piece: usize, pause: Duration, sent: Arc<AtomicU64>) -> reqwest::Body {
    let stream = futures_util::stream::unfold(0usize, move |off| {
        let (data, sent) = (data.clone(), sent.clone());
        async move {
            if off >= data.len() {
                return None;
            }
            tokio::time::sleep(pause).await;
            let end = (off + piece).min(data.len());
            sent.fetch_add((end - off) as u64, Ordering::SeqCst);
            Some((Ok::<Bytes, std::io::Error>(data.slice(off..end)), end))
        }
    });
    reqwest::Body::wrap_stream(stream)
}

/// Starts a slow tus PATCH of `data[from..]` (64 KiB every `pause`); `sent` counts the bytes handed over.
/// The task ends with the status and `Upload-Offset`, or `Err` when the connection broke.
fn slow_patch(
    tus: &Tus,
    path: &str,
    data: &Bytes,
    from: u64,
    pause: Duration,
    sent: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<Result<(u16, Option<u64>), String>> {
    let rest = data.slice(from as usize..);
    let len = rest.len();
    let req = tus
        .patch_request(path, from)
        .header(CONTENT_LENGTH, len.to_string())
        .body(paced(rest, 64 * KIB as usize, pause, sent));
    tokio::spawn(async move {
        match req.send().await {
            Ok(resp) => {
                let r = Resp::read(resp).await;
                Ok((r.status, r.offset()))
            }
            Err(e) => Err(format!("{e:?}")),
        }
    })
}

/// Polls `flag` (every 20 ms) until it reaches `at_least`; false if `within` passed first.
async fn wait_counter(flag: &AtomicU64, at_least: u64, within: Duration) -> bool {
    eventually(within, || async { flag.load(Ordering::SeqCst) >= at_least }).await
}

// ---------------------------------------------------------------------------------------------
// S3 (s3s-fs), as reader/tests/s3 runs it
// ---------------------------------------------------------------------------------------------

const BUCKET: &str = "archive";
const S3_ACCESS_KEY: &str = "distributary-test";
const S3_SECRET_KEY: &str = "distributary-test-secret";

fn s3s_fs_bin() -> PathBuf {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("s3s-fs"))
                .collect()
        })
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("CARGO_HOME").or_else(|| {
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo").into_os_string())
    }) {
        candidates.push(PathBuf::from(home).join("bin").join("s3s-fs"));
    }
    candidates.into_iter().find(|p| p.is_file()).unwrap_or_else(|| {
        panic!(
            "s3s-fs not found: install it with \
             `cargo install s3s-fs --version 0.14.1 --features binary --locked` (build/test.sh does)"
        )
    })
}

/// An s3s-fs server with bucket [`BUCKET`] on a free loopback port; killed (by its handle) on drop.
#[derive(Debug)]
struct S3Server {
    child: std::process::Child,
    port: u16,
    root: TempDir,
}

impl S3Server {
    fn start() -> S3Server {
        let root = scratch_dir("distributary-s3-");
        std::fs::create_dir(root.path().join(BUCKET)).expect("bucket dir");
        for _attempt in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port();
            let mut child = Command::new(s3s_fs_bin())
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY])
                .arg(root.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn s3s-fs");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return S3Server { child, port, root };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break; // the port was taken meanwhile: try another
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("s3s-fs did not start");
    }

    fn reader_env(&self, prefix: &str) -> Vec<(String, String)> {
        [
            ("READER_SINK", "s3"),
            (
                "READER_S3_ENDPOINT",
                &format!("http://127.0.0.1:{}", self.port),
            ),
            ("READER_S3_BUCKET", BUCKET),
            ("READER_S3_REGION", "us-east-1"),
            ("READER_S3_ACCESS_KEY_ID", S3_ACCESS_KEY),
            ("READER_S3_SECRET_ACCESS_KEY", S3_SECRET_KEY),
            ("READER_S3_PREFIX", prefix),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// Open multipart uploads (and half-written parts): s3s-fs keeps them as dot files in its root.
    fn multipart_leftovers(&self) -> Vec<String> {
        std::fs::read_dir(self.root.path())
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| {
                        n.starts_with(".upload") || n.starts_with(".tmp.") || n.contains(".upload-")
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Object keys in the bucket.
    fn objects(&self) -> Vec<String> {
        let base = self.root.path().join(BUCKET);
        walk(&base)
            .into_iter()
            .filter(|p| p.is_file())
            .filter_map(|p| {
                p.strip_prefix(&base)
                    .ok()
                    .map(|r| r.to_string_lossy().into_owned())
            })
            .collect()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// A site: a broadcaster and its targets
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct SiteOpts {
    /// Disk readers.
    readers: usize,
    /// Three storage nodes (R = 2) as the `ring` target.
    ring: bool,
    /// An S3 reader on s3s-fs.
    s3: bool,
    /// `BROADCASTER_METADATA`; a SQLite file in the site's directory when `None`.
    metadata: Option<String>,
    env: Vec<(&'static str, String)>,
}

/// A broadcaster fanning out to disk readers, the ring and an S3 reader (in that order).
struct Site {
    bc: Broadcaster,
    readers: Vec<Reader>,
    s3_reader: Option<Reader>,
    nodes: Vec<Node>,
    s3: Option<S3Server>,
    targets: Vec<String>,
    env: Vec<(String, String)>,
    // Last: removed once the processes are gone.
    _dir: TempDir,
}

impl Site {
    fn start(opts: SiteOpts) -> Site {
        let dir = scratch_dir("resumable-");
        let readers: Vec<Reader> = (0..opts.readers).map(|_| Reader::start()).collect();
        let nodes: Vec<Node> = if opts.ring {
            (0..3)
                .map(|i| Node::start(&dir.path().join(format!("n{i}")), 0))
                .collect()
        } else {
            Vec::new()
        };
        let s3 = opts.s3.then(S3Server::start);
        let s3_reader = s3.as_ref().map(|s| {
            let env = s.reader_env("up/");
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            Reader::start_with(&env)
        });
        let mut targets: Vec<String> = readers.iter().map(Reader::target).collect();
        if opts.ring {
            targets.push("ring".into());
        }
        if let Some(r) = &s3_reader {
            targets.push(r.target());
        }
        let mut env: Vec<(String, String)> = vec![(
            "BROADCASTER_METADATA".into(),
            opts.metadata
                .unwrap_or_else(|| format!("sqlite:{}", dir.path().join("meta.db").display())),
        )];
        if opts.ring {
            env.push((
                "BROADCASTER_STORAGE_NODES".into(),
                nodes.iter().map(Node::addr).collect::<Vec<_>>().join(";"),
            ));
            env.push(("BROADCASTER_REPLICATION".into(), "2".into()));
            env.push(("BROADCASTER_RING_CHUNK_SIZE".into(), RING_CHUNK.to_string()));
        }
        env.extend(opts.env.into_iter().map(|(k, v)| (k.to_owned(), v)));
        let bc = start_bc(&targets, &env);
        Site {
            bc,
            readers,
            s3_reader,
            nodes,
            s3,
            targets,
            env,
            _dir: dir,
        }
    }

    /// SIGKILLs the broadcaster and starts a new one on the same targets and metadata.
    fn restart_broadcaster(&mut self) {
        self.bc.proc.kill9();
        self.bc = start_bc(&self.targets, &self.env);
    }

    fn tus(&self) -> Tus {
        Tus::new(&self.bc)
    }

    /// Every place a committed `name` can be read back from: (label, URL).
    fn copies(&self, name: &str) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .readers
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("disk reader {i}"), r.file_url(name)))
            .collect();
        if !self.nodes.is_empty() {
            out.push((
                "the ring (broadcaster /files)".into(),
                self.bc
                    .url(&format!("/files/{}", crate::harness::encode_name(name))),
            ));
        }
        if let Some(r) = &self.s3_reader {
            out.push(("S3 reader".into(), r.file_url(name)));
        }
        out
    }

    /// Everything left staged anywhere, for a site where nothing was committed.
    async fn staged(&self) -> Vec<String> {
        let mut left = Vec::new();
        for (i, r) in self.readers.iter().enumerate() {
            for f in staged_files(r) {
                left.push(format!("disk reader {i} staging: {}", f.display()));
            }
        }
        for f in self.s3_reader.iter().flat_map(staged_files) {
            left.push(format!("S3 reader staging: {}", f.display()));
        }
        if !self.nodes.is_empty() {
            let refs: Vec<&Node> = self.nodes.iter().collect();
            for (key, on) in holdings(&refs).await {
                left.push(format!("ring blob {key} on {on:?}"));
            }
        }
        if let Some(s3) = &self.s3 {
            for f in s3.multipart_leftovers() {
                left.push(format!("S3 open multipart upload: {f}"));
            }
            for o in s3.objects() {
                left.push(format!("S3 object: {o}"));
            }
        }
        left
    }

    /// Waits up to `within` until [`Site::staged`] is empty; what is left otherwise.
    async fn wait_nothing_staged(&self, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        loop {
            let left = self.staged().await;
            if left.is_empty() || Instant::now() > deadline {
                return left;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Blob keys on the storage nodes.
    async fn ring_keys(&self) -> Vec<String> {
        let refs: Vec<&Node> = self.nodes.iter().collect();
        holdings(&refs).await.into_keys().collect()
    }
}

fn start_bc(targets: &[String], env: &[(String, String)]) -> Broadcaster {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Broadcaster::start(targets, &env)
}

/// Files (not directories) a reader stages: `staging/` (one-shot uploads and committed-to-be copies) and
/// `spool/` (resumable uploads between requests).
fn staged_files(r: &Reader) -> Vec<PathBuf> {
    let mut files = walk(&r.staging_dir());
    files.extend(walk(&r.data_dir.join("spool")));
    files.retain(|p| p.is_file());
    files
}

/// Bytes in files a reader stages.
fn staged_bytes(r: &Reader) -> u64 {
    staged_files(r)
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

/// Reads `name` back from every copy and compares SHA-256 with `want`; one line per copy that differs.
async fn differing_copies(site: &Site, name: &str, want_sha: &str, want_len: u64) -> Vec<String> {
    let mut wrong = Vec::new();
    for (label, url) in site.copies(name) {
        match client().get(&url).send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let body = resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
                let sha = sha256_hex(&body);
                if status != 200 || sha != want_sha {
                    wrong.push(format!(
                        "{label}: GET {url} → {status}, {} bytes (want {want_len}), sha256 {sha} (want {want_sha})",
                        body.len()
                    ));
                }
            }
            Err(e) => wrong.push(format!("{label}: GET {url} failed: {e}")),
        }
    }
    wrong
}

async fn assert_everywhere(site: &Site, name: &str, data: &[u8]) {
    let wrong = differing_copies(site, name, &sha256_hex(data), data.len() as u64).await;
    assert!(
        wrong.is_empty(),
        "{name} is not byte-exact everywhere:\n{}",
        wrong.join("\n")
    );
}

/// The upload's JSON view must say committed, with a summary matching `data`.
fn assert_committed(view: &Value, name: &str, data: &[u8], committed_targets: u64) {
    let len = data.len() as u64;
    assert_eq!(view["state"], "committed", "GET /uploads/{{id}}: {view}");
    assert_eq!(view["name"], name, "{view}");
    assert_eq!(view["offset"], len, "{view}");
    assert_eq!(view["length"], len, "{view}");
    let s = &view["summary"];
    assert_eq!(s["outcome"], "committed", "summary: {view}");
    assert_eq!(s["size"], len, "summary: {view}");
    assert_eq!(s["sha256"], sha256_hex(data), "summary: {view}");
    assert_eq!(s["committed"], committed_targets, "summary: {view}");
}

/// Upload offsets as reported, in order, must never go back.
fn assert_never_back(seen: &[u64]) {
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]),
        "Upload-Offset went back: {seen:?}"
    );
}

fn time_seed() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
}

// ---------------------------------------------------------------------------------------------
// tus-js-client under node
// ---------------------------------------------------------------------------------------------

fn web_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("broadcaster crate has a parent directory")
        .join("web")
}

/// Fails (with the way out) when node or tus-js-client is missing: a skipped client test would pass CI.
fn check_node() {
    let ok = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "node is not installed (apt-get install -y npm; build/test.sh does)"
    );
    assert!(
        web_dir()
            .join("node_modules/tus-js-client/package.json")
            .is_file(),
        "tus-js-client is not installed: run `npm ci --prefix web` (build/test.sh does)"
    );
}

/// What one run of `web/tests/tus-upload.mjs` did.
#[derive(Debug)]
struct NodeRun {
    status: Option<ExitStatus>,
    out: String,
}

impl NodeRun {
    fn line(&self, tag: &str) -> Option<&str> {
        self.out
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix(tag))
            .map(str::trim)
    }

    fn url(&self) -> Option<String> {
        self.line("URL ").map(str::to_owned)
    }

    fn stopped_at(&self) -> Option<u64> {
        self.line("STOP ").and_then(|n| n.parse().ok())
    }

    fn done(&self) -> bool {
        self.status.is_some_and(|s| s.success()) && self.out.lines().any(|l| l == "DONE")
    }

    fn vanished(&self) -> bool {
        self.status.and_then(|s| s.signal()) == Some(9)
    }
}

async fn tus_node(args: Vec<String>) -> NodeRun {
    let mut cmd = Command::new("node");
    cmd.arg(web_dir().join("tests/tus-upload.mjs"))
        .args(&args)
        .current_dir(web_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, _) in std::env::vars_os() {
        if key
            .to_string_lossy()
            .to_ascii_uppercase()
            .ends_with("_PROXY")
        {
            cmd.env_remove(&key);
        }
    }
    cmd.env("NO_PROXY", "127.0.0.1,localhost");
    let (status, out) =
        tokio::task::spawn_blocking(move || run_to_exit(cmd, Duration::from_secs(90)))
            .await
            .expect("node runner");
    NodeRun { status, out }
}

/// HEADs `path` until its offset exceeds `floor` (or `within` passes); every offset seen goes into `seen`.
async fn offset_above(
    tus: &Tus,
    path: &str,
    floor: u64,
    within: Duration,
    seen: &mut Vec<u64>,
) -> u64 {
    let deadline = Instant::now() + within;
    loop {
        let o = tus.offset(path).await;
        seen.push(o);
        if o > floor || Instant::now() > deadline {
            return o;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// tus-js-client uploads 24 MiB to two disk readers, the ring and an S3 reader, vanishing (SIGKILL) in the
/// middle of a PATCH at three random offsets and resuming with the upload URL each time.
async fn tus_js_client_vanishes_three_times(protocol: &str, chunk_size: &str, seed: u64) {
    check_node();
    let started = Instant::now();
    let site = Site::start(SiteOpts {
        readers: 2,
        ring: true,
        s3: true,
        ..SiteOpts::default()
    });
    let tus = match protocol {
        "ietf-draft-05" => site.tus().ietf(),
        _ => site.tus(),
    };
    let tf = TestFile::generate(seed, 24 * MIB);
    let data = tf.bytes();
    let size = tf.size;
    let name = format!("tus-{protocol}.bin");
    let rseed = time_seed();
    let mut rng = XorShift::new(rseed);
    let stops: Vec<u64> = [(10, 25), (40, 55), (70, 85)]
        .iter()
        .map(|&(lo, hi)| size * lo / 100 + rng.next_u64() % (size * (hi - lo) / 100))
        .collect();
    eprintln!("[resumable] {protocol}: seed {rseed}, the client vanishes past {stops:?} of {size}");

    let endpoint = site.bc.url("/uploads");
    let base_args = |extra: &[String]| {
        let mut a = vec![
            endpoint.clone(),
            tf.path().display().to_string(),
            "--protocol".into(),
            protocol.into(),
            "--chunk-size".into(),
            chunk_size.into(),
            "--name".into(),
            name.clone(),
        ];
        a.extend_from_slice(extra);
        a
    };
    let mut url: Option<String> = None;
    let mut seen: Vec<u64> = Vec::new();
    let mut prev = 0u64;
    for (i, stop) in stops.iter().enumerate() {
        let mut extra = vec!["--stop-after-bytes".to_owned(), stop.to_string()];
        if let Some(u) = &url {
            extra.extend(["--resume-url".to_owned(), u.clone()]);
        }
        let run = tus_node(base_args(&extra)).await;
        assert!(
            run.vanished(),
            "run {i}: tus-js-client should have vanished past {stop} bytes ({:?}):\n{}",
            run.status,
            run.out
        );
        let sent = run
            .stopped_at()
            .unwrap_or_else(|| panic!("run {i}: no STOP line:\n{}", run.out));
        let u = run
            .url()
            .unwrap_or_else(|| panic!("run {i}: no URL line:\n{}", run.out));
        if let Some(before) = &url {
            assert_eq!(&u, before, "run {i}: resuming must keep the upload URL");
        }
        url = Some(u.clone());
        let path = path_of(&u);

        // The cut-off PATCH keeps what reached the targets: HEAD reports more than before, never more than
        // was sent.
        let o = offset_above(&tus, &path, prev, Duration::from_secs(15), &mut seen).await;
        assert!(
            o > prev,
            "run {i}: the PATCH cut off after {sent} bytes kept nothing: HEAD still says {o} (before: {prev}); \
             offsets seen {seen:?}"
        );
        assert!(
            o <= sent,
            "run {i}: HEAD says {o} but only {sent} bytes were sent"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let again = tus.offset(&path).await;
        seen.push(again);
        let view = tus.info(&path).await;
        assert_eq!(view.status, 200, "GET {path}: {view}");
        let v = view.json();
        assert_eq!(v["state"], "open", "run {i}: {v}");
        assert_eq!(v["offset"], again, "run {i}: GET and HEAD disagree: {v}");
        assert_eq!(v["length"], size, "run {i}: {v}");
        assert_eq!(v["name"], name.as_str(), "run {i}: {v}");
        eprintln!(
            "[resumable] {protocol}: run {i} vanished after {sent} bytes; the upload kept {again} ({:.1} s)",
            started.elapsed().as_secs_f64()
        );
        prev = again;
    }

    let u = url.expect("an upload URL");
    let path = path_of(&u);
    let run = tus_node(base_args(&["--resume-url".to_owned(), u.clone()])).await;
    assert!(
        run.done(),
        "the last resume did not finish ({:?}):\n{}",
        run.status,
        run.out
    );
    assert_eq!(run.url().as_deref(), Some(u.as_str()), "{}", run.out);

    let head = tus.head(&path).await;
    assert!(
        tus.head_ok(head.status) && head.offset() == Some(size),
        "HEAD after completion: {head}"
    );
    seen.push(size);
    if protocol == "ietf-draft-05" {
        assert_eq!(head.header("upload-complete"), Some("?1"), "{head}");
    }
    assert_never_back(&seen);
    let view = tus.info(&path).await;
    assert_eq!(view.status, 200, "{view}");
    assert_committed(&view.json(), &name, &data, site.targets.len() as u64);
    assert_everywhere(&site, &name, &data).await;
    let leftovers = eventually(QUICK, || async {
        site.readers
            .iter()
            .chain(&site.s3_reader)
            .all(|r| staged_files(r).is_empty())
            && site
                .s3
                .as_ref()
                .is_some_and(|s| s.multipart_leftovers().is_empty())
    })
    .await;
    assert!(
        leftovers,
        "staging left after the commit: {:?}; S3 multipart: {:?}",
        site.readers
            .iter()
            .chain(&site.s3_reader)
            .map(staged_files)
            .collect::<Vec<_>>(),
        site.s3.as_ref().map(S3Server::multipart_leftovers)
    );
    eprintln!(
        "[resumable] {protocol}: took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tus_js_client_resumes_after_vanishing_tus_v1() {
    // One PATCH of the whole rest, as tus-js-client does by default.
    tus_js_client_vanishes_three_times("tus-v1", "inf", 101).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tus_js_client_resumes_after_vanishing_ietf_draft_05() {
    // 3 MiB PATCHes with `Upload-Complete: ?0` until the last one says `?1`.
    tus_js_client_vanishes_three_times("ietf-draft-05", &(3 * MIB).to_string(), 102).await;
}

// ---------------------------------------------------------------------------------------------
// curl
// ---------------------------------------------------------------------------------------------

/// A response as curl saw it (the last one, after any `100 Continue`).
#[derive(Debug)]
struct CurlResp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl CurlResp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn offset(&self) -> Option<u64> {
        self.header("upload-offset").and_then(|v| v.parse().ok())
    }
}

/// Runs the curl binary with `args` (plus output plumbing); `body` is sent with `--data-binary`.
async fn curl(dir: &Path, args: &[&str], body: Option<&[u8]>) -> CurlResp {
    let n = time_seed();
    let head_file = dir.join(format!("h-{n}"));
    let body_file = dir.join(format!("b-{n}"));
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--noproxy", "*", "--max-time", "60", "-H", "Expect:"])
        .arg("-D")
        .arg(&head_file)
        .arg("-o")
        .arg(&body_file)
        .args(args);
    if let Some(data) = body {
        let f = dir.join(format!("in-{n}"));
        std::fs::write(&f, data).expect("curl input");
        cmd.arg("--data-binary").arg(format!("@{}", f.display()));
    }
    let what = format!("curl {args:?}");
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("curl runner")
        .unwrap_or_else(|e| panic!("cannot run curl: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let raw = std::fs::read_to_string(&head_file).unwrap_or_default();
    // The last response block (curl writes interim 100 responses too).
    let block = raw
        .split("\r\n\r\n")
        .filter(|b| b.starts_with("HTTP/"))
        .last()
        .unwrap_or_else(|| panic!("{what}: no response head in {raw:?}"));
    let mut lines = block.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{what}: bad status line in {block:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let body = std::fs::read_to_string(&body_file).unwrap_or_default();
    CurlResp {
        status,
        headers,
        body,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_creates_appends_and_is_told_the_right_offset() {
    let site = Site::start(SiteOpts {
        readers: 2,
        ..SiteOpts::default()
    });
    let tmp = scratch_dir("resumable-curl-");
    let dir = tmp.path();
    let endpoint = site.bc.url("/uploads");
    let name = "curl.bin";
    let data = gen_bytes(201, (3 * MIB + 1234) as usize);
    let len = data.len() as u64;
    let m = MIB as usize;

    let r = curl(dir, &["-X", "OPTIONS", &endpoint], None).await;
    assert_eq!(r.status, 204, "OPTIONS /uploads: {r:?}");
    assert_eq!(r.header("tus-resumable"), Some("1.0.0"), "{r:?}");
    assert!(
        r.header("tus-version").is_some_and(|v| v.contains("1.0.0")),
        "{r:?}"
    );
    let ext = r.header("tus-extension").unwrap_or_default();
    for e in [
        "creation",
        "creation-with-upload",
        "creation-defer-length",
        "termination",
        "checksum",
        "expiration",
    ] {
        assert!(
            ext.split(',').any(|x| x.trim() == e),
            "Tus-Extension lacks {e}: {r:?}"
        );
    }
    assert!(
        r.header("tus-checksum-algorithm")
            .is_some_and(|v| v.contains("sha256")),
        "{r:?}"
    );

    // Creation with the first MiB in the body.
    let len_h = format!("Upload-Length: {len}");
    let meta_h = format!("Upload-Metadata: {}", metadata(name));
    let tus_h = "Tus-Resumable: 1.0.0";
    let ct_h = format!("Content-Type: {TUS_CT}");
    let r = curl(
        dir,
        &[
            "-X", "POST", "-H", tus_h, "-H", &len_h, "-H", &meta_h, "-H", &ct_h, &endpoint,
        ],
        Some(&data[..m]),
    )
    .await;
    assert_eq!(r.status, 201, "creation-with-upload: {r:?}");
    assert_eq!(
        r.offset(),
        Some(MIB),
        "creation-with-upload keeps the body: {r:?}"
    );
    assert_eq!(r.header("tus-resumable"), Some("1.0.0"), "{r:?}");
    assert!(
        r.header("upload-expires")
            .is_some_and(|v| v.ends_with("GMT")),
        "Upload-Expires should be an HTTP date: {r:?}"
    );
    let loc = r
        .header("location")
        .unwrap_or_else(|| panic!("no Location: {r:?}"));
    let url = site.bc.url(&path_of(loc));

    let head = |dir: PathBuf, url: String| async move {
        curl(&dir, &["-I", "-H", "Tus-Resumable: 1.0.0", &url], None).await
    };
    let r = head(dir.to_path_buf(), url.clone()).await;
    assert_eq!(r.status, 200, "HEAD: {r:?}");
    assert_eq!(r.offset(), Some(MIB), "{r:?}");
    assert_eq!(
        r.header("upload-length"),
        Some(len.to_string().as_str()),
        "{r:?}"
    );
    assert!(
        r.header("cache-control")
            .is_some_and(|v| v.contains("no-store")),
        "{r:?}"
    );
    assert!(r.header("upload-expires").is_some(), "{r:?}");

    let patch = |from: u64, part: Vec<u8>| {
        let url = url.clone();
        let dir = dir.to_path_buf();
        let ct_h = ct_h.clone();
        async move {
            let off_h = format!("Upload-Offset: {from}");
            curl(
                &dir,
                &["-X", "PATCH", "-H", tus_h, "-H", &ct_h, "-H", &off_h, &url],
                Some(&part),
            )
            .await
        }
    };
    let r = patch(MIB, data[m..2 * m].to_vec()).await;
    assert_eq!(
        (r.status, r.offset()),
        (204, Some(2 * MIB)),
        "PATCH at 1 MiB: {r:?}"
    );

    // A stale offset and one past the end: 409 with the offset to use.
    for wrong in [MIB, 0, 3 * MIB] {
        let r = patch(wrong, data[m..2 * m].to_vec()).await;
        assert_eq!(
            (r.status, r.offset()),
            (409, Some(2 * MIB)),
            "PATCH at {wrong} while the upload is at 2 MiB: {r:?}"
        );
    }
    let r = head(dir.to_path_buf(), url.clone()).await;
    assert_eq!(
        (r.status, r.offset()),
        (200, Some(2 * MIB)),
        "a refused PATCH moved the offset: {r:?}"
    );

    let r = patch(2 * MIB, data[2 * m..].to_vec()).await;
    assert_eq!(
        (r.status, r.offset()),
        (204, Some(len)),
        "the completing PATCH: {r:?}"
    );
    let r = head(dir.to_path_buf(), url.clone()).await;
    assert_eq!((r.status, r.offset()), (200, Some(len)), "{r:?}");
    let r = patch(len, b"more".to_vec()).await;
    assert_eq!(
        (r.status, r.offset()),
        (409, Some(len)),
        "a completed upload takes no more PATCHes: {r:?}"
    );
    let r = curl(dir, &[&url], None).await;
    assert_eq!(r.status, 200, "GET {url}: {r:?}");
    let v: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
    assert_committed(&v, name, &data, 2);
    assert_everywhere(&site, name, &data).await;
}

// ---------------------------------------------------------------------------------------------
// The broadcaster dies mid-upload
// ---------------------------------------------------------------------------------------------

/// 16 MiB to two disk readers and the ring; 3 MiB appended, then a slow PATCH of the rest during which the
/// broadcaster is SIGKILLed; a new broadcaster on the same metadata resumes it to a byte-exact commit.
async fn broadcaster_killed_mid_upload(metadata: Option<String>, label: &str, checkpoint: u64) {
    let started = Instant::now();
    let mut env: Vec<(&'static str, String)> = vec![(
        "BROADCASTER_RESUMABLE_CHECKPOINT_BYTES",
        checkpoint.to_string(),
    )];
    env.extend(SWEEPING.iter().map(|(k, v)| (*k, v.to_string())));
    let mut site = Site::start(SiteOpts {
        readers: 2,
        ring: true,
        metadata,
        env,
        ..SiteOpts::default()
    });
    let name = format!("restart-{label}.bin");
    let data = Bytes::from(gen_bytes(301, (16 * MIB) as usize));
    let len = data.len() as u64;
    let tus = site.tus();
    let path = tus.create(&name, len).await;
    let r = tus.patch(&path, 0, &data[..(3 * MIB) as usize], &[]).await;
    assert_eq!((r.status, r.offset()), (204, Some(3 * MIB)), "{r}");

    let sent = Arc::new(AtomicU64::new(0));
    let slow = slow_patch(
        &tus,
        &path,
        &data,
        3 * MIB,
        Duration::from_millis(20),
        sent.clone(),
    );
    let mut seen = vec![3 * MIB];
    let deadline = Instant::now() + Duration::from_secs(30);
    while sent.load(Ordering::SeqCst) < 5 * MIB {
        assert!(
            Instant::now() < deadline,
            "the slow PATCH never got 5 MiB out"
        );
        seen.push(tus.offset(&path).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    seen.push(tus.offset(&path).await);
    site.bc.proc.kill9();
    let sent_total = 3 * MIB + sent.load(Ordering::SeqCst);
    assert!(
        sent_total < len,
        "the PATCH finished before the kill: nothing was tested"
    );
    let _ = slow.await;
    assert_never_back(&seen);
    let before = *seen.iter().max().unwrap_or(&0);

    site.restart_broadcaster();
    let tus = site.tus();
    let o = tus.offset(&path).await;
    eprintln!(
        "[resumable] {label}: killed after {sent_total} bytes sent, {before} reported; after the restart HEAD says {o}"
    );
    assert!(
        o >= before,
        "Upload-Offset went back across the restart: {before} reported before, {o} after"
    );
    assert!(
        o <= sent_total,
        "HEAD says {o} but only {sent_total} bytes were sent"
    );
    assert!(
        o > 3 * MIB,
        "nothing of the append the crash cut ({} bytes sent, checkpoints every {checkpoint} bytes) was kept: HEAD says {o}",
        sent_total - 3 * MIB
    );
    // Sweeps run every second and the dead broadcaster's leases have lapsed: the upload must still be whole.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let still = tus.offset(&path).await;
    assert_eq!(
        still, o,
        "the offset changed while nobody touched the upload"
    );
    tus.finish(&path, &data, o).await;
    let view = tus.wait_state(&path, "committed", QUICK).await;
    assert_committed(&view, &name, &data, 3);
    assert_everywhere(&site, &name, &data).await;
    eprintln!(
        "[resumable] {label}: took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_broadcaster_resumes_from_sqlite() {
    broadcaster_killed_mid_upload(None, "sqlite", MIB).await;
}

/// Checkpoints that fall inside ring chunks: the ring holds a partial last chunk at every checkpoint, and the
/// crash lands after the append completed that chunk but before it was checkpointed. The partial chunk the
/// record names must survive (it once was overwritten in place, and the resumed upload then failed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_broadcaster_resumes_with_partial_ring_chunks() {
    broadcaster_killed_mid_upload(None, "partial-chunks", 160 * KIB).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_broadcaster_resumes_from_etcd() {
    let etcd = EtcdCluster::start().await;
    broadcaster_killed_mid_upload(Some(etcd.spec()), "etcd", MIB).await;
    drop(etcd);
}

// ---------------------------------------------------------------------------------------------
// A target dies mid-upload
// ---------------------------------------------------------------------------------------------

/// Appends 2 MiB of 12, then slowly the rest, SIGKILLing disk reader 1 once 2 MiB more went out. Returns the
/// slow PATCH's outcome.
async fn kill_a_reader_mid_patch(
    site: &mut Site,
    path: &str,
    data: &Bytes,
) -> Result<(u16, Option<u64>), String> {
    let tus = site.tus();
    let r = tus.patch(path, 0, &data[..(2 * MIB) as usize], &[]).await;
    assert_eq!((r.status, r.offset()), (204, Some(2 * MIB)), "{r}");
    let sent = Arc::new(AtomicU64::new(0));
    let slow = slow_patch(
        &tus,
        path,
        data,
        2 * MIB,
        Duration::from_millis(10),
        sent.clone(),
    );
    assert!(
        wait_counter(&sent, 2 * MIB, Duration::from_secs(30)).await,
        "the slow PATCH never got 2 MiB out"
    );
    site.readers[1].proc.kill9();
    let at_kill = 2 * MIB + sent.load(Ordering::SeqCst);
    assert!(
        at_kill < data.len() as u64,
        "the PATCH finished before the kill"
    );
    tokio::time::timeout(Duration::from_secs(60), slow)
        .await
        .expect("the PATCH did not end within 60 s of the target's death")
        .expect("PATCH task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_a_target_the_quorum_can_spare_still_commits() {
    let mut site = Site::start(SiteOpts {
        readers: 3,
        env: vec![("BROADCASTER_MIN_SUCCESS", "2".into())],
        ..SiteOpts::default()
    });
    let name = "spare.bin";
    let data = Bytes::from(gen_bytes(401, (12 * MIB) as usize));
    let len = data.len() as u64;
    let tus = site.tus();
    let path = tus.create(name, len).await;
    let victim = site.readers[1].target();
    let outcome = kill_a_reader_mid_patch(&mut site, &path, &data).await;
    eprintln!("[resumable] the PATCH during which a reader died ended with {outcome:?}");
    // The append may go on or stop; either way the client can finish the upload.
    let mut tries = 0;
    loop {
        let o = tus.offset(&path).await;
        if o == len {
            break;
        }
        tries += 1;
        assert!(
            tries <= 3,
            "the upload cannot be finished after losing a spare target (offset {o})"
        );
        let r = tus.patch(&path, o, &data[o as usize..], &[]).await;
        eprintln!("[resumable] resuming at {o}: {r}");
    }
    let view = tus.wait_state(&path, "committed", QUICK).await;
    assert_committed(&view, name, &data, 2);
    let victim_state = view["summary"]["targets"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["target"] == victim.as_str()))
        .map(|t| t["state"].clone());
    assert_eq!(
        victim_state,
        Some(json!("failed")),
        "the dead reader in the summary: {view}"
    );
    for i in [0, 2] {
        let r = &site.readers[i];
        let (status, body) = get_bytes(&r.file_url(name)).await;
        assert!(
            status == 200 && body == data[..],
            "reader {i}: {status}, {} bytes",
            body.len()
        );
        assert!(
            eventually(QUICK, || async { staged_files(r).is_empty() }).await,
            "reader {i} keeps staging after the commit: {:?}",
            staged_files(r)
        );
    }
    assert!(
        !site.readers[1].files_dir().join(name).exists(),
        "the dead reader has a committed copy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_a_target_the_quorum_needs_fails_cleanly() {
    let mut site = Site::start(SiteOpts {
        readers: 2,
        ..SiteOpts::default()
    });
    let name = "needed.bin";
    let data = Bytes::from(gen_bytes(402, (12 * MIB) as usize));
    let len = data.len() as u64;
    let tus = site.tus();
    let path = tus.create(name, len).await;
    let outcome = kill_a_reader_mid_patch(&mut site, &path, &data).await;
    assert!(
        outcome != Ok((204, Some(len))),
        "the upload completed without a target the quorum needs: {outcome:?}"
    );
    // Whatever the client tries next, the upload cannot be committed.
    let head = tus.head(&path).await;
    if head.status == 200 {
        if let Some(o) = head.offset().filter(|&o| o < len) {
            // A small body: a server that refuses at once closes before reading a large one, and the
            // client then sees a broken pipe instead of the answer.
            let end = (o + 64 * KIB).min(len) as usize;
            let r = tus.patch(&path, o, &data[o as usize..end], &[]).await;
            assert!(
                !(r.status == 204 && r.offset() == Some(len)),
                "completing the upload without the dead target succeeded: {r}"
            );
        }
    }
    let view = tus
        .wait_state(&path, "failed", Duration::from_secs(20))
        .await;
    assert_eq!(view["state"], "failed", "{view}");
    if view["summary"].is_object() {
        assert_eq!(view["summary"]["outcome"], "failed", "{view}");
    }
    let o = view["offset"].as_u64().unwrap_or(0);
    let end = (o + 64 * KIB).min(len) as usize;
    let r = tus.patch(&path, o, &data[o as usize..end], &[]).await;
    assert_eq!(r.status, 410, "a PATCH to a failed upload: {r}");
    let survivor = &site.readers[0];
    assert!(
        eventually(QUICK, || async { staged_files(survivor).is_empty() }).await,
        "the surviving reader keeps staging: {:?}",
        staged_files(survivor)
    );
    assert!(
        survivor.committed_names().is_empty(),
        "the surviving reader committed {:?}",
        survivor.committed_names()
    );
}

async fn get_bytes(url: &str) -> (u16, Vec<u8>) {
    let resp = client().get(url).send().await.expect("GET");
    let status = resp.status().as_u16();
    (
        status,
        resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default(),
    )
}

// ---------------------------------------------------------------------------------------------
// Termination, expiry, checksum mismatch: nothing staged anywhere
// ---------------------------------------------------------------------------------------------

/// Appends `n` bytes and checks that they are staged on every disk reader and on the ring.
async fn stage_some(site: &Site, path: &str, data: &[u8], n: u64) {
    let r = site.tus().patch(path, 0, &data[..n as usize], &[]).await;
    assert_eq!((r.status, r.offset()), (204, Some(n)), "{r}");
    let staged = eventually(QUICK, || async {
        site.readers.iter().all(|r| staged_bytes(r) >= n) && !site.ring_keys().await.is_empty()
    })
    .await;
    assert!(
        staged,
        "{n} bytes appended but not staged everywhere: disk readers hold {:?} bytes, ring keys {:?}",
        site.readers.iter().map(staged_bytes).collect::<Vec<_>>(),
        site.ring_keys().await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn termination_removes_everything_staged() {
    let site = Site::start(SiteOpts {
        readers: 2,
        ring: true,
        s3: true,
        ..SiteOpts::default()
    });
    let data = gen_bytes(501, (12 * MIB) as usize);
    let tus = site.tus();
    let path = tus.create("terminated.bin", data.len() as u64).await;
    stage_some(&site, &path, &data, 6 * MIB).await;

    let r = tus.delete(&path).await;
    assert_eq!(r.status, 204, "DELETE {path}: {r}");
    let r = tus.head(&path).await;
    assert_eq!(r.status, 404, "HEAD after DELETE: {r}");
    let r = tus
        .patch(&path, 6 * MIB, &data[(6 * MIB) as usize..], &[])
        .await;
    assert_eq!(r.status, 404, "PATCH after DELETE: {r}");
    let r = tus.info(&path).await;
    assert_eq!(r.status, 404, "GET after DELETE: {r}");
    let left = site.wait_nothing_staged(QUICK).await;
    assert!(
        left.is_empty(),
        "left after DELETE of {}:\n{}",
        id_of(&path),
        left.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_uploads_are_removed_with_what_they_staged() {
    let site = Site::start(SiteOpts {
        readers: 2,
        ring: true,
        env: vec![("BROADCASTER_RESUMABLE_TTL_SECS", "2".into())],
        ..SiteOpts::default()
    });
    let data = gen_bytes(502, (4 * MIB) as usize);
    let tus = site.tus();
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let path = tus.create("expiring.bin", data.len() as u64).await;
    let v = tus.info(&path).await.json();
    let expires = v["expires_unix_ms"].as_u64().unwrap_or(0);
    assert!(
        expires >= created + 1_000 && expires <= created + 10_000,
        "a 2 s TTL should expire about 2 s after creation (created at {created}): {v}"
    );
    stage_some(&site, &path, &data, MIB).await;
    let gone = eventually(Duration::from_secs(20), || async {
        tus.head(&path).await.status == 404
    })
    .await;
    assert!(
        gone,
        "the upload is still there 20 s after its 2 s TTL: {}",
        tus.head(&path).await
    );
    let left = site.wait_nothing_staged(QUICK).await;
    assert!(
        left.is_empty(),
        "left after expiry of {}:\n{}",
        id_of(&path),
        left.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checksum_mismatch_keeps_nothing_of_the_request() {
    let site = Site::start(SiteOpts {
        readers: 2,
        ring: true,
        ..SiteOpts::default()
    });
    let name = "checksummed.bin";
    let data = gen_bytes(503, (2 * MIB) as usize);
    let m = MIB as usize;
    let other = gen_bytes(504, m);
    let tus = site.tus();
    let path = tus.create(name, data.len() as u64).await;

    // At offset 0: refused, and none of its bytes may stay on any target.
    let bad = format!("sha256 {}", sha256_b64(&other));
    let r = tus
        .patch(&path, 0, &data[..m], &[("Upload-Checksum", &bad)])
        .await;
    assert_eq!(r.status, 460, "PATCH with the checksum of other bytes: {r}");
    assert_eq!(
        tus.offset(&path).await,
        0,
        "a refused PATCH moved the offset"
    );
    // Checked at the end, so that a failure here still shows whether the rest holds.
    let mut problems = Vec::new();
    if let Some(left) = refused_bytes_left(&site, &data[..4096], &[]).await {
        problems.push(format!(
            "the refused PATCH at 0 left its bytes behind: {left}"
        ));
    }

    // A good first half, then a bad second half: the offset stays, and the commit is byte-exact.
    let good = format!("sha256 {}", sha256_b64(&data[..m]));
    let r = tus
        .patch(&path, 0, &data[..m], &[("Upload-Checksum", &good)])
        .await;
    assert_eq!((r.status, r.offset()), (204, Some(MIB)), "{r}");
    let keys = site.ring_keys().await;
    let r = tus
        .patch(&path, MIB, &other, &[("Upload-Checksum", &good)])
        .await;
    assert_eq!(
        r.status, 460,
        "PATCH of other bytes with the first half's checksum: {r}"
    );
    assert_eq!(
        tus.offset(&path).await,
        MIB,
        "a refused PATCH moved the offset"
    );
    if let Some(left) = refused_bytes_left(&site, &other[..4096], &keys).await {
        problems.push(format!(
            "the refused PATCH at 1 MiB left its bytes behind: {left}"
        ));
    }
    let good2 = format!("sha256 {}", sha256_b64(&data[m..]));
    let r = tus
        .patch(&path, MIB, &data[m..], &[("Upload-Checksum", &good2)])
        .await;
    assert_eq!((r.status, r.offset()), (204, Some(2 * MIB)), "{r}");
    let view = tus.wait_state(&path, "committed", QUICK).await;
    assert_committed(&view, name, &data, 3);
    assert_everywhere(&site, name, &data).await;
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Within 5 s, no reader's staging may hold `probe` (the start of a refused request's bytes) and the ring may
/// hold no blob beyond `ring_before`; what is left otherwise.
async fn refused_bytes_left(site: &Site, probe: &[u8], ring_before: &[String]) -> Option<String> {
    let kept = |r: &Reader| -> Vec<PathBuf> {
        staged_files(r)
            .into_iter()
            .filter(|f| {
                let content = std::fs::read(f).unwrap_or_default();
                content.windows(probe.len()).any(|w| w == probe)
            })
            .collect()
    };
    let new_blobs = || async {
        let now = site.ring_keys().await;
        now.into_iter()
            .filter(|k| !ring_before.contains(k))
            .collect::<Vec<_>>()
    };
    let clean = eventually(Duration::from_secs(5), || async {
        site.readers.iter().all(|r| kept(r).is_empty()) && new_blobs().await.is_empty()
    })
    .await;
    if clean {
        return None;
    }
    Some(format!(
        "in reader staging {:?}; new ring blobs {:?}",
        site.readers.iter().map(kept).collect::<Vec<_>>(),
        new_blobs().await
    ))
}

// ---------------------------------------------------------------------------------------------
// Two PATCHes on one upload
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_patch_stops_the_one_still_running() {
    let site = Site::start(SiteOpts {
        readers: 2,
        ..SiteOpts::default()
    });
    let name = "raced.bin";
    let data = Bytes::from(gen_bytes(601, (8 * MIB) as usize));
    let len = data.len() as u64;
    let tus = site.tus();
    let path = tus.create(name, len).await;

    // A: slow (about 2.6 MiB/s), would take 3 s for the whole.
    let sent_a = Arc::new(AtomicU64::new(0));
    let a = slow_patch(
        &tus,
        &path,
        &data,
        0,
        Duration::from_millis(25),
        sent_a.clone(),
    );
    assert!(
        wait_counter(&sent_a, MIB, Duration::from_secs(30)).await,
        "PATCH A never got 1 MiB out"
    );

    // B: a second client takes over from what HEAD says, following 409s to the right offset.
    let b_started = Instant::now();
    let mut b_statuses = Vec::new();
    let mut offset = tus.offset(&path).await;
    loop {
        assert!(
            b_statuses.len() < 6,
            "PATCH B never got through: {b_statuses:?}"
        );
        let r = tus
            .patch(&path, offset, &data[offset as usize..], &[])
            .await;
        b_statuses.push(format!("at {offset}: {} → {:?}", r.status, r.offset()));
        match (r.status, r.offset()) {
            (204, Some(o)) if o == len => break,
            (409, Some(o)) => offset = o,
            (204, Some(o)) => offset = o,
            _ => panic!("PATCH B: {r} (before: {b_statuses:?})"),
        }
    }
    let a_outcome = tokio::time::timeout(Duration::from_secs(20), a)
        .await
        .expect("PATCH A still runs after B finished the upload")
        .expect("PATCH A task");
    let a_sent = sent_a.load(Ordering::SeqCst);
    eprintln!(
        "[resumable] A ended with {a_outcome:?} after {a_sent} bytes; B: {b_statuses:?} in {:.1} s",
        b_started.elapsed().as_secs_f64()
    );
    assert!(
        a_sent < len,
        "PATCH A sent all its bytes: it was not stopped when B arrived"
    );
    assert!(
        !matches!(a_outcome, Ok((s, Some(o))) if (200..300).contains(&s) && o == len),
        "PATCH A completed the upload although B took over: {a_outcome:?}"
    );
    let view = tus.wait_state(&path, "committed", QUICK).await;
    assert_committed(&view, name, &data, 2);
    assert_everywhere(&site, name, &data).await;
}

// ---------------------------------------------------------------------------------------------
// Ownership
// ---------------------------------------------------------------------------------------------

const ADMIN: &str = "admin-token-resumable-0123456789abcdef";

async fn make_token(bc: &Broadcaster, body: Value) -> String {
    let r = send(
        client()
            .post(bc.url("/admin/tokens"))
            .bearer_auth(ADMIN)
            .json(&body),
        "POST /admin/tokens",
    )
    .await;
    assert_eq!(r.status, 201, "{body}: {r}");
    r.json()["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token in {r}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_creating_token_may_touch_an_upload() {
    let dir = scratch_dir("resumable-auth-");
    let token_file = dir.path().join("admin_token");
    std::fs::write(&token_file, format!("{ADMIN}\n")).expect("token file");
    let site = Site::start(SiteOpts {
        readers: 1,
        env: vec![(
            "BROADCASTER_ADMIN_TOKEN_FILE",
            token_file.display().to_string(),
        )],
        ..SiteOpts::default()
    });
    let bc = &site.bc;
    let a = make_token(bc, json!({"name": "a", "scopes": ["upload", "read"]})).await;
    let b = make_token(bc, json!({"name": "b", "scopes": ["upload", "read"]})).await;
    let read = make_token(bc, json!({"name": "r", "scopes": ["read"]})).await;
    let alice = make_token(
        bc,
        json!({"name": "alice", "scopes": ["upload"], "prefix": "alice-"}),
    )
    .await;
    let data = gen_bytes(701, (2 * MIB) as usize);
    let len = data.len() as u64;
    let create = |tus: Tus, name: &'static str| async move {
        tus.post(
            "/uploads",
            &[
                ("Upload-Length", &len.to_string()),
                ("Upload-Metadata", &metadata(name)),
            ],
            None,
        )
        .await
    };
    let ta = site.tus().token(&a);
    let tb = site.tus().token(&b);
    let anon = site.tus();

    let mut wrong = Vec::new();
    for (who, tus, name, want) in [
        ("no token", anon.clone(), "x.bin", 401),
        ("a read-only token", site.tus().token(&read), "x.bin", 403),
        (
            "alice- outside her prefix",
            site.tus().token(&alice),
            "bob.bin",
            403,
        ),
        (
            "alice- inside her prefix",
            site.tus().token(&alice),
            "alice-1.bin",
            201,
        ),
    ] {
        let r = create(tus, name).await;
        if r.status != want {
            wrong.push(format!("creation of {name} by {who}: {r}, want {want}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    let r = create(ta.clone(), "owned.bin").await;
    assert_eq!(r.status, 201, "{r}");
    let path = upload_path(&r);
    let m = MIB as usize;
    let r = ta.patch(&path, 0, &data[..m], &[]).await;
    assert_eq!((r.status, r.offset()), (204, Some(MIB)), "{r}");

    for (who, tus, want) in [("token B", &tb, 403), ("no token", &anon, 401)] {
        let checks = [
            ("HEAD", tus.head(&path).await.status),
            // A small body: a refusal answered before the body is read must reach the client.
            (
                "PATCH",
                tus.patch(&path, MIB, &data[m..m + 64 * KIB as usize], &[])
                    .await
                    .status,
            ),
            ("GET", tus.info(&path).await.status),
            ("DELETE", tus.delete(&path).await.status),
        ];
        for (method, got) in checks {
            if got != want {
                wrong.push(format!("{method} {path} with {who}: {got}, want {want}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // Nothing the others tried changed the upload; its owner carries on.
    assert_eq!(
        ta.offset(&path).await,
        MIB,
        "another token's PATCH moved the offset"
    );
    let v = ta.info(&path).await;
    assert_eq!(
        (v.status, v.json()["state"].clone()),
        (200, json!("open")),
        "{v}"
    );
    ta.finish(&path, &data, MIB).await;
    let view = ta.wait_state(&path, "committed", QUICK).await;
    assert_committed(&view, "owned.bin", &data, 1);
    let r = tb.info(&path).await;
    assert_eq!(r.status, 403, "GET of a committed upload with token B: {r}");

    // DELETE by its owner.
    let r = create(ta.clone(), "owned-2.bin").await;
    assert_eq!(r.status, 201, "{r}");
    let path = upload_path(&r);
    assert_eq!(tb.delete(&path).await.status, 403);
    let r = ta.delete(&path).await;
    assert_eq!(r.status, 204, "DELETE by the owner: {r}");
    assert_eq!(ta.head(&path).await.status, 404);
}

// ---------------------------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------------------------

/// Notes in `wrong` when `r` is not `want` (with a JSON `error` when `json_error`).
fn check(wrong: &mut Vec<String>, what: &str, r: &Resp, want: u16, json_error: bool) {
    if r.status != want || (json_error && r.error().is_none()) {
        wrong.push(format!(
            "{what}: {r}, want {want}{}",
            if json_error { " with a JSON error" } else { "" }
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_clear_errors() {
    let site = Site::start(SiteOpts {
        readers: 1,
        ..SiteOpts::default()
    });
    let tus = site.tus();
    let mut wrong = Vec::new();
    let mut expect = |what: &str, r: &Resp, want: u16, json_error: bool| {
        check(&mut wrong, what, r, want, json_error)
    };

    // Creation.
    let r = tus.post("/uploads", &[("Upload-Length", "10")], None).await;
    expect("creation without a name", &r, 400, true);
    let r = tus
        .post("/uploads?name=..", &[("Upload-Length", "10")], None)
        .await;
    expect("creation named `..`", &r, 400, true);
    let r = tus
        .post(
            "/uploads",
            &[
                ("Upload-Length", "10"),
                ("Upload-Metadata", &metadata("a/b")),
            ],
            None,
        )
        .await;
    expect("creation named `a/b`", &r, 400, true);
    let r = tus
        .post("/uploads", &[("Upload-Metadata", &metadata("x.bin"))], None)
        .await;
    expect(
        "creation without Upload-Length or Upload-Defer-Length",
        &r,
        400,
        false,
    );
    for bad in ["-5", "ten", "1e3"] {
        let r = tus
            .post(
                "/uploads",
                &[
                    ("Upload-Length", bad),
                    ("Upload-Metadata", &metadata("x.bin")),
                ],
                None,
            )
            .await;
        expect(
            &format!("creation with Upload-Length: {bad}"),
            &r,
            400,
            false,
        );
    }

    // A good upload, named by the query this time.
    let r = tus
        .post("/uploads?name=good.bin", &[("Upload-Length", "10")], None)
        .await;
    assert_eq!(r.status, 201, "creation with ?name=: {r}");
    let path = upload_path(&r);

    // Appends.
    let no_ct = send(
        tus.request(Method::PATCH, &path)
            .header("Upload-Offset", "0")
            .body(b"0123456789".to_vec()),
        "PATCH without Content-Type",
    )
    .await;
    expect("PATCH without Content-Type", &no_ct, 415, false);
    let text = send(
        tus.request(Method::PATCH, &path)
            .header("Upload-Offset", "0")
            .header(CONTENT_TYPE, "text/plain")
            .body(b"0123456789".to_vec()),
        "PATCH as text/plain",
    )
    .await;
    expect("PATCH as text/plain", &text, 415, false);
    for bad in ["-1", "abc", "0x10", ""] {
        let r = send(
            tus.request(Method::PATCH, &path)
                .header("Upload-Offset", bad)
                .header(CONTENT_TYPE, TUS_CT)
                .body(b"0123456789".to_vec()),
            "PATCH with a bad offset",
        )
        .await;
        expect(
            &format!("PATCH with Upload-Offset: {bad:?}"),
            &r,
            400,
            false,
        );
    }
    let r = send(
        tus.request(Method::PATCH, &path)
            .header(CONTENT_TYPE, TUS_CT)
            .body(b"0123456789".to_vec()),
        "PATCH without Upload-Offset",
    )
    .await;
    expect("PATCH without Upload-Offset", &r, 400, false);

    // Unknown ids.
    let unknown = format!("/uploads/{}", "0123456789abcdef".repeat(2));
    expect(
        "HEAD of an unknown id",
        &tus.head(&unknown).await,
        404,
        false,
    );
    expect(
        "PATCH of an unknown id",
        &tus.patch(&unknown, 0, b"0123456789", &[]).await,
        404,
        false,
    );
    expect(
        "GET of an unknown id",
        &tus.info(&unknown).await,
        404,
        false,
    );
    expect(
        "DELETE of an unknown id",
        &tus.delete(&unknown).await,
        404,
        false,
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // None of that touched the good upload.
    assert_eq!(
        tus.offset(&path).await,
        0,
        "a refused request moved the offset"
    );
    tus.finish(&path, b"0123456789", 0).await;
    let view = tus.wait_state(&path, "committed", QUICK).await;
    assert_committed(&view, "good.bin", b"0123456789", 1);
}

/// The exact window in which a crash once lost a ring upload: a checkpoint left a partial last chunk
/// on the ring, the next append completed that chunk, and the broadcaster died before checkpointing again.
/// The test waits until the completed chunk is on the nodes while the recorded offset still ends inside it,
/// kills the broadcaster there, and resumes: the partial chunk the record names must still be readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_a_partial_ring_chunk_was_completed_loses_nothing() {
    let checkpoint = 160 * KIB;
    let mut site = Site::start(SiteOpts {
        readers: 1,
        ring: true,
        env: vec![(
            "BROADCASTER_RESUMABLE_CHECKPOINT_BYTES",
            checkpoint.to_string(),
        )],
        ..SiteOpts::default()
    });
    let name = "partial-tail.bin";
    let data = Bytes::from(gen_bytes(707, (4 * MIB) as usize));
    let tus = site.tus();
    let path = tus.create(name, data.len() as u64).await;
    let id = id_of(&path).to_owned();
    // Ends 32 KiB into chunk 4: the record names a partial chunk.
    let first = 4 * RING_CHUNK + 32 * KIB;
    let r = tus.patch(&path, 0, &data[..first as usize], &[]).await;
    assert_eq!((r.status, r.offset()), (204, Some(first)), "{r}");

    let sent = Arc::new(AtomicU64::new(0));
    let rest = data.slice(first as usize..);
    let req = tus
        .patch_request(&path, first)
        .header(CONTENT_LENGTH, rest.len().to_string())
        .body(paced(
            rest,
            8 * KIB as usize,
            Duration::from_millis(20),
            sent,
        ));
    let slow = tokio::spawn(async move { req.send().await.map(|r| r.status().as_u16()) });

    // Wait for: a whole chunk under the index the recorded offset ends inside.
    let http = client();
    let deadline = Instant::now() + Duration::from_secs(60);
    let caught = loop {
        assert!(
            Instant::now() < deadline,
            "never saw a completed chunk past the checkpoint"
        );
        let offset = tus.offset(&path).await;
        let (index, tail) = (offset / RING_CHUNK, offset % RING_CHUNK);
        let key = format!("raw.{id}/{index:08}");
        let mut whole = false;
        for n in &site.nodes {
            let v: Value = http
                .get(format!("http://{}/v1/blobs?prefix=raw.{id}", n.addr()))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            whole |= v["blobs"]
                .as_array()
                .unwrap()
                .iter()
                .any(|b| b["key"] == key && b["bytes"] == RING_CHUNK);
        }
        if tail != 0 && whole && tus.offset(&path).await == offset {
            break offset;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    site.bc.proc.kill9();
    let _ = slow.await;
    site.restart_broadcaster();
    let tus = site.tus();
    let o = tus.offset(&path).await;
    assert!(o >= caught, "the offset went back: {caught} → {o}");
    tus.finish(&path, &data, o).await;
    let view = tus.wait_state(&path, "committed", QUICK).await;
    assert_committed(&view, name, &data, 2);
    assert_everywhere(&site, name, &data).await;
}
