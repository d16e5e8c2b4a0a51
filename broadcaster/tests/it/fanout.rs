//! Happy paths: byte-exact fan-out, the multipart contract, concurrency.

use reqwest::StatusCode;

use crate::data::{
    gen_bytes, multipart_body, multipart_content_type, post_multipart_file, put_file, put_stream,
    Framing, Part, StreamOpts, TestFile, KIB, MIB,
};
use crate::harness::{client, raw_request, Cluster, Reader};
use crate::verify::{
    assert_absent, assert_all_committed, assert_copy, assert_staging_empty, summary, Summary,
};

/// 0 B, 1 B, chunk-1, chunk, chunk+1 and a few multi-chunk sizes, each sized and chunked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_boundary_sizes_sized_and_chunked() {
    const CHUNK: u64 = 65_536;
    let cluster = Cluster::start(3, &[("BROADCASTER_BUFFER_SIZE", "65536")]);
    let targets = cluster.targets();
    let http = client();
    let sizes = [
        0,
        1,
        CHUNK - 1,
        CHUNK,
        CHUNK + 1,
        2 * CHUNK - 1,
        3 * CHUNK,
        MIB + 12_345,
    ];
    for (i, size) in sizes.into_iter().enumerate() {
        let tf = TestFile::generate(1000 + i as u64, size);
        for framing in [Framing::Sized, Framing::Chunked] {
            let name = format!("edge-{size}-{framing:?}.bin").to_lowercase();
            let resp = put_file(&http, &cluster.bc.put_url(&name), &tf, framing, &[]).await;
            let s = summary(resp, StatusCode::CREATED).await;
            assert_all_committed(&s, &name, &tf, &targets);
            for r in &cluster.readers {
                assert_copy(r, &name, &tf).await;
            }
        }
    }
    let readers: Vec<&Reader> = cluster.readers.iter().collect();
    assert_staging_empty(&readers).await;
}

async fn fanout_large(framing: Framing) {
    let cluster = Cluster::start(3, &[("BROADCASTER_BUFFER_SIZE", "65536")]);
    let tf = TestFile::generate(77, 100 * MIB);
    let name = format!("large-{framing:?}.bin").to_lowercase();
    let opts = match framing {
        Framing::Sized => StreamOpts::fixed(MIB as usize),
        Framing::Chunked => StreamOpts::irregular(),
    };
    let resp = put_stream(
        &client(),
        &cluster.bc.put_url(&name),
        &tf,
        framing,
        opts,
        &[],
    )
    .await;
    let s = summary(resp, StatusCode::CREATED).await;
    assert_all_committed(&s, &name, &tf, &cluster.targets());
    for r in &cluster.readers {
        assert_copy(r, &name, &tf).await;
    }
}

/// 100 MiB with Content-Length, streamed from a file in 1 MiB pieces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_100mib_sized() {
    fanout_large(Framing::Sized).await;
}

/// 100 MiB chunked, in irregular pieces (1 B to 128 KiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_100mib_chunked() {
    fanout_large(Framing::Chunked).await;
}

