//! `herald store copy`: move a stopped herald's sled store into an empty
//! PostgreSQL database, or a PostgreSQL database back into a new sled
//! store, and prove the copy before anyone switches.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};

use crate::config::{PostgresSettings, StoreSettings};
use crate::store::StoreError;
use crate::store::copy::{self, Source, Target};
use crate::store::postgres::PostgresStore;
use crate::store::sled_store::SledStore;

/// Where `herald store copy` copies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// The PostgreSQL database `[store]` names, from the sled store in `[daemon] state_dir`.
    Postgres,
    /// A new sled store in `--state-dir`, from the PostgreSQL database `[store]` names.
    Sled,
}

pub fn copy(config: &Path, to: Backend, state_dir: Option<&Path>) -> anyhow::Result<ExitCode> {
    let peek = crate::config::peek(config).map_err(anyhow::Error::msg)?;
    let pg = match peek.store.map_err(anyhow::Error::msg)? {
        StoreSettings::Postgres(pg) => pg,
        StoreSettings::Sled => match to {
            Backend::Postgres => bail!(
                "{}: [store] names no PostgreSQL database to copy to; add\n\n[store]\nbackend = \"postgres\"\n\
                 url = {{ credential = \"herald-database-url\" }}\n\nto the config and run this again \
                 (README, \"Move a host onto PostgreSQL\")",
                config.display()
            ),
            Backend::Sled => bail!(
                "{}: [store] names no PostgreSQL database to copy from (the config uses sled already)",
                config.display()
            ),
        },
    };
    match to {
        Backend::Postgres if state_dir.is_some() => {
            bail!("--state-dir is for --to sled; --to postgres copies the store in [daemon] state_dir")
        }
        Backend::Postgres => to_postgres(&peek.state_dir, peek.cache_mb, &pg),
        Backend::Sled => {
            let Some(dir) = state_dir else {
                bail!(
                    "--to sled needs --state-dir DIR: a new directory (absent or empty) for the sled store. \
                     Not [daemon] state_dir ({}), which may hold the sled store the move to PostgreSQL left behind",
                    peek.state_dir.display()
                )
            };
            to_sled(dir, peek.cache_mb, &pg)
        }
    }
}

fn to_postgres(state_dir: &Path, cache_mb: u64, pg: &PostgresSettings) -> anyhow::Result<ExitCode> {
    let dir = std::path::absolute(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
    if !dir.join("db").exists() {
        bail!("there is no herald store in the state directory {} to copy", dir.display());
    }
    let from = match SledStore::open(&dir, cache_mb) {
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
    let what = format!("the sled store in {} into the PostgreSQL database {}", dir.display(), pg.shown);
    let undo = format!(
        "the database {} may hold part of it: drop and create it again before copying again (the state directory \
         is as it was)",
        pg.shown
    );
    if !copy_and_compare(&from, &to, &what, &undo, ("sled (source)", "PostgreSQL (copy)"))? {
        eprintln!(
            "herald: the copy differs from the original (above): do not switch. Remove [store] to go on with \
             sled, and give an empty database before copying again"
        );
        return Ok(ExitCode::FAILURE);
    }
    println!(
        "the copy is verified: start herald with this config, which now uses the PostgreSQL database {}. \
         The state directory {} is left as it was (herald keeps its control socket there); keep its store \
         until you are satisfied",
        pg.shown,
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn to_sled(state_dir: &Path, cache_mb: u64, pg: &PostgresSettings) -> anyhow::Result<ExitCode> {
    let dir = std::path::absolute(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
    // Never into a store, nor among other files: the copy makes a new store.
    let occupied = match std::fs::read_dir(&dir) {
        Ok(mut entries) => entries.next().is_some(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    if occupied && dir.join("db").exists() {
        bail!(
            "{} holds a herald store already, and herald never copies over one; nothing was written. \
             Give a new directory",
            dir.display()
        );
    }
    if occupied {
        bail!("{} is not empty; give a new or empty directory for the sled store", dir.display());
    }
    let from = PostgresStore::connect(pg.url.expose(), 2)?;
    crate::store::open::claim_offline(&from, "stop every herald daemon on the database (on every host) first")?;
    let to = SledStore::open(&dir, cache_mb)?;
    let what = format!("the PostgreSQL database {} into a new sled store in {}", pg.shown, dir.display());
    let undo = format!("remove the directory {} before copying again (the database is as it was)", dir.display());
    if !copy_and_compare(&from, &to, &what, &undo, ("PostgreSQL (source)", "sled (copy)"))? {
        eprintln!(
            "herald: the copy differs from the original (above): do not switch. Go on with PostgreSQL, and \
             remove {} before copying again",
            dir.display()
        );
        return Ok(ExitCode::FAILURE);
    }
    println!(
        "the copy is verified. To run on it, stop using the PostgreSQL database {}: remove [store] from the \
         config and set, under [daemon],\n\n    state_dir = \"{}\"\n\nthen start herald. The database is left as \
         it was; keep it until you are satisfied",
        pg.shown,
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Copy `from` into `to`, compare them and verify the copy's audit chain,
/// printing the table (`titles`: the source's and the copy's column).
/// True when everything agrees.
fn copy_and_compare<S, T>(from: &S, to: &T, what: &str, undo: &str, titles: (&str, &str)) -> anyhow::Result<bool>
where
    S: Source,
    T: Target + crate::store::Store,
{
    eprintln!("copying {what} ...");
    let started = std::time::Instant::now();
    let imported = copy::copy_all(from, to).with_context(|| format!("the copy stopped; {undo}"))?;
    eprintln!(
        "copied {} deliveries, {} posts, {} contents, {} metadata values and {} audit records in {:.1} s; comparing ...",
        imported.deliveries,
        imported.posts,
        imported.contents,
        imported.meta,
        imported.audit,
        started.elapsed().as_secs_f64()
    );
    let meta = from.copied_meta()?;
    let lines = copy::compare(from, to, &meta)?;
    let chain = crate::audit_chain::verify_store(to, None)?;
    println!("{:<32} {:>24} {:>24}", "", titles.0, titles.1);
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
    Ok(chain_ok && lines.iter().all(copy::Compared::same))
}
