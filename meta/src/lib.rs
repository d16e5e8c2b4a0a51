//! Metadata of the broadcaster: the storage ring's layout, videos, raw uploads stored on the
//! ring, and API tokens (hashed), behind one async trait with two real backends.
//!
//! - **SQLite** (`BROADCASTER_METADATA=sqlite:PATH`, the default): embedded, one file in WAL mode
//!   with `synchronous=FULL`; for a single broadcaster.
//! - **etcd** (`BROADCASTER_METADATA=etcd:http://h:p,http://h:p,...`): a replicated cluster
//!   (etcd 3.4+), so several broadcasters can share metadata and survive the loss of a minority
//!   of members. Without a quorum every call fails with [`MetaError::Unavailable`] within the
//!   request timeout rather than hanging.
//!
//! Both give the same guarantees: create-if-absent is atomic ([`MetaError::AlreadyExists`],
//! never a silent overwrite), and the ring layout is replaced only by compare-and-swap on its
//! version ([`MetaError::Conflict`] for the loser of a race). Named locks
//! ([`MetaStore::try_lock`]) are taken by compare-and-swap too, so of several broadcasters racing
//! for one exactly one wins. A token is unique by id and by hash at once
//! ([`MetaStore::create_token`]). Records are JSON in both, so fields can be added without a schema
//! migration.
//!
//! ```no_run
//! # async fn demo() -> Result<(), meta::MetaError> {
//! let spec = meta::parse_spec("sqlite:./data/meta.db")?;
//! let store = meta::open(&spec).await?;
//! let layout = store.get_layout().await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - `spec.rs`: parsing and validating `BROADCASTER_METADATA` into [`MetaSpec`].
//! - `record.rs`: the stored records ([`RingLayout`] with its [`Membership`], [`VideoRecord`],
//!   [`FileRecord`], [`UploadLease`], [`TokenRecord`]) and the JSON of a named lock
//!   (`{holder, expires_unix_ms}`).
//! - `store.rs`: the [`MetaStore`] trait.
//! - `sqlite.rs`: [`SqliteStore`]; blocking calls on tokio's blocking pool, one table per record
//!   kind (`leases`, `locks` and `tokens` added without a schema version bump), locks taken inside
//!   an `IMMEDIATE` transaction; `tokens` keeps the hash in a `UNIQUE` column beside the JSON.
//! - `etcd.rs`: [`EtcdStore`]; transactions for atomicity, timeouts on every request; one key per
//!   record under [`ETCD_PREFIX`] (`layout`, `videos/`, `files/`, `leases/`, `locks/`, `tokens/`),
//!   locks taken by a transaction on the key's revision; each token also has
//!   `token-hashes/{hash}` → its id, created and deleted with the record in one transaction.
//! - `error.rs`: [`MetaError`].

mod error;
mod etcd;
mod record;
mod spec;
mod sqlite;
mod store;

use std::sync::Arc;

pub use error::MetaError;
pub use etcd::{
    EtcdOptions, EtcdStore, DEFAULT_ETCD_ATTEMPT_TIMEOUT, DEFAULT_ETCD_CONNECT_TIMEOUT,
    DEFAULT_ETCD_REQUEST_TIMEOUT, ETCD_PREFIX,
};
pub use record::{
    FileRecord, Membership, ResumableUpload, RingLayout, TokenRecord, UploadLease, VideoRecord,
};
pub use spec::{parse_spec, MetaSpec, DEFAULT_ETCD_PORT};
pub use sqlite::{SqliteStore, SQLITE_SCHEMA_VERSION};
pub use store::MetaStore;

/// The value of `BROADCASTER_METADATA` when it is not set.
pub const DEFAULT_METADATA: &str = "sqlite:./data/meta.db";

/// Opens the store `spec` names with default options.
///
/// SQLite: creates the file and its directory if needed. etcd: connects and checks that a
/// quorum answers, failing with [`MetaError::Unavailable`] within about
/// [`DEFAULT_ETCD_CONNECT_TIMEOUT`] + [`DEFAULT_ETCD_REQUEST_TIMEOUT`] if none does.
pub async fn open(spec: &MetaSpec) -> Result<Arc<dyn MetaStore>, MetaError> {
    match spec {
        MetaSpec::Sqlite { path } => Ok(Arc::new(SqliteStore::open(path).await?)),
        MetaSpec::Etcd { endpoints } => Ok(Arc::new(
            EtcdStore::connect(endpoints, EtcdOptions::default()).await?,
        )),
    }
}
