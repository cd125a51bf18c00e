//! The publishing flow: media uploads (cached by content hash), the draft,
//! then either free publishing followed to its end, or a mass send; and the
//! lookup of an uncertain delivery through its publish record and, after a
//! submit whose answer never came, among the published articles
//! (`freepublish/batchget`).

use reqwest::RequestBuilder;
use reqwest::multipart::{Form, Part};
use tokio::time::Instant;

use super::api::Reply;
use super::errors::{self, Api, PublishStatus};
use super::records::{PublishState, sha256_hex};
use super::render::{self, ImageKind};
use super::token::Token;
use super::wire::{
    Article, BatchGetAnswer, BatchGetRequest, DraftAnswer, DraftDeleteRequest, DraftRequest, ImageAnswer, MassFilter,
    MassNews, MassSendAnswer, MassSendRequest, MaterialAnswer, StatusAnswer, StatusRequest, SubmitAnswer,
    SubmitRequest,
};
use super::{Mode, WechatAdapter};
use crate::{DeliveryError, ErrorClass, PlatformAnswer, PublishRequest, Receipt, Rendered};

/// How far before the intent to submit a published article may be dated
/// and still be taken for it: herald's clock and WeChat's may differ.
const LOOKUP_SLACK_SECS: i64 = 600;
/// `freepublish/batchget` pages a look-up reads at most (newest first).
const LOOKUP_PAGES: u32 = 5;
/// Articles per `freepublish/batchget` page (WeChat's maximum).
const LOOKUP_PAGE_SIZE: u32 = 20;
/// Errcodes of the submit after which the draft is kept for a person to
/// publish from the web console.
const KEEP_DRAFT_CODES: [&str; 3] = ["53503", "53504", "53505"];
/// WeChat's answer to a `media_id` it does not know (a draft deleted in the
/// web console).
const INVALID_MEDIA_ID: &str = "40007";

/// How a followed publish job ended.
enum JobEnd {
    Published(Receipt),
    /// A failure status: the delivery fails with this error.
    Failed(DeliveryError),
}

impl WechatAdapter {
    /// Publish one delivery (see the module documentation).
    pub(super) async fn deliver(&self, request: PublishRequest<'_>) -> Result<Receipt, DeliveryError> {
        let content_hash = content_hash(request.content);
        let mut draft = None;
        if let Some(record) = self.records.publish_any(request.delivery_id) {
            if record.content_hash != content_hash {
                // The post changed since: an unsubmitted draft is abandoned.
                if matches!(record.state, PublishState::Drafted | PublishState::Failed { .. })
                    && let Some(old) = &record.draft_media_id
                {
                    self.delete_draft(old).await;
                }
            } else {
                match record.state {
                    PublishState::Published { url } if self.mode == Mode::Publish => {
                        tracing::info!(delivery = request.delivery_id, publish_id = %record.publish_id,
                            "already published by an earlier attempt");
                        return Ok(published_receipt(&record.publish_id, url, PlatformAnswer::default()));
                    }
                    PublishState::Submitted if self.mode == Mode::Publish => {
                        tracing::info!(delivery = request.delivery_id, publish_id = %record.publish_id,
                            "following the publish job of an earlier attempt");
                        return self.finish(request.delivery_id, &content_hash, &record.publish_id).await;
                    }
                    PublishState::Submitting { since } if self.mode == Mode::Publish => {
                        if let Some(receipt) = self.find_submitted(request.clone(), &content_hash, since).await? {
                            return Ok(receipt);
                        }
                        draft = record.draft_media_id;
                    }
                    _ => draft = record.draft_media_id,
                }
            }
        }

        let token = self.tokens.current(&self.api).await?;
        let reused = draft.is_some();
        let draft = match draft {
            Some(draft) => draft,
            None => self.new_draft(&token, request.delivery_id, &content_hash, request.content).await?,
        };
        match self.mode {
            Mode::Publish => self.submit_and_follow(&token, request, &content_hash, draft, reused).await,
            Mode::MassSend => self.mass_send(&token, &draft, request.delivery_id).await,
        }
    }

