//! `herald store copy`: move a stopped herald's sled store into an empty
//! PostgreSQL database, and prove the copy before anyone switches.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};

use crate::config::StoreSettings;
use crate::store::StoreError;
use crate::store::copy;
use crate::store::postgres::PostgresStore;
use crate::store::sled_store::SledStore;

/// Where `herald store copy` copies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// The PostgreSQL database `[store]` names, from the sled store in `[daemon] state_dir`.
    Postgres,
}

pub fn copy(config: &Path, to: Backend) -> anyhow::Result<ExitCode> {
    let Backend::Postgres = to;
    let peek = crate::config::peek(config).map_err(anyhow::Error::msg)?;
    let pg = match peek.store.map_err(anyhow::Error::msg)? {
        StoreSettings::Postgres(pg) => pg,
        StoreSettings::Sled => bail!(
            "{}: [store] names no PostgreSQL database to copy to; add\n\n[store]\nbackend = \"postgres\"\n\
             url = {{ credential = \"herald-database-url\" }}\n\nto the config and run this again \
             (README, \"Move a host onto PostgreSQL\")",
            config.display()
        ),
    };
    let dir = std::path::absolute(&peek.state_dir).unwrap_or_else(|_| peek.state_dir.clone());
    if !dir.join("db").exists() {
        bail!("there is no herald store in the state directory {} to copy", dir.display());
    }
    let from = match SledStore::open(&dir, peek.cache_mb) {
        Ok(store) => store,
        Err(e @ StoreError::Locked { .. }) => {
            return Err(anyhow::Error::new(e).context("herald is running: stop it first (systemctl stop herald)"));
        }
        Err(e) => return Err(e.into()),
    };
    let to = PostgresStore::connect(pg.url.expose(), 2)?;
    to.claim_exclusive().context("the copy goes into a database no herald daemon uses")?;
    if !to.is_empty()? {
        bail!(
            "the PostgreSQL database {} already holds herald data, and herald copies only into an empty \
             database; nothing was written. Give an empty one (CREATE DATABASE ... OWNER ...)",
            pg.shown
        );
    }
    eprintln!("copying the sled store in {} into the PostgreSQL database {} ...", dir.display(), pg.shown);
    let started = std::time::Instant::now();
    let imported = copy::sled_to_postgres(&from, &to).with_context(|| {
        format!(
            "the copy stopped; the database {} may hold part of it: drop and create it again before copying again \
             (the state directory is as it was)",
            pg.shown
        )
    })?;
    eprintln!(
        "copied {} deliveries, {} posts, {} contents, {} metadata values and {} audit records in {:.1} s; comparing ...",
        imported.deliveries,
        imported.posts,
        imported.contents,
        imported.meta,
        imported.audit,
        started.elapsed().as_secs_f64()
    );
    let meta = copy::copied_meta(&from)?;
    let lines = copy::compare(&from, &to, &meta)?;
    let chain = crate::audit_chain::verify_store(&to, None)?;
    println!("{:<32} {:>24} {:>24}", "", "sled (source)", "PostgreSQL (copy)");
    for l in &lines {
        let mark = if l.same() { "" } else { "  DIFFERS" };
        println!("{:<32} {:>24} {:>24}{mark}", l.what, l.source, l.target);
    }
    let chain_ok = match &chain {
        Ok(v) => {
            let head = v.head.as_ref().map(|(seq, hash)| format!(", head {seq}:{hash}")).unwrap_or_default();
            println!("audit chain of the copy: intact ({} records{head})", v.records);
            true
        }
        Err(b) => {
            println!("audit chain of the copy: BROKEN at seq {}: {} ({})", b.seq, b.problem, b.detail);
            false
        }
    };
    if chain_ok && lines.iter().all(copy::Compared::same) {
        println!(
            "the copy is verified: start herald with this config, which now uses the PostgreSQL database {}. \
             The state directory {} is left as it was (herald keeps its control socket there); keep its store \
             until you are satisfied",
            pg.shown,
            dir.display()
        );
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "herald: the copy differs from the original (above): do not switch. Remove [store] to go on with \
             sled, and give an empty database before copying again"
        );
        Ok(ExitCode::FAILURE)
    }
}
