//! `[accounts.<id>]`: one destination, its secrets resolved and its adapter
//! built (main file and account files only).

use super::*;

const ACCOUNT_KEYS_OWNED_BY_DAEMON: &[&str] =
    &["platform", "rate", "concurrency", "timeout", "connect_timeout", "ca_file"];
/// A CA bundle is a few certificates; more than this is not one.
const MAX_CA_FILE_BYTES: u64 = 1024 * 1024;

impl Loader {
    pub(super) fn account(&mut self, idx: usize, id: String, item: Item) {
        let file_dir = self.files[idx].dir().to_path_buf();
        let header = item.span();
        let Item::Table(mut table) = item else {
            self.diags.error(&self.files[idx], header, format!("account `{id}` must be a table [accounts.{id}]"));
            return;
        };
        let span = header.unwrap_or(0..0);
        self.declared.insert(id.clone());
        if !valid_id(&id) {
            self.diags.error(&self.files[idx], Some(span.clone()), format!("account id `{id}` {ID_RULE}"));
        }
        if let Some((_, other, _)) = self.accounts.get(&id) {
            let other = self.files[*other].path.display().to_string();
            self.diags.error(&self.files[idx], Some(span), format!("account `{id}` is already defined in {other}"));
            return;
        }
        let platform = match table.get("platform").map(|i| (i.as_str(), i.span())) {
            None => {
                let names: Vec<_> = Platform::ALL.iter().map(|p| p.name()).collect();
                let msg = format!("account `{id}` needs `platform`, one of {}", names.join(", "));
                self.diags.error(&self.files[idx], Some(span), msg);
                return;
            }
            Some((Some(name), at)) => match Platform::parse(name) {
                Some(p) => p,
                None => {
                    let names: Vec<_> = Platform::ALL.iter().map(|p| p.name()).collect();
                    let msg = format!("unknown platform `{name}`; expected one of {}", names.join(", "));
                    self.diags.error(&self.files[idx], at, msg);
                    return;
                }
            },
            Some((None, at)) => {
                self.diags.error(&self.files[idx], at, "`platform` must be a string");
                return;
            }
        };
        let mark = self.mark();
        let rate = match self.take_str(idx, &mut table, "rate") {
            Some((text, at)) => match Rate::parse(&text) {
                Ok(rate) => Some(rate),
                Err(msg) => {
                    self.diags.error(&self.files[idx], at, msg);
                    None
                }
            },
            None => platform.default_rate().map(|(count, per)| Rate { count, per }),
        };
        let concurrency = match table.remove("concurrency") {
            None => 1,
            Some(item) => match item.as_integer() {
                Some(n) => self.in_range(idx, "concurrency", n, item.span(), 1..=1000, "1 to 1000").unwrap_or(1) as u32,
                None => {
                    self.diags.error(
                        &self.files[idx],
                        item.span(),
                        "`concurrency` must be a whole number from 1 to 1000",
                    );
                    1
                }
            },
        };
        let mut http = HttpOptions::default();
        for key in ["timeout", "connect_timeout"] {
            if let Some((text, at)) = self.take_str(idx, &mut table, key) {
                match parse_duration(&text) {
                    Ok(d) if !d.is_zero() => {
                        if key == "timeout" {
                            http.timeout = d;
                        } else {
                            http.connect_timeout = d;
                        }
                    }
                    Ok(_) => {
                        self.diags.error(&self.files[idx], at, format!("`{key}` must be longer than zero"));
                    }
                    Err(msg) => {
                        self.diags.error(&self.files[idx], at, msg);
                    }
                }
            }
        }
        if let Some((name, at)) = self.take_str(idx, &mut table, "ca_file") {
            match read_ca_file(&file_dir.join(&name)) {
                Ok(pem) => http.extra_roots_pem = Some(pem.into()),
                Err(msg) => {
                    self.diags.error(&self.files[idx], at, format!("account `{id}`: `ca_file` {name}: {msg}"));
                }
            }
        }
        // An endpoint in clear text over the network, when the account sends a secret.
        let carries_secret =
            platform == Platform::Webhook || platform.secret_fields().iter().any(|k| table.contains_key(k));
        for key in ["url", "base_url"] {
            if let Some(item) = table.get(key)
                && let Some(url) = item.as_str()
                && carries_secret
                && clear_text_off_host(url)
            {
                let msg = format!(
                    "account `{id}`: `{key}` is http://, so its credentials (and, for a webhook, the URL's own \
                     token) cross the network unencrypted; use https:// (a private CA can be trusted with `ca_file`)"
                );
                self.diags.warning(&self.files[idx], item.span(), msg);
            }
        }
        table.remove("platform");
        for key in platform.secret_fields() {
            let Some(item) = table.get_mut(key) else { continue };
            self.resolve_secret(idx, &format!("account `{id}`:"), key, item, &file_dir);
        }
        let file = &self.files[idx];
        // Where each setting's value is written, for errors the adapter finds in it.
        let value_spans: HashMap<String, Range<usize>> =
            table.iter().filter_map(|(key, item)| Some((key.to_string(), item.span()?))).collect();
        let value = toml_edit::Value::InlineTable(table.into_inline_table());
        let settings = match AccountSettings::deserialize(platform, value.into_deserializer()) {
            Ok(s) => s,
            Err(e) => {
                let mut msg = describe_de_error(&e);
                if msg.starts_with("unknown key") {
                    msg.push_str(&format!(
                        " (or one of {}, which herald reads for every account)",
                        ACCOUNT_KEYS_OWNED_BY_DAEMON.join(", ")
                    ));
                }
                self.diags.error(file, e.span().or(Some(span)), format!("account `{id}` ({platform}): {msg}"));
                return;
            }
        };
        if !self.valid_since(mark) {
            return;
        }
        let adapter = match registry::build(&settings, http.clone(), &Services::in_memory(&id)) {
            Ok(a) => a,
            Err(e) => {
                let at = match &e {
                    registry::BuildError::InvalidSetting { field, .. } => value_spans.get(*field).cloned(),
                    _ => None,
                };
                self.diags.error(file, at.or(Some(span)), format!("account `{id}` ({platform}): {e}"));
                return;
            }
        };
        if let Some(expires) = settings.credentials_expire_at() {
            let left = expires - self.now;
            if left <= chrono::Duration::zero() {
                let msg = format!(
                    "account `{id}`: its credentials expired at {}; re-authorize the account",
                    expires.to_rfc3339()
                );
                self.diags.error(file, Some(span.clone()), msg);
                return;
            } else if left <= chrono::Duration::days(14) {
                let msg = format!(
                    "account `{id}`: its credentials expire at {} (in {} days); re-authorize it before then",
                    expires.to_rfc3339(),
                    left.num_days()
                );
                self.diags.warning(file, Some(span.clone()), msg);
            }
        }
        if platform.experimental() {
            let msg =
                format!("account `{id}`: the {platform} adapter is experimental; read the README before relying on it");
            self.diags.warning(file, Some(span.clone()), msg);
        }
        let account = Account { id: id.clone(), platform, settings, adapter, rate, concurrency, http };
        self.accounts.insert(id, (account, idx, span));
    }