    /// Save the article as a draft and remember it for the delivery, so a
    /// retry submits this draft instead of leaving one more behind.
    async fn new_draft(
        &self,
        token: &Token,
        delivery_id: &str,
        content_hash: &str,
        content: &Rendered,
    ) -> Result<String, DeliveryError> {
        let draft = self.save_draft(token, content).await?;
        self.records.save_record(delivery_id, content_hash, "", Some(draft.clone()), PublishState::Drafted);
        Ok(draft)
    }

    /// Submit `draft`, the intent saved durably before the call, and follow
    /// the job. No answer leaves the intent, so the next attempt looks for
    /// the article before submitting again; an answer that refuses the
    /// submit means nothing was submitted.
    async fn submit_and_follow(
        &self,
        token: &Token,
        request: PublishRequest<'_>,
        content_hash: &str,
        mut draft: String,
        mut reused: bool,
    ) -> Result<Receipt, DeliveryError> {
        let delivery_id = request.delivery_id;
        loop {
            let since = chrono::Utc::now().timestamp();
            let submitting = PublishState::Submitting { since };
            self.records.save_record(delivery_id, content_hash, "", Some(draft.clone()), submitting);
            let error = match self.submit(token, &draft).await {
                Ok(publish_id) => {
                    self.records.save_publish(delivery_id, content_hash, &publish_id, PublishState::Submitted);
                    return self.finish(delivery_id, content_hash, &publish_id).await;
                }
                // The submit may have reached WeChat: the intent stays.
                Err(error) if error.maybe_sent => return Err(error),
                Err(error) => error,
            };
            let code = error.answer.code.as_deref().unwrap_or_default();
            if reused && code == INVALID_MEDIA_ID {
                tracing::info!(delivery = delivery_id, draft = %draft, "the saved draft is gone; saving a new one");
                draft = self.new_draft(token, delivery_id, content_hash, request.content).await?;
                reused = false;
                continue;
            }
            if error.class == ErrorClass::Permanent && !KEEP_DRAFT_CODES.contains(&code) {
                // Refused for good: the draft would only be left behind.
                self.delete_draft(&draft).await;
                self.records.save_record(delivery_id, content_hash, "", None, PublishState::Drafted);
            } else {
                self.records.save_record(delivery_id, content_hash, "", Some(draft), PublishState::Drafted);
            }
            return Err(error);
        }
    }

    /// Look for an uncertain delivery: published means a receipt; failed,
    /// or unknown to this account or to WeChat, means `None`, so the daemon
    /// publishes.
    pub(super) async fn look_up(&self, request: PublishRequest<'_>) -> Result<Option<Receipt>, DeliveryError> {
        if self.mode == Mode::MassSend {
            // A re-send with the same clientmsgid is answered 45065 and
            // recorded as success: nothing to look up.
            return Ok(None);
        }
        let content_hash = content_hash(request.content);
        let Some(record) = self.records.publish(request.delivery_id, &content_hash) else {
            return Ok(None);
        };
        let publish_id = record.publish_id;
        match record.state {
            PublishState::Published { url } => {
                return Ok(Some(published_receipt(&publish_id, url, PlatformAnswer::default())));
            }
            PublishState::Failed { .. } | PublishState::Drafted => return Ok(None),
            PublishState::Submitting { since } => return self.find_submitted(request, &content_hash, since).await,
            PublishState::Submitted => {}
        }
        match self.follow(request.delivery_id, &content_hash, &publish_id).await {
            Ok(JobEnd::Published(receipt)) => Ok(Some(receipt)),
            Ok(JobEnd::Failed(_)) => Ok(None),
            Err(error) if error.class == ErrorClass::Permanent => {
                tracing::info!(delivery = request.delivery_id, publish_id = %publish_id, reason = %error.reason,
                    "publish job unknown to WeChat; publishing again");
                Ok(None)
            }
            Err(error) => Err(error.maybe_sent()),
        }
    }

