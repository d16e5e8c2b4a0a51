//! Video end to end: the web form's `POST /upload` through a broadcaster to a disk reader and a dash
//! reader (real ffmpeg), DASH files on a ring of real storage nodes, served back by `/content`.
//! Clips are generated with ffmpeg's lavfi sources; nothing is committed to the repository.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::data::{multipart_body, multipart_content_type, Part};
use crate::harness::{get_text, scratch_dir, Broadcaster, Reader};
use crate::ring::Node;

/// A test clip: `secs` seconds of test pattern and a tone, H.264/AAC in MP4 (index at the end, as most
/// cameras write it).
pub fn make_clip(dir: &Path, name: &str, secs: u32, size: &str) -> PathBuf {
    let out = dir.join(name);
    let status = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args([
            "-f",
            "lavfi",
            "-i",
            &format!("testsrc2=size={size}:rate=25"),
        ])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
        .args([
            "-t",
            &secs.to_string(),
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
        ])
        .args(["-c:a", "aac", "-b:a", "96k"])
        .arg(&out)
        .status()
        .expect("ffmpeg must be installed (build/test.sh installs it)");
    assert!(status.success(), "ffmpeg could not make the test clip");
    out
}

fn pairs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// The full local topology: three storage nodes, a disk reader, a dash reader, a broadcaster.
struct Site {
    _dir: tempfile::TempDir,
    nodes: Vec<Node>,
    disk: Reader,
    dash: Reader,
    broadcaster: Broadcaster,
    env: Vec<(String, String)>,
    dash_env: Vec<(String, String)>,
}

impl Site {
    fn start() -> Site {
        Site::start_with_preset("ultrafast")
    }

    /// The site with the dash reader's x264 `preset` (a slower one makes a transcode take a while).
    fn start_with_preset(preset: &str) -> Site {
        let dir = scratch_dir("video-");
        let db = format!("sqlite:{}", dir.path().join("meta.db").display());
        let nodes: Vec<Node> = (0..3)
            .map(|i| Node::start(&dir.path().join(format!("n{i}")), 0))
            .collect();
        let members = nodes.iter().map(|n| n.addr()).collect::<Vec<_>>().join(";");
        // The broadcaster seeds the layout; the dash reader reads it from the same store.
        let env: Vec<(String, String)> = vec![
            ("BROADCASTER_METADATA".into(), db.clone()),
            ("BROADCASTER_STORAGE_NODES".into(), members),
            ("BROADCASTER_REPLICATION".into(), "2".into()),
        ];
        let disk = Reader::start_with(&[]);
        let seed = start_broadcaster(&[disk.target()], &env);
        drop(seed);
        let dash_env: Vec<(String, String)> = vec![
            ("READER_SINK".into(), "dash".into()),
            ("READER_METADATA".into(), db.clone()),
            ("READER_FFMPEG_PRESET".into(), preset.into()),
        ];
        let dash = Reader::start_with(&pairs(&dash_env));
        let broadcaster = start_broadcaster(&[disk.target(), dash.target()], &env);
        Site {
            _dir: dir,
            nodes,
            disk,
            dash,
            broadcaster,
            env,
            dash_env,
        }
    }

    /// SIGKILLs the dash reader and starts it again on its data directory.
    fn restart_dash(&mut self) {
        let env = self.dash_env.clone();
        self.dash.restart(&pairs(&env));
    }

    fn restart_broadcaster(&mut self) {
        let targets = [self.disk.target(), self.dash.target()];
        self.broadcaster = start_broadcaster(&targets, &self.env);
    }

    fn url(&self, path: &str) -> String {
        self.broadcaster.url(path)
    }
}

fn start_broadcaster(targets: &[String], env: &[(String, String)]) -> Broadcaster {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Broadcaster::start(targets, &env)
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(300))
        .build()
        .expect("client")
}

async fn upload(site: &Site, filename: &str, data: &[u8]) -> (u16, String, Option<String>) {
    post_form_to(&site.url("/upload"), filename, data).await
}

/// `POST /upload` to `url`: status and body.
async fn post_form(url: &str, filename: &str, data: &[u8]) -> (u16, String) {
    let (status, body, _) = post_form_to(url, filename, data).await;
    (status, body)
}

