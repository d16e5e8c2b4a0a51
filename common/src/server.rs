//! Process plumbing shared by every binary: tracing, binding, the listener, graceful shutdown.
//!
//! The listener ([`serve`]) runs hyper directly so that it can hold connections to account:
//! - HTTPS when the service has a certificate ([`crate::tls`]): HTTP/2 or HTTP/1.1 by ALPN, the certificate
//!   reloaded when its files change. Without one, plain HTTP/1.1, and HTTP/2 with prior knowledge.
//! - A connection must deliver a complete request head within the header timeout of opening (its TLS
//!   handshake included), and within the header timeout of the first byte of each later request; an idle
//!   connection is closed after the keep-alive timeout. Half-sent headers cannot hold a socket for longer.
//! - At most `max_connections` are open: beyond, the oldest connection with no request in flight makes room,
//!   and when every one has a request in flight the new one is refused at once, so clients cannot exhaust the
//!   process's file descriptors.
//! - HTTP/2: a cap on concurrent streams and on the size of a request head, and pings to notice dead peers.
//!
//! Every request carries [`axum::extract::ConnectInfo`]`<SocketAddr>` (the peer) and a [`Scheme`] extension.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::io::IsTerminal;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use bytes::{Bytes, BytesMut};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::env::EnvError;
use crate::limits::{LimitVars, Limits};
use crate::tls::ServerTls;

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

// -------------------------------------------------------------------------------------------------------------
// Options

/// How a service's listener serves: TLS or not, and its limits.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// Certificate and key: the listener serves HTTPS only.
    pub tls: Option<ServerTls>,
    /// Timeouts and caps.
    pub limits: Limits,
    /// The app routes `/metrics` itself (behind its own authentication); otherwise [`serve`] adds it.
    pub app_serves_metrics: bool,
}

/// Raw values of a listener's variables (`{PREFIX}TLS_CERT_FILE`, ...), as a service's config read them.
#[derive(Debug, Default, Clone, Copy)]
pub struct ServerVars<'a> {
    /// `{PREFIX}TLS_CERT_FILE`
    pub tls_cert_file: Option<&'a str>,
    /// `{PREFIX}TLS_KEY_FILE`
    pub tls_key_file: Option<&'a str>,
    /// `{PREFIX}HEADER_TIMEOUT_SECS`
    pub header_timeout_secs: Option<&'a str>,
    /// `{PREFIX}KEEP_ALIVE_SECS`
    pub keep_alive_secs: Option<&'a str>,
    /// `{PREFIX}MAX_CONNECTIONS`
    pub max_connections: Option<&'a str>,
    /// `{PREFIX}H2_MAX_STREAMS`
    pub h2_max_streams: Option<&'a str>,
}

impl ServerOptions {
    /// Validates the listener variables of the service whose variables start with `prefix`
    /// (`BROADCASTER_`, `READER_`, `STORAGE_NODE_`); a certificate pair is loaded and checked here, so a bad
    /// one stops the process at start. Errors name the variable.
    pub fn parse(prefix: &str, vars: ServerVars<'_>) -> Result<Self, EnvError> {
        Ok(Self {
            tls: ServerTls::parse(prefix, vars.tls_cert_file, vars.tls_key_file)?,
            limits: Limits::parse(
                prefix,
                LimitVars {
                    header_timeout_secs: vars.header_timeout_secs,
                    keep_alive_secs: vars.keep_alive_secs,
                    max_connections: vars.max_connections,
                    h2_max_streams: vars.h2_max_streams,
                },
            )?,
            app_serves_metrics: false,
        })
    }
}

/// How the request reached the server; a request extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTP over TLS.
    Https,
}

// -------------------------------------------------------------------------------------------------------------
// Serving

