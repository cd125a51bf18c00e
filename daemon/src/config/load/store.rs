//! `[store]`: which backend keeps herald's state (main file only). The
//! PostgreSQL URL is a secret source like an account's: it may carry the
//! password, so no message ever quotes it.

use super::*;
use crate::config::{DEFAULT_POSTGRES_POOL, PostgresSettings, StoreSettings};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    backend: Option<Spanned<String>>,
    url: Option<herald_adapters::Secret>,
    pool: Option<Spanned<i64>>,
}

/// The most connections `[store] pool` may ask for.
pub const MAX_POSTGRES_POOL: i64 = 64;

impl Loader {
    /// `[store]`; sled when absent, `None` when it has errors.
    pub(super) fn store_settings(&mut self, idx: usize, item: Option<Item>) -> Option<StoreSettings> {
        let Some(mut item) = item else { return Some(StoreSettings::Sled) };
        let span = item.span();
        let dir = self.files[idx].dir().to_path_buf();
        let url_item = item.as_table_like_mut().and_then(|t| t.get_mut("url"));
        let url_span = url_item.as_ref().and_then(|u| u.span());
        if let Some(url) = url_item {
            // A URL written inline without a password holds no secret (the
            // password then comes from elsewhere, e.g. peer authentication).
            let plain = url.as_str().is_some_and(|u| postgres_url_shown(u).is_ok_and(|_| !carries_password(u)));
            if !plain && !self.resolve_secret(idx, "[store]", "url", url, &dir) {
                return None;
            }
        }
        let raw: RawStore = match from_item(item) {
            Ok(raw) => raw,
            Err(e) => {
                self.de_error(idx, span, "in [store]", &e);
                return None;
            }
        };
        let mark = self.mark();
        let pool = raw.pool.as_ref().map_or(Some(DEFAULT_POSTGRES_POOL as i64), |p| {
            self.in_range(idx, "pool", *p.get_ref(), span_of(p), 1..=MAX_POSTGRES_POOL, "1 to 64 connections")
        });
        let file = &self.files[idx];
        let backend = raw.backend.as_ref().map_or("sled", |b| b.get_ref().as_str());
        let settings = match backend {
            "sled" => {
                if raw.url.is_some() {
                    let msg =
                        "[store] `url` is for backend = \"postgres\"; sled keeps its state in `[daemon] state_dir`";
                    self.diags.error(file, url_span, msg);
                }
                if let Some(pool) = &raw.pool {
                    let msg = "[store] `pool` is for backend = \"postgres\"; sled has no connections";
                    self.diags.error(file, span_of(pool), msg);
                }
                StoreSettings::Sled
            }
            "postgres" => {
                let Some(url) = raw.url else {
                    let msg = "[store] backend = \"postgres\" needs `url`, e.g. url = { env = \"HERALD_DATABASE_URL\" } \
                               or { credential = \"herald-database-url\" }";
                    self.diags.error(file, span, msg);
                    return None;
                };
                match postgres_url_shown(url.expose()).and_then(|shown| Ok((shown, postgres_url_tls(url.expose())?))) {
                    Ok((shown, transport)) => {
                        StoreSettings::Postgres(PostgresSettings { url, pool: pool? as usize, shown, transport })
                    }
                    Err(msg) => {
                        self.diags.error(file, url_span, format!("[store] `url` {msg}"));
                        return None;
                    }
                }
            }
            other => {
                let msg = format!("`backend` is `{other}`; expected \"sled\" (the default) or \"postgres\"");
                let at = raw.backend.as_ref().and_then(span_of);
                self.diags.error(file, at, msg);
                return None;
            }
        };
        self.valid_since(mark).then_some(settings)
    }
}

/// Does a PostgreSQL URL carry a password (in its user part or as a parameter)?
fn carries_password(url: &str) -> bool {
    reqwest::Url::parse(url)
        .map(|u| u.password().is_some() || u.query_pairs().any(|(k, _)| k == "password"))
        .unwrap_or(true)
}

/// Check a PostgreSQL URL and say it as messages may show it:
/// `postgres://user@host:port/db`, without the password and without any
/// parameter (`?password=` is possible). The error never quotes the URL.
pub fn postgres_url_shown(url: &str) -> Result<String, String> {
    const NOT_SHOWN: &str = "(the value is not shown: it may hold a password)";
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(format!("must be a URL starting with postgres:// or postgresql:// {NOT_SHOWN}"));
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("is not a valid URL: {e} {NOT_SHOWN}"))?;
    let user = match parsed.username() {
        "" => String::new(),
        user => format!("{user}@"),
    };
    let host = parsed.host_str().unwrap_or("");
    let port = parsed.port().map(|p| format!(":{p}")).unwrap_or_default();
    let db = parsed.path().trim_start_matches('/');
    Ok(format!("postgres://{user}{host}{port}/{db}"))
}

/// Check a PostgreSQL URL's TLS options (`sslmode`, `sslrootcert`, ...),
/// reading the CA and client certificate files they name, and say how the
/// connection is protected: "plain text", "TLS verify-full", ...
pub fn postgres_url_tls(url: &str) -> Result<String, String> {
    let (settings, _) = crate::store::postgres::tls::Settings::take(url)?;
    settings.connector()?;
    Ok(settings.describe())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_shown_without_its_password_or_parameters() {
        let shown = postgres_url_shown("postgresql://herald:hunter2@db.example:5433/herald?sslmode=require&password=x");
        assert_eq!(shown.as_deref(), Ok("postgres://herald@db.example:5433/herald"));
        assert_eq!(postgres_url_shown("postgres://db/h").as_deref(), Ok("postgres://db/h"));
        let refused = postgres_url_shown("mysql://root:hunter2@db/h").unwrap_err();
        assert!(refused.contains("postgres://"), "{refused}");
        assert!(!refused.contains("hunter2"), "{refused}");
        let refused = postgres_url_shown("postgres://u:hunter2@db:99999/h").unwrap_err();
        assert!(!refused.contains("hunter2"), "{refused}");
        assert!(carries_password("postgres://u:p@db/h"));
        assert!(carries_password("postgres://u@db/h?password=p"));
        assert!(!carries_password("postgres://u@db/h"));
    }
}
