//! TLS and connection limits (issue 9, items 3 and 5; DESIGN.md §6): every service over HTTPS with a test CA
//! made here, peers named by `https://` URLs, HTTP/2 by ALPN on the gateway, clients without the CA refused,
//! certificates reloaded without a restart; half-sent headers closed within the header timeout while an
//! upload and a read go through, also with a small file-descriptor limit.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::data::{gen_bytes, sha256_hex};
use crate::harness::{
    bin, client, eventually, run_to_exit, scratch_dir, service_command, Broadcaster, Proc, Reader,
};

// ---------------------------------------------------------------------------------------------------------
// A test PKI

/// A CA made for one test, and server certificates signed by it.
struct Pki {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        Pki {
            ca_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for `127.0.0.1` and `localhost`: (certificate PEM, key PEM).
    fn server(&self) -> (String, String) {
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .expect("server params");
        params
            .distinguished_name
            .push(DnType::CommonName, "distributary test server");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("server key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("server certificate");
        (cert.pem(), key.serialize_pem())
    }
}

/// The files services and clients are given.
struct Files {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Files {
    fn write(dir: &Path, pki: &Pki) -> Files {
        let files = Files {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server-key.pem"),
        };
        std::fs::write(&files.ca, &pki.ca_pem).expect("write CA");
        let (cert, key) = pki.server();
        std::fs::write(&files.cert, cert).expect("write cert");
        std::fs::write(&files.key, key).expect("write key");
        files
    }

    fn server_env(&self, prefix: &str) -> Vec<(String, String)> {
        vec![
            (
                format!("{prefix}TLS_CERT_FILE"),
                self.cert.display().to_string(),
            ),
            (
                format!("{prefix}TLS_KEY_FILE"),
                self.key.display().to_string(),
            ),
            (
                "DISTRIBUTARY_TLS_CA_FILE".to_owned(),
                self.ca.display().to_string(),
            ),
        ]
    }
}

fn as_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// A client that trusts only `ca_pem`; a fresh client has no pooled connection, so it makes a new one.
fn tls_client(ca_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("CA"))
        .build()
        .expect("client")
}

/// A storage node serving HTTPS.
fn tls_node(files: &Files) -> (Proc, tempfile::TempDir) {
    let dir = scratch_dir("tls-node-");
    let mut cmd = service_command("storage-node");
    cmd.env("STORAGE_NODE_HTTP_HOST", "127.0.0.1")
        .env("STORAGE_NODE_HTTP_PORT", "0")
        .env("STORAGE_NODE_DATA_DIR", dir.path());
    for (k, v) in files.server_env("STORAGE_NODE_") {
        cmd.env(k, v);
    }
    (Proc::start("storage-node", cmd), dir)
}

fn describe(e: &reqwest::Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

// ---------------------------------------------------------------------------------------------------------
// HTTPS end to end

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_everywhere_with_http2_on_the_gateway() {
    let dir = scratch_dir("tls-e2e-");
    let pki = Pki::new("distributary test CA");
    let files = Files::write(dir.path(), &pki);
    let readers: Vec<Reader> = (0..2)
        .map(|_| Reader::start_with(&as_refs(&files.server_env("READER_"))))
        .collect();
    let nodes: Vec<(Proc, tempfile::TempDir)> = (0..3).map(|_| tls_node(&files)).collect();
    let mut targets: Vec<String> = readers
        .iter()
        .map(|r| format!("https://{}", r.proc.addr))
        .collect();
    targets.push("ring".to_owned());
    let node_urls: Vec<String> = nodes
        .iter()
        .map(|(p, _)| format!("https://{}", p.addr))
        .collect();
    let mut env = files.server_env("BROADCASTER_");
    env.extend([
        (
            "BROADCASTER_METADATA".to_owned(),
            format!("sqlite:{}", dir.path().join("meta.db").display()),
        ),
        (
            "BROADCASTER_STORAGE_NODES".to_owned(),
            node_urls[..2].join(";"),
        ),
        ("BROADCASTER_REPLICATION".to_owned(), "2".to_owned()),
        ("BROADCASTER_RING_CHUNK_SIZE".to_owned(), "65536".to_owned()),
    ]);
    let bc = Broadcaster::start(&targets, &as_refs(&env));
    let base = format!("https://{}", bc.proc.addr);
    let https = tls_client(&pki.ca_pem);

    // Upload over HTTP/2 (ALPN), fanned out over HTTPS to both readers and to the ring's nodes.
    let data = gen_bytes(9, 3 << 20 | 12_345);
    let sha = sha256_hex(&data);
    let resp = https
        .put(format!("{base}/broadcast/tls.bin"))
        .body(data.clone())
        .send()
        .await
        .expect("upload over HTTPS");
    assert_eq!(resp.version(), reqwest::Version::HTTP_2, "ALPN picks h2");
    let status = resp.status();
    let summary: serde_json::Value = resp.json().await.expect("summary");
    assert_eq!(status, 201, "{summary}");
    assert_eq!(summary["sha256"], sha.as_str());
    for t in summary["targets"].as_array().expect("targets") {
        assert_eq!(t["state"], "committed", "{summary}");
    }

    // Reads: through the gateway (from the ring's HTTPS nodes), whole and a range, and from each reader.
    let resp = https
        .get(format!("{base}/files/tls.bin"))
        .send()
        .await
        .expect("read");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    let got = resp.bytes().await.expect("body");
    assert_eq!(sha256_hex(&got), sha, "byte-exact through the gateway");
    let resp = https
        .get(format!("{base}/files/tls.bin"))
        .header("Range", "bytes=1000000-1999999")
        .send()
        .await
        .expect("range");
    assert_eq!(resp.status(), 206);
    assert_eq!(
        resp.bytes().await.expect("range body").as_ref(),
        &data[1_000_000..2_000_000]
    );
    for r in &readers {
        let got = https
            .get(format!("https://{}/files/tls.bin", r.proc.addr))
            .send()
            .await
            .expect("reader read")
            .bytes()
            .await
            .expect("reader body");
        assert_eq!(sha256_hex(&got), sha, "byte-exact on {}", r.proc.addr);
    }

    // HTTP/1.1 is offered too; /healthz and /metrics are served over TLS.
    let h1 = reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).expect("CA"))
        .build()
        .expect("h1 client");
    let resp = h1.get(format!("{base}/healthz")).send().await.expect("h1");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
    let resp = https
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics");
    assert_eq!(resp.status(), 200);

