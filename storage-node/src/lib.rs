//! The storage node: a durable blob store on one machine, one member of the storage ring.
//!
//! Blobs are keyed `{id}/{file}` (a video id and one of its DASH files, or `raw/{name}` for an upload that
//! arrived through the broadcaster's stream protocol). Each is written to staging, fsynced, and renamed into
//! place with its SHA-256 in the same file; every read re-hashes the payload first, so a damaged copy is
//! reported (500 + `X-Blob-Corrupt: 1`) instead of served, and the caller reads a replica. Placement,
//! replication and migration are decided elsewhere (the broadcaster, with the `hashring` crate): a node only
//! stores, serves, lists and deletes what it is told.
//!
//! # Layout
//! - [`config`]: `STORAGE_NODE_*` environment variables, validated.
//! - [`error`]: the service's error type and its HTTP statuses; the admin CLI's errors.
//! - [`store`]: the blob store: on-disk format ([`store::format`]), staging writer and publishing
//!   ([`store::writer`]), put / verified open / delete / list, staged stream-protocol uploads.
//! - [`serve`]: answering `GET`/`HEAD` for a verified blob (Range, ETag).
//! - [`identity`]: the node's persistent id and the proof of it a broadcaster checks before adding it.
//! - [`routes`]: the HTTP surface (`/v1/identity`, `/v1/blobs`, `/v1/uploads`, `/healthz`).
//! - [`admin_cli`]: the command line, including `storage-node admin list|add|remove`.
//!
//! On disk, under `STORAGE_NODE_DATA_DIR`: `node-id` (the identity), `blobs/{id}/{file}` (published) and
//! `staging/` (emptied at start).
//!
//! [`run`] serves a bound listener until a cancellation token fires; `main.rs` and the tests both call it.

pub mod admin_cli;
pub mod config;
pub mod error;
pub mod identity;
pub mod routes;
pub mod serve;
pub mod store;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use error::{AdminError, StoreError};
pub use store::{BlobInfo, BlobKey, BlobStore};

/// Prepares the data directory (removing staging left by a crash) and serves until `shutdown` is cancelled.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), StoreError> {
    let store = Arc::new(BlobStore::open(&config)?);
    let identity = Arc::new(identity::Identity::load_or_create(
        &config.data_dir,
        config.cluster_secret.clone(),
    )?);
    tracing::info!(node_id = %identity.id(), "node identity");
    store.clone().spawn_sweeper(shutdown.clone());
    let spool = common::spool::Spool::open(
        config.data_dir.join("spool"),
        config.buffer_size,
        config.max_blob_bytes,
    )?;
    let mut app = routes::app(store, identity, spool);
    if let Some(secret) = config.cluster_secret.clone() {
        app = common::cluster::ClusterGate::new(secret).protect(app);
    }
    common::server::serve(
        listener,
        app,
        config.server.clone(),
        shutdown,
        config.shutdown_grace,
    )
    .await
    .map_err(StoreError::Io)
}
