//! The JSON summary, and checks of what the readers hold.

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::StatusCode;
use serde::Deserialize;
use tokio::io::AsyncReadExt;

use crate::data::{sha256_file, TestFile};
use crate::harness::{client, eventually, RawResponse, Reader};

/// The upload summary documented in README.md.
#[derive(Debug, Deserialize)]
pub struct Summary {
    pub name: String,
    pub size: u64,
    pub sha256: String,
    pub outcome: String,
    pub committed: usize,
    pub required: usize,
    pub duration_ms: u64,
    pub targets: Vec<TargetSummary>,
}

#[derive(Debug, Deserialize)]
pub struct TargetSummary {
    pub target: String,
    pub state: String,
    pub bytes: u64,
    pub error: Option<String>,
}

fn same_target(reported: &str, configured: &str) -> bool {
    let norm = |s: &str| {
        s.trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string()
    };
    norm(reported) == norm(configured)
}

impl Summary {
    /// The entry for `target` (`host:port` as configured).
    pub fn target(&self, target: &str) -> &TargetSummary {
        let found: Vec<&TargetSummary> = self
            .targets
            .iter()
            .filter(|t| same_target(&t.target, target))
            .collect();
        assert_eq!(
            found.len(),
            1,
            "expected exactly one summary entry for target {target}: {self:#?}"
        );
        found[0]
    }
}

/// Reads the body as a summary after checking the status (the body is printed on failure).
pub async fn summary(resp: reqwest::Response, expected: StatusCode) -> Summary {
    let status = resp.status();
    let text = resp.text().await.expect("response body");
    assert_eq!(status, expected, "unexpected status; body: {text}");
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("body is not the documented JSON summary ({e}): {text}"))
}

/// The same for a response read off a raw socket.
pub fn raw_summary(resp: &RawResponse, expected: u16) -> Summary {
    let text = resp.text();
    assert_eq!(resp.status, expected, "unexpected status; body: {text}");
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("body is not the documented JSON summary ({e}): {text}"))
}

/// Reads the body and checks the status only.
pub async fn expect_status(resp: reqwest::Response, expected: StatusCode) -> String {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    assert_eq!(status, expected, "unexpected status; body: {text}");
    text
}

/// A summary of a fully successful upload to exactly `targets`.
pub fn assert_all_committed(s: &Summary, name: &str, tf: &TestFile, targets: &[String]) {
    assert_eq!(s.name, name, "{s:#?}");
    assert_eq!(s.size, tf.size, "{s:#?}");
    assert_eq!(s.sha256.to_ascii_lowercase(), tf.sha256, "{s:#?}");
    assert_eq!(s.outcome, "committed", "{s:#?}");
    assert_eq!(s.committed, targets.len(), "{s:#?}");
    assert_eq!(s.required, targets.len(), "{s:#?}");
    assert_eq!(s.targets.len(), targets.len(), "{s:#?}");
    for t in targets {
        let e = s.target(t);
        assert_eq!(e.state, "committed", "{t}: {s:#?}");
        assert_eq!(e.bytes, tf.size, "{t}: {s:#?}");
        assert_eq!(e.error, None, "{t}: {s:#?}");
    }
}

/// The reader holds a byte-exact committed copy of `tf` under `name`: on disk (size and
/// SHA-256 of `files/<name>`) and over HTTP (`GET /files/{name}` compared byte by byte).
pub async fn assert_copy(reader: &Reader, name: &str, tf: &TestFile) {
    let path = reader.files_dir().join(name);
    let meta = std::fs::metadata(&path).unwrap_or_else(|e| {
        panic!(
            "reader {} has no committed {}: {e}",
            reader.target(),
            path.display()
        )
    });
    assert_eq!(meta.len(), tf.size, "size of {}", path.display());
    let p = path.clone();
    let digest = tokio::task::spawn_blocking(move || sha256_file(&p))
        .await
        .expect("hash task");
    assert_eq!(digest, tf.sha256, "SHA-256 of {}", path.display());

    let url = reader.file_url(name);
    let resp = client().get(&url).send().await.expect("GET file");
    assert_eq!(resp.status(), StatusCode::OK, "GET {url}");
    assert_eq!(
        resp.content_length(),
        Some(tf.size),
        "Content-Length of GET {url}"
    );
    let mut expected = tokio::fs::File::open(tf.path())
        .await
        .expect("open test data");
    let mut stream = resp.bytes_stream();
    let mut pos: u64 = 0;
    let mut want = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap_or_else(|e| panic!("GET {url} body broke at {pos}: {e}"));
        assert!(
            pos + chunk.len() as u64 <= tf.size,
            "GET {url} returned more than {} bytes",
            tf.size
        );
        want.resize(chunk.len(), 0);
        expected
            .read_exact(&mut want)
            .await
            .expect("read test data");
        if want[..] != chunk[..] {
            let off = want.iter().zip(chunk.iter()).position(|(a, b)| a != b);
            panic!(
                "GET {url}: content differs at byte {}",
                pos + off.unwrap_or(0) as u64
            );
        }
        pos += chunk.len() as u64;
    }
    assert_eq!(pos, tf.size, "GET {url} body length");
}

async fn get_status(url: &str) -> Option<StatusCode> {
    client().get(url).send().await.ok().map(|r| r.status())
}

/// Nothing of `name` is left on the readers: `GET /files/{name}` is 404, there is no
/// `files/<name>`, and `staging/` is empty. Polls up to 10 s (aborts may finish after the
/// response), then asserts.
pub async fn assert_absent(readers: &[&Reader], name: &str) {
    let ok = eventually(Duration::from_secs(10), || async {
        for r in readers {
            if get_status(&r.file_url(name)).await != Some(StatusCode::NOT_FOUND)
                || r.files_dir().join(name).exists()
                || !r.staging_entries().is_empty()
            {
                return false;
            }
        }
        true
    })
    .await;
    if ok {
        return;
    }
    for r in readers {
        let status = get_status(&r.file_url(name)).await;
        assert_eq!(
            status,
            Some(StatusCode::NOT_FOUND),
            "reader {} still serves {name}",
            r.target()
        );
        assert!(
            !r.files_dir().join(name).exists(),
            "reader {} has files/{name}",
            r.target()
        );
        assert_eq!(
            r.staging_entries(),
            Vec::<std::path::PathBuf>::new(),
            "reader {} has leftover staging after 10 s",
            r.target()
        );
    }
}

/// Staging is empty on every reader (polls up to 10 s).
pub async fn assert_staging_empty(readers: &[&Reader]) {
    let ok = eventually(Duration::from_secs(10), || async {
        readers.iter().all(|r| r.staging_entries().is_empty())
    })
    .await;
    if !ok {
        for r in readers {
            assert_eq!(
                r.staging_entries(),
                Vec::<std::path::PathBuf>::new(),
                "reader {} has leftover staging after 10 s",
                r.target()
            );
        }
    }
}