    /// After a submit whose answer never came (intent saved at `since`):
    /// look for the article among the published ones, and keep looking
    /// while a job started then could still be publishing (`poll_timeout`).
    /// `Some` is the article found (recorded as published); `None` means it
    /// was shown not to exist, and the draft may be submitted again.
    async fn find_submitted(
        &self,
        request: PublishRequest<'_>,
        content_hash: &str,
        since: i64,
    ) -> Result<Option<Receipt>, DeliveryError> {
        let delivery_id = request.delivery_id;
        let title = request.content.title.as_deref().unwrap_or_default();
        let digest = render::digest(&request.content.text);
        let settled_at = since.saturating_add(self.poll_timeout.as_secs() as i64);
        let mut searches = 0u32;
        loop {
            searches += 1;
            let found = self
                .with_fresh_token(|token| {
                    let digest = &digest;
                    async move { self.search_published(&token, title, digest, since).await }
                })
                .await;
            // Whatever stops the look-up, the article may be public: never
            // a failure of the delivery for that, never a second submit.
            let found = found.map_err(|error| {
                let class = match error.class {
                    ErrorClass::RateLimited { retry_after } => ErrorClass::RateLimited { retry_after },
                    _ => ErrorClass::Transient,
                };
                let reason = format!(
                    "{}; the article of an earlier submit may be public: looking again before any new submit",
                    error.reason
                );
                DeliveryError { class, reason, ..error }.maybe_sent()
            });
            match found? {
                Some((article_id, url)) => {
                    tracing::info!(delivery = delivery_id, article_id = %article_id, searches,
                        "found among the published articles: the earlier submit went through");
                    let state = PublishState::Published { url: url.clone() };
                    self.records.save_publish(delivery_id, content_hash, &article_id, state);
                    return Ok(Some(published_receipt(&article_id, url, PlatformAnswer::default())));
                }
                None if chrono::Utc::now().timestamp() >= settled_at => {
                    tracing::info!(
                        delivery = delivery_id,
                        searches,
                        "not among the published articles after the earlier submit settled: submitting again"
                    );
                    self.records.save_publish(delivery_id, content_hash, "", PublishState::Drafted);
                    return Ok(None);
                }
                None => tokio::time::sleep(self.poll_interval).await,
            }
        }
    }

    /// Read `freepublish/batchget` (newest first) for an article with this
    /// title and digest published since `since` (less the slack): its
    /// article_id and URL.
    async fn search_published(
        &self,
        token: &Token,
        title: &str,
        digest: &str,
        since: i64,
    ) -> Result<Option<(String, Option<String>)>, DeliveryError> {
        let floor = since - LOOKUP_SLACK_SECS;
        for page in 0..LOOKUP_PAGES {
            let offset = page * LOOKUP_PAGE_SIZE;
            let body = BatchGetRequest { offset, count: LOOKUP_PAGE_SIZE, no_content: 1 };
            let url = self.api.url(Api::BatchGet.path())?;
            let request = self.api.client.post(url).query(&access(token)).json(&body);
            let reply = self.call(Api::BatchGet, token, request).await?;
            let answer: BatchGetAnswer = reply.parse(Api::BatchGet)?;
            for item in &answer.item {
                if item.update_time > 0 && item.update_time < floor {
                    return Ok(None);
                }
                let Some(content) = &item.content else { continue };
                let matching = content
                    .news_item
                    .iter()
                    .find(|news| !news.is_deleted && news.title == title && news.digest == digest);
                if let Some(news) = matching {
                    let article_id = item.article_id.clone().unwrap_or_default();
                    return Ok(Some((article_id, news.url.clone())));
                }
            }
            if answer.item.is_empty() || offset + LOOKUP_PAGE_SIZE >= answer.total_count {
                return Ok(None);
            }
        }
        Ok(None)
    }

    /// Run `call` with the current token; when WeChat rejects the token,
    /// refresh it and run `call` again, as often as the refresh budget
    /// allows (a refused refresh ends it with that reason).
    pub(super) async fn with_fresh_token<T, F, Fut>(&self, call: F) -> Result<T, DeliveryError>
    where
        F: Fn(Token) -> Fut,
        Fut: std::future::Future<Output = Result<T, DeliveryError>>,
    {
        const MAX_REFRESHES: u32 = 3;
        let mut refreshes = 0;
        loop {
            let token = self.tokens.current(&self.api).await?;
            match call(token).await {
                Err(error) if error.class == ErrorClass::CredentialsExpired && refreshes < MAX_REFRESHES => {
                    refreshes += 1;
                    self.tokens.refresh(&self.api).await?;
                }
                other => return other,
            }
        }
    }

