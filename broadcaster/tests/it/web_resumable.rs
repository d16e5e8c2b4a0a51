//! Resumable uploads from the web page (DESIGN.md §7) in a real headless Chromium: `web/tests/tus-ui.mjs`
//! drives the index page, whose script uploads with tus-js-client to `/uploads`, against real processes (three
//! storage nodes, a dash reader with real ffmpeg, a broadcaster fanning out to the dash reader and the ring, with
//! tokens: the browser signs in and carries the cookie). The script cuts the network part way (online and
//! offline), reloads the page part way and resumes from the stored fingerprint, cancels an upload, sends the
//! plain form without JavaScript, and plays the resumed video; here the broadcaster's own answers are checked:
//! the uploads committed byte-exact, the videos are ready, the cancelled upload left nothing.
//!
//! Needs: `npm ci --prefix web`, `ffmpeg`, `/usr/bin/chromium` (`build/test.sh` installs them).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::data::sha256_hex;
use crate::harness::{client, run_to_exit, scratch_dir, Broadcaster, Reader};
use crate::ring::Node;

const ADMIN: &str = "web-resumable-admin-token-0123456789abcdef";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Storage nodes, a dash reader and a broadcaster (targets: the dash reader and the ring) with an admin token.
struct Site {
    nodes: Vec<Node>,
    dash: Reader,
    broadcaster: Broadcaster,
    _dir: tempfile::TempDir,
}

