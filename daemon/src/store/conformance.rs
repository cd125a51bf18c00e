//! One store test suite, run against each backend: what every [`Store`]
//! must do, seen only through the trait. `sled_store.rs` and
//! `postgres/mod.rs` call each function from a test of their own
//! (`sled_…`, `postgres_…`); what only one backend has (sled's lock file
//! and files on disk, PostgreSQL's connections and claims) is tested there.

use std::collections::BTreeMap;

use herald_adapters::Platform;

use super::{AuditQuery, Changes, Planned, PostRecord, Store};
use crate::audit_chain::{self, ChainHead};
use crate::model::{AuditRecord, Content, Delivery, DeliveryId, Event, Millis, State, from_millis};

/// A store under test: `open` opens the same store again each time (the
/// caller drops the previous one first: sled allows one opener).
pub struct Subject {
    open: Box<dyn Fn() -> Box<dyn Store>>,
}

impl Subject {
    pub fn new(open: impl Fn() -> Box<dyn Store> + 'static) -> Subject {
        Subject { open: Box::new(open) }
    }

    fn open(&self) -> Box<dyn Store> {
        (self.open)()
    }
}

pub fn delivery(n: u8, state: State, due: Millis) -> Delivery {
    Delivery {
        id: DeliveryId([n; 16]),
        post_id: format!("post-{}", n % 2),
        account: "wuhan".into(),
        platform: Platform::Webhook,
        occurrence: due,
        state,
        attempt: 0,
        due,
        content_hash: "h".into(),
        uncertain: false,
        reason: None,
        remote_id: None,
        url: None,
        updated: 0,
        held: None,
    }
}

pub fn put(store: &dyn Store, d: &Delivery, event: Event) -> Vec<AuditRecord> {
    let record = AuditRecord::of(d, event, from_millis(0));
    store.apply(Changes { deliveries: vec![(d.clone(), record)], ..Changes::default() }).unwrap()
}

pub fn verify(store: &dyn Store) -> std::result::Result<audit_chain::Verified, audit_chain::Break> {
    let raw: Vec<std::result::Result<audit_chain::Raw, super::StoreError>> =
        store.audit_raw(None, usize::MAX).unwrap().into_iter().map(|(k, v)| Ok((Some(k), v))).collect();
    audit_chain::verify(raw, audit_chain::Start::Beginning, None).unwrap()
}

fn seqs(store: &dyn Store, query: &AuditQuery) -> Vec<u64> {
    store.audit(query).unwrap().iter().map(|r| r.seq).collect()
}

pub fn the_due_index_follows_each_state_change(subject: &Subject) {
    let store = subject.open();
    let store = store.as_ref();
    for (n, due) in [(1u8, 3_000), (2, 1_000), (3, 2_000)] {
        put(store, &delivery(n, State::Pending, due), Event::Scheduled);
    }
    let due: Vec<Millis> = store.due(None, 2_500, 10).unwrap().iter().map(|k| k.due).collect();
    assert_eq!(due, vec![1_000, 2_000]);
    let first = store.due(None, i64::MAX, 1).unwrap();
    let rest: Vec<Millis> = store.due(first.first(), i64::MAX, 10).unwrap().iter().map(|k| k.due).collect();
    assert_eq!(rest, vec![2_000, 3_000], "paging after a key");
    assert_eq!(first[0].account, "wuhan");
    let mut d = delivery(2, State::InFlight, 1_000);
    d.attempt = 1;
    put(store, &d, Event::Attempt);
    assert_eq!(store.due(None, i64::MAX, 10).unwrap().len(), 2);
    assert_eq!(store.in_flight().unwrap().len(), 1);
    d.state = State::Pending;
    d.due = 5_000;
    put(store, &d, Event::RetryScheduled);
    assert_eq!(store.in_flight().unwrap().len(), 0);
    assert_eq!(store.next_due_after(3_000).unwrap(), Some(5_000));
    assert_eq!(store.next_due_after(5_000).unwrap(), None);
    let counts = store.counts().unwrap();
    assert_eq!((counts[&State::Pending], counts[&State::InFlight]), (3, 0));
    assert_eq!(store.retrying().unwrap(), 1, "pending after an attempt");
    assert_eq!(store.deliveries_of_post("post-0").unwrap().len(), 1);
    assert_eq!(store.deliveries_of_post("post-1").unwrap().len(), 2);
    assert_eq!(store.deliveries_of_occurrence("post-1", 3_000).unwrap().len(), 1);
    assert_eq!(store.delivery(DeliveryId([2; 16])).unwrap(), Some(d));
    assert_eq!(store.delivery(DeliveryId([9; 16])).unwrap(), None);
}

