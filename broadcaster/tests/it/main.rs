//! End-to-end tests: real `broadcaster` and `reader` processes on loopback.
//!
//! The binaries are built once per test process (`cargo build --bins -p broadcaster -p reader`)
//! and started with port 0; see `harness.rs`. Contract: README.md.

#![allow(clippy::unwrap_used)]

mod data;
mod deploy;
mod etcd;
mod failures;
mod fanout;
mod ha;
mod harness;
mod integrity;
mod lifecycle;
mod metrics;
mod reader;
mod reads;
mod resumable;
mod ring;
mod security;
mod tls;
mod validation;
mod verify;
mod video;
mod web;
mod web_resumable;
