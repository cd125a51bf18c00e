//! `herald-sandbox`: run the webhook receiver emulator until Ctrl-C.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use herald_sandbox::WebhookReceiver;
use tracing_subscriber::EnvFilter;

/// Run a local webhook receiver that records, verifies and de-duplicates
/// herald's deliveries, with faults on demand (`POST /_sandbox/faults`).
#[derive(Debug, Parser)]
#[command(name = "herald-sandbox", version)]
struct Args {
    /// The address to listen on; port 0 picks a free port.
    #[arg(long, value_name = "ADDR")]
    listen: SocketAddr,
    /// Read the signing secret from this environment variable; requests
    /// without a valid X-Herald-Signature are then refused with 401.
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

    let secret = match &args.secret_env {
        Some(var) => Some(std::env::var(var).with_context(|| format!("environment variable {var} is not set"))?),
        None => None,
    };
    let receiver = WebhookReceiver::start(args.listen, secret)
        .await
        .with_context(|| format!("could not listen on {}", args.listen))?;
    println!("listening on {}", receiver.addr());
    println!("webhook url {}", receiver.url());

    tokio::signal::ctrl_c().await.context("could not wait for Ctrl-C")?;
    tracing::info!("shutting down");
    receiver.shutdown().await;
    Ok(())
}
