//! Security at the edges (issue 9, DESIGN.md §6): tokens and their rights on every route, revocation
//! across broadcasters, the sign-in cookie, cross-site and DNS-rebinding refusals, safe binds, and the
//! cluster secret on readers and storage nodes. Real processes on loopback.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::data::{multipart_body, multipart_content_type, Part};
use crate::harness::{client, run_to_exit, scratch_dir, service_command, Broadcaster, Reader};

const ADMIN: &str = "admin-token-0123456789abcdef0123456789";

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write file");
    p.display().to_string()
}

/// A broadcaster with a bootstrap admin token, fanning out to one disk reader.
struct Gate {
    bc: Broadcaster,
    _reader: Reader,
    _dir: tempfile::TempDir,
}

impl Gate {
    fn start(extra: &[(&str, &str)]) -> Gate {
        let dir = scratch_dir("security-");
        let token_file = write(dir.path(), "admin_token", &format!("{ADMIN}\n"));
        let db = format!("sqlite:{}", dir.path().join("meta.db").display());
        let reader = Reader::start();
        let mut env = vec![
            ("BROADCASTER_ADMIN_TOKEN_FILE", token_file.as_str()),
            ("BROADCASTER_METADATA", db.as_str()),
        ];
        env.extend_from_slice(extra);
        let bc = Broadcaster::start(&[reader.target()], &env);
        Gate {
            bc,
            _reader: reader,
            _dir: dir,
        }
    }

    async fn token(&self, body: Value) -> String {
        let resp = client()
            .post(self.bc.url("/admin/tokens"))
            .bearer_auth(ADMIN)
            .json(&body)
            .send()
            .await
            .expect("create token");
        assert_eq!(resp.status(), 201, "{body}");
        let v: Value = resp.json().await.expect("token json");
        v["token"].as_str().expect("token").to_owned()
    }
}

