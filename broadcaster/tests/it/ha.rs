//! High availability on etcd: real 3-member etcd clusters (`etcd.rs`), real storage nodes, readers and
//! broadcasters on loopback.
//!
//! - Two broadcasters sharing one etcd serve the same catalogue and ring: what is uploaded through one is
//!   listed, watched and read through the other, a membership change made through one is seen by the other,
//!   and when one is SIGKILLed the other keeps serving and accepting uploads.
//! - Losing 1 of 3 etcd members changes nothing a user sees; losing 2 makes every request that needs metadata
//!   answer a prompt, clear 503 while the broadcaster stays up; restarting the members brings everything
//!   back with the earlier data intact.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use crate::data::{gen_bytes, multipart_body, multipart_content_type, sha256_hex, Part};
use crate::etcd::EtcdCluster;
use crate::harness::{eventually, scratch_dir, Broadcaster, Reader};
use crate::ring::{admin, listed, Node};
use crate::video::make_clip;

/// Raw uploads on the ring are cut into chunks of this size (small, so a test file spans many chunks).
const CHUNK: usize = 64 * 1024;
/// The bound on any request's answer while etcd has no quorum.
const UNAVAILABLE_WITHIN: Duration = Duration::from_secs(15);

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(300))
        .build()
        .expect("client")
}

/// The broadcaster environment for a ring whose layout lives in etcd.
fn ring_env(spec: &str, nodes: &[&Node]) -> Vec<(String, String)> {
    vec![
        ("BROADCASTER_METADATA".into(), spec.to_owned()),
        (
            "BROADCASTER_STORAGE_NODES".into(),
            nodes.iter().map(|n| n.addr()).collect::<Vec<_>>().join(";"),
        ),
        ("BROADCASTER_REPLICATION".into(), "2".into()),
        ("BROADCASTER_RING_CHUNK_SIZE".into(), CHUNK.to_string()),
    ]
}

