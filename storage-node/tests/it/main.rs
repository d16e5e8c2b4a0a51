//! End-to-end tests of the `storage-node` binary: real processes on free loopback ports, real files.
#![allow(clippy::unwrap_used)]

mod blobs;
mod cli;
mod harness;
mod integrity;
mod keys;
mod lifecycle;
mod tls;
mod uploads;
