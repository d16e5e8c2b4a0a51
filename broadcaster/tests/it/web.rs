//! The web site against a real broadcaster: the index page and its form, the watch page, 404/405 answers,
//! the assets (dash.js from `web/node_modules`, installed by `npm ci --prefix web`), security headers, escaping
//! of ids in HTML and URLs. Video records are written straight into the broadcaster's SQLite metadata, and DASH
//! content straight onto a real storage node, so these tests need no transcoder; the last one plays a video in
//! headless Chromium (`web/tests/watch.mjs`).
//!
//! Needs: `npm ci --prefix web`, and for the browser test `ffmpeg` and `/usr/bin/chromium`; `build/test.sh`
//! installs all of them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use meta::VideoRecord;
use reqwest::header;

use crate::harness::{client, run_to_exit, scratch_dir, service_command, Broadcaster, Proc};

const WEIRD_ID: &str = r#"a b<c>&"d"#;
/// `WEIRD_ID` as one percent-encoded path segment.
const WEIRD_ID_ENCODED: &str = "a%20b%3Cc%3E%26%22d";
const WEIRD_ID_ESCAPED: &str = "a b&lt;c&gt;&amp;&quot;d";

fn web_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .join("web")
}

fn dash_js_file() -> PathBuf {
    web_dir().join("node_modules/dashjs/dist/modern/umd/dash.all.min.js")
}

fn require_dash_js() {
    assert!(
        dash_js_file().is_file(),
        "{} is missing: run build/test.sh (it runs `npm ci --prefix web`)",
        dash_js_file().display()
    );
}

/// A broadcaster without targets whose metadata is the SQLite file `db` and whose web root is the repo's `web/`.
fn start(db: &Path, extra: &[(&str, &str)]) -> Broadcaster {
    let meta = format!("sqlite:{}", db.display());
    let web = web_dir().display().to_string();
    let mut env = vec![
        ("BROADCASTER_METADATA", meta.as_str()),
        ("BROADCASTER_WEB_DIR", web.as_str()),
    ];
    env.extend_from_slice(extra);
    Broadcaster::start(&[], &env)
}

fn video(id: &str, status: &str, created_unix_ms: u64) -> VideoRecord {
    VideoRecord {
        id: id.to_owned(),
        status: status.to_owned(),
        created_unix_ms,
        duration_ms: Some(10_000),
        files: vec!["manifest.mpd".into()],
        error: None,
        digests: Default::default(),
        progress_percent: None,
        upload: None,
    }
}

async fn store_videos(db: &Path, videos: &[VideoRecord]) {
    let spec = meta::parse_spec(&format!("sqlite:{}", db.display())).expect("spec");
    let store = meta::open(&spec).await.expect("open metadata");
    for v in videos {
        store.create_video(v).await.expect("create video");
    }
}

async fn get(url: &str) -> (u16, reqwest::header::HeaderMap, String) {
    let resp = client().get(url).send().await.expect("GET");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.text().await.expect("body"))
}

fn header_str(h: &reqwest::header::HeaderMap, name: impl header::AsHeaderName) -> &str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

