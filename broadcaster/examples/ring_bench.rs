//! Storage-ring benchmark (issue 3, item 7). Run it through `bench/ring.sh`, which builds the release
//! binaries first; this example expects `storage-node` and `broadcaster` next to its own directory
//! (`target/release/`), or in `RING_BENCH_BIN_DIR`.
//!
//! On loopback only, it starts 3 storage nodes and a broadcaster (ring target, R=2, SQLite metadata in a
//! temporary directory), then:
//! 1. writes a 15-minute DASH video (475 segments of ~200 KiB, deterministic pseudo-random bytes) through
//!    `Cluster::put_blob` with 64 concurrent writes (several rounds, the first one kept for the reads), and
//!    once more with 1 worker;
//! 2. reads every segment back through the broadcaster (`GET /content/{id}/{file}`, one keep-alive
//!    connection, sequential, after a warm-up pass), checks the bytes, and reports p50/p99/max; the same
//!    with an in-process `Cluster::get_blob` as the no-broadcaster baseline;
//! 3. SIGKILLs one storage node and reads everything again twice (reads now fall back to the other replica;
//!    the broadcaster's "read served by a fallback replica" log lines are counted), then restarts that node
//!    on its port and data directory;
//! 4. starts a 4th node and times `POST /admin/nodes` (returns once the migration is done), then reads
//!    everything once more.
//!
//! Exit status: 0 when every request succeeded and every byte read matched (goals met or not), 1 otherwise.
//!
//! Environment: `RING_BENCH_BLOBS` (475), `RING_BENCH_BLOB_KIB` (200, the mean size; sizes vary ±10%),
//! `RING_BENCH_WORKERS` (64), `RING_BENCH_WRITE_ROUNDS` (3), `RING_BENCH_TMPDIR` (parent of the data
//! directory; default the system temporary directory), `RING_BENCH_KEEP=1` (keep the data directory and the
//! processes' logs), `RING_BENCH_BIN_DIR`. `BROADCASTER_*` / `STORAGE_NODE_*` variables in the environment
//! reach the services, except the ones set here (hosts, ports, data, metadata, nodes, replication, targets).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use broadcaster::ring::nodes::BlobKey;
use broadcaster::ring::{Cluster, RingSettings};
use bytes::Bytes;
use futures_util::StreamExt;

/// The video id the kept copy is written under.
const VIDEO: &str = "bench-video";
const REPLICATION: usize = 2;
const FALLBACK_LINE: &str = "read served by a fallback replica";
const REPLICA_FAILED_LINE: &str = "replica read failed";
/// The broadcaster's counter of reads served by a fallback replica, on `GET /metrics`.
const FALLBACK_METRIC: &str = "distributary_ring_read_fallbacks_total";
/// Lines of each process's output kept in memory, shown when it fails to start.
const TAIL_LINES: usize = 40;
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Reads slower than this are counted (the read goal is p99 < 5 ms).
const SLOW_READ: Duration = Duration::from_millis(5);

// ---------------------------------------------------------------------------------------------------------
// settings

#[derive(Debug)]
struct Settings {
    blobs: usize,
    blob_kib: usize,
    workers: usize,
    write_rounds: usize,
    tmp_parent: Option<PathBuf>,
    keep: bool,
    bin_dir: PathBuf,
}

fn env_number(name: &str, default: usize, min: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => {
            let n: usize = v
                .trim()
                .parse()
                .with_context(|| format!("{name}={v:?} is not a number"))?;
            ensure!(n >= min, "{name}={n} must be at least {min}");
            Ok(n)
        }
        _ => Ok(default),
    }
}

impl Settings {
    fn from_env() -> anyhow::Result<Self> {
        let bin_dir = match std::env::var_os("RING_BENCH_BIN_DIR") {
            Some(d) => PathBuf::from(d),
            None => {
                // target/release/examples/ring_bench -> target/release
                let exe = std::env::current_exe().context("cannot locate this executable")?;
                exe.parent()
                    .and_then(Path::parent)
                    .map(Path::to_path_buf)
                    .context("cannot derive the binaries' directory; set RING_BENCH_BIN_DIR")?
            }
        };
        Ok(Self {
            blobs: env_number("RING_BENCH_BLOBS", 475, 1)?,
            blob_kib: env_number("RING_BENCH_BLOB_KIB", 200, 1)?,
            workers: env_number("RING_BENCH_WORKERS", 64, 1)?,
            write_rounds: env_number("RING_BENCH_WRITE_ROUNDS", 3, 1)?,
            tmp_parent: std::env::var_os("RING_BENCH_TMPDIR").map(PathBuf::from),
            keep: std::env::var("RING_BENCH_KEEP").is_ok_and(|v| v == "1"),
            bin_dir,
        })
    }
}

