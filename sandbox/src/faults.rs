//! Faults every emulator can inject: an error status (with `Retry-After` and
//! a body), a delay before answering, a dropped connection, and a latency
//! added to every answer. Set in-process ([`FaultPlan`]) or over HTTP
//! ([`FaultSpec`], the body of `POST /_sandbox/faults`).

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::server::Stopping;

/// What the emulator does to one request instead of answering normally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer with an error status.
    Status(StatusFault),
    /// Wait this long, then handle the request normally: a client with a
    /// shorter timeout gives up although the request goes through.
    Delay(Duration),
    /// Close the connection without answering; the request is not handled.
    Drop,
}

impl Fault {
    /// Answer `status` with no body.
    pub fn status(status: u16) -> Fault {
        Fault::Status(StatusFault { status, retry_after: None, body: None })
    }

    /// Answer `status` with `body`.
    pub fn status_with_body(status: u16, body: impl Into<String>) -> Fault {
        Fault::Status(StatusFault { status, retry_after: None, body: Some(body.into()) })
    }

    /// Answer 429 with `Retry-After: <seconds>`.
    pub fn rate_limited(retry_after_secs: u64) -> Fault {
        Fault::Status(StatusFault { status: 429, retry_after: Some(retry_after_secs), body: None })
    }
}

/// An injected error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusFault {
    pub status: u16,
    /// `Retry-After` in seconds.
    pub retry_after: Option<u64>,
    /// The answer body; sent as JSON when it parses as JSON, else as text.
    pub body: Option<String>,
}

impl IntoResponse for StatusFault {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = self.body.unwrap_or_default();
        let content_type = if serde_json::from_str::<serde::de::IgnoredAny>(&body).is_ok() {
            "application/json"
        } else {
            "text/plain; charset=utf-8"
        };
        let mut response = (status, [(header::CONTENT_TYPE, content_type)], body).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// What an emulator must do with a request once latency and faults have
/// been applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Injected {
    /// Handle it normally.
    None,
    /// Answer this error instead.
    Status(StatusFault),
    /// Close the connection without answering.
    Drop,
}

/// The faults waiting for the next requests, and the latency of every answer.
#[derive(Debug, Default)]
pub(crate) struct FaultPlan {
    state: Mutex<PlanState>,
}

#[derive(Debug, Default)]
struct PlanState {
    /// (requests left, fault), applied in order.
    queue: VecDeque<(usize, Fault)>,
    latency: Duration,
}

impl FaultPlan {
    fn state(&self) -> MutexGuard<'_, PlanState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next `count` requests get `fault`, after any faults already planned.
    pub(crate) fn fail_next(&self, count: usize, fault: Fault) {
        if count > 0 {
            self.state().queue.push_back((count, fault));
        }
    }

    pub(crate) fn set_latency(&self, latency: Duration) {
        self.state().latency = latency;
    }

    pub(crate) fn reset(&self) {
        *self.state() = PlanState::default();
    }

    /// Plan what a `POST /_sandbox/faults` asks for.
    pub(crate) fn apply_spec(&self, spec: &FaultSpec) -> Result<(), FaultSpecError> {
        let (count, fault) = spec.to_fault()?;
        self.fail_next(count, fault);
        Ok(())
    }

    /// Take the fault planned for this request, if any.
    fn take(&self) -> (Duration, Option<Fault>) {
        let mut state = self.state();
        let latency = state.latency;
        let Some((left, fault)) = state.queue.front_mut() else {
            return (latency, None);
        };
        let fault = fault.clone();
        *left -= 1;
        if *left == 0 {
            state.queue.pop_front();
        }
        (latency, Some(fault))
    }

    /// Wait the latency and any planned delay (cut short by shutdown), and
    /// say what the emulator must do with this request.
    pub(crate) async fn apply(&self, stopping: &Stopping) -> Injected {
        let (latency, fault) = self.take();
        stopping.sleep(latency).await;
        match fault {
            None => Injected::None,
            Some(Fault::Delay(delay)) => {
                stopping.sleep(delay).await;
                Injected::None
            }
            Some(Fault::Status(status)) => Injected::Status(status),
            Some(Fault::Drop) => Injected::Drop,
        }
    }
}

