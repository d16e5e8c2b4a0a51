//! The reader: a broadcast target that stages a streamed upload, commits it durably and serves it back.
//!
//! # Layout
//! - [`config`]: `READER_*` environment variables, validated.
//! - [`error`]: the reader's error type and how each maps to an HTTP status.
//! - [`disk`]: the disk sink: staging directory, pending uploads, commit by rename.
//! - [`dash`]: probing, the ABR ladder, ffmpeg to MPEG-DASH, posters.
//! - [`video`]: the dash sink: staged uploads transcoded onto the storage ring.
//! - [`s3`]: the S3 sink: one multipart upload per stream, completed on commit.
//! - [`routes`]: the HTTP surface (stream protocol, the seed's `POST /upload`, `GET /files/{name}`).
//!
//! [`run`] serves a bound listener until a cancellation token fires; `main.rs` and the tests both call it.

pub mod config;
pub mod dash;
pub mod disk;
pub mod error;
pub mod routes;
pub mod s3;
pub mod video;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{Config, Sink};
pub use error::ReaderError;

/// Prepares the data directory (removing staging left by a crash) and serves until `shutdown` is cancelled.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), ReaderError> {
    let store = Arc::new(disk::DiskStore::open(&config)?);
    store.clone().spawn_sweeper(shutdown.clone());
    let video = match config.sink {
        Sink::Disk | Sink::S3 => None,
        Sink::Dash => Some(open_video_sink(&config, &shutdown).await?),
    };
    let s3 = match &config.s3 {
        Some(cfg) => {
            // Checks the bucket and credentials: a reader that cannot store anything does not start.
            let sink = Arc::new(
                s3::S3Sink::connect(cfg, config.max_upload_bytes, config.staging_ttl).await?,
            );
            sink.clone().spawn_sweeper(shutdown.clone());
            Some(sink)
        }
        None => None,
    };
    let spool = Arc::new(common::spool::Spool::open(
        config.data_dir.join("spool"),
        config.buffer_size,
        config.max_upload_bytes,
    )?);
    spool
        .clone()
        .spawn_sweeper(Duration::from_secs(10), shutdown.clone());
    let mut app = routes::app(routes::AppState {
        disk: store,
        video,
        s3: s3.clone(),
        spool,
    });
    if let Some(secret) = config.cluster_secret.clone() {
        // The stream protocol, the seed's `POST /upload` and `GET /files` all answer 401 without it.
        app = common::cluster::ClusterGate::new(secret).protect(app);
    }
    let served = common::server::serve(
        listener,
        app,
        config.server.clone(),
        shutdown,
        config.shutdown_grace,
    )
    .await
    .map_err(ReaderError::Io);
    if let Some(s3) = s3 {
        // Nothing uncommitted stays in the bucket: staged uploads are aborted.
        s3.shutdown().await;
    }
    served
}

async fn open_video_sink(
    config: &Config,
    shutdown: &CancellationToken,
) -> Result<Arc<video::VideoSink>, ReaderError> {
    let meta = meta::open(&config.metadata)
        .await
        .map_err(|e| ReaderError::Ring(format!("metadata store: {e}")))?;
    let settings = ring_client::RingSettings {
        // A dash reader never creates a layout (no initial nodes), so these only shape an unused default.
        initial_nodes: Vec::new(),
        replication: 2,
        vnodes: 256,
        chunk_size: 4 << 20,
        connect_timeout: Duration::from_secs(3),
        request_timeout: Duration::from_secs(30),
        // Signs the reader's blob writes; it never checks a node's identity. Its leases cover the videos it
        // transcodes after their upload committed.
        secret: config.cluster_secret.clone(),
        lease_ttl: config.lease_ttl,
    };
    let cluster = ring_client::Cluster::open(meta, &settings)
        .await
        .map_err(|e| ReaderError::Ring(e.to_string()))?;
    cluster.spawn_refresh(shutdown.clone());
    let options = dash::TranscodeOptions {
        segment_secs: 4,
        preset: config.ffmpeg_preset.clone(),
        threads: None,
    };
    let sink = Arc::new(
        video::VideoSink::new(
            config.data_dir.join("staging"),
            cluster,
            config.transcode_concurrency,
            options,
            config.buffer_size,
        )
        .with_limits(video::SinkLimits::from_config(config))
        .with_shutdown(shutdown.clone()),
    );
    let resumed = sink.resume()?;
    if resumed > 0 {
        tracing::info!(resumed, "resuming committed transcodes");
    }
    let (me, ttl, stop) = (sink.clone(), config.staging_ttl, shutdown.clone());
    tokio::spawn(async move {
        let period = (ttl / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => me.sweep(ttl).await,
            }
        }
    });
    Ok(sink)
}