    // Clients that do not trust the CA are refused by their own verification; plain HTTP gets nothing.
    let stranger = Pki::new("another CA");
    let e = tls_client(&stranger.ca_pem)
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect_err("a client without the CA must fail");
    assert!(
        describe(&e).to_ascii_lowercase().contains("certificate"),
        "{}",
        describe(&e)
    );
    let e = client()
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect_err("built-in roots do not know the test CA");
    assert!(e.is_connect() || e.is_request(), "{}", describe(&e));
    assert!(
        client()
            .get(format!("http://{}/healthz", bc.proc.addr))
            .send()
            .await
            .is_err(),
        "the listener serves HTTPS only"
    );

    // The admin CLI speaks HTTPS with the CA, and adds a node named by an https:// URL.
    let cli = |args: &[&str], ca: Option<&Path>| {
        let mut cmd = Command::new(bin("storage-node"));
        cmd.args(args)
            .env_remove("DISTRIBUTARY_TLS_CA_FILE")
            .env_remove("DISTRIBUTARY_TOKEN")
            .env("NO_PROXY", "127.0.0.1,localhost")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        if let Some(ca) = ca {
            cmd.env("DISTRIBUTARY_TLS_CA_FILE", ca);
        }
        run_to_exit(cmd, Duration::from_secs(120))
    };
    let (status, out) = cli(&["admin", "list", &base], Some(&files.ca));
    assert!(status.is_some_and(|s| s.success()), "{out}");
    assert!(out.contains(&format!("  - {}", node_urls[0])), "{out}");
    let (status, out) = cli(&["admin", "list", &base], None);
    assert!(!status.is_some_and(|s| s.success()), "{out}");
    assert!(out.to_ascii_lowercase().contains("certificate"), "{out}");
    let (status, out) = cli(&["admin", "add", &base, &node_urls[2]], Some(&files.ca));
    assert!(status.is_some_and(|s| s.success()), "{out}");
    assert!(
        out.contains(&format!("Successfully added node: {}", node_urls[2])),
        "{out}"
    );
    let got = https
        .get(format!("{base}/files/tls.bin"))
        .send()
        .await
        .expect("read after migration")
        .bytes()
        .await
        .expect("body");
    assert_eq!(
        sha256_hex(&got),
        sha,
        "byte-exact after migration over HTTPS"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tls_settings_stop_the_service_naming_the_variable() {
    let dir = scratch_dir("tls-bad-");
    let pki = Pki::new("ca");
    let files = Files::write(dir.path(), &pki);
    let other = Files::write(
        &{
            let d = dir.path().join("other");
            std::fs::create_dir_all(&d).expect("dir");
            d
        },
        &pki,
    );
    let cert = files.cert.display().to_string();
    let key = files.key.display().to_string();
    let other_key = other.key.display().to_string();
    let ca = files.ca.display().to_string();
    for (service, env, var) in [
        (
            "reader",
            vec![("READER_TLS_CERT_FILE", cert.as_str())],
            "READER_TLS_KEY_FILE",
        ),
        (
            "storage-node",
            vec![("STORAGE_NODE_TLS_KEY_FILE", key.as_str())],
            "STORAGE_NODE_TLS_CERT_FILE",
        ),
        (
            "broadcaster",
            vec![
                ("BROADCASTER_TLS_CERT_FILE", cert.as_str()),
                ("BROADCASTER_TLS_KEY_FILE", other_key.as_str()),
            ],
            "BROADCASTER_TLS_KEY_FILE",
        ),
        (
            "broadcaster",
            vec![
                ("BROADCASTER_TLS_CERT_FILE", ca.as_str()),
                ("BROADCASTER_TLS_KEY_FILE", "/nonexistent/key.pem"),
            ],
            "BROADCASTER_TLS_KEY_FILE",
        ),
        (
            "reader",
            vec![("DISTRIBUTARY_TLS_CA_FILE", key.as_str())],
            "DISTRIBUTARY_TLS_CA_FILE",
        ),
        (
            "broadcaster",
            vec![("BROADCASTER_HEADER_TIMEOUT_SECS", "0")],
            "BROADCASTER_HEADER_TIMEOUT_SECS",
        ),
        (
            "storage-node",
            vec![("STORAGE_NODE_MAX_CONNECTIONS", "lots")],
            "STORAGE_NODE_MAX_CONNECTIONS",
        ),
    ] {
        let mut cmd = service_command(service);
        cmd.arg("--check-config").current_dir(dir.path());
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let (status, out) = run_to_exit(cmd, Duration::from_secs(30));
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(2),
            "{service} {env:?}: {out}"
        );
        assert!(
            out.contains(var),
            "{service} {env:?} should name {var}: {out}"
        );
    }
}

// ---------------------------------------------------------------------------------------------------------
// Certificate reload

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_reload_without_restart() {
    let dir = scratch_dir("tls-reload-");
    let old_ca = Pki::new("old CA");
    let new_ca = Pki::new("new CA");
    let files = Files::write(dir.path(), &old_ca);
    let (node, _data) = tls_node(&files);
    let url = format!("https://{}/healthz", node.addr);
    let trusts_old = || tls_client(&old_ca.ca_pem);
    let trusts_new = || tls_client(&new_ca.ca_pem);
    assert_eq!(
        trusts_old().get(&url).send().await.expect("old").status(),
        200
    );
    assert!(trusts_new().get(&url).send().await.is_err());

    // A half-written pair (garbage certificate) is refused: the old certificate keeps being served.
    std::fs::write(&files.cert, "-----BEGIN CERTIFICATE-----\ngarbage\n").expect("garbage");
    let refused = eventually(Duration::from_secs(15), || async {
        node.log().contains("do not load")
    })
    .await;
    assert!(refused, "a bad pair is logged:\n{}", node.log());
    assert_eq!(
        trusts_old()
            .get(&url)
            .send()
            .await
            .expect("still the old certificate")
            .status(),
        200
    );

    // A certificate whose key is not the one in the key file is refused too.
    let (new_cert, new_key) = new_ca.server();
    std::fs::write(&files.cert, &new_cert).expect("cert");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        trusts_old()
            .get(&url)
            .send()
            .await
            .expect("mismatched pair keeps the old certificate")
            .status(),
        200
    );

