//! A real etcd cluster for tests: 3 members on 127.0.0.1, ports chosen at run time, data in a
//! temporary directory, every process stopped by PID when the cluster is dropped.

use std::fs::OpenOptions;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcd_client::{Client, ConnectOptions};
use meta::{EtcdOptions, EtcdStore, MetaStore};

/// How long a started or restarted cluster may take to become healthy (about 2 s on our
/// machines; generous because other builds share the two cores).
const HEALTHY_WITHIN: Duration = Duration::from_secs(30);
/// SIGTERM first; SIGKILL if a member is still running after this.
const TERM_GRACE: Duration = Duration::from_secs(10);

/// Short timeouts so the tests see failures quickly; same code paths as the defaults.
pub fn fast_options() -> EtcdOptions {
    EtcdOptions {
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(3),
        attempt_timeout: Duration::from_secs(1),
    }
}

/// Fails the test, with the way out, when etcd is missing: a skipped etcd suite would let a
/// machine without etcd pass CI while testing only half the backends.
pub fn etcd_binary() -> PathBuf {
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
    /// Wraps each member so the kernel kills it if the test process dies without running
    /// `Drop` (a SIGKILLed test run): no etcd outlives the tests.
    setpriv: Option<PathBuf>,
    // Last field: dropped after the processes are stopped.
    dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// Starts a new 3-member cluster and waits until every member serves quorum reads.
    pub async fn start() -> EtcdCluster {
        let etcd = etcd_binary();
        // Ports are found by binding port 0 and released before etcd binds them; another
        // process can take one in between, so a start that loses that race is retried.
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
            token: format!("meta-test-{}-{nanos}", std::process::id()),
            etcd,
            setpriv: find_on_path("setpriv"),
            dir: tempfile::tempdir().expect("temp dir for etcd data"),
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
            // A re-election after a killed leader takes 1-2 s with the defaults (1 s election timeout,
            // randomised up to 2 s), most of a 3 s request budget on a loaded machine; a quicker election
            // keeps "one member down is invisible" a test of the client, not of the scheduler.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("etcd log file"))
            .stderr(log);
        let child = cmd.spawn().expect("spawning etcd");
        self.members[i].child = Some(child);
    }

    /// Every member's client URL (the client is given all of them).
    pub fn endpoints(&self) -> Vec<String> {
        (0..3).map(|i| self.endpoint(i)).collect()
    }

    pub fn endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[i].client_port)
    }

    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(Child::id)
    }

    /// Crashes member `i` (SIGKILL): what a failing machine looks like to the others.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            child.kill().expect("SIGKILL etcd member");
            child.wait().expect("reaping etcd member");
        }
    }

    /// Stops the given members gracefully, all at once: SIGTERM, then SIGKILL after
    /// [`TERM_GRACE`]. (A member that loses its quorum takes ~5 s to exit on SIGTERM.)
    pub async fn stop(&mut self, members: &[usize]) {
        let mut running: Vec<Child> = members
            .iter()
            .filter_map(|&i| self.members[i].child.take())
            .collect();
        for child in &running {
            // std has no SIGTERM; `kill` from procps sends one to this PID only.
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        let deadline = Instant::now() + TERM_GRACE;
        while !running.is_empty() {
            running.retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
            if Instant::now() >= deadline {
                for c in &mut running {
                    eprintln!(
                        "etcd pid {} ignored SIGTERM for {TERM_GRACE:?}; SIGKILL",
                        c.id()
                    );
                    let _ = c.kill();
                    let _ = c.wait();
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Restarts member `i` on its old data directory and ports.
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
                let probe = EtcdStore::connect(&[self.endpoint(i)], fast_options()).await;
                match probe {
                    Ok(store) if store.health().await.is_ok() => break,
                    Ok(_) => {}
                    Err(e) if Instant::now() >= deadline => {
                        return Err(format!("member {i}: {e}"));
                    }
                    Err(_) => {}
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// The index of the current leader, asked of member `via`.
    pub async fn leader(&self, via: usize) -> usize {
        let opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(1))
            .with_timeout(Duration::from_secs(2));
        let mut ids = Vec::new();
        let mut leader = 0;
        for i in 0..3 {
            let mut c = Client::connect([self.endpoint(i)], Some(opts.clone()))
                .await
                .expect("connect to one member");
            let status = c.status().await.expect("member status");
            ids.push(status.header().map(|h| h.member_id()).unwrap_or_default());
            if i == via {
                leader = status.leader();
            }
        }
        ids.iter()
            .position(|&id| id == leader)
            .expect("the leader is one of the members")
    }

    /// The members' logs, for failure messages.
    pub fn logs(&self) -> String {
        (0..3)
            .map(|i| {
                let text = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!(
                    "--- {} log (tail) ---\n{}",
                    self.members[i].name,
                    tail.join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for EtcdCluster {
    /// The safety net for failing tests: SIGKILL whatever still runs, and reap it, before the
    /// data directory goes away.
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut child) = m.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
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

/// Whether a process with this PID still exists.
pub fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn etcd_is_installed() {
    let etcd = etcd_binary();
    let out = Command::new(&etcd)
        .arg("--version")
        .output()
        .expect("running etcd --version");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("etcd Version: 3."), "unexpected etcd: {text}");
}
