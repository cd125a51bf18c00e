//! What the emulators published, for the tests that kill herald (crash,
//! failover): each post once, whatever was sent again after a kill.

use std::collections::{BTreeMap, BTreeSet};

use herald_sandbox::{Outcome, Sandbox};

/// How many distinct posts the webhook, Mastodon and Discourse emulators of
/// `sandbox` hold (a repeated delivery counts once).
pub fn published_posts(sandbox: &Sandbox) -> usize {
    distinct(sandbox.webhook.accepted().iter().map(|p| p.idempotency_key.clone().unwrap_or_default()))
        + distinct(sandbox.mastodon.published().iter().map(|s| s.idempotency_key.clone().unwrap_or_default()))
        + distinct(sandbox.discourse.published().iter().map(|t| t.external_id().unwrap_or_default().to_string()))
}

/// Assert that no post shows twice on the webhook, Mastodon or Discourse
/// emulator (the webhook receiver and Mastodon de-duplicate by idempotency
/// key, Discourse by external_id), and return every key they hold.
pub fn assert_each_post_published_once(sandbox: &Sandbox) -> Vec<String> {
    let mut per_key: BTreeMap<String, usize> = BTreeMap::new();
    for p in sandbox.webhook.received() {
        if matches!(p.outcome, Outcome::Accepted { .. }) {
            *per_key.entry(p.idempotency_key.clone().unwrap_or_default()).or_default() += 1;
        }
    }
    assert!(per_key.values().all(|&n| n == 1), "a webhook delivery was accepted twice");
    let mastodon = sandbox.mastodon.published();
    let toots: Vec<String> = mastodon.iter().filter_map(|s| s.idempotency_key.clone()).collect();
    assert_eq!(mastodon.len(), distinct(toots.iter().cloned()), "a Mastodon status was posted twice");
    let discourse = sandbox.discourse.published();
    let external: Vec<String> = discourse.iter().filter_map(|t| t.external_id().map(str::to_string)).collect();
    assert_eq!(discourse.len(), distinct(external.iter().cloned()), "a Discourse topic was created twice");
    per_key.into_keys().chain(toots).chain(external).collect()
}

/// How many distinct items.
pub fn distinct(items: impl Iterator<Item = String>) -> usize {
    items.collect::<BTreeSet<_>>().len()
}
