//! Weibo's content rules: the text is the body and the link, counted in
//! Chinese characters (two ASCII or half-width characters count as one), it
//! must carry a URL on the app's safe domain, and one JPEG, GIF or PNG
//! picture under 5 MB may go with it.

use std::io::Read;

use reqwest::Url;

use crate::{ContentProblem, PostContent, Rendered};

/// Pictures must be smaller than this.
pub const MAX_PICTURE_BYTES: u64 = 5 * 1024 * 1024;

/// The length of `text` as Weibo counts it: a half-width character (ASCII,
/// half-width katakana and hangul, half-width symbols) weighs one half,
/// anything else one; halves are rounded up.
pub fn weibo_length(text: &str) -> usize {
    let halves: usize = text.chars().map(|c| if is_half_width(c) { 1 } else { 2 }).sum();
    halves.div_ceil(2)
}

fn is_half_width(c: char) -> bool {
    c.is_ascii() || ('\u{FF61}'..='\u{FFDC}').contains(&c) || ('\u{FFE8}'..='\u{FFEE}').contains(&c)
}

/// The hosts of the `http://` and `https://` URLs written in `text`
/// (lowercase), in order.
pub fn url_hosts(text: &str) -> Vec<String> {
    let lower = text.to_ascii_lowercase();
    let mut hosts = Vec::new();
    let mut rest = lower.as_str();
    while let Some(at) = rest.find("http") {
        rest = &rest[at + 4..];
        let after = rest.strip_prefix("s://").or_else(|| rest.strip_prefix("://"));
        if let Some(after) = after {
            let host: String =
                after.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.').collect();
            let host = host.trim_end_matches('.');
            if !host.is_empty() {
                hosts.push(host.to_string());
            }
        }
    }
    hosts
}

/// Whether `host` is `domain` or one of its subdomains.
pub fn on_domain(host: &str, domain: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host == domain || host.strip_suffix(domain).is_some_and(|prefix| prefix.ends_with('.'))
}

/// The picture formats Weibo takes, by their first bytes.
pub fn picture_type(head: &[u8]) -> Option<&'static str> {
    if head.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("image/jpeg")
    } else if head.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if head.starts_with(b"GIF87a") || head.starts_with(b"GIF89a") {
        Some("image/gif")
    } else {
        None
    }
}

/// The rules of one account.
#[derive(Debug, Clone)]
pub(super) struct Rules {
    /// Lowercase, without a leading dot.
    pub safe_domain: String,
    pub max_length: usize,
}

impl Rules {
    pub(super) fn render(&self, content: &PostContent) -> Result<Rendered, Vec<ContentProblem>> {
        let mut problems = Vec::new();
        let body = content.body.trim_end();
        if body.trim().is_empty() {
            problems.push(ContentProblem::new("body", "must not be empty"));
        }
        let needs_link = || format!("needs a link on {}", self.safe_domain);
        match content.link.as_deref().map(str::trim) {
            Some(link) => match Url::parse(link) {
                Ok(url) if matches!(url.scheme(), "http" | "https") => {
                    let host = url.host_str().unwrap_or_default();
                    if !on_domain(host, &self.safe_domain) {
                        problems.push(ContentProblem::new("link", format!("{}; {host} is not on it", needs_link())));
                    }
                }
                _ => {
                    problems.push(ContentProblem::new("link", format!("{}; this is not an http(s) URL", needs_link())))
                }
            },
            None => {
                if !url_hosts(body).iter().any(|host| on_domain(host, &self.safe_domain)) {
                    problems.push(ContentProblem::new("link", needs_link()));
                }
            }
        }
        let text = match content.link.as_deref().map(str::trim) {
            Some(link) => format!("{body} {link}"),
            None => body.to_string(),
        };
        let length = weibo_length(&text);
        if length > self.max_length {
            problems.push(ContentProblem::new(
                "body",
                format!(
                    "the text with its link is {length} Weibo characters long (two ASCII or half-width characters \
                     count as one); the limit is {}",
                    self.max_length
                ),
            ));
        }
        let picture = content.images.first();
        if let Some(path) = picture
            && let Err(problem) = check_picture(path)
        {
            problems.push(ContentProblem::new("images", problem));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Rendered {
            title: None,
            text,
            link: content.link.as_deref().map(|link| link.trim().to_string()),
            images: picture.cloned().into_iter().collect(),
        })
    }
}

/// Check a picture file: readable, under 5 MB, JPEG, GIF or PNG. Returns
/// its MIME type.
pub(super) fn check_picture(path: &str) -> Result<&'static str, String> {
    let (mut file, size) = crate::files::open_regular(std::path::Path::new(path))
        .map_err(|error| format!("`{path}` cannot be read: {error}"))?;
    if size >= MAX_PICTURE_BYTES {
        return Err(format!("`{path}` is {size} bytes; Weibo takes pictures under 5 MB ({MAX_PICTURE_BYTES} bytes)"));
    }
    let mut head = [0u8; 8];
    let read = file.read(&mut head).map_err(|error| format!("`{path}` cannot be read: {error}"))?;
    picture_type(&head[..read]).ok_or_else(|| format!("`{path}` is not a JPEG, GIF or PNG picture"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_weibo_way() {
        assert_eq!(weibo_length(""), 0);
        assert_eq!(weibo_length("ab"), 1);
        assert_eq!(weibo_length("abc"), 2, "halves round up");
        assert_eq!(weibo_length("防范电信诈骗"), 6);
        assert_eq!(weibo_length("防诈 ok"), 4);
        assert_eq!(weibo_length("，。"), 2, "full-width punctuation counts one each");
        assert_eq!(weibo_length("ｱｲ"), 1, "half-width katakana count a half");
        assert_eq!(weibo_length(&"a".repeat(280)), 140);
        assert_eq!(weibo_length(&"a".repeat(281)), 141);
    }

    #[test]
    fn finds_url_hosts_in_text() {
        assert_eq!(url_hosts("详见https://www.Example.gov.cn/a。再见 http://t.cn/x"), ["www.example.gov.cn", "t.cn"]);
        assert_eq!(url_hosts("see example.gov.cn or http:// nothing https"), Vec::<String>::new());
        assert_eq!(url_hosts("(https://a.example.org.)"), ["a.example.org"]);
    }

    #[test]
    fn domains_and_subdomains() {
        assert!(on_domain("example.gov.cn", "example.gov.cn"));
        assert!(on_domain("WWW.example.gov.cn", "example.gov.cn"));
        assert!(on_domain("a.b.example.gov.cn.", "example.gov.cn"));
        assert!(!on_domain("badexample.gov.cn", "example.gov.cn"));
        assert!(!on_domain("example.gov.cn.evil.org", "example.gov.cn"));
        assert!(!on_domain("gov.cn", "example.gov.cn"));
    }

    #[test]
    fn knows_pictures_by_their_first_bytes() {
        assert_eq!(picture_type(&[0xFF, 0xD8, 0xFF, 0xE0]), Some("image/jpeg"));
        assert_eq!(picture_type(b"\x89PNG\r\n\x1a\n...."), Some("image/png"));
        assert_eq!(picture_type(b"GIF89a.."), Some("image/gif"));
        assert_eq!(picture_type(b"RIFF....WEBP"), None);
        assert_eq!(picture_type(b""), None);
    }
}
