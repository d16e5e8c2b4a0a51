//! A stand-in storage ring for the dash sink: one in-memory node speaking the blob API the ring client uses
//! (`PUT`/`GET`/`DELETE /v1/blobs/{id}/{file}`), so tests can see exactly what a transcode published and what it
//! left behind, without starting storage-node processes.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::routing::put;
use axum::Router;
use reader::video::VideoSink;
use ring_client::{Cluster, RingSettings};

#[derive(Debug, Default)]
struct Blobs {
    stored: Mutex<BTreeMap<String, Bytes>>,
    puts: AtomicUsize,
}

/// One fake storage node on loopback; dropped with the test's runtime.
#[derive(Debug)]
pub struct FakeRing {
    pub addr: String,
    blobs: Arc<Blobs>,
}

async fn put_blob(
    State(b): State<Arc<Blobs>>,
    UrlPath((id, file)): UrlPath<(String, String)>,
    body: Bytes,
) -> StatusCode {
    b.puts.fetch_add(1, Ordering::SeqCst);
    b.stored
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(format!("{id}/{file}"), body);
    StatusCode::CREATED
}

async fn get_blob(
    State(b): State<Arc<Blobs>>,
    UrlPath((id, file)): UrlPath<(String, String)>,
) -> Result<Bytes, StatusCode> {
    b.stored
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&format!("{id}/{file}"))
        .cloned()
        .ok_or(StatusCode::NOT_FOUND)
}

async fn delete_blob(
    State(b): State<Arc<Blobs>>,
    UrlPath((id, file)): UrlPath<(String, String)>,
) -> StatusCode {
    b.stored
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&format!("{id}/{file}"));
    StatusCode::NO_CONTENT
}

impl FakeRing {
    pub async fn start() -> Self {
        let blobs = Arc::new(Blobs::default());
        let app = Router::new()
            .route(
                "/v1/blobs/{id}/{file}",
                put(put_blob).get(get_blob).delete(delete_blob),
            )
            .with_state(blobs.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake node");
        let addr = listener.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, blobs }
    }

    /// Keys (`video/file`) held now.
    pub fn keys(&self) -> Vec<String> {
        self.blobs
            .stored
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// Blob writes received so far (including ones deleted since).
    pub fn puts(&self) -> usize {
        self.blobs.puts.load(Ordering::SeqCst)
    }

    /// A ring client whose layout (in a fresh SQLite store under `dir`) is this one node, R = 1.
    pub async fn cluster(&self, dir: &Path) -> Arc<Cluster> {
        let spec = meta::parse_spec(&format!("sqlite:{}", dir.join("meta.db").display()))
            .expect("meta spec");
        let store = meta::open(&spec).await.expect("open meta");
        let settings = RingSettings {
            initial_nodes: vec![self.addr.clone()],
            replication: 1,
            vnodes: 16,
            chunk_size: 4 << 20,
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(30),
            secret: None,
            lease_ttl: Duration::from_secs(60),
        };
        Cluster::open(store, &settings).await.expect("open ring")
    }
}

/// A fresh upload id (32 lowercase hex digits).
pub fn upload_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Stages `data` as a video upload named `name` on `sink`.
pub async fn stage(
    sink: &Arc<VideoSink>,
    name: &str,
    data: Vec<u8>,
) -> Result<common::protocol::StagedReport, reader::ReaderError> {
    let body = futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from(data))]);
    sink.stage(
        &upload_id(),
        name,
        common::protocol::VideoMode::Required,
        body,
    )
    .await
}

/// Stages `data` as a video upload named `name` on `sink` and commits it (the transcode starts): the video id.
pub async fn commit(
    sink: &Arc<VideoSink>,
    name: &str,
    data: Vec<u8>,
) -> Result<String, reader::ReaderError> {
    let id = upload_id();
    let body = futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from(data))]);
    let report = sink
        .stage(&id, name, common::protocol::VideoMode::Required, body)
        .await?;
    let video = report.video.expect("a staged video reports its probe").id;
    let committed = sink.commit(&id).await?;
    assert_eq!(committed.map(|v| v.id), Some(video.clone()));
    Ok(video)
}

/// Video `id`'s record once its transcode ended (`ready` or `failed`), waiting up to `within`.
pub async fn finished(sink: &Arc<VideoSink>, id: &str, within: Duration) -> meta::VideoRecord {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let record = sink.cluster().meta().get_video(id).await.expect("meta");
        match record {
            Some(r) if r.status != meta::VideoRecord::PROCESSING => return r,
            r => assert!(
                tokio::time::Instant::now() < deadline,
                "video {id} still not finished after {within:?}: {r:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stages, commits and waits for the transcode of `data`: the video's last record.
pub async fn transcode_upload(
    sink: &Arc<VideoSink>,
    name: &str,
    data: Vec<u8>,
) -> Result<meta::VideoRecord, reader::ReaderError> {
    let id = commit(sink, name, data).await?;
    Ok(finished(sink, &id, Duration::from_secs(180)).await)
}

/// The status and the `error` text a client would receive for `e`.
pub async fn client_view(e: reader::ReaderError) -> (u16, String) {
    use axum::response::IntoResponse;
    use http_body_util::BodyExt;
    let resp = e.into_response();
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .expect("error body")
        .to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).expect("JSON error body");
    (
        status,
        json["error"].as_str().expect("error field").to_owned(),
    )
}