fn assert_html_with_security_headers(h: &reqwest::header::HeaderMap) {
    assert!(
        header_str(h, header::CONTENT_TYPE).starts_with("text/html"),
        "{h:?}"
    );
    assert_eq!(header_str(h, "x-content-type-options"), "nosniff");
    let csp = header_str(h, header::CONTENT_SECURITY_POLICY);
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(csp.contains("media-src 'self' blob:"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_has_the_upload_form_and_an_empty_list() {
    let dir = scratch_dir("distributary-web-");
    let bc = start(&dir.path().join("meta.db"), &[]);
    let (status, h, body) = get(&bc.url("/")).await;
    assert_eq!(status, 200, "{body}");
    assert_html_with_security_headers(&h);
    assert_eq!(header_str(&h, header::CACHE_CONTROL), "no-store");
    for needle in [
        r#"action="/upload""#,
        r#"method="post""#,
        r#"enctype="multipart/form-data""#,
        r#"name="file""#,
        r#"type="file""#,
        r#"type="submit""#,
        "No videos yet",
        r#"<script src="/assets/app.js"></script>"#,
    ] {
        assert!(body.contains(needle), "index lacks {needle}:\n{body}");
    }
    // HEAD works like GET without a body.
    let head = client().head(bc.url("/")).send().await.expect("HEAD");
    assert_eq!(head.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_videos_routes_and_get_upload_are_refused() {
    let dir = scratch_dir("distributary-web-");
    let bc = start(&dir.path().join("meta.db"), &[]);

    let (status, h, body) = get(&bc.url("/videos/unknown")).await;
    assert_eq!(status, 404, "{body}");
    assert_html_with_security_headers(&h);
    assert!(body.contains("not found"), "{body}");
    assert!(!body.contains(r#"action="/upload""#), "{body}");

    let (status, _, body) = get(&bc.url(&format!("/videos/{WEIRD_ID_ENCODED}"))).await;
    assert_eq!(status, 404);
    assert!(body.contains(WEIRD_ID_ESCAPED), "{body}");
    assert!(!body.contains("<c>"), "{body}");

    let resp = client().get(bc.url("/upload")).send().await.expect("GET");
    assert_eq!(resp.status().as_u16(), 405, "GET /upload");

    for path in [
        "/nope",
        "/index.html",
        "/videos",
        "/videos/",
        "/videos/a/b",
        "/assets/",
        "/assets/nope.js",
        "/assets/../Cargo.toml",
        "/assets/dash.all.min.js.map",
    ] {
        let (status, _, body) = get(&bc.url(path)).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert!(
            !body.contains(r#"action="/upload""#),
            "{path} served the index"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assets_are_served_from_this_origin() {
    require_dash_js();
    let dir = scratch_dir("distributary-web-");
    let bc = start(&dir.path().join("meta.db"), &[]);

    let resp = client()
        .get(bc.url("/assets/dash.all.min.js"))
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert!(
        header_str(&h, header::CONTENT_TYPE).starts_with("text/javascript"),
        "{h:?}"
    );
    assert_eq!(header_str(&h, "x-content-type-options"), "nosniff");
    assert_eq!(header_str(&h, header::CACHE_CONTROL), "no-cache");
    let etag = header_str(&h, header::ETAG).to_owned();
    assert!(!etag.is_empty(), "no ETag: {h:?}");
    let body = resp.bytes().await.expect("body");
    let file = std::fs::read(dash_js_file()).expect("dash.js");
    assert_eq!(body.len(), file.len());
    assert!(
        body == file,
        "served dash.js differs from the installed file"
    );
    let again = client()
        .get(bc.url("/assets/dash.all.min.js"))
        .header(header::IF_NONE_MATCH, &etag)
        .send()
        .await
        .expect("GET");
    assert_eq!(again.status(), 304);

    for (path, ty) in [
        ("/assets/app.js", "text/javascript"),
        ("/assets/watch.js", "text/javascript"),
        ("/assets/style.css", "text/css"),
        ("/assets/icon.svg", "image/svg+xml"),
    ] {
        let (status, h, body) = get(&bc.url(path)).await;
        assert_eq!(status, 200, "{path}");
        assert!(
            header_str(&h, header::CONTENT_TYPE).starts_with(ty),
            "{path}: {h:?}"
        );
        assert!(!header_str(&h, header::ETAG).is_empty(), "{path}: {h:?}");
        assert!(!body.is_empty(), "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_dash_js_says_how_to_install_it() {
    let dir = scratch_dir("distributary-web-");
    let empty = dir.path().join("empty-web");
    std::fs::create_dir_all(&empty).expect("mkdir");
    let web = empty.display().to_string();
    let bc = start(
        &dir.path().join("meta.db"),
        &[("BROADCASTER_WEB_DIR", web.as_str())],
    );
    let (status, _, body) = get(&bc.url("/assets/dash.all.min.js")).await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("npm ci --prefix web"), "{body}");
    // The pages themselves still work.
    let (status, _, _) = get(&bc.url("/")).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_and_watches_videos_from_the_metadata_store() {
    let dir = scratch_dir("distributary-web-");
    let db = dir.path().join("meta.db");
    // 2024-05-01T12:34:56.789Z; the others were uploaded a few seconds later.
    const T: u64 = 1_714_566_896_789;
    let mut failed = video("broken", VideoRecord::FAILED, T + 3_000);
    failed.error = Some("not a video: <moov> missing & more".into());
    failed.duration_ms = None;
    let mut ready = video("clip", VideoRecord::READY, T);
    ready.duration_ms = Some(65_432);
    // Stored in an order unlike the expected one: the list sorts by upload time.
    store_videos(
        &db,
        &[
            ready,
            video(WEIRD_ID, VideoRecord::READY, T + 2_000),
            video("pending", VideoRecord::PROCESSING, T + 4_000),
            failed,
            video("q?x#y%z", VideoRecord::READY, T + 1_000),
        ],
    )
    .await;
    let bc = start(&db, &[]);

    let (status, h, body) = get(&bc.url("/")).await;
    assert_eq!(status, 200, "{body}");
    assert_html_with_security_headers(&h);
    assert!(!body.contains("No videos yet"), "{body}");
    assert!(
        body.contains(r#"<a href="/videos/clip">clip</a>"#),
        "{body}"
    );
    assert!(
        body.contains(&format!(
            r#"<a href="/videos/{WEIRD_ID_ENCODED}">{WEIRD_ID_ESCAPED}</a>"#
        )),
        "{body}"
    );
    assert!(
        body.contains(r#"<a href="/videos/q%3Fx%23y%25z">q?x#y%z</a>"#),
        "{body}"
    );
    assert!(!body.contains("<c>"), "unescaped id in {body}");
    // Only ready videos are links; the others show their status.
    assert!(!body.contains(r#"href="/videos/pending""#), "{body}");
    assert!(!body.contains(r#"href="/videos/broken""#), "{body}");
    assert!(body.contains(r#"data-video-id="pending" data-status="processing""#));
    assert!(body.contains(r#"data-video-id="broken" data-status="failed""#));
    assert!(
        body.contains("not a video: &lt;moov&gt; missing &amp; more"),
        "{body}"
    );
    assert!(body.contains("01:05"), "duration: {body}");
    assert!(body.contains("2024-05-01 12:34 UTC"), "upload time: {body}");
    // Newest first.
    let pos = |s: &str| body.find(s).unwrap_or_else(|| panic!("{s} missing"));
    let order = [
        "data-video-id=\"pending\"",
        "data-video-id=\"broken\"",
        &format!("data-video-id=\"{WEIRD_ID_ESCAPED}\""),
        "data-video-id=\"q?x#y%z\"",
        "data-video-id=\"clip\"",
    ];
    for w in order.windows(2) {
        assert!(
            pos(w[0]) < pos(w[1]),
            "{} should come before {}",
            w[0],
            w[1]
        );
    }

    let (status, h, body) = get(&bc.url("/videos/clip")).await;
    assert_eq!(status, 200, "{body}");
    assert_html_with_security_headers(&h);
    assert!(body.contains("/content/clip/manifest.mpd"), "{body}");
    assert!(
        body.contains(r#"poster="/content/clip/poster.jpg""#),
        "{body}"
    );
    assert!(body.contains(r#"<script src="/assets/dash.all.min.js"></script>"#));
    assert!(body.contains(r#"<select id="quality""#));
    assert!(body.contains(r#"<a href="/">"#));

    let (status, _, body) = get(&bc.url(&format!("/videos/{WEIRD_ID_ENCODED}"))).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(&format!("/content/{WEIRD_ID_ENCODED}/manifest.mpd")),
        "{body}"
    );
    assert!(body.contains(&format!(
        "<h1 class=\"video-title\">{WEIRD_ID_ESCAPED}</h1>"
    )));
    assert!(!body.contains("<c>"), "{body}");

    let (status, _, body) = get(&bc.url("/videos/q%3Fx%23y%25z")).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("/content/q%3Fx%23y%25z/manifest.mpd"),
        "{body}"
    );

    let (status, _, body) = get(&bc.url("/videos/pending")).await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("still processing"), "{body}");
    assert!(body.contains(r#"http-equiv="refresh""#), "{body}");

    let (status, _, body) = get(&bc.url("/videos/broken")).await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("&lt;moov&gt; missing &amp; more"), "{body}");
}

/// A storage node with its own data directory.
fn start_storage_node(dir: &Path) -> Proc {
    std::fs::create_dir_all(dir).expect("node dir");
    let mut cmd = service_command("storage-node");
    cmd.env("STORAGE_NODE_HTTP_HOST", "127.0.0.1")
        .env("STORAGE_NODE_HTTP_PORT", "0")
        .env("STORAGE_NODE_DATA_DIR", dir);
    Proc::start("storage-node", cmd)
}

fn node_command(args: &[&str]) -> Command {
    let mut cmd = Command::new("node");
    cmd.current_dir(web_dir().parent().expect("workspace root"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    cmd
}

/// Real DASH content (ffmpeg, two renditions) on a real storage node, registered as a ready video the way the
/// transcoder registers one, then played in headless Chromium through the broadcaster's own pages, assets and
/// `/content` route, under its Content-Security-Policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_plays_a_published_video_from_the_watch_page() {
    require_dash_js();
    assert!(
        Path::new("/usr/bin/chromium").is_file(),
        "/usr/bin/chromium is missing: run build/test.sh (apt-get install -y chromium chromium-driver)"
    );
    let dir = scratch_dir("distributary-web-play-");
    let db = dir.path().join("meta.db");
    let node = start_storage_node(&dir.path().join("node"));
    let node_addr = node.addr.to_string();

    // Two ids: an ordinary one, and one that needs escaping everywhere.
    let ids = ["clip", WEIRD_ID];
    let fixture = dir.path().join("dash");
    let fixture_arg = fixture.display().to_string();
    let (status, out) = tokio::task::spawn_blocking(move || {
        run_to_exit(
            node_command(&["web/tests/make-dash.mjs", &fixture_arg, "8"]),
            Duration::from_secs(120),
        )
    })
    .await
    .expect("join");
    assert!(
        matches!(status, Some(s) if s.success()),
        "make-dash.mjs failed (ffmpeg missing? run build/test.sh): {out}"
    );
    let mut files: Vec<String> = std::fs::read_dir(&fixture)
        .expect("fixture dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert!(files.iter().any(|f| f == "manifest.mpd"), "{files:?}");

    {
        let spec = meta::parse_spec(&format!("sqlite:{}", db.display())).expect("spec");
        let store = meta::open(&spec).await.expect("open metadata");
        let settings = broadcaster::ring::RingSettings {
            initial_nodes: vec![node_addr.clone()],
            replication: 1,
            vnodes: hashring::DEFAULT_VNODES,
            chunk_size: 4 << 20,
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(30),
            secret: None,
            lease_ttl: Duration::from_secs(60),
        };
        let cluster = broadcaster::ring::Cluster::open(store.clone(), &settings)
            .await
            .expect("ring");
        for (n, id) in ids.iter().enumerate() {
            for f in &files {
                let data = std::fs::read(fixture.join(f)).expect("read fixture");
                cluster
                    .put_blob(
                        &broadcaster::ring::nodes::BlobKey::new(*id, f.as_str()),
                        data.into(),
                    )
                    .await
                    .expect("put blob");
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_millis() as u64;
            let mut v = video(id, VideoRecord::READY, now + n as u64);
            v.duration_ms = Some(8_000);
            v.files = files.clone();
            store.create_video(&v).await.expect("create video");
        }
    }
    let bc = start(&db, &[("BROADCASTER_STORAGE_NODES", node_addr.as_str())]);

    // The content route serves what the page points at.
    let resp = client()
        .get(bc.url(&format!("/content/{WEIRD_ID_ENCODED}/manifest.mpd")))
        .send()
        .await
        .expect("GET manifest");
    assert_eq!(resp.status(), 200);

    for id in ids {
        let base = bc.url("");
        let id = id.to_owned();
        let (status, out) = tokio::task::spawn_blocking(move || {
            run_to_exit(
                node_command(&["web/tests/watch.mjs", &base, &id, "2"]),
                Duration::from_secs(150),
            )
        })
        .await
        .expect("join");
        assert!(
            matches!(status, Some(s) if s.success()),
            "watch.mjs failed ({status:?}):\n{out}\nbroadcaster log:\n{}",
            bc.proc.log()
        );
        assert!(out.contains(r#""ok":true"#), "{out}");
    }

    // play.mjs, the full browser flow, with POST /upload stood in for by web/tests/upload-stub.mjs (it answers
    // 303 like the real route once playable; "clip" is already published above).
    let stub = Proc::start(
        "upload-stub",
        node_command(&["web/tests/upload-stub.mjs", &bc.url("")]),
    );
    let mp4 = dir.path().join("clip.mp4");
    std::fs::write(&mp4, vec![0u8; 4 << 20]).expect("write upload");
    let base = format!("http://{}", stub.addr);
    let mp4 = mp4.display().to_string();
    let (status, out) = tokio::task::spawn_blocking(move || {
        run_to_exit(
            node_command(&["web/tests/play.mjs", &base, &mp4, "clip"]),
            Duration::from_secs(150),
        )
    })
    .await
    .expect("join");
    assert!(
        matches!(status, Some(s) if s.success()),
        "play.mjs failed ({status:?}):\n{out}\nstub log:\n{}",
        stub.log()
    );
    assert!(out.contains(r#""ok":true"#), "{out}");
    drop(stub);
    drop(bc);
    drop(node);
}

/// The upload form's script in Chromium: progress bar and percentage while the body goes up, the transcoding
/// state, the reload after the 303, and the server's error message on a 409. `POST /upload` is stubbed by
/// `web/tests/upload-ui.mjs` (everything else comes from this broadcaster), so no transcoder is needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_form_shows_progress_and_server_errors_in_chromium() {
    require_dash_js();
    assert!(
        Path::new("/usr/bin/chromium").is_file(),
        "/usr/bin/chromium is missing: run build/test.sh (apt-get install -y chromium chromium-driver)"
    );
    let dir = scratch_dir("distributary-web-ui-");
    let bc = start(&dir.path().join("meta.db"), &[]);
    let base = bc.url("");
    let (status, out) = tokio::task::spawn_blocking(move || {
        run_to_exit(
            node_command(&["web/tests/upload-ui.mjs", &base]),
            Duration::from_secs(120),
        )
    })
    .await
    .expect("join");
    assert!(
        matches!(status, Some(s) if s.success()),
        "upload-ui.mjs failed ({status:?}):\n{out}"
    );
    assert!(out.contains(r#""ok":true"#), "{out}");
}
