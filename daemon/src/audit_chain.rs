//! The audit log's hash chain: how a record is sealed when it is written,
//! and how a run of records is verified (from a store or from an export).
//! Backend-neutral: records are seen as the bytes a store keeps, one JSON
//! object each, never through sled.
//!
//! The format, for an auditor re-implementing it (README "Auditing"):
//! a record's bytes are its JSON object, fields in the order of
//! [`AuditRecord`], empty optional fields left out, no whitespace, with
//! `hash` as the last member. Its canonical bytes are those bytes without
//! the final `,"hash":"…"` member. `hash` = hex SHA-256 of the canonical
//! bytes, which include `prev_hash`: the previous record's `hash`. The
//! first chained record's `prev_hash` is the SHA-256 of every record
//! before the chain (a store from before it), each record's bytes followed
//! by one newline; for a store that began with the chain, that is the
//! SHA-256 of nothing (`e3b0c442…b855`).

use std::fmt;

use sha2::{Digest, Sha256};

use crate::model::AuditRecord;

/// What closes a sealed record: `,"hash":"` + 64 hex digits + `"}`.
const HASH_PREFIX: &[u8] = b",\"hash\":\"";
const SUFFIX_LEN: usize = HASH_PREFIX.len() + 64 + 2;
/// How far a renumbered record is looked for (only once verification failed).
const RENUMBER_SEARCH: u64 = 1000;

fn sha256_hex(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    hex::encode(h.finalize())
}

/// The digest of the records written before the chain existed, each record's
/// bytes followed by a newline: the first chained record's `prev_hash`.
#[derive(Default)]
pub struct LegacyDigest(Sha256);

impl LegacyDigest {
    pub fn add(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
        self.0.update(b"\n");
    }

    pub fn finish(self) -> String {
        hex::encode(self.0.finalize())
    }
}

/// The last record of a log: the next record's sequence number follows
/// `seq`, and its `prev_hash` is `hash`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    pub seq: u64,
    pub hash: String,
    /// The log holds records from before the chain and none after: the next
    /// write starts the chain with a `chain_started` record.
    pub unstarted: bool,
}

impl ChainHead {
    /// The head of an empty log.
    pub fn empty() -> ChainHead {
        ChainHead { seq: 0, hash: LegacyDigest::default().finish(), unstarted: false }
    }

    /// `seq:hash`, as `herald audit verify --head` takes it.
    pub fn anchor(&self) -> String {
        format!("{}:{}", self.seq, self.hash)
    }
}

/// Seal `record` as the successor of `prev` (a record hash): set its
/// `prev_hash` and `hash`, and return the bytes to store.
pub fn seal(record: &mut AuditRecord, prev: &str) -> Vec<u8> {
    record.prev_hash = Some(prev.to_string());
    record.hash = None;
    let mut bytes = serde_json::to_vec(record).unwrap_or_default();
    let hash = sha256_hex(&[&bytes]);
    bytes.pop(); // the closing brace
    bytes.extend_from_slice(HASH_PREFIX);
    bytes.extend_from_slice(hash.as_bytes());
    bytes.extend_from_slice(b"\"}");
    record.hash = Some(hash);
    bytes
}

/// Numbers and seals the audit records of one write after the log's head:
/// gapless sequence numbers, each record chained to the one before. Both
/// store backends write their records through it, while they hold their
/// writer lock (sled: a mutex; PostgreSQL: the `chain_head` row, locked).
#[derive(Debug, Clone)]
pub struct ChainWriter {
    head: ChainHead,
}

impl ChainWriter {
    /// The record a write must append first, before its own: on a log
    /// whose records predate the chain, `chain_started`, committing to them.
    pub fn start_record(head: &ChainHead) -> Option<AuditRecord> {
        head.unstarted.then(|| {
            let reason = format!(
                "the hash chain starts here; prev_hash is the SHA-256 of records 1..{} as stored, each followed by a newline",
                head.seq
            );
            AuditRecord::about_herald(crate::model::Event::ChainStarted, chrono::Utc::now(), Some(reason))
        })
    }

    /// Append after `head` (the log's last record).
    pub fn new(head: &ChainHead) -> ChainWriter {
        ChainWriter { head: ChainHead { unstarted: false, ..head.clone() } }
    }

    /// Number `record` as the next one and seal it: the record as stored,
    /// and the bytes to store under its `seq`.
    pub fn append(&mut self, record: &AuditRecord) -> (AuditRecord, Vec<u8>) {
        let mut record = record.clone();
        record.seq = self.head.seq + 1;
        let bytes = seal(&mut record, &self.head.hash);
        self.head.seq = record.seq;
        self.head.hash = record.hash.clone().unwrap_or_default();
        (record, bytes)
    }

    /// The head after what was appended.
    pub fn head(&self) -> &ChainHead {
        &self.head
    }
}

