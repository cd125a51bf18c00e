//! Every emulator on one address, as the `herald-sandbox` binary serves
//! them: the webhook receiver at the root (any path) and the platform
//! emulators under `/weibo`, `/mastodon` and `/discourse`.

use std::io;
use std::net::SocketAddr;

use crate::discourse::{DiscourseConfig, DiscourseEmulator};
use crate::mastodon::{MastodonConfig, MastodonEmulator};
use crate::server::{Binding, Server};
use crate::tokens::{SANDBOX_TOKEN_PREFIX, Tokens};
use crate::webhook::WebhookReceiver;
use crate::weibo::{WeiboConfig, WeiboEmulator};

pub const WEIBO_PREFIX: &str = "/weibo";
pub const MASTODON_PREFIX: &str = "/mastodon";
pub const DISCOURSE_PREFIX: &str = "/discourse";

/// The safe domain of the sandbox's Weibo app when none is given.
pub const DEFAULT_SAFE_DOMAIN: &str = "example.gov.cn";

/// What the whole sandbox accepts.
#[derive(Debug, Clone)]
pub struct SandboxOptions {
    /// The webhook signing secret; without it, signatures are not checked.
    pub webhook_secret: Option<String>,
    /// The tokens (Weibo, Mastodon) and API keys (Discourse) accepted.
    pub tokens: Tokens,
    /// The Weibo app's registered domain.
    pub safe_domain: String,
}

impl Default for SandboxOptions {
    /// No secret, every token starting with `sandbox-`, `example.gov.cn`.
    fn default() -> Self {
        SandboxOptions {
            webhook_secret: None,
            tokens: Tokens::default().with_prefix(SANDBOX_TOKEN_PREFIX),
            safe_domain: DEFAULT_SAFE_DOMAIN.to_string(),
        }
    }
}

/// Every emulator, served on one address. Dropping it shuts the server down.
pub struct Sandbox {
    server: Server,
    pub webhook: WebhookReceiver,
    pub weibo: WeiboEmulator,
    pub mastodon: MastodonEmulator,
    pub discourse: DiscourseEmulator,
}

impl Sandbox {
    pub async fn start(addr: SocketAddr, options: SandboxOptions) -> io::Result<Sandbox> {
        let binding = Binding::bind(addr).await?;
        let addr = binding.addr();
        let stopping = binding.stopping();
        let webhook = WebhookReceiver::mounted(addr, stopping.clone(), options.webhook_secret)?;
        let weibo = WeiboEmulator::mounted(
            addr,
            WEIBO_PREFIX,
            stopping.clone(),
            WeiboConfig::new(options.tokens.clone(), options.safe_domain),
        );
        let mastodon = MastodonEmulator::mounted(
            addr,
            MASTODON_PREFIX,
            stopping.clone(),
            MastodonConfig::new(options.tokens.clone()),
        );
        let discourse =
            DiscourseEmulator::mounted(addr, DISCOURSE_PREFIX, stopping, DiscourseConfig::new(options.tokens));
        let router = webhook
            .router()
            .nest(WEIBO_PREFIX, weibo.router())
            .nest(MASTODON_PREFIX, mastodon.router())
            .nest(DISCOURSE_PREFIX, discourse.router());
        let server = binding.serve(router);
        tracing::info!(%addr, "sandbox listening");
        Ok(Sandbox { server, webhook, weibo, mastodon, discourse })
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Stop accepting connections, finish the answers in progress, and wait
    /// for the server to end.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}
