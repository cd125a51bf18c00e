//! What a WeChat account remembers between attempts, in the credential
//! cache: uploaded media by file content hash (so a retry does not upload
//! again) and each delivery's publish record: its draft (so a retry submits
//! the same draft instead of leaving one more behind), the intent to submit
//! saved before `freepublish/submit` leaves (so after a lost answer or a
//! crash the article is looked for before anything is submitted again), and
//! the publish job (so a retry or a lookup follows it).

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::CredentialCache;

/// An uploaded cover (`thumb` material).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct StoredThumb {
    pub(super) appid: String,
    pub(super) media_id: String,
}

/// An uploaded body image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct StoredImage {
    pub(super) appid: String,
    pub(super) url: String,
}

/// Where a delivery's publish job stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub(super) enum PublishState {
    /// The draft is saved; nothing was submitted, or WeChat refused the
    /// submit for sure: the next attempt submits this draft.
    Drafted,
    /// Saved just before `freepublish/submit` was sent (Unix seconds): no
    /// answer came back, so WeChat may have published the article.
    Submitting { since: i64 },
    /// Submitted; WeChat has not said how it ended.
    Submitted,
    /// Published, at this URL.
    Published { url: Option<String> },
    /// Ended in a failure status: a new attempt submits again.
    Failed { reason: String },
}

/// A delivery's draft and publish job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct PublishRecord {
    pub(super) appid: String,
    /// The hash of the rendered content that was submitted.
    pub(super) content_hash: String,
    /// Empty until `freepublish/submit` answered.
    #[serde(default)]
    pub(super) publish_id: String,
    /// The draft herald saved for this delivery (absent in records written
    /// before drafts were kept).
    #[serde(default)]
    pub(super) draft_media_id: Option<String>,
    #[serde(flatten)]
    pub(super) state: PublishState,
}

/// The cache of one WeChat account, with its keys.
pub(super) struct Records {
    account: String,
    appid: String,
    cache: Arc<dyn CredentialCache>,
}

impl Records {
    pub(super) fn new(account: &str, appid: &str, cache: Arc<dyn CredentialCache>) -> Self {
        Records { account: account.to_string(), appid: appid.to_string(), cache }
    }

    fn load<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        serde_json::from_slice(&self.cache.load(key)?).ok()
    }

    fn save<T: Serialize>(&self, key: &str, value: &T) {
        if let Ok(bytes) = serde_json::to_vec(value) {
            self.cache.save(key, &bytes);
        }
    }

    fn thumb_key(&self, file_hash: &str) -> String {
        format!("wechat/{}/thumb/{file_hash}", self.account)
    }

    fn image_key(&self, file_hash: &str) -> String {
        format!("wechat/{}/image/{file_hash}", self.account)
    }

    fn publish_key(&self, delivery_id: &str) -> String {
        format!("wechat/{}/publish/{delivery_id}", self.account)
    }

    pub(super) fn thumb(&self, file_hash: &str) -> Option<String> {
        let stored: StoredThumb = self.load(&self.thumb_key(file_hash))?;
        (stored.appid == self.appid).then_some(stored.media_id)
    }

    pub(super) fn save_thumb(&self, file_hash: &str, media_id: &str) {
        let stored = StoredThumb { appid: self.appid.clone(), media_id: media_id.to_string() };
        self.save(&self.thumb_key(file_hash), &stored);
    }

    pub(super) fn image(&self, file_hash: &str) -> Option<String> {
        let stored: StoredImage = self.load(&self.image_key(file_hash))?;
        (stored.appid == self.appid).then_some(stored.url)
    }

    pub(super) fn save_image(&self, file_hash: &str, url: &str) {
        let stored = StoredImage { appid: self.appid.clone(), url: url.to_string() };
        self.save(&self.image_key(file_hash), &stored);
    }

    /// The publish record of `delivery_id` for this content, if any.
    pub(super) fn publish(&self, delivery_id: &str, content_hash: &str) -> Option<PublishRecord> {
        self.publish_any(delivery_id).filter(|record| record.content_hash == content_hash)
    }

    /// The publish record of `delivery_id`, whatever its content.
    pub(super) fn publish_any(&self, delivery_id: &str) -> Option<PublishRecord> {
        let record: PublishRecord = self.load(&self.publish_key(delivery_id))?;
        (record.appid == self.appid).then_some(record)
    }

    /// Save a delivery's record; the draft stays as it was saved before.
    pub(super) fn save_publish(&self, delivery_id: &str, content_hash: &str, publish_id: &str, state: PublishState) {
        let draft_media_id = self.publish(delivery_id, content_hash).and_then(|record| record.draft_media_id);
        self.save_record(delivery_id, content_hash, publish_id, draft_media_id, state);
    }

    /// Save a delivery's record with its draft (saved before the next call
    /// leaves: the cache is durable).
    pub(super) fn save_record(
        &self,
        delivery_id: &str,
        content_hash: &str,
        publish_id: &str,
        draft_media_id: Option<String>,
        state: PublishState,
    ) {
        let record = PublishRecord {
            appid: self.appid.clone(),
            content_hash: content_hash.to_string(),
            publish_id: publish_id.to_string(),
            draft_media_id,
            state,
        };
        self.save(&self.publish_key(delivery_id), &record);
    }
}

