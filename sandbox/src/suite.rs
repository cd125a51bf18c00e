//! Every emulator on one address, as the `herald-sandbox` binary serves
//! them: the webhook receiver at the root (any path, `/hook` by convention)
//! and the platform emulators under `/weibo`, `/wechat`, `/tieba`,
//! `/mastodon` and `/discourse`.

use std::io;
use std::net::SocketAddr;

use crate::discourse::{DiscourseConfig, DiscourseEmulator};
use crate::mastodon::{MastodonConfig, MastodonEmulator};
use crate::server::{Binding, Server};
use crate::tieba::{TiebaConfig, TiebaEmulator};
use crate::tokens::{SANDBOX_TOKEN_PREFIX, Tokens};
use crate::webhook::WebhookReceiver;
use crate::wechat::{SANDBOX_APPID, SANDBOX_SECRET, WechatConfig, WechatEmulator};
use crate::weibo::{WeiboConfig, WeiboEmulator};

pub const WEIBO_PREFIX: &str = "/weibo";
pub const MASTODON_PREFIX: &str = "/mastodon";
pub const DISCOURSE_PREFIX: &str = "/discourse";
pub const WECHAT_PREFIX: &str = "/wechat";
pub const TIEBA_PREFIX: &str = "/tieba";

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
    /// The WeChat account's appid and secret, token lifetime, and so on.
    pub wechat: WechatConfig,
    /// The Tieba user and forum.
    pub tieba: TiebaConfig,
}

impl Default for SandboxOptions {
    /// No secret, every token starting with `sandbox-`, `example.gov.cn`.
    fn default() -> Self {
        SandboxOptions {
            webhook_secret: None,
            tokens: Tokens::default().with_prefix(SANDBOX_TOKEN_PREFIX),
            safe_domain: DEFAULT_SAFE_DOMAIN.to_string(),
            wechat: WechatConfig::new(SANDBOX_APPID, SANDBOX_SECRET),
            tieba: TiebaConfig::default(),
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
    pub wechat: WechatEmulator,
    pub tieba: TiebaEmulator,
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
        let wechat = WechatEmulator::mounted(&binding, WECHAT_PREFIX, options.wechat);
        let tieba = TiebaEmulator::mounted(&binding, TIEBA_PREFIX, options.tieba);
        let router = webhook
            .router()
            .nest(WEIBO_PREFIX, weibo.router())
            .nest(MASTODON_PREFIX, mastodon.router())
            .nest(DISCOURSE_PREFIX, discourse.router())
            .nest(WECHAT_PREFIX, wechat.router())
            .nest(TIEBA_PREFIX, tieba.router());
        let server = binding.serve(router);
        tracing::info!(%addr, "sandbox listening");
        Ok(Sandbox { server, webhook, weibo, mastodon, discourse, wechat, tieba })
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
