//! TLS on the storage node and in the admin CLI (issue 9; DESIGN.md §6): the node serves HTTPS with a test
//! CA made here; `storage-node admin` talks to an `https://` broadcaster verified with
//! `DISTRIBUTARY_TLS_CA_FILE` and sends `DISTRIBUTARY_TOKEN` as a Bearer token; a TLS handshake that never
//! starts is closed within the header timeout. The mock broadcaster runs on the shared listener in process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::routing::get;
use axum::{Extension, Json, Router};
use common::server::{Scheme, ServerOptions, ServerVars};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use crate::harness::{payload, run_cli, sha_hex, Node};

/// CA certificate, server certificate and key files for 127.0.0.1 / localhost.
struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    ca_pem: String,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "storage-node test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().expect("CA key");
        let ca_pem = ca_params.self_signed(&ca_key).expect("CA").pem();
        let issuer = Issuer::new(ca_params, ca_key);
        let params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("params");
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &issuer).expect("cert");
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).expect("write");
            p
        };
        Pki {
            ca: write("ca.pem", &ca_pem),
            cert: write("server.pem", &cert.pem()),
            key: write("server-key.pem", &key.serialize_pem()),
            ca_pem,
            _dir: dir,
        }
    }

    fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .no_proxy()
            .tls_built_in_root_certs(false)
            .add_root_certificate(
                reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).expect("CA"),
            )
            .build()
            .expect("client")
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[derive(Debug, Default)]
struct Seen {
    authorization: Vec<Option<String>>,
    scheme: Vec<Scheme>,
    peers: Vec<SocketAddr>,
}

/// A broadcaster's `GET /admin/nodes` over HTTPS on the shared listener, recording what it was sent.
async fn mock_broadcaster(
    pki: &Pki,
    header_timeout: &str,
) -> (SocketAddr, Arc<Mutex<Seen>>, CancellationToken) {
    let seen: Arc<Mutex<Seen>> = Arc::default();
    async fn nodes(
        State(seen): State<Arc<Mutex<Seen>>>,
        Extension(scheme): Extension<Scheme>,
        ConnectInfo(peer): ConnectInfo<SocketAddr>,
        headers: HeaderMap,
    ) -> Json<serde_json::Value> {
        let mut s = seen.lock().unwrap();
        s.authorization.push(
            headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        );
        s.scheme.push(scheme);
        s.peers.push(peer);
        Json(json!({"version": 1, "replication": 2, "nodes": ["https://127.0.0.1:9443"]}))
    }
    let app = Router::new()
        .route("/admin/nodes", get(nodes))
        .with_state(seen.clone());
    let options = ServerOptions::parse(
        "MOCK_",
        ServerVars {
            tls_cert_file: Some(path(&pki.cert)),
            tls_key_file: Some(path(&pki.key)),
            header_timeout_secs: Some(header_timeout),
            ..ServerVars::default()
        },
    )
    .expect("options");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = CancellationToken::new();
    tokio::spawn(common::server::serve(
        listener,
        app,
        options,
        stop.clone(),
        Duration::from_secs(1),
    ));
    (addr, seen, stop)
}

#[tokio::test]
async fn admin_cli_over_https_verifies_the_ca_and_sends_the_token() {
    let pki = Pki::new();
    let (addr, seen, stop) = mock_broadcaster(&pki, "10").await;
    let url = format!("https://{addr}");

    let (status, out, err) = run_cli(
        &["admin", "list", &url],
        &[
            ("DISTRIBUTARY_TLS_CA_FILE", path(&pki.ca)),
            ("DISTRIBUTARY_TOKEN", "dst_secret-token"),
        ],
    )
    .await;
    assert!(status.success(), "{out}{err}");
    assert_eq!(
        out, "Storage cluster nodes:\n  - https://127.0.0.1:9443\n",
        "{err}"
    );
    // Without the CA the broadcaster's certificate is not trusted; without a token none is sent.
    let (status, out, err) = run_cli(
        &["admin", "list", &url],
        &[("DISTRIBUTARY_TLS_CA_FILE", ""), ("DISTRIBUTARY_TOKEN", "")],
    )
    .await;
    assert!(!status.success(), "{out}");
    assert!(err.to_ascii_lowercase().contains("certificate"), "{err}");
    let (status, out, err) = run_cli(
        &["admin", "list", &url],
        &[
            ("DISTRIBUTARY_TLS_CA_FILE", path(&pki.ca)),
            ("DISTRIBUTARY_TOKEN", ""),
        ],
    )
    .await;
    assert!(status.success(), "{out}{err}");
    // A CA file that holds no certificate is refused, naming the variable.
    let (status, _, err) = run_cli(
        &["admin", "list", &url],
        &[("DISTRIBUTARY_TLS_CA_FILE", path(&pki.key))],
    )
    .await;
    assert!(!status.success());
    assert!(err.contains("DISTRIBUTARY_TLS_CA_FILE"), "{err}");

    let s = seen.lock().unwrap();
    assert_eq!(
        s.authorization,
        vec![Some("Bearer dst_secret-token".to_owned()), None]
    );
    assert!(s.scheme.iter().all(|x| *x == Scheme::Https), "{s:?}");
    assert!(s.peers.iter().all(|p| p.ip().is_loopback()), "{s:?}");
    stop.cancel();
}

#[tokio::test]
async fn a_tls_handshake_that_never_starts_is_closed_within_the_header_timeout() {
    let pki = Pki::new();
    let (addr, _seen, stop) = mock_broadcaster(&pki, "2").await;
    let mut idle = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), idle.read(&mut buf))
        .await
        .expect("closed by the server")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(4),
        "closed after {took:?}, header timeout 2 s"
    );
    // Meanwhile, and after, the listener serves.
    let r = pki
        .client()
        .get(format!("https://{addr}/admin/nodes"))
        .send()
        .await
        .expect("served");
    assert_eq!(r.status(), 200);
    stop.cancel();
}

#[tokio::test]
async fn storage_node_serves_blobs_over_https_only() {
    let pki = Pki::new();
    let node = Node::start_with(&[
        ("STORAGE_NODE_TLS_CERT_FILE", path(&pki.cert)),
        ("STORAGE_NODE_TLS_KEY_FILE", path(&pki.key)),
    ]);
    let https = pki.client();
    let data = payload(300_000, 7);
    let url = format!("https://{}/v1/blobs/video-1/init-0.m4s", node.addr);
    let r = https
        .put(&url)
        .body(data.clone())
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 201);
    let r = https.get(&url).send().await.expect("get");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["x-content-sha256"],
        sha_hex(&data).as_str(),
        "digest header"
    );
    assert_eq!(r.bytes().await.expect("body"), data);
    assert!(
        crate::harness::client()
            .get(node.url("/healthz"))
            .send()
            .await
            .is_err(),
        "no plain HTTP on a TLS listener"
    );
}
