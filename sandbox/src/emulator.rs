//! What the platform emulators share: handling a request on a task of its
//! own (so a client that gives up does not stop it, as on a real platform),
//! cutting the connection for a dropped request, planned platform-specific
//! faults, and where an emulator is served.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};

use axum::extract::ConnectInfo;
use axum::http::{Extensions, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::server::{Binding, Server, Stopping};

/// What a handler sends back on the connection.
pub(crate) enum Reply {
    Answer(Response),
    /// Close the connection without answering.
    Drop,
}

impl<T: IntoResponse> From<T> for Reply {
    fn from(answer: T) -> Reply {
        Reply::Answer(answer.into_response())
    }
}

/// Run `handling` on a task of its own and answer what it replies.
pub(crate) async fn detached(
    extensions: &Extensions,
    handling: impl Future<Output = Reply> + Send + 'static,
) -> Response {
    let connection = extensions.get::<ConnectInfo<crate::server::Connection>>().map(|info| info.0.clone());
    match tokio::spawn(handling).await {
        Ok(Reply::Answer(response)) => response,
        Ok(Reply::Drop) => {
            if let Some(connection) = connection {
                connection.cut();
            }
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
        Err(error) => {
            tracing::error!(%error, "emulator request handling failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Platform-specific faults planned for the next requests, in order.
#[derive(Debug)]
pub(crate) struct Planned<T> {
    queue: Mutex<VecDeque<(usize, T)>>,
}

impl<T> Default for Planned<T> {
    fn default() -> Self {
        Planned { queue: Mutex::default() }
    }
}

impl<T: Clone> Planned<T> {
    pub(crate) fn push(&self, count: usize, fault: T) {
        if count > 0 {
            lock(&self.queue).push_back((count, fault));
        }
    }

    pub(crate) fn take(&self) -> Option<T> {
        let mut queue = lock(&self.queue);
        let (left, fault) = queue.front_mut()?;
        let fault = fault.clone();
        *left -= 1;
        if *left == 0 {
            queue.pop_front();
        }
        Some(fault)
    }

    pub(crate) fn clear(&self) {
        lock(&self.queue).clear();
    }
}

/// Where an emulator runs: on a server of its own, or mounted in another
/// router (the binary's), whose address and shutdown signal it shares.
pub(crate) struct Hosting {
    pub(crate) server: Option<Server>,
    pub(crate) addr: SocketAddr,
}

impl Hosting {
    pub(crate) async fn shutdown(self) {
        if let Some(server) = self.server {
            server.shutdown().await;
        }
    }
}

/// The base URL of an emulator mounted at `prefix` ("" for the root).
pub(crate) fn base_url(addr: SocketAddr, prefix: &str) -> String {
    format!("http://{addr}{prefix}")
}

/// Bind `addr` and give the pieces an emulator of its own needs.
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<(Binding, Stopping, SocketAddr)> {
    let binding = Binding::bind(addr).await?;
    let stopping = binding.stopping();
    let addr = binding.addr();
    Ok((binding, stopping, addr))
}
