//! `reader`: reads `READER_*` variables, binds, and serves until SIGTERM.
//! `reader --check-config` only validates the variables: `config ok` and exit 0, or the error and exit 2.

use anyhow::Context;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::alloc::init();
    common::env::handle_args("reader", || reader::Config::from_env().map(drop));
    common::server::init_tracing();
    let config = reader::Config::from_env().context("invalid configuration")?;
    let listener = common::server::bind(config.http_host, config.http_port)
        .await
        .with_context(|| format!("cannot bind {}:{}", config.http_host, config.http_port))?;
    let shutdown = CancellationToken::new();
    common::server::cancel_on_termination(shutdown.clone());
    reader::run(listener, config, shutdown).await?;
    tracing::info!("stopped");
    Ok(())
}
