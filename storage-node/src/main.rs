//! `storage-node`: with no arguments, reads `STORAGE_NODE_*` variables, binds and serves until SIGTERM;
//! `storage-node admin ...` administers the ring through a broadcaster.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use storage_node::admin_cli::{self, Cli, Command};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    match Cli::parse().command {
        None => serve().await,
        Some(Command::Admin(cmd)) => match admin_cli::run(&cmd).await {
            Ok(out) => {
                print!("{out}");
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("Error: {e}");
                Ok(ExitCode::FAILURE)
            }
        },
    }
}

async fn serve() -> anyhow::Result<ExitCode> {
    common::server::init_tracing();
    let config = storage_node::Config::from_env().context("invalid configuration")?;
    let listener = common::server::bind(config.http_host, config.http_port)
        .await
        .with_context(|| format!("cannot bind {}:{}", config.http_host, config.http_port))?;
    let shutdown = CancellationToken::new();
    common::server::cancel_on_termination(shutdown.clone());
    storage_node::run(listener, config, shutdown).await?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}
