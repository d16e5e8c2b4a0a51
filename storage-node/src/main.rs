//! `storage-node`: with no arguments, reads `STORAGE_NODE_*` variables, binds and serves until SIGTERM;
//! `storage-node admin ...` administers the ring through a broadcaster; `storage-node --check-config` only
//! validates the variables (`config ok` and exit 0, or the error and exit 2).

use std::process::ExitCode;

use anyhow::Context;
use clap::{Arg, ArgAction, CommandFactory, FromArgMatches};
use storage_node::admin_cli::{self, Cli, Command};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    common::alloc::init();
    let matches = Cli::command()
        .args_conflicts_with_subcommands(true)
        .arg(
            Arg::new("check-config")
                .long("check-config")
                .action(ArgAction::SetTrue)
                .exclusive(true)
                .help("Validate the STORAGE_NODE_* variables and exit: 0 if valid, 2 if not"),
        )
        .get_matches();
    if matches.get_flag("check-config") {
        let result = storage_node::Config::from_env().map(drop);
        return Ok(ExitCode::from(common::env::check_exit_code(result) as u8));
    }
    match Cli::from_arg_matches(&matches)?.command {
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