/// The hash a sealed record's bytes carry, if its own bytes produce it.
fn intact_hash(bytes: &[u8]) -> Option<&str> {
    if bytes.len() < SUFFIX_LEN + 1 || !bytes.ends_with(b"\"}") {
        return None;
    }
    let cut = bytes.len() - SUFFIX_LEN;
    let (body, suffix) = bytes.split_at(cut);
    let hash = suffix.strip_prefix(HASH_PREFIX)?.strip_suffix(b"\"}")?;
    let hash = std::str::from_utf8(hash).ok()?;
    (sha256_hex(&[body, b"}"]) == hash).then_some(hash)
}

/// What is wrong at the first bad record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// A record's bytes no longer match its hash, or it is not a record.
    Altered,
    /// Records are gone (a gap, or a gap hidden by renumbering).
    Missing,
    /// A record that was not written there (a duplicate sequence number, or
    /// records added and the rest renumbered).
    Inserted,
    /// Records are out of order.
    Reordered,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Problem::Altered => "altered",
            Problem::Missing => "missing",
            Problem::Inserted => "inserted",
            Problem::Reordered => "reordered",
        })
    }
}

/// The first place where a log is not what herald wrote.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[error("the audit log is broken at seq {seq}: {problem}: {detail}")]
pub struct Break {
    pub seq: u64,
    pub problem: String,
    pub detail: String,
}

impl Break {
    fn new(seq: u64, problem: Problem, detail: impl Into<String>) -> Break {
        Break { seq, problem: problem.to_string(), detail: detail.into() }
    }
}

/// Where the records to verify begin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// At seq 1: a whole store or a complete export. Records from before
    /// the chain may come first.
    Beginning,
    /// After the record with this hash: a range of an export.
    After(String),
}

/// What a successful verification saw.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Verified {
    /// Records checked in all.
    pub records: u64,
    /// Records from before the chain, covered by the first chained record's digest.
    pub legacy: u64,
    pub first: Option<u64>,
    /// The last record's seq and hash (none when the log is empty or has only legacy records).
    pub head: Option<(u64, String)>,
    /// The anchored head that was checked, if one was given.
    pub anchored: Option<(u64, String)>,
}

/// One stored record: its key in the store (if it has one apart from its
/// `seq`) and its bytes.
pub type Raw = (Option<u64>, Vec<u8>);

/// Parse `SEQ:HASH`.
pub fn parse_head(text: &str) -> Result<(u64, String), String> {
    let (seq, hash) = text.trim().split_once(':').ok_or_else(|| format!("`{text}` is not SEQ:HASH"))?;
    let seq = seq.parse().map_err(|_| format!("`{seq}` in `{text}` is not a sequence number"))?;
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("`{hash}` in `{text}` is not a SHA-256 hash (64 hexadecimal digits)"));
    }
    Ok((seq, hash.to_ascii_lowercase()))
}