    /// Take `key` out of an account's table: its text and where it is; an
    /// error when it is there but not a string.
    fn take_str(&mut self, idx: usize, table: &mut Table, key: &str) -> Option<(String, Option<Range<usize>>)> {
        let item = table.remove(key)?;
        match item.as_str() {
            Some(s) => Some((s.to_string(), item.span())),
            None => {
                self.diags.error(&self.files[idx], item.span(), format!("`{key}` must be a string"));
                None
            }
        }
    }

    /// Resolve a secret setting in place (its item becomes the value);
    /// errors and warnings are reported, prefixed with `owner`. False when it
    /// cannot be resolved.
    pub(super) fn resolve_secret(&mut self, idx: usize, owner: &str, key: &str, item: &mut Item, dir: &Path) -> bool {
        let at = item.span();
        let file = &self.files[idx];
        match secrets::resolve(key, item, dir, self.credentials_dir.as_deref(), &self.trusted_groups) {
            Ok(Resolved::Value(value)) => secrets::replace(item, value),
            Ok(Resolved::Exposed { value, path, mode, group }) => {
                let msg = match group {
                    None => format!(
                        "{owner} `{key}` comes from {}, which every user on this host can read (mode {mode:o}); \
                         chmod o-r it",
                        path.display()
                    ),
                    Some(gid) => format!(
                        "{owner} `{key}` comes from {}, which the members of group {gid} can read (mode {mode:o}), \
                         a group other than herald's and root's; chmod g-r it, or chgrp it to herald's group",
                        path.display()
                    ),
                };
                self.diags.warning(file, at, msg);
                secrets::replace(item, value);
            }
            Ok(Resolved::Inline(value)) => {
                let mut msg = format!(
                    "{owner} `{key}` is written inline; prefer {{ env = \"VAR\" }}, {{ file = \"path\" }} \
                     or {{ credential = \"name\" }} so the secret stays out of the config file"
                );
                if let Some(mode) = secrets::world_readable(&file.path) {
                    msg.push_str(&format!(", which every user on this host can read (mode {mode:o})"));
                }
                self.diags.warning(file, at, msg);
                secrets::replace(item, value);
            }
            Err(msg) => {
                self.diags.error(file, at, format!("{owner} {msg}"));
                secrets::replace(item, String::new());
                return false;
            }
        }
        true
    }
}

/// Read a private CA's certificates (PEM) through the bounded reader; at
/// least one certificate, or an error saying what is wrong.
fn read_ca_file(path: &Path) -> Result<Vec<u8>, String> {
    let pem = read_bounded(path, MAX_CA_FILE_BYTES).map_err(|e| format!("cannot be read: {e}"))?;
    match reqwest::Certificate::from_pem_bundle(&pem) {
        Ok(certificates) if !certificates.is_empty() => Ok(pem),
        Ok(_) => Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_string()),
        Err(e) => Err(format!("is not a PEM certificate bundle: {e}")),
    }
}

/// An `http://` URL to a host other than this one (loopback addresses and
/// `localhost` stay on the host).
fn clear_text_off_host(url: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(url.trim()) else { return false };
    let host = url.host_str().unwrap_or("localhost").trim_start_matches('[').trim_end_matches(']');
    let local =
        host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    url.scheme() == "http" && !local
}
