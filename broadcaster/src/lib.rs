//! The broadcaster: a gateway that streams one upload to many targets at once, in constant memory, and
//! commits it on all of them or none.
//!
//! # Layout
//! - [`config`]: `BROADCASTER_*` environment variables, validated.
//! - [`target`]: targets from `BROADCASTER_HOST_LIST` and the stream-protocol URLs built from them.
//! - [`fanout`]: the engine: bounded per-target queues of shared chunks, stall detection, two-phase commit.
//! - [`summary`]: the JSON summary each upload answers with.
//! - [`routes`]: the HTTP surface.
//! - [`error`]: requests refused at the edge.
//! - [`ring`]: the storage ring: layout in the metadata store, placement, reads with fallback, migration.
//! - [`admin`]: ring membership, repair, sweep and token API used by `storage-node admin`.
//! - [`auth`]: tokens, scopes, the sign-in cookie, CSRF and Host checks.
//! - [`housekeeping`]: the background sweep and repair workers.
//! - [`web`]: the web site: `GET /`, `GET /videos/{id}`, `/assets/*`.
//! - [`video`]: `POST /upload`: a video fanned out, transcoded by a dash reader, listed once playable.
//! - [`content`]: `GET /content/{id}/{file}`, ring files served with media types, ranges and caching.
//!
//! [`run`] serves a bound listener until a cancellation token fires; `main.rs` and the tests both call it.

pub mod admin;
pub mod auth;
pub mod config;
pub mod content;
pub mod error;
pub mod fanout;
pub mod housekeeping;
pub mod resumable;
pub mod routes;

/// The storage ring client (its own crate so that readers can place blobs too).
pub use ring_client as ring;
pub mod summary;
pub mod target;
pub mod video;
pub mod web;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use error::BroadcastError;

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("server failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("metadata store: {0}")]
    Meta(#[from] meta::MetaError),
    #[error("storage ring: {0}")]
    Ring(#[from] ring::RingError),
}

/// Serves until `shutdown` is cancelled; uploads in flight get the configured grace period to finish.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let grace = config.shutdown_grace;
    tracing::info!(
        targets = ?config.targets.iter().map(|t| t.label.as_str()).collect::<Vec<_>>(),
        min_success = config.min_success,
        buffer_size = config.buffer_size,
        queue_depth = config.queue_depth,
        "broadcaster configured"
    );
    if let Err(e) = web::check_assets(&config.web_dir) {
        tracing::warn!("{e}");
    }
    let store = meta::open(&config.metadata).await?;
    let settings = ring::RingSettings {
        initial_nodes: config.storage_nodes.clone(),
        replication: config.replication,
        vnodes: config.vnodes,
        chunk_size: config.ring_chunk_size,
        connect_timeout: config.connect_timeout,
        request_timeout: config.node_timeout,
        secret: config.cluster_secret.clone(),
        lease_ttl: config.lease_ttl,
    };
    let cluster = ring::Cluster::open(store, &settings).await?;
    cluster.set_window_cache_bytes(config.read_cache_bytes);
    cluster.spawn_refresh(shutdown.clone());
    let workers = tokio_util::task::TaskTracker::new();
    housekeeping::spawn(cluster.clone(), &config, shutdown.clone(), &workers);
    workers.close();
    let engine = fanout::Engine::new(Arc::new(config), cluster)?;
    resumable::spawn_expiry(engine.clone(), shutdown.clone());
    let served = common::server::serve(
        listener,
        routes::app(engine.clone()),
        common::server::ServerOptions {
            // `/metrics` is an admin route here, behind the same authentication as the rest.
            app_serves_metrics: true,
            ..engine.config().server.clone()
        },
        shutdown,
        grace,
    )
    .await;
    workers.wait().await;
    served?;
    Ok(())
}