    // The key lands: new connections get the new certificate, without a restart.
    std::fs::write(&files.key, &new_key).expect("key");
    let switched = eventually(Duration::from_secs(15), || async {
        trusts_new().get(&url).send().await.is_ok()
    })
    .await;
    assert!(switched, "new certificate served:\n{}", node.log());
    assert!(
        trusts_old().get(&url).send().await.is_err(),
        "the old certificate is gone for new connections"
    );
    assert!(
        node.log().contains("TLS certificate reloaded"),
        "{}",
        node.log()
    );
}

// ---------------------------------------------------------------------------------------------------------
// Slowloris

/// `n` connections that each send part of a request head and then nothing more. Each task returns how long
/// after its head was sent the server closed the connection (`None`: still open at `give_up`).
async fn half_sent_heads(
    addr: std::net::SocketAddr,
    n: usize,
    give_up: Duration,
) -> Vec<tokio::task::JoinHandle<Option<Duration>>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let head = format!(
            "PUT /broadcast/slow-{i}.bin HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000000\r\nX-Slow: "
        );
        s.write_all(head.as_bytes()).await.expect("half a head");
        let sent = Instant::now();
        out.push(tokio::spawn(async move {
            let mut buf = [0u8; 512];
            let deadline = sent + give_up;
            loop {
                match tokio::time::timeout_at(deadline.into(), s.read(&mut buf)).await {
                    Err(_) => return None,
                    Ok(Ok(0)) | Ok(Err(_)) => return Some(sent.elapsed()),
                    // A 408 or 503 before the close is fine; keep reading until the close.
                    Ok(Ok(_)) => {}
                }
            }
        }));
    }
    out
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// A storage node for the ring target, so that reads through the gateway have something to read from.
fn plain_node() -> (Proc, tempfile::TempDir) {
    let dir = scratch_dir("slow-node-");
    let mut cmd = service_command("storage-node");
    cmd.env("STORAGE_NODE_HTTP_HOST", "127.0.0.1")
        .env("STORAGE_NODE_HTTP_PORT", "0")
        .env("STORAGE_NODE_DATA_DIR", dir.path());
    (Proc::start("storage-node", cmd), dir)
}