fn progress(msg: impl std::fmt::Display) {
    eprintln!("[ring-bench] {msg}");
}

// ---------------------------------------------------------------------------------------------------------
// child processes

/// What a process printed: a tail for error messages, and counters of the lines the benchmark looks for.
#[derive(Debug, Default)]
struct Output {
    tail: Mutex<VecDeque<String>>,
    fallback: AtomicUsize,
    replica_failed: AtomicUsize,
}

impl Output {
    fn push(&self, line: &str) {
        if line.contains(FALLBACK_LINE) {
            self.fallback.fetch_add(1, Ordering::Relaxed);
        }
        if line.contains(REPLICA_FAILED_LINE) {
            self.replica_failed.fetch_add(1, Ordering::Relaxed);
        }
        let mut tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line.to_owned());
    }

    fn tail(&self) -> String {
        let tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        tail.iter()
            .map(|l| format!("    | {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A process this benchmark started. Dropping it SIGKILLs that process (by its PID) and reaps it, so an
/// error or a panic never leaves a process behind.
#[derive(Debug)]
struct Proc {
    label: String,
    child: Option<Child>,
    addr: String,
    out: Arc<Output>,
}

impl Proc {
    /// Starts `bin` with `envs` and waits for its `listening on 127.0.0.1:PORT` line. Its stdout and stderr
    /// keep being drained (into `log`) for as long as it runs.
    async fn start(
        label: &str,
        bin: &Path,
        envs: &[(&str, String)],
        log: &Path,
    ) -> anyhow::Result<Self> {
        let mut cmd = Command::new(bin);
        cmd.env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {} (build it first)", bin.display()))?;
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let stderr = child.stderr.take().context("no stderr pipe")?;
        let mut proc = Self {
            label: label.to_owned(),
            child: Some(child),
            addr: String::new(),
            out: Arc::new(Output::default()),
        };
        let file = std::fs::File::create(log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let file = Arc::new(Mutex::new(std::io::BufWriter::new(file)));
        let (tx, rx) = tokio::sync::oneshot::channel::<String>();
        drain(stdout, proc.out.clone(), file.clone(), Some(tx));
        drain(stderr, proc.out.clone(), file, None);
        match tokio::time::timeout(START_TIMEOUT, rx).await {
            Ok(Ok(addr)) => {
                ensure!(
                    addr.starts_with("127.0.0.1:"),
                    "{label} listens on {addr}, not on loopback"
                );
                proc.addr = addr;
                Ok(proc)
            }
            Ok(Err(_)) => {
                // The pipe closed: give the stderr thread a moment to collect the reason.
                tokio::time::sleep(Duration::from_millis(200)).await;
                bail!(
                    "{label} exited before listening; its last output:\n{}",
                    proc.out.tail()
                )
            }
            Err(_) => bail!(
                "{label} did not report `listening on` within {START_TIMEOUT:?}; its last output:\n{}",
                proc.out.tail()
            ),
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILLs the process and reaps it.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads `pipe` line by line on a thread until it closes: each line goes to `log` and `out`; the first
/// `listening on ADDR` line's address goes to `addr`.
fn drain(
    pipe: impl Read + Send + 'static,
    out: Arc<Output>,
    log: Arc<Mutex<std::io::BufWriter<std::fs::File>>>,
    mut addr: Option<tokio::sync::oneshot::Sender<String>>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            {
                let mut f = log.lock().unwrap_or_else(|e| e.into_inner());
                let _ = writeln!(f, "{line}");
                let _ = f.flush();
            }
            out.push(&line);
            if let Some((_, rest)) = line.split_once("listening on ") {
                if let Some(tx) = addr.take() {
                    let _ = tx.send(
                        rest.split_whitespace()
                            .next()
                            .unwrap_or_default()
                            .to_owned(),
                    );
                }
            }
        }
    });
}

// ---------------------------------------------------------------------------------------------------------
// the video

#[derive(Debug)]
struct Segment {
    file: String,
    data: Bytes,
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `count` segments named like a DASH encoder names them; sizes vary ±10% around `mean` bytes, contents
/// are pseudo-random (incompressible, like media) and the same on every run.
fn video(count: usize, mean: usize) -> Vec<Segment> {
    (1..=count)
        .map(|n| {
            let mut state = 0x5EED_0000_0000_0000 ^ n as u64;
            let spread = mean / 10;
            let len = mean - spread + (splitmix64(&mut state) as usize) % (2 * spread + 1);
            let mut data = Vec::with_capacity(len + 8);
            while data.len() < len {
                data.extend_from_slice(&splitmix64(&mut state).to_le_bytes());
            }
            data.truncate(len);
            Segment {
                file: format!("chunk-0-{n:05}.m4s"),
                data: Bytes::from(data),
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------------------
// measurements

/// Writes every segment under `id` with at most `workers` `put_blob` calls in flight, each on its own task
/// (so hashing spreads over the cores, as it would in a server).
async fn write_video(
    cluster: &Arc<Cluster>,
    id: &str,
    video: &[Segment],
    workers: usize,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let results: Vec<_> = futures_util::stream::iter(video.iter())
        .map(|s| {
            let cluster = cluster.clone();
            let key = BlobKey::new(id, s.file.clone());
            let data = s.data.clone();
            tokio::spawn(async move {
                cluster
                    .put_blob(&key, data)
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("{key}: {e}"))
            })
        })
        .buffer_unordered(workers)
        .collect()
        .await;
    let elapsed = started.elapsed();
    for r in results {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("put_blob failed: {e}"),
            Err(e) => bail!("a write task failed: {e}"),
        }
    }
    Ok(elapsed)
}

async fn delete_video(cluster: &Arc<Cluster>, id: &str, video: &[Segment]) {
    futures_util::stream::iter(video.iter())
        .map(|s| {
            let key = BlobKey::new(id, s.file.clone());
            async move { cluster.delete_blob(&key).await }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
}

/// Latencies of one sequential pass, and what went wrong in it.
#[derive(Debug, Default)]
struct Pass {
    latencies: Vec<Duration>,
    failures: Vec<String>,
}

impl Pass {
    fn record(&mut self, file: &str, elapsed: Duration, got: Result<Bytes, String>, want: &Bytes) {
        match got {
            Ok(b) if b == want => self.latencies.push(elapsed),
            Ok(b) => self.failures.push(format!(
                "{file}: {} bytes read differ from the {} written",
                b.len(),
                want.len()
            )),
            Err(e) => self.failures.push(format!("{file}: {e}")),
        }
    }

    fn stats(&self) -> Option<Stats> {
        let mut v = self.latencies.clone();
        if v.is_empty() {
            return None;
        }
        v.sort();
        let rank = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Some(Stats {
            p50: rank(0.50),
            p99: rank(0.99),
            max: v[v.len() - 1],
            mean: v.iter().sum::<Duration>() / v.len() as u32,
            slow: v.iter().filter(|d| **d > SLOW_READ).count(),
            count: v.len(),
        })
    }
}

#[derive(Debug, Clone, Copy)]
struct Stats {
    p50: Duration,
    p99: Duration,
    max: Duration,
    mean: Duration,
    /// Reads slower than [`SLOW_READ`].
    slow: usize,
    count: usize,
}

/// One sequential pass over the video through the broadcaster's `/content` route.
async fn read_via_broadcaster(
    http: &reqwest::Client,
    broadcaster: &str,
    video: &[Segment],
) -> Pass {
    let mut pass = Pass::default();
    for s in video {
        let url = format!("http://{broadcaster}/content/{VIDEO}/{}", s.file);
        let started = Instant::now();
        let got = async {
            let resp = http.get(&url).send().await.map_err(|e| e.to_string())?;
            let status = resp.status();
            let body = resp.bytes().await.map_err(|e| e.to_string())?;
            if status != reqwest::StatusCode::OK {
                return Err(format!(
                    "HTTP {status}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                ));
            }
            Ok(body)
        }
        .await;
        pass.record(&s.file, started.elapsed(), got, &s.data);
    }
    pass
}

/// One sequential pass with the ring client in this process (no broadcaster hop).
async fn read_in_process(cluster: &Cluster, video: &[Segment]) -> Pass {
    let mut pass = Pass::default();
    for s in video {
        let key = BlobKey::new(VIDEO, s.file.clone());
        let started = Instant::now();
        let got = cluster
            .get_verified(&key, None)
            .await
            .map_err(|e| e.to_string());
        pass.record(&s.file, started.elapsed(), got, &s.data);
    }
    pass
}

/// The broadcaster's `distributary_ring_read_fallbacks_total` (summed over labels; absent counts as 0),
/// or `None` when `/metrics` does not answer.
async fn fallback_metric(http: &reqwest::Client, broadcaster: &str) -> Option<f64> {
    let resp = http
        .get(format!("http://{broadcaster}/metrics"))
        .send()
        .await
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let text = resp.text().await.ok()?;
    Some(
        text.lines()
            .filter(|l| {
                l.strip_prefix(FALLBACK_METRIC)
                    .is_some_and(|rest| rest.starts_with([' ', '{']))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum(),
    )
}

/// Copies stored on `nodes` in total, from their listings.
async fn stored_copies(cluster: &Cluster, nodes: &[String]) -> anyhow::Result<usize> {
    let mut total = 0;
    for n in nodes {
        total += cluster
            .nodes()
            .list(n, false)
            .await
            .with_context(|| format!("cannot list the blobs on {n}"))?
            .len();
    }
    Ok(total)
}

// ---------------------------------------------------------------------------------------------------------
// report

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

#[derive(Debug, Default)]
struct Table {
    rows: Vec<[String; 4]>,
}

impl Table {
    fn row(&mut self, what: impl Into<String>, result: String, goal: String, reference: &str) {
        self.rows
            .push([what.into(), result, goal, reference.to_owned()]);
    }

    fn latency(
        &mut self,
        what: impl Into<String>,
        pass: &Pass,
        goal: Option<Duration>,
        reference: &str,
    ) {
        let (result, goal) = match pass.stats() {
            Some(s) => (
                format!(
                    "{} / {} / {} ms (mean {}; {} of {} > {} ms)",
                    ms(s.p50),
                    ms(s.p99),
                    ms(s.max),
                    ms(s.mean),
                    s.slow,
                    s.count,
                    SLOW_READ.as_millis()
                ),
                match goal {
                    Some(g) => format!("p99 < {} ms: {}", g.as_millis(), verdict(s.p99 < g)),
                    None => String::new(),
                },
            ),
            None => ("no successful read".to_owned(), String::new()),
        };
        self.row(what, result, goal, reference);
    }

    fn print(&self) {
        let header = [
            "measurement",
            "result",
            "goal",
            "TritonTube (published, not measured here)",
        ];
        let mut widths = header.map(str::len);
        for r in &self.rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cells: [&str; 4]| {
            let mut s = String::new();
            for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
                if i > 0 {
                    s.push_str(" | ");
                }
                s.push_str(c);
                if i < 3 {
                    s.push_str(&" ".repeat(w - c.chars().count()));
                }
            }
            println!("{}", s.trim_end());
        };
        line(header);
        println!(
            "{}",
            widths
                .iter()
                .map(|w| "-".repeat(*w))
                .collect::<Vec<_>>()
                .join("-|-")
        );
        for r in &self.rows {
            line([&r[0], &r[1], &r[2], &r[3]]);
        }
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

fn cpu_model() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    format!("{cpus} CPUs ({model})")
}

/// The file system type of the mount holding `path`, from /proc/mounts.
fn fs_type(path: &Path) -> String {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return "unknown fs".to_owned();
    };
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let _dev = f.next()?;
            let mnt = f.next()?;
            let ty = f.next()?;
            path.starts_with(mnt).then(|| (mnt.len(), ty.to_owned()))
        })
        .max_by_key(|(len, _)| *len)
        .map_or_else(|| "unknown fs".to_owned(), |(_, ty)| ty)
}

// ---------------------------------------------------------------------------------------------------------
// the run

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("[ring-bench] error: cannot start tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            progress("FAILED: some reads failed or differed (see above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            progress(format!("error: {e:#}"));
            ExitCode::FAILURE
        }
    }
}

/// Runs everything; `Ok(false)` when a read failed or differed. Every process started is owned by a
/// [`Proc`] in this function, so they are all killed when it returns or unwinds.
async fn run() -> anyhow::Result<bool> {
    let settings = Settings::from_env()?;
    let node_bin = settings.bin_dir.join("storage-node");
    let broadcaster_bin = settings.bin_dir.join("broadcaster");
    let mut builder = tempfile::Builder::new();
    builder.prefix("ring-bench-");
    let tmp = match &settings.tmp_parent {
        Some(p) => builder.tempdir_in(p),
        None => builder.tempdir(),
    }
    .context("cannot create the data directory")?;
    let work = tmp.path().to_path_buf();
    let _tmp = if settings.keep {
        progress(format!("keeping {} (RING_BENCH_KEEP=1)", work.display()));
        let _ = tmp.keep();
        None
    } else {
        Some(tmp)
    };

    // --- processes
    let start_node = |i: usize, port: u16| {
        let dir = work.join(format!("node{i}"));
        let log = work.join(format!("node{i}.log"));
        let bin = node_bin.clone();
        async move {
            std::fs::create_dir_all(&dir)?;
            Proc::start(
                &format!("storage node {i}"),
                &bin,
                &[
                    ("STORAGE_NODE_HTTP_HOST", "127.0.0.1".to_owned()),
                    ("STORAGE_NODE_HTTP_PORT", port.to_string()),
                    ("STORAGE_NODE_DATA_DIR", dir.display().to_string()),
                ],
                &log,
            )
            .await
        }
    };
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(start_node(i, 0).await?);
    }
    let node_addrs: Vec<String> = nodes.iter().map(|n| n.addr.clone()).collect();
    let meta_path = work.join("meta.db");
    let meta_spec = format!("sqlite:{}", meta_path.display());
    let broadcaster = Proc::start(
        "broadcaster",
        &broadcaster_bin,
        &[
            ("BROADCASTER_HTTP_HOST", "127.0.0.1".to_owned()),
            ("BROADCASTER_HTTP_PORT", "0".to_owned()),
            ("BROADCASTER_METADATA", meta_spec.clone()),
            ("BROADCASTER_STORAGE_NODES", node_addrs.join(";")),
            ("BROADCASTER_REPLICATION", REPLICATION.to_string()),
            ("BROADCASTER_HOST_LIST", "ring".to_owned()),
        ],
        &work.join("broadcaster.log"),
    )
    .await?;
    progress(format!(
        "storage nodes {} (pids {:?}), broadcaster {} (pid {:?}), data in {}",
        node_addrs.join(", "),
        nodes.iter().map(Proc::pid).collect::<Vec<_>>(),
        broadcaster.addr,
        broadcaster.pid(),
        work.display()
    ));

    // --- our own ring client, on the layout the broadcaster seeded
    let store = meta::open(&meta::parse_spec(&meta_spec)?).await?;
    let cluster = Cluster::open(
        store,
        &RingSettings {
            initial_nodes: Vec::new(),
            replication: REPLICATION,
            vnodes: hashring::DEFAULT_VNODES,
            chunk_size: 4 << 20,
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(30),
            secret: None,
            lease_ttl: Duration::from_secs(60),
        },
    )
    .await?;
    let layout = cluster
        .view()
        .layout
        .clone()
        .context("the broadcaster did not seed the ring layout")?;
    ensure!(
        layout.nodes == node_addrs && layout.replication == REPLICATION,
        "unexpected layout {layout:?}"
    );

    let load_before = load_average();
    let video = video(settings.blobs, settings.blob_kib * 1024);
    let total_bytes: usize = video.iter().map(|s| s.data.len()).sum();
    let mib = total_bytes as f64 / (1 << 20) as f64;
    let mut table = Table::default();
    let mut ok = true;

    // --- 1. writes
    let mut rounds = Vec::new();
    for r in 0..settings.write_rounds {
        let id = if r == 0 {
            VIDEO.to_owned()
        } else {
            format!("{VIDEO}-w{r}")
        };
        let t = write_video(&cluster, &id, &video, settings.workers).await?;
        progress(format!(
            "write round {} ({} workers, {id}): {}",
            r + 1,
            settings.workers,
            secs(t)
        ));
        rounds.push(t);
    }
    // `/content` serves only what a committed video recorded, with the digests reads are checked against:
    // record the kept round as a ready video, as a finished transcode would.
    let digests = video
        .iter()
        .map(|s| {
            let digest = common::blob_digest::BlobDigest::compute(
                common::blob_digest::DigestKind::Windowed,
                &s.data,
            );
            (s.file.clone(), digest.to_string())
        })
        .collect();
    cluster
        .meta()
        .put_video(&meta::VideoRecord {
            id: VIDEO.to_owned(),
            status: meta::VideoRecord::READY.to_owned(),
            created_unix_ms: 0,
            duration_ms: Some(900_000),
            files: video.iter().map(|s| s.file.clone()).collect(),
            error: None,
            digests,
            progress_percent: None,
            upload: None,
        })
        .await?;
    let seq_id = format!("{VIDEO}-seq");
    let seq = write_video(&cluster, &seq_id, &video, 1).await?;
    progress(format!("write, 1 worker ({seq_id}): {}", secs(seq)));
    for r in 1..settings.write_rounds {
        delete_video(&cluster, &format!("{VIDEO}-w{r}"), &video).await;
    }
    delete_video(&cluster, &seq_id, &video).await;
    let copies = stored_copies(&cluster, &node_addrs).await?;
    let goal_write = Duration::from_millis(300);
    let n = settings.blobs;
    let w = settings.workers;
    table.row(
        format!("write {n} blobs, R={REPLICATION}, {w} workers (1st round, kept)"),
        format!(
            "{} ({:.0} MiB/s)",
            secs(rounds[0]),
            mib / rounds[0].as_secs_f64()
        ),
        format!("< 0.3 s: {}", verdict(rounds[0] < goal_write)),
        "best 0.8 s (64 workers)",
    );
    if rounds.len() > 1 {
        let best = rounds.iter().copied().min().unwrap_or_default();
        table.row(
            format!("write, {w} workers, best of {} rounds", rounds.len()),
            format!(
                "{} (rounds: {})",
                secs(best),
                rounds
                    .iter()
                    .map(|d| format!("{:.3}", d.as_secs_f64()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            format!("< 0.3 s: {}", verdict(best < goal_write)),
            "",
        );
    }
    table.row(
        format!("write {n} blobs, R={REPLICATION}, 1 worker (sequential)"),
        format!("{} ({:.0} MiB/s)", secs(seq), mib / seq.as_secs_f64()),
        String::new(),
        "29.5 s sequential",
    );
    if copies != n * REPLICATION {
        progress(format!(
            "NOTE: the nodes hold {copies} blob copies after the scratch copies were deleted; {} expected",
            n * REPLICATION
        ));
    }

    // --- 2. reads, all nodes up
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .http1_only()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(30))
        .build()?;
    let bc = broadcaster.addr.clone();
    let warm = read_via_broadcaster(&http, &bc, &video).await;
    let healthy = read_via_broadcaster(&http, &bc, &video).await;
    let direct_warm = read_in_process(&cluster, &video).await;
    let direct = read_in_process(&cluster, &video).await;
    let goal_p99 = Duration::from_millis(5);
    table.latency(
        "read via broadcaster, 3/3 nodes: p50 / p99 / max",
        &healthy,
        Some(goal_p99),
        "averages 58 ms",
    );
    table.latency(
        "  baseline: in-process Cluster::get_blob, no broadcaster hop",
        &direct,
        None,
        "",
    );
    for (what, p) in [
        ("warm-up pass", &warm),
        ("read pass", &healthy),
        ("in-process warm-up pass", &direct_warm),
        ("in-process pass", &direct),
    ] {
        ok &= report_failures(what, p);
    }

    // --- 3. one node SIGKILLed
    let victim = 2;
    let victim_addr = nodes[victim].addr.clone();
    let victim_port: u16 = victim_addr
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .context("bad node address")?;
    let primary_on_victim = video
        .iter()
        .filter(|s| {
            cluster
                .owners(&BlobKey::new(VIDEO, s.file.clone()))
                .is_ok_and(|o| o.first() == Some(&victim_addr))
        })
        .count();
    nodes[victim].kill();
    progress(format!("SIGKILLed {} ({victim_addr})", nodes[victim].label));
    let mut degraded = Vec::new();
    for pass_no in 1..=2 {
        let before = (
            broadcaster.out.fallback.load(Ordering::Relaxed),
            broadcaster.out.replica_failed.load(Ordering::Relaxed),
            fallback_metric(&http, &bc).await,
        );
        let pass = read_via_broadcaster(&http, &bc, &video).await;
        // Let the drain thread catch up with the broadcaster's log.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let fallbacks = broadcaster.out.fallback.load(Ordering::Relaxed) - before.0;
        let failed = broadcaster.out.replica_failed.load(Ordering::Relaxed) - before.1;
        let metric = match (before.2, fallback_metric(&http, &bc).await) {
            (Some(a), Some(b)) => format!("{}", b - a),
            _ => "?".to_owned(),
        };
        ok &= report_failures(&format!("read pass {pass_no} with a node down"), &pass);
        degraded.push((pass, fallbacks, failed, metric));
    }
    for (i, (pass, fallbacks, failed, metric)) in degraded.iter().enumerate() {
        table.latency(
            format!(
                "read via broadcaster, 2/3 nodes, pass {} after SIGKILL",
                i + 1
            ),
            pass,
            Some(goal_p99),
            if i == 0 {
                "one copy per file: a node down = 500s"
            } else {
                ""
            },
        );
        table.row(
            format!("  reads served by the fallback replica (pass {})", i + 1),
            format!(
                "{fallbacks} of {n} logged, {metric} by /metrics; {failed} failed attempts logged; {primary_on_victim} expected"
            ),
            String::new(),
            "",
        );
    }

    // Restart the killed node where it was, so the migration sees every member.
    nodes[victim] = start_node(victim, victim_port).await?;
    progress(format!(
        "restarted storage node {victim} on {}",
        nodes[victim].addr
    ));
    ensure!(
        nodes[victim].addr == victim_addr,
        "the restarted node listens on {} instead of {victim_addr}",
        nodes[victim].addr
    );

    // --- 4. migration
    let fourth = start_node(3, 0).await?;
    let expected_moves = {
        let old = hashring::Ring::new(&layout);
        let new_layout = layout
            .with_node(&fourth.addr)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let new = hashring::Ring::new(&new_layout);
        video
            .iter()
            .filter(|s| {
                let k = BlobKey::new(VIDEO, s.file.clone()).ring_key();
                let before = old.owners(&k);
                new.owners(&k).iter().any(|o| !before.contains(o))
            })
            .count()
    };
    let started = Instant::now();
    let resp = http
        .post(format!("http://{bc}/admin/nodes"))
        .json(&serde_json::json!({ "node": fourth.addr }))
        .timeout(Duration::from_secs(600))
        .send()
        .await
        .context("POST /admin/nodes")?;
    let status = resp.status();
    let body = resp.text().await.context("POST /admin/nodes: body")?;
    let took = started.elapsed();
    let mut migration_ok = status.is_success();
    let migrated = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("migrated").and_then(serde_json::Value::as_u64));
    if !migration_ok {
        progress(format!("POST /admin/nodes answered {status}: {body}"));
    }
    let migrated = match migrated {
        Some(m) => m.to_string(),
        None => {
            migration_ok = false;
            format!("? (answer: {body})")
        }
    };
    ok &= migration_ok;
    let mut all_addrs = node_addrs.clone();
    all_addrs.push(fourth.addr.clone());
    let copies_after = stored_copies(&cluster, &all_addrs).await?;
    table.row(
        "add a 4th node (POST /admin/nodes, migration included)",
        format!("{}, {migrated} blobs migrated", secs(took)),
        String::new(),
        "",
    );
    table.row(
        "  blobs whose owners gain a node (computed from the ring)",
        format!(
            "{expected_moves}; copies stored afterwards: {copies_after} ({} expected)",
            n * REPLICATION
        ),
        String::new(),
        "",
    );
    let after = read_via_broadcaster(&http, &bc, &video).await;
    ok &= report_failures("read pass after the migration", &after);
    table.latency(
        "read via broadcaster, 4/4 nodes, after migration",
        &after,
        Some(goal_p99),
        "",
    );

    // --- report
    println!();
    println!(
        "Storage ring benchmark: {n} blobs of ~{} KiB ({mib:.1} MiB), R={REPLICATION}, 3 storage nodes + 1 broadcaster on loopback",
        settings.blob_kib
    );
    println!(
        "host: {}, 1-min load average {load_before} before / {} after; data on {} ({})",
        cpu_model(),
        load_average(),
        work.display(),
        fs_type(&work)
    );
    println!(
        "writes: Cluster::put_blob in-process, reads: GET /content/{VIDEO}/FILE, sequential, one keep-alive connection, bytes checked"
    );
    println!();
    table.print();
    println!();
    println!("TritonTube numbers are the published figures of the system this replaces, quoted for comparison; they were not measured on this machine.");
    Ok(ok)
}

fn report_failures(what: &str, pass: &Pass) -> bool {
    if pass.failures.is_empty() {
        return true;
    }
    progress(format!("{what}: {} reads FAILED:", pass.failures.len()));
    for f in pass.failures.iter().take(10) {
        progress(format!("  {f}"));
    }
    false
}
