//! Deterministic test data, digests and request bodies.

use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use sha2::{Digest, Sha256};
use tempfile::NamedTempFile;
use tokio::io::AsyncReadExt;

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * 1024;

/// xorshift64* — fast, seeded, good enough to make every byte position distinct-ish.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// `len` deterministic bytes for `seed`.
pub fn gen_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    XorShift::new(seed).fill(&mut v);
    v
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// SHA-256 of a file. Large files go through `sha256sum` when it is available, because the
/// `sha2` crate is slow in unoptimised test builds; the in-process hash is the fallback.
pub fn sha256_file(path: &Path) -> String {
    let len = std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .len();
    if len >= 4 * MIB {
        if let Ok(out) = Command::new("sha256sum").arg(path).output() {
            let text = String::from_utf8_lossy(&out.stdout);
            let hex = text.split_whitespace().next().unwrap_or("");
            if out.status.success() && hex.len() == 64 {
                return hex.to_ascii_lowercase();
            }
        }
    }
    let mut f =
        std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; MIB as usize];
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

/// Test data kept in a temporary file, with its size and SHA-256 (lowercase hex).
#[derive(Debug)]
pub struct TestFile {
    pub size: u64,
    pub sha256: String,
    file: NamedTempFile,
}

impl TestFile {
    /// `size` deterministic bytes from `seed`, written in 1 MiB blocks (never all in memory).
    pub fn generate(seed: u64, size: u64) -> TestFile {
        let file = NamedTempFile::new().expect("tempfile");
        {
            let mut w = BufWriter::new(file.as_file());
            let mut rng = XorShift::new(seed);
            let mut block = vec![0u8; MIB as usize];
            let mut left = size;
            while left > 0 {
                let n = left.min(MIB) as usize;
                rng.fill(&mut block[..n]);
                w.write_all(&block[..n]).expect("write test data");
                left -= n as u64;
            }
            w.flush().expect("flush test data");
        }
        let sha256 = sha256_file(file.path());
        TestFile { size, sha256, file }
    }

    pub fn from_bytes(data: &[u8]) -> TestFile {
        let mut file = NamedTempFile::new().expect("tempfile");
        file.write_all(data).expect("write test data");
        file.flush().expect("flush");
        TestFile {
            size: data.len() as u64,
            sha256: sha256_hex(data),
            file,
        }
    }

    pub fn path(&self) -> PathBuf {
        self.file.path().to_path_buf()
    }

    /// The whole content (only for small files).
    pub fn bytes(&self) -> Vec<u8> {
        assert!(self.size <= 64 * MIB, "bytes() is for small test files");
        std::fs::read(self.file.path()).expect("read test data")
    }

    /// The SHA-256 as standard base64 (for `Content-Digest`).
    pub fn sha256_base64(&self) -> String {
        use base64::Engine;
        let raw = hex::decode(&self.sha256).expect("hex");
        base64::engine::general_purpose::STANDARD.encode(raw)
    }
}

/// How to cut a body stream into pieces, and what to report while streaming.
#[derive(Debug, Clone)]
pub struct StreamOpts {
    /// Piece sizes, used in turn (cycled).
    pub sizes: Vec<usize>,
    /// Pause before each piece.
    pub delay: Option<Duration>,
    /// Incremented by the size of each piece once it is handed to the HTTP client.
    pub progress: Option<Arc<AtomicU64>>,
}

/// Irregular piece sizes: tiny, odd, smaller and larger than the broadcaster's chunk.
pub const IRREGULAR: &[usize] = &[1, 1000, 70_000, 4096, 65_536, 333, 131_072, 65_535];

impl StreamOpts {
    pub fn irregular() -> Self {
        StreamOpts {
            sizes: IRREGULAR.to_vec(),
            delay: None,
            progress: None,
        }
    }

    pub fn fixed(size: usize) -> Self {
        StreamOpts {
            sizes: vec![size],
            delay: None,
            progress: None,
        }
    }
}

struct StreamState {
    path: PathBuf,
    file: Option<tokio::fs::File>,
    opts: StreamOpts,
    i: usize,
    done: bool,
}

