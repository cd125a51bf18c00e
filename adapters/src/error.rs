//! What went wrong in a publish attempt, and what the daemon should do next.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What the platform answered, kept verbatim for the audit log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformAnswer {
    /// HTTP status, when a response arrived.
    pub status: Option<u16>,
    /// The platform's own error code, when it gives one.
    pub code: Option<String>,
    /// The platform's message (or a description of the transport error).
    pub message: Option<String>,
}

impl PlatformAnswer {
    /// The answer with `secret` hidden in its code and message.
    pub fn hiding(self, secret: &crate::Secret) -> Self {
        PlatformAnswer {
            status: self.status,
            code: self.code.map(|code| secret.hide_in(&code)),
            message: self.message.map(|message| secret.hide_in(&message)),
        }
    }
}

/// The decision an adapter hands to the daemon. The daemon owns the policy
/// (backoff, attempts, pauses); the adapter only classifies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorClass {
    /// Network error, timeout, 5xx, "system busy": retry with backoff.
    Transient,
    /// Rate limited: retry after `retry_after` (the platform's Retry-After or
    /// its documented window); `None` means the daemon's backoff decides.
    RateLimited { retry_after: Option<Duration> },
    /// Credentials expired: refresh them and retry at once, once.
    CredentialsExpired,
    /// Bad content, banned word, revoked authorization, a 4xx that will not
    /// change: fail the delivery now.
    Permanent,
}

/// A failed publish attempt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct DeliveryError {
    pub class: ErrorClass,
    pub answer: PlatformAnswer,
    /// A short, secret-free explanation for people.
    pub reason: String,
    /// True when the request may have reached the platform (a timeout after
    /// sending): the next attempt is marked uncertain.
    pub maybe_sent: bool,
    /// True when a rate limit belongs to what several accounts share (an
    /// app id's quota, the host's IP), not to this account: the daemon
    /// pauses every account with the same [`crate::Adapter::limit_scope`].
    pub shared_limit: bool,
}

impl DeliveryError {
    pub fn new(class: ErrorClass, answer: PlatformAnswer, reason: impl Into<String>) -> Self {
        Self { class, answer, reason: reason.into(), maybe_sent: false, shared_limit: false }
    }

    pub fn transient(answer: PlatformAnswer, reason: impl Into<String>) -> Self {
        Self::new(ErrorClass::Transient, answer, reason)
    }

    pub fn permanent(answer: PlatformAnswer, reason: impl Into<String>) -> Self {
        Self::new(ErrorClass::Permanent, answer, reason)
    }

    pub fn rate_limited(answer: PlatformAnswer, retry_after: Option<Duration>, reason: impl Into<String>) -> Self {
        Self::new(ErrorClass::RateLimited { retry_after }, answer, reason)
    }

    pub fn credentials_expired(answer: PlatformAnswer, reason: impl Into<String>) -> Self {
        Self::new(ErrorClass::CredentialsExpired, answer, reason)
    }

    /// The error with `secret` hidden in the platform's answer and the reason.
    pub fn hiding(self, secret: &crate::Secret) -> Self {
        DeliveryError { answer: self.answer.hiding(secret), reason: secret.hide_in(&self.reason), ..self }
    }

    /// Mark a rate limit as shared by every account of the same limit scope.
    pub fn shared_limit(mut self) -> Self {
        self.shared_limit = true;
        self
    }

    /// Mark that the request may have reached the platform.
    pub fn maybe_sent(mut self) -> Self {
        self.maybe_sent = true;
        self
    }
}