pub fn several_changes_of_one_delivery_in_one_set_count_once(subject: &Subject) {
    let store = subject.open();
    let d = delivery(1, State::Pending, 1_000);
    let mut sent = d.clone();
    sent.state = State::InFlight;
    sent.attempt = 1;
    let changes = Changes {
        deliveries: vec![
            (d.clone(), AuditRecord::of(&d, Event::Scheduled, from_millis(0))),
            (sent.clone(), AuditRecord::of(&sent, Event::Attempt, from_millis(0))),
        ],
        ..Changes::default()
    };
    let stored = store.apply(changes).unwrap();
    assert_eq!(stored.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2]);
    let counts = store.counts().unwrap();
    assert_eq!((counts[&State::Pending], counts[&State::InFlight]), (0, 1));
    assert_eq!(store.delivery(d.id).unwrap(), Some(sent));
    assert!(store.due(None, i64::MAX, 10).unwrap().is_empty());
}

pub fn audit_sequence_numbers_have_no_gaps_across_reopening(subject: &Subject) {
    {
        let store = subject.open();
        for n in 0..5 {
            put(store.as_ref(), &delivery(n, State::Pending, 1), Event::Scheduled);
        }
        store.flush().unwrap();
    }
    let store = subject.open();
    let stored = put(store.as_ref(), &delivery(9, State::Pending, 1), Event::Scheduled);
    assert_eq!(stored[0].seq, 6);
    store.flush().unwrap();
    assert_eq!(seqs(store.as_ref(), &AuditQuery::default()), vec![1, 2, 3, 4, 5, 6]);
}

pub fn every_record_is_chained_to_the_one_before_across_reopening(subject: &Subject) {
    {
        let store = subject.open();
        put(store.as_ref(), &delivery(1, State::Pending, 1), Event::Scheduled);
        store.flush().unwrap();
    }
    let store = subject.open();
    let stored = put(store.as_ref(), &delivery(2, State::Pending, 1), Event::Scheduled);
    store.flush().unwrap();
    let first = store.audit(&AuditQuery::default()).unwrap().remove(0);
    assert_eq!(first.prev_hash.as_deref(), Some(ChainHead::empty().hash.as_str()));
    assert_eq!(stored[0].prev_hash, first.hash, "the chain carries over a restart");
    let verified = verify(store.as_ref()).unwrap();
    assert_eq!((verified.records, verified.legacy), (2, 0));
    assert_eq!(store.audit_head().unwrap().anchor(), format!("2:{}", stored[0].hash.as_ref().unwrap()));
}

/// A flushed record is shown at once, and the audit filters select as they say.
pub fn flushed_audit_records_are_shown_and_filtered(subject: &Subject) {
    let store = subject.open();
    let store = store.as_ref();
    put(store, &delivery(1, State::Pending, 1), Event::Scheduled);
    store.flush().unwrap();
    assert_eq!(seqs(store, &AuditQuery::default()), [1]);
    let mut other = delivery(2, State::Pending, 1);
    other.account = "xian-weibo".into();
    put(store, &other, Event::Scheduled);
    put(store, &delivery(2, State::Failed, 1), Event::Failed);
    store.flush().unwrap();
    assert_eq!(seqs(store, &AuditQuery { after_seq: Some(1), ..AuditQuery::default() }), [2, 3]);
    assert_eq!(seqs(store, &AuditQuery { account: Some("xian-*".into()), ..AuditQuery::default() }), [2]);
    assert_eq!(seqs(store, &AuditQuery { account: Some("wuhan".into()), ..AuditQuery::default() }), [1, 3]);
    assert_eq!(seqs(store, &AuditQuery { post: Some("post-0".into()), ..AuditQuery::default() }), [2, 3]);
    assert_eq!(seqs(store, &AuditQuery { events: vec![Event::Failed], ..AuditQuery::default() }), [3]);
    assert_eq!(seqs(store, &AuditQuery { delivery: Some(DeliveryId([1; 16])), ..AuditQuery::default() }), [1]);
    assert_eq!(seqs(store, &AuditQuery { limit: Some(2), ..AuditQuery::default() }), [1, 2]);
    let at = from_millis(0);
    assert_eq!(seqs(store, &AuditQuery { since: Some(at), ..AuditQuery::default() }), [1, 2, 3]);
    assert!(seqs(store, &AuditQuery { until: Some(at), ..AuditQuery::default() }).is_empty());
    assert_eq!(store.audit_raw(Some(1), 1).unwrap().iter().map(|(k, _)| *k).collect::<Vec<_>>(), [2]);
}

