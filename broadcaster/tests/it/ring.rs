//! The storage ring end to end: real `storage-node` processes, a broadcaster with the `ring` target and
//! SQLite metadata, the `storage-node admin` CLI. Placement is checked against `hashring` itself: every blob
//! must sit on exactly its R owners, with no leftovers, after every change.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::data::{gen_bytes, sha256_hex};
use crate::harness::{
    client, dead_port, run_to_exit, scratch_dir, service_command, Broadcaster, Proc,
};

const CHUNK: usize = 64 * 1024;

/// A storage node with a data directory that outlives restarts.
pub struct Node {
    pub proc: Option<Proc>,
    pub dir: PathBuf,
    port: u16,
}

impl Node {
    pub fn start(dir: &Path, port: u16) -> Node {
        std::fs::create_dir_all(dir).expect("node dir");
        let mut cmd = service_command("storage-node");
        cmd.env("STORAGE_NODE_HTTP_HOST", "127.0.0.1")
            .env("STORAGE_NODE_HTTP_PORT", port.to_string())
            .env("STORAGE_NODE_DATA_DIR", dir);
        let proc = Proc::start("storage-node", cmd);
        let port = proc.addr.port();
        Node {
            proc: Some(proc),
            dir: dir.to_path_buf(),
            port,
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn restart(&mut self) {
        self.proc = None;
        let again = Node::start(&self.dir, self.port);
        self.proc = again.proc;
    }
}

pub fn ring_env(db: &Path, nodes: &[&Node], replication: usize) -> Vec<(String, String)> {
    vec![
        (
            "BROADCASTER_METADATA".into(),
            format!("sqlite:{}", db.display()),
        ),
        (
            "BROADCASTER_STORAGE_NODES".into(),
            nodes.iter().map(|n| n.addr()).collect::<Vec<_>>().join(";"),
        ),
        ("BROADCASTER_REPLICATION".into(), replication.to_string()),
        ("BROADCASTER_RING_CHUNK_SIZE".into(), CHUNK.to_string()),
        // A broadcaster these tests kill lets go of its uploads' blobs within seconds.
        ("BROADCASTER_LEASE_TTL_SECS".into(), "4".into()),
    ]
}

pub fn start_broadcaster(env: &[(String, String)]) -> Broadcaster {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Broadcaster::start(&["ring".to_owned()], &env)
}

pub async fn upload(b: &Broadcaster, name: &str, data: &[u8]) -> serde_json::Value {
    let resp = client()
        .put(b.put_url(name))
        .body(data.to_vec())
        .send()
        .await
        .expect("upload");
    let status = resp.status();
    let summary: serde_json::Value = resp.json().await.expect("summary");
    assert_eq!(status, 201, "{summary}");
    assert_eq!(summary["targets"][0]["target"], "ring");
    assert_eq!(summary["targets"][0]["state"], "committed", "{summary}");
    summary
}

pub async fn fetch(b: &Broadcaster, name: &str) -> (u16, Vec<u8>) {
    let resp = client()
        .get(b.url(&format!("/files/{name}")))
        .send()
        .await
        .expect("get");
    let status = resp.status().as_u16();
    (
        status,
        resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default(),
    )
}

/// Blob keys each node holds.
pub async fn holdings(nodes: &[&Node]) -> BTreeMap<String, BTreeSet<String>> {
    let mut by_key: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for n in nodes {
        let v: serde_json::Value = client()
            .get(format!("http://{}/v1/blobs", n.addr()))
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("list json");
        for b in v["blobs"].as_array().expect("blobs array") {
            by_key
                .entry(b["key"].as_str().expect("key").to_owned())
                .or_default()
                .insert(n.addr());
        }
    }
    by_key
}

/// Every blob is on exactly its owners under `members`; returns the number of blobs.
async fn assert_placement(all_nodes: &[&Node], members: &[String], replication: usize) -> usize {
    let layout = hashring::Layout {
        version: 1,
        nodes: members.to_vec(),
        vnodes: hashring::DEFAULT_VNODES,
        replication,
    };
    let ring = hashring::Ring::new(&layout);
    let held = holdings(all_nodes).await;
    for (key, holders) in &held {
        let owners: BTreeSet<String> = ring.owners(key).into_iter().collect();
        assert_eq!(
            &owners, holders,
            "blob {key} should be exactly on its owners"
        );
        assert_eq!(holders.len(), replication.min(members.len()));
    }
    held.len()
}

pub fn admin(args: &[&str]) -> (i32, String) {
    let mut cmd = service_command("storage-node");
    cmd.arg("admin").args(args);
    let (status, out) = run_to_exit(cmd, Duration::from_secs(120));
    (status.and_then(|s| s.code()).unwrap_or(-1), out)
}

pub fn listed(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.strip_prefix("  - "))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_upload_is_replicated_and_survives_a_dead_node() {
    let dir = scratch_dir("ring-failover-");
    let nodes: Vec<Node> = (0..3)
        .map(|i| Node::start(&dir.path().join(format!("n{i}")), 0))
        .collect();
    let refs: Vec<&Node> = nodes.iter().collect();
    let b = start_broadcaster(&ring_env(&dir.path().join("meta.db"), &refs, 2));

    let data = gen_bytes(7, 17 * CHUNK + 123);
    let summary = upload(&b, "big.bin", &data).await;
    assert_eq!(summary["sha256"], sha256_hex(&data));
    let empty = upload(&b, "empty.bin", &[]).await;
    assert_eq!(empty["size"], 0);

    let (status, body) = fetch(&b, "big.bin").await;
    assert_eq!(status, 200);
    assert!(body == data, "ring copy differs");
    let (status, body) = fetch(&b, "empty.bin").await;
    assert_eq!((status, body.len()), (200, 0));

    // A range that spans chunk boundaries.
    let resp = client()
        .get(b.url("/files/big.bin"))
        .header("Range", "bytes=70000-200000")
        .send()
        .await
        .expect("range");
    assert_eq!(resp.status(), 206);
    assert_eq!(
        resp.headers()["content-range"].to_str().expect("ascii"),
        format!("bytes 70000-200000/{}", data.len())
    );
    assert!(resp.bytes().await.expect("body")[..] == data[70000..=200000]);

    let members: Vec<String> = refs.iter().map(|n| n.addr()).collect();
    let blobs = assert_placement(&refs, &members, 2).await;
    assert_eq!(blobs, 18, "17 full chunks and one partial");

    let (status, _) = fetch(&b, "missing.bin").await;
    assert_eq!(status, 404);

    // One node dies: with R=2 every chunk still has a live replica.
    let mut nodes = nodes;
    nodes[0].proc.as_mut().expect("running").kill9();
    for _ in 0..3 {
        let (status, body) = fetch(&b, "big.bin").await;
        assert_eq!(status, 200);
        assert!(body == data, "read after a node died differs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_migrate_only_what_moves_and_survive_restarts() {
    let dir = scratch_dir("ring-membership-");
    let db = dir.path().join("meta.db");
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| Node::start(&dir.path().join(format!("n{i}")), 0))
        .collect();
    let env = ring_env(&db, &nodes.iter().collect::<Vec<_>>(), 2);
    let mut b = start_broadcaster(&env);
    let baddr = b.proc.addr.to_string();

    let files: Vec<(String, Vec<u8>)> = (0..4)
        .map(|i| {
            (
                format!("f{i}.bin"),
                gen_bytes(100 + i, 10 * CHUNK + 17 * i as usize),
            )
        })
        .collect();
    for (name, data) in &files {
        upload(&b, name, data).await;
    }

    let (code, out) = admin(&["list", &baddr]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Storage cluster nodes:"), "{out}");
    let mut members: Vec<String> = nodes.iter().map(|n| n.addr()).collect();
    assert_eq!(listed(&out), members);
    let before = assert_placement(&nodes.iter().collect::<Vec<_>>(), &members, 2).await;

    // Refused changes leave the ring as it was.
    let (code, out) = admin(&["add", &baddr, &members[0]]);
    assert_ne!(code, 0, "duplicate add must fail: {out}");
    let (code, out) = admin(&["remove", &baddr, &format!("127.0.0.1:{}", dead_port())]);
    assert_ne!(code, 0, "unknown remove must fail: {out}");
    let (code, out) = admin(&["add", &baddr, &format!("127.0.0.1:{}", dead_port())]);
    assert_ne!(code, 0, "unreachable add must fail: {out}");
    assert_eq!(listed(&admin(&["list", &baddr]).1), members);

    // Reads keep working while a node joins.
    let reader = {
        let url = b.url("/files/f1.bin");
        let want = files[1].1.clone();
        tokio::spawn(async move {
            let mut reads = 0;
            let deadline = std::time::Instant::now() + Duration::from_secs(3);
            while std::time::Instant::now() < deadline {
                let resp = client()
                    .get(&url)
                    .send()
                    .await
                    .expect("get during migration");
                assert_eq!(resp.status(), 200);
                assert!(
                    resp.bytes().await.expect("body")[..] == want[..],
                    "read during migration differs"
                );
                reads += 1;
            }
            reads
        })
    };
    nodes.push(Node::start(&dir.path().join("n3"), 0));
    let new = nodes[3].addr();
    let (code, out) = admin(&["add", &baddr, &new]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("Successfully added node: {new}")),
        "{out}"
    );
    let migrated: usize = out
        .lines()
        .find_map(|l| l.strip_prefix("Number of files migrated: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no migration count in {out}"));
    assert!(migrated > 0, "a new node must take some blobs");
    // With R=2 a 4th node should own about half of the replica sets' changes: 2/4 of blobs, never all.
    assert!(
        migrated < before,
        "only blobs whose owners changed move ({migrated} of {before})"
    );
    assert!(reader.await.expect("reader task") > 0);
    members.push(new.clone());
    assert_eq!(listed(&admin(&["list", &baddr]).1), members);
    assert_eq!(
        assert_placement(&nodes.iter().collect::<Vec<_>>(), &members, 2).await,
        before
    );
    for (name, data) in &files {
        assert!(fetch(&b, name).await.1 == *data, "{name} changed after add");
    }

    let gone = members.remove(1);
    let (code, out) = admin(&["remove", &baddr, &gone]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("Successfully removed node: {gone}")),
        "{out}"
    );
    assert!(out.contains("Number of files migrated: "), "{out}");
    assert_eq!(listed(&admin(&["list", &baddr]).1), members);
    assert_eq!(
        assert_placement(&nodes.iter().collect::<Vec<_>>(), &members, 2).await,
        before
    );
    for (name, data) in &files {
        assert!(
            fetch(&b, name).await.1 == *data,
            "{name} changed after remove"
        );
    }

    // Restart everything: membership and data come back from disk.
    drop(b);
    for n in nodes.iter_mut() {
        n.restart();
    }
    b = start_broadcaster(&env);
    let baddr = b.proc.addr.to_string();
    assert_eq!(
        listed(&admin(&["list", &baddr]).1),
        members,
        "membership survives restarts"
    );
    for (name, data) in &files {
        assert!(
            fetch(&b, name).await.1 == *data,
            "{name} changed after restart"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_node_cannot_be_removed() {
    let dir = scratch_dir("ring-last-");
    let node = Node::start(&dir.path().join("n0"), 0);
    let b = start_broadcaster(&ring_env(&dir.path().join("meta.db"), &[&node], 1));
    let baddr = b.proc.addr.to_string();
    let (code, out) = admin(&["remove", &baddr, &node.addr()]);
    assert_ne!(code, 0, "{out}");
    assert_eq!(listed(&admin(&["list", &baddr]).1), vec![node.addr()]);
}