impl Site {
    fn start() -> Site {
        let dir = scratch_dir("web-resumable-");
        let token_file = dir.path().join("admin_token");
        std::fs::write(&token_file, format!("{ADMIN}\n")).expect("token file");
        let db = format!("sqlite:{}", dir.path().join("meta.db").display());
        let nodes: Vec<Node> = (0..3)
            .map(|i| Node::start(&dir.path().join(format!("n{i}")), 0))
            .collect();
        let members = nodes.iter().map(|n| n.addr()).collect::<Vec<_>>().join(";");
        let token_file = token_file.display().to_string();
        let env = [
            ("BROADCASTER_METADATA", db.as_str()),
            ("BROADCASTER_STORAGE_NODES", members.as_str()),
            ("BROADCASTER_REPLICATION", "2"),
            ("BROADCASTER_ADMIN_TOKEN_FILE", token_file.as_str()),
        ];
        // The first broadcaster writes the ring layout to the store; the dash reader reads it from there.
        drop(Broadcaster::start(&[], &env));
        let dash = Reader::start_with(&[
            ("READER_SINK", "dash"),
            ("READER_METADATA", &db),
            ("READER_FFMPEG_PRESET", "ultrafast"),
        ]);
        let broadcaster = Broadcaster::start(&[dash.target(), "ring".to_owned()], &env);
        Site {
            nodes,
            dash,
            broadcaster,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        self.broadcaster.url(path)
    }

    /// A token with the `upload` and `read` rights, for the browser.
    async fn browser_token(&self) -> String {
        let resp = client()
            .post(self.url("/admin/tokens"))
            .bearer_auth(ADMIN)
            .json(&serde_json::json!({"name": "browser", "scopes": ["upload", "read"]}))
            .send()
            .await
            .expect("POST /admin/tokens");
        assert_eq!(resp.status(), 201);
        let v: Value = resp.json().await.expect("token json");
        v["token"].as_str().expect("token").to_owned()
    }

    /// Ring blobs whose key starts with `prefix`, on every node.
    async fn blobs(&self, prefix: &str) -> Vec<String> {
        let mut keys = Vec::new();
        for n in &self.nodes {
            let resp = reqwest::get(format!("http://{}/v1/blobs?prefix={prefix}", n.addr()))
                .await
                .expect("list blobs");
            let v: Value = resp.json().await.expect("blobs json");
            for b in v["blobs"].as_array().expect("blobs") {
                keys.push(b["key"].as_str().expect("key").to_owned());
            }
        }
        keys
    }
}

async fn get_json(url: &str, token: &str) -> (u16, Value) {
    let resp = client()
        .get(url)
        .bearer_auth(token)
        .header("accept", "application/json")
        .send()
        .await
        .expect("GET");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// `/uploads/{id}` of an upload URL the page used (its origin is the script's relay).
fn upload_path(url: &str) -> String {
    let path = &url[url.find("/uploads/").expect("an /uploads/ URL")..];
    assert_eq!(path.len(), "/uploads/".len() + 32, "upload id: {url}");
    path.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_resumes_uploads_from_the_page_after_drops_and_reloads() {
    let root = workspace();
    assert!(
        root.join("web/node_modules/tus-js-client/dist/tus.min.js")
            .is_file()
            && root.join("web/node_modules/playwright-core").is_dir()
            && Path::new("/usr/bin/chromium").exists(),
        "web/node_modules or /usr/bin/chromium missing: run build/test.sh, which installs them"
    );
    let site = Site::start();
    let token = site.browser_token().await;

    // The page loads tus-js-client from this origin, like dash.js, with the same caching headers.
    let resp = client()
        .get(site.url("/assets/tus.min.js"))
        .send()
        .await
        .expect("GET tus.min.js");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["cache-control"], "no-cache");
    assert!(resp.headers().contains_key("etag"));
    assert!(resp.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .starts_with("text/javascript"));
    let served = resp.bytes().await.expect("body");
    let installed = std::fs::read(root.join("web/node_modules/tus-js-client/dist/tus.min.js"))
        .expect("tus.min.js");
    assert!(
        served == installed,
        "served tus.min.js differs from the installed one"
    );

    let base = site.url("");
    let script_token = token.clone();
    let (status, out) = tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new("node");
        cmd.current_dir(&root)
            .args(["web/tests/tus-ui.mjs", &base, "--token", &script_token])
            .args(["--prefix", "tus"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        run_to_exit(cmd, Duration::from_secs(900))
    })
    .await
    .expect("join");
    let report: Value = out
        .lines()
        .rfind(|l| l.starts_with("{\"ok\""))
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or(Value::Null);
    assert!(
        matches!(status, Some(s) if s.success()) && report["ok"] == true,
        "tus-ui.mjs failed ({status:?}):\n{out}\nbroadcaster log:\n{}",
        site.broadcaster.proc.log()
    );
    eprintln!("tus-ui.mjs: {report}");

    // The resumed uploads committed: complete, byte-exact on the ring, listed as ready videos.
    let (_, index) = {
        let resp = client()
            .get(site.url("/"))
            .bearer_auth(&token)
            .send()
            .await
            .expect("GET /");
        (resp.status(), resp.text().await.expect("index"))
    };
    for variant in ["drop", "reload"] {
        let r = &report[variant];
        let id = r["id"].as_str().expect("id");
        let name = r["name"].as_str().expect("name");
        let size = r["size"].as_u64().expect("size");
        let path = upload_path(r["uploadUrl"].as_str().expect("uploadUrl"));
        let (status, info) = get_json(&site.url(&path), &token).await;
        assert_eq!(status, 200, "GET {path}: {info}");
        assert_eq!(info["state"], "committed", "{variant}: {info}");
        assert_eq!(info["name"], name, "{info}");
        assert_eq!(info["offset"].as_u64(), Some(size), "{info}");
        assert_eq!(info["length"].as_u64(), Some(size), "{info}");
        assert!(
            index.contains(&format!(r#"data-video-id="{id}" data-status="ready""#)),
            "{id} is not listed as ready:\n{index}"
        );
        let resp = client()
            .get(site.url(&format!("/files/{name}")))
            .bearer_auth(&token)
            .send()
            .await
            .expect("GET /files");
        assert_eq!(resp.status(), 200, "{name} from the ring");
        let body = resp.bytes().await.expect("raw copy");
        assert_eq!(body.len() as u64, size, "{name}");
        assert_eq!(sha256_hex(&body), r["sha256"].as_str().expect("sha256"));
    }
    // Every resume continued from what the server kept.
    let offsets: Vec<u64> = report["drop"]["patchOffsets"]
        .as_array()
        .expect("patchOffsets")
        .iter()
        .map(|o| o.as_u64().expect("offset"))
        .collect();
    assert!(offsets.len() >= 3, "{offsets:?}");
    assert!(offsets[1..].iter().all(|&o| o > 0), "{offsets:?}");
    assert!(report["reload"]["resumedAt"].as_u64() > Some(0));
    assert!(index.contains(r#"data-video-id="tus-nojs" data-status="ready""#));

    // The cancelled upload is gone everywhere: no upload, no video, nothing staged on the ring or the reader.
    let path = upload_path(report["cancel"]["uploadUrl"].as_str().expect("cancel url"));
    let (status, info) = get_json(&site.url(&path), &token).await;
    assert_eq!(status, 404, "GET {path} after Cancel: {info}");
    assert!(!index.contains(r#"data-video-id="tus-cancel""#), "{index}");
    let id = &path["/uploads/".len()..];
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut left = site.blobs(&format!("raw.{id}")).await;
        left.extend(site.blobs("tus-cancel/").await);
        let staged = site.dash.staging_entries();
        if left.is_empty() && staged.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the cancelled upload left ring blobs {left:?} or dash staging {staged:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
