//! Serving an emulator: bind, run an axum router whose connections a handler
//! can cut (to emulate a platform that drops a request without answering),
//! and shut down gracefully on request or when the handle is dropped.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long [`Server::shutdown`] lets answers in progress finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A bound address, not yet serving: the emulator builds its router from
/// the address and the shutdown signal, then [`Binding::serve`]s it.
pub(crate) struct Binding {
    tcp: TcpListener,
    addr: SocketAddr,
    stop: watch::Sender<bool>,
}

impl Binding {
    /// Bind `addr` (port 0 picks a free port).
    pub(crate) async fn bind(addr: SocketAddr) -> io::Result<Binding> {
        let tcp = TcpListener::bind(addr).await?;
        let addr = tcp.local_addr()?;
        let (stop, _) = watch::channel(false);
        Ok(Binding { tcp, addr, stop })
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The shutdown signal, for handlers that wait.
    pub(crate) fn stopping(&self) -> Stopping {
        Stopping(self.stop.subscribe())
    }

    /// Serve `router` until shutdown.
    pub(crate) fn serve(self, router: Router) -> Server {
        let Binding { tcp, addr, stop } = self;
        let stopping = Stopping(stop.subscribe());
        let service = router.into_make_service_with_connect_info::<Connection>();
        let task = tokio::spawn(async move {
            let serve = axum::serve(Listener(tcp), service).with_graceful_shutdown(stopping.stopped());
            if let Err(error) = serve.await {
                tracing::warn!(%addr, %error, "sandbox server failed");
            }
            tracing::debug!(%addr, "sandbox server stopped");
        });
        Server { addr, stop, task: Some(task) }
    }
}

/// A running emulator server. Dropping it starts a graceful shutdown.
pub(crate) struct Server {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Server {
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop accepting connections, let answers in progress finish (delays
    /// are cut short), and wait for the server to end.
    pub(crate) async fn shutdown(mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(SHUTDOWN_GRACE, task).await.is_err() {
                abort.abort();
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// The shutdown signal, for handlers that wait (latency, delays).
#[derive(Clone)]
pub(crate) struct Stopping(watch::Receiver<bool>);

impl Stopping {
    /// Resolves once shutdown has begun (or the server handle is gone).
    pub(crate) async fn stopped(mut self) {
        // An error means the sender is gone: that is a shutdown too.
        let _ = self.0.wait_for(|stopping| *stopping).await;
    }

    /// Sleep for `duration`, or until shutdown begins.
    pub(crate) async fn sleep(&self, duration: Duration) {
        if duration.is_zero() {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(duration) => {}
            () = self.clone().stopped() => {}
        }
    }
}

/// The connection a request arrived on; extract it with
/// `ConnectInfo<Connection>`. [`Connection::cut`] makes every later read and
/// write on it fail, so the server closes it without sending an answer.
#[derive(Clone, Debug)]
pub(crate) struct Connection {
    cut: Arc<AtomicBool>,
}

impl Connection {
    pub(crate) fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    fn is_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }
}

impl Connected<IncomingStream<'_, Listener>> for Connection {
    fn connect_info(stream: IncomingStream<'_, Listener>) -> Self {
        stream.io().connection.clone()
    }
}

/// A TCP listener whose connections can be cut.
pub(crate) struct Listener(TcpListener);

impl axum::serve::Listener for Listener {
    type Io = Stream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Stream, SocketAddr) {
        loop {
            match self.0.accept().await {
                Ok((tcp, peer)) => {
                    return (Stream { tcp, connection: Connection { cut: Arc::default() } }, peer);
                }
                // Out of file descriptors and the like: wait, do not spin.
                Err(error) => {
                    tracing::warn!(%error, "sandbox could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

/// A TCP stream that fails every operation once its connection is cut.
pub(crate) struct Stream {
    tcp: TcpStream,
    connection: Connection,
}

impl Stream {
    fn check(&self) -> io::Result<()> {
        if self.connection.is_cut() {
            Err(io::Error::new(io::ErrorKind::ConnectionAborted, "connection cut by a sandbox fault"))
        } else {
            Ok(())
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check()?;
        Pin::new(&mut this.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check()?;
        Pin::new(&mut this.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check()?;
        Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check()?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}