/// The body of `POST /_sandbox/faults`: exactly one of `status`, `delay_ms`
/// and `drop`; `retry_after` and `body` go with `status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// How many of the next requests get the fault (default 1).
    pub count: Option<usize>,
    pub status: Option<u16>,
    pub retry_after: Option<u64>,
    pub body: Option<String>,
    pub delay_ms: Option<u64>,
    #[serde(default)]
    pub drop: bool,
}

/// The body of `POST /_sandbox/latency`: the latency added to every answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencySpec {
    pub latency_ms: u64,
}

/// Why a [`FaultSpec`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FaultSpecError {
    #[error("give exactly one of `status`, `delay_ms` and `drop`")]
    NotExactlyOne,
    #[error("`retry_after` and `body` go with `status` only")]
    DetailWithoutStatus,
    #[error("`status` must be from 100 to 599")]
    BadStatus,
}

impl FaultSpec {
    /// The number of requests and the fault this spec describes.
    pub fn to_fault(&self) -> Result<(usize, Fault), FaultSpecError> {
        let count = self.count.unwrap_or(1);
        let kinds = usize::from(self.status.is_some()) + usize::from(self.delay_ms.is_some()) + usize::from(self.drop);
        if kinds != 1 {
            return Err(FaultSpecError::NotExactlyOne);
        }
        if let Some(status) = self.status {
            if !(100..=599).contains(&status) {
                return Err(FaultSpecError::BadStatus);
            }
            let fault = StatusFault { status, retry_after: self.retry_after, body: self.body.clone() };
            return Ok((count, Fault::Status(fault)));
        }
        if self.retry_after.is_some() || self.body.is_some() {
            return Err(FaultSpecError::DetailWithoutStatus);
        }
        match self.delay_ms {
            Some(ms) => Ok((count, Fault::Delay(Duration::from_millis(ms)))),
            None => Ok((count, Fault::Drop)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Result<(usize, Fault), FaultSpecError> {
        serde_json::from_str::<FaultSpec>(json).unwrap().to_fault()
    }

    #[test]
    fn specs_describe_one_fault() {
        assert_eq!(spec(r#"{"status": 500}"#), Ok((1, Fault::status(500))));
        assert_eq!(spec(r#"{"count": 3, "status": 429, "retry_after": 7}"#), Ok((3, Fault::rate_limited(7))));
        assert_eq!(spec(r#"{"status": 400, "body": "no"}"#), Ok((1, Fault::status_with_body(400, "no"))));
        assert_eq!(spec(r#"{"delay_ms": 250}"#), Ok((1, Fault::Delay(Duration::from_millis(250)))));
        assert_eq!(spec(r#"{"drop": true, "count": 2}"#), Ok((2, Fault::Drop)));
    }

    #[test]
    fn specs_that_say_too_much_or_too_little_are_refused() {
        assert_eq!(spec("{}"), Err(FaultSpecError::NotExactlyOne));
        assert_eq!(spec(r#"{"status": 500, "drop": true}"#), Err(FaultSpecError::NotExactlyOne));
        assert_eq!(spec(r#"{"delay_ms": 5, "retry_after": 1}"#), Err(FaultSpecError::DetailWithoutStatus));
        assert_eq!(spec(r#"{"status": 42}"#), Err(FaultSpecError::BadStatus));
        assert!(serde_json::from_str::<FaultSpec>(r#"{"stauts": 500}"#).is_err());
    }

    #[test]
    fn planned_faults_apply_in_order_then_run_out() {
        let plan = FaultPlan::default();
        plan.fail_next(2, Fault::status(500));
        plan.fail_next(1, Fault::Drop);
        plan.fail_next(0, Fault::status(400));
        let taken: Vec<_> = (0..4).map(|_| plan.take().1).collect();
        assert_eq!(taken, [Some(Fault::status(500)), Some(Fault::status(500)), Some(Fault::Drop), None]);
    }

    #[test]
    fn reset_clears_faults_and_latency() {
        let plan = FaultPlan::default();
        plan.fail_next(5, Fault::Drop);
        plan.set_latency(Duration::from_secs(1));
        plan.reset();
        assert_eq!(plan.take(), (Duration::ZERO, None));
    }
}
