//! A platform API's base URL (an account's `base_url` setting, or the
//! platform's real host) and the URLs of the endpoints under it.

use std::fmt;

use reqwest::Url;

use crate::registry::BuildError;

/// The root of a platform's API: an http(s) URL with a host, no query, no
/// fragment and no credentials. Endpoint paths are appended to its path, so
/// a private deployment under a folder (`https://host/forum`) works.
#[derive(Clone, PartialEq, Eq)]
pub struct BaseUrl(Url);

impl BaseUrl {
    /// Parse the `base_url` setting, or `default` when the setting is absent.
    /// Without either, the setting is required. Messages never quote the URL.
    pub fn parse(setting: Option<&str>, default: Option<&str>) -> Result<BaseUrl, BuildError> {
        let Some(text) = setting.or(default) else {
            return Err(invalid("is required: the URL of the platform's server"));
        };
        let url = Url::parse(text.trim()).map_err(|error| invalid(format!("not a valid URL: {error}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid("the scheme must be http or https"));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(invalid("the URL has no host"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(invalid("the URL must not have a query or a fragment"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(invalid("the URL must not carry credentials; use the account's secret settings"));
        }
        Ok(BaseUrl(url))
    }

    /// The URL of `path` (which starts with `/`) under the base.
    pub fn join(&self, path: &str) -> Url {
        let mut url = self.0.clone();
        let joined = format!("{}{path}", self.0.path().trim_end_matches('/'));
        url.set_path(&joined);
        url
    }

    /// The URL of the base's path followed by `segments`, each
    /// percent-encoded as one path segment.
    pub fn join_segments(&self, segments: &[&str]) -> Url {
        let mut url = self.0.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// The base as text, without a trailing slash (for public URLs).
    pub fn as_str(&self) -> &str {
        self.0.as_str().trim_end_matches('/')
    }

    pub fn host(&self) -> &str {
        self.0.host_str().unwrap_or_default()
    }
}

/// Shows the host only, like the adapters' own `Debug`.
impl fmt::Debug for BaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("BaseUrl").field(&self.host()).finish()
    }
}

fn invalid(message: impl Into<String>) -> BuildError {
    BuildError::InvalidSetting { field: "base_url", message: message.into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(text: &str) -> BaseUrl {
        BaseUrl::parse(Some(text), None).unwrap()
    }

    #[test]
    fn joins_paths_under_the_base_path() {
        assert_eq!(base("https://api.weibo.com").join("/2/x.json").as_str(), "https://api.weibo.com/2/x.json");
        assert_eq!(base("http://127.0.0.1:9/weibo/").join("/2/x.json").as_str(), "http://127.0.0.1:9/weibo/2/x.json");
        assert_eq!(base("http://h/forum").as_str(), "http://h/forum");
        assert_eq!(base("http://h/").as_str(), "http://h");
    }

    #[test]
    fn encodes_segments() {
        let url = base("http://h/forum/").join_segments(&["t", "external_id", "a/b c.json"]);
        assert_eq!(url.as_str(), "http://h/forum/t/external_id/a%2Fb%20c.json");
    }

    #[test]
    fn the_default_applies_only_without_a_setting() {
        assert_eq!(BaseUrl::parse(None, Some("https://d.example")).unwrap().host(), "d.example");
        assert_eq!(BaseUrl::parse(Some("http://o.example"), Some("https://d.example")).unwrap().host(), "o.example");
        let error = BaseUrl::parse(None, None).unwrap_err().to_string();
        assert!(error.starts_with("invalid setting `base_url`: is required"), "{error}");
    }

    #[test]
    fn refuses_bad_urls_without_quoting_them() {
        for text in ["ftp://h/sekrit", "sekrit", "http://h/?token=sekrit", "http://h/#sekrit", "http://u:sekrit@h/"] {
            let error = BaseUrl::parse(Some(text), None).unwrap_err().to_string();
            assert!(error.starts_with("invalid setting `base_url`"), "{text}: {error}");
            assert!(!error.contains("sekrit"), "{text}: {error}");
        }
    }
}
