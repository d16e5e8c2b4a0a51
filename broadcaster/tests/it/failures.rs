//! Things going wrong: the client leaves, targets are dead, die or stall.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::data::{gen_bytes, put_file, Framing, StreamOpts, TestFile, KIB, MIB};
use crate::harness::{client, dead_port, eventually, raw_put, Broadcaster, Reader, StallServer};
use crate::verify::{assert_absent, assert_all_committed, assert_copy, raw_summary, summary};

/// The client announces 50 MiB, sends 5 MiB and hangs up: the upload is aborted everywhere
/// (404 on every reader, staging empty) and the name can be uploaded again afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_mid_upload_aborts_everywhere() {
    let cluster = crate::harness::Cluster::start(3, &[]);
    let readers: Vec<&Reader> = cluster.readers.iter().collect();
    let name = "disconnect.bin";
    let tf = TestFile::generate(41, 5 * MIB);
    let data = tf.bytes();

    let mut sock = TcpStream::connect(cluster.bc.proc.addr)
        .await
        .expect("connect");
    let head = format!(
        "PUT /broadcast/{name} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n\r\n",
        cluster.bc.proc.addr,
        50 * MIB
    );
    sock.write_all(head.as_bytes()).await.expect("write head");
    for piece in data.chunks(64 * KIB as usize) {
        sock.write_all(piece).await.expect("write body");
    }
    sock.flush().await.expect("flush");

    // The upload is really in flight: every reader is staging it.
    let staging = eventually(Duration::from_secs(15), || async {
        readers.iter().all(|r| !r.staging_entries().is_empty())
    })
    .await;
    assert!(
        staging,
        "after 5 MiB of a 50 MiB upload not every reader is staging; staging: {:?}",
        readers
            .iter()
            .map(|r| (r.target(), r.staging_entries()))
            .collect::<Vec<_>>()
    );
    for r in &readers {
        assert!(
            !r.files_dir().join(name).exists(),
            "{name} visible on {} before the upload finished",
            r.target()
        );
    }

    drop(sock);
    let dropped = Instant::now();
    assert_absent(&readers, name).await;
    eprintln!(
        "aborted everywhere {:?} after the disconnect",
        dropped.elapsed()
    );

    // Nothing is wedged: the same name goes through afterwards.
    let tf2 = TestFile::generate(42, 200 * KIB);
    let resp = put_file(
        &client(),
        &cluster.bc.put_url(name),
        &tf2,
        Framing::Sized,
        &[],
    )
    .await;
    let s = summary(resp, StatusCode::CREATED).await;
    assert_all_committed(&s, name, &tf2, &cluster.targets());
    for r in &readers {
        assert_copy(r, name, &tf2).await;
    }
}

/// Three targets, one with nothing listening, quorum = all (default) → 502; the dead target
/// is `failed`, the live ones `aborted`, and nothing is kept anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_missed_with_dead_target_is_502() {
    let r0 = Reader::start();
    let r1 = Reader::start();
    let dead = format!("127.0.0.1:{}", dead_port());
    let targets = vec![r0.target(), dead.clone(), r1.target()];
    let bc = Broadcaster::start(&targets, &[]);
    let name = "quorum.bin";
    // The broadcaster may answer before reading the whole body (the quorum is lost at connect
    // time): a raw socket still reads that answer when writing the rest fails.
    let data = gen_bytes(51, 256 * KIB as usize + 5);
    let resp = raw_put(
        bc.proc.addr,
        &format!("/broadcast/{name}"),
        &data,
        false,
        &[],
    )
    .await;
    let s = raw_summary(&resp, 502);
    assert_eq!(s.name, name, "{s:#?}");
    assert_eq!(s.outcome, "failed", "{s:#?}");
    assert_eq!(s.committed, 0, "{s:#?}");
    assert_eq!(s.required, 3, "{s:#?}");
    assert_eq!(s.targets.len(), 3, "{s:#?}");
    let d = s.target(&dead);
    assert_eq!(d.state, "failed", "{s:#?}");
    assert!(d.error.as_deref().is_some_and(|e| !e.is_empty()), "{s:#?}");
    for live in [&r0, &r1] {
        assert_eq!(s.target(&live.target()).state, "aborted", "{s:#?}");
    }
    assert_absent(&[&r0, &r1], name).await;
}

/// The same dead target with `BROADCASTER_MIN_SUCCESS=2` → 201, two committed copies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_success_two_tolerates_dead_target() {
    let r0 = Reader::start();
    let r1 = Reader::start();
    let dead = format!("127.0.0.1:{}", dead_port());
    let targets = vec![r0.target(), dead.clone(), r1.target()];
    let bc = Broadcaster::start(&targets, &[("BROADCASTER_MIN_SUCCESS", "2")]);
    let name = "quorum2.bin";
    let tf = TestFile::generate(52, 3 * MIB + 17);
    let resp = put_file(&client(), &bc.put_url(name), &tf, Framing::Chunked, &[]).await;
    let s = summary(resp, StatusCode::CREATED).await;
    assert_eq!(s.outcome, "committed", "{s:#?}");
    assert_eq!(s.committed, 2, "{s:#?}");
    assert_eq!(s.required, 2, "{s:#?}");
    assert_eq!(s.size, tf.size, "{s:#?}");
    assert_eq!(s.sha256, tf.sha256, "{s:#?}");
    let d = s.target(&dead);
    assert_eq!(d.state, "failed", "{s:#?}");
    assert!(d.error.is_some(), "{s:#?}");
    for live in [&r0, &r1] {
        let t = s.target(&live.target());
        assert_eq!(t.state, "committed", "{s:#?}");
        assert_eq!(t.bytes, tf.size, "{s:#?}");
        assert_copy(live, name, &tf).await;
        assert!(
            live.staging_entries().is_empty(),
            "{:?}",
            live.staging_entries()
        );
    }
}