    /// Delete a draft herald saved and will not use (best effort: a draft
    /// left behind is only clutter in the web console).
    async fn delete_draft(&self, media_id: &str) {
        let result = self
            .with_fresh_token(|token| async move {
                let url = self.api.url(Api::DraftDelete.path())?;
                let request = self.api.client.post(url).query(&access(&token)).json(&DraftDeleteRequest { media_id });
                self.call(Api::DraftDelete, &token, request).await
            })
            .await;
        match result {
            Ok(_) => tracing::info!(draft = media_id, "abandoned draft deleted"),
            Err(error) => {
                tracing::warn!(draft = media_id, reason = %error.reason, "could not delete an abandoned draft")
            }
        }
    }

    /// Follow a submitted job to its end, as the outcome of `publish`. The
    /// article may be published whatever happens now: no error ends the
    /// delivery but a failure status WeChat gave for the job itself.
    async fn finish(&self, delivery_id: &str, content_hash: &str, publish_id: &str) -> Result<Receipt, DeliveryError> {
        match self.follow(delivery_id, content_hash, publish_id).await {
            Ok(JobEnd::Published(receipt)) => Ok(receipt),
            Ok(JobEnd::Failed(error)) => Err(error),
            Err(error) => {
                let class = match error.class {
                    ErrorClass::RateLimited { retry_after } => ErrorClass::RateLimited { retry_after },
                    _ => ErrorClass::Transient,
                };
                let reason = format!(
                    "{}; the article was submitted (publish_id {publish_id}): the next attempt follows the job",
                    error.reason
                );
                Err(DeliveryError { class, reason, ..error }.maybe_sent())
            }
        }
    }

    /// Poll `freepublish/get` every `poll_interval` until the job ends or
    /// `poll_timeout` passes (transient: the next attempt follows it again).
    /// A rejected token is refreshed and the job followed on.
    async fn follow(&self, delivery_id: &str, content_hash: &str, publish_id: &str) -> Result<JobEnd, DeliveryError> {
        let deadline = Instant::now() + self.poll_timeout;
        let mut polls = 0u32;
        loop {
            polls += 1;
            let reply = self
                .with_fresh_token(|token| async move {
                    let url = self.api.url(Api::PublishStatus.path())?;
                    let request = self.api.client.post(url).query(&access(&token)).json(&StatusRequest { publish_id });
                    self.call(Api::PublishStatus, &token, request).await
                })
                .await?;
            let status: StatusAnswer = reply.parse(Api::PublishStatus)?;
            match errors::publish_status(status.publish_status) {
                PublishStatus::Published => {
                    let url = status.article_url();
                    tracing::info!(delivery = delivery_id, publish_id, polls, "published");
                    self.records.save_publish(
                        delivery_id,
                        content_hash,
                        publish_id,
                        PublishState::Published { url: url.clone() },
                    );
                    return Ok(JobEnd::Published(published_receipt(publish_id, url, reply.answer)));
                }
                PublishStatus::Publishing => {
                    if Instant::now() + self.poll_interval > deadline {
                        return Err(DeliveryError::transient(
                            reply.answer,
                            format!(
                                "WeChat is still publishing (publish_id {publish_id}) after {}; \
                                 the next attempt follows the same job",
                                humantime::format_duration(self.poll_timeout)
                            ),
                        )
                        .maybe_sent());
                    }
                    tokio::time::sleep(self.poll_interval).await;
                }
                PublishStatus::Failed(meaning) => {
                    let reason = format!(
                        "WeChat did not publish the article: {meaning} (publish_status {}, publish_id {publish_id})",
                        status.publish_status
                    );
                    tracing::warn!(
                        delivery = delivery_id,
                        publish_id,
                        status = status.publish_status,
                        "publish failed"
                    );
                    self.records.save_publish(
                        delivery_id,
                        content_hash,
                        publish_id,
                        PublishState::Failed { reason: reason.clone() },
                    );
                    let answer = PlatformAnswer {
                        code: Some(format!("publish_status {}", status.publish_status)),
                        ..reply.answer
                    };
                    return Ok(JobEnd::Failed(DeliveryError::permanent(answer, reason)));
                }
            }
        }
    }

