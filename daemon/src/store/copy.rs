//! `herald store copy`: a sled store moved into an empty PostgreSQL
//! database with its whole history, records byte for byte, then compared
//! with the original through the [`Store`] interface both implement, and
//! the copy's audit chain verified, before anyone switches.

use std::collections::BTreeMap;

use super::postgres::PostgresStore;
use super::postgres::import::{Imported, Records};
use super::sled_store::{Exported, SledStore};
use super::{DueKey, Result, Store, StoreError};

/// Records read from the source per batch.
const BATCH: usize = 5_000;

/// The sled store keeps the values written through `Changes::meta` under
/// `user/<key>`; its other metadata (schema version, counts) is its own
/// bookkeeping, which PostgreSQL keeps elsewhere.
const SLED_USER_PREFIX: &str = "user/";

fn text_key(what: &str, key: Vec<u8>) -> Result<String> {
    String::from_utf8(key).map_err(|_| StoreError::Corrupt(format!("{what}: a key is not UTF-8")))
}

/// `items` in batches of [`BATCH`]; an error ends them.
fn in_batches<T>(mut items: impl Iterator<Item = Result<T>>) -> impl Iterator<Item = Result<Vec<T>>> {
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed {
            return None;
        }
        let mut batch = Vec::new();
        for item in items.by_ref() {
            match item {
                Ok(item) => batch.push(item),
                Err(e) => {
                    failed = true;
                    return Some(Err(e));
                }
            }
            if batch.len() == BATCH {
                break;
            }
        }
        (!batch.is_empty()).then_some(Ok(batch))
    })
}

/// The metadata the copy moves: herald's values (pauses, approvals,
/// credentials, ...), by the key `Store::meta` reads them with.
pub fn copied_meta(from: &SledStore) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    for entry in from.export(Exported::Meta) {
        let (key, value) = entry?;
        if let Some(key) = text_key("metadata", key)?.strip_prefix(SLED_USER_PREFIX) {
            out.push((key.to_string(), value));
        }
    }
    Ok(out)
}

/// Copy everything `from` holds into `to` (which must hold no herald data:
/// the caller checks) in one transaction.
pub fn sled_to_postgres(from: &SledStore, to: &PostgresStore) -> Result<Imported> {
    let deliveries =
        in_batches(from.export(Exported::Deliveries).map(|e| e.map(|(_, v)| v))).map(|b| b.map(Records::Deliveries));
    let keyed = |what: &'static str, tree: Exported| {
        in_batches(from.export(tree).map(move |e| e.and_then(|(k, v)| Ok((text_key(what, k)?, v)))))
    };
    let posts = keyed("post", Exported::Posts).map(|b| b.map(Records::Posts));
    let contents = keyed("content", Exported::Contents).map(|b| b.map(Records::Contents));
    let meta = std::iter::once(copied_meta(from).map(Records::Meta));
    let mut after = None;
    let mut done = false;
    let audit = std::iter::from_fn(move || {
        if done {
            return None;
        }
        match from.audit_raw(after, BATCH) {
            Ok(page) if page.is_empty() => None,
            Ok(page) => {
                done = page.len() < BATCH;
                after = page.last().map(|(seq, _)| *seq);
                Some(Ok(Records::Audit(page)))
            }
            Err(e) => {
                done = true;
                Some(Err(e))
            }
        }
    });
    to.import(deliveries.chain(posts).chain(contents).chain(meta).chain(audit))
}

/// One thing compared between the two stores.
#[derive(Debug, Clone)]
pub struct Compared {
    pub what: String,
    pub source: String,
    pub target: String,
}

impl Compared {
    pub fn same(&self) -> bool {
        self.source == self.target
    }
}

fn line(what: &str, source: impl ToString, target: impl ToString) -> Compared {
    Compared { what: what.to_string(), source: source.to_string(), target: target.to_string() }
}

