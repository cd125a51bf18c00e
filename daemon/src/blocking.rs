//! Blocking work (sled reads and writes, fsync, reading config files)
//! kept off tokio's async workers, so the control socket, the metrics
//! endpoint and requests in flight are served while it runs. There are as
//! many workers as cores (2 on a small host): a worker held by a flush or
//! a reconcile is half the daemon.
//!
//! Two tools, each at its seam: [`off_the_workers`] for a task that must
//! do the blocking work itself and keep its `&mut` state (the scheduler's
//! rounds, a credential cache called by an adapter), and
//! `tokio::task::spawn_blocking` for a request handler that can hand the
//! work away (`control.rs`, the metrics endpoint, the reloader).

/// Run `work`, which blocks, from async code without holding up the
/// runtime: on a multi-thread runtime the worker's other tasks move to
/// another thread first (`block_in_place`). Elsewhere (no runtime, or a
/// current-thread runtime, as in tests that drive the scheduler by hand)
/// `work` simply runs.
pub fn off_the_workers<R>(work: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}
