//! HTTP plumbing shared by every adapter: the client, reading an answer, and
//! the one mapping from HTTP statuses and transport errors to [`ErrorClass`].

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};

use crate::error::{DeliveryError, ErrorClass, PlatformAnswer};
use crate::registry::HttpOptions;

/// The `User-Agent` of every request herald sends.
pub const USER_AGENT: &str = concat!("herald/", env!("CARGO_PKG_VERSION"));

/// How much of an answer body is read; the rest is ignored. Receipts and
/// error bodies are far smaller.
pub const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// How many characters of an answer body go into [`PlatformAnswer::message`].
pub const EXCERPT_CHARS: usize = 300;

/// Build the HTTP client of one account.
///
/// Redirects are not followed: a publish is a POST that must reach the
/// configured endpoint or fail visibly. Proxies from the environment are
/// ignored, so what the config says is what the daemon does. A private CA
/// (`extra_roots_pem`) is trusted besides the public roots.
pub fn client(options: &HttpOptions) -> Result<reqwest::Client, reqwest::Error> {
    let mut builder = reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .connect_timeout(options.connect_timeout)
        .timeout(options.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy();
    if let Some(pem) = &options.extra_roots_pem {
        for certificate in reqwest::Certificate::from_pem_bundle(pem)? {
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder.build()
}

/// What an HTTP status says about an attempt: `Ok` for 2xx, otherwise the
/// class of the failure. Retried: 408, 429 (rate limited, after
/// `retry_after`) and 5xx except 501; a 5xx with a `Retry-After` (a 503 in
/// maintenance, an overloaded proxy) is rate limited for that long, so the
/// account waits as asked. Everything else (501, 3xx, the other 4xx) will
/// not change by retrying.
pub fn classify_status(status: StatusCode, retry_after: Option<Duration>) -> Result<(), ErrorClass> {
    match status.as_u16() {
        200..=299 => Ok(()),
        429 => Err(ErrorClass::RateLimited { retry_after }),
        408 => Err(ErrorClass::Transient),
        501 => Err(ErrorClass::Permanent),
        500..=599 => Err(match retry_after {
            Some(wait) => ErrorClass::RateLimited { retry_after: Some(wait) },
            None => ErrorClass::Transient,
        }),
        _ => Err(ErrorClass::Permanent),
    }
}

/// Parse a `Retry-After` value: delta-seconds or an HTTP date (IMF-fixdate,
/// and the obsolete RFC 850 and asctime forms). A date in the past means
/// zero; anything longer than `max` is clamped to `max`; garbage is `None`.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>, max: Duration) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // All digits: only an overflow can fail, and that is "very long".
        let wait = value.parse::<u64>().map_or(max, Duration::from_secs);
        return Some(wait.min(max));
    }
    let when = parse_http_date(value)?;
    let wait = (when - now).to_std().unwrap_or(Duration::ZERO);
    Some(wait.min(max))
}

fn parse_http_date(value: &str) -> Option<DateTime<Utc>> {
    httpdate::parse_http_date(value).ok().map(DateTime::<Utc>::from)
}

/// The `Retry-After` of an answer, parsed against the current time.
pub fn retry_after(headers: &HeaderMap, max: Duration) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?;
    parse_retry_after(value, Utc::now(), max)
}

/// Send one request and read its answer. A failure before an answer
/// arrived becomes a [`DeliveryError`] through [`transport_error`]; an
/// answer of any status is returned for the caller to classify.
pub async fn exchange(request: reqwest::RequestBuilder) -> Result<Answer, DeliveryError> {
    let response = request.send().await.map_err(transport_error)?;
    Ok(Answer::read(response).await)
}

/// [`exchange`], with one debug line saying how it went: the platform, the
/// call, the delivery (or `-`), the status or the error, and the time taken.
pub async fn traced_exchange(
    request: reqwest::RequestBuilder,
    platform: &'static str,
    call: &'static str,
    delivery: Option<&str>,
) -> Result<Answer, DeliveryError> {
    let started = std::time::Instant::now();
    let result = exchange(request).await;
    let delivery = delivery.unwrap_or("-");
    let elapsed_ms = started.elapsed().as_millis() as u64;
    match &result {
        Ok(answer) => {
            tracing::debug!(platform, delivery, call, status = answer.status.as_u16(), elapsed_ms, "answered")
        }
        Err(error) => tracing::debug!(
            platform,
            delivery,
            call,
            maybe_sent = error.maybe_sent,
            error = %error.reason,
            elapsed_ms,
            "request failed"
        ),
    }
    result
}

