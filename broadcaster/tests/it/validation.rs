//! Bad input gets a clear 4xx and leaves nothing behind: digests, names, sizes.

use reqwest::StatusCode;

use crate::data::{
    gen_bytes, multipart_body, multipart_content_type, put_file, sha256_hex, Framing, Part,
    TestFile, KIB,
};
use crate::harness::{client, raw_put, raw_request, walk, Cluster, Reader};
use crate::verify::{assert_absent, assert_all_committed, assert_copy, expect_status, summary};

/// Wrong digest in either header form → 422 and nothing committed; the right digest in either
/// form → 201; a malformed digest header → 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_headers() {
    use base64::Engine;
    let cluster = Cluster::start(3, &[]);
    let readers: Vec<&Reader> = cluster.readers.iter().collect();
    let targets = cluster.targets();
    let http = client();
    let tf = TestFile::generate(81, 300 * KIB + 1);
    let other = gen_bytes(82, 300 * KIB as usize + 1);
    let wrong_hex = sha256_hex(&other);
    let wrong_b64 =
        base64::engine::general_purpose::STANDARD.encode(hex::decode(&wrong_hex).expect("hex"));
    let right_cd = format!("sha-256=:{}:", tf.sha256_base64());
    let wrong_cd = format!("sha-256=:{wrong_b64}:");

    // Mismatches → 422, both framings.
    for (name, header, value, framing) in [
        (
            "bad-cd-sized.bin",
            "Content-Digest",
            wrong_cd.as_str(),
            Framing::Sized,
        ),
        (
            "bad-cd-chunked.bin",
            "Content-Digest",
            wrong_cd.as_str(),
            Framing::Chunked,
        ),
        (
            "bad-hex-sized.bin",
            "X-Content-SHA256",
            wrong_hex.as_str(),
            Framing::Sized,
        ),
        (
            "bad-hex-chunked.bin",
            "X-Content-SHA256",
            wrong_hex.as_str(),
            Framing::Chunked,
        ),
    ] {
        let resp = put_file(
            &http,
            &cluster.bc.put_url(name),
            &tf,
            framing,
            &[(header, value)],
        )
        .await;
        expect_status(resp, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_absent(&readers, name).await;
    }

    // Matches → 201, byte-exact everywhere.
    for (name, header, value, framing) in [
        (
            "good-cd.bin",
            "Content-Digest",
            right_cd.as_str(),
            Framing::Chunked,
        ),
        (
            "good-hex.bin",
            "X-Content-SHA256",
            tf.sha256.as_str(),
            Framing::Sized,
        ),
    ] {
        let resp = put_file(
            &http,
            &cluster.bc.put_url(name),
            &tf,
            framing,
            &[(header, value)],
        )
        .await;
        let s = summary(resp, StatusCode::CREATED).await;
        assert_all_committed(&s, name, &tf, &targets);
        for r in &readers {
            assert_copy(r, name, &tf).await;
        }
    }

    // Malformed headers → 400, nothing kept. The broadcaster may answer before it reads the
    // body, so these go over a raw socket that reads the answer even if writing failed.
    let data = tf.bytes();
    for (name, header, value) in [
        (
            "malformed-cd-1.bin",
            "Content-Digest",
            "sha-256=:!!not base64!!:",
        ),
        ("malformed-cd-2.bin", "Content-Digest", "sha-256"),
        ("malformed-hex-1.bin", "X-Content-SHA256", "xyz"),
    ] {
        let path = format!("/broadcast/{name}");
        let resp = raw_put(
            cluster.bc.proc.addr,
            &path,
            &data,
            false,
            &[(header, value)],
        )
        .await;
        assert_eq!(resp.status, 400, "{header}: {value}: {}", resp.text());
        assert_absent(&readers, name).await;
    }
}

