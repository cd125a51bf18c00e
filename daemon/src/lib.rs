//! herald: a daemon that publishes scheduled public-warning and education
//! posts to many social accounts, retrying when a platform fails and
//! recording every attempt in an append-only audit log.
//!
//! Data flow: [`config`] (TOML, checked) -> [`reconcile`] (config into the
//! store) -> [`store`] (sled) -> [`scheduler`] (due index, gates, retries) ->
//! adapters (`herald-adapters`) -> audit log (in the store).

pub mod alerts;
pub mod anchor;
pub mod approvals;
pub mod audit_chain;
pub mod blocking;
pub mod calendar;
pub mod cli;
pub mod clock;
pub mod config;
pub mod connections;
pub mod control;
pub mod credentials;
pub mod daemon;
#[cfg(feature = "demo")]
pub mod demo;
pub mod forward;
pub mod ha;
pub mod lease;
pub mod logging;
pub mod materialize;
pub mod metrics;
pub mod model;
pub mod notify;
pub mod pauses;
pub mod recall;
pub mod reconcile;
pub mod retry_cancel;
pub mod scheduler;
pub mod scrub;
pub mod store;
#[cfg(test)]
mod testkit;
