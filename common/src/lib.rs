//! Pieces shared by the Distributary services.
//!
//! # Layout
//! - [`name`]: validation of user-chosen names (files, videos) at every edge.
//! - [`cluster`]: the cluster secret and the proofs made with it (node identity), never the secret itself.
//! - [`digest`]: SHA-256 while streaming, and client digest headers (RFC 9530 `Content-Digest`, `X-Content-SHA256`).
//! - [`guard`]: limits on request bodies: an idle timeout, and a cap on multipart part headers.
//! - [`durable`]: staging files written on a blocking thread, fsync + rename on commit, delete-on-drop.
//! - [`serve`]: serving a file with `Range`, `ETag`, `HEAD`.
//! - [`protocol`]: the broadcaster ↔ target stream protocol (paths, upload ids, staged reports).
//! - [`metrics`]: the Prometheus recorder and the `/metrics` handler.
//! - [`env`]: turning raw environment strings into validated values with errors that name the variable.
//! - [`server`]: tracing setup, binding, the listener (TLS, HTTP/2, connection limits), the `listening on`
//!   line, graceful shutdown on SIGTERM / Ctrl-C.
//! - [`tls`]: server certificates reloaded when their files change; the CA bundle clients verify peers with.
//! - [`limits`]: header and idle timeouts, the connection cap, HTTP/2 limits.

pub mod alloc;
pub mod blob_digest;
pub mod cluster;
pub mod digest;
pub mod durable;
pub mod env;
pub mod guard;
pub mod limits;
pub mod metrics;
pub mod midstate;
pub mod name;
pub mod participant;
pub mod protocol;
pub mod serve;
pub mod server;
pub mod spool;
pub mod tls;
