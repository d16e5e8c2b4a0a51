//! Process lifecycle: configuration errors, health, unknown routes, SIGTERM.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;

use crate::data::{file_stream, StreamOpts, TestFile, KIB, MIB};
use crate::harness::{client, eventually, run_to_exit, service_command, Cluster};
use crate::verify::{assert_all_committed, assert_copy, summary};

/// A bad value in any variable stops the process at start, non-zero, naming the variable.
#[test]
fn bad_env_exits_nonzero_naming_the_variable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir_s = dir.path().to_string_lossy().into_owned();
    let broadcaster_cases: &[(&str, &str)] = &[
        ("BROADCASTER_BUFFER_SIZE", "abc"),
        ("BROADCASTER_BUFFER_SIZE", "512"),
        ("BROADCASTER_BUFFER_SIZE", "1073741824"),
        ("BROADCASTER_QUEUE_DEPTH", "0"),
        ("BROADCASTER_QUEUE_DEPTH", "-3"),
        ("BROADCASTER_STALL_TIMEOUT_MS", "soon"),
        ("BROADCASTER_MIN_SUCCESS", "0"),
        ("BROADCASTER_MIN_SUCCESS", "3"),
        ("BROADCASTER_MAX_UPLOAD_BYTES", "lots"),
        ("BROADCASTER_HTTP_PORT", "99999"),
    ];
    let reader_cases: &[(&str, &str)] = &[
        ("READER_SINK", "nope"),
        ("READER_BUFFER_SIZE", "abc"),
        ("READER_BUFFER_SIZE", "1024"),
        ("READER_HTTP_PORT", "notaport"),
        ("READER_STAGING_TTL_SECS", "forever"),
        ("READER_MAX_UPLOAD_BYTES", "-1"),
    ];
    let mut failures = Vec::new();
    for (bin, cases) in [("broadcaster", broadcaster_cases), ("reader", reader_cases)] {
        for (var, value) in cases {
            let mut cmd = service_command(bin);
            if bin == "broadcaster" {
                // Two targets (nothing needs to listen there for start-up).
                cmd.env("BROADCASTER_HTTP_HOST", "127.0.0.1")
                    .env("BROADCASTER_HTTP_PORT", "0")
                    .env("BROADCASTER_HOST_LIST", "127.0.0.1:9;127.0.0.1:10");
            } else {
                cmd.env("READER_HTTP_HOST", "127.0.0.1")
                    .env("READER_HTTP_PORT", "0")
                    .env("READER_DATA_DIR", &dir_s);
            }
            cmd.env(var, value).current_dir(dir.path());
            let (status, out) = run_to_exit(cmd, Duration::from_secs(15));
            match status {
                None => failures.push(format!("{bin} {var}={value}: still running after 15 s")),
                Some(s) if s.success() => {
                    failures.push(format!("{bin} {var}={value}: exited 0\n{out}"))
                }
                Some(_) if !out.contains(var) => failures.push(format!(
                    "{bin} {var}={value}: output does not name {var}:\n{out}"
                )),
                Some(_) => {}
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// `/healthz` answers on both services, unknown routes are 404, and SIGTERM exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_unknown_routes_and_sigterm() {
    let mut cluster = Cluster::start(1, &[]);
    let http = client();
    let r = http
        .get(cluster.readers[0].url("/healthz"))
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.expect("body").trim(), "ok");
    let r = http
        .get(cluster.bc.url("/healthz"))
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status(), StatusCode::OK);

    for base in [cluster.bc.url(""), cluster.readers[0].url("")] {
        for path in ["/nope", "/healthz/extra", "/v2/whatever", "/files"] {
            let r = http.get(format!("{base}{path}")).send().await.expect("GET");
            assert_eq!(r.status(), StatusCode::NOT_FOUND, "GET {base}{path}");
        }
    }

    cluster.bc.proc.signal("TERM");
    let status = cluster.bc.proc.wait_exit(Duration::from_secs(10)).await;
    assert!(
        matches!(status, Some(s) if s.code() == Some(0)),
        "broadcaster after SIGTERM: {status:?}"
    );
    let reader = &mut cluster.readers[0];
    reader.proc.signal("TERM");
    let status = reader.proc.wait_exit(Duration::from_secs(10)).await;
    assert!(
        matches!(status, Some(s) if s.code() == Some(0)),
        "reader after SIGTERM: {status:?}"
    );
}

/// SIGTERM during an upload: the in-flight upload still completes (201, byte-exact), then the
/// broadcaster exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_inflight_upload() {
    let mut cluster = Cluster::start(2, &[]);
    let name = "drain.bin";
    let tf = TestFile::generate(121, 8 * MIB);
    let progress = Arc::new(AtomicU64::new(0));
    let opts = StreamOpts {
        sizes: vec![256 * KIB as usize],
        delay: Some(Duration::from_millis(50)),
        progress: Some(progress.clone()),
    };
    let url = cluster.bc.put_url(name);
    let (path, size) = (tf.path(), tf.size);
    let upload = tokio::spawn(async move {
        let resp = client()
            .put(&url)
            .header(reqwest::header::CONTENT_LENGTH, size.to_string())
            .body(reqwest::Body::wrap_stream(file_stream(path, opts)))
            .send()
            .await
            .expect("PUT");
        summary(resp, StatusCode::CREATED).await
    });
    let started = eventually(Duration::from_secs(30), || async {
        progress.load(Ordering::SeqCst) >= MIB
    })
    .await;
    assert!(started, "upload did not start");
    cluster.bc.proc.signal("TERM");
    let at_term = progress.load(Ordering::SeqCst);
    assert!(at_term < tf.size, "upload finished before SIGTERM");

    let s = upload.await.expect("upload task");
    assert_all_committed(&s, name, &tf, &cluster.targets());
    for r in &cluster.readers {
        assert_copy(r, name, &tf).await;
    }
    let status = cluster.bc.proc.wait_exit(Duration::from_secs(10)).await;
    assert!(
        matches!(status, Some(s) if s.code() == Some(0)),
        "broadcaster after SIGTERM: {status:?}"
    );
}
