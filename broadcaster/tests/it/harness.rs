//! Starting and stopping real `broadcaster` and `reader` processes, plus small HTTP helpers.
//!
//! Every process is started on `127.0.0.1` with port 0; its address is read from the
//! `listening on ADDR` log line. Processes are stopped by PID when their guard is dropped
//! (SIGTERM, then SIGKILL after 5 s). Nothing this module did not start is ever signalled.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream as StdTcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a process may take to print its `listening on` line.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a process may take to exit after SIGTERM before it is SIGKILLed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Building and locating the binaries
// ---------------------------------------------------------------------------------------------

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("broadcaster crate has a parent directory")
        .to_path_buf()
}

/// `target/<profile>`: the test executable lives in `target/<profile>/deps/`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps")
        .to_path_buf()
}

static BIN_DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();

fn build_binaries() -> Result<PathBuf, String> {
    let dir = profile_dir();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root()).args([
        "build",
        "--bins",
        "-p",
        "broadcaster",
        "-p",
        "reader",
        "-p",
        "storage-node",
    ]);
    match dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(other) => {
            cmd.args(["--profile", other]);
        }
    }
    // Build into the very target directory this test executable came from (this honours
    // CARGO_TARGET_DIR, relative or not). `target/<triple>/<profile>` has no CACHEDIR.TAG
    // one level up; then the inherited environment decides.
    // Cargo and nextest set the package's compile-time variables in the test's environment too
    // (CARGO_MANIFEST_DIR, CARGO_PKG_*, ...). Passed on, build scripts that watch them (ring
    // does) would look changed, and every test run would rebuild half the dependency graph.
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
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run cargo build: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo build --bins -p broadcaster -p reader failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    for name in ["broadcaster", "reader", "storage-node"] {
        let p = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
        if !p.is_file() {
            return Err(format!("{} missing after cargo build", p.display()));
        }
    }
    Ok(dir)
}

/// Path of a workspace binary, building the binaries once per test process.
pub fn bin(name: &str) -> PathBuf {
    match BIN_DIR.get_or_init(build_binaries) {
        Ok(dir) => dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX)),
        Err(e) => panic!("{e}"),
    }
}

/// A command for one of our binaries with a hermetic environment: no inherited
/// `BROADCASTER_*`/`READER_*`/proxy variables, `RUST_LOG=info`, no colours.
pub fn service_command(name: &str) -> Command {
    let mut cmd = Command::new(bin(name));
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy().to_ascii_uppercase();
        if k.starts_with("BROADCASTER_")
            || k.starts_with("READER_")
            || k.starts_with("STORAGE_NODE_")
            || k.ends_with("_PROXY")
            || k == "RUST_LOG"
        {
            cmd.env_remove(&key);
        }
    }
    cmd.env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env("RUST_BACKTRACE", "1")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// Everything a child printed (stdout and stderr interleaved by line).
pub type Log = Arc<Mutex<String>>;

