//! One attempt of one delivery: the only place a request leaves the host.
//! It runs outside the scheduler's loop, touches no store, and hands back
//! what happened.

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_adapters::{Adapter, DeliveryError, ErrorClass, PlatformAnswer, PublishRequest, Receipt, Rendered};

use crate::model::{Delivery, from_millis};

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
/// even if an adapter forgets its own timeouts.
pub async fn run(adapter: Arc<dyn Adapter>, delivery: Delivery, content: Rendered, limit: Duration) -> Finished {
    let started = Instant::now();
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