/// Bad names → 400 (a literal `/` or an empty name may be 404: no route), nothing created;
/// a 255-byte name and a percent-encoded non-ASCII name are fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_names_rejected_and_255_bytes_ok() {
    let cluster = Cluster::start(2, &[]);
    let readers: Vec<&Reader> = cluster.readers.iter().collect();
    let addr = cluster.bc.proc.addr;
    let body = b"0123456789";
    let before: Vec<_> = readers
        .iter()
        .map(|r| walk(&r.data_dir))
        .collect::<Vec<_>>();

    let long256 = "a".repeat(256);
    let multibyte256 = "é".repeat(128); // 128 characters, 256 bytes
    let bad_400: Vec<String> = vec![
        "..".into(),
        ".".into(),
        "%2E%2E".into(),
        "%2e".into(),
        "a%2Fb".into(),
        "%2E%2E%2Fescape".into(),
        "a%5Cb".into(),
        "%2E%2E%5Cescape".into(),
        "a%00b".into(),
        long256.clone(),
        crate::harness::encode_name(&multibyte256),
    ];
    for seg in &bad_400 {
        let path = format!("/broadcast/{seg}");
        let resp = raw_request(addr, "PUT", &path, &[], body).await;
        assert_eq!(resp.status, 400, "PUT {path}: {}", resp.text());
    }
    for path in ["/broadcast/", "/broadcast/a/b", "/broadcast/../escape"] {
        let resp = raw_request(addr, "PUT", path, &[], body).await;
        assert!(
            resp.status == 400 || resp.status == 404,
            "PUT {path}: expected 400 or 404, got {} {}",
            resp.status,
            resp.text()
        );
    }
    // The same rules for a multipart part's filename.
    for filename in ["..", ".", ""] {
        let mp = multipart_body(&[Part {
            name: "file",
            filename: Some(filename),
            data: body,
        }]);
        let ct = multipart_content_type();
        let resp = raw_request(
            addr,
            "POST",
            "/broadcast",
            &[("Content-Type", ct.as_str())],
            &mp,
        )
        .await;
        assert_eq!(
            resp.status,
            400,
            "multipart filename {filename:?}: {}",
            resp.text()
        );
    }
    assert_absent(&readers, "probe-nothing-here").await;
    for (r, before) in readers.iter().zip(&before) {
        assert_eq!(
            &walk(&r.data_dir),
            before,
            "bad names changed reader {}'s data dir",
            r.target()
        );
        assert!(r.committed_names().is_empty(), "{:?}", r.committed_names());
    }
    // Nothing escaped next to the data dirs either.
    for r in &readers {
        let parent = r.data_dir.parent().expect("parent");
        assert!(
            !parent.join("escape").exists(),
            "escape created next to data dir"
        );
    }

    // 255 bytes is fine, in ASCII and with a multi-byte character.
    let http = client();
    let tf = TestFile::from_bytes(body);
    let long255 = "a".repeat(255);
    let mixed255 = format!("é{}", "b".repeat(253));
    assert_eq!(mixed255.len(), 255);
    let spaced = "hello wörld (1).txt".to_string();
    for name in [&long255, &mixed255, &spaced] {
        let resp = put_file(&http, &cluster.bc.put_url(name), &tf, Framing::Sized, &[]).await;
        let s = summary(resp, StatusCode::CREATED).await;
        assert_all_committed(&s, name, &tf, &cluster.targets());
        for r in &readers {
            assert_copy(r, name, &tf).await;
        }
    }
    for r in &readers {
        let mut want = vec![long255.clone(), mixed255.clone(), spaced.clone()];
        want.sort();
        assert_eq!(r.committed_names(), want, "reader {}", r.target());
    }
}

/// `BROADCASTER_MAX_UPLOAD_BYTES=1000`: 1000 bytes go through, more → 413 (sized, chunked,
/// multipart) and nothing is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_max_upload_bytes_is_413() {
    let cluster = Cluster::start(2, &[("BROADCASTER_MAX_UPLOAD_BYTES", "1000")]);
    let readers: Vec<&Reader> = cluster.readers.iter().collect();
    let http = client();
    let big = TestFile::generate(91, 2000);
    let just_over = TestFile::generate(92, 1001);
    let exact = TestFile::generate(93, 1000);

    // Over the limit. The broadcaster may answer before it has read the body (a sized one
    // can be refused on its Content-Length), so these go over a raw socket that still reads
    // the answer when writing the rest of the body fails.
    let addr = cluster.bc.proc.addr;
    for (name, tf, chunked) in [
        ("big-sized.bin", &big, false),
        ("big-chunked.bin", &big, true),
        ("over-chunked.bin", &just_over, true),
        ("over-sized.bin", &just_over, false),
    ] {
        let path = format!("/broadcast/{name}");
        let resp = raw_put(addr, &path, &tf.bytes(), chunked, &[]).await;
        assert_eq!(resp.status, 413, "{name}: {}", resp.text());
        assert_absent(&readers, name).await;
    }
    let mp = multipart_body(&[Part {
        name: "file",
        filename: Some("big-multipart.bin"),
        data: &big.bytes(),
    }]);
    let ct = multipart_content_type();
    let resp = raw_request(
        addr,
        "POST",
        "/broadcast",
        &[("Content-Type", ct.as_str())],
        &mp,
    )
    .await;
    assert_eq!(resp.status, 413, "multipart: {}", resp.text());
    assert_absent(&readers, "big-multipart.bin").await;

    for (name, framing) in [
        ("exact-sized.bin", Framing::Sized),
        ("exact-chunked.bin", Framing::Chunked),
    ] {
        let resp = put_file(&http, &cluster.bc.put_url(name), &exact, framing, &[]).await;
        let s = summary(resp, StatusCode::CREATED).await;
        assert_all_committed(&s, name, &exact, &cluster.targets());
        for r in &readers {
            assert_copy(r, name, &exact).await;
        }
    }
}
