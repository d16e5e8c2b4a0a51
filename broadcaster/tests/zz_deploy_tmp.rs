#![allow(clippy::unwrap_used, dead_code)]
#[path = "it/deploy.rs"]
mod deploy;
#[path = "it/harness.rs"]
mod harness;