/// Verify records in the order given; the first problem is the answer.
/// `head` (seq, hash), when given, must be a record of the log: the log
/// still extends what was anchored.
pub fn verify<E, I>(records: I, start: Start, head: Option<(u64, String)>) -> Result<Result<Verified, Break>, E>
where
    I: IntoIterator<Item = Result<Raw, E>>,
{
    let mut records = records.into_iter();
    let mut out = Verified { records: 0, legacy: 0, first: None, head: None, anchored: None };
    let mut legacy = Some(LegacyDigest::default());
    let mut legacy_last = 0u64;
    // The previous record's seq and hash, once the chain runs.
    let mut prev: Option<(u64, String)> = match &start {
        Start::Beginning => None,
        Start::After(hash) => {
            legacy = None;
            Some((0, hash.clone()))
        }
    };
    while let Some(item) = records.next() {
        let (key, bytes) = item?;
        let expected = match (&prev, &start) {
            (Some((seq, _)), _) if *seq > 0 => seq + 1,
            (_, Start::Beginning) => legacy_last + 1,
            (_, Start::After(_)) => 0, // the range's first record sets it
        };
        let record: AuditRecord = match serde_json::from_slice(&bytes) {
            Ok(r) => r,
            Err(e) => {
                let at = key.unwrap_or(expected);
                return Ok(Err(Break::new(at, Problem::Altered, format!("not an audit record ({e})"))));
            }
        };
        let seq = record.seq;
        let expected = if expected == 0 { seq } else { expected };
        out.first.get_or_insert(seq);
        out.records += 1;
        let Some(claimed) = record.hash.clone() else {
            // Before the chain: only at the beginning of a whole log.
            match legacy.as_mut() {
                Some(digest) if prev.is_none() => {
                    if seq != expected {
                        return Ok(Err(out_of_order(seq, expected, &mut records)?));
                    }
                    digest.add(&bytes);
                    legacy_last = seq;
                    out.legacy += 1;
                    continue;
                }
                _ => {
                    return Ok(Err(Break::new(
                        seq,
                        Problem::Altered,
                        "it has no hash, but the chain runs before it (its hash was removed)",
                    )));
                }
            }
        };
        if intact_hash(&bytes) != Some(claimed.as_str()) {
            return Ok(Err(broken(&record, &bytes, &claimed)));
        }
        if seq != expected {
            return Ok(Err(out_of_order(seq, expected, &mut records)?));
        }
        let wanted_prev = match (&prev, legacy.take()) {
            (Some((_, hash)), _) => hash.clone(),
            (None, Some(digest)) => digest.finish(),
            (None, None) => String::new(),
        };
        if record.prev_hash.as_deref() != Some(wanted_prev.as_str()) {
            let detail = if prev.is_none() && out.legacy > 0 {
                format!(
                    "the records before the chain (seq 1..{legacy_last}) were changed, added or removed: \
                     their digest is {wanted_prev}, but the first chained record says {}",
                    record.prev_hash.as_deref().unwrap_or("nothing")
                )
            } else if prev.as_ref().is_some_and(|(s, _)| *s == 0) {
                format!(
                    "its prev_hash is {}, not the hash given with --prev ({wanted_prev})",
                    record.prev_hash.as_deref().unwrap_or("missing")
                )
            } else {
                format!(
                    "its prev_hash is {}, but the record before it has hash {wanted_prev}: the record before it \
                     was replaced, or records between them were removed and the chain recomputed",
                    record.prev_hash.as_deref().unwrap_or("missing")
                )
            };
            return Ok(Err(Break::new(seq, Problem::Altered, detail)));
        }
        if let Some(k) = key
            && k != seq
        {
            return Ok(Err(Break::new(seq, Problem::Reordered, format!("it is stored under key {k}"))));
        }
        if let Some((hseq, hhash)) = &head
            && *hseq == seq
        {
            if *hhash != claimed {
                return Ok(Err(Break::new(
                    seq,
                    Problem::Altered,
                    format!("the log was rewritten: seq {seq} has hash {claimed}, but the anchored head says {hhash}"),
                )));
            }
            out.anchored = Some((seq, claimed.clone()));
        }
        prev = Some((seq, claimed));
    }
    out.head = prev.filter(|(s, _)| *s > 0);
    if let Some((hseq, hhash)) = head
        && out.anchored.is_none()
    {
        let last = out.head.as_ref().map_or(legacy_last, |(s, _)| *s);
        let detail = if hseq > last {
            format!(
                "the log ends at seq {last}, before the anchored head {hseq}:{hhash}: it was truncated or rewritten"
            )
        } else {
            format!("the anchored head {hseq} is not among the records checked")
        };
        return Ok(Err(Break::new(hseq.min(last + 1), Problem::Missing, detail)));
    }
    Ok(Ok(out))
}

/// How many stored records are read at a time while verifying a store.
const PAGE: usize = 10_000;

/// Verify the whole audit log of a store, reading it a page at a time (the
/// store's writers go on meanwhile: what was appended after the last page
/// read is verified the next time).
pub fn verify_store(
    store: &dyn crate::store::Store,
    head: Option<(u64, String)>,
) -> Result<Result<Verified, Break>, crate::store::StoreError> {
    let mut after = None;
    let mut page = std::collections::VecDeque::new();
    let mut done = false;
    let records = std::iter::from_fn(move || {
        if page.is_empty() && !done {
            match store.audit_raw(after, PAGE) {
                Ok(next) => {
                    done = next.len() < PAGE;
                    after = next.last().map(|(k, _)| *k).or(after);
                    page.extend(next);
                }
                Err(e) => {
                    done = true;
                    return Some(Err(e));
                }
            }
        }
        page.pop_front().map(|(key, bytes)| Ok((Some(key), bytes)))
    });
    verify(records, Start::Beginning, head)
}

/// An intact record where another seq was expected: look at the rest to say
/// whether the expected one comes later (reordered) or never (missing).
fn out_of_order<E, I>(seq: u64, expected: u64, rest: &mut I) -> Result<Break, E>
where
    I: Iterator<Item = Result<Raw, E>>,
{
    if seq < expected {
        return Ok(Break::new(
            seq,
            Problem::Inserted,
            format!("a second record claims seq {seq}, after seq {}", expected - 1),
        ));
    }
    for item in rest {
        let (_, bytes) = item?;
        if serde_json::from_slice::<AuditRecord>(&bytes).is_ok_and(|r| r.seq == expected) {
            return Ok(Break::new(expected, Problem::Reordered, format!("seq {expected} comes after seq {seq}")));
        }
    }
    let detail = if seq == expected + 1 {
        format!("seq {expected} is gone (the next record is seq {seq})")
    } else {
        format!("seq {expected}..{} are gone (the next record is seq {seq})", seq - 1)
    };
    Ok(Break::new(expected, Problem::Missing, detail))
}