fn parse_listening(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("listening on ")? + "listening on ".len()..];
    let rest = rest.trim_start_matches("http://");
    let token: String = rest
        .chars()
        .take_while(|c| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']'))
        .collect();
    token.trim_end_matches(['.', ':']).parse().ok()
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
                    if let Some(addr) = parse_listening(&line) {
                        let _ = tx.send(addr);
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

/// A child process we started. Dropping it stops it by PID.
#[derive(Debug)]
pub struct Proc {
    pub label: String,
    child: Child,
    pub addr: SocketAddr,
    log: Log,
    exited: Option<ExitStatus>,
}

impl Proc {
    /// Spawns `cmd` and waits for its `listening on` line.
    pub fn start(label: &str, mut cmd: Command) -> Proc {
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {label}: {e}"));
        let log: Log = Arc::default();
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        drain(out, log.clone(), tx.clone(), "");
        drain(err, log.clone(), tx, "[stderr] ");
        let deadline = Instant::now() + START_TIMEOUT;
        let addr = loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(addr) => break addr,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // Both pipes closed: the process is gone.
                    let status = child.wait().ok();
                    panic!(
                        "{label} exited ({status:?}) before logging `listening on`:\n{}",
                        log.lock().map(|l| l.clone()).unwrap_or_default()
                    );
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                // Give the drain threads a moment to pick up the last lines.
                std::thread::sleep(Duration::from_millis(100));
                if let Ok(addr) = rx.try_recv() {
                    break addr;
                }
                panic!(
                    "{label} exited ({status}) before logging `listening on`:\n{}",
                    log.lock().map(|l| l.clone()).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{label} did not log `listening on ADDR` within {START_TIMEOUT:?}:\n{}",
                    log.lock().map(|l| l.clone()).unwrap_or_default()
                );
            }
        };
        Proc {
            label: label.to_string(),
            child,
            addr,
            log,
            exited: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Sends `sig` (e.g. "TERM", "KILL") to this process only, by PID.
    pub fn signal(&mut self, sig: &str) {
        if self.exited.is_some() {
            return;
        }
        if let Ok(Some(status)) = self.child.try_wait() {
            self.exited = Some(status);
            return;
        }
        let status = Command::new("kill")
            .args(["-s", sig, &self.pid().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !matches!(status, Ok(s) if s.success()) && sig == "KILL" {
            let _ = self.child.kill();
        }
    }

    /// SIGKILLs the process and reaps it.
    pub fn kill9(&mut self) {
        self.signal("KILL");
        if self.exited.is_none() {
            self.exited = self.child.wait().ok();
        }
    }

    /// Polls for the exit status (without blocking the async runtime) up to `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.exited.is_some() {
                return self.exited;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exited = Some(status);
                return self.exited;
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- log of {} (pid {}) -----\n{}----- end of log of {} -----",
                self.label,
                self.pid(),
                self.log(),
                self.label
            );
        }
        if self.exited.is_some() {
            return;
        }
        if let Ok(Some(_)) = self.child.try_wait() {
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

/// Runs a command that is expected to exit on its own; returns its status (None if it was
/// still running after `timeout`, in which case it has been killed) and all its output.
pub fn run_to_exit(mut cmd: Command, timeout: Duration) -> (Option<ExitStatus>, String) {
    let mut child = cmd.spawn().expect("spawn");
    let log: Log = Arc::default();
    let (tx, _rx) = mpsc::channel();
    let t1 = drain(
        child.stdout.take().expect("piped stdout"),
        log.clone(),
        tx.clone(),
        "",
    );
    let t2 = drain(
        child.stderr.take().expect("piped stderr"),
        log.clone(),
        tx,
        "[stderr] ",
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = t1.join();
    let _ = t2.join();
    let out = log.lock().map(|l| l.clone()).unwrap_or_default();
    (status, out)
}

// ---------------------------------------------------------------------------------------------
// Reader and broadcaster
// ---------------------------------------------------------------------------------------------

/// A disk reader with its own data directory.
#[derive(Debug)]
pub struct Reader {
    pub proc: Proc,
    pub data_dir: PathBuf,
    // Dropped after `proc` (fields drop in order): the process is gone before its dirs.
    _cwd: TempDir,
    _tmp: Option<TempDir>,
}

impl Reader {
    pub fn start() -> Reader {
        Self::start_with(&[])
    }

    pub fn start_with(env: &[(&str, &str)]) -> Reader {
        let tmp = scratch_dir("distributary-reader-");
        let mut r = Self::start_in(tmp.path(), env);
        r._tmp = Some(tmp);
        r
    }

    /// Starts a reader on an existing data directory (which the caller keeps alive).
    pub fn start_in(data_dir: &Path, env: &[(&str, &str)]) -> Reader {
        let mut cmd = service_command("reader");
        cmd.env("READER_HTTP_HOST", "127.0.0.1")
            .env("READER_HTTP_PORT", "0")
            .env("READER_DATA_DIR", data_dir);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let cwd = scratch_dir("distributary-reader-cwd-");
        cmd.current_dir(cwd.path());
        Reader {
            proc: Proc::start("reader", cmd),
            data_dir: data_dir.to_path_buf(),
            _cwd: cwd,
            _tmp: None,
        }
    }

    /// SIGKILLs this reader and starts another on the same data directory (on a new port) with `env`.
    pub fn restart(&mut self, env: &[(&str, &str)]) {
        self.proc.signal("KILL");
        let tmp = self._tmp.take();
        let mut next = Reader::start_in(&self.data_dir, env);
        next._tmp = tmp;
        *self = next;
    }

    /// The reader as a broadcaster target: `127.0.0.1:PORT`.
    pub fn target(&self) -> String {
        self.proc.addr.to_string()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.proc.addr, path)
    }

    pub fn file_url(&self, name: &str) -> String {
        self.url(&format!("/files/{}", encode_name(name)))
    }

    pub fn files_dir(&self) -> PathBuf {
        self.data_dir.join("files")
    }

    pub fn staging_dir(&self) -> PathBuf {
        self.data_dir.join("staging")
    }

    /// Everything under `staging/` (recursively), empty if the directory does not exist.
    pub fn staging_entries(&self) -> Vec<PathBuf> {
        walk(&self.staging_dir())
    }

    /// Names of the committed files (top level of `files/`).
    pub fn committed_names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.files_dir())
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

/// A fresh temporary directory.
pub fn scratch_dir(prefix: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("tempdir")
}

/// All paths below `dir`, recursively (files and directories). Empty if `dir` is missing.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.filter_map(Result::ok) {
            let p = e.path();
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                todo.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

#[derive(Debug)]
pub struct Broadcaster {
    pub proc: Proc,
    /// The working directory: whatever the broadcaster keeps under relative default paths
    /// (e.g. its metadata store) stays private to this process and is removed afterwards.
    _cwd: TempDir,
}

impl Broadcaster {
    /// Starts a broadcaster fanning out to `targets` (`host:port` strings).
    pub fn start(targets: &[String], env: &[(&str, &str)]) -> Broadcaster {
        let mut cmd = service_command("broadcaster");
        cmd.env("BROADCASTER_HTTP_HOST", "127.0.0.1")
            .env("BROADCASTER_WEB_DIR", workspace_root().join("web"))
            .env("BROADCASTER_HTTP_PORT", "0")
            .env("BROADCASTER_HOST_LIST", targets.join(";"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let cwd = scratch_dir("distributary-broadcaster-");
        cmd.current_dir(cwd.path());
        Broadcaster {
            proc: Proc::start("broadcaster", cmd),
            _cwd: cwd,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.proc.addr, path)
    }

    pub fn put_url(&self, name: &str) -> String {
        self.url(&format!("/broadcast/{}", encode_name(name)))
    }
}

/// `n` readers and a broadcaster targeting all of them (in order).
#[derive(Debug)]
pub struct Cluster {
    pub bc: Broadcaster,
    pub readers: Vec<Reader>,
}

impl Cluster {
    pub fn start(n: usize, bc_env: &[(&str, &str)]) -> Cluster {
        let readers: Vec<Reader> = (0..n).map(|_| Reader::start()).collect();
        let targets: Vec<String> = readers.iter().map(Reader::target).collect();
        let bc = Broadcaster::start(&targets, bc_env);
        Cluster { bc, readers }
    }

    pub fn targets(&self) -> Vec<String> {
        self.readers.iter().map(Reader::target).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Fake targets
// ---------------------------------------------------------------------------------------------

/// A loopback port on which nothing listens (bound, then released).
pub fn dead_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("local_addr").port()
}

/// A target that accepts TCP connections and then never reads from them nor answers.
#[derive(Debug)]
pub struct StallServer {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl StallServer {
    pub fn start() -> StallServer {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.set_nonblocking(true).expect("nonblocking");
        let addr = l.local_addr().expect("local_addr");
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (stop2, accepted2) = (stop.clone(), accepted.clone());
        let thread = std::thread::spawn(move || {
            let mut held: Vec<StdTcpStream> = Vec::new();
            while !stop2.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((s, _)) => {
                        accepted2.fetch_add(1, Ordering::SeqCst);
                        held.push(s);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            drop(held);
        });
        StallServer {
            addr,
            accepted,
            stop,
            thread: Some(thread),
        }
    }

    pub fn target(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for StallServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP helpers
// ---------------------------------------------------------------------------------------------

/// A reqwest client that never uses a proxy and gives up after 5 minutes.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(300))
        .build()
        .expect("reqwest client")
}

/// The body of `GET url` as text; panics (naming `url`) if the request or the body fails.
pub async fn get_text(url: &str) -> String {
    client()
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .text()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: body: {e}"))
}

/// The sum of every sample of counter `name` in `b`'s `/metrics`; `None` when it has none.
pub async fn metric(b: &Broadcaster, name: &str) -> Option<f64> {
    let text = get_text(&b.url("/metrics")).await;
    let labelled = format!("{name}{{");
    let samples: Vec<f64> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(k, _)| *k == name || k.starts_with(&labelled))
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .collect();
    (!samples.is_empty()).then(|| samples.iter().sum())
}

/// Percent-encodes a file name for a URL path segment (unreserved characters stay).
pub fn encode_name(name: &str) -> String {
    use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
    const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    utf8_percent_encode(name, SEGMENT).to_string()
}

/// A response read off a raw socket.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = find(data, b"\r\n") {
        let size_str = String::from_utf8_lossy(&data[..eol]);
        let size_str = size_str.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size_str, 16) else {
            break;
        };
        data = &data[eol + 2..];
        if size == 0 || data.len() < size {
            out.extend_from_slice(&data[..size.min(data.len())]);
            break;
        }
        out.extend_from_slice(&data[..size]);
        data = data.get(size + 2..).unwrap_or(&[]);
    }
    out
}

/// `data` in HTTP/1.1 chunked framing, cut into `piece`-byte chunks (pass the header
/// `Transfer-Encoding: chunked` along with it).
pub fn chunk_encode(data: &[u8], piece: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / piece.max(1) * 8 + 8);
    for c in data.chunks(piece.max(1)) {
        out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// Sends one request on a fresh connection, byte for byte as given (the path is not
/// normalised or re-encoded), and reads the response until the server closes.
///
/// Unlike reqwest, this still reads the response when the server answers early and stops
/// reading the body (then writing fails with EPIPE, but the answer is in the socket).
pub async fn raw_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> RawResponse {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    let mut has_len = false;
    for (k, v) in headers {
        has_len |=
            k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding");
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !has_len && (!body.is_empty() || method == "PUT" || method == "POST") {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");

    let fut = async {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        // The server may answer (and close) before reading everything: ignore write errors.
        if s.write_all(head.as_bytes()).await.is_ok() {
            let _ = s.write_all(body).await;
        }
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf
    };
    let buf = tokio::time::timeout(Duration::from_secs(60), fut)
        .await
        .unwrap_or_else(|_| panic!("no complete response to {method} {path} within 60 s"));
    let end = find(&buf, b"\r\n\r\n").unwrap_or_else(|| {
        panic!(
            "no HTTP response head for {method} {path}: {:?}",
            String::from_utf8_lossy(&buf)
        )
    });
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let raw_body = &buf[end + 4..];
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked")
    });
    let body = if chunked {
        dechunk(raw_body)
    } else {
        raw_body.to_vec()
    };
    RawResponse { status, body }
}

/// A raw `PUT` of `data` to `path`, sized (`Content-Length`) or chunked (64 KiB chunks).
pub async fn raw_put(
    addr: SocketAddr,
    path: &str,
    data: &[u8],
    chunked: bool,
    headers: &[(&str, &str)],
) -> RawResponse {
    let mut all: Vec<(&str, &str)> = headers.to_vec();
    if chunked {
        all.push(("Transfer-Encoding", "chunked"));
        raw_request(addr, "PUT", path, &all, &chunk_encode(data, 64 * 1024)).await
    } else {
        let len = data.len().to_string();
        all.push(("Content-Length", &len));
        raw_request(addr, "PUT", path, &all, data).await
    }
}

/// Polls `check` every 50 ms until it returns true or `timeout` passes; returns the last result.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listening_lines() {
        let a: SocketAddr = "127.0.0.1:4242".parse().expect("addr");
        for line in [
            "2024-01-01T00:00:00Z  INFO reader: listening on 127.0.0.1:4242\n",
            "INFO broadcaster: listening on http://127.0.0.1:4242/",
            "listening on 127.0.0.1:4242 (sink=disk)",
        ] {
            assert_eq!(parse_listening(line), Some(a), "{line}");
        }
        assert_eq!(parse_listening("INFO something else"), None);
    }

    #[test]
    fn dechunks() {
        assert_eq!(dechunk(b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n"), b"abcde");
        let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        assert_eq!(dechunk(&chunk_encode(&data, 77)), data);
        assert_eq!(chunk_encode(b"", 10), b"0\r\n\r\n");
    }
}
