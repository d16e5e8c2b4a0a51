//! The blob API: PUT / GET / Range / HEAD / DELETE / list, digests, limits.

use reqwest::StatusCode;
use serde_json::Value;

use crate::harness::{client, payload, sha_hex, Node};

#[tokio::test]
async fn put_get_range_head_delete() {
    let node = Node::start();
    let http = client();
    let data = payload(1 << 20, 1);
    let sha = sha_hex(&data);

    let r = http
        .put(node.blob_url("video-1/chunk-0-00001.m4s"))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["key"], "video-1/chunk-0-00001.m4s");
    assert_eq!(v["bytes"], data.len() as u64);
    assert_eq!(v["sha256"], sha);

    let r = http
        .get(node.blob_url("video-1/chunk-0-00001.m4s"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let h = r.headers().clone();
    assert_eq!(h["etag"], format!("\"{sha}\"").as_str());
    assert_eq!(h["x-content-sha256"], sha.as_str());
    assert_eq!(h["content-length"], data.len().to_string().as_str());
    assert_eq!(h["content-type"], "application/octet-stream");
    assert_eq!(h["accept-ranges"], "bytes");
    assert_eq!(r.bytes().await.unwrap(), data);

    // One range, a suffix range, an open range, an unsatisfiable one.
    for (range, start, end) in [
        ("bytes=100-199", 100, 199),
        ("bytes=-10", data.len() - 10, data.len() - 1),
        ("bytes=1048000-", 1_048_000, data.len() - 1),
    ] {
        let r = http
            .get(node.blob_url("video-1/chunk-0-00001.m4s"))
            .header("range", range)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(
            r.headers()["content-range"],
            format!("bytes {start}-{end}/{}", data.len()).as_str()
        );
        assert_eq!(r.bytes().await.unwrap(), data[start..=end], "{range}");
    }
    let r = http
        .get(node.blob_url("video-1/chunk-0-00001.m4s"))
        .header("range", "bytes=2000000-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes */{}", data.len()).as_str()
    );

    // Conditional requests use the checksum as validator.
    let r = http
        .get(node.blob_url("video-1/chunk-0-00001.m4s"))
        .header("if-none-match", format!("\"{sha}\""))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);

    let r = http
        .head(node.blob_url("video-1/chunk-0-00001.m4s"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["content-length"],
        data.len().to_string().as_str()
    );
    assert_eq!(r.headers()["x-content-sha256"], sha.as_str());
    assert!(r.bytes().await.unwrap().is_empty());

    let r = http
        .delete(node.blob_url("video-1/chunk-0-00001.m4s"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    for method in [
        reqwest::Method::GET,
        reqwest::Method::HEAD,
        reqwest::Method::DELETE,
    ] {
        let r = http
            .request(method.clone(), node.blob_url("video-1/chunk-0-00001.m4s"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{method}");
    }
    assert!(
        !node.data_dir.join("blobs/video-1").exists(),
        "the id directory goes with its last blob"
    );
    assert_eq!(node.staging_count(), 0);
}

#[tokio::test]
async fn replace_streamed_and_empty_blobs() {
    let node = Node::start();
    let http = client();
    let url = node.blob_url("v/a.bin");
    http.put(&url).body("first").send().await.unwrap();
    // A chunked body of several MiB, sent in pieces: the node streams it to disk.
    let big = payload(6 << 20, 2);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        big.chunks(100_000).map(|c| Ok(c.to_vec())).collect();
    let r = http
        .put(&url)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["sha256"], sha_hex(&big));
    assert_eq!(
        http.get(&url).send().await.unwrap().bytes().await.unwrap(),
        big
    );

    let r = http.put(node.blob_url("v/empty")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = http.get(node.blob_url("v/empty")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-length"], "0");
    assert_eq!(r.headers()["x-content-sha256"], sha_hex(b"").as_str());
}

#[tokio::test]
async fn listing_sorted_with_prefix() {
    let node = Node::start();
    let http = client();
    for (i, key) in [
        "vb/chunk-1",
        "va/manifest.mpd",
        "va/chunk-0",
        "vab/x",
        "raw/f",
    ]
    .iter()
    .enumerate()
    {
        let r = http
            .put(node.blob_url(key))
            .body(payload(1000 + i, i as u64))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let keys = |v: &Value| -> Vec<String> {
        v["blobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["key"].as_str().unwrap().to_owned())
            .collect()
    };
    let all: Value = http
        .get(node.url("/v1/blobs"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        keys(&all),
        [
            "raw/f",
            "va/chunk-0",
            "va/manifest.mpd",
            "vab/x",
            "vb/chunk-1"
        ]
    );
    let first = &all["blobs"][0];
    assert_eq!(first["bytes"], 1004);
    assert_eq!(first["sha256"], sha_hex(&payload(1004, 4)));

    for (prefix, want) in [
        ("va", &["va/chunk-0", "va/manifest.mpd", "vab/x"][..]),
        ("va/", &["va/chunk-0", "va/manifest.mpd"]),
        ("va/m", &["va/manifest.mpd"]),
        ("zzz", &[]),
    ] {
        let v: Value = http
            .get(node.url("/v1/blobs"))
            .query(&[("prefix", prefix)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(keys(&v), want, "prefix {prefix}");
    }
}

#[tokio::test]
async fn digest_mismatch_stores_nothing() {
    let node = Node::start();
    let http = client();
    let data = payload(300_000, 3);
    let url = node.blob_url("v/chunk");
    let r = http
        .put(&url)
        .header("x-content-sha256", sha_hex(b"something else"))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("mismatch"), "{v}");
    assert_eq!(
        http.get(&url).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    assert!(!node.blob_path("v/chunk").exists());
    assert!(!node.data_dir.join("blobs/v").exists());
    assert_eq!(node.staging_count(), 0);

    // A mismatch does not disturb the version already stored either.
    http.put(&url).body("old").send().await.unwrap();
    let r = http
        .put(&url)
        .header("x-content-sha256", sha_hex(b"nope"))
        .body("new")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        http.get(&url).send().await.unwrap().text().await.unwrap(),
        "old"
    );

    let r = http
        .put(&url)
        .header("x-content-sha256", "not hex")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    let r = http
        .put(&url)
        .header("x-content-sha256", sha_hex(&data))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        http.get(&url).send().await.unwrap().bytes().await.unwrap(),
        data
    );
}

#[tokio::test]
async fn oversize_blobs_are_refused() {
    let node = Node::start_with(&[("STORAGE_NODE_MAX_BLOB_BYTES", "1000")]);
    let http = client();
    let r = http
        .put(node.blob_url("v/big"))
        .body(payload(1001, 4))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(!node.blob_path("v/big").exists());
    assert_eq!(node.staging_count(), 0);
    let r = http
        .put(node.blob_url("v/ok"))
        .body(payload(1000, 4))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
}
