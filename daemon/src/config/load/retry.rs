//! `[retry]`: how failed attempts are retried (main file only).

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    max_attempts: Option<Spanned<i64>>,
    initial_backoff: Option<Spanned<String>>,
    max_backoff: Option<Spanned<String>>,
    multiplier: Option<Spanned<f64>>,
    jitter: Option<Spanned<f64>>,
    max_retry_after: Option<Spanned<String>>,
}

impl Loader {
    pub(super) fn retry_policy(&mut self, idx: usize, item: Option<Item>) -> Option<RetryPolicy> {
        let defaults = RetryPolicy::default();
        let Some(item) = item else { return Some(defaults) };
        let span = item.span();
        let raw: RawRetry = match from_item(item) {
            Ok(raw) => raw,
            Err(e) => {
                self.de_error(idx, span, "in [retry]", &e);
                return None;
            }
        };
        let mark = self.mark();
        let max_attempts = raw.max_attempts.map_or(Some(i64::from(defaults.max_attempts)), |n| {
            self.in_range(idx, "max_attempts", *n.get_ref(), span_of(&n), 1..=100, "1 to 100 (1 means no retry)")
        });
        // Compare the backoffs only when both parsed: a default standing in
        // for a bad value would give a second, misleading error.
        let backoffs = self.mark();
        let initial_backoff = self.duration(idx, raw.initial_backoff.as_ref(), defaults.initial_backoff);
        let max_backoff = self.duration(idx, raw.max_backoff.as_ref(), defaults.max_backoff);
        let backoffs_parsed = self.valid_since(backoffs);
        let max_retry_after = self.duration(idx, raw.max_retry_after.as_ref(), defaults.max_retry_after);
        let file = &self.files[idx];
        if initial_backoff.is_zero() {
            let at = raw.initial_backoff.as_ref().and_then(span_of);
            self.diags.error(file, at, "`initial_backoff` must be longer than zero");
        }
        if backoffs_parsed && max_backoff < initial_backoff {
            let at = raw.max_backoff.as_ref().and_then(span_of).or(span.clone());
            self.diags.error(file, at, "`max_backoff` is shorter than `initial_backoff`");
        }
        let multiplier = raw.multiplier.map_or(Some(defaults.multiplier), |m| {
            self.in_range(idx, "multiplier", *m.get_ref(), span_of(&m), 1.0..=10.0, "1.0 to 10.0")
        });
        let jitter = raw.jitter.map_or(Some(defaults.jitter), |j| {
            self.in_range(idx, "jitter", *j.get_ref(), span_of(&j), 0.0..=1.0, "0.0 to 1.0")
        });
        let (Some(max_attempts), Some(multiplier), Some(jitter)) = (max_attempts, multiplier, jitter) else {
            return None;
        };
        let max_attempts = max_attempts as u32;
        self.valid_since(mark).then_some(RetryPolicy {
            max_attempts,
            initial_backoff,
            max_backoff,
            multiplier,
            jitter,
            max_retry_after,
        })
    }
}