/// Serves `app` on `listener` until `shutdown` is cancelled, then lets in-flight requests finish for at most
/// `grace`. Logs `listening on ADDR` once the socket accepts connections.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    options: ServerOptions,
    shutdown: CancellationToken,
    grace: Duration,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    let _ = crate::metrics::handle();
    let app = if options.app_serves_metrics {
        app
    } else {
        app.route("/metrics", axum::routing::get(crate::metrics::render))
    };
    let tls = match &options.tls {
        Some(t) => {
            let (config, resolver) = t.server_config().map_err(std::io::Error::other)?;
            tokio::spawn(resolver.watch(shutdown.clone()));
            tracing::info!(
                cert = %t.cert_file.display(),
                key = %t.key_file.display(),
                "TLS on: HTTPS only, HTTP/2 and HTTP/1.1 by ALPN; the certificate is reloaded when its files change"
            );
            Some(tokio_rustls::TlsAcceptor::from(config))
        }
        None => None,
    };
    let limits = options.limits;
    tracing::info!(
        header_timeout = ?limits.header_timeout,
        keep_alive = ?limits.keep_alive,
        max_connections = limits.max_connections,
        h2_max_streams = limits.h2_max_streams,
        "connection limits"
    );
    tracing::info!("listening on {addr}");
    let ctx = Arc::new(Ctx {
        app,
        tls,
        limits,
        auto: http_builder(&limits),
        h1: http_builder(&limits).http1_only(),
        h2: http_builder(&limits).http2_only(),
        registry: Registry::new(limits.max_connections),
        sockets: AtomicUsize::new(0),
        closed: Notify::new(),
        shutdown: shutdown.clone(),
    });
    run_with_grace(accept_loop(listener, ctx), shutdown, grace).await
}

struct Ctx {
    app: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: Limits,
    /// Plain listener: HTTP/1.1, or HTTP/2 with prior knowledge.
    auto: auto::Builder<TokioExecutor>,
    /// TLS, ALPN `http/1.1` (or none).
    h1: auto::Builder<TokioExecutor>,
    /// TLS, ALPN `h2`.
    h2: auto::Builder<TokioExecutor>,
    registry: Registry,
    /// Accepted sockets not yet closed: the registered connections plus those evicted but not yet gone.
    sockets: AtomicUsize,
    /// Woken when a connection's socket is closed.
    closed: Notify,
    shutdown: CancellationToken,
}

/// Sockets beyond the connection cap that may be open at once while evicted connections are closing: the
/// accept loop waits for them instead of running the process out of file descriptors.
const EVICTION_SLACK: usize = 8;

fn http_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        // The connection watchdog enforces the header timeout: hyper's own timer would also close idle
        // keep-alive connections at the header timeout, leaving no separate keep-alive setting.
        .header_read_timeout(None)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_streams)
        .max_header_list_size(crate::limits::H2_MAX_HEADER_LIST_BYTES)
        .keep_alive_interval(crate::limits::H2_KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(crate::limits::H2_KEEP_ALIVE_INTERVAL);
    b
}

/// The answer to a connection over the cap when none can be closed to make room (plain HTTP only).
const OVER_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nConnection: close\r\n\
Content-Type: text/plain; charset=utf-8\r\nContent-Length: 39\r\n\r\ntoo many open connections; retry later\n";

async fn accept_loop(listener: TcpListener, ctx: Arc<Ctx>) -> std::io::Result<()> {
    let tasks = TaskTracker::new();
    let mut last_warning: Option<Instant> = None;
    let socket_limit = ctx.limits.max_connections.saturating_add(EVICTION_SLACK);
    'accept: loop {
        // Evicted connections close within moments; never accept faster than they do.
        while ctx.sockets.load(Ordering::Acquire) >= socket_limit {
            let closed = ctx.closed.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            if ctx.sockets.load(Ordering::Acquire) < socket_limit {
                break;
            }
            tokio::select! {
                _ = ctx.shutdown.cancelled() => break 'accept,
                _ = closed => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
        let accepted = tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        let (tcp, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                use std::io::ErrorKind::*;
                if matches!(
                    e.kind(),
                    ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted
                ) {
                    continue;
                }
                // Out of file descriptors (EMFILE/ENFILE; other parts of the process hold many) or memory:
                // close the oldest idle connection to make room, and retry shortly instead of spinning.
                let evicted = ctx.registry.evict_oldest_idle();
                if !matches!(last_warning, Some(t) if t.elapsed() < Duration::from_secs(10)) {
                    tracing::warn!(
                        "accept failed: {e}; {}retrying",
                        if evicted {
                            "closed the oldest idle connection; "
                        } else {
                            ""
                        }
                    );
                    last_warning = Some(Instant::now());
                }
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(if evicted { 5 } else { 50 })) => continue,
                }
            }
        };
        let _ = tcp.set_nodelay(true);
        match ctx.registry.admit() {
            Some(conn) => {
                ctx.sockets.fetch_add(1, Ordering::AcqRel);
                let registered = Registered {
                    ctx: ctx.clone(),
                    id: conn.id,
                };
                tasks.spawn(connection(registered, tcp, peer, conn));
            }
            None => {
                metrics::counter!("distributary_http_connections_closed_total", "reason" => "refused")
                    .increment(1);
                if ctx.tls.is_none() {
                    // A fresh socket's send buffer is empty: this never blocks. Closed right after either way.
                    let _ = tcp.try_write(OVER_CAPACITY);
                }
                drop(tcp);
            }
        }
    }
    drop(listener);
    tasks.close();
    tasks.wait().await;
    Ok(())
}

