//! Process plumbing shared by every binary: tracing, binding, graceful shutdown.

use std::future::{Future, IntoFuture};
use std::io::IsTerminal;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Sets up `tracing` to stdout, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal())
        .try_init();
}

/// Binds `host:port`; port 0 picks a free port.
pub async fn bind(host: IpAddr, port: u16) -> std::io::Result<TcpListener> {
    TcpListener::bind(SocketAddr::new(host, port)).await
}

/// Resolves when SIGTERM or Ctrl-C arrives.
pub async fn termination() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Cancels a token when the process is asked to stop, so every part of the server sees one signal.
pub fn cancel_on_termination(token: CancellationToken) {
    tokio::spawn(async move {
        termination().await;
        tracing::info!("termination requested; draining");
        token.cancel();
    });
}

/// Serves `app` on `listener` until `shutdown` is cancelled, then lets in-flight requests finish for at most
/// `grace`. Logs `listening on ADDR` once the socket accepts connections.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
    grace: Duration,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    let _ = crate::metrics::handle();
    let app = app.route("/metrics", axum::routing::get(crate::metrics::render));
    tracing::info!("listening on {addr}");
    let signal = shutdown.clone();
    // axum 0.8 leaves Nagle on; small responses (segments, reports) would then wait ~40 ms for delayed ACKs.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let server = axum::serve(listener, app.into_make_service())
        .with_graceful_shutdown(async move { signal.cancelled().await })
        .into_future();
    run_with_grace(server, shutdown, grace).await
}

async fn run_with_grace<F>(
    server: F,
    shutdown: CancellationToken,
    grace: Duration,
) -> std::io::Result<()>
where
    F: Future<Output = std::io::Result<()>>,
{
    tokio::pin!(server);
    tokio::select! {
        r = &mut server => r,
        _ = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(?grace, "grace period over; stopping with requests still in flight");
            Ok(())
        }
    }
}
