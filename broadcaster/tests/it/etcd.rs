//! A real 3-member etcd cluster for the end-to-end tests (adapted from `meta/tests/it/etcd_cluster.rs`):
//! members on 127.0.0.1 with ports chosen at run time, data in a scratch directory, each member wrapped in
//! `setpriv --pdeathsig KILL` so none outlives a killed test run, and every member stopped by PID (SIGTERM,
//! then SIGKILL) when the cluster is dropped.
//!
//! Members are spawned from the test's own thread (never from `spawn_blocking`, whose threads exit when
//! idle and would take a `--pdeathsig` child with them).

use std::fs::OpenOptions;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use meta::{EtcdOptions, EtcdStore, MetaStore};
use tempfile::TempDir;

use crate::harness::{client, scratch_dir};

/// How long a started or restarted cluster may take to become healthy (about 2 s when idle; generous
/// because other builds share the two cores).
const HEALTHY_WITHIN: Duration = Duration::from_secs(30);
/// SIGTERM first; SIGKILL if a member is still running after this (a member without quorum takes ~5 s
/// to exit on SIGTERM; test data is scratch, so the tests do not wait for that).
const TERM_GRACE: Duration = Duration::from_secs(3);

/// Short timeouts for the harness's own probes.
fn probe_options() -> EtcdOptions {
    EtcdOptions {
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(3),
        attempt_timeout: Duration::from_secs(1),
    }
}

/// Fails the test, with the way out, when etcd is missing: a skipped HA suite would let a machine
/// without etcd pass CI.
fn etcd_binary() -> PathBuf {
    find_on_path("etcd").unwrap_or_else(|| {
        panic!(
            "etcd is not installed (no `etcd` on PATH): run build/test.sh, which installs it \
             (apt-get install -y etcd-server etcd-client)"
        )
    })
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

#[derive(Debug)]
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

/// Three etcd processes forming one cluster.
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<Member>,
    token: String,
    etcd: PathBuf,
    setpriv: Option<PathBuf>,
    // Last field: removed after the processes are stopped.
    dir: TempDir,
}