/// Serves one accepted connection until it ends, times out, is evicted, or drains on shutdown.
async fn connection(registered: Registered, tcp: TcpStream, peer: SocketAddr, conn: Arc<Conn>) {
    // Dropped last: the socket is closed by then.
    let ctx = registered.ctx.clone();
    let _registered = registered;
    let io = Tracked {
        inner: tcp,
        conn: conn.clone(),
    };
    let Some(acceptor) = ctx.tls.clone() else {
        return serve_http(&ctx, io, peer, conn, Scheme::Http, Proto::Auto).await;
    };
    let deadline = conn.opened + ctx.limits.header_timeout;
    let stream = tokio::select! {
        r = tokio::time::timeout_at(deadline, acceptor.accept(ReadAhead::new(io))) => match r {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(%peer, "TLS handshake failed: {e}");
                return;
            }
            Err(_) => {
                metrics::counter!("distributary_http_connections_closed_total", "reason" => "header_timeout")
                    .increment(1);
                return;
            }
        },
        _ = conn.evict.cancelled() => return,
        _ = ctx.shutdown.cancelled() => return,
    };
    let proto = match stream.get_ref().1.alpn_protocol() {
        Some(b"h2") => Proto::H2,
        _ => Proto::H1,
    };
    serve_http(&ctx, stream, peer, conn, Scheme::Https, proto).await;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Auto,
    H1,
    H2,
}

async fn serve_http<I>(
    ctx: &Ctx,
    io: I,
    peer: SocketAddr,
    conn: Arc<Conn>,
    scheme: Scheme,
    proto: Proto,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if proto == Proto::H2 {
        conn.h2.store(true, Ordering::Relaxed);
    }
    let service = {
        let app = ctx.app.clone();
        let conn = conn.clone();
        hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            let guard = InFlight::start(conn.clone());
            if req.version() == hyper::Version::HTTP_2 {
                conn.h2.store(true, Ordering::Relaxed);
            }
            req.extensions_mut().insert(ConnectInfo(peer));
            req.extensions_mut().insert(scheme);
            let call = tower::ServiceExt::oneshot(app.clone(), req);
            async move {
                let resp = match call.await {
                    Ok(r) => r,
                    Err(never) => match never {},
                };
                Ok::<_, Infallible>(resp.map(|inner| Guarded {
                    inner,
                    _guard: guard,
                }))
            }
        })
    };
    let builder = match proto {
        Proto::Auto => &ctx.auto,
        Proto::H1 => &ctx.h1,
        Proto::H2 => &ctx.h2,
    };
    let served = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(served);
    let mut draining = false;
    loop {
        let deadline = conn.deadline(&ctx.limits);
        let reason = tokio::select! {
            r = served.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, "connection ended: {e}");
                }
                return;
            }
            _ = conn.changed.notified() => continue,
            _ = sleep_until(deadline) => {
                match conn.deadline(&ctx.limits) {
                    Some(d) if d <= Instant::now() => {
                        if conn.served.load(Ordering::Relaxed) == 0 || conn.head_started() {
                            "header_timeout"
                        } else {
                            "idle"
                        }
                    }
                    _ => continue,
                }
            }
            _ = conn.evict.cancelled() => {
                // Room for a new connection is needed now: closed at once (nothing is in flight).
                metrics::counter!("distributary_http_connections_closed_total", "reason" => "evicted")
                    .increment(1);
                return;
            }
            _ = ctx.shutdown.cancelled(), if !draining => {
                // Idle connections close now; requests in flight finish, then the connection closes.
                served.as_mut().graceful_shutdown();
                draining = true;
                continue;
            }
        };
        // Nothing is in flight: a GOAWAY for HTTP/2, a close for HTTP/1; dropped if it takes longer.
        metrics::counter!("distributary_http_connections_closed_total", "reason" => reason)
            .increment(1);
        served.as_mut().graceful_shutdown();
        let _ = tokio::time::timeout(Duration::from_secs(1), served.as_mut()).await;
        return;
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