/// 200 MiB streamed in 1 MiB pieces; one of three readers is SIGKILLed after ~20 MiB.
/// With `BROADCASTER_MIN_SUCCESS=2` the upload still commits on the other two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_killed_mid_upload_min_success_two() {
    let mut cluster = crate::harness::Cluster::start(3, &[("BROADCASTER_MIN_SUCCESS", "2")]);
    let name = "killed.bin";
    let tf = TestFile::generate(61, 200 * MIB);
    let progress = Arc::new(AtomicU64::new(0));
    let opts = StreamOpts {
        sizes: vec![MIB as usize],
        delay: Some(Duration::from_millis(2)),
        progress: Some(progress.clone()),
    };
    let url = cluster.bc.put_url(name);
    let upload = {
        let tf_path_size = (tf.path(), tf.size);
        let http = client();
        tokio::spawn(async move {
            let (path, size) = tf_path_size;
            let body = reqwest::Body::wrap_stream(crate::data::file_stream(path, opts));
            let resp = http
                .put(&url)
                .header(reqwest::header::CONTENT_LENGTH, size.to_string())
                .body(body)
                .send()
                .await
                .expect("PUT");
            summary(resp, StatusCode::CREATED).await
        })
    };
    let reached = eventually(Duration::from_secs(120), || async {
        progress.load(Ordering::SeqCst) >= 20 * MIB
    })
    .await;
    assert!(reached, "the upload never reached 20 MiB");
    let victim = cluster.readers[1].target();
    cluster.readers[1].proc.kill9();
    let sent_at_kill = progress.load(Ordering::SeqCst);
    assert!(
        sent_at_kill < tf.size,
        "upload finished before the reader was killed; test did not test anything"
    );

    let s = upload.await.expect("upload task");
    assert_eq!(s.outcome, "committed", "{s:#?}");
    assert_eq!(s.committed, 2, "{s:#?}");
    assert_eq!(s.required, 2, "{s:#?}");
    assert_eq!(s.size, tf.size, "{s:#?}");
    assert_eq!(s.sha256, tf.sha256, "{s:#?}");
    let v = s.target(&victim);
    assert_eq!(v.state, "failed", "{s:#?}");
    assert!(v.error.is_some(), "{s:#?}");
    assert!(v.bytes < tf.size, "{s:#?}");
    for i in [0, 2] {
        let r = &cluster.readers[i];
        let t = s.target(&r.target());
        assert_eq!(t.state, "committed", "{s:#?}");
        assert_eq!(t.bytes, tf.size, "{s:#?}");
        assert_copy(r, name, &tf).await;
    }
    assert!(
        !cluster.readers[1].files_dir().join(name).exists(),
        "the killed reader has a committed copy"
    );
}

/// A target that accepts the connection but never reads is detached after the stall timeout
/// (`failed`, error mentions the stall); the other two commit 64 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_target_is_detached() {
    let r0 = Reader::start();
    let r1 = Reader::start();
    let stall = StallServer::start();
    let targets = vec![r0.target(), stall.target(), r1.target()];
    let bc = Broadcaster::start(
        &targets,
        &[
            ("BROADCASTER_STALL_TIMEOUT_MS", "1000"),
            ("BROADCASTER_MIN_SUCCESS", "2"),
        ],
    );
    let name = "stall.bin";
    let tf = TestFile::generate(71, 64 * MIB);
    let started = Instant::now();
    let resp = tokio::time::timeout(
        Duration::from_secs(120),
        put_file(&client(), &bc.put_url(name), &tf, Framing::Sized, &[]),
    )
    .await
    .expect("upload with a stalled target did not finish within 120 s");
    let s = summary(resp, StatusCode::CREATED).await;
    let elapsed = started.elapsed();
    assert!(
        stall.accepted.load(Ordering::SeqCst) >= 1,
        "the broadcaster never connected to the stalling target"
    );
    assert_eq!(s.outcome, "committed", "{s:#?}");
    assert_eq!(s.committed, 2, "{s:#?}");
    let st = s.target(&stall.target());
    assert_eq!(st.state, "failed", "{s:#?}");
    let err = st.error.clone().unwrap_or_default();
    assert!(
        err.to_ascii_lowercase().contains("stall"),
        "error for the stalled target should mention the stall: {s:#?}"
    );
    assert!(st.bytes < tf.size, "{s:#?}");
    // Detaching took at least the stall timeout, and the broadcaster's own clock agrees with ours.
    assert!(
        s.duration_ms >= 1000 && u128::from(s.duration_ms) <= elapsed.as_millis() + 100,
        "duration_ms {} vs stall timeout 1000 ms and {elapsed:?} measured by the client",
        s.duration_ms
    );
    for r in [&r0, &r1] {
        let t = s.target(&r.target());
        assert_eq!(t.state, "committed", "{s:#?}");
        assert_eq!(t.bytes, tf.size, "{s:#?}");
        assert_copy(r, name, &tf).await;
    }
    eprintln!("stalled-target upload took {elapsed:?}");
}
