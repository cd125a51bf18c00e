//! Serving HTTP to local clients that may be slow, broken or hostile (the
//! control socket and the metrics port): each listener holds at most
//! `max_connections` connections (one more is answered 503 and closed at
//! once), a client must send each request head within `header_timeout`
//! (idle keep-alive included), and no connection lives longer than
//! `lifetime`. So a flood of idle connections costs a bounded number of file
//! descriptors and cannot starve deliveries, and the CLI gets in within
//! `header_timeout` at worst.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// The bounds of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// How long a client may take to send a request head (also the idle
    /// time allowed between two requests on one connection).
    pub header_timeout: Duration,
    /// The longest a connection is kept, whatever it does; after it the
    /// request in progress is finished and the connection closed.
    pub lifetime: Duration,
}

impl Limits {
    /// The control socket: a CLI command sends its request at once; a
    /// reload may take a while to answer.
    pub const CONTROL: Limits =
        Limits { max_connections: 32, header_timeout: Duration::from_secs(5), lifetime: Duration::from_secs(120) };
    /// The metrics port: a scrape is one short request.
    pub const METRICS: Limits =
        Limits { max_connections: 8, header_timeout: Duration::from_secs(5), lifetime: Duration::from_secs(15) };
}

/// The answer to a connection over the bound, before it is closed.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-type: application/json\r\n\
connection: close\r\ncontent-length: 73\r\n\r\n{\"error\":\"herald is busy: too many connections at once; try again shortly\"}";

/// Where connections come from, and who may use them.
pub trait Incoming: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// What handlers learn about the client, as `ConnectInfo<Info>` (the
    /// control socket's peer credentials, so an action names its actor).
    type Info: Clone + Send + Sync + 'static;
    /// The next connection (errors are logged and retried by the caller).
    fn accept(&mut self) -> impl Future<Output = std::io::Result<Self::Io>> + Send;
    /// Whether this connection may be served (the control socket's peer
    /// check); runs on the connection's own task, within its slot.
    fn admit(&self, io: Self::Io) -> impl Future<Output = Option<(Self::Io, Self::Info)>> + Send + 'static;
}

/// A TCP listener that serves anyone who can reach it.
pub struct Tcp(pub tokio::net::TcpListener);

impl Incoming for Tcp {
    type Io = tokio::net::TcpStream;
    type Info = ();

    async fn accept(&mut self) -> std::io::Result<Self::Io> {
        self.0.accept().await.map(|(stream, _)| stream)
    }

    fn admit(&self, io: Self::Io) -> impl Future<Output = Option<(Self::Io, ())>> + Send + 'static {
        std::future::ready(Some((io, ())))
    }
}

/// Serve `router` on `incoming` within `limits`, until the returned future
/// is dropped (which also ends every connection it serves). `name` names
/// the listener in logs.
pub async fn serve<I: Incoming>(mut incoming: I, router: axum::Router, limits: Limits, name: &'static str) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let refused = Arc::new(AtomicU64::new(0));
    let mut connections = JoinSet::new();
    let incoming_ref = &mut incoming;
    loop {
        let accepted = tokio::select! {
            accepted = incoming_ref.accept() => accepted,
            Some(_) = connections.join_next() => continue,
        };
        let io = match accepted {
            Ok(io) => io,
            Err(e) => {
                // Out of file descriptors, most likely: wait instead of spinning.
                tracing::warn!(listener = name, error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            shed(io, name, &refused).await;
            continue;
        };
        let admit = incoming_ref.admit(io);
        let router = router.clone();
        connections.spawn(async move {
            let _slot = slot;
            let Some((io, info)) = admit.await else { return };
            let router = router.layer(axum::Extension(axum::extract::ConnectInfo(info)));
            serve_one(io, router, limits).await;
        });
    }
}

/// Answer 503 and close: the bound is reached.
async fn shed(mut io: impl AsyncWrite + Unpin, name: &'static str, refused: &AtomicU64) {
    let n = refused.fetch_add(1, Ordering::Relaxed);
    // One warning per thousand, so a flood does not flood the journal too.
    if n.is_multiple_of(1000) {
        tracing::warn!(listener = name, refused = n + 1, "too many connections at once; refusing more");
    }
    // A fresh connection's send buffer is empty: this does not wait.
    let _ = tokio::time::timeout(Duration::from_millis(50), io.write_all(BUSY)).await;
}

async fn serve_one(io: impl AsyncRead + AsyncWrite + Unpin + Send + 'static, router: axum::Router, limits: Limits) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).max_buf_size(64 * 1024);
    let connection = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(router));
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        _ = tokio::time::sleep(limits.lifetime) => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(limits.header_timeout, connection).await;
        }
    }
}
