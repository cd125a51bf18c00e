//! `[alerts]`: where failed deliveries and long pauses are reported (main file only).

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlerts {
    webhook: Option<Spanned<String>>,
    secret: Option<herald_adapters::Secret>,
    command: Option<Spanned<Vec<String>>>,
    pause_threshold: Option<Spanned<String>>,
    credential_warning: Option<Spanned<String>>,
}

impl Loader {
    /// `[alerts]`; `Some(None)` when absent, `None` when it has errors.
    pub(super) fn alerts(&mut self, idx: usize, item: Option<Item>) -> Option<Option<crate::config::AlertSettings>> {
        let Some(mut item) = item else { return Some(None) };
        let span = item.span();
        let dir = self.files[idx].dir().to_path_buf();
        if let Some(secret) = item.as_table_like_mut().and_then(|t| t.get_mut("secret"))
            && !self.resolve_secret(idx, "[alerts]", "secret", secret, &dir)
        {
            return None;
        }
        let raw: RawAlerts = match from_item(item) {
            Ok(raw) => raw,
            Err(e) => {
                self.de_error(idx, span, "in [alerts]", &e);
                return None;
            }
        };
        let mark = self.mark();
        let pause_threshold = self.duration(idx, raw.pause_threshold.as_ref(), Duration::from_secs(30 * 60));
        let credential_warning = self.duration(idx, raw.credential_warning.as_ref(), Duration::from_secs(14 * 86_400));
        let file = &self.files[idx];
        if let Some(url) = &raw.webhook
            && !(url.get_ref().starts_with("http://") || url.get_ref().starts_with("https://"))
        {
            self.diags.error(file, span_of(url), "[alerts] `webhook` must be an http:// or https:// URL");
        }
        if let Some(command) = &raw.command
            && command.get_ref().is_empty()
        {
            self.diags.error(
                file,
                span_of(command),
                "[alerts] `command` must name a program, e.g. [\"/usr/local/bin/page-ops\"]",
            );
        }
        if raw.webhook.is_none() && raw.command.is_none() {
            self.diags.error(file, span, "[alerts] needs `webhook` or `command` (or remove the section)");
        }
        self.valid_since(mark).then(|| {
            Some(crate::config::AlertSettings {
                webhook: raw.webhook.map(Spanned::into_inner),
                secret: raw.secret,
                command: raw.command.map(Spanned::into_inner),
                pause_threshold,
                credential_warning,
            })
        })
    }
}