/// Turn a transport error (no HTTP answer) into a [`DeliveryError`].
///
/// A failed connection never carried the request: transient, not sent. A
/// timeout, or a failure once the connection was up, may have delivered it:
/// transient and `maybe_sent`. A request that could not even be built is
/// permanent. The message never holds the URL (tokens travel in query
/// strings on some platforms) nor any header.
pub fn transport_error(error: reqwest::Error) -> DeliveryError {
    let message = describe(error.without_url());
    let answer = |text: &str| PlatformAnswer { message: Some(text.to_string()), ..PlatformAnswer::default() };
    if message.is_builder {
        DeliveryError::permanent(answer(&message.text), "the request could not be built")
    } else if message.is_connect {
        DeliveryError::transient(answer(&message.text), "could not connect to the platform")
    } else if message.is_timeout {
        DeliveryError::transient(answer(&message.text), "no answer from the platform in time").maybe_sent()
    } else {
        DeliveryError::transient(answer(&message.text), "the connection failed after the request was sent").maybe_sent()
    }
}

struct TransportFailure {
    text: String,
    is_builder: bool,
    is_connect: bool,
    is_timeout: bool,
}

/// The error and its causes, joined, with anything URL-like removed.
fn describe(error: reqwest::Error) -> TransportFailure {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    TransportFailure {
        text: redact_urls(&text),
        is_builder: error.is_builder(),
        // A connect timeout is both; it never sent the request.
        is_connect: error.is_connect(),
        is_timeout: error.is_timeout(),
    }
}

/// Replace every word that looks like a URL (`scheme://...`) with `<url>`.
/// `without_url()` removes reqwest's own copy; this catches any a cause
/// might carry.
fn redact_urls(text: &str) -> String {
    text.split(' ').map(|word| if word.contains("://") { "<url>" } else { word }).collect::<Vec<_>>().join(" ")
}

/// An HTTP answer read whole: the status, the headers, and at most
/// [`MAX_ANSWER_BYTES`] of body. Its `Debug` shows neither headers nor body.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    /// Read an answer. A body cut short (connection lost while reading) keeps
    /// what arrived: the status has already told what happened.
    pub async fn read(mut response: reqwest::Response) -> Answer {
        let status = response.status();
        let headers = std::mem::take(response.headers_mut());
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = MAX_ANSWER_BYTES - body.len();
                    body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    if body.len() >= MAX_ANSWER_BYTES {
                        break;
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    tracing::debug!(status = status.as_u16(), error = %describe(error.without_url()).text, "answer body cut short");
                    break;
                }
            }
        }
        Answer { status, headers, body }
    }

    /// The first [`EXCERPT_CHARS`] characters of the body (invalid UTF-8
    /// replaced).
    pub fn excerpt(&self) -> String {
        String::from_utf8_lossy(&self.body).chars().take(EXCERPT_CHARS).collect()
    }

    /// The answer as the audit log keeps it: status and body excerpt.
    pub fn platform_answer(&self) -> PlatformAnswer {
        let excerpt = self.excerpt();
        PlatformAnswer {
            status: Some(self.status.as_u16()),
            code: None,
            message: (!excerpt.is_empty()).then_some(excerpt),
        }
    }

    /// `Ok` for a 2xx answer, otherwise the [`DeliveryError`] its status
    /// calls for, with `Retry-After` (clamped to `max_retry_after`) on a 429
    /// or a 5xx.
    pub fn error_for_status(&self, max_retry_after: Duration) -> Result<(), DeliveryError> {
        let retry_after = retry_after(&self.headers, max_retry_after);
        let Err(class) = classify_status(self.status, retry_after) else {
            return Ok(());
        };
        let reason = match &class {
            ErrorClass::RateLimited { retry_after: Some(wait) } => {
                format!("the platform answered {} (retry after {}s)", self.status, wait.as_secs())
            }
            _ => format!("the platform answered {}", self.status),
        };
        Err(DeliveryError::new(class, self.platform_answer(), reason))
    }
}

