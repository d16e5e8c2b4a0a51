//! The S3 sink against a real S3-compatible server: `s3s-fs` (0.14.1) on loopback, started per test on a
//! free port with its own root directory, stopped by PID. Install it with
//! `cargo install s3s-fs --version 0.14.1 --features binary --locked` (build/test.sh does).
//!
//! s3s-fs keeps bucket `B` as directory `ROOT/B` (object `k` is the file `ROOT/B/k`) and an open multipart
//! upload as files directly under `ROOT`: `.upload-{id}.json`, `.upload_id-{id}.part-{n}` and
//! `.bucket-….upload-{id}.metadata.json` (plus `.tmp.*.internal.part` while a part is being written). "No
//! open multipart upload" is checked as "none of these files".

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener as StdTcpListener, TcpStream as StdTcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::Value;
use tempfile::TempDir;
use tokio::io::AsyncWriteExt;

const BUCKET: &str = "archive";
const ACCESS_KEY: &str = "distributary-test";
const SECRET_KEY: &str = "distributary-test-secret";
const MIB: usize = 1 << 20;

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("reader crate has a parent directory")
        .to_path_buf()
}

/// The `broadcaster` binary, built once per test process into this test's target directory (as
/// broadcaster/tests/it/harness.rs does it).
fn broadcaster_bin() -> PathBuf {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let built = BIN.get_or_init(|| {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .ok_or("test executable lives in target/<profile>/deps")?
            .to_path_buf();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(workspace_root())
            .args(["build", "--bins", "-p", "broadcaster"]);
        match dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => {}
            Some("release") => {
                cmd.arg("--release");
            }
            Some(other) => {
                cmd.args(["--profile", other]);
            }
        }
        // The package's compile-time variables would make build scripts think something changed.
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if k.starts_with("CARGO_PKG_")
                || k.starts_with("CARGO_BIN_")
                || matches!(
                    k.as_ref(),
                    "CARGO_MANIFEST_DIR"
                        | "CARGO_MANIFEST_PATH"
                        | "CARGO_MANIFEST_LINKS"
                        | "CARGO_CRATE_NAME"
                        | "CARGO_PRIMARY_PACKAGE"
                        | "CARGO_TARGET_TMPDIR"
                        | "CARGO_RUSTC_CURRENT_DIR"
                        | "OUT_DIR"
                )
            {
                cmd.env_remove(&key);
            }
        }
        if let Some(target_dir) = dir.parent() {
            if target_dir.join("CACHEDIR.TAG").exists() {
                cmd.env("CARGO_TARGET_DIR", target_dir);
            }
        }
        let out = cmd.output().map_err(|e| format!("cannot run cargo: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "cargo build --bins -p broadcaster failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let bin = dir.join(format!("broadcaster{}", std::env::consts::EXE_SUFFIX));
        if bin.is_file() {
            Ok(bin)
        } else {
            Err(format!("{} missing after cargo build", bin.display()))
        }
    });
    match built {
        Ok(p) => p.clone(),
        Err(e) => panic!("{e}"),
    }
}

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

/// A command with no inherited `READER_*`/`BROADCASTER_*`/proxy variables.
fn service_command(bin: &Path) -> Command {
    let mut cmd = Command::new(bin);
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy().to_ascii_uppercase();
        if k.starts_with("BROADCASTER_")
            || k.starts_with("READER_")
            || k.ends_with("_PROXY")
            || k == "RUST_LOG"
            || k.starts_with("AWS_")
        {
            cmd.env_remove(&key);
        }
    }
    cmd.env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env("RUST_BACKTRACE", "0")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

type Log = Arc<Mutex<String>>;

fn drain<R: Read + Send + 'static>(pipe: R, log: Log, tx: mpsc::Sender<SocketAddr>) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line).into_owned();
                    if let Some(rest) = text.split("listening on ").nth(1) {
                        let token: String = rest
                            .trim_start_matches("http://")
                            .chars()
                            .take_while(|c| c.is_ascii_hexdigit() || matches!(c, '.' | ':'))
                            .collect();
                        if let Ok(addr) = token.trim_end_matches(['.', ':']).parse() {
                            let _ = tx.send(addr);
                        }
                    }
                    log.lock().unwrap().push_str(&text);
                }
            }
        }
    });
}

