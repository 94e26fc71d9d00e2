//! A live TLS server config that listeners read lock-free and operators swap at run time.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::ServerConfig;

/// Holder of the current server config: readers `load_full()` it without a lock; `replace` swaps it.
///
/// Connections already established keep the config they started with; new accepts see the new one.
#[derive(Debug, Clone)]
pub struct ReloadableServerConfig {
    inner: Arc<ArcSwap<ServerConfig>>,
}

impl ReloadableServerConfig {
    /// Starts with `cfg` as the current config.
    pub fn new(cfg: ServerConfig) -> Self {
        ReloadableServerConfig {
            inner: Arc::new(ArcSwap::from_pointee(cfg)),
        }
    }

    /// The shared cell, for listeners that take the current config on every accept.
    pub fn shared(&self) -> Arc<ArcSwap<ServerConfig>> {
        self.inner.clone()
    }

    /// The config in force now.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.inner.load_full()
    }

    /// Makes `cfg` the config for every later accept.
    pub fn replace(&self, cfg: ServerConfig) {
        self.inner.store(Arc::new(cfg));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{load_or_create, server_config};

    #[test]
    fn replace_is_seen_through_shared_handles() {
        let dir = tempfile::tempdir().unwrap();
        let p = load_or_create(dir.path(), &["localhost".to_string()]).unwrap();
        let cert = std::fs::read(&p.server_cert).unwrap();
        let key = std::fs::read(&p.server_key).unwrap();
        let live = ReloadableServerConfig::new(server_config(&cert, &key, &[b"a"]).unwrap());
        let shared = live.shared();
        let before = live.current();
        assert_eq!(shared.load_full().alpn_protocols, vec![b"a".to_vec()]);

        live.replace(server_config(&cert, &key, &[b"b"]).unwrap());
        assert_eq!(shared.load_full().alpn_protocols, vec![b"b".to_vec()]);
        assert_eq!(live.current().alpn_protocols, vec![b"b".to_vec()]);
        // A reader holding the old config keeps a valid one.
        assert_eq!(before.alpn_protocols, vec![b"a".to_vec()]);
        assert!(!Arc::ptr_eq(&before, &live.current()));
    }
}
