//! `herald-sandbox`: run every emulator on one address until Ctrl-C.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use herald_sandbox::suite::{DEFAULT_SAFE_DOMAIN, Sandbox, SandboxOptions};
use herald_sandbox::tieba::{SANDBOX_BDUSS, SANDBOX_FID, SANDBOX_FORUM};
use herald_sandbox::wechat::{SANDBOX_APPID, SANDBOX_SECRET};
use herald_sandbox::{SANDBOX_TOKEN_PREFIX, Tokens};
use tracing_subscriber::EnvFilter;

/// Run local emulators of the platforms herald publishes to, with faults on
/// demand (`POST <base>/_sandbox/faults`).
///
/// On one address: a webhook receiver that records, verifies and
/// de-duplicates deliveries (any path, e.g. http://ADDR/hook), and emulators
/// of Weibo (http://ADDR/weibo), Mastodon (http://ADDR/mastodon) and
/// Discourse (http://ADDR/discourse), WeChat (http://ADDR/wechat) and Tieba
/// (http://ADDR/tieba): give these as the accounts' base_url.
///
/// Tokens: the Weibo, Mastodon and Discourse emulators accept any access
/// token or API key that starts with "sandbox-" (e.g. access_token =
/// "sandbox-wuhan"), and the tokens read with --token-env.
/// Sandbox credentials (public, for demos and tests):
///   WeChat: appid = "sandbox-wechat-appid", secret = "sandbox-wechat-secret"
///   Tieba:  bduss = "sandbox-tieba-bduss", forum = "herald-sandbox", fid = 1001
#[derive(Debug, Parser)]
#[command(name = "herald-sandbox", version, verbatim_doc_comment)]
struct Args {
    /// The address to listen on; port 0 picks a free port.
    #[arg(long, value_name = "ADDR")]
    listen: SocketAddr,
    /// Read the webhook signing secret from this environment variable;
    /// requests without a valid, fresh Standard Webhooks signature are then refused with 401.
    #[arg(long, value_name = "VAR")]
    secret_env: Option<String>,
    /// Also accept the token (or API key) held by this environment variable;
    /// may be repeated.
    #[arg(long = "token-env", value_name = "VAR")]
    token_env: Vec<String>,
    /// The domain registered for the Weibo app: every Weibo status must
    /// link to it or a subdomain.
    #[arg(long, value_name = "DOMAIN", default_value = DEFAULT_SAFE_DOMAIN)]
    safe_domain: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();

    let read = |var: &String| std::env::var(var).with_context(|| format!("environment variable {var} is not set"));
    let secret = args.secret_env.as_ref().map(read).transpose()?;
    let tokens = args.token_env.iter().map(read).collect::<anyhow::Result<Vec<_>>>()?;
    let options = SandboxOptions {
        webhook_secret: secret,
        tokens: Tokens::new(tokens).with_prefix(SANDBOX_TOKEN_PREFIX),
        safe_domain: args.safe_domain.trim().to_ascii_lowercase(),
        ..SandboxOptions::default()
    };
    let sandbox =
        Sandbox::start(args.listen, options).await.with_context(|| format!("could not listen on {}", args.listen))?;
    println!("listening on {}", sandbox.addr());
    println!("webhook url {}", sandbox.webhook.url());
    println!("weibo base_url {}", sandbox.weibo.base_url());
    println!("mastodon base_url {}", sandbox.mastodon.base_url());
    println!("discourse base_url {}", sandbox.discourse.base_url());
    println!("wechat base_url {} (appid {SANDBOX_APPID}, secret {SANDBOX_SECRET})", sandbox.wechat.base_url());
    println!(
        "tieba base_url {} (bduss {SANDBOX_BDUSS}, forum {SANDBOX_FORUM}, fid {SANDBOX_FID})",
        sandbox.tieba.base_url()
    );

    tokio::signal::ctrl_c().await.context("could not wait for Ctrl-C")?;
    tracing::info!("shutting down");
    sandbox.shutdown().await;
    Ok(())
}
