//! Weibo's content rules: the text is the body and the link, counted in
//! Chinese characters (two ASCII or half-width characters count as one), it
//! must carry a URL on the app's safe domain, it must not carry `#topic#`
//! tags (share.json forbids them), and one JPEG, GIF or PNG picture under
//! 5 MB may go with it. Weibo compares link hosts as sent, so every link's
//! scheme and host are lower-cased before comparing and sending.

use std::io::Read;

use reqwest::Url;

use crate::{ContentProblem, PostContent, Rendered};

/// Pictures must be smaller than this.
pub const MAX_PICTURE_BYTES: u64 = 5 * 1024 * 1024;

/// The length of `text` as Weibo counts it: a half-width character (ASCII,
/// half-width CJK punctuation and hangul, half-width symbols) weighs one
/// half, anything else one, half-width katakana included (Weibo counts
/// `ｱ` as a whole character: 20012 at send time otherwise); halves are
/// rounded up.
pub fn weibo_length(text: &str) -> usize {
    let halves: usize = text.chars().map(|c| if is_half_width(c) { 1 } else { 2 }).sum();
    halves.div_ceil(2)
}

fn is_half_width(c: char) -> bool {
    let katakana = ('\u{FF65}'..='\u{FF9F}').contains(&c);
    c.is_ascii() || (('\u{FF61}'..='\u{FFDC}').contains(&c) && !katakana) || ('\u{FFE8}'..='\u{FFEE}').contains(&c)
}

/// `text` with the scheme and host of every `http://` and `https://` link
/// lower-cased (Weibo matches the safe domain on the host as sent).
pub fn normalize_link_hosts(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = find_scheme(rest) {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let scheme_len = if rest[..5].eq_ignore_ascii_case("https") { 8 } else { 7 };
        out.push_str(&rest[..scheme_len].to_ascii_lowercase());
        rest = &rest[scheme_len..];
        let host_len = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '.')).unwrap_or(rest.len());
        out.push_str(&rest[..host_len].to_ascii_lowercase());
        rest = &rest[host_len..];
    }
    out.push_str(rest);
    out
}

/// The host of `url` as written (between `://` and the next `/`, `?`, `#`
/// or `:`).
fn written_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.split(['/', '?', '#', ':']).next().unwrap_or_default()
}

/// Where the next `http://` or `https://` (any case) starts.
fn find_scheme(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    (0..bytes.len()).find(|&i| {
        let tail = &bytes[i..];
        (tail.len() >= 8 && tail[..8].eq_ignore_ascii_case(b"https://"))
            || (tail.len() >= 7 && tail[..7].eq_ignore_ascii_case(b"http://"))
    })
}

/// The first `#topic#` tag of `text` outside its links: two `#` on one
/// line with words between them (letters, digits, `_`, `-`, `·`, inner
/// spaces), as Weibo reads a topic; `&#60;x&#62;` and the like are not.
pub fn topic_tag(text: &str) -> Option<String> {
    let without_links: String = {
        let mut kept = String::new();
        let mut rest = text;
        while let Some(at) = find_scheme(rest) {
            kept.push_str(&rest[..at]);
            rest = &rest[at..];
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            kept.push(' ');
            rest = &rest[end..];
        }
        kept.push_str(rest);
        kept
    };
    without_links.lines().find_map(|line| {
        let mut marks = line.match_indices('#').map(|(at, _)| at);
        let mut open = marks.next()?;
        for close in marks {
            let inner = &line[open + 1..close];
            let wordy = inner.chars().all(|c| c.is_alphanumeric() || matches!(c, ' ' | '_' | '-' | '·'));
            if !inner.is_empty() && inner.trim() == inner && wordy {
                return Some(line[open..=close].to_string());
            }
            open = close;
        }
        None
    })
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
        let body = normalize_link_hosts(content.body.trim_end());
        let body = body.as_str();
        let link = content.link.as_deref().map(|link| normalize_link_hosts(link.trim()));
        if body.trim().is_empty() {
            problems.push(ContentProblem::new("body", "must not be empty"));
        }
        if let Some(tag) = topic_tag(body) {
            problems.push(ContentProblem::new(
                "body",
                format!("`{tag}` is a #topic# tag, which share.json refuses; write it without the `#` marks"),
            ));
        }
        let needs_link = || format!("needs a link on {}", self.safe_domain);
        match link.as_deref() {
            Some(link) => match Url::parse(link) {
                Ok(_) if !written_host(link).is_ascii() => problems.push(ContentProblem::new(
                    "link",
                    "write the link's host in its ASCII (IDNA, `xn--`) form: Weibo compares the host as sent",
                )),
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
        let text = match link.as_deref() {
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
        Ok(Rendered { title: None, text, link, images: picture.cloned().into_iter().collect() })
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
        assert_eq!(weibo_length("ｱｲ"), 2, "half-width katakana count one each, as Weibo counts them");
        assert_eq!(weibo_length("｡､"), 1, "half-width punctuation counts a half");
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
    fn link_schemes_and_hosts_are_lower_cased_and_nothing_else() {
        assert_eq!(
            normalize_link_hosts("详见HTTPS://WWW.Example.GOV.cn/Alerts/A?X=1 和 http://T.cn/AbC。"),
            "详见https://www.example.gov.cn/Alerts/A?X=1 和 http://t.cn/AbC。"
        );
        assert_eq!(normalize_link_hosts("no links, HTTP only"), "no links, HTTP only");
        assert_eq!(normalize_link_hosts("https://"), "https://");
    }

    #[test]
    fn a_non_ascii_link_host_is_refused_rather_than_sent_as_written() {
        let rules = Rules { safe_domain: "example.gov.cn".into(), max_length: 140 };
        let content = PostContent {
            title: None,
            body: "提示".into(),
            link: Some("https://例子.example.gov.cn/a".into()),
            images: vec![],
        };
        let problems = rules.render(&content).unwrap_err();
        assert!(problems[0].message.contains("IDNA"), "{}", problems[0]);
        assert_eq!(written_host("https://www.example.gov.cn:443/a?b#c"), "www.example.gov.cn");
    }

    #[test]
    fn topic_tags_are_found_outside_links() {
        assert_eq!(topic_tag("防诈骗 #反诈# 提醒").as_deref(), Some("#反诈#"));
        assert_eq!(topic_tag("#ab cd# x").as_deref(), Some("#ab cd#"));
        assert_eq!(topic_tag("https://example.gov.cn/a#top and https://example.gov.cn/b#end"), None);
        assert_eq!(topic_tag("call #110 now"), None);
        assert_eq!(topic_tag("## and # #"), None);
        assert_eq!(topic_tag("&#60;script&#62;"), None, "entity look-alikes are not topics");
        assert_eq!(topic_tag("#one\nline#"), None, "a tag is on one line");
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