/// A stream of the file's bytes, cut as `opts` says.
pub fn file_stream(
    path: PathBuf,
    opts: StreamOpts,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    assert!(!opts.sizes.is_empty() && opts.sizes.iter().all(|&s| s > 0));
    let st = StreamState {
        path,
        file: None,
        opts,
        i: 0,
        done: false,
    };
    futures_util::stream::unfold(st, |mut st| async move {
        if st.done {
            return None;
        }
        if st.file.is_none() {
            match tokio::fs::File::open(&st.path).await {
                Ok(f) => st.file = Some(f),
                Err(e) => {
                    st.done = true;
                    return Some((Err(e), st));
                }
            }
        }
        if let Some(d) = st.opts.delay {
            tokio::time::sleep(d).await;
        }
        let want = st.opts.sizes[st.i % st.opts.sizes.len()];
        st.i += 1;
        let mut buf = vec![0u8; want];
        let mut filled = 0;
        let file = st.file.as_mut()?;
        while filled < want {
            match file.read(&mut buf[filled..]).await {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) => {
                    st.done = true;
                    return Some((Err(e), st));
                }
            }
        }
        if filled == 0 {
            return None;
        }
        buf.truncate(filled);
        if let Some(p) = &st.opts.progress {
            p.fetch_add(filled as u64, Ordering::SeqCst);
        }
        Some((Ok(Bytes::from(buf)), st))
    })
}

/// How an upload body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length` set, body streamed from the file.
    Sized,
    /// `Transfer-Encoding: chunked`, irregular pieces.
    Chunked,
}

/// PUTs `tf` to `url` with the given framing and extra headers.
pub async fn put_file(
    client: &reqwest::Client,
    url: &str,
    tf: &TestFile,
    framing: Framing,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    put_stream(client, url, tf, framing, StreamOpts::irregular(), headers).await
}

/// PUTs `tf` to `url`, cut as `opts` says; `Sized` adds the Content-Length header.
pub async fn put_stream(
    client: &reqwest::Client,
    url: &str,
    tf: &TestFile,
    framing: Framing,
    opts: StreamOpts,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let body = reqwest::Body::wrap_stream(file_stream(tf.path(), opts));
    let mut req = client.put(url).body(body);
    if framing == Framing::Sized {
        // hyper keeps a user-set Content-Length for a streamed body (no chunked framing).
        req = req.header(reqwest::header::CONTENT_LENGTH, tf.size.to_string());
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send()
        .await
        .unwrap_or_else(|e| panic!("PUT {url} failed at the HTTP level: {e:?}"))
}

/// One part of a hand-built multipart/form-data body.
#[derive(Debug)]
pub struct Part<'a> {
    pub name: &'a str,
    pub filename: Option<&'a str>,
    pub data: &'a [u8],
}

pub const BOUNDARY: &str = "----distributary-it-7f3a9c2e5b1d";

/// A multipart/form-data body (`Content-Type: multipart/form-data; boundary=BOUNDARY`).
pub fn multipart_body(parts: &[Part<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        match p.filename {
            Some(f) => out.extend_from_slice(
                format!(
                    "Content-Disposition: form-data; name=\"{}\"; filename=\"{}\"\r\n\
                     Content-Type: application/octet-stream\r\n\r\n",
                    p.name, f
                )
                .as_bytes(),
            ),
            None => out.extend_from_slice(
                format!(
                    "Content-Disposition: form-data; name=\"{}\"\r\n\r\n",
                    p.name
                )
                .as_bytes(),
            ),
        }
        out.extend_from_slice(p.data);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    out
}

pub fn multipart_content_type() -> String {
    format!("multipart/form-data; boundary={BOUNDARY}")
}

/// POSTs a multipart body with one `file` part named `filename`.
pub async fn post_multipart_file(
    client: &reqwest::Client,
    url: &str,
    filename: &str,
    data: &[u8],
) -> reqwest::Response {
    let body = multipart_body(&[Part {
        name: "file",
        filename: Some(filename),
        data,
    }]);
    client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, multipart_content_type())
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url} failed at the HTTP level: {e:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generator_is_deterministic_and_seeded() {
        assert_eq!(gen_bytes(1, 1000), gen_bytes(1, 1000));
        assert_ne!(gen_bytes(1, 1000), gen_bytes(2, 1000));
        let tf = TestFile::generate(3, 5 * MIB + 3);
        let mut expect = vec![0u8; (5 * MIB + 3) as usize];
        let mut rng = XorShift::new(3);
        for block in expect.chunks_mut(MIB as usize) {
            rng.fill(block);
        }
        assert_eq!(tf.sha256, sha256_hex(&expect));
        assert_eq!(tf.bytes(), expect);
    }
}