impl EtcdCluster {
    /// Starts a new 3-member cluster and waits until every member serves quorum reads.
    pub async fn start() -> EtcdCluster {
        let etcd = etcd_binary();
        // Ports are found by binding port 0 and released before etcd binds them; another process can take
        // one in between, so a start that loses that race is retried.
        for attempt in 1..=3 {
            let mut cluster = EtcdCluster::spawn_new(etcd.clone());
            match cluster.wait_healthy_result(&[0, 1, 2]).await {
                Ok(()) => return cluster,
                Err(e) if attempt < 3 => {
                    eprintln!("etcd cluster start attempt {attempt} failed, retrying: {e}");
                }
                Err(e) => panic!("etcd cluster did not start: {e}\n{}", cluster.logs()),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    fn spawn_new(etcd: PathBuf) -> EtcdCluster {
        let ports = free_ports(6);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let mut cluster = EtcdCluster {
            members: (0..3)
                .map(|i| Member {
                    name: format!("m{i}"),
                    client_port: ports[2 * i],
                    peer_port: ports[2 * i + 1],
                    child: None,
                })
                .collect(),
            // Unique per cluster, so members of two test clusters can never join each other.
            token: format!("broadcaster-it-{}-{nanos}", std::process::id()),
            etcd,
            setpriv: find_on_path("setpriv"),
            dir: scratch_dir("distributary-etcd-"),
        };
        for i in 0..3 {
            cluster.spawn(i, "new");
        }
        cluster
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(&self.members[i].name)
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir
            .path()
            .join(format!("{}.log", self.members[i].name))
    }

    fn spawn(&mut self, i: usize, state: &str) {
        let initial_cluster = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let m = &self.members[i];
        let client = format!("http://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .expect("etcd log file");
        let mut cmd = match &self.setpriv {
            Some(setpriv) => {
                let mut c = Command::new(setpriv);
                c.args(["--pdeathsig", "KILL", "--"]).arg(&self.etcd);
                c
            }
            None => Command::new(&self.etcd),
        };
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(self.data_dir(i))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", &self.token])
            .args(["--logger", "zap", "--log-level", "warn"])
            .env_remove("ETCDCTL_API")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("etcd log file"))
            .stderr(log);
        let child = cmd.spawn().expect("spawning etcd");
        self.members[i].child = Some(child);
    }

    /// `etcd:http://...,http://...,http://...`: the value of `BROADCASTER_METADATA` / `READER_METADATA`.
    pub fn spec(&self) -> String {
        format!("etcd:{}", self.endpoints().join(","))
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        (0..3).map(|i| self.endpoint(i)).collect()
    }

    pub fn endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[i].client_port)
    }

    /// Crashes member `i` (SIGKILL, by PID) and reaps it: what a failing machine looks like to the others.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            child.kill().expect("SIGKILL etcd member");
            child.wait().expect("reaping etcd member");
        }
    }

    /// Restarts member `i` on its old data directory and ports (`--initial-cluster-state existing`).
    pub fn restart(&mut self, i: usize) {
        assert!(
            self.members[i].child.is_none(),
            "member {i} is still running"
        );
        self.spawn(i, "existing");
    }

    /// Waits until each member in `members` answers a quorum read on its own endpoint.
    pub async fn wait_healthy(&mut self, members: &[usize]) {
        if let Err(e) = self.wait_healthy_result(members).await {
            panic!("etcd members {members:?} not healthy: {e}\n{}", self.logs());
        }
    }

    async fn wait_healthy_result(&mut self, members: &[usize]) -> Result<(), String> {
        let deadline = Instant::now() + HEALTHY_WITHIN;
        for &i in members {
            loop {
                if let Some(child) = self.members[i].child.as_mut() {
                    if let Ok(Some(status)) = child.try_wait() {
                        self.members[i].child = None;
                        return Err(format!("member {i} exited during start: {status}"));
                    }
                }
                let err = match EtcdStore::connect(&[self.endpoint(i)], probe_options()).await {
                    Ok(store) => match store.health().await {
                        Ok(()) => break,
                        Err(e) => e.to_string(),
                    },
                    Err(e) => e.to_string(),
                };
                if Instant::now() >= deadline {
                    return Err(format!("member {i}: {err}"));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// The index of the current leader, asked over etcd's JSON gateway (`/v3/maintenance/status`, in 3.4).
    pub async fn leader(&self) -> usize {
        let mut ids = Vec::new();
        let mut leaders = Vec::new();
        for i in 0..3 {
            let status: serde_json::Value = client()
                .post(format!("{}/v3/maintenance/status", self.endpoint(i)))
                .body("{}")
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .expect("etcd status")
                .json()
                .await
                .expect("etcd status JSON");
            // uint64 fields are JSON strings in the gateway's answers.
            ids.push(status["header"]["member_id"].to_string());
            leaders.push(status["leader"].to_string());
        }
        assert!(
            leaders.windows(2).all(|w| w[0] == w[1]),
            "members disagree on the leader: {leaders:?}"
        );
        ids.iter()
            .position(|id| *id == leaders[0])
            .unwrap_or_else(|| panic!("leader {} is none of {ids:?}", leaders[0]))
    }

    /// The members' log tails, for failure messages.
    pub fn logs(&self) -> String {
        (0..3)
            .map(|i| {
                let text = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!(
                    "--- etcd {} log (tail) ---\n{}",
                    self.members[i].name,
                    tail.join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for EtcdCluster {
    /// SIGTERM every member still running, SIGKILL after [`TERM_GRACE`], and reap them before the data
    /// directory goes away.
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        let mut running: Vec<Child> = self
            .members
            .iter_mut()
            .filter_map(|m| m.child.take())
            .collect();
        for child in &running {
            // std has no SIGTERM; `kill` from procps sends one to this PID only.
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let deadline = Instant::now() + TERM_GRACE;
        while !running.is_empty() {
            running.retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
            if Instant::now() >= deadline {
                for c in &mut running {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `n` distinct free loopback ports: all bound at once (so they differ), then released.
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
}
