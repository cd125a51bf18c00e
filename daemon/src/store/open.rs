//! Opening the store a config names, in one place: the daemon (`herald
//! run`), the CLI on a stopped daemon (`cli/source.rs`) and `herald check`
//! all come here, so `[store]` means the same to each of them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::postgres::PostgresStore;
use super::{Result, SledStore, Store};
use crate::config::StoreSettings;

/// Who opens the store, which decides whether it must be the only user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `herald run`: the store's writer. sled's lock file keeps a second
    /// daemon out; on PostgreSQL several daemons share the database, one
    /// leading at a time through the scheduler lease (`lease`).
    Daemon,
    /// The CLI acting on the store of a stopped daemon: like the daemon, it
    /// must be alone (it writes retries, cancels, pauses).
    Offline,
    /// `herald check` looking at what the store holds: reads only, and is
    /// not refused by a running daemon on PostgreSQL.
    Reader,
}

/// Where a config keeps its state, and how much of it to cache.
#[derive(Debug, Clone)]
pub struct Location {
    pub store: StoreSettings,
    /// `[daemon] state_dir` (the sled database is in it).
    pub state_dir: PathBuf,
    /// `[daemon] cache_mb`: sled's page cache.
    pub cache_mb: u64,
}

impl Location {
    pub fn of(config: &crate::config::Config) -> Location {
        Location {
            store: config.store.clone(),
            state_dir: config.daemon.state_dir.clone(),
            cache_mb: config.daemon.cache_mb,
        }
    }

    /// "the state directory /var/lib/herald" or "the PostgreSQL database
    /// postgres://herald@db:5432/herald" (never with the password), for messages.
    pub fn describe(&self) -> String {
        match &self.store {
            StoreSettings::Sled => format!("the state directory {}", self.state_dir.display()),
            StoreSettings::Postgres(pg) => format!("the PostgreSQL database {}", pg.shown),
        }
    }

    /// Has a herald ever kept its state here? (A sled store exists; a
    /// PostgreSQL database is asked when opened.)
    pub fn may_exist(&self) -> bool {
        match &self.store {
            StoreSettings::Sled => self.state_dir.join("db").exists(),
            StoreSettings::Postgres(_) => true,
        }
    }

    /// Open the store for `role`.
    pub fn open(&self, role: Role) -> Result<Arc<dyn Store>> {
        self.open_as(role, None)
    }

    /// Open the store for `role`, writing as the daemon `holder` (its lease
    /// holder id): on PostgreSQL each audit record it writes names it; sled
    /// records do not (one host, one daemon, and their bytes stay as they were).
    pub fn open_as(&self, role: Role, holder: Option<&str>) -> Result<Arc<dyn Store>> {
        match &self.store {
            StoreSettings::Sled => Ok(Arc::new(SledStore::open(&self.state_dir, self.cache_mb)?)),
            StoreSettings::Postgres(pg) => {
                if role == Role::Daemon {
                    // The state directory names this daemon to the CLI (the
                    // control socket's identity check) even when no store is in it.
                    use std::os::unix::fs::DirBuilderExt;
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(&self.state_dir)
                        .map_err(|error| super::StoreError::Dir { dir: self.state_dir.display().to_string(), error })?;
                }
                let mut store = PostgresStore::connect(pg.url.expose(), pg.pool)?;
                if let Some(holder) = holder {
                    store = store.identify(holder);
                }
                // Daemons share the database and take turns through the
                // scheduler lease (`lease`, `ha`); the CLI on a stopped
                // daemon writes too, so it claims the database alone, and
                // not while a daemon (on any host) leads on it.
                if role == Role::Offline {
                    claim_offline(&store, "run the command on its host, where it answers through its control socket")?;
                }
                Ok(Arc::new(store))
            }
        }
    }

    /// The sled state directory, when the store is sled.
    pub fn sled_dir(&self) -> Option<&Path> {
        matches!(self.store, StoreSettings::Sled).then_some(self.state_dir.as_path())
    }
}

/// Claim a PostgreSQL database for a command on stopped daemons (the CLI's
/// writes, `herald store copy --to sled`): alone, and not while a daemon
/// (on any host) leads on it; the refusal ends with `instead`, what to do.
pub fn claim_offline(store: &PostgresStore, instead: &str) -> Result<()> {
    store.claim_exclusive()?;
    if let Some(holder) = store.live_holder(crate::lease::SCHEDULER)? {
        return Err(super::StoreError::NotLeader(format!(
            "a herald daemon leads on {} ({holder}); {instead}",
            store.target()
        )));
    }
    Ok(())
}