// -------------------------------------------------------------------------------------------------------------
// Connection accounting

/// One open connection, as the watchdog and the cap see it.
struct Conn {
    id: u64,
    opened: Instant,
    /// Requests whose response has not been fully sent (or dropped).
    in_flight: AtomicUsize,
    /// Requests started on this connection.
    served: AtomicU64,
    /// When the last request in flight ended.
    idle_since: Mutex<Instant>,
    /// HTTP/1 between requests: the first byte of the next request head has not arrived yet.
    awaiting_head: AtomicBool,
    /// When the first byte of the next request head arrived (HTTP/1).
    head_started_at: Mutex<Option<Instant>>,
    /// Speaks HTTP/2: bytes between requests (pings, window updates) do not start a request head.
    h2: AtomicBool,
    /// Woken when the watchdog's deadline may have moved.
    changed: Notify,
    /// Cancelled to close the connection to make room for a new one.
    evict: CancellationToken,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl Conn {
    fn head_started(&self) -> bool {
        lock(&self.head_started_at).is_some()
    }

    /// When the connection is to be closed if nothing changes; `None` while a request is in flight.
    fn deadline(&self, limits: &Limits) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        if self.served.load(Ordering::Acquire) == 0 {
            return Some(self.opened + limits.header_timeout);
        }
        if let Some(t) = *lock(&self.head_started_at) {
            return Some(t + limits.header_timeout);
        }
        Some(*lock(&self.idle_since) + limits.keep_alive)
    }

    fn on_bytes_read(&self) {
        if self.awaiting_head.load(Ordering::Relaxed)
            && self.awaiting_head.swap(false, Ordering::AcqRel)
        {
            *lock(&self.head_started_at) = Some(Instant::now());
            self.changed.notify_one();
        }
    }
}

/// A request in flight on its connection, from its head to the end (or drop) of its response.
struct InFlight(Arc<Conn>);

impl InFlight {
    fn start(conn: Arc<Conn>) -> Self {
        conn.awaiting_head.store(false, Ordering::Release);
        *lock(&conn.head_started_at) = None;
        conn.served.fetch_add(1, Ordering::AcqRel);
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(conn)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let conn = &self.0;
        if conn.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            *lock(&conn.idle_since) = Instant::now();
            *lock(&conn.head_started_at) = None;
            if !conn.h2.load(Ordering::Relaxed) {
                conn.awaiting_head.store(true, Ordering::Release);
            }
            conn.changed.notify_one();
        }
    }
}