/// A child we started; dropping it stops it by PID (SIGTERM, SIGKILL after 10 s).
#[derive(Debug)]
struct Proc {
    label: String,
    child: Child,
    addr: SocketAddr,
    log: Log,
}

impl Proc {
    /// Spawns `cmd` and waits for its `listening on ADDR` line.
    fn start(label: &str, mut cmd: Command) -> Proc {
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {label}: {e}"));
        let log: Log = Arc::default();
        let (tx, rx) = mpsc::channel();
        drain(child.stdout.take().unwrap(), log.clone(), tx.clone());
        drain(child.stderr.take().unwrap(), log.clone(), tx);
        let deadline = Instant::now() + Duration::from_secs(60);
        let addr = loop {
            if let Ok(addr) = rx.recv_timeout(Duration::from_millis(50)) {
                break addr;
            }
            if let Ok(Some(status)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "{label} exited ({status}) before listening:\n{}",
                    log.lock().unwrap()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{label} did not log `listening on`:\n{}",
                log.lock().unwrap()
            );
        };
        Proc {
            label: label.into(),
            child,
            addr,
            log,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// SIGTERM and wait for the exit status.
    fn terminate(&mut self) -> Option<ExitStatus> {
        let _ = Command::new("kill")
            .args(["-s", "TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// CPU time used so far (user + system), in seconds (at the usual 100 ticks per second).
    fn cpu_secs(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        // Fields after the command name, which is in parentheses and may contain spaces.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        ticks as f64 / 100.0
    }

    /// Peak resident set (VmHWM) in KiB.
    fn vm_hwm_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/PID/status")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- log of {} -----\n{}", self.label, self.log());
        }
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-s", "TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    StdTcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An s3s-fs server with bucket [`BUCKET`], on a free loopback port.
#[derive(Debug)]
struct S3Server {
    child: Child,
    port: u16,
    root: TempDir,
}

impl S3Server {
    fn start() -> S3Server {
        let root = tempfile::Builder::new()
            .prefix("distributary-s3-")
            .tempdir()
            .unwrap();
        std::fs::create_dir(root.path().join(BUCKET)).unwrap();
        for _attempt in 0..5 {
            let port = free_port();
            let mut child = Command::new(s3s_fs_bin())
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
                .arg(root.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn s3s-fs");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if StdTcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return S3Server { child, port, root };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break; // port taken meanwhile: try another
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

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn object_path(&self, key: &str) -> PathBuf {
        self.root.path().join(BUCKET).join(key)
    }

    /// Files of open multipart uploads (and half-written parts) in the server's root.
    fn multipart_leftovers(&self) -> Vec<String> {
        std::fs::read_dir(self.root.path())
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| {
                n.starts_with(".upload") || n.starts_with(".tmp.") || n.contains(".upload-")
            })
            .collect()
    }

    /// Every object key in the bucket.
    fn objects(&self) -> Vec<String> {
        let base = self.root.path().join(BUCKET);
        let mut out = Vec::new();
        let mut todo = vec![base.clone()];
        while let Some(d) = todo.pop() {
            for e in std::fs::read_dir(&d).unwrap().filter_map(Result::ok) {
                if e.file_type().unwrap().is_dir() {
                    todo.push(e.path());
                } else {
                    let rel = e.path().strip_prefix(&base).unwrap().to_path_buf();
                    out.push(rel.to_string_lossy().into_owned());
                }
            }
        }
        out.sort();
        out
    }

    /// Waits until no multipart upload is open; panics with what is left otherwise.
    async fn assert_no_leftovers(&self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let left = self.multipart_leftovers();
            if left.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: open multipart uploads left in s3s-fs: {left:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Environment of an S3 reader writing under `prefix` to `s3`.
fn s3_env(s3: &S3Server, prefix: &str) -> Vec<(String, String)> {
    [
        ("READER_SINK", "s3"),
        ("READER_S3_ENDPOINT", &s3.endpoint()),
        ("READER_S3_BUCKET", BUCKET),
        ("READER_S3_REGION", "us-east-1"),
        ("READER_S3_ACCESS_KEY_ID", ACCESS_KEY),
        ("READER_S3_SECRET_ACCESS_KEY", SECRET_KEY),
        ("READER_S3_PREFIX", prefix),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// A reader with its own data directory (kept alive with it).
struct Reader {
    proc: Proc,
    _dir: TempDir,
}

impl Reader {
    fn command(env: &[(String, String)], dir: &Path) -> Command {
        let mut cmd = service_command(Path::new(env!("CARGO_BIN_EXE_reader")));
        cmd.env("READER_HTTP_HOST", "127.0.0.1")
            .env("READER_HTTP_PORT", "0")
            .env("READER_DATA_DIR", dir)
            .current_dir(dir);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }

    fn start(env: &[(String, String)]) -> Reader {
        let dir = tempfile::Builder::new()
            .prefix("distributary-s3-reader-")
            .tempdir()
            .unwrap();
        let proc = Proc::start("reader", Self::command(env, dir.path()));
        Reader { proc, _dir: dir }
    }

    fn s3(s3: &S3Server, prefix: &str) -> Reader {
        Self::start(&s3_env(s3, prefix))
    }

    fn target(&self) -> String {
        self.proc.addr.to_string()
    }
}

/// A broadcaster fanning out to `targets`, metadata in its own SQLite file.
struct Broadcaster {
    proc: Proc,
    _dir: TempDir,
}

impl Broadcaster {
    fn start(targets: &[String], env: &[(&str, &str)]) -> Broadcaster {
        let dir = tempfile::Builder::new()
            .prefix("distributary-s3-bc-")
            .tempdir()
            .unwrap();
        let mut cmd = service_command(&broadcaster_bin());
        cmd.env("BROADCASTER_HTTP_HOST", "127.0.0.1")
            .env("BROADCASTER_HTTP_PORT", "0")
            .env("BROADCASTER_HOST_LIST", targets.join(";"))
            .env(
                "BROADCASTER_METADATA",
                format!("sqlite:{}", dir.path().join("meta.db").display()),
            )
            .env("BROADCASTER_WEB_DIR", workspace_root().join("web"))
            .current_dir(dir.path());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Broadcaster {
            proc: Proc::start("broadcaster", cmd),
            _dir: dir,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Data and HTTP helpers
// ---------------------------------------------------------------------------------------------

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap()
}

/// Percent-encodes a name as one URL path segment.
fn encode(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `len` deterministic pseudo-random bytes.
fn gen_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A body of `total` bytes generated as it is sent: 1 MiB slices at shifting offsets of a 9 MiB random
/// pool, so no two parts are alike and nothing near the total is ever held in memory.
fn generated_body(seed: u64, total: usize) -> reqwest::Body {
    let pool = Bytes::from(gen_bytes(seed, 9 * MIB));
    let chunks = (0..total.div_ceil(MIB)).map(move |i| {
        let len = MIB.min(total - i * MIB);
        let off = (i * 524_287) % (8 * MIB);
        Ok::<Bytes, std::io::Error>(pool.slice(off..off + len))
    });
    reqwest::Body::wrap_stream(futures_util::stream::iter(chunks))
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

fn sha256_file(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

fn upload_id(n: u8) -> String {
    format!("{:032x}", 0xd15_7000_0000_u128 + u128::from(n))
}

async fn json(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, v)
}

/// Sends a request head announcing `announced` bytes and `send` bytes of body, then drops the
/// connection: a client that goes away mid-upload.
async fn put_and_disconnect(addr: SocketAddr, path: &str, announced: usize, send: usize) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head =
        format!("PUT {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {announced}\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    let data = gen_bytes(7, send);
    for c in data.chunks(256 * 1024) {
        if s.write_all(c).await.is_err() {
            break;
        }
    }
    // Let the reader upload what it got, so the abort has parts to remove.
    tokio::time::sleep(Duration::from_millis(700)).await;
    drop(s);
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// 1 GiB streamed through a real broadcaster into S3: the object's SHA-256 is the upload's, and the
/// reader's peak RSS stays under 64 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_through_the_broadcaster_in_bounded_memory() {
    const TOTAL: usize = 1 << 30;
    let s3 = S3Server::start();
    let reader = Reader::s3(&s3, "big/");
    let bc = Broadcaster::start(&[reader.target()], &[]);
    let started = Instant::now();
    let resp = client()
        .put(bc.proc.url("/broadcast/one-gib.bin"))
        .body(generated_body(42, TOTAL))
        .send()
        .await
        .unwrap();
    let (status, summary) = json(resp).await;
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(status, 201, "{summary}");
    assert_eq!(summary["size"], TOTAL as u64, "{summary}");
    assert_eq!(summary["targets"][0]["state"], "committed", "{summary}");
    let hwm_kib = reader.proc.vm_hwm_kib();
    let object = s3.object_path("big/one-gib.bin");
    assert_eq!(std::fs::metadata(&object).unwrap().len(), TOTAL as u64);
    assert_eq!(
        sha256_file(&object),
        summary["sha256"].as_str().unwrap(),
        "object differs from the upload"
    );
    println!(
        "1 GiB via broadcaster → S3 reader → s3s-fs: {secs:.1} s ({:.0} MiB/s); reader VmHWM {:.1} MiB, \
         reader CPU {:.1} s",
        1024.0 / secs,
        hwm_kib as f64 / 1024.0,
        reader.proc.cpu_secs()
    );
    assert!(
        hwm_kib < 64 * 1024,
        "reader peak RSS {hwm_kib} KiB is not under 64 MiB"
    );
    s3.assert_no_leftovers("after a committed upload").await;
    assert_eq!(s3.objects(), vec!["big/one-gib.bin".to_owned()]);
}

/// A client that goes away mid-upload, straight to the reader or through the broadcaster: no object,
/// no open multipart upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_leaves_nothing() {
    let s3 = S3Server::start();
    let reader = Reader::s3(&s3, "");
    // Straight to the reader: 20 MiB of an announced 1 GiB (two 8 MiB parts uploaded before the cut).
    let path = format!("/v1/uploads/{}/cut.bin", upload_id(1));
    put_and_disconnect(reader.proc.addr, &path, 1 << 30, 20 * MIB).await;
    s3.assert_no_leftovers("client gone mid-stage").await;
    assert!(s3.objects().is_empty(), "{:?}", s3.objects());
    // The reader notices the cut when its read of the body fails, which may come just after the client's
    // socket closed.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !reader.proc.log().contains("staging failed") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        reader.proc.log().contains("staging failed"),
        "{}",
        reader.proc.log()
    );

    // Through the broadcaster, which aborts its targets.
    let bc = Broadcaster::start(&[reader.target()], &[]);
    put_and_disconnect(bc.proc.addr, "/broadcast/cut2.bin", 1 << 30, 20 * MIB).await;
    s3.assert_no_leftovers("client gone mid-broadcast").await;
    assert!(s3.objects().is_empty(), "{:?}", s3.objects());

    // An upload after that still works (nothing stuck).
    let resp = client()
        .put(bc.proc.url("/broadcast/after.bin"))
        .body(gen_bytes(3, 3 * MIB))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(s3.objects(), vec!["after.bin".to_owned()]);
}

/// A fake target that stages every byte but reports a wrong checksum: the broadcaster must refuse it.
async fn lying_target() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    use axum::routing::{delete, post, put};
    let app = axum::Router::new()
        .route(
            "/v1/uploads/{id}/{name}",
            put(|body: axum::body::Body| async move {
                let mut n = 0u64;
                let mut s = body.into_data_stream();
                while let Some(Ok(c)) = s.next().await {
                    n += c.len() as u64;
                }
                axum::Json(serde_json::json!({ "bytes": n, "xxh3": "0".repeat(32) }))
            }),
        )
        .route(
            "/v1/uploads/{id}/commit",
            post(|| async { axum::Json(serde_json::json!({})) }),
        )
        .route(
            "/v1/uploads/{id}",
            delete(|| async { axum::http::StatusCode::NO_CONTENT }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, task)
}

/// A client digest that does not match, a target whose copy differs, a target that is down: the
/// broadcaster aborts, and the S3 reader's fully staged multipart upload is aborted with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_mismatch_and_missed_quorum_abort() {
    let s3 = S3Server::start();
    let reader = Reader::s3(&s3, "q/");
    let data = gen_bytes(11, 12 * MIB + 5);

    // 1. The client's digest is wrong: 422.
    let bc = Broadcaster::start(&[reader.target()], &[]);
    let resp = client()
        .put(bc.proc.url("/broadcast/wrong-digest.bin"))
        .header("X-Content-SHA256", sha256_hex(b"something else"))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    let (status, summary) = json(resp).await;
    assert_eq!(status, 422, "{summary}");
    s3.assert_no_leftovers("digest mismatch").await;
    assert!(s3.objects().is_empty(), "{:?}", s3.objects());
    drop(bc);

    // 2. Another target reports a different copy: quorum (both) missed, 502, S3 upload aborted after it
    //    was fully staged.
    let (liar, liar_task) = lying_target().await;
    let bc = Broadcaster::start(&[reader.target(), liar.to_string()], &[]);
    let resp = client()
        .put(bc.proc.url("/broadcast/no-quorum.bin"))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    let (status, summary) = json(resp).await;
    assert_eq!(status, 502, "{summary}");
    s3.assert_no_leftovers("quorum missed (bad copy)").await;
    assert!(s3.objects().is_empty(), "{:?}", s3.objects());
    // The broadcaster answers before it waits for the target's abort to be acknowledged.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !reader.proc.log().contains("aborted") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        reader.proc.log().contains("aborted"),
        "{}",
        reader.proc.log()
    );
    liar_task.abort();
    drop(bc);

    // 3. Another target is down.
    let dead = format!("127.0.0.1:{}", free_port());
    let bc = Broadcaster::start(&[reader.target(), dead], &[]);
    let resp = client()
        .put(bc.proc.url("/broadcast/dead-peer.bin"))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    let (status, summary) = json(resp).await;
    assert_eq!(status, 502, "{summary}");
    s3.assert_no_leftovers("quorum missed (dead target)").await;
    assert!(s3.objects().is_empty(), "{:?}", s3.objects());
}

/// Empty, small and multi-part uploads with awkward names, through the broadcaster and the seed's
/// `POST /upload`; read back from the bucket and through `GET /files/{name}` (Range too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_small_and_unicode_uploads() {
    let s3 = S3Server::start();
    let reader = Reader::s3(&s3, "dir/sub-");
    let bc = Broadcaster::start(&[reader.target()], &[]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty.bin", Vec::new()),
        ("one byte", vec![b'x']),
        ("sma ll ✓ файл.txt", b"hello, s3".to_vec()),
        ("two parts 日本.bin", gen_bytes(5, 8 * MIB + 123)),
    ];
    for (name, data) in &cases {
        let resp = client()
            .put(bc.proc.url(&format!("/broadcast/{}", encode(name))))
            .body(data.clone())
            .send()
            .await
            .unwrap();
        let (status, summary) = json(resp).await;
        assert_eq!(status, 201, "{name}: {summary}");
        assert_eq!(summary["sha256"], sha256_hex(data), "{name}");
        let key = format!("dir/sub-{name}");
        let on_disk = std::fs::read(s3.object_path(&key)).unwrap();
        assert!(on_disk == *data, "{name}: object differs");
        let got = client()
            .get(reader.proc.url(&format!("/files/{}", encode(name))))
            .send()
            .await
            .unwrap();
        assert_eq!(got.status(), 200, "{name}");
        assert!(got.bytes().await.unwrap() == *data, "{name}: GET differs");
    }
    // The seed's single-request contract.
    let mut form =
        b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"seed upload.bin\"\r\n\
Content-Type: application/octet-stream\r\n\r\n"
            .to_vec();
    form.extend_from_slice(&gen_bytes(6, 1000));
    form.extend_from_slice(b"\r\n--XyZ--\r\n");
    let resp = client()
        .post(reader.proc.url("/upload"))
        .header("Content-Type", "multipart/form-data; boundary=XyZ")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        std::fs::read(s3.object_path("dir/sub-seed upload.bin")).unwrap(),
        gen_bytes(6, 1000)
    );
    // Range and 404 through the reader.
    let big = &cases[3].1;
    let resp = client()
        .get(reader.proc.url(&format!("/files/{}", encode(cases[3].0))))
        .header("Range", "bytes=8388600-8388615")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 206);
    assert_eq!(
        resp.bytes().await.unwrap().as_ref(),
        &big[8_388_600..8_388_616]
    );
    let resp = client()
        .get(reader.proc.url("/files/absent.bin"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let resp = client()
        .head(reader.proc.url(&format!("/files/{}", encode(cases[3].0))))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-length"].to_str().unwrap(),
        big.len().to_string()
    );
    s3.assert_no_leftovers("after commits").await;
    assert_eq!(s3.objects().len(), cases.len() + 1);
    let metrics = client()
        .get(reader.proc.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("distributary_reader_commits_total 5"),
        "{metrics}"
    );
}

/// Staged but never committed: an explicit abort, the staging TTL and a shutdown each abort the
/// multipart upload; until then the object is invisible.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_ttl_and_shutdown_leave_nothing() {
    let s3 = S3Server::start();
    let data = gen_bytes(9, 9 * MIB);
    let stage = |reader: &Reader, n: u8, name: &str| {
        let url = reader
            .proc
            .url(&format!("/v1/uploads/{}/{name}", upload_id(n)));
        let body = data.clone();
        async move {
            let (status, report) = json(client().put(url).body(body).send().await.unwrap()).await;
            assert_eq!(status, 200, "{report}");
            assert_eq!(report["bytes"], 9 * MIB as u64);
            assert_eq!(report["xxh3"].as_str().unwrap().len(), 32);
        }
    };

    // Explicit abort (DELETE), idempotent.
    let reader = Reader::s3(&s3, "");
    stage(&reader, 1, "staged.bin").await;
    assert!(
        !s3.multipart_leftovers().is_empty(),
        "parts are stored while staged"
    );
    assert!(s3.objects().is_empty(), "a staged upload is invisible");
    for _ in 0..2 {
        let resp = client()
            .delete(reader.proc.url(&format!("/v1/uploads/{}", upload_id(1))))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 204);
    }
    s3.assert_no_leftovers("DELETE").await;
    let resp = client()
        .post(
            reader
                .proc
                .url(&format!("/v1/uploads/{}/commit", upload_id(1))),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404, "an aborted upload cannot be committed");

    // DELETE racing the start of a stage (the multipart upload may be created after the abort arrived)
    // or arriving mid-stream.
    for n in 10..30u8 {
        let url = reader
            .proc
            .url(&format!("/v1/uploads/{}/race-{n}.bin", upload_id(n)));
        let first = Bytes::from(gen_bytes(u64::from(n), usize::from(n) * 700_000));
        let body = futures_util::stream::once(async move { Ok::<_, std::io::Error>(first) })
            .chain(futures_util::stream::pending());
        let put = tokio::spawn(
            client()
                .put(url)
                .body(reqwest::Body::wrap_stream(body))
                .send(),
        );
        tokio::time::sleep(Duration::from_millis(u64::from(n % 4) * 5)).await;
        let resp = client()
            .delete(reader.proc.url(&format!("/v1/uploads/{}", upload_id(n))))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 204);
        tokio::time::sleep(Duration::from_millis(20)).await;
        put.abort();
    }
    s3.assert_no_leftovers("DELETE racing stages").await;
    assert!(s3.objects().is_empty(), "{:?}", s3.objects());

    // Shutdown aborts what was staged and not committed, and exits 0.
    stage(&reader, 2, "at-shutdown.bin").await;
    let mut reader = reader;
    let status = reader.proc.terminate().expect("reader exits on SIGTERM");
    assert!(status.success(), "{status}");
    s3.assert_no_leftovers("shutdown").await;
    assert!(s3.objects().is_empty());

    // The staging TTL.
    let mut env = s3_env(&s3, "");
    env.push(("READER_STAGING_TTL_SECS".into(), "1".into()));
    let reader = Reader::start(&env);
    stage(&reader, 3, "expires.bin").await;
    s3.assert_no_leftovers("staging TTL").await;
    assert!(
        reader.proc.log().contains("expired"),
        "{}",
        reader.proc.log()
    );
    assert!(s3.objects().is_empty());
}

/// Runs the reader with `env` and expects it to exit non-zero with a message containing every needle.
fn expect_refusal(env: &[(String, String)], needles: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Reader::command(env, dir.path()).spawn().unwrap();
    let mut out = String::new();
    let mut err = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    let all = format!("{out}{err}");
    assert!(!status.success(), "reader started with {env:?}:\n{all}");
    assert!(!all.contains("listening on"), "{all}");
    for n in needles {
        assert!(all.contains(n), "expected {n:?} in:\n{all}");
    }
}

/// Missing or wrong settings stop the reader at start with a message naming what to fix.
#[test]
fn bad_configuration_stops_the_reader() {
    let s3 = S3Server::start();
    let with = |changes: &[(&str, &str)]| {
        let mut env = s3_env(&s3, "");
        for (k, v) in changes {
            env.retain(|(e, _)| e != k);
            if !v.is_empty() {
                env.push((k.to_string(), v.to_string()));
            }
        }
        env
    };
    // No bucket variable; a bucket that does not exist.
    expect_refusal(&with(&[("READER_S3_BUCKET", "")]), &["READER_S3_BUCKET"]);
    expect_refusal(
        &with(&[("READER_S3_BUCKET", "no-such-bucket")]),
        &["READER_S3_BUCKET", "no-such-bucket", "does not exist"],
    );
    // Nothing listens at the endpoint.
    let dead = format!("http://127.0.0.1:{}", free_port());
    expect_refusal(
        &with(&[("READER_S3_ENDPOINT", &dead)]),
        &["READER_S3_ENDPOINT", &dead, "cannot reach"],
    );
    // Wrong secret; unknown access key.
    expect_refusal(
        &with(&[("READER_S3_SECRET_ACCESS_KEY", "not-the-secret")]),
        &["credentials refused", "READER_S3_SECRET_ACCESS_KEY"],
    );
    expect_refusal(
        &with(&[("READER_S3_ACCESS_KEY_ID", "nobody")]),
        &["credentials refused", "READER_S3_ACCESS_KEY_ID"],
    );
    // Malformed values name their variable.
    for (k, v) in [
        ("READER_S3_ENDPOINT", "127.0.0.1:9000"),
        ("READER_S3_PART_SIZE", "1024"),
        ("READER_S3_CONCURRENCY", "0"),
        ("READER_S3_PREFIX", "/leading-slash"),
    ] {
        expect_refusal(&with(&[(k, v)]), &[k]);
    }
    // The secret is never echoed.
    let dir = tempfile::tempdir().unwrap();
    let out = Reader::command(
        &with(&[("READER_S3_SECRET_ACCESS_KEY", "bad secret value")]),
        dir.path(),
    )
    .output()
    .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success());
    assert!(all.contains("READER_S3_SECRET_ACCESS_KEY"), "{all}");
    assert!(!all.contains("bad secret value"), "{all}");
}
