//! The reader on its own: crash recovery of staging, serving files (Range, HEAD, ETag).

use std::time::Duration;

use reqwest::StatusCode;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::data::{gen_bytes, post_multipart_file, TestFile, KIB, MIB};
use crate::harness::{client, eventually, raw_request, Reader};
use crate::verify::assert_copy;

/// A reader SIGKILLed while staging leaves staging behind; a reader started on that data dir
/// (with more stale staging planted) removes it all before it listens, and still serves the
/// committed files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_cleans_stale_staging_and_keeps_files() {
    let dir = tempfile::Builder::new()
        .prefix("distributary-restart-")
        .tempdir()
        .expect("tempdir");
    let http = client();
    let keep = TestFile::generate(101, 777 * KIB + 3);

    let mut first = Reader::start_in(dir.path(), &[]);
    let resp = post_multipart_file(&http, &first.url("/upload"), "keep.bin", &keep.bytes()).await;
    assert!(
        resp.status().is_success(),
        "POST /upload: {}",
        resp.status()
    );
    assert_copy(&first, "keep.bin", &keep).await;

    // Stage part of an upload through the stream protocol, then crash.
    let id = uuid::Uuid::new_v4().simple().to_string();
    let mut sock = TcpStream::connect(first.proc.addr).await.expect("connect");
    let head = format!(
        "PUT /v1/uploads/{id}/partial.bin HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n\r\n",
        first.proc.addr,
        10 * MIB
    );
    sock.write_all(head.as_bytes()).await.expect("head");
    sock.write_all(&gen_bytes(102, 2 * MIB as usize))
        .await
        .expect("body");
    sock.flush().await.expect("flush");
    let staged = eventually(Duration::from_secs(10), || async {
        !first.staging_entries().is_empty()
    })
    .await;
    assert!(staged, "the reader is not staging an upload in progress");
    first.proc.kill9();
    drop(sock);
    assert!(
        !first.staging_entries().is_empty(),
        "precondition: the crash left staging behind"
    );

    // More debris, as an older crash might have left.
    let staging = first.staging_dir();
    std::fs::write(staging.join("stale-file.part"), b"stale").expect("plant stale file");
    let stale_dir = staging.join(uuid::Uuid::new_v4().simple().to_string());
    std::fs::create_dir_all(&stale_dir).expect("plant stale dir");
    std::fs::write(stale_dir.join("video.mp4"), b"stale").expect("plant stale file");

    let second = Reader::start_in(dir.path(), &[]);
    assert_eq!(
        second.staging_entries(),
        Vec::<std::path::PathBuf>::new(),
        "staging not cleaned by the time the reader logs `listening on`"
    );
    assert_copy(&second, "keep.bin", &keep).await;
    let resp = http
        .get(second.file_url("partial.bin"))
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(second.committed_names(), vec!["keep.bin".to_string()]);
}

/// GET with Range → 206 and the right bytes; HEAD → Content-Length; ETag; 416; 404; no way out
/// of `files/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_files_with_range_head_and_etag() {
    let reader = Reader::start();
    let http = client();
    let data = gen_bytes(111, 1000);
    let resp = post_multipart_file(&http, &reader.url("/upload"), "r.bin", &data).await;
    assert!(
        resp.status().is_success(),
        "POST /upload: {}",
        resp.status()
    );
    let url = reader.file_url("r.bin");

    let full = http.get(&url).send().await.expect("GET");
    assert_eq!(full.status(), StatusCode::OK);
    assert_eq!(full.content_length(), Some(1000));
    let etag = full
        .headers()
        .get(reqwest::header::ETAG)
        .expect("GET /files/{name} has an ETag")
        .to_str()
        .expect("ascii ETag")
        .to_string();
    assert!(!etag.is_empty());
    assert_eq!(full.bytes().await.expect("body")[..], data[..]);

    for (range, start, end) in [
        ("bytes=10-19", 10usize, 19usize),
        ("bytes=0-0", 0, 0),
        ("bytes=990-", 990, 999),
        ("bytes=-5", 995, 999),
        ("bytes=995-5000", 995, 999),
    ] {
        let resp = http
            .get(&url)
            .header(reqwest::header::RANGE, range)
            .send()
            .await
            .expect("GET range");
        assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        let cr = resp
            .headers()
            .get(reqwest::header::CONTENT_RANGE)
            .unwrap_or_else(|| panic!("{range}: no Content-Range"))
            .to_str()
            .expect("ascii")
            .to_string();
        assert_eq!(cr, format!("bytes {start}-{end}/1000"), "{range}");
        assert_eq!(
            resp.content_length(),
            Some((end - start + 1) as u64),
            "{range}"
        );
        let body = resp.bytes().await.expect("body");
        assert_eq!(body[..], data[start..=end], "{range}");
    }

    let resp = http
        .get(&url)
        .header(reqwest::header::RANGE, "bytes=2000-3000")
        .send()
        .await
        .expect("GET range");
    assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);

    let head = http.head(&url).send().await.expect("HEAD");
    assert_eq!(head.status(), StatusCode::OK);
    let len = head
        .headers()
        .get(reqwest::header::CONTENT_LENGTH)
        .expect("HEAD has Content-Length")
        .to_str()
        .expect("ascii")
        .to_string();
    assert_eq!(len, "1000");
    assert_eq!(
        head.headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok()),
        Some(etag.as_str()),
        "HEAD and GET disagree on the ETag"
    );
    assert!(head.bytes().await.expect("HEAD body").is_empty());

    let resp = http
        .get(reader.file_url("missing.bin"))
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    // Nothing outside files/ is reachable.
    std::fs::write(reader.data_dir.join("secret.txt"), b"top secret").expect("plant");
    for path in [
        "/files/..%2Fsecret.txt",
        "/files/%2E%2E%2Fsecret.txt",
        "/files/../secret.txt",
        "/files/..",
        "/files/%2E%2E",
        "/files/",
    ] {
        let resp = raw_request(reader.proc.addr, "GET", path, &[], b"").await;
        assert!(
            resp.status == 400 || resp.status == 404,
            "GET {path}: expected 400 or 404, got {}",
            resp.status
        );
        assert!(!resp.text().contains("top secret"), "GET {path} leaked");
    }
}
