//! Checksums on read, restarts, and staging left by a crash.

use std::fs;
use std::io::{Seek, SeekFrom, Write};

use reqwest::StatusCode;
use serde_json::Value;

use crate::harness::{client, payload, sha_hex, Node};

/// Bytes before the payload in a blob file (`DSTBLOB1`, SHA-256, length).
const HEADER_LEN: u64 = 48;

#[tokio::test]
async fn on_disk_format() {
    let node = Node::start();
    let data = payload(5000, 7);
    client()
        .put(node.blob_url("v/f"))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    let file = fs::read(node.blob_path("v/f")).unwrap();
    assert_eq!(&file[..8], b"DSTBLOB1");
    assert_eq!(hex::encode(&file[8..40]), sha_hex(&data));
    assert_eq!(u64::from_le_bytes(file[40..48].try_into().unwrap()), 5000);
    assert_eq!(&file[48..], &data[..]);
}

#[tokio::test]
async fn corrupt_blob_answers_500_and_is_flagged() {
    let node = Node::start();
    let http = client();
    let data = payload(200 * 1024, 5);
    http.put(node.blob_url("v/chunk-0-00007.m4s"))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    // Flip one payload byte behind the node's back, as a failing disk would.
    let path = node.blob_path("v/chunk-0-00007.m4s");
    let mut f = fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.seek(SeekFrom::Start(HEADER_LEN + 12345)).unwrap();
    f.write_all(&[data[12345] ^ 0xff]).unwrap();
    f.sync_all().unwrap();
    drop(f);

    let r = http
        .get(node.blob_url("v/chunk-0-00007.m4s"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(r.headers()["x-blob-corrupt"], "1");
    let v: Value = r.json().await.unwrap();
    let msg = v["error"].as_str().unwrap();
    assert!(msg.starts_with("checksum mismatch"), "{msg}");

    // A range of an intact region is refused too: the blob as a whole cannot be trusted.
    let r = http
        .get(node.blob_url("v/chunk-0-00007.m4s"))
        .header("range", "bytes=0-9")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    // A HEAD sends no payload and never hashes one: it answers from the header (length, recorded
    // digest). Whoever reads the bytes gets the 500 above.
    let r = http
        .head(node.blob_url("v/chunk-0-00007.m4s"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-length"], data.len().to_string());
    assert!(r.headers().get("x-blob-corrupt").is_none());
    // A header that no longer matches the file is still refused on HEAD.
    let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(HEADER_LEN + 100).unwrap();
    drop(f);
    let r = http
        .head(node.blob_url("v/chunk-0-00007.m4s"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(r.headers()["x-blob-corrupt"], "1");
    assert!(
        node.log().contains("corrupt blob"),
        "the corruption is logged:\n{}",
        node.log()
    );

    // Truncation is caught without hashing, and a rewrite repairs the blob.
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(HEADER_LEN + 10)
        .unwrap();
    let r = http
        .get(node.blob_url("v/chunk-0-00007.m4s"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(r.headers()["x-blob-corrupt"], "1");
    http.put(node.blob_url("v/chunk-0-00007.m4s"))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    let r = http
        .get(node.blob_url("v/chunk-0-00007.m4s"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap(), data);
}

#[tokio::test]
async fn restart_keeps_blobs_and_cleans_staging() {
    let dir = tempfile::tempdir().unwrap();
    let http = client();
    let blobs: Vec<(String, Vec<u8>)> = (0..5)
        .map(|i| {
            (
                format!("video-{}/chunk-0-{i:05}.m4s", i % 2),
                payload(10_000 + i, i as u64),
            )
        })
        .collect();
    {
        let mut node = Node::start_in(dir.path(), &[]);
        for (key, data) in &blobs {
            let r = http
                .put(node.blob_url(key))
                .body(data.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::CREATED);
        }
        let status = node.stop().await.expect("exits after SIGTERM");
        assert!(status.success(), "SIGTERM exits 0: {status}");
    }
    // What a crash mid-write leaves behind.
    let staging = dir.path().join("staging");
    fs::write(staging.join("0123abcd"), b"half a blob").unwrap();
    fs::create_dir_all(staging.join("odd-dir")).unwrap();
    fs::write(staging.join("odd-dir/x"), b"y").unwrap();

    let node = Node::start_in(dir.path(), &[]);
    assert_eq!(node.staging_count(), 0, "stale staging removed at start");
    assert!(
        node.log().contains("removed stale staging"),
        "{}",
        node.log()
    );
    for (key, data) in &blobs {
        let r = http.get(node.blob_url(key)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{key}");
        assert_eq!(r.bytes().await.unwrap(), data[..], "{key}");
    }
    let v: Value = http
        .get(node.url("/v1/blobs"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["blobs"].as_array().unwrap().len(), blobs.len());
}

/// Blobs written with a windowed digest (what the ring writes): the node keeps the window table beside the
/// payload, sends it on `?windows=1`, serves the payload without hashing it (the reader checks every
/// window against the table it checked against its record), and finds damage in the scrub.
#[tokio::test]
async fn windowed_blobs_keep_their_table_and_are_served_without_hashing() {
    use common::blob_digest::{self, BlobDigest, DigestKind, WindowHasher, WINDOW};

    let node = Node::start();
    let http = client();
    let data = payload(3 * WINDOW + 999, 9);
    let mut hasher = WindowHasher::new();
    hasher.update(&data);
    let (digest, table) = hasher.finish();

    let put = |announced: BlobDigest| {
        http.put(node.blob_url("v/seg.m4s"))
            .header("x-content-sha256", announced.to_string())
            .body(data.clone())
            .send()
    };
    // A wrong windowed digest stores nothing.
    let wrong = BlobDigest::compute(DigestKind::Windowed, &data[1..]);
    let r = put(wrong).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(!node.blob_path("v/seg.m4s").exists());

    let r = put(digest).await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let info: Value = r.json().await.unwrap();
    assert_eq!(info["sha256"], digest.to_string());

    let path = node.blob_path("v/seg.m4s");
    let file = fs::read(&path).unwrap();
    assert_eq!(&file[..8], b"DSTBLOB2");
    assert_eq!(&file[8..40], digest.bytes());
    let end = HEADER_LEN as usize + data.len();
    assert_eq!(&file[HEADER_LEN as usize..end], &data[..]);
    assert_eq!(&file[end..], &blob_digest::encode_table(&table)[..]);

    let r = http
        .get(format!("{}?windows=1", node.blob_url("v/seg.m4s")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-blob-length"], data.len().to_string());
    assert_eq!(r.headers()["x-content-sha256"], digest.to_string().as_str());
    let got = r.bytes().await.unwrap();
    assert_eq!(
        blob_digest::check_table(&digest, data.len() as u64, &got),
        Ok(table.clone())
    );

    // Damage on disk: served as it is (no hashing on GET; the reader's window check catches it), found
    // by the scrub.
    let mut f = fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.seek(SeekFrom::Start(HEADER_LEN + 70_000)).unwrap();
    f.write_all(&[data[70_000] ^ 0xff]).unwrap();
    drop(f);
    let r = http
        .get(node.blob_url("v/seg.m4s"))
        .header("range", "bytes=65536-131071")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    let window = r.bytes().await.unwrap();
    assert_ne!(blob_digest::window_digest(&window), table[1]);
    let listed: Value = http
        .get(node.url("/v1/blobs?prefix=v/&verify=1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["blobs"], serde_json::json!([]), "{listed}");

    // A plain blob has no table.
    http.put(node.blob_url("v/plain"))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    let r = http
        .get(format!("{}?windows=1", node.blob_url("v/plain")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
}