impl fmt::Debug for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Answer").field("status", &self.status).field("body_bytes", &self.body.len()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn class(code: u16) -> Result<(), ErrorClass> {
        classify_status(StatusCode::from_u16(code).unwrap(), Some(Duration::from_secs(7)))
    }

    #[test]
    fn status_table() {
        for ok in [200, 201, 202, 204, 299] {
            assert_eq!(class(ok), Ok(()), "{ok}");
        }
        let none = |code: u16| classify_status(StatusCode::from_u16(code).unwrap(), None);
        for transient in [408, 500, 502, 503, 504, 599] {
            assert_eq!(none(transient), Err(ErrorClass::Transient), "{transient}");
        }
        // A server error that says when to come back is waited for.
        for unavailable in [500, 502, 503, 504, 599] {
            let wait = Some(Duration::from_secs(7));
            assert_eq!(class(unavailable), Err(ErrorClass::RateLimited { retry_after: wait }), "{unavailable}");
        }
        assert_eq!(class(408), Err(ErrorClass::Transient));
        assert_eq!(class(429), Err(ErrorClass::RateLimited { retry_after: Some(Duration::from_secs(7)) }));
        for permanent in [301, 302, 304, 400, 401, 403, 404, 409, 413, 422, 501] {
            assert_eq!(class(permanent), Err(ErrorClass::Permanent), "{permanent}");
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z").unwrap().with_timezone(&Utc)
    }

    #[test]
    fn retry_after_in_seconds() {
        assert_eq!(parse_retry_after("7", now(), HOUR), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 120 ", now(), HOUR), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("0", now(), HOUR), Some(Duration::ZERO));
    }

    #[test]
    fn retry_after_as_http_date() {
        let imf = "Wed, 21 Oct 2015 07:28:30 GMT";
        assert_eq!(parse_retry_after(imf, now(), HOUR), Some(Duration::from_secs(30)));
        let rfc850 = "Wednesday, 21-Oct-15 07:29:00 GMT";
        assert_eq!(parse_retry_after(rfc850, now(), HOUR), Some(Duration::from_secs(60)));
        let asctime = "Wed Oct 21 07:28:05 2015";
        assert_eq!(parse_retry_after(asctime, now(), HOUR), Some(Duration::from_secs(5)));
        let past = "Wed, 21 Oct 2015 07:00:00 GMT";
        assert_eq!(parse_retry_after(past, now(), HOUR), Some(Duration::ZERO));
    }

    #[test]
    fn retry_after_garbage_is_none() {
        for garbage in ["", "soon", "-5", "1.5", "7s", "Wed, 32 Oct 2015 07:28:30 GMT", "0x10"] {
            assert_eq!(parse_retry_after(garbage, now(), HOUR), None, "{garbage:?}");
        }
    }

    #[test]
    fn retry_after_is_clamped() {
        assert_eq!(parse_retry_after("86400", now(), HOUR), Some(HOUR));
        assert_eq!(parse_retry_after("99999999999999999999999", now(), HOUR), Some(HOUR));
        assert_eq!(parse_retry_after("Thu, 22 Oct 2015 07:28:00 GMT", now(), HOUR), Some(HOUR));
        assert_eq!(parse_retry_after("3600", now(), HOUR), Some(HOUR));
    }

    #[test]
    fn retry_after_from_headers() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers, HOUR), None);
        headers.insert(RETRY_AFTER, "42".parse().unwrap());
        assert_eq!(retry_after(&headers, HOUR), Some(Duration::from_secs(42)));
    }

    #[test]
    fn urls_are_redacted_from_messages() {
        assert_eq!(
            redact_urls("error for https://api.example.com/x?access_token=sekrit: refused"),
            "error for <url> refused"
        );
        assert_eq!(redact_urls("tcp connect error: refused"), "tcp connect error: refused");
    }

    fn answer(status: u16, retry_after: Option<&str>, body: &str) -> Answer {
        let mut headers = HeaderMap::new();
        if let Some(value) = retry_after {
            headers.insert(RETRY_AFTER, value.parse().unwrap());
        }
        Answer { status: StatusCode::from_u16(status).unwrap(), headers, body: body.as_bytes().to_vec() }
    }

    #[test]
    fn answers_become_delivery_errors() {
        assert!(answer(201, None, "").error_for_status(HOUR).is_ok());

        let limited = answer(429, Some("7"), "slow down").error_for_status(HOUR).unwrap_err();
        assert_eq!(limited.class, ErrorClass::RateLimited { retry_after: Some(Duration::from_secs(7)) });
        assert_eq!(limited.answer.status, Some(429));
        assert_eq!(limited.answer.message.as_deref(), Some("slow down"));
        assert!(!limited.maybe_sent);

        let clamped = answer(429, Some("7200"), "").error_for_status(HOUR).unwrap_err();
        assert_eq!(clamped.class, ErrorClass::RateLimited { retry_after: Some(HOUR) });
        assert_eq!(clamped.answer.message, None);

        let unavailable = answer(503, Some("120"), "maintenance").error_for_status(HOUR).unwrap_err();
        assert_eq!(unavailable.class, ErrorClass::RateLimited { retry_after: Some(Duration::from_secs(120)) });
        assert!(unavailable.reason.contains("retry after 120s"), "{}", unavailable.reason);
        let busy = answer(503, None, "").error_for_status(HOUR).unwrap_err();
        assert_eq!(busy.class, ErrorClass::Transient);

        let long = "é".repeat(500);
        let bad = answer(400, None, &long).error_for_status(HOUR).unwrap_err();
        assert_eq!(bad.class, ErrorClass::Permanent);
        assert_eq!(bad.answer.message.unwrap().chars().count(), EXCERPT_CHARS);
    }

    #[test]
    fn answer_debug_hides_headers_and_body() {
        let shown = format!("{:?}", answer(200, Some("1"), "token=abc"));
        assert!(!shown.contains("token"), "{shown}");
    }

    #[test]
    fn user_agent_names_the_version() {
        assert_eq!(USER_AGENT, format!("herald/{}", env!("CARGO_PKG_VERSION")));
    }
}
