//! Consistent hashing with virtual nodes and replication: where each blob of the storage ring lives.
//!
//! A [`Layout`] is the versioned, serialisable membership (kept in the metadata store); a [`Ring`] is the
//! lookup structure built from it. Each node is placed on a 64-bit circle at `vnodes` pseudo-random points;
//! a key is owned by the first `replication` *distinct* nodes met walking clockwise from the key's own point,
//! the first of them being the primary.
//!
//! Why virtual nodes: with one point per node, three nodes split the circle very unevenly (one point per node
//! gave one node 60% of the keys and another 5% in the system this replaces). With a few hundred points per
//! node each node's share is close to `1/N`, and a joining node takes a little from every other node instead
//! of a large arc from one.
//!
//! Hashes are the first 8 bytes (big-endian) of SHA-256: of `"{node}#{i}"` for the `i`-th point of a node,
//! of the key's bytes for a key. They are fixed by this format, so every process, version and platform
//! computes the same placement.
//!
//! # Layout
//! - [`layout`]: [`Layout`] (membership, its version, replication factor) and node-address validation.
//! - [`ring`]: [`Ring`] (sorted points, owner lookup) and [`moves`] (what migration must copy and delete).

pub mod layout;
pub mod ring;

pub use layout::{validate_node, Layout, RingError, DEFAULT_REPLICATION, DEFAULT_VNODES};
pub use ring::{key_hash, moves, point_hash, Ring};
