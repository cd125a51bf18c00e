//! Every emulator on one address, as the `herald-sandbox` binary serves
//! them: the webhook receiver at the root (`/hook`), WeChat below `/wechat`
//! and Tieba below `/tieba`.

use std::io;
use std::net::SocketAddr;

use axum::Router;

use crate::server::{Binding, Server};
use crate::tieba::{TiebaConfig, TiebaEmulator};
use crate::webhook::{self, HOOK_PATH};
use crate::wechat::{WechatConfig, WechatEmulator};

/// Where WeChat is mounted.
pub const WECHAT_PREFIX: &str = "/wechat";
/// Where Tieba is mounted.
pub const TIEBA_PREFIX: &str = "/tieba";

/// How the emulators are set up.
#[derive(Debug, Clone, Default)]
pub struct SandboxConfig {
    /// The webhook signing secret; without it, signatures are not checked.
    pub webhook_secret: Option<String>,
    pub wechat: WechatConfig,
    pub tieba: TiebaConfig,
}

/// Every emulator, serving on one address. Dropping it shuts it down.
pub struct Sandbox {
    server: Server,
    wechat: WechatEmulator,
    tieba: TiebaEmulator,
}

impl Sandbox {
    /// Listen on `addr` (port 0 picks a free port).
    pub async fn start(addr: SocketAddr, config: SandboxConfig) -> io::Result<Sandbox> {
        let binding = Binding::bind(addr).await?;
        let hooks = webhook::mounted(&binding, config.webhook_secret)?;
        let wechat = WechatEmulator::mounted(&binding, WECHAT_PREFIX, config.wechat);
        let tieba = TiebaEmulator::mounted(&binding, TIEBA_PREFIX, config.tieba);
        let router = Router::new().nest(WECHAT_PREFIX, wechat.router()).nest(TIEBA_PREFIX, tieba.router()).merge(hooks);
        let server = binding.serve(router);
        tracing::info!(addr = %server.addr(), "sandbox listening");
        Ok(Sandbox { server, wechat, tieba })
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// The URL webhook accounts deliver to.
    pub fn webhook_url(&self) -> String {
        format!("http://{}{HOOK_PATH}", self.addr())
    }

    /// The WeChat emulator (its `base_url` ends in `/wechat`).
    pub fn wechat(&self) -> &WechatEmulator {
        &self.wechat
    }

    /// The Tieba emulator (its `base_url` ends in `/tieba`).
    pub fn tieba(&self) -> &TiebaEmulator {
        &self.tieba
    }

    /// Stop accepting connections, finish the answers in progress, and wait.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox").field("addr", &self.addr()).finish_non_exhaustive()
    }
}
