//! `herald store copy`: a store moved into an empty one of the other
//! backend with its whole history, records byte for byte, then compared
//! with the original through the [`Store`] interface both implement, and
//! the copy's audit chain verified, before anyone switches. Either way
//! round: sled into PostgreSQL (`--to postgres`), and back (`--to sled`).
//! Each backend reads its own records ([`Source`]) and writes another's
//! ([`Target`]); this module knows neither layout.

use std::collections::BTreeMap;

use super::postgres::{Import, PostgresStore};
use super::sled_store::{Exported, SledStore};
use super::{DueKey, Result, Store, StoreError, decode};
use crate::audit_chain::ChainHead;

/// Records read from the source per batch.
const BATCH: usize = 5_000;

/// The sled store keeps the values written through `Changes::meta` under
/// `user/<key>`; its other metadata (schema version, counts) is its own
/// bookkeeping, which PostgreSQL keeps elsewhere.
const SLED_USER_PREFIX: &str = "user/";

fn text_key(what: &str, key: Vec<u8>) -> Result<String> {
    String::from_utf8(key).map_err(|_| StoreError::Corrupt(format!("{what}: a key is not UTF-8")))
}

type Batches<'a> = Box<dyn Iterator<Item = Result<Vec<(Vec<u8>, Vec<u8>)>>> + 'a>;

/// A store a copy reads from.
pub trait Source: Store {
    /// The records of one kind ([`Exported::Deliveries`], `Posts` or
    /// `Contents`), key and value as stored, in batches of [`BATCH`] in key
    /// order; an error ends them.
    fn batches(&self, what: Exported) -> Batches<'_>;
    /// The metadata the copy moves: herald's values (pauses, approvals,
    /// credentials, ...), by the key `Store::meta` reads them with.
    fn copied_meta(&self) -> Result<Vec<(String, Vec<u8>)>>;
}

/// A new, empty store a copy writes into, as it is (no audit record of its own).
pub trait Target {
    fn import(&self, batch: &Import) -> Result<()>;
    /// After the last batch: the counts, the chain's head, durability.
    fn finish_import(&self) -> Result<ChainHead>;
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

impl Source for SledStore {
    fn batches(&self, what: Exported) -> Batches<'_> {
        Box::new(in_batches(self.export(what)))
    }

    fn copied_meta(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let mut out = Vec::new();
        for entry in self.export(Exported::Meta) {
            let (key, value) = entry?;
            if let Some(key) = text_key("metadata", key)?.strip_prefix(SLED_USER_PREFIX) {
                out.push((key.to_string(), value));
            }
        }
        Ok(out)
    }
}

impl Source for PostgresStore {
    fn batches(&self, what: Exported) -> Batches<'_> {
        let (mut after, mut done) = (None::<Vec<u8>>, false);
        Box::new(std::iter::from_fn(move || {
            if done {
                return None;
            }
            let page = self.export_page(what, after.as_deref(), BATCH);
            done = page.as_ref().map_or(true, |p| p.len() < BATCH);
            if let Ok(page) = &page {
                after = Some(page.last()?.0.clone());
            }
            Some(page)
        }))
    }

    fn copied_meta(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let mut out = Vec::new();
        for batch in self.batches(Exported::Meta) {
            for (key, value) in batch? {
                out.push((text_key("metadata", key)?, value));
            }
        }
        Ok(out)
    }
}

impl Target for PostgresStore {
    fn import(&self, batch: &Import) -> Result<()> {
        PostgresStore::import(self, batch)
    }

    fn finish_import(&self) -> Result<ChainHead> {
        PostgresStore::finish_import(self)
    }
}

impl Target for SledStore {
    fn import(&self, batch: &Import) -> Result<()> {
        SledStore::import(self, batch)
    }

    fn finish_import(&self) -> Result<ChainHead> {
        SledStore::finish_import(self)
    }
}

/// How many records of each kind a copy wrote.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Imported {
    pub deliveries: u64,
    pub posts: u64,
    pub contents: u64,
    pub meta: u64,
    pub audit: u64,
}

