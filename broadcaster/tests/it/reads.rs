//! Streamed, verified reads (issue 11): a read sends its first bytes before a node has sent its last, each
//! window is checked before it is sent, and a read finishes from the replicas that hold each window intact
//! even when every replica has a damaged window somewhere.
//!
//! Real storage nodes and a broadcaster (SQLite metadata, the `ring` target) on loopback; between the
//! broadcaster and each node runs a streaming proxy of the test's own that can hold back the end of every
//! blob it serves, or flip one byte at a chosen offset of every blob payload it serves.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;
use futures_util::StreamExt;

use crate::data::gen_bytes;
use crate::harness::{client, metric, scratch_dir, Broadcaster};
use crate::ring::{ring_env, start_broadcaster, upload, Node};

/// Chunk size of raw uploads here: 16 windows of 64 KiB per chunk.
const CHUNK: usize = 1 << 20;

/// What a proxy does to the blob payloads it relays (window tables and everything else pass untouched).
#[derive(Clone)]
enum Meddling {
    /// Sends nothing of a blob's last 64 KiB until the gate opens.
    HoldTail(Arc<tokio::sync::Semaphore>),
    /// Flips the byte at this offset of the blob, when a reply covers it.
    FlipAt(u64),
    /// Answers a range request with the whole blob (200), as a node that ignores `Range` would.
    IgnoreRange,
    /// Says this in a window table's `X-Blob-Length` (`None`: leaves the header out).
    BlobLength(Option<&'static str>),
    /// Ends every payload reply after this many bytes, though its `Content-Length` promised more.
    CutAfter(u64),
    /// Flips the first byte of every window table.
    DamageTable,
}

#[derive(Clone)]
struct Proxy {
    upstream: SocketAddr,
    meddling: Arc<std::sync::Mutex<Meddling>>,
    http: reqwest::Client,
    meddled: Arc<AtomicUsize>,
}

/// Relays one request to the node, streaming the reply back.
async fn relay(State(p): State<Proxy>, req: Request) -> Response {
    let meddling = p.meddling.lock().expect("meddling").clone();
    let (parts, body) = req.into_parts();
    let pq = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str().to_owned())
        .unwrap_or_default();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let payload_get = parts.method == axum::http::Method::GET
        && pq.starts_with("/v1/blobs/")
        && !pq.contains('?');
    let table_get = parts.method == axum::http::Method::GET && pq.ends_with("?windows=1");
    let mut out = p
        .http
        .request(parts.method.clone(), format!("http://{}{pq}", p.upstream));
    for (k, v) in &parts.headers {
        let skipped = [header::HOST, header::CONTENT_LENGTH, header::CONNECTION].contains(k)
            || (payload_get && k == header::RANGE && matches!(meddling, Meddling::IgnoreRange));
        if !skipped {
            out = out.header(k, v);
        }
    }
    if payload_get && parts.headers.contains_key(header::RANGE) {
        if let Meddling::IgnoreRange = meddling {
            p.meddled.fetch_add(1, Ordering::SeqCst);
        }
    }
    let resp = match out.body(body).send().await {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    let status = resp.status();
    let mut headers = resp.headers().clone();
    let payload = payload_get && status.is_success();
    let table = table_get && status.is_success();
    if table {
        if let Meddling::BlobLength(lie) = &meddling {
            match lie {
                Some(v) => headers.insert("x-blob-length", v.parse().expect("header value")),
                None => headers.remove("x-blob-length"),
            };
            p.meddled.fetch_add(1, Ordering::SeqCst);
        }
    }
    // Where the reply starts in the blob, from `Content-Range: bytes A-B/N`.
    let first = headers
        .get(header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes "))
        .and_then(|v| v.split('-').next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    // The blob's length: after the `/` of `Content-Range`, or the whole reply.
    let blob_len = headers
        .get(header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit('/').next())
        .and_then(|v| v.parse::<u64>().ok())
        .or(resp.content_length())
        .unwrap_or(0);
    let mut upstream = resp.bytes_stream();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let meddled = p.meddled.clone();
    tokio::spawn(async move {
        let mut at = 0u64;
        let mut held_back = false;
        while let Some(piece) = upstream.next().await {
            let Ok(piece) = piece else { return };
            let mut piece = piece.to_vec();
            if table && at == 0 && !piece.is_empty() {
                if let Meddling::DamageTable = meddling {
                    piece[0] ^= 0x5a;
                    meddled.fetch_add(1, Ordering::SeqCst);
                }
            }
            if payload {
                match &meddling {
                    Meddling::CutAfter(n) => {
                        if at + piece.len() as u64 > *n {
                            piece.truncate(n.saturating_sub(at) as usize);
                            meddled.fetch_add(1, Ordering::SeqCst);
                            let _ = tx.send(Ok(Bytes::from(piece))).await;
                            // Dropping the sender ends the body short of its Content-Length.
                            return;
                        }
                    }
                    Meddling::IgnoreRange | Meddling::BlobLength(_) | Meddling::DamageTable => {}
                    Meddling::FlipAt(offset) => {
                        let (a, b) = (first + at, first + at + piece.len() as u64);
                        if (a..b).contains(offset) {
                            piece[(offset - a) as usize] ^= 0x5a;
                            meddled.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    Meddling::HoldTail(gate) => {
                        let tail_from = blob_len.saturating_sub(64 * 1024);
                        if !held_back && first + at + piece.len() as u64 > tail_from {
                            // Send what comes before the tail, then wait.
                            let keep = tail_from.saturating_sub(first + at) as usize;
                            let rest = piece.split_off(keep);
                            at += piece.len() as u64;
                            meddled.fetch_add(1, Ordering::SeqCst);
                            held_back = true;
                            if tx.send(Ok(Bytes::from(piece))).await.is_err() {
                                return;
                            }
                            let Ok(permit) = gate.acquire().await else {
                                return;
                            };
                            permit.forget();
                            piece = rest;
                        }
                    }
                }
            }
            at += piece.len() as u64;
            if tx.send(Ok(Bytes::from(piece))).await.is_err() {
                return;
            }
        }
    });
    let mut answer = Response::new(Body::from_stream(tokio_stream_from(rx)));
    *answer.status_mut() = status;
    for (k, v) in &headers {
        if k != header::TRANSFER_ENCODING && k != header::CONNECTION {
            answer.headers_mut().insert(k.clone(), v.clone());
        }
    }
    answer
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// A proxy in front of `node`, stopped when dropped.
struct Relay {
    addr: SocketAddr,
    meddled: Arc<AtomicUsize>,
    meddling: Arc<std::sync::Mutex<Meddling>>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(node: &Node, meddling: Meddling) -> Relay {
        let upstream = node.proc.as_ref().expect("running").addr;
        let meddled = Arc::new(AtomicUsize::new(0));
        let meddling = Arc::new(std::sync::Mutex::new(meddling));
        let state = Proxy {
            upstream,
            meddling: meddling.clone(),
            http: reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("proxy client"),
            meddled: meddled.clone(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a proxy");
        let addr = listener.local_addr().expect("proxy address");
        let app = Router::new().fallback(relay).with_state(state);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Relay {
            addr,
            meddled,
            meddling,
            task,
        }
    }

    /// From now on, meddles so.
    fn set(&self, meddling: Meddling) {
        *self.meddling.lock().expect("meddling") = meddling;
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A broadcaster whose ring members are the proxies (R of them hold every blob).
fn broadcaster_behind(
    dir: &std::path::Path,
    nodes: &[&Node],
    relays: &[&Relay],
    r: usize,
) -> Broadcaster {
    let mut env = ring_env(&dir.join("meta.db"), nodes, r);
    for (k, v) in env.iter_mut() {
        if k == "BROADCASTER_STORAGE_NODES" {
            *v = relays
                .iter()
                .map(|p| p.addr.to_string())
                .collect::<Vec<_>>()
                .join(";");
        }
        if k == "BROADCASTER_RING_CHUNK_SIZE" {
            *v = CHUNK.to_string();
        }
    }
    start_broadcaster(&env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_sends_its_first_bytes_before_the_node_has_sent_its_last() {
    let dir = scratch_dir("reads-");
    let node = Node::start(&dir.path().join("n0"), 0);
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let relay = Relay::start(&node, Meddling::HoldTail(gate.clone())).await;
    let bc = broadcaster_behind(dir.path(), &[&node], &[&relay], 1);
    let data = gen_bytes(11, CHUNK);
    upload(&bc, "held.bin", &data).await;

    let resp = client()
        .get(bc.url("/files/held.bin"))
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    // The node has sent everything but the blob's last 64 KiB and waits: a read that buffers whole blobs
    // sends nothing until the gate opens.
    let first = tokio::time::timeout(Duration::from_secs(10), body.next()).await;
    gate.add_permits(1000);
    let first = first
        .expect("no byte reached the client while the node held back the end of the blob")
        .expect("a first piece")
        .expect("a first piece without error");
    let mut got = first.to_vec();
    while let Some(piece) = body.next().await {
        got.extend_from_slice(&piece.expect("the rest of the body"));
    }
    assert!(got == data, "the streamed file differs from the upload");
    assert!(
        relay.meddled.load(Ordering::SeqCst) >= 1,
        "the proxy never held back the end of a blob"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_takes_each_window_from_a_replica_that_has_it_intact() {
    let dir = scratch_dir("reads-");
    let nodes: Vec<Node> = (0..2)
        .map(|i| Node::start(&dir.path().join(format!("n{i}")), 0))
        .collect();
    // Both replicas are damaged, in different windows: no replica holds the whole blob intact, yet every
    // window is intact on one of them.
    let a = Relay::start(&nodes[0], Meddling::FlipAt(3 * 65536 + 100)).await;
    let b = Relay::start(&nodes[1], Meddling::FlipAt(9 * 65536 + 7)).await;
    let bc = broadcaster_behind(dir.path(), &[&nodes[0], &nodes[1]], &[&a, &b], 2);
    let data = gen_bytes(12, CHUNK + 5000);
    upload(&bc, "damaged.bin", &data).await;

    let resp = client()
        .get(bc.url("/files/damaged.bin"))
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status(), 200);
    let got = resp.bytes().await.expect("the whole body");
    assert!(got[..] == data[..], "the file read back differs");

    // Ranges inside one window, across the damaged windows, and across the chunk boundary.
    for (from, to) in [
        (3 * 65536 + 50, 3 * 65536 + 150),
        (100_000, 700_000),
        (CHUNK - 10, CHUNK + 10),
    ] {
        let resp = client()
            .get(bc.url("/files/damaged.bin"))
            .header("Range", format!("bytes={from}-{to}"))
            .send()
            .await
            .expect("range GET");
        assert_eq!(resp.status(), 206);
        let got = resp.bytes().await.expect("range body");
        assert!(got[..] == data[from..=to], "bytes {from}-{to} differ");
    }
    assert!(a.meddled.load(Ordering::SeqCst) + b.meddled.load(Ordering::SeqCst) >= 1);
    assert!(metric(&bc, "distributary_ring_read_corrupt_total").await >= Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_read_once_are_served_from_memory_while_the_cache_holds_them() {
    let dir = scratch_dir("reads-");
    let mut node = Node::start(&dir.path().join("n0"), 0);
    let relay = Relay::start(&node, Meddling::FlipAt(u64::MAX)).await;
    let bc = broadcaster_behind(dir.path(), &[&node], &[&relay], 1);
    let data = gen_bytes(13, CHUNK / 2);
    upload(&bc, "hot.bin", &data).await;
    let read = || async {
        let resp = client()
            .get(bc.url("/files/hot.bin"))
            .send()
            .await
            .expect("GET");
        let status = resp.status().as_u16();
        (status, resp.bytes().await.unwrap_or_default())
    };
    let (status, got) = read().await;
    assert_eq!(status, 200);
    assert!(got[..] == data[..]);
    // The only node is gone: every window comes from the cache, checked when it was first read.
    node.proc = None;
    let (status, got) = read().await;
    assert_eq!(status, 200, "a read of cached windows needs no node");
    assert!(
        got[..] == data[..],
        "the cached file differs from the upload"
    );
}

/// Reads `name` whole and in two ranges; the bodies, or how the reads failed.
async fn read_all_ways(
    bc: &Broadcaster,
    name: &str,
    len: usize,
) -> Vec<(String, u16, Result<Vec<u8>, String>)> {
    let mut out = Vec::new();
    for range in [
        None,
        Some((70_000usize, 200_000usize)),
        Some((len - 10, len - 1)),
    ] {
        let mut req = client().get(bc.url(&format!("/files/{name}")));
        if let Some((a, b)) = range {
            req = req.header("Range", format!("bytes={a}-{b}"));
        }
        let what = match range {
            None => "whole".to_owned(),
            Some((a, b)) => format!("bytes {a}-{b}"),
        };
        let resp = req.send().await.expect("GET");
        let status = resp.status().as_u16();
        let body = resp
            .bytes()
            .await
            .map(|b| b.to_vec())
            .map_err(|e| e.to_string());
        out.push((what, status, body));
    }
    out
}

/// The bytes a read of `what` should give.
fn expected<'a>(data: &'a [u8], what: &str) -> &'a [u8] {
    match what.strip_prefix("bytes ") {
        None => data,
        Some(r) => {
            let (a, b) = r.split_once('-').expect("a range");
            let (a, b): (usize, usize) = (a.parse().expect("from"), b.parse().expect("to"));
            &data[a..=b]
        }
    }
}

/// A storage node is a peer, not a trusted disk: whatever one answers (the whole blob to a range request, a
/// wrong or missing length with a window table, a damaged table, a body cut short), a read takes nothing
/// unchecked from it. With an honest replica beside it every read is byte-exact; with every replica
/// answering so, a read fails, and what it sent before failing is still the file's own bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_node_replies_never_reach_a_reader() {
    let modes: [(&str, Meddling); 6] = [
        (
            "a 200 with the whole blob to a range request",
            Meddling::IgnoreRange,
        ),
        ("no X-Blob-Length", Meddling::BlobLength(None)),
        (
            "an X-Blob-Length of 2^60",
            Meddling::BlobLength(Some("1152921504606846976")),
        ),
        (
            "an X-Blob-Length one byte short",
            Meddling::BlobLength(Some("1048575")),
        ),
        ("a damaged window table", Meddling::DamageTable),
        (
            "payloads cut after 100 000 bytes",
            Meddling::CutAfter(100_000),
        ),
    ];
    let data = gen_bytes(14, CHUNK + 70_000);
    for (what, mode) in modes {
        let dir = scratch_dir("reads-");
        let nodes: Vec<Node> = (0..2)
            .map(|i| Node::start(&dir.path().join(format!("n{i}")), 0))
            .collect();
        // One hostile replica, one honest one: every read is exact.
        let hostile = Relay::start(&nodes[0], mode.clone()).await;
        let honest = Relay::start(&nodes[1], Meddling::FlipAt(u64::MAX)).await;
        let bc = broadcaster_behind(dir.path(), &[&nodes[0], &nodes[1]], &[&hostile, &honest], 2);
        upload(&bc, "f.bin", &data).await;
        for (read, status, body) in read_all_ways(&bc, "f.bin", data.len()).await {
            let body = body.unwrap_or_else(|e| panic!("{what}, read {read}: the body failed: {e}"));
            assert!(
                (200..300).contains(&status) && body[..] == *expected(&data, &read),
                "{what}, read {read}: status {status}, {} bytes that differ from the file",
                body.len()
            );
        }
        drop(bc);

        // Both replicas answer so (a fresh broadcaster: nothing cached): no read may pass off other bytes.
        honest.set(mode);
        let bc = broadcaster_behind(dir.path(), &[&nodes[0], &nodes[1]], &[&hostile, &honest], 2);
        for (read, status, body) in read_all_ways(&bc, "f.bin", data.len()).await {
            let want = expected(&data, &read);
            // A read may fail outright, or stop partway; a read that never needed what the proxies change
            // may even succeed. What it did send is always the file's own bytes.
            if let (Ok(b), true) = (body, (200..300).contains(&status)) {
                assert!(
                    want.starts_with(&b),
                    "{what} from every replica, read {read}: {status} with {} bytes that are not the file's",
                    b.len()
                );
            }
        }
        assert!(
            hostile.meddled.load(Ordering::SeqCst) >= 1,
            "{what}: the hostile proxy was never asked"
        );
    }
}