fn start_broadcaster(targets: &[String], env: &[(String, String)]) -> Broadcaster {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Broadcaster::start(targets, &env)
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// `POST /upload` of an MP4 (the web form's request, as a script sends it); returns status and body.
async fn upload_video(b: &Broadcaster, filename: &str, data: &[u8]) -> (u16, String) {
    let resp = http()
        .post(b.url("/upload"))
        .header("content-type", multipart_content_type())
        .body(multipart_body(&[Part {
            name: "file",
            filename: Some(filename),
            data,
        }]))
        .send()
        .await
        .expect("POST /upload");
    let status = resp.status().as_u16();
    let location = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp.text().await.unwrap_or_default();
    if status == 303 {
        assert_eq!(location.as_deref(), Some("/"), "303 goes back to the list");
    }
    (status, body)
}

/// `PUT /broadcast/{name}`; asserts 201 with every target committed.
async fn put_raw(b: &Broadcaster, name: &str, data: &[u8]) -> serde_json::Value {
    let resp = http()
        .put(b.put_url(name))
        .body(data.to_vec())
        .send()
        .await
        .expect("PUT /broadcast");
    let status = resp.status();
    let summary: serde_json::Value = resp.json().await.expect("summary JSON");
    assert_eq!(status, 201, "{summary}");
    assert_eq!(summary["sha256"], sha256_hex(data), "{summary}");
    for t in summary["targets"].as_array().expect("targets") {
        assert_eq!(t["state"], "committed", "{summary}");
    }
    assert!(
        summary["targets"]
            .as_array()
            .expect("targets")
            .iter()
            .any(|t| t["target"] == "ring"),
        "the ring is a target: {summary}"
    );
    summary
}

async fn get_file(b: &Broadcaster, name: &str) -> (u16, Vec<u8>) {
    let resp = http()
        .get(b.url(&format!("/files/{name}")))
        .send()
        .await
        .expect("GET /files");
    let status = resp.status().as_u16();
    (status, resp.bytes().await.expect("body").to_vec())
}

/// `GET /` lists `id` as ready, with a link to its watch page.
async fn assert_listed_ready(b: &Broadcaster, id: &str) {
    let resp = http().get(b.url("/")).send().await.expect("GET /");
    assert_eq!(resp.status(), 200);
    let page = resp.text().await.expect("index");
    assert!(
        page.contains(&format!(r#"data-video-id="{id}" data-status="ready""#)),
        "{id} should be listed as ready by {}:\n{page}",
        b.proc.addr
    );
    assert!(
        page.contains(&format!(r#"<a href="/videos/{id}">"#)),
        "{id} should link to its watch page:\n{page}"
    );
}

/// Keys of the blobs stored under `{id}/` on the running nodes.
async fn video_files(nodes: &[Node], id: &str) -> Vec<String> {
    let mut files = std::collections::BTreeSet::new();
    for n in nodes.iter().filter(|n| n.proc.is_some()) {
        let v: serde_json::Value = http()
            .get(format!("http://{}/v1/blobs?prefix={id}/", n.addr()))
            .send()
            .await
            .expect("node listing")
            .json()
            .await
            .expect("listing JSON");
        for b in v["blobs"].as_array().expect("blobs") {
            let key = b["key"].as_str().expect("key");
            files.insert(key.split_once('/').expect("id/file").1.to_owned());
        }
    }
    files.into_iter().collect()
}

/// The watch page, the player script and every DASH file of `id` through `b`; returns each file's bytes.
async fn assert_plays(b: &Broadcaster, nodes: &[Node], id: &str) -> BTreeMap<String, Vec<u8>> {
    let c = http();
    let resp = c
        .get(b.url(&format!("/videos/{id}")))
        .send()
        .await
        .expect("watch page");
    assert_eq!(resp.status(), 200, "watch page of {id}");
    let page = resp.text().await.expect("watch page text");
    assert!(
        page.contains(&format!("/content/{id}/manifest.mpd")),
        "{page}"
    );
    assert!(page.contains("/assets/dash.all.min.js"), "{page}");
    let player = c
        .get(b.url("/assets/dash.all.min.js"))
        .send()
        .await
        .expect("player");
    assert_eq!(
        player.status(),
        200,
        "the player is served from this origin (web/node_modules installed by build/test.sh)"
    );

    let manifest = c
        .get(b.url(&format!("/content/{id}/manifest.mpd")))
        .send()
        .await
        .expect("manifest");
    assert_eq!(manifest.status(), 200);
    assert_eq!(manifest.headers()["content-type"], "application/dash+xml");
    let mpd = manifest.text().await.expect("mpd");
    let video_reps = mpd
        .split("<Representation")
        .skip(1)
        .filter(|r| r.contains("width="))
        .count();
    assert!(video_reps >= 2, "several video renditions:\n{mpd}");

    let files = video_files(nodes, id).await;
    for want in ["manifest.mpd", "init-0.m4s", "chunk-0-00001.m4s"] {
        assert!(files.iter().any(|f| f == want), "{want} in {files:?}");
    }
    let mut out = BTreeMap::new();
    for file in files {
        let resp = c
            .get(b.url(&format!("/content/{id}/{file}")))
            .send()
            .await
            .expect("content");
        assert_eq!(
            resp.status(),
            200,
            "/content/{id}/{file} via {}",
            b.proc.addr
        );
        let body = resp.bytes().await.expect("content body").to_vec();
        assert!(!body.is_empty(), "/content/{id}/{file} is empty");
        out.insert(file, body);
    }
    out
}

/// Distinct keys of raw-upload chunks (`raw.{upload id}/{index}`) on the running nodes.
async fn raw_chunk_keys(nodes: &[Node]) -> std::collections::BTreeSet<String> {
    let mut keys = std::collections::BTreeSet::new();
    for n in nodes.iter().filter(|n| n.proc.is_some()) {
        let v: serde_json::Value = http()
            .get(format!("http://{}/v1/blobs?prefix=raw.", n.addr()))
            .send()
            .await
            .expect("node listing")
            .json()
            .await
            .expect("listing JSON");
        for b in v["blobs"].as_array().expect("blobs") {
            keys.insert(b["key"].as_str().expect("key").to_owned());
        }
    }
    keys
}

/// `storage-node admin list` against `b`.
fn admin_list(b: &Broadcaster) -> Vec<String> {
    let (code, out) = admin(&["list", &b.proc.addr.to_string()]);
    assert_eq!(code, 0, "admin list via {}: {out}", b.proc.addr);
    assert!(out.contains("Storage cluster nodes:"), "{out}");
    listed(&out)
}

fn admin_add(b: &Broadcaster, node: &Node) {
    let (code, out) = admin(&["add", &b.proc.addr.to_string(), &node.addr()]);
    assert_eq!(code, 0, "admin add via {}: {out}", b.proc.addr);
    assert!(
        out.contains(&format!("Successfully added node: {}", node.addr())),
        "{out}"
    );
    assert!(out.contains("Number of files migrated: "), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_broadcasters_share_catalogue_and_ring() {
    let started = Instant::now();
    let media = scratch_dir("ha-clips-");
    let clip_dir = media.path().to_path_buf();
    // ffmpeg works while the processes start.
    let clips = tokio::task::spawn_blocking(move || {
        (
            make_clip(&clip_dir, "harbour.mp4", 10, "854x480"),
            make_clip(&clip_dir, "second.mp4", 3, "854x480"),
        )
    });

    let etcd = EtcdCluster::start().await;
    let spec = etcd.spec();
    let dir = scratch_dir("ha-share-");
    let nodes: Vec<Node> = (0..4)
        .map(|i| Node::start(&dir.path().join(format!("n{i}")), 0))
        .collect();
    let env = ring_env(&spec, &[&nodes[0], &nodes[1], &nodes[2]]);
    let disk = Reader::start();
    // A first broadcaster seeds the layout in etcd so that the dash reader finds a ring at start.
    drop(start_broadcaster(&[disk.target()], &env));
    let dash = Reader::start_with(&[
        ("READER_SINK", "dash"),
        ("READER_METADATA", &spec),
        ("READER_FFMPEG_PRESET", "ultrafast"),
    ]);
    let targets = [disk.target(), dash.target(), "ring".to_owned()];
    let mut a = start_broadcaster(&targets, &env);
    let b = start_broadcaster(&targets, &env);
    let (clip, second) = clips.await.expect("clips");
    let clip = std::fs::read(clip).expect("clip");
    let second = std::fs::read(second).expect("second clip");
    eprintln!("[ha] topology up after {}", secs(started.elapsed()));

    // Upload through A; list, watch and read through B.
    let t = Instant::now();
    let (status, body) = upload_video(&a, "harbour.mp4", &clip).await;
    assert_eq!(status, 303, "{body}");
    eprintln!(
        "[ha] 10 s clip uploaded and transcoded in {}",
        secs(t.elapsed())
    );
    assert_listed_ready(&b, "harbour").await;
    let via_b = assert_plays(&b, &nodes, "harbour").await;
    assert!(
        via_b.len() > 5,
        "a ladder has many files: {:?}",
        via_b.keys()
    );
    let via_a = assert_plays(&a, &nodes, "harbour").await;
    assert!(via_a == via_b, "both broadcasters serve the same bytes");
    assert_eq!(
        std::fs::read(disk.files_dir().join("harbour.mp4")).expect("disk copy"),
        clip
    );
    // The catalogue is one: the id is taken for B too.
    let (status, body) = upload_video(&b, "harbour.mp4", &clip).await;
    assert_eq!(status, 409, "{body}");

    // A raw upload through B is read back through A.
    let raw = gen_bytes(31, 5 * CHUNK + 321);
    put_raw(&b, "x.bin", &raw).await;
    let (status, got) = get_file(&a, "x.bin").await;
    assert_eq!(status, 200);
    assert!(got == raw, "A reads back what B stored on the ring");

    // One ring, seen and changed through either broadcaster.
    let members: Vec<String> = nodes[..3].iter().map(Node::addr).collect();
    assert_eq!(admin_list(&a), members);
    assert_eq!(admin_list(&b), members);
    admin_add(&a, &nodes[3]);
    let mut all = members.clone();
    all.push(nodes[3].addr());
    let t = Instant::now();
    assert!(
        eventually(Duration::from_secs(10), || async { admin_list(&b) == all }).await,
        "B never listed the node added through A"
    );
    eprintln!("[ha] B saw the 4th node after {}", secs(t.elapsed()));
    // B's view follows (the list re-read the layout), so B reads the blobs where they moved.
    assert!(assert_plays(&b, &nodes, "harbour").await == via_b);
    assert!(get_file(&b, "x.bin").await.1 == raw);

    // A dies; B keeps serving and accepting uploads.
    a.proc.kill9();
    assert_listed_ready(&b, "harbour").await;
    assert!(assert_plays(&b, &nodes, "harbour").await == via_b);
    assert!(get_file(&b, "x.bin").await.1 == raw);
    let t = Instant::now();
    let (status, body) = upload_video(&b, "second.mp4", &second).await;
    assert_eq!(status, 303, "{body}");
    eprintln!("[ha] upload through B after A died: {}", secs(t.elapsed()));
    assert_listed_ready(&b, "second").await;
    assert_listed_ready(&b, "harbour").await;
    assert_plays(&b, &nodes, "second").await;
    let raw2 = gen_bytes(32, 3 * CHUNK + 5);
    put_raw(&b, "y.bin", &raw2).await;
    assert!(get_file(&b, "y.bin").await.1 == raw2);
    assert_eq!(admin_list(&b), all);
    eprintln!(
        "[ha] two_broadcasters_share_catalogue_and_ring: {}",
        secs(started.elapsed())
    );
}

/// Runs a request that needs metadata while etcd has no quorum: it must answer 503 with a JSON error that
/// names the metadata store (an HTML page saying so for the pages), within [`UNAVAILABLE_WITHIN`].
/// A request with no answer at all fails the test at once; a wrong answer is returned as a problem, so that
/// one run reports every wrong answer and still checks the recovery.
async fn expect_503<F>(what: &str, request: F) -> Result<(), String>
where
    F: Future<Output = reqwest::Result<reqwest::Response>>,
{
    let t = Instant::now();
    let resp = tokio::time::timeout(UNAVAILABLE_WITHIN + Duration::from_secs(30), request)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer without etcd quorum"))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let took = t.elapsed();
    let status = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = resp.text().await.unwrap_or_default();
    eprintln!("[ha] {what} without quorum: {status} in {}", secs(took));
    let mut wrong = Vec::new();
    if status != 503 {
        wrong.push(format!("status {status}, want 503"));
    }
    if took >= UNAVAILABLE_WITHIN {
        wrong.push(format!("took {}, over {UNAVAILABLE_WITHIN:?}", secs(took)));
    }
    if ctype.starts_with("text/html") {
        if !body.contains("metadata store") {
            wrong.push("the page does not mention the metadata store".into());
        }
    } else {
        match serde_json::from_str::<serde_json::Value>(&body) {
            Ok(v)
                if v["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("metadata store")) => {}
            Ok(_) => wrong.push("the JSON `error` does not mention the metadata store".into()),
            Err(e) => wrong.push(format!("not JSON ({e})")),
        }
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(format!("{what}: {}; body: {body}", wrong.join(", ")))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_member_loss() {
    let started = Instant::now();
    let mut etcd = EtcdCluster::start().await;
    let spec = etcd.spec();
    let dir = scratch_dir("ha-loss-");
    let nodes: Vec<Node> = (0..5)
        .map(|i| Node::start(&dir.path().join(format!("n{i}")), 0))
        .collect();
    let env = ring_env(&spec, &[&nodes[0], &nodes[1], &nodes[2]]);
    let disk = Reader::start();
    let mut bc = start_broadcaster(&[disk.target(), "ring".to_owned()], &env);
    let baddr = bc.proc.addr.to_string();
    let c = http();

    let before = gen_bytes(41, 6 * CHUNK + 7);
    put_raw(&bc, "before.bin", &before).await;
    let mut members: Vec<String> = nodes[..3].iter().map(Node::addr).collect();
    assert_eq!(admin_list(&bc), members);

    // One member down (the leader: a re-election happens under our requests): nothing changes for users.
    let leader = etcd.leader().await;
    etcd.kill(leader);
    let t = Instant::now();
    let one_down = gen_bytes(42, 4 * CHUNK + 99);
    put_raw(&bc, "one-down.bin", &one_down).await;
    assert!(get_file(&bc, "before.bin").await.1 == before);
    assert!(get_file(&bc, "one-down.bin").await.1 == one_down);
    assert_eq!(admin_list(&bc), members);
    admin_add(&bc, &nodes[3]);
    members.push(nodes[3].addr());
    assert_eq!(admin_list(&bc), members);
    eprintln!(
        "[ha] with etcd member {leader} (the leader) down: uploads and admin in {}",
        secs(t.elapsed())
    );

    // Two members down: no quorum. Prompt, clear 503s; the process stays up.
    let second = (leader + 1) % 3;
    etcd.kill(second);
    let lost = gen_bytes(43, 3 * CHUNK);
    // Every request at once (each may take the store's whole request timeout), the CLI beside them.
    let cli = {
        let (baddr, spare) = (baddr.clone(), nodes[4].addr());
        tokio::task::spawn_blocking(move || {
            let t = Instant::now();
            let list = admin(&["list", &baddr]);
            let list_took = t.elapsed();
            let t = Instant::now();
            let add = admin(&["add", &baddr, &spare]);
            (list, list_took, add, t.elapsed())
        })
    };
    let upload_body = multipart_body(&[Part {
        name: "file",
        filename: Some("during.mp4"),
        data: b"not reached",
    }]);
    let answers = tokio::join!(
        expect_503(
            "PUT /broadcast (ring)",
            c.put(bc.put_url("lost.bin")).body(lost.clone()).send(),
        ),
        expect_503("GET /files", c.get(bc.url("/files/before.bin")).send()),
        expect_503("GET /admin/nodes", c.get(bc.url("/admin/nodes")).send()),
        expect_503(
            "POST /admin/nodes",
            c.post(bc.url("/admin/nodes"))
                .json(&serde_json::json!({ "node": nodes[4].addr() }))
                .send(),
        ),
        expect_503(
            "POST /upload",
            c.post(bc.url("/upload"))
                .header("content-type", multipart_content_type())
                .body(upload_body)
                .send(),
        ),
        expect_503("GET /", c.get(bc.url("/")).send()),
    );
    let mut problems: Vec<String> = [
        answers.0, answers.1, answers.2, answers.3, answers.4, answers.5,
    ]
    .into_iter()
    .filter_map(Result::err)
    .collect();
    // The CLI says so too, and exits non-zero.
    let ((code, out), list_took, (add_code, add_out), add_took) = cli.await.expect("admin CLI");
    eprintln!(
        "[ha] admin list / add without quorum: exit {code} in {}, exit {add_code} in {}",
        secs(list_took),
        secs(add_took)
    );
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("metadata store"), "{out}");
    assert!(
        list_took < UNAVAILABLE_WITHIN,
        "admin list took {}",
        secs(list_took)
    );
    assert_ne!(add_code, 0, "{add_out}");
    assert!(add_out.contains("metadata store"), "{add_out}");
    assert!(
        add_took < UNAVAILABLE_WITHIN,
        "admin add took {}",
        secs(add_took)
    );
    // Still alive and healthy.
    let health = c.get(bc.url("/healthz")).send().await.expect("healthz");
    assert_eq!(health.status(), 200);
    assert!(
        bc.proc.wait_exit(Duration::ZERO).await.is_none(),
        "the broadcaster exited without etcd quorum:\n{}",
        bc.proc.log()
    );

    // Both members come back on their data: everything works again, nothing was lost.
    etcd.restart(leader);
    etcd.restart(second);
    etcd.wait_healthy(&[0, 1, 2]).await;
    let t = Instant::now();
    assert!(
        eventually(Duration::from_secs(30), || async {
            matches!(
                c.get(bc.url("/admin/nodes")).send().await,
                Ok(r) if r.status() == 200
            )
        })
        .await,
        "the broadcaster did not recover after etcd did"
    );
    eprintln!(
        "[ha] broadcaster recovered {} after etcd",
        secs(t.elapsed())
    );
    assert!(get_file(&bc, "before.bin").await.1 == before);
    assert!(get_file(&bc, "one-down.bin").await.1 == one_down);
    assert_eq!(
        get_file(&bc, "lost.bin").await.0,
        404,
        "the upload that failed without quorum left no file"
    );
    let after = gen_bytes(44, 2 * CHUNK + 1);
    put_raw(&bc, "after.bin", &after).await;
    assert!(get_file(&bc, "after.bin").await.1 == after);
    assert_eq!(
        admin_list(&bc),
        members,
        "the refused add left the ring as it was"
    );
    admin_add(&bc, &nodes[4]);
    members.push(nodes[4].addr());
    assert_eq!(admin_list(&bc), members);
    for (name, data) in [
        ("before.bin", &before),
        ("one-down.bin", &one_down),
        ("after.bin", &after),
    ] {
        assert!(
            get_file(&bc, name).await.1 == *data,
            "{name} after migration"
        );
    }
    // Nothing of the refused upload stayed on the ring: exactly the chunks of the three files are stored.
    let chunks: usize = [&before, &one_down, &after]
        .iter()
        .map(|d| d.len().div_ceil(CHUNK))
        .sum();
    let stored = raw_chunk_keys(&nodes).await;
    if stored.len() != chunks {
        problems.push(format!(
            "the upload refused without quorum left chunks on the ring: {} chunk blobs stored, \
             {chunks} belong to committed files: {stored:?}",
            stored.len()
        ));
    }
    assert!(bc.proc.wait_exit(Duration::ZERO).await.is_none());
    eprintln!("[ha] etcd_member_loss: {}", secs(started.elapsed()));
    assert!(
        problems.is_empty(),
        "wrong behaviour around the loss of etcd quorum:\n{}",
        problems.join("\n")
    );
}