/// Every pending delivery in due order, as the scheduler reads it.
fn due_order(store: &dyn Store) -> Result<Vec<DueKey>> {
    let mut out: Vec<DueKey> = Vec::new();
    loop {
        let page = store.due(out.last(), i64::MAX, 2_000)?;
        if page.is_empty() {
            return Ok(out);
        }
        out.extend(page);
    }
}

/// Compare `target` with `source` through the store interface: deliveries
/// per state, the due order, in-flight deliveries, posts, timers, planned
/// occurrences, contents, the copied metadata (each key of `meta` read from
/// both), and the audit log record by record, byte for byte, and its head.
pub fn compare(source: &dyn Store, target: &dyn Store, meta: &[(String, Vec<u8>)]) -> Result<Vec<Compared>> {
    let mut lines = Vec::new();
    let (from, to) = (source.counts()?, target.counts()?);
    let states: std::collections::BTreeSet<_> = from.keys().chain(to.keys()).copied().collect();
    for state in states {
        let count = |c: &BTreeMap<crate::model::State, u64>| c.get(&state).copied().unwrap_or(0);
        lines.push(line(&format!("deliveries {}", state.name()), count(&from), count(&to)));
    }
    lines.push(line("deliveries retrying", source.retrying()?, target.retrying()?));
    let (from, to) = (due_order(source)?, due_order(target)?);
    let order = |keys: &[DueKey]| format!("{} in due order", keys.len());
    lines.push(line("due index", order(&from), if from == to { order(&to) } else { "a different order".into() }));
    let ids = |store: &dyn Store| -> Result<Vec<_>> { Ok(store.in_flight()?.into_iter().map(|d| d.id).collect()) };
    let (from, to) = (ids(source)?, ids(target)?);
    lines.push(line(
        "in flight",
        from.len(),
        if from == to { to.len().to_string() } else { "other deliveries".into() },
    ));
    let (from, to) = (source.post_ids()?, target.post_ids()?);
    lines.push(line("posts", from.len(), if from == to { to.len().to_string() } else { "other posts".into() }));
    let (from, to) = (source.timers_due(i64::MAX)?, target.timers_due(i64::MAX)?);
    lines.push(line("post timers", from.len(), if from == to { to.len().to_string() } else { "other timers".into() }));
    let (from, to) = (source.planned(usize::MAX)?, target.planned(usize::MAX)?);
    lines.push(line(
        "planned occurrences",
        from.len(),
        if from == to { to.len().to_string() } else { "others".into() },
    ));
    lines.push(line("planned deliveries", source.planned_deliveries()?, target.planned_deliveries()?));
    let (from, to) = (source.content_hashes("", usize::MAX)?, target.content_hashes("", usize::MAX)?);
    lines.push(line("contents", from.len(), if from == to { to.len().to_string() } else { "other contents".into() }));
    let mut differ = 0;
    for (key, _) in meta {
        let from = source.meta(key)?;
        if from.is_none() || target.meta(key)? != from {
            differ += 1;
        }
    }
    let copied = meta.len();
    lines.push(line(
        "metadata values",
        copied,
        if differ == 0 { copied.to_string() } else { format!("{differ} differ") },
    ));
    let (mut records, mut first_difference, mut after) = (0u64, None, None);
    loop {
        let (from, to) = (source.audit_raw(after, BATCH)?, target.audit_raw(after, BATCH)?);
        if first_difference.is_none() {
            first_difference = from.iter().zip(&to).find(|(a, b)| a != b).map(|(a, _)| a.0);
            if first_difference.is_none() && from.len() != to.len() {
                first_difference = Some(from.get(to.len()).or(to.get(from.len())).map_or(0, |r| r.0));
            }
        }
        records += from.len() as u64;
        if from.len() < BATCH {
            break;
        }
        after = from.last().map(|(seq, _)| *seq);
    }
    let copied = match first_difference {
        None => records.to_string(),
        Some(seq) => format!("differs from seq {seq}"),
    };
    lines.push(line("audit records (byte for byte)", records, copied));
    lines.push(line("audit head", source.audit_head()?.anchor(), target.audit_head()?.anchor()));
    Ok(lines)
}