/// The seed's client contract: `POST /broadcast` with multipart field `file`, named by the
/// part's filename → 200 and the summary; and a reader's own `POST /upload`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_broadcast_and_reader_upload() {
    let cluster = Cluster::start(3, &[]);
    let targets = cluster.targets();
    let http = client();

    // Field `file` alone.
    let tf = TestFile::generate(21, 300 * KIB + 7);
    let data = tf.bytes();
    let resp = post_multipart_file(&http, &cluster.bc.url("/broadcast"), "seed.bin", &data).await;
    let s = summary(resp, StatusCode::OK).await;
    assert_all_committed(&s, "seed.bin", &tf, &targets);
    for r in &cluster.readers {
        assert_copy(r, "seed.bin", &tf).await;
    }

    // A browser-style form: a text field before `file`; only `file` is the upload.
    let tf2 = TestFile::generate(22, 70_001);
    let body = multipart_body(&[
        Part {
            name: "note",
            filename: None,
            data: b"not the upload",
        },
        Part {
            name: "file",
            filename: Some("form.bin"),
            data: &tf2.bytes(),
        },
    ]);
    let resp = http
        .post(cluster.bc.url("/broadcast"))
        .header(reqwest::header::CONTENT_TYPE, multipart_content_type())
        .body(body)
        .send()
        .await
        .expect("POST /broadcast");
    let s: Summary = summary(resp, StatusCode::OK).await;
    assert_all_committed(&s, "form.bin", &tf2, &targets);
    for r in &cluster.readers {
        assert_copy(r, "form.bin", &tf2).await;
    }

    // Straight into one reader, the way the seed's broadcaster talks to readers.
    let reader = &cluster.readers[0];
    let tf3 = TestFile::generate(23, 123_457);
    let resp = post_multipart_file(&http, &reader.url("/upload"), "direct.bin", &tf3.bytes()).await;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    assert!(status.is_success(), "reader POST /upload: {status} {text}");
    assert_copy(reader, "direct.bin", &tf3).await;
    for other in &cluster.readers[1..] {
        assert_absent(&[other], "direct.bin").await;
    }
}

/// A multipart body cut off before its closing boundary → 400, nothing committed anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_truncated_is_400_and_leaves_nothing() {
    let cluster = Cluster::start(3, &[]);
    let data = gen_bytes(31, 200_000);
    let full = multipart_body(&[Part {
        name: "file",
        filename: Some("broken.bin"),
        data: &data,
    }]);
    // Drop the closing boundary and the last part of the data: a sized body that ends early
    // in multipart terms (the HTTP framing itself is complete).
    let cut = &full[..full.len() - 1000];
    let ct = multipart_content_type();
    let resp = raw_request(
        cluster.bc.proc.addr,
        "POST",
        "/broadcast",
        &[("Content-Type", ct.as_str())],
        cut,
    )
    .await;
    assert_eq!(resp.status, 400, "truncated multipart: {}", resp.text());
    let readers: Vec<&Reader> = cluster.readers.iter().collect();
    assert_absent(&readers, "broken.bin").await;

    // The broadcaster is still fine afterwards.
    let tf = TestFile::from_bytes(&data);
    let resp = post_multipart_file(
        &client(),
        &cluster.bc.url("/broadcast"),
        "broken.bin",
        &data,
    )
    .await;
    let s = summary(resp, StatusCode::OK).await;
    assert_all_committed(&s, "broken.bin", &tf, &cluster.targets());
}

/// 8 uploads at once, different names and sizes, half sized and half chunked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_uploads_all_commit() {
    let cluster = Cluster::start(3, &[]);
    let targets = cluster.targets();
    let http = client();
    let files: Vec<TestFile> = (0..8u64)
        .map(|i| TestFile::generate(300 + i, 512 * KIB + i * 123_457))
        .collect();
    let mut tasks = Vec::new();
    for (i, tf) in files.iter().enumerate() {
        let url = cluster.bc.put_url(&format!("conc-{i}.bin"));
        let http = http.clone();
        let framing = if i % 2 == 0 {
            Framing::Sized
        } else {
            Framing::Chunked
        };
        let path = tf.path();
        let size = tf.size;
        tasks.push(tokio::spawn(async move {
            let opts = StreamOpts::irregular();
            let body = reqwest::Body::wrap_stream(crate::data::file_stream(path, opts));
            let mut req = http.put(&url).body(body);
            if framing == Framing::Sized {
                req = req.header(reqwest::header::CONTENT_LENGTH, size.to_string());
            }
            let resp = req.send().await.expect("concurrent PUT");
            summary(resp, StatusCode::CREATED).await
        }));
    }
    for (i, task) in tasks.into_iter().enumerate() {
        let s = task.await.expect("upload task");
        assert_all_committed(&s, &format!("conc-{i}.bin"), &files[i], &targets);
    }
    for (i, tf) in files.iter().enumerate() {
        for r in &cluster.readers {
            assert_copy(r, &format!("conc-{i}.bin"), tf).await;
        }
    }
}