async fn post_form_to(url: &str, filename: &str, data: &[u8]) -> (u16, String, Option<String>) {
    let body = multipart_body(&[Part {
        name: "file",
        filename: Some(filename),
        data,
    }]);
    let resp = no_redirects()
        .post(url)
        .header("content-type", multipart_content_type())
        .body(body)
        .send()
        .await
        .expect("POST /upload");
    let status = resp.status().as_u16();
    let location = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, resp.text().await.unwrap_or_default(), location)
}

async fn blobs_with_prefix(nodes: &[Node], prefix: &str) -> Vec<String> {
    let mut keys = std::collections::BTreeSet::new();
    for n in nodes.iter().filter(|n| n.proc.is_some()) {
        let Ok(resp) = reqwest::get(format!("http://{}/v1/blobs?prefix={prefix}", n.addr())).await
        else {
            continue;
        };
        let v: serde_json::Value = resp.json().await.expect("list json");
        for b in v["blobs"].as_array().expect("blobs") {
            keys.insert(b["key"].as_str().expect("key").to_owned());
        }
    }
    keys.into_iter().collect()
}

/// Every file of the video answers 200 with the right media type.
async fn assert_playable(site: &Site, id: &str) -> usize {
    let client = no_redirects();
    let manifest = client
        .get(site.url(&format!("/content/{id}/manifest.mpd")))
        .send()
        .await
        .expect("manifest");
    assert_eq!(manifest.status(), 200);
    assert_eq!(manifest.headers()["content-type"], "application/dash+xml");
    let mpd = manifest.text().await.expect("mpd text");
    assert!(mpd.contains("<MPD"), "{mpd}");
    let video_reps = mpd
        .split("<Representation")
        .skip(1)
        .filter(|r| r.contains("video/mp4") || r.contains("width="))
        .count();
    assert!(
        video_reps >= 2,
        "several video representations expected:\n{mpd}"
    );
    let files = blobs_with_prefix(&site.nodes, &format!("{id}/")).await;
    assert!(
        files.iter().any(|f| f.ends_with("/init-0.m4s")),
        "{files:?}"
    );
    assert!(
        files.iter().any(|f| f.ends_with("/chunk-0-00001.m4s")),
        "{files:?}"
    );
    assert!(
        files.iter().any(|f| f.ends_with("/poster.jpg")),
        "{files:?}"
    );
    for key in &files {
        let file = key.split_once('/').expect("id/file").1;
        let resp = client
            .get(site.url(&format!("/content/{id}/{file}")))
            .send()
            .await
            .expect("segment");
        assert_eq!(resp.status(), 200, "{key}");
        if file.ends_with(".m4s") {
            assert_eq!(resp.headers()["content-type"], "video/mp4", "{key}");
            assert!(resp.headers()["cache-control"]
                .to_str()
                .expect("ascii")
                .contains("immutable"));
        }
        assert!(
            !resp.bytes().await.expect("body").is_empty(),
            "{key} is empty"
        );
    }
    files.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_video_uploaded_through_the_form_becomes_playable_and_stays_so() {
    let mut site = Site::start();
    let media = scratch_dir("clips-");
    let clip = std::fs::read(make_clip(media.path(), "clip.mp4", 10, "1280x720")).expect("clip");

    let (status, body, location) = upload(&site, "clip.mp4", &clip).await;
    assert_eq!(status, 303, "{body}");
    assert_eq!(location.as_deref(), Some("/"));
    let files = assert_playable(&site, "clip").await;
    assert!(
        files > 8,
        "a ladder of 3 renditions and audio has many files ({files})"
    );
    // The raw upload reached the disk reader too.
    assert_eq!(
        std::fs::read(site.disk.files_dir().join("clip.mp4")).expect("disk copy"),
        clip
    );

    // Ranges, missing files, malformed paths.
    let client = no_redirects();
    let resp = client
        .get(site.url("/content/clip/init-0.m4s"))
        .header("Range", "bytes=0-9")
        .send()
        .await
        .expect("range");
    assert_eq!(resp.status(), 206);
    assert_eq!(resp.bytes().await.expect("body").len(), 10);
    for (path, want) in [
        ("/content/clip/chunk-0-99999.m4s", 404),
        ("/content/nope/manifest.mpd", 404),
        ("/content/clip/a%2Fb", 400),
        ("/content/..%2Fetc/passwd", 400),
        ("/content/clip/a%00b", 400),
        ("/no/such/route", 404),
    ] {
        let status = client
            .get(site.url(path))
            .send()
            .await
            .expect("get")
            .status();
        assert_eq!(status, want, "{path}");
    }

    // Duplicate id, no file.
    let (status, body, _) = upload(&site, "clip.mp4", &clip).await;
    assert_eq!(status, 409, "{body}");
    let resp = client
        .post(site.url("/upload"))
        .header("content-type", multipart_content_type())
        .body(multipart_body(&[Part {
            name: "other",
            filename: None,
            data: b"x",
        }]))
        .send()
        .await
        .expect("no file");
    assert_eq!(resp.status(), 400);

    // A storage node dies: with R=2 the video still plays.
    site.nodes[1].proc.as_mut().expect("running").kill9();
    site.nodes[1].proc = None;
    assert_playable(&site, "clip").await;

    // The broadcaster restarts: the catalogue and the files are still there.
    site.restart_broadcaster();
    assert_playable(&site, "clip").await;
}

/// The `data-progress` percentage of video `id`'s row on the index, and its status.
fn index_row(page: &str, id: &str) -> Option<(String, Option<u8>)> {
    let row = page
        .lines()
        .find(|l| l.contains(&format!(r#"data-video-id="{id}""#)))?;
    let attr = |name: &str| {
        let start = row.find(&format!(r#"{name}=""#))? + name.len() + 2;
        Some(row[start..].split('"').next()?.to_owned())
    };
    Some((
        attr("data-status")?,
        attr("data-progress").and_then(|p| p.parse().ok()),
    ))
}

/// While a video is transcoded the index shows how far it is (ffmpeg's progress, asked of the dash reader
/// every second), never going back and never 100 before it is ready; once ready, no percentage is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_shows_how_far_a_transcode_is() {
    // A slower x264 preset, so the transcode takes several seconds even on a fast machine.
    let site = Site::start_with_preset("medium");
    let media = scratch_dir("clips-");
    let clip = std::fs::read(make_clip(media.path(), "slow.mp4", 10, "1280x720")).expect("clip");
    let finished = std::sync::atomic::AtomicBool::new(false);
    let client = no_redirects();
    // The readers' progress route: a malformed id gets a clear 400, an upload nobody transcodes a 404
    // (on the dash reader as on the disk reader), each with an error body and nothing else.
    let long = "a".repeat(300);
    for (reader, id, want) in [
        (&site.dash, "not%20an%20id", 400),
        (&site.dash, long.as_str(), 400),
        (&site.dash, "0123456789abcdef0123456789abcdef", 404),
        (&site.disk, "0123456789abcdef0123456789abcdef", 404),
    ] {
        let r = client
            .get(reader.url(&format!("/v1/uploads/{id}/progress")))
            .send()
            .await
            .expect("progress");
        let status = r.status().as_u16();
        let body: serde_json::Value = r.json().await.expect("a JSON error body");
        assert_eq!(status, want, "progress of {id}: {body}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{body}"
        );
    }
    let watch = async {
        let mut seen: Vec<(String, Option<u8>)> = Vec::new();
        while !finished.load(std::sync::atomic::Ordering::SeqCst) {
            if let Ok(r) = client.get(site.url("/")).send().await {
                if let Some(row) = index_row(&r.text().await.unwrap_or_default(), "slow") {
                    if seen.last() != Some(&row) {
                        seen.push(row);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        seen
    };
    let post = async {
        let started = std::time::Instant::now();
        let r = upload(&site, "slow.mp4", &clip).await;
        eprintln!(
            "[video] POST /upload of a 10 s 720p clip with preset medium took {:?}",
            started.elapsed()
        );
        finished.store(true, std::sync::atomic::Ordering::SeqCst);
        r
    };
    let (seen, (status, body, _)) = tokio::join!(watch, post);
    eprintln!("[video] the index showed {seen:?}");
    assert_eq!(status, 303, "{body}");
    let percents: Vec<u8> = seen.iter().filter_map(|(_, p)| *p).collect();
    assert!(
        !percents.is_empty(),
        "the index never showed a percentage while the video was processing: {seen:?}"
    );
    assert!(
        seen.iter().all(|(s, p)| p.is_none() || s == "processing"),
        "only a processing video shows a percentage: {seen:?}"
    );
    assert!(
        percents.windows(2).all(|w| w[0] <= w[1]) && percents.iter().all(|&p| p <= 99),
        "the percentage went back or reached 100 before the video was ready: {percents:?}"
    );
    let page = get_text(&site.url("/")).await;
    assert_eq!(
        index_row(&page, "slow"),
        Some(("ready".to_owned(), None)),
        "a ready video is listed without a percentage"
    );
    assert_playable(&site, "slow").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_is_not_a_video_is_refused_and_leaves_nothing() {
    let site = Site::start();
    let (status, body, _) = upload(
        &site,
        "notes.mp4",
        b"these are not the frames you are looking for\n",
    )
    .await;
    assert!(status == 415 || status == 422, "{status}: {body}");
    assert!(blobs_with_prefix(&site.nodes, "notes/").await.is_empty());
    let staging: Vec<_> = std::fs::read_dir(site.dash.staging_dir())
        .expect("staging dir")
        .collect();
    assert!(
        staging.is_empty(),
        "dash reader staging must be empty: {staging:?}"
    );
    // The id is free again: nothing of the refused upload stays in the catalogue.
    let media = scratch_dir("clips-");
    let clip = std::fs::read(make_clip(media.path(), "notes.mp4", 3, "640x360")).expect("clip");
    let (status, body, _) = upload(&site, "notes.mp4", &clip).await;
    assert_eq!(status, 303, "{body}");
    assert!(site
        .disk
        .committed_names()
        .contains(&"notes.mp4".to_owned()));
}

/// A real headless Chromium uploads through the form and plays the watch page (web/tests/play.mjs drives
/// it with playwright-core).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_uploads_through_the_form_and_plays() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf();
    assert!(
        root.join("web/node_modules/playwright-core").is_dir()
            && Path::new("/usr/bin/chromium").exists(),
        "web/node_modules or /usr/bin/chromium missing: run build/test.sh, which installs them"
    );
    let site = Site::start();
    let media = scratch_dir("clips-");
    let clip = make_clip(media.path(), "browser-clip.mp4", 10, "1280x720");
    let base = site.url("");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(root.join("web/tests/play.mjs"))
            .arg(&base)
            .arg(&clip)
            .arg("browser-clip")
            .output()
            .expect("node must be installed")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "play.mjs failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("\"ok\":true"), "{stdout}");
}

/// Issue 11, part 4: a video can be watched while it is still being transcoded. The upload commits as soon
/// as the dash reader holds its source; the reader then lists each DASH file as it lands on the ring, the
/// index links the video while its row still says `processing`, and a real headless Chromium plays it from
/// the start (web/tests/watch-processing.mjs) before the transcode is done. `POST /upload` still answers 303
/// only once the video is ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_video_plays_in_chromium_while_it_is_still_being_transcoded() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf();
    assert!(
        root.join("web/node_modules/playwright-core").is_dir()
            && Path::new("/usr/bin/chromium").exists(),
        "web/node_modules or /usr/bin/chromium missing: run build/test.sh, which installs them"
    );
    // A slower preset and a longer clip, so the whole transcode takes far longer than its first segments.
    let site = Site::start_with_preset("medium");
    let media = scratch_dir("clips-");
    let clip = std::fs::read(make_clip(media.path(), "early.mp4", 24, "1280x720")).expect("clip");
    let base = site.url("");
    let started = std::time::Instant::now();
    let browser = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(root.join("web/tests/watch-processing.mjs"))
            .arg(&base)
            .arg("early")
            .output()
            .expect("node must be installed")
    });
    let (status, body, _) = upload(&site, "early.mp4", &clip).await;
    let ready_after = started.elapsed();
    let ready_at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    eprintln!("[video] POST /upload of a 24 s 720p clip (preset medium) answered {status} after {ready_after:?}");
    assert_eq!(status, 303, "{body}");
    let out = browser.await.expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("[video] watch-processing.mjs: {stdout}");
    assert!(
        out.status.success(),
        "watch-processing.mjs failed:\n{stdout}\n{stderr}"
    );
    let report: serde_json::Value =
        serde_json::from_str(stdout.trim().lines().last().unwrap_or("{}")).expect("JSON line");
    assert_eq!(report["ok"], true, "{stdout}");
    // The browser started on a `processing` row and its page said so, and it was playing before the video
    // was ready (the 303 follows the `ready` record within a quarter of a second).
    let note = report["note"].as_str().unwrap_or_default();
    assert!(note.contains("Still processing"), "{note}");
    let played_at_ms = report["playedAtMs"].as_i64().expect("playedAtMs");
    eprintln!(
        "[video] playing {} ms before the upload's 303 (linked {} ms after the start)",
        ready_at_ms - played_at_ms,
        report["linkedMs"]
    );
    assert!(
        played_at_ms + 500 < ready_at_ms,
        "playback passed 2 s only {} ms before the video was ready: not while it was processing",
        ready_at_ms - played_at_ms
    );
    let page = get_text(&site.url("/")).await;
    assert_eq!(
        index_row(&page, "early").map(|(s, _)| s),
        Some("ready".to_owned()),
        "the video is ready after the 303"
    );
}

/// Issue 11, part 4: the transcode of a committed upload survives its dash reader. The reader is SIGKILLed
/// while the video is being transcoded (some segments already listed); started again on its data directory,
/// it resumes the job from the source it kept, and the video becomes ready with every listed file readable
/// and verified. The form's `POST /upload`, waiting all along, answers 303.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transcode_resumes_after_its_dash_reader_is_killed() {
    let mut site = Site::start_with_preset("medium");
    let media = scratch_dir("clips-");
    let clip = std::fs::read(make_clip(media.path(), "phoenix.mp4", 16, "1280x720")).expect("clip");
    let client = no_redirects();
    let upload_task = {
        let (url, clip) = (site.url("/upload"), clip.clone());
        tokio::spawn(async move { post_form(&url, "phoenix.mp4", &clip).await })
    };
    // Killed once the video is watchable, i.e. part-way through its transcode.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let r = client
            .get(site.url("/videos/phoenix"))
            .send()
            .await
            .expect("watch page");
        if r.status() == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the video never became watchable"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let page = get_text(&site.url("/")).await;
    assert_eq!(
        index_row(&page, "phoenix").map(|(s, _)| s),
        Some("processing".to_owned()),
        "killed while processing"
    );
    site.restart_dash();
    let (status, body) = tokio::time::timeout(Duration::from_secs(240), upload_task)
        .await
        .expect("the form's answer came")
        .expect("join");
    eprintln!("[video] after the dash reader's restart, POST /upload answered {status}");
    assert_eq!(status, 303, "{body}\n{}", site.dash.proc.log());
    assert!(
        site.dash
            .proc
            .log()
            .contains("resuming a committed transcode"),
        "{}",
        site.dash.proc.log()
    );
    let page = get_text(&site.url("/")).await;
    assert_eq!(
        index_row(&page, "phoenix"),
        Some(("ready".to_owned(), None))
    );
    // Every file of the manifest, as served (each read is checked against the recorded digest).
    let manifest = get_text(&site.url("/content/phoenix/manifest.mpd")).await;
    assert!(manifest.contains("type=\"static\""), "{manifest}");
    for file in [
        "init-0.m4s",
        "chunk-0-00001.m4s",
        "chunk-0-00004.m4s",
        "poster.jpg",
    ] {
        let r = client
            .get(site.url(&format!("/content/phoenix/{file}")))
            .send()
            .await
            .expect("content");
        assert_eq!(r.status(), 200, "{file}");
        assert!(!r.bytes().await.expect("body").is_empty(), "{file}");
    }
    // Nothing of the job is left on the reader.
    let jobs = site.dash.data_dir.join("transcode");
    let left: Vec<_> = std::fs::read_dir(&jobs)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}