/// Lowercase hex SHA-256 of `bytes`.
pub(super) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryCache;

    #[test]
    fn records_are_kept_per_appid_and_content() {
        let cache: Arc<dyn CredentialCache> = Arc::new(MemoryCache::default());
        let records = Records::new("acct", "wx1", Arc::clone(&cache));
        records.save_thumb("h1", "MEDIA");
        records.save_image("h2", "http://img/1");
        records.save_publish("d1", "c1", "P1", PublishState::Submitted);
        assert_eq!(records.thumb("h1").as_deref(), Some("MEDIA"));
        assert_eq!(records.image("h2").as_deref(), Some("http://img/1"));
        assert_eq!(records.publish("d1", "c1").unwrap().publish_id, "P1");
        assert_eq!(records.publish("d1", "other content"), None);

        let other_app = Records::new("acct", "wx2", cache);
        assert_eq!(other_app.thumb("h1"), None);
        assert_eq!(other_app.publish("d1", "c1"), None);
    }

    #[test]
    fn a_publish_record_reads_back_in_every_state() {
        let records = Records::new("acct", "wx1", Arc::new(MemoryCache::default()));
        for state in [
            PublishState::Drafted,
            PublishState::Submitting { since: 1_700_000_000 },
            PublishState::Submitted,
            PublishState::Published { url: Some("https://mp.weixin.qq.com/s/x".into()) },
            PublishState::Failed { reason: "rejected by review".into() },
        ] {
            records.save_publish("d1", "c1", "P1", state.clone());
            assert_eq!(records.publish("d1", "c1").unwrap().state, state);
        }
    }

    #[test]
    fn a_record_written_before_drafts_were_kept_still_reads() {
        let cache: Arc<dyn CredentialCache> = Arc::new(MemoryCache::default());
        let old = br#"{"appid":"wx1","content_hash":"c1","publish_id":"P1","state":"submitted"}"#;
        cache.save("wechat/acct/publish/d1", old);
        let record = Records::new("acct", "wx1", cache).publish("d1", "c1").unwrap();
        assert_eq!(
            (record.publish_id.as_str(), record.draft_media_id, record.state),
            ("P1", None, PublishState::Submitted)
        );
    }

    #[test]
    fn the_draft_is_kept_when_the_state_moves_on() {
        let records = Records::new("acct", "wx1", Arc::new(MemoryCache::default()));
        records.save_record("d1", "c1", "", Some("DRAFT".into()), PublishState::Drafted);
        records.save_publish("d1", "c1", "P1", PublishState::Submitted);
        assert_eq!(records.publish("d1", "c1").unwrap().draft_media_id.as_deref(), Some("DRAFT"));
    }

    #[test]
    fn sha256_is_hex() {
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