pub fn failed_deliveries_are_listed_and_leave_the_list_when_requeued(subject: &Subject) {
    let store = subject.open();
    let store = store.as_ref();
    for n in 1..=4u8 {
        put(store, &delivery(n, State::Pending, 1_000), Event::Scheduled);
    }
    put(store, &delivery(2, State::Failed, 1_000), Event::Failed);
    put(store, &delivery(3, State::Failed, 1_000), Event::Failed);
    put(store, &delivery(3, State::Pending, 2_000), Event::Requeued);
    let failed: Vec<DeliveryId> = store.deliveries_in_state(State::Failed, 10).unwrap().iter().map(|d| d.id).collect();
    assert_eq!(failed, [DeliveryId([2; 16])], "a requeued delivery leaves the index");
    let pending = store.deliveries_in_state(State::Pending, 2).unwrap();
    assert_eq!(pending.iter().map(|d| d.id).collect::<Vec<_>>(), [DeliveryId([1; 16]), DeliveryId([3; 16])]);
    let counts = store.counts().unwrap();
    assert_eq!((counts[&State::Pending], counts[&State::Failed]), (3, 1));
}

/// Post records keep their timers and planned occurrences in step, and
/// contents and metadata read back as written.
pub fn posts_timers_plans_contents_and_meta_read_back(subject: &Subject) {
    let store = subject.open();
    let store = store.as_ref();
    let plan = Planned { occurrence: 9_000, targets: vec![("wuhan".into(), Platform::Webhook); 3] };
    let record = |timer: Option<Millis>, planned: Option<Planned>| PostRecord {
        hash: "def".into(),
        current: None,
        timer,
        planned,
    };
    let rendered = herald_adapters::Rendered { text: "the warning".into(), ..Default::default() };
    let content = Content { rendered, image_sha256: Vec::new() };
    store
        .apply(Changes {
            posts: vec![
                ("b-post".into(), Some(record(Some(2_000), Some(plan.clone())))),
                ("a-post".into(), Some(record(Some(2_000), None))),
                ("c-post".into(), Some(record(Some(7_000), None))),
            ],
            contents: vec![("3f9c2a11".into(), content.clone()), ("3f9d0000".into(), content.clone())],
            meta: vec![("credential/x".into(), b"v1".to_vec())],
            ..Changes::default()
        })
        .unwrap();
    assert_eq!(store.post_ids().unwrap(), ["a-post", "b-post", "c-post"]);
    assert_eq!(store.timers_due(2_000).unwrap(), [(2_000, "a-post".to_string()), (2_000, "b-post".to_string())]);
    assert_eq!(store.next_timer().unwrap(), Some(2_000));
    assert_eq!(store.planned(10).unwrap(), [("b-post".to_string(), plan.clone())]);
    assert_eq!(store.planned_deliveries().unwrap(), 3);
    assert_eq!(store.post("b-post").unwrap().unwrap().planned, Some(plan));
    assert_eq!(store.content("3f9c2a11").unwrap(), Some(content.clone()));
    assert!(store.has_content("3f9d0000").unwrap() && !store.has_content("3f9").unwrap());
    assert_eq!(store.content_hashes("3f9", 10).unwrap(), ["3f9c2a11", "3f9d0000"]);
    assert_eq!(store.content_hashes("3f9c", 10).unwrap(), ["3f9c2a11"]);
    assert_eq!(store.meta("credential/x").unwrap(), Some(b"v1".to_vec()));
    assert_eq!(store.meta("credential/y").unwrap(), None);
    // The plan carried out, a post removed: timers and counts follow.
    store
        .apply(Changes {
            posts: vec![("b-post".into(), Some(record(Some(9_000), None))), ("a-post".into(), None)],
            meta: vec![("credential/x".into(), b"v2".to_vec())],
            ..Changes::default()
        })
        .unwrap();
    assert_eq!(store.post_ids().unwrap(), ["b-post", "c-post"]);
    assert_eq!(store.timers_due(8_000).unwrap(), [(7_000, "c-post".to_string())]);
    assert!(store.planned(10).unwrap().is_empty());
    assert_eq!(store.planned_deliveries().unwrap(), 0);
    assert_eq!(store.meta("credential/x").unwrap(), Some(b"v2".to_vec()));
    assert!(store.audit(&AuditQuery::default()).unwrap().is_empty(), "these changes carry no audit record");
}