/// Sends `method path` with an optional bearer token (and body); returns the status.
async fn status(bc: &Broadcaster, method: &str, path: &str, token: Option<&str>) -> u16 {
    let mut req = client().request(method.parse().expect("method"), bc.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if method == "PUT" {
        req = req.body(b"hello".to_vec());
    }
    if method == "POST" && path == "/admin/tokens" {
        req = req.json(&json!({"name": "x", "scopes": ["read"]}));
    }
    req.send().await.expect("request").status().as_u16()
}

async fn multipart_status(bc: &Broadcaster, path: &str, filename: &str, token: &str) -> u16 {
    client()
        .post(bc.url(path))
        .bearer_auth(token)
        .header("content-type", multipart_content_type())
        .body(multipart_body(&[Part {
            name: "file",
            filename: Some(filename),
            data: b"some bytes",
        }]))
        .send()
        .await
        .expect("multipart")
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_by_credential() {
    let g = Gate::start(&[]);
    let read = g.token(json!({"name": "r", "scopes": ["read"]})).await;
    let upload = g.token(json!({"name": "u", "scopes": ["upload"]})).await;
    let alice = g
        .token(json!({"name": "alice", "scopes": ["upload", "read"], "prefix": "alice-"}))
        .await;
    let expiring = g
        .token(json!({"name": "e", "scopes": ["read", "upload", "admin"], "ttl_secs": 1}))
        .await;
    let revoked_id = {
        let resp = client()
            .post(g.bc.url("/admin/tokens"))
            .bearer_auth(ADMIN)
            .json(&json!({"name": "gone", "scopes": ["admin"]}))
            .send()
            .await
            .expect("create");
        let v: Value = resp.json().await.expect("json");
        (
            v["id"].as_str().expect("id").to_owned(),
            v["token"].as_str().expect("token").to_owned(),
        )
    };
    let del = client()
        .delete(g.bc.url(&format!("/admin/tokens/{}", revoked_id.0)))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("revoke");
    assert_eq!(del.status(), 204);
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // (method, path) → expected status per credential: none, read, upload, alice, admin, revoked, expired.
    let table: &[(&str, &str, [u16; 7])] = &[
        ("GET", "/healthz", [200, 200, 200, 200, 200, 200, 200]),
        ("GET", "/", [401, 200, 403, 200, 200, 401, 401]),
        ("GET", "/files/alice-x", [401, 404, 403, 404, 404, 401, 401]),
        ("GET", "/files/bob", [401, 404, 403, 403, 404, 401, 401]),
        ("GET", "/videos/bob", [401, 404, 403, 403, 404, 401, 401]),
        (
            "GET",
            "/content/bob/manifest.mpd",
            [401, 404, 403, 403, 404, 401, 401],
        ),
        (
            "PUT",
            "/broadcast/alice-1",
            [401, 403, 201, 201, 201, 401, 401],
        ),
        ("PUT", "/broadcast/bob", [401, 403, 201, 403, 201, 401, 401]),
        ("GET", "/admin/nodes", [401, 403, 403, 403, 200, 401, 401]),
        ("GET", "/admin/tokens", [401, 403, 403, 403, 200, 401, 401]),
        ("POST", "/admin/tokens", [401, 403, 403, 403, 201, 401, 401]),
        ("GET", "/metrics", [401, 403, 403, 403, 200, 401, 401]),
    ];
    let creds: [Option<&str>; 7] = [
        None,
        Some(&read),
        Some(&upload),
        Some(&alice),
        Some(ADMIN),
        Some(&revoked_id.1),
        Some(&expiring),
    ];
    let names = [
        "none", "read", "upload", "alice", "admin", "revoked", "expired",
    ];
    let mut wrong = Vec::new();
    for (method, path, want) in table {
        for (i, cred) in creds.iter().enumerate() {
            let got = status(&g.bc, method, path, *cred).await;
            if got != want[i] {
                wrong.push(format!(
                    "{method} {path} as {}: {got}, want {}",
                    names[i], want[i]
                ));
            }
        }
    }
    // Names that only the body carries are checked against the prefix too.
    for (path, file, want) in [
        ("/broadcast", "alice-2.bin", 200),
        ("/broadcast", "bob.bin", 403),
        ("/upload", "bob.mp4", 403),
    ] {
        let got = multipart_status(&g.bc, path, file, &alice).await;
        if got != want {
            wrong.push(format!("POST {path} {file} as alice: {got}, want {want}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // 401s say how to authenticate; a listing never shows a secret.
    let resp = client().get(g.bc.url("/")).send().await.expect("get");
    assert_eq!(
        resp.headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer realm=\"distributary\"")
    );
    let listing = client()
        .get(g.bc.url("/admin/tokens"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("list")
        .text()
        .await
        .expect("text");
    for secret in [read.as_str(), upload.as_str(), alice.as_str(), ADMIN] {
        assert!(!listing.contains(secret), "{listing}");
    }
    assert!(!listing.contains("hash"), "{listing}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_reaches_every_broadcaster_within_5_s() {
    let dir = scratch_dir("security-shared-");
    let token_file = write(dir.path(), "admin_token", ADMIN);
    let db = format!("sqlite:{}", dir.path().join("meta.db").display());
    let env = [
        ("BROADCASTER_ADMIN_TOKEN_FILE", token_file.as_str()),
        ("BROADCASTER_METADATA", db.as_str()),
    ];
    let reader = Reader::start();
    let a = Broadcaster::start(&[reader.target()], &env);
    let b = Broadcaster::start(&[reader.target()], &env);
    let v: Value = client()
        .post(a.url("/admin/tokens"))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "mobile", "scopes": ["read"]}))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("json");
    let (id, token) = (
        v["id"].as_str().expect("id"),
        v["token"].as_str().expect("token"),
    );
    assert_eq!(status(&b, "GET", "/", Some(token)).await, 200);
    let del = client()
        .delete(a.url(&format!("/admin/tokens/{id}")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("revoke");
    assert_eq!(del.status(), 204);
    let revoked_at = Instant::now();
    assert_eq!(status(&a, "GET", "/", Some(token)).await, 401);
    loop {
        if status(&b, "GET", "/", Some(token)).await == 401 {
            break;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(5),
            "the other broadcaster still accepts a revoked token after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_sign_in_once_and_cross_site_posts_are_refused() {
    let g = Gate::start(&[]);
    let no_redirect = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    // Unauthenticated browsers get the sign-in form with the 401.
    let page = no_redirect
        .get(g.bc.url("/"))
        .header("accept", "text/html")
        .send()
        .await
        .expect("get");
    assert_eq!(page.status(), 401);
    assert!(page
        .text()
        .await
        .expect("text")
        .contains("action=\"/signin\""));

    let bad = no_redirect
        .post(g.bc.url("/signin"))
        .form(&[("token", "not-a-token")])
        .send()
        .await
        .expect("signin");
    assert_eq!(bad.status(), 401);
    let cross = no_redirect
        .post(g.bc.url("/signin"))
        .header("sec-fetch-site", "cross-site")
        .form(&[("token", ADMIN)])
        .send()
        .await
        .expect("signin");
    assert_eq!(cross.status(), 403);

    let ok = no_redirect
        .post(g.bc.url("/signin"))
        .header("sec-fetch-site", "same-origin")
        .form(&[("token", ADMIN)])
        .send()
        .await
        .expect("signin");
    assert_eq!(ok.status(), 303);
    let cookie = ok
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("cookie")
        .to_owned();
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    let pair = cookie.split(';').next().expect("pair").to_owned();
    let index = no_redirect
        .get(g.bc.url("/"))
        .header("cookie", &pair)
        .send()
        .await
        .expect("index");
    assert_eq!(index.status(), 200);

    // The same cookie on a form post from another site is refused, as is any other origin's post.
    for (k, v) in [
        ("sec-fetch-site", "cross-site"),
        ("origin", "http://evil.example"),
    ] {
        let resp = no_redirect
            .post(g.bc.url("/broadcast"))
            .header("cookie", &pair)
            .header(k, v)
            .header("content-type", multipart_content_type())
            .body(multipart_body(&[Part {
                name: "file",
                filename: Some("csrf.bin"),
                data: b"x",
            }]))
            .send()
            .await
            .expect("post");
        assert_eq!(resp.status(), 403, "{k}: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_read_opens_reads_only() {
    let g = Gate::start(&[("BROADCASTER_PUBLIC_READ", "true")]);
    assert_eq!(status(&g.bc, "GET", "/", None).await, 200);
    assert_eq!(status(&g.bc, "GET", "/files/nothing", None).await, 404);
    assert_eq!(status(&g.bc, "PUT", "/broadcast/x", None).await, 401);
    assert_eq!(status(&g.bc, "GET", "/admin/nodes", None).await, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_authentication_only_loopback_host_names_are_served() {
    let reader = Reader::start();
    let bc = Broadcaster::start(&[reader.target()], &[]);
    for (host, want) in [
        ("127.0.0.1", 200),
        ("localhost:80", 200),
        ("rebind.attacker.example", 421),
        ("rebind.attacker.example:8080", 421),
    ] {
        let got = client()
            .get(bc.url("/admin/nodes"))
            .header("host", host)
            .send()
            .await
            .expect("get")
            .status()
            .as_u16();
        assert_eq!(got, want, "Host: {host}");
    }
}

#[test]
fn a_public_bind_without_credentials_refuses_to_start() {
    for (bin, env, names) in [
        (
            "broadcaster",
            vec![
                ("BROADCASTER_HTTP_HOST", "0.0.0.0"),
                ("BROADCASTER_HTTP_PORT", "0"),
            ],
            vec!["BROADCASTER_ADMIN_TOKEN_FILE", "BROADCASTER_AUTH"],
        ),
        (
            "reader",
            vec![("READER_HTTP_HOST", "0.0.0.0"), ("READER_HTTP_PORT", "0")],
            vec!["DISTRIBUTARY_CLUSTER_SECRET_FILE", "READER_HTTP_HOST"],
        ),
        (
            "storage-node",
            vec![
                ("STORAGE_NODE_HTTP_HOST", "0.0.0.0"),
                ("STORAGE_NODE_HTTP_PORT", "0"),
            ],
            vec!["DISTRIBUTARY_CLUSTER_SECRET_FILE", "STORAGE_NODE_HTTP_HOST"],
        ),
    ] {
        let dir = scratch_dir("security-bind-");
        let mut cmd = service_command(bin);
        cmd.current_dir(dir.path()).envs(env);
        let (status, out) = run_to_exit(cmd, Duration::from_secs(20));
        let status = status.expect("exits");
        assert!(
            !status.success(),
            "{bin} started on 0.0.0.0 without credentials: {out}"
        );
        for n in names {
            assert!(out.contains(n), "{bin}'s refusal does not name {n}: {out}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_secret_guards_readers_and_storage_nodes() {
    let dir = scratch_dir("security-secret-");
    let secret = write(dir.path(), "secret", &"k".repeat(40));
    let other = write(dir.path(), "other", &"z".repeat(40));
    let reader = Reader::start_with(&[("DISTRIBUTARY_CLUSTER_SECRET_FILE", secret.as_str())]);
    // Straight to the reader, without the secret: its stream protocol, the seed's form and its files.
    for (method, path) in [
        ("PUT", "/v1/uploads/00000000000000000000000000000001/x.bin"),
        ("POST", "/upload"),
        ("GET", "/files/x.bin"),
    ] {
        let got = client()
            .request(method.parse().expect("method"), reader.url(path))
            .body(b"data".to_vec())
            .send()
            .await
            .expect("request")
            .status()
            .as_u16();
        assert_eq!(got, 401, "{method} {path}");
    }
    assert_eq!(
        client()
            .get(reader.url("/healthz"))
            .send()
            .await
            .expect("healthz")
            .status(),
        200
    );

    // A broadcaster with the secret reaches it; one with another secret is refused.
    let good = Broadcaster::start(
        &[reader.target()],
        &[("DISTRIBUTARY_CLUSTER_SECRET_FILE", secret.as_str())],
    );
    let resp = client()
        .put(good.put_url("ok.bin"))
        .body(b"payload".to_vec())
        .send()
        .await
        .expect("put");
    assert_eq!(resp.status(), 201);
    let bad = Broadcaster::start(
        &[reader.target()],
        &[("DISTRIBUTARY_CLUSTER_SECRET_FILE", other.as_str())],
    );
    let resp = client()
        .put(bad.put_url("no.bin"))
        .body(b"payload".to_vec())
        .send()
        .await
        .expect("put");
    assert_eq!(resp.status(), 502);
    assert!(!reader.committed_names().contains(&"no.bin".to_owned()));

    // A storage node with the secret lists nothing to strangers.
    let mut cmd = service_command("storage-node");
    cmd.env("STORAGE_NODE_HTTP_PORT", "0")
        .env("STORAGE_NODE_DATA_DIR", dir.path().join("node"))
        .env("DISTRIBUTARY_CLUSTER_SECRET_FILE", &secret);
    let node = crate::harness::Proc::start("storage-node", cmd);
    for path in ["/v1/blobs", "/v1/blobs/a/b"] {
        let got = client()
            .get(format!("http://{}{path}", node.addr))
            .send()
            .await
            .expect("get")
            .status()
            .as_u16();
        assert_eq!(got, 401, "{path}");
    }
    // A ring broadcaster with the secret stores and reads back through it.
    let ring_db = format!("sqlite:{}", dir.path().join("ring.db").display());
    let node_addr = node.addr.to_string();
    let ring = Broadcaster::start(
        &["ring".to_owned()],
        &[
            ("DISTRIBUTARY_CLUSTER_SECRET_FILE", secret.as_str()),
            ("BROADCASTER_METADATA", ring_db.as_str()),
            ("BROADCASTER_STORAGE_NODES", node_addr.as_str()),
            ("BROADCASTER_REPLICATION", "1"),
        ],
    );
    let resp = client()
        .put(ring.put_url("ring.bin"))
        .body(vec![7u8; 100_000])
        .send()
        .await
        .expect("put");
    assert_eq!(resp.status(), 201);
    let back = client()
        .get(ring.url("/files/ring.bin"))
        .send()
        .await
        .expect("get")
        .bytes()
        .await
        .expect("bytes");
    assert_eq!(back.len(), 100_000);
}

/// Peak resident memory of a process we started, in KiB.
fn vm_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Opens `n` connections that each start an upload of `announced` bytes, send 16 of them and go quiet.
async fn idle_uploads(
    addr: std::net::SocketAddr,
    n: usize,
    path: impl Fn(usize) -> String,
) -> Vec<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let mut socks = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let head = format!(
            "PUT {} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1048576\r\n\r\n0123456789abcdef",
            path(i)
        );
        s.write_all(head.as_bytes()).await.expect("write");
        socks.push(s);
    }
    socks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_uploads_cannot_starve_a_reader_or_a_storage_node() {
    const IDLE: usize = 540; // more than tokio's 512 blocking threads
    let reader = Reader::start();
    std::fs::write(reader.files_dir().join("present.txt"), b"here").expect("seed a file");
    let _held = idle_uploads(reader.proc.addr, IDLE, |i| {
        format!("/v1/uploads/{:032x}/idle-{i}.bin", i + 1)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let quick = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let read = quick.get(reader.url("/files/present.txt")).send().await;
    assert!(
        matches!(&read, Ok(r) if r.status() == 200),
        "a read hung behind {IDLE} idle uploads: {read:?}"
    );
    let staged = quick
        .put(reader.url(&format!("/v1/uploads/{:032x}/fresh.bin", 99_999)))
        .body(vec![1u8; 4096])
        .send()
        .await;
    assert!(
        matches!(&staged, Ok(r) if r.status() == 200),
        "a new upload hung behind {IDLE} idle uploads: {staged:?}"
    );

    let dir = scratch_dir("security-node-");
    let mut cmd = service_command("storage-node");
    cmd.env("STORAGE_NODE_HTTP_PORT", "0")
        .env("STORAGE_NODE_DATA_DIR", dir.path());
    let node = crate::harness::Proc::start("storage-node", cmd);
    let _held_node = idle_uploads(node.addr, IDLE, |i| format!("/v1/blobs/idle/b{i}")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let put = quick
        .put(format!("http://{}/v1/blobs/v/fresh", node.addr))
        .body(vec![2u8; 4096])
        .send()
        .await;
    assert!(
        matches!(&put, Ok(r) if r.status() == 201),
        "a blob write hung behind {IDLE} idle PUTs: {put:?}"
    );
    let get = quick
        .get(format!("http://{}/v1/blobs/v/fresh", node.addr))
        .send()
        .await;
    assert!(
        matches!(&get, Ok(r) if r.status() == 200),
        "a blob read hung behind {IDLE} idle PUTs: {get:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_uploads_are_capped_and_cut() {
    let reader = Reader::start();
    let bc = Broadcaster::start(
        &[reader.target()],
        &[
            ("BROADCASTER_MAX_UPLOADS", "3"),
            ("BROADCASTER_BODY_IDLE_TIMEOUT_SECS", "2"),
        ],
    );
    let _stalled = idle_uploads(bc.proc.addr, 3, |i| format!("/broadcast/stalled-{i}")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = client()
        .put(bc.put_url("one-too-many"))
        .body(b"x".to_vec())
        .send()
        .await
        .expect("put");
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let health = client()
        .get(bc.url("/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 503, "healthz should report saturation");
    // After the idle timeout the stalled uploads are cut, their slots freed and nothing is kept.
    let freed = crate::harness::eventually(Duration::from_secs(10), || async {
        client()
            .put(bc.put_url("after"))
            .body(b"y".to_vec())
            .send()
            .await
            .is_ok_and(|r| r.status() == 201)
    })
    .await;
    assert!(freed, "stalled uploads still hold every slot");
    assert_eq!(reader.committed_names(), vec!["after".to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_multipart_header_costs_no_memory() {
    let reader = Reader::start();
    let bc = Broadcaster::start(&[reader.target()], &[]);
    let before = vm_hwm_kib(bc.proc.pid());
    let mut body =
        b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.bin\"\r\nX-Pad: "
            .to_vec();
    body.extend(std::iter::repeat_n(b'a', 24 << 20));
    body.extend_from_slice(b"\r\n\r\ndata\r\n--XyZ--\r\n");
    let resp = client()
        .post(bc.url("/broadcast"))
        .header("content-type", "multipart/form-data; boundary=XyZ")
        .body(body)
        .send()
        .await;
    if let Ok(r) = resp {
        assert!(r.status().is_client_error(), "{}", r.status());
    }
    let grown = vm_hwm_kib(bc.proc.pid()).saturating_sub(before);
    assert!(
        grown < 8 * 1024,
        "a 24 MiB part header grew the broadcaster by {grown} KiB"
    );
    assert!(reader.committed_names().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_names_and_headers() {
    let reader = Reader::start();
    let target = format!("http://user:hunter2@{}", reader.target());
    let bc = Broadcaster::start(&[target], &[]);
    let resp = client()
        .put(bc.put_url("secret-target.bin"))
        .body(b"payload".to_vec())
        .send()
        .await
        .expect("put");
    assert_eq!(resp.status(), 201);
    let summary = resp.text().await.expect("summary");
    let metrics = client()
        .get(bc.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for (what, text) in [
        ("summary", summary.as_str()),
        ("metrics", metrics.as_str()),
        ("log", bc.proc.log().as_str()),
    ] {
        assert!(
            !text.contains("hunter2"),
            "the {what} shows the password: {text}"
        );
    }

    // Misleading names are refused; a decomposed name is stored composed.
    for bad in ["evil\u{202E}gpj.exe", "a\u{200B}b"] {
        let r = client()
            .put(bc.put_url(bad))
            .body(b"x".to_vec())
            .send()
            .await
            .expect("put");
        assert_eq!(r.status(), 400, "{bad:?}");
    }
    let r = client()
        .put(bc.put_url("cafe\u{301}.txt"))
        .body(b"x".to_vec())
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 201);
    assert!(reader
        .committed_names()
        .contains(&"caf\u{e9}.txt".to_owned()));

    // Every answer says nosniff and carries a policy; raw files may never render as a page.
    let r = client().get(bc.url("/nope")).send().await.expect("get");
    assert_eq!(
        r.headers()
            .get("x-content-type-options")
            .and_then(|v| v.to_str().ok()),
        Some("nosniff")
    );
    assert!(r.headers().contains_key("content-security-policy"));
}
