//! `herald-sandbox`: run every emulator (webhook receiver, WeChat, Tieba)
//! on one address until Ctrl-C.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use herald_sandbox::tieba::{SANDBOX_BDUSS, SANDBOX_FID, SANDBOX_FORUM, TiebaConfig};
use herald_sandbox::wechat::{SANDBOX_APPID, SANDBOX_SECRET, WechatConfig};
use herald_sandbox::{Sandbox, SandboxConfig};
use tracing_subscriber::EnvFilter;

/// Run local emulators of the platforms herald publishes to, on one address:
/// a webhook receiver at /hook that records, verifies and de-duplicates
/// deliveries; WeChat below /wechat; Tieba below /tieba. Faults on demand
/// through each one's /_sandbox/* control API.
///
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
    /// requests without a valid X-Herald-Signature are then refused with 401.
    #[arg(long, value_name = "VAR")]
    secret_env: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();

    let webhook_secret = match &args.secret_env {
        Some(var) => Some(std::env::var(var).with_context(|| format!("environment variable {var} is not set"))?),
        None => None,
    };
    let config = SandboxConfig {
        webhook_secret,
        wechat: WechatConfig::new(SANDBOX_APPID, SANDBOX_SECRET),
        tieba: TiebaConfig::default(),
    };
    let sandbox =
        Sandbox::start(args.listen, config).await.with_context(|| format!("could not listen on {}", args.listen))?;
    println!("listening on {}", sandbox.addr());
    println!("webhook url {}", sandbox.webhook_url());
    println!("wechat base_url {} (appid {SANDBOX_APPID}, secret {SANDBOX_SECRET})", sandbox.wechat().base_url());
    println!(
        "tieba base_url {} (bduss {SANDBOX_BDUSS}, forum {SANDBOX_FORUM}, fid {SANDBOX_FID})",
        sandbox.tieba().base_url()
    );

    tokio::signal::ctrl_c().await.context("could not wait for Ctrl-C")?;
    tracing::info!("shutting down");
    sandbox.shutdown().await;
    Ok(())
}
