//! The one integration-test binary of `meta` (one link for all suites).
//!
//! - `etcd_cluster`: starts and stops real 3-member etcd clusters on loopback.
//! - `behaviour`: the same behaviour checks run against SQLite and etcd.
//! - `etcd_faults`: member loss, quorum loss and recovery.

mod behaviour;
mod etcd_cluster;
mod etcd_faults;