async fn upload_and_read(base: &str, name: &str) {
    let data = gen_bytes(77, (1 << 20) + 333);
    let started = Instant::now();
    let resp = client()
        .put(format!("{base}/broadcast/{name}"))
        .timeout(Duration::from_secs(20))
        .body(data.clone())
        .send()
        .await
        .expect("upload during the attack");
    let status = resp.status();
    let summary = resp.text().await.unwrap_or_default();
    assert_eq!(status, 201, "{summary}");
    let got = client()
        .get(format!("{base}/files/{name}"))
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .expect("read during the attack")
        .bytes()
        .await
        .expect("body");
    assert_eq!(sha256_hex(&got), sha256_hex(&data), "byte-exact");
    let health = client()
        .get(format!("{base}/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("healthz during the attack");
    assert_eq!(health.status(), 200);
    eprintln!(
        "upload + read + healthz during the attack: {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_headers_are_closed_and_others_are_served() {
    const HEADER_TIMEOUT: u64 = 3;
    const SOCKETS: usize = 300;
    let dir = scratch_dir("slowloris-");
    let reader = Reader::start();
    let (node, _node_dir) = plain_node();
    let db = format!("sqlite:{}", dir.path().join("meta.db").display());
    let nodes = node.addr.to_string();
    let timeout = HEADER_TIMEOUT.to_string();
    let bc = Broadcaster::start(
        &[reader.target(), "ring".to_owned()],
        &[
            ("BROADCASTER_METADATA", db.as_str()),
            ("BROADCASTER_STORAGE_NODES", nodes.as_str()),
            ("BROADCASTER_REPLICATION", "1"),
            ("BROADCASTER_HEADER_TIMEOUT_SECS", timeout.as_str()),
        ],
    );
    let base = format!("http://{}", bc.proc.addr);
    let fds_before = open_fds(bc.proc.pid());

    let attack = half_sent_heads(
        bc.proc.addr,
        SOCKETS,
        Duration::from_secs(HEADER_TIMEOUT * 10),
    )
    .await;
    // The server holds them (it accepted them all) ...
    let pid = bc.proc.pid();
    let held = eventually(Duration::from_secs(2), || async {
        open_fds(pid) >= fds_before + SOCKETS
    })
    .await;
    assert!(
        held,
        "the attack's sockets are accepted: {fds_before} fds before, {} now",
        open_fds(pid)
    );
    upload_and_read(&base, "during-slowloris.bin").await;

    let mut closed = Vec::with_capacity(SOCKETS);
    for t in attack {
        closed.push(t.await.expect("task"));
    }
    let still_open = closed.iter().filter(|c| c.is_none()).count();
    assert_eq!(
        still_open, 0,
        "{still_open} of {SOCKETS} half-sent heads were never closed"
    );
    let slowest = closed.iter().flatten().max().copied().unwrap_or_default();
    assert!(
        slowest <= Duration::from_secs(HEADER_TIMEOUT) + Duration::from_secs(2),
        "closed within the header timeout ({HEADER_TIMEOUT} s); the slowest took {slowest:?}"
    );
    assert!(
        slowest >= Duration::from_secs(HEADER_TIMEOUT) - Duration::from_millis(500),
        "not closed before the header timeout: {slowest:?}"
    );
    let fds_after = open_fds(bc.proc.pid());
    assert!(
        fds_after <= fds_before + 16,
        "file descriptors back to normal: {fds_before} before, {fds_after} after"
    );
    let metrics = client()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    assert!(
        metrics.contains("distributary_http_connections_closed_total{reason=\"header_timeout\"}"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_fd_limit_survives_more_half_open_sockets_than_descriptors() {
    // The finding: with `ulimit -n 1024`, 1,500 half-sent heads made the broadcaster stop accepting.
    // Here: `ulimit -n 256` and 600 of them; the connection cap (half the limit) closes the oldest idle ones.
    const SOCKETS: usize = 600;
    let dir = scratch_dir("fdlimit-");
    let reader = Reader::start();
    let (node, _node_dir) = plain_node();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("ulimit -n 256 && exec \"$0\"")
        .arg(bin("broadcaster"));
    // The same hermetic environment as every other broadcaster of these tests.
    let template = service_command("broadcaster");
    for (k, v) in template.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd.env("BROADCASTER_HTTP_HOST", "127.0.0.1")
        .env("BROADCASTER_HTTP_PORT", "0")
        .env("BROADCASTER_HOST_LIST", format!("{};ring", reader.target()))
        .env(
            "BROADCASTER_METADATA",
            format!("sqlite:{}", dir.path().join("meta.db").display()),
        )
        .env("BROADCASTER_STORAGE_NODES", node.addr.to_string())
        .env("BROADCASTER_REPLICATION", "1")
        .env("BROADCASTER_HEADER_TIMEOUT_SECS", "5")
        .current_dir(dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let bc = Proc::start("broadcaster (ulimit -n 256)", cmd);
    assert!(
        bc.log().contains("max_connections=128"),
        "the cap follows the fd limit:\n{}",
        bc.log()
    );
    let base = format!("http://{}", bc.addr);

    let attack = half_sent_heads(bc.addr, SOCKETS, Duration::from_secs(60)).await;
    upload_and_read(&base, "during-fd-pressure.bin").await;
    for t in attack {
        assert!(
            t.await.expect("task").is_some(),
            "every half-open socket is closed"
        );
    }
    upload_and_read(&base, "after-fd-pressure.bin").await;
    assert!(
        !bc.log().contains("accept failed"),
        "never ran out of descriptors:\n{}",
        bc.log()
    );
}