    /// Upload the images and save the article as a draft; its media_id.
    async fn save_draft(&self, token: &Token, content: &Rendered) -> Result<String, DeliveryError> {
        let title = content.title.as_deref().ok_or_else(|| refused("WeChat articles need a title"))?;
        let (cover, others) =
            content.images.split_first().ok_or_else(|| refused("WeChat articles need a cover image"))?;
        let thumb_media_id = self.upload_cover(token, cover).await?;
        let mut urls = Vec::with_capacity(others.len());
        for image in others {
            urls.push(self.upload_body_image(token, image).await?);
        }
        let html = render::with_image_urls(&content.text, &urls);
        let chars = html.chars().count();
        if chars >= render::MAX_CONTENT_CHARS || html.len() >= render::MAX_CONTENT_BYTES {
            return Err(refused(&format!(
                "the article is {chars} characters of HTML with its images' URLs; WeChat needs fewer than {}",
                render::MAX_CONTENT_CHARS
            )));
        }
        let digest = render::digest(&content.text);
        let article = Article {
            title,
            author: self.author.as_deref(),
            digest: &digest,
            content: &html,
            content_source_url: content.link.as_deref(),
            thumb_media_id: &thumb_media_id,
            need_open_comment: u8::from(self.need_open_comment),
            only_fans_can_comment: u8::from(self.only_fans_can_comment),
        };
        let url = self.api.url(Api::DraftAdd.path())?;
        let request = self.api.client.post(url).query(&access(token)).json(&DraftRequest { articles: [article] });
        let reply = self.call(Api::DraftAdd, token, request).await?;
        Ok(reply.parse::<DraftAnswer>(Api::DraftAdd)?.media_id)
    }

    /// The cover's `thumb` media_id: cached by the file's hash, or uploaded.
    async fn upload_cover(&self, token: &Token, path: &str) -> Result<String, DeliveryError> {
        let (bytes, kind) = read_image(path, "the cover", &[ImageKind::Jpeg], render::MAX_COVER_BYTES).await?;
        let hash = sha256_hex(&bytes);
        if let Some(media_id) = self.records.thumb(&hash) {
            return Ok(media_id);
        }
        let url = self.api.url(Api::AddMaterial.path())?;
        let query = [("access_token", token.value.expose()), ("type", "thumb")];
        let request = self.api.client.post(url).query(&query).multipart(media_form(bytes, kind, "cover")?);
        let reply = self.call(Api::AddMaterial, token, request).await?;
        let media_id = reply.parse::<MaterialAnswer>(Api::AddMaterial)?.media_id;
        self.records.save_thumb(&hash, &media_id);
        Ok(media_id)
    }

    /// The URL WeChat serves a body image from: cached, or uploaded.
    async fn upload_body_image(&self, token: &Token, path: &str) -> Result<String, DeliveryError> {
        let kinds = [ImageKind::Jpeg, ImageKind::Png];
        let (bytes, kind) = read_image(path, "an image", &kinds, render::MAX_BODY_IMAGE_BYTES - 1).await?;
        let hash = sha256_hex(&bytes);
        if let Some(url) = self.records.image(&hash) {
            return Ok(url);
        }
        let url = self.api.url(Api::UploadImage.path())?;
        let request = self.api.client.post(url).query(&access(token)).multipart(media_form(bytes, kind, "image")?);
        let reply = self.call(Api::UploadImage, token, request).await?;
        let image_url = reply.parse::<ImageAnswer>(Api::UploadImage)?.url;
        self.records.save_image(&hash, &image_url);
        Ok(image_url)
    }