/// A response body that keeps its request counted as in flight until it is sent or dropped.
struct Guarded {
    inner: axum::body::Body,
    _guard: InFlight,
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The socket, noting the first byte of each HTTP/1 request head for the header timeout.
struct Tracked<T> {
    inner: T,
    conn: Arc<Conn>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.conn.on_bytes_read();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// How much [`ReadAhead`] reads from the socket at once.
const READ_AHEAD: usize = 64 << 10;

/// Reads the socket in large pieces beneath TLS. rustls asks its transport for at most 4 KiB at a time, so
/// without this a large upload over TLS costs a `read` syscall (and a task wake-up) per 4 KiB. The buffer
/// exists only while data flows: it is released whenever the socket has nothing more to give, so idle
/// connections hold none.
struct ReadAhead<T> {
    inner: T,
    buf: BytesMut,
}

impl<T> ReadAhead<T> {
    fn new(inner: T) -> Self {
        Self {
            inner,
            buf: BytesMut::new(),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ReadAhead<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let me = &mut *self;
        if me.buf.is_empty() {
            if out.remaining() >= READ_AHEAD {
                return Pin::new(&mut me.inner).poll_read(cx, out);
            }
            me.buf.reserve(READ_AHEAD);
            match tokio_util::io::poll_read_buf(Pin::new(&mut me.inner), cx, &mut me.buf) {
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    // Waiting on the network: hold no memory meanwhile.
                    me.buf = BytesMut::new();
                    return Poll::Pending;
                }
            }
        }
        let n = out.remaining().min(me.buf.len());
        out.put_slice(&me.buf[..n]);
        bytes::Buf::advance(&mut me.buf, n);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ReadAhead<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The open connections, oldest first.
struct Registry {
    max: usize,
    next: AtomicU64,
    open: Mutex<BTreeMap<u64, Arc<Conn>>>,
}

impl Registry {
    fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            next: AtomicU64::new(0),
            open: Mutex::new(BTreeMap::new()),
        }
    }

    /// Registers a new connection; at the cap, closes the oldest idle one to make room, or refuses (`None`)
    /// when every connection has a request in flight.
    fn admit(&self) -> Option<Arc<Conn>> {
        let mut open = lock(&self.open);
        if open.len() >= self.max {
            let victim = open
                .iter()
                .find(|(_, c)| c.in_flight.load(Ordering::Acquire) == 0)
                .map(|(id, _)| *id)?;
            if let Some(c) = open.remove(&victim) {
                c.evict.cancel();
            }
        }
        let now = Instant::now();
        let conn = Arc::new(Conn {
            id: self.next.fetch_add(1, Ordering::Relaxed),
            opened: now,
            in_flight: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            idle_since: Mutex::new(now),
            awaiting_head: AtomicBool::new(false),
            head_started_at: Mutex::new(None),
            h2: AtomicBool::new(false),
            changed: Notify::new(),
            evict: CancellationToken::new(),
        });
        open.insert(conn.id, conn.clone());
        metrics::gauge!("distributary_http_connections").set(open.len() as f64);
        Some(conn)
    }

    /// Closes the oldest connection with no request in flight; false if every one has a request in flight.
    fn evict_oldest_idle(&self) -> bool {
        let mut open = lock(&self.open);
        let Some(victim) = open
            .iter()
            .find(|(_, c)| c.in_flight.load(Ordering::Acquire) == 0)
            .map(|(id, _)| *id)
        else {
            return false;
        };
        if let Some(c) = open.remove(&victim) {
            c.evict.cancel();
        }
        metrics::gauge!("distributary_http_connections").set(open.len() as f64);
        true
    }

    fn remove(&self, id: u64) {
        let mut open = lock(&self.open);
        open.remove(&id);
        metrics::gauge!("distributary_http_connections").set(open.len() as f64);
    }
}

/// Removes its connection from the registry when the connection's task ends.
struct Registered {
    ctx: Arc<Ctx>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.ctx.registry.remove(self.id);
        self.ctx.sockets.fetch_sub(1, Ordering::AcqRel);
        self.ctx.closed.notify_one();
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn over_capacity_answer_is_well_formed() {
        let text = std::str::from_utf8(OVER_CAPACITY).expect("ascii");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        assert!(head.starts_with("HTTP/1.1 503 "));
        assert!(
            head.contains(&format!("Content-Length: {}", body.len())),
            "{head}"
        );
    }

    /// Serves a router with `/healthz` and `/wait` (answers once `release` is cancelled) on a free port.
    async fn start(limits: Limits, release: CancellationToken) -> (SocketAddr, CancellationToken) {
        let app = Router::new()
            .route("/healthz", axum::routing::get(|| async { "ok" }))
            .route(
                "/wait",
                axum::routing::get(move || {
                    let release = release.clone();
                    async move {
                        release.cancelled().await;
                        "released"
                    }
                }),
            );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = CancellationToken::new();
        let options = ServerOptions {
            tls: None,
            limits,
            ..ServerOptions::default()
        };
        tokio::spawn(serve(
            listener,
            app,
            options,
            stop.clone(),
            Duration::from_secs(1),
        ));
        (addr, stop)
    }