/// Copy everything `from` holds into `to` (which must hold no herald data:
/// the caller checks), in batches, then let `to` count, set the chain's
/// head and make it all durable. The audit records keep their bytes and
/// sequence numbers.
pub fn copy_all(from: &dyn Source, to: &dyn Target) -> Result<Imported> {
    let mut imported = Imported::default();
    for batch in from.batches(Exported::Deliveries) {
        let deliveries = batch?.iter().map(|(_, v)| decode("delivery", v)).collect::<Result<Vec<_>>>()?;
        imported.deliveries += deliveries.len() as u64;
        to.import(&Import { deliveries, ..Import::default() })?;
    }
    for batch in from.batches(Exported::Posts) {
        let posts = batch?
            .into_iter()
            .map(|(k, v)| Ok((text_key("post", k)?, decode("post record", &v)?)))
            .collect::<Result<Vec<_>>>()?;
        imported.posts += posts.len() as u64;
        to.import(&Import { posts, ..Import::default() })?;
    }
    for batch in from.batches(Exported::Contents) {
        let contents = batch?
            .into_iter()
            .map(|(k, v)| Ok((text_key("content", k)?, decode("content", &v)?)))
            .collect::<Result<Vec<_>>>()?;
        imported.contents += contents.len() as u64;
        to.import(&Import { contents, ..Import::default() })?;
    }
    let meta = from.copied_meta()?;
    imported.meta = meta.len() as u64;
    to.import(&Import { meta, ..Import::default() })?;
    let mut after = None;
    loop {
        let audit = from.audit_raw(after, BATCH)?;
        let Some((last, _)) = audit.last() else { break };
        after = Some(*last);
        let full = audit.len() == BATCH;
        imported.audit += audit.len() as u64;
        to.import(&Import { audit, ..Import::default() })?;
        if !full {
            break;
        }
    }
    to.finish_import()?;
    Ok(imported)
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

#[cfg(test)]
mod tests {
    use herald_adapters::Platform;

    use super::*;
    use crate::model::{AuditRecord, Content, Delivery, DeliveryId, Event, State, from_millis};
    use crate::store::postgres::testing::fresh_database;
    use crate::store::{Changes, Planned, PostRecord};

    const STATES: [State; 6] =
        [State::Pending, State::InFlight, State::Delivered, State::Failed, State::Cancelled, State::Skipped];

    /// `n` deliveries in every state (some pending ones retrying), each
    /// with its audit record and a note for some, written 1,000 at a time;
    /// 50 posts with timers, one in five with a planned occurrence; two
    /// contents; herald's metadata (a pause list, a cached credential).
    fn history(store: &SledStore, n: usize) {
        let rendered = herald_adapters::Rendered { text: "the warning".into(), ..Default::default() };
        let content = Content { rendered, image_sha256: Vec::new() };
        let posts = (0..50)
            .map(|p| {
                let planned = (p % 5 == 0).then(|| Planned {
                    occurrence: 90_000_000,
                    targets: vec![("acct-1".into(), Platform::Webhook); 3],
                });
                (
                    format!("post-{p:02}"),
                    Some(PostRecord { hash: format!("h{p}"), current: Some(1_000), timer: Some(5_000 + p), planned }),
                )
            })
            .collect();
        store
            .apply(Changes {
                posts,
                contents: vec![("3f9c2a11".into(), content.clone()), ("77aa0000".into(), content)],
                meta: vec![
                    ("control/pauses".into(), br#"[{"selector":{"post":"post-01"}}]"#.to_vec()),
                    ("credential/acct-1/token".into(), b"t0ken".to_vec()),
                ],
                ..Changes::default()
            })
            .unwrap();
        let all: Vec<usize> = (0..n).collect();
        for chunk in all.chunks(1_000) {
            let mut changes = Changes::default();
            for &i in chunk {
                let (post, account, occurrence) =
                    (format!("post-{:02}", i % 50), format!("acct-{}", i % 7), 1_000 + (i / 350) as i64 * 60_000);
                let state = STATES[i % STATES.len()];
                let d = Delivery {
                    id: DeliveryId::derive(&post, occurrence, &account),
                    post_id: post,
                    account,
                    platform: Platform::Webhook,
                    occurrence,
                    state,
                    attempt: (i % 12 == 0) as u32,
                    due: occurrence + (i % 13) as i64,
                    content_hash: "3f9c2a11".into(),
                    uncertain: false,
                    reason: None,
                    remote_id: None,
                    url: None,
                    updated: 0,
                    held: None,
                };
                let record = AuditRecord::of(&d, Event::Scheduled, from_millis(occurrence));
                if i % 10 == 0 {
                    changes.notes.push(AuditRecord::of(&d, Event::Alerted, from_millis(occurrence)));
                }
                changes.deliveries.push((d, record));
            }
            store.apply(changes).unwrap();
        }
        store.flush().unwrap();
    }

    fn differing(lines: &[Compared]) -> Vec<String> {
        lines.iter().filter(|l| !l.same()).map(|l| format!("{}: {} / {}", l.what, l.source, l.target)).collect()
    }

    #[test]
    fn postgres_a_copy_compares_equal_and_a_changed_record_or_value_shows() {
        let Some(url) = fresh_database() else { return };
        let dir = tempfile::tempdir().unwrap();
        let from = SledStore::open(dir.path(), 8).unwrap();
        history(&from, 700);
        let to = PostgresStore::connect(&url, 2).unwrap();
        assert!(to.is_empty().unwrap());
        let imported = copy_all(&from, &to).unwrap();
        assert_eq!((imported.deliveries, imported.posts, imported.contents, imported.meta), (700, 50, 2, 2));
        assert_eq!(imported.audit, 700 + 70);
        assert!(!to.is_empty().unwrap());
        let meta = from.copied_meta().unwrap();
        let lines = compare(&from, &to, &meta).unwrap();
        assert!(differing(&lines).is_empty(), "{:?}", differing(&lines));
        assert_eq!(from.counts().unwrap().get(&State::Pending), Some(&117));
        let verified = crate::audit_chain::verify_store(&to, None).unwrap().unwrap();
        assert_eq!(verified.records, 770);

        // The comparison sees a record that is not the original's, and a value.
        let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        client
            .execute("UPDATE audit SET record = (SELECT record FROM audit WHERE seq = 6) WHERE seq = 5", &[])
            .unwrap();
        client.execute("UPDATE meta SET value = 'x' WHERE key = 'control/pauses'", &[]).unwrap();
        let lines = compare(&from, &to, &meta).unwrap();
        assert_eq!(
            differing(&lines),
            ["metadata values: 2 / 1 differ", "audit records (byte for byte): 770 / differs from seq 5"]
        );
        assert_eq!(crate::audit_chain::verify_store(&to, None).unwrap().unwrap_err().seq, 5);
    }

    /// A sled store in a temporary directory holding [`history`] of `n`
    /// deliveries, copied to a fresh database (`None`: no test server).
    fn copied_to_postgres(n: usize) -> Option<(String, tempfile::TempDir, SledStore, PostgresStore)> {
        let url = fresh_database()?;
        let dir = tempfile::tempdir().unwrap();
        let original = SledStore::open(&dir.path().join("original"), 8).unwrap();
        history(&original, n);
        let pg = PostgresStore::connect(&url, 2).unwrap();
        copy_all(&original, &pg).unwrap();
        Some((url, dir, original, pg))
    }

    #[test]
    fn postgres_a_copy_back_to_sled_is_the_original_and_keeps_what_daemons_wrote_since() {
        let Some((url, dir, original, pg)) = copied_to_postgres(700) else { return };

        // There and back: the new sled store is the original, read through
        // the interface, its bookkeeping (counts, indexes) included, even
        // after it is closed and opened again.
        let back = SledStore::open(&dir.path().join("back"), 8).unwrap();
        let imported = copy_all(&pg, &back).unwrap();
        assert_eq!((imported.deliveries, imported.posts, imported.contents, imported.meta), (700, 50, 2, 2));
        assert_eq!(imported.audit, 770);
        drop(back);
        let back = SledStore::open(&dir.path().join("back"), 8).unwrap();
        let lines = compare(&original, &back, &original.copied_meta().unwrap()).unwrap();
        assert!(differing(&lines).is_empty(), "{:?}", differing(&lines));
        assert_eq!(back.counts().unwrap().get(&State::Pending), Some(&117));
        assert_eq!(back.in_flight().unwrap().len(), 117);
        let head = original.audit_head().unwrap();
        assert_eq!(back.audit_head().unwrap().anchor(), head.anchor());
        let verified = crate::audit_chain::verify_store(&back, Some((head.seq, head.hash.clone()))).unwrap().unwrap();
        assert_eq!(verified.records, 770);

        // A daemon on PostgreSQL writes on (its name in each record); the
        // copy back carries its records byte for byte, and sled writes on.
        let daemon = PostgresStore::connect(&url, 2).unwrap().identify("host-b pid 7 boot 9c");
        let mut sent = pg.deliveries_in_state(State::Pending, 1).unwrap().remove(0);
        sent.state = State::Delivered;
        let record = AuditRecord::of(&sent, Event::Delivered, from_millis(2_000));
        daemon
            .apply(Changes {
                deliveries: vec![(sent.clone(), record)],
                meta: vec![("control/approvals".into(), br#"["post-02"]"#.to_vec())],
                ..Changes::default()
            })
            .unwrap();
        let later = SledStore::open(&dir.path().join("later"), 8).unwrap();
        copy_all(&pg, &later).unwrap();
        let lines = compare(&pg, &later, &pg.copied_meta().unwrap()).unwrap();
        assert!(differing(&lines).is_empty(), "{:?}", differing(&lines));
        assert_eq!(later.meta("control/approvals").unwrap().as_deref(), Some(&br#"["post-02"]"#[..]));
        assert_eq!(later.delivery(sent.id).unwrap(), Some(sent));
        let last = later.audit_raw(Some(770), 10).unwrap();
        assert_eq!(last, pg.audit_raw(Some(770), 10).unwrap());
        assert!(String::from_utf8_lossy(&last[0].1).contains(r#""daemon":"host-b pid 7 boot 9c""#));
        let next = crate::store::conformance::put(
            &later,
            &crate::store::conformance::delivery(9, State::Pending, 5_000),
            Event::Scheduled,
        );
        assert_eq!(next[0].seq, 772, "sled numbers on from the copied log");
        later.flush().unwrap();
        assert_eq!(crate::audit_chain::verify_store(&later, None).unwrap().unwrap().records, 772);
    }

    /// PostgreSQL's pages, small ones here, follow each other without a
    /// gap or a repeat: the same keys and bytes as the sled store holds.
    #[test]
    fn postgres_pages_of_each_table_hold_every_record_once() {
        let Some((_, _dir, original, pg)) = copied_to_postgres(10) else { return };
        for what in [Exported::Deliveries, Exported::Posts, Exported::Contents, Exported::Meta] {
            let mut paged: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
            loop {
                let page = pg.export_page(what, paged.last().map(|(k, _)| k.as_slice()), 3).unwrap();
                if page.is_empty() {
                    break;
                }
                paged.extend(page);
            }
            let mut stored: Vec<_> = original.export(what).collect::<Result<_>>().unwrap();
            if what == Exported::Meta {
                stored = original.copied_meta().unwrap().into_iter().map(|(k, v)| (k.into_bytes(), v)).collect();
            }
            assert_eq!(paged, stored, "{what:?}");
        }
    }

    /// A copy back to sled into a store that holds a record already stops
    /// rather than overwrite it.
    #[test]
    fn postgres_a_copy_back_never_overwrites_a_record() {
        let Some((_, _dir, original, pg)) = copied_to_postgres(10) else { return };
        let err = copy_all(&pg, &original).unwrap_err();
        assert!(err.to_string().contains("twice"), "{err}");
    }

    /// How long a copy takes, each way (printed; `--ignored --nocapture`):
    /// 100,000 deliveries and 110,000 audit records, sled to PostgreSQL,
    /// then back into a new sled store.
    #[test]
    #[ignore]
    fn postgres_copy_of_100k_deliveries_timed() {
        let Some(url) = fresh_database() else { return };
        let dir = tempfile::tempdir().unwrap();
        let from = SledStore::open(&dir.path().join("from"), 64).unwrap();
        history(&from, 100_000);
        let to = PostgresStore::connect(&url, 2).unwrap();
        timed("sled to PostgreSQL", &from, &to);
        let back = SledStore::open(&dir.path().join("back"), 64).unwrap();
        timed("PostgreSQL to sled", &to, &back);
    }

    fn timed<T: Target + Store>(way: &str, from: &dyn Source, to: &T) {
        let started = std::time::Instant::now();
        let imported = copy_all(from, to).unwrap();
        let copied = started.elapsed();
        let lines = compare(from, to, &from.copied_meta().unwrap()).unwrap();
        let compared = started.elapsed() - copied;
        assert!(differing(&lines).is_empty(), "{:?}", differing(&lines));
        println!(
            "{way}: copied {} deliveries and {} audit records in {:.1} s, compared in {:.1} s",
            imported.deliveries,
            imported.audit,
            copied.as_secs_f64(),
            compared.as_secs_f64()
        );
    }
}
