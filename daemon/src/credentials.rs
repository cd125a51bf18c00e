//! The store as the adapters' credential cache: WeChat tokens and media ids
//! survive restarts and are shared by every delivery of an account.

use std::sync::Arc;

use herald_adapters::{CredentialCache, Services};

use crate::blocking::off_the_workers;
use crate::store::{Changes, Store};

const PREFIX: &str = "credential/";

pub struct StoreCache {
    store: Arc<dyn Store>,
}

impl StoreCache {
    /// Services for `account` backed by `store`.
    pub fn services(store: &Arc<dyn Store>, account: &str) -> Services {
        Services { account: account.to_string(), cache: Arc::new(StoreCache { store: Arc::clone(store) }) }
    }
}

impl CredentialCache for StoreCache {
    fn load(&self, key: &str) -> Option<Vec<u8>> {
        // Adapters call the cache from their async requests: the store's
        // reads and writes (with a flush) go off the async workers.
        match off_the_workers(|| self.store.meta(&format!("{PREFIX}{key}"))) {
            Ok(value) => value,
            Err(e) => {
                tracing::warn!(key, error = %e, "cannot read a cached credential");
                None
            }
        }
    }

    fn save(&self, key: &str, value: &[u8]) {
        let changes = Changes { meta: vec![(format!("{PREFIX}{key}"), value.to_vec())], ..Changes::default() };
        if let Err(e) = off_the_workers(|| self.store.apply(changes).and_then(|_| self.store.flush())) {
            tracing::warn!(key, error = %e, "cannot save a cached credential");
        }
    }
}