/// A record whose bytes do not give its hash: renumbered (records removed or
/// added before it, the rest renumbered), or altered.
fn broken(record: &AuditRecord, bytes: &[u8], claimed: &str) -> Break {
    let seq = record.seq;
    let mut probe = record.clone();
    probe.hash = None;
    for distance in 1..=RENUMBER_SEARCH {
        for original in [seq.checked_add(distance), seq.checked_sub(distance)].into_iter().flatten() {
            if original == 0 {
                continue;
            }
            probe.seq = original;
            let canonical = serde_json::to_vec(&probe).unwrap_or_default();
            if sha256_hex(&[&canonical]) == claimed {
                return if original > seq {
                    Break::new(
                        seq,
                        Problem::Missing,
                        format!(
                            "this record was written as seq {original}: {distance} record(s) before it were removed \
                             and the rest renumbered to hide the gap"
                        ),
                    )
                } else {
                    Break::new(
                        seq,
                        Problem::Inserted,
                        format!(
                            "this record was written as seq {original}: {distance} record(s) were inserted before it \
                             and the rest renumbered"
                        ),
                    )
                };
            }
        }
    }
    let how = if intact_hash(bytes).is_none() && !bytes.ends_with(b"\"}") {
        "its hash is not its last field, as herald writes it"
    } else {
        "its bytes no longer match its hash: it was changed after it was written"
    };
    Break::new(seq, Problem::Altered, how)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Event, from_millis};

    fn record(n: u64) -> AuditRecord {
        let mut r = AuditRecord::about_herald(Event::ConfigApplied, from_millis(1_700_000_000_000), None);
        r.reason = Some(format!("record {n} — with text that is not ASCII: 防范电信诈骗"));
        r.seq = n;
        r
    }

    fn chain(n: u64) -> Vec<Vec<u8>> {
        let mut prev = ChainHead::empty().hash;
        (1..=n)
            .map(|i| {
                let mut r = record(i);
                let bytes = seal(&mut r, &prev);
                prev = r.hash.unwrap();
                bytes
            })
            .collect()
    }

    fn run(lines: &[Vec<u8>]) -> Result<Verified, Break> {
        let items: Vec<Result<Raw, ()>> = lines.iter().map(|b| Ok((None, b.clone()))).collect();
        verify(items, Start::Beginning, None).unwrap()
    }

    #[test]
    fn a_sealed_record_reads_back_as_the_same_bytes() {
        let bytes = &chain(3)[2];
        let parsed: AuditRecord = serde_json::from_slice(bytes).unwrap();
        assert_eq!(&serde_json::to_vec(&parsed).unwrap(), bytes);
        assert!(intact_hash(bytes).is_some());
        assert_eq!(run(&chain(5)).unwrap().records, 5);
    }

    #[test]
    fn the_first_record_of_a_new_log_follows_the_digest_of_nothing() {
        assert_eq!(ChainHead::empty().hash, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }

    #[test]
    fn each_kind_of_tampering_is_named_at_its_sequence_number() {
        let good = chain(6);
        let edit = |i: usize, from: &str, to: &str| {
            let mut lines = good.clone();
            lines[i] = String::from_utf8(lines[i].clone()).unwrap().replace(from, to).into_bytes();
            lines
        };
        let b = run(&edit(2, "record 3", "record 9")).unwrap_err();
        assert_eq!((b.seq, b.problem.as_str()), (3, "altered"), "{b}");
        let mut gone = good.clone();
        gone.remove(3);
        let b = run(&gone).unwrap_err();
        assert_eq!((b.seq, b.problem.as_str()), (4, "missing"), "{b}");
        // Removed, and the rest renumbered: seq 4 now holds what was seq 5.
        let renumbered: Vec<Vec<u8>> = gone
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let text = String::from_utf8(l.clone()).unwrap();
                text.replacen(&format!("\"seq\":{}", i + 2), &format!("\"seq\":{}", i + 1), 1).into_bytes()
            })
            .collect();
        let b = run(&renumbered).unwrap_err();
        assert_eq!((b.seq, b.problem.as_str()), (4, "missing"), "{b}");
        let mut doubled = good.clone();
        doubled.insert(2, good[1].clone());
        let b = run(&doubled).unwrap_err();
        assert_eq!((b.seq, b.problem.as_str()), (2, "inserted"), "{b}");
        let mut swapped = good.clone();
        swapped.swap(1, 2);
        let b = run(&swapped).unwrap_err();
        assert_eq!((b.seq, b.problem.as_str()), (2, "reordered"), "{b}");
    }
}
