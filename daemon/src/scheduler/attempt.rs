//! One attempt of one delivery: the only place a request leaves the host.
//! It runs outside the scheduler's loop, touches no store, and hands back
//! what happened.

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_adapters::{Adapter, DeliveryError, ErrorClass, PlatformAnswer, PublishRequest, Receipt};

use crate::model::{Content, Delivery, FileDigest, from_millis};

/// What an attempt came to.
pub struct Finished {
    /// The delivery as it was while in flight.
    pub delivery: Delivery,
    pub result: Result<Receipt, DeliveryError>,
    pub latency: Duration,
    /// Credentials were refreshed during the attempt.
    pub refreshed: bool,
    /// The delivery was uncertain and the platform showed it was already
    /// published: nothing was sent.
    pub found: bool,
    /// The delivery was uncertain, the platform was searched and it was not
    /// there, so it was sent again.
    pub looked_up: bool,
}

/// Publish `content` for `delivery`; refresh credentials and publish once
/// more if the platform says they expired. `limit` bounds the whole attempt
/// even if an adapter forgets its own timeouts. Content with images is only
/// sent while each image file still has the bytes its content hash covers.
pub async fn run(adapter: Arc<dyn Adapter>, delivery: Delivery, content: Content, limit: Duration) -> Finished {
    let started = Instant::now();
    let Content { rendered: content, image_sha256 } = content;
    let occurrence = from_millis(delivery.occurrence).to_rfc3339();
    let delivery_id = delivery.id.to_string();
    let request = PublishRequest {
        delivery_id: &delivery_id,
        post_id: &delivery.post_id,
        account_id: &delivery.account,
        occurrence: &occurrence,
        attempt: delivery.attempt,
        uncertain: delivery.uncertain,
        content: &content,
    };
    let mut refreshed = false;
    let mut found = false;
    let mut looked_up = false;
    let work = async {
        if request.uncertain {
            // An earlier attempt may have gone through: look before re-sending.
            if let Some(receipt) = adapter.lookup(request.clone()).await? {
                found = true;
                return Ok(receipt);
            }
            looked_up = true;
        }
        if !image_sha256.is_empty() {
            images_unchanged(image_sha256).await?;
        }
        let first = adapter.publish(request.clone()).await;
        match first {
            Err(e) if e.class == ErrorClass::CredentialsExpired => {
                adapter.refresh_credentials().await?;
                refreshed = true;
                match adapter.publish(request.clone()).await {
                    Err(again) if again.class == ErrorClass::CredentialsExpired => Err(DeliveryError {
                        class: ErrorClass::Permanent,
                        reason: format!("credentials rejected again right after a refresh: {}", again.reason),
                        ..again
                    }),
                    other => other,
                }
            }
            other => other,
        }
    };
    let result = match tokio::time::timeout(limit, work).await {
        Ok(result) => result,
        Err(_) => Err(DeliveryError::transient(
            PlatformAnswer::default(),
            format!("no answer within {}", humantime::format_duration(limit)),
        )
        .maybe_sent()),
    };
    Finished { delivery, result, latency: started.elapsed(), refreshed, found, looked_up }
}

/// Refuse to send when an image file no longer has the bytes it had when
/// the content was stored: adapters read the files again to upload them,
/// and a changed picture sent under the old content hash would break "two
/// deliveries with the same hash sent the same bytes". A file unreadable
/// then and now is left to the adapter, which says why.
async fn images_unchanged(stored: Vec<FileDigest>) -> Result<(), DeliveryError> {
    let paths: Vec<String> = stored.iter().map(|d| d.path.clone()).collect();
    let now = tokio::task::spawn_blocking(move || paths.iter().map(|p| FileDigest::read(p)).collect::<Vec<_>>())
        .await
        .map_err(|e| DeliveryError::transient(PlatformAnswer::default(), format!("cannot hash the images: {e}")))?;
    match stored
        .iter()
        .zip(&now)
        .find(|(then, now)| then.sha256 != now.sha256 && !(then.unreadable() && now.unreadable()))
    {
        None => Ok(()),
        Some((then, now)) => Err(DeliveryError::permanent(PlatformAnswer::default(), changed_image(then, now))),
    }
}

/// Why a delivery whose image changed is not sent.
fn changed_image(then: &FileDigest, now: &FileDigest) -> String {
    format!(
        "image {} changed since this delivery was scheduled (sha256 {} then, {} now); not sent, so the new \
         picture never goes out under the old content hash: to send it, give it a new file name in the post",
        then.path, then.sha256, now.sha256
    )
}
