//! The publishing flow: media uploads (cached by content hash), the draft,
//! then either free publishing followed to its end, or a mass send; and the
//! lookup of an uncertain delivery through its publish record.

use reqwest::RequestBuilder;
use reqwest::multipart::{Form, Part};
use tokio::time::Instant;

use super::api::Reply;
use super::errors::{self, Api, PublishStatus};
use super::records::{PublishState, sha256_hex};
use super::render::{self, ImageKind};
use super::token::Token;
use super::wire::{
    Article, DraftAnswer, DraftRequest, ImageAnswer, MassFilter, MassNews, MassSendAnswer, MassSendRequest,
    MaterialAnswer, StatusAnswer, StatusRequest, SubmitAnswer, SubmitRequest,
};
use super::{Mode, WechatAdapter};
use crate::{DeliveryError, ErrorClass, PlatformAnswer, PublishRequest, Receipt, Rendered};

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
        if self.mode == Mode::Publish
            && let Some(record) = self.records.publish(request.delivery_id, &content_hash)
        {
            match record.state {
                PublishState::Published { url } => {
                    tracing::info!(delivery = request.delivery_id, publish_id = %record.publish_id,
                        "already published by an earlier attempt");
                    return Ok(published_receipt(&record.publish_id, url, PlatformAnswer::default()));
                }
                PublishState::Submitted => {
                    tracing::info!(delivery = request.delivery_id, publish_id = %record.publish_id,
                        "following the publish job of an earlier attempt");
                    return self.finish(request.delivery_id, &content_hash, &record.publish_id).await;
                }
                PublishState::Failed { .. } => {}
            }
        }

        let token = self.tokens.current(&self.api).await?;
        let draft = self.save_draft(&token, request.content).await?;
        match self.mode {
            Mode::Publish => {
                let publish_id = self.submit(&token, &draft).await?;
                self.records.save_publish(request.delivery_id, &content_hash, &publish_id, PublishState::Submitted);
                self.finish(request.delivery_id, &content_hash, &publish_id).await
            }
            Mode::MassSend => self.mass_send(&token, &draft, request.delivery_id).await,
        }
    }

    /// Look for an uncertain delivery's publish job: published means a
    /// receipt; failed, or unknown to this account or to WeChat, means
    /// `None`, so the daemon publishes.
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
            PublishState::Failed { .. } => return Ok(None),
            PublishState::Submitted => {}
        }
        let mut refreshed = false;
        loop {
            match self.follow(request.delivery_id, &content_hash, &publish_id).await {
                Ok(JobEnd::Published(receipt)) => return Ok(Some(receipt)),
                Ok(JobEnd::Failed(_)) => return Ok(None),
                // The daemon refreshes only after `publish`: do it here, once.
                Err(error) if error.class == ErrorClass::CredentialsExpired && !refreshed => {
                    refreshed = true;
                    self.tokens.refresh(&self.api).await?;
                }
                Err(error) if error.class == ErrorClass::Permanent => {
                    tracing::info!(delivery = request.delivery_id, publish_id = %publish_id, reason = %error.reason,
                        "publish job unknown to WeChat; publishing again");
                    return Ok(None);
                }
                Err(error) => return Err(error.maybe_sent()),
            }
        }
    }

    /// Follow a submitted job to its end, as the outcome of `publish`.
    async fn finish(&self, delivery_id: &str, content_hash: &str, publish_id: &str) -> Result<Receipt, DeliveryError> {
        match self.follow(delivery_id, content_hash, publish_id).await {
            Ok(JobEnd::Published(receipt)) => Ok(receipt),
            Ok(JobEnd::Failed(error)) => Err(error),
            // Submitted already: whatever happens now, it may be published.
            Err(error) => Err(error.maybe_sent()),
        }
    }

    /// Poll `freepublish/get` every `poll_interval` until the job ends or
    /// `poll_timeout` passes (transient: the next attempt follows it again).
    async fn follow(&self, delivery_id: &str, content_hash: &str, publish_id: &str) -> Result<JobEnd, DeliveryError> {
        let deadline = Instant::now() + self.poll_timeout;
        let mut polls = 0u32;
        loop {
            polls += 1;
            let token = self.tokens.current(&self.api).await?;
            let url = self.api.url(Api::PublishStatus.path())?;
            let request = self.api.client.post(url).query(&access(&token)).json(&StatusRequest { publish_id });
            let reply = self.call(Api::PublishStatus, &token, request).await?;
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
    /// that the refresh replaces it.
    async fn call(&self, api: Api, token: &Token, request: RequestBuilder) -> Result<Reply, DeliveryError> {
        let result = self.api.send(api, request).await;
        if let Err(error) = &result
            && error.class == ErrorClass::CredentialsExpired
        {
            self.tokens.reject(token);
        }
        result
    }
}

fn access(token: &Token) -> [(&'static str, &str); 1] {
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
