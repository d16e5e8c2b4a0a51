//! The reader: a broadcast target that stages a streamed upload, commits it durably and serves it back.
//!
//! # Layout
//! - [`config`]: `READER_*` environment variables, validated.
//! - [`error`]: the reader's error type and how each maps to an HTTP status.
//! - [`disk`]: the disk sink: staging directory, pending uploads, commit by rename.
//! - [`routes`]: the HTTP surface (stream protocol, the seed's `POST /upload`, `GET /files/{name}`).
//!
//! [`run`] serves a bound listener until a cancellation token fires; `main.rs` and the tests both call it.

pub mod config;
pub mod disk;
pub mod error;
pub mod routes;

use std::sync::Arc;

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
    let app = routes::app(store, &config);
    common::server::serve(listener, app, shutdown, config.shutdown_grace)
        .await
        .map_err(ReaderError::Io)
}