    fn limits(header: u64, keep_alive: u64, max: usize) -> Limits {
        Limits {
            header_timeout: Duration::from_secs(header),
            keep_alive: Duration::from_secs(keep_alive),
            max_connections: max,
            h2_max_streams: 8,
        }
    }

    /// Reads one response head and its `Content-Length` body; `None` if the connection closed first.
    async fn response(s: &mut TcpStream) -> Option<String> {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).to_string();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap_or(0))
                    })
                    .unwrap_or(0);
                if got.len() >= end + 4 + len {
                    return Some(String::from_utf8_lossy(&got[..end + 4 + len]).to_string());
                }
            }
            let n = s.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return None;
            }
            got.extend_from_slice(&buf[..n]);
        }
    }

    /// How long until the server closes `s` (reading and discarding), at most `limit`.
    async fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
        let started = Instant::now();
        let mut buf = [0u8; 1024];
        loop {
            match tokio::time::timeout_at(started + limit, s.read(&mut buf)).await {
                Err(_) => return None,
                Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
                Ok(Ok(_)) => {}
            }
        }
    }

    const GET: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

    #[tokio::test]
    async fn idle_keep_alive_and_late_heads_are_closed() {
        let (addr, stop) = start(limits(1, 2, 16), CancellationToken::new()).await;
        // Idle after a request: closed at the keep-alive timeout, not the (shorter) header timeout.
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(GET).await.expect("write");
        assert!(response(&mut s).await.expect("answer").contains("200 OK"));
        let took = closed_within(&mut s, Duration::from_secs(5))
            .await
            .expect("idle connection closed");
        assert!(
            took >= Duration::from_millis(1800) && took < Duration::from_secs(3),
            "{took:?}"
        );
        // A next head that starts but never ends: closed at the header timeout from its first byte.
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(GET).await.expect("write");
        assert!(response(&mut s).await.is_some());
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 1")
            .await
            .expect("half");
        let took = closed_within(&mut s, Duration::from_secs(5))
            .await
            .expect("half head closed");
        assert!(took < Duration::from_millis(1800), "{took:?}");
        // A connection that never sends anything: the header timeout.
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let took = closed_within(&mut s, Duration::from_secs(5))
            .await
            .expect("silent connection closed");
        assert!(
            took >= Duration::from_millis(800) && took < Duration::from_millis(1800),
            "{took:?}"
        );
        stop.cancel();
    }

    #[tokio::test]
    async fn the_cap_evicts_idle_connections_and_refuses_when_all_are_busy() {
        let release = CancellationToken::new();
        let (addr, stop) = start(limits(30, 30, 2), release.clone()).await;
        // Two idle connections fill the cap; a third is served, closing the oldest idle one.
        let mut idle1 = TcpStream::connect(addr).await.expect("connect");
        let _idle2 = TcpStream::connect(addr).await.expect("connect");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(GET).await.expect("write");
        assert!(response(&mut s).await.expect("served").contains("200 OK"));
        assert!(
            closed_within(&mut idle1, Duration::from_secs(2))
                .await
                .is_some(),
            "the oldest idle connection made room"
        );
        drop(s);
        drop(_idle2);
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Two requests in flight fill the cap: a third connection gets a 503 at once.
        let mut busy = Vec::new();
        for _ in 0..2 {
            let mut b = TcpStream::connect(addr).await.expect("connect");
            b.write_all(b"GET /wait HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                .await
                .expect("write");
            busy.push(b);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let answer = response(&mut s).await.expect("503");
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.contains("Retry-After: 1"), "{answer}");
        // The requests in flight were never cut.
        release.cancel();
        for b in &mut busy {
            assert!(response(b).await.expect("released").contains("released"));
        }
        stop.cancel();
    }

    #[tokio::test]
    async fn read_ahead_passes_bytes_through_in_order() {
        let (mut a, b) = tokio::io::duplex(1 << 20);
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            for piece in sent.chunks(7919) {
                a.write_all(piece).await.expect("write");
            }
        });
        let mut r = ReadAhead::new(b);
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while got.len() < data.len() {
            let n = r.read(&mut buf).await.expect("read");
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        writer.await.expect("writer");
        assert_eq!(got, data);
    }
}