/// The daemon's writers at once, as in `herald run` (ARCHITECTURE,
/// "Several writers, one delivery writer"): the scheduler's delivery
/// changes, alert senders' notes and the credential cache's keys, each
/// flushing on its own thread. The log stays gapless and chained, and
/// each writer's flush shows its own record at once.
pub fn several_writers_at_once_keep_the_log_gapless_chained_and_durable(subject: &Subject) {
    let store = subject.open();
    let store = store.as_ref();
    const EACH: u64 = 150;
    let shown_after_own_flush = |record: &AuditRecord| {
        let query = AuditQuery { after_seq: Some(record.seq - 1), limit: Some(1), ..AuditQuery::default() };
        store.audit(&query).unwrap().first().map(|r| r.seq) == Some(record.seq)
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            for n in 0..EACH {
                let mut d = delivery((n % 200) as u8, State::Pending, n as Millis);
                d.post_id = format!("post-{n}");
                let stored = put(store, &d, Event::Scheduled);
                store.flush().unwrap();
                assert!(shown_after_own_flush(&stored[0]));
            }
        });
        s.spawn(|| {
            for n in 0..EACH {
                let note = AuditRecord::about_herald(Event::AuditHead, from_millis(0), Some(format!("note {n}")));
                let stored = store.apply(Changes { notes: vec![note], ..Changes::default() }).unwrap();
                store.flush().unwrap();
                assert!(shown_after_own_flush(&stored[0]));
            }
        });
        s.spawn(|| {
            for n in 0..EACH {
                let meta = vec![(format!("credential/token-{}", n % 3), n.to_string().into_bytes())];
                store.apply(Changes { meta, ..Changes::default() }).unwrap();
                store.flush().unwrap();
            }
        });
    });
    assert_eq!(seqs(store, &AuditQuery::default()), (1..=2 * EACH).collect::<Vec<_>>());
    assert_eq!(verify(store).unwrap().records, 2 * EACH);
    assert_eq!(store.meta("credential/token-2").unwrap(), Some(b"149".to_vec()));
    let counts: BTreeMap<State, u64> = store.counts().unwrap();
    assert_eq!(counts[&State::Pending], 150);
}

/// `#[test]`s, one per function of the suite, each on a new store from
/// `$subject` (an `Option<Subject>`: `None` skips, as without a PostgreSQL
/// server). A backend's test module calls it inside a module of its own
/// (`mod sled_conformance { … }`), so every backend runs every function.
macro_rules! conformance_tests {
    ($subject:expr) => {
        $crate::store::conformance::conformance_tests!(@each $subject;
            the_due_index_follows_each_state_change,
            several_changes_of_one_delivery_in_one_set_count_once,
            audit_sequence_numbers_have_no_gaps_across_reopening,
            every_record_is_chained_to_the_one_before_across_reopening,
            flushed_audit_records_are_shown_and_filtered,
            failed_deliveries_are_listed_and_leave_the_list_when_requeued,
            posts_timers_plans_contents_and_meta_read_back,
            several_writers_at_once_keep_the_log_gapless_chained_and_durable
        );
    };
    (@each $subject:expr; $($name:ident),*) => {
        $(
            #[test]
            fn $name() {
                let subject: Option<$crate::store::conformance::Subject> = $subject;
                let Some(subject) = subject else { return };
                $crate::store::conformance::$name(&subject);
            }
        )*
    };
}
pub(crate) use conformance_tests;
