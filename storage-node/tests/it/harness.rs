//! Starting and stopping real `storage-node` processes, plus small HTTP helpers.
//!
//! Every node is started on `127.0.0.1` with port 0 and its own data directory; its address is read from
//! the `listening on ADDR` log line. A node is stopped by PID when its guard is dropped (SIGTERM, then
//! SIGKILL after 5 s). Nothing this module did not start is ever signalled.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a node may take to print its `listening on` line.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a node may take to exit after SIGTERM before it is SIGKILLed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// The binary under test, built by cargo for this integration test.
pub const BIN: &str = env!("CARGO_BIN_EXE_storage-node");

/// A command for the binary with a hermetic environment: no inherited `STORAGE_NODE_*`, proxy or
/// `RUST_LOG` variables, plain-text logs.
pub fn command() -> Command {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy().to_ascii_uppercase();
        if k.starts_with("STORAGE_NODE_") || k.ends_with("_PROXY") || k == "RUST_LOG" {
            cmd.env_remove(&key);
        }
    }
    cmd.env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Everything a child printed (stdout and stderr interleaved by line; stderr lines tagged).
type Log = Arc<Mutex<String>>;

fn parse_listening(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("listening on ")? + "listening on ".len()..];
    let token: String = rest
        .chars()
        .take_while(|c| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']'))
        .collect();
    token.parse().ok()
}

fn drain<R: Read + Send + 'static>(
    pipe: R,
    log: Log,
    tx: mpsc::Sender<SocketAddr>,
    tag: &'static str,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf);
                    if tag.is_empty() {
                        if let Some(addr) = parse_listening(&line) {
                            let _ = tx.send(addr);
                        }
                    }
                    if let Ok(mut l) = log.lock() {
                        l.push_str(tag);
                        l.push_str(&line);
                        if !line.ends_with('\n') {
                            l.push('\n');
                        }
                    }
                }
            }
        }
    })
}

/// A running storage node with its data directory. Dropping it stops the process by PID.
#[derive(Debug)]
pub struct Node {
    child: Child,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    log: Log,
    exited: Option<ExitStatus>,
    _tmp: Option<TempDir>,
}

impl Node {
    /// A node on a fresh temporary directory.
    pub fn start() -> Node {
        Self::start_with(&[])
    }

    /// A node on a fresh temporary directory with extra `STORAGE_NODE_*` variables.
    pub fn start_with(env: &[(&str, &str)]) -> Node {
        let tmp = tempfile::Builder::new()
            .prefix("distributary-storage-")
            .tempdir()
            .expect("tempdir");
        let mut node = Self::start_in(tmp.path(), env);
        node._tmp = Some(tmp);
        node
    }

    /// A node on an existing directory, which the caller keeps alive (for restarts).
    pub fn start_in(data_dir: &Path, env: &[(&str, &str)]) -> Node {
        let mut cmd = command();
        cmd.env("STORAGE_NODE_HTTP_HOST", "127.0.0.1")
            .env("STORAGE_NODE_HTTP_PORT", "0")
            .env("STORAGE_NODE_DATA_DIR", data_dir)
            .env("STORAGE_NODE_SHUTDOWN_GRACE_SECS", "2");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn storage-node");
        let log: Log = Arc::default();
        let (tx, rx) = mpsc::channel();
        drain(
            child.stdout.take().expect("stdout"),
            log.clone(),
            tx.clone(),
            "",
        );
        drain(
            child.stderr.take().expect("stderr"),
            log.clone(),
            tx,
            "[stderr] ",
        );
        let deadline = Instant::now() + START_TIMEOUT;
        let dump = |log: &Log| log.lock().map(|l| l.clone()).unwrap_or_default();
        let addr = loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(addr) => break addr,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait().ok();
                    panic!(
                        "storage-node exited ({status:?}) before listening:\n{}",
                        dump(&log)
                    );
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                if let Ok(addr) = rx.try_recv() {
                    break addr;
                }
                panic!(
                    "storage-node exited ({status}) before listening:\n{}",
                    dump(&log)
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "storage-node did not log `listening on` in time:\n{}",
                    dump(&log)
                );
            }
        };
        Node {
            child,
            addr,
            data_dir: data_dir.to_path_buf(),
            log,
            exited: None,
            _tmp: None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn blob_url(&self, key: &str) -> String {
        self.url(&format!("/v1/blobs/{key}"))
    }

    pub fn blob_path(&self, key: &str) -> PathBuf {
        self.data_dir.join("blobs").join(key)
    }

    pub fn staging_dir(&self) -> PathBuf {
        self.data_dir.join("staging")
    }

    /// Files left in staging.
    pub fn staging_count(&self) -> usize {
        std::fs::read_dir(self.staging_dir())
            .map(|d| d.count())
            .unwrap_or(0)
    }

    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    fn signal(&mut self, sig: &str) {
        if self.exited.is_some() {
            return;
        }
        if let Ok(Some(status)) = self.child.try_wait() {
            self.exited = Some(status);
            return;
        }
        let _ = Command::new("kill")
            .args(["-s", sig, &self.child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// SIGTERM, then wait up to [`STOP_TIMEOUT`] (SIGKILL after that); returns the exit status.
    pub async fn stop(&mut self) -> Option<ExitStatus> {
        self.signal("TERM");
        let deadline = Instant::now() + STOP_TIMEOUT;
        while self.exited.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exited = Some(status);
                break;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.exited
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- storage-node log -----\n{}----- end -----",
                self.log()
            );
        }
        if self.exited.is_some() {
            return;
        }
        self.signal("TERM");
        let deadline = Instant::now() + STOP_TIMEOUT;
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

/// Runs the binary to completion with `args` and no `STORAGE_NODE_*` variables beyond `env`; returns its
/// exit status, stdout and stderr.
pub async fn run_cli(args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String, String) {
    let mut cmd = tokio::process::Command::from(command());
    cmd.args(args).kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("storage-node exits within 60 s")
        .expect("run storage-node");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An HTTP client that never uses a proxy.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
}

/// Deterministic pseudo-random bytes (xorshift), so failures are reproducible.
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

pub fn sha_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Sends a request line as written (no client-side path normalisation, so `..` reaches the server) and
/// returns the status code and body.
pub async fn raw_request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    body: &[u8],
) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    stream.write_all(body).await.expect("write");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.expect("read");
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}