    /// Submit a draft for free publishing; the publish_id.
    async fn submit(&self, token: &Token, media_id: &str) -> Result<String, DeliveryError> {
        let url = self.api.url(Api::Submit.path())?;
        let request = self.api.client.post(url).query(&access(token)).json(&SubmitRequest { media_id });
        let reply = self.call(Api::Submit, token, request).await?;
        Ok(reply.parse::<SubmitAnswer>(Api::Submit)?.publish_id)
    }

    /// Send a draft to every follower, once per delivery (`clientmsgid`).
    async fn mass_send(&self, token: &Token, media_id: &str, delivery_id: &str) -> Result<Receipt, DeliveryError> {
        let body = MassSendRequest {
            filter: MassFilter { is_to_all: true },
            mpnews: MassNews { media_id },
            msgtype: "mpnews",
            send_ignore_reprint: 0,
            clientmsgid: delivery_id,
        };
        let url = self.api.url(Api::MassSend.path())?;
        let request = self.api.client.post(url).query(&access(token)).json(&body);
        let reply = self.call(Api::MassSend, token, request).await?;
        let answer: MassSendAnswer = reply.parse(Api::MassSend)?;
        if reply.already_done {
            tracing::info!(
                delivery = delivery_id,
                msg_id = answer.msg_id.as_deref().unwrap_or("-"),
                "mass send already made by an earlier attempt"
            );
        }
        Ok(Receipt { remote_id: answer.msg_id, url: None, answer: reply.answer })
    }

    /// Send a call made with `token`; a token WeChat refuses is marked so
    /// that the refresh replaces it. The token is hidden in what comes
    /// back: it rides in the request's query, which WeChat or a gateway in
    /// front of it may repeat in an answer, and an answer ends up in the
    /// audit log and the alerts (the daemon scrubs only the secrets of the
    /// config; this one is fetched at run time).
    pub(super) async fn call(&self, api: Api, token: &Token, request: RequestBuilder) -> Result<Reply, DeliveryError> {
        let result = self.api.send(api, request).await;
        if let Err(error) = &result
            && error.class == ErrorClass::CredentialsExpired
        {
            self.tokens.reject(token);
        }
        match result {
            Ok(reply) => Ok(Reply { answer: reply.answer.hiding(&token.value), ..reply }),
            Err(error) => Err(error.hiding(&token.value)),
        }
    }
}

pub(super) fn access(token: &Token) -> [(&'static str, &str); 1] {
    [("access_token", token.value.expose())]
}

fn refused(reason: &str) -> DeliveryError {
    DeliveryError::permanent(PlatformAnswer::default(), reason)
}

fn published_receipt(publish_id: &str, url: Option<String>, answer: PlatformAnswer) -> Receipt {
    Receipt { remote_id: Some(publish_id.to_string()), url, answer }
}

/// The hash of the rendered content, to tie a publish record to it.
fn content_hash(content: &Rendered) -> String {
    sha256_hex(&serde_json::to_vec(content).unwrap_or_default())
}

/// Read an image and check it again (it may have changed since `check`).
async fn read_image(
    path: &str,
    what: &str,
    kinds: &[ImageKind],
    max_bytes: u64,
) -> Result<(Vec<u8>, ImageKind), DeliveryError> {
    let bytes = crate::files::read_bounded_async(path, max_bytes)
        .await
        .map_err(|error| refused(&format!("{what} `{path}` cannot be read: {error}")))?;
    let kind = ImageKind::sniff(&bytes)
        .filter(|kind| kinds.contains(kind))
        .ok_or_else(|| refused(&format!("{what} `{path}` is not an image WeChat accepts here")))?;
    if bytes.len() as u64 > max_bytes {
        return Err(refused(&format!("{what} `{path}` is {} bytes; WeChat accepts at most {max_bytes}", bytes.len())));
    }
    Ok((bytes, kind))
}

/// A multipart form with the file in field `media`.
fn media_form(bytes: Vec<u8>, kind: ImageKind, name: &str) -> Result<Form, DeliveryError> {
    let part = Part::bytes(bytes)
        .file_name(format!("{name}.{}", kind.extension()))
        .mime_str(kind.mime())
        .map_err(|error| refused(&format!("could not build the upload: {error}")))?;
    Ok(Form::new().part("media", part))
}
