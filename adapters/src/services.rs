//! What the daemon lends to adapters: a small persistent cache for
//! credentials (a WeChat access_token and its expiry, uploaded media ids),
//! so they survive restarts and are shared by every delivery of an account.
//! Adapters never see the store itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A key-value cache that outlives the process when the daemon backs it
/// with its store. Keys are namespaced by the adapter (e.g.
/// `wechat/<account>/token`). Values may hold secrets: implementations must
/// never log them.
pub trait CredentialCache: Send + Sync {
    fn load(&self, key: &str) -> Option<Vec<u8>>;
    /// Store a value durably; errors are the cache's to log (without the value).
    fn save(&self, key: &str, value: &[u8]);
}

/// An in-memory cache: for `herald check`, tests, and anything without a store.
#[derive(Default)]
pub struct MemoryCache {
    entries: Mutex<HashMap<String, Vec<u8>>>,
}

impl CredentialCache for MemoryCache {
    fn load(&self, key: &str) -> Option<Vec<u8>> {
        self.entries.lock().ok()?.get(key).cloned()
    }

    fn save(&self, key: &str, value: &[u8]) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.insert(key.to_string(), value.to_vec());
        }
    }
}

/// Everything an adapter may use besides its settings.
#[derive(Clone)]
pub struct Services {
    /// The id of the account being built (for cache keys and messages).
    pub account: String,
    pub cache: Arc<dyn CredentialCache>,
}

impl Services {
    /// Services backed by memory only.
    pub fn in_memory(account: &str) -> Self {
        Services { account: account.to_string(), cache: Arc::new(MemoryCache::default()) }
    }
}
