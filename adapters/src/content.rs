//! Post content as staff write it ([`PostContent`]) and as a platform will
//! receive it ([`Rendered`]).

use serde::{Deserialize, Serialize};

/// The content of a post for one platform, after the post's
/// `overrides.<platform>` have been applied by the daemon.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostContent {
    pub title: Option<String>,
    pub body: String,
    pub link: Option<String>,
    /// Image file paths, already resolved against the config file's folder.
    pub images: Vec<String>,
}

/// The exact content an adapter sends, in a platform-neutral shape. Its
/// canonical JSON is hashed and stored once per hash in the audit log, so an
/// auditor can read the very text that went out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rendered {
    pub title: Option<String>,
    /// The text as the platform receives it (already shortened, with the
    /// link appended where the platform wants it in the text).
    pub text: String,
    pub link: Option<String>,
    pub images: Vec<String>,
}

/// Why a platform would refuse a post's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ContentProblem {
    /// The content field at fault: `title`, `body`, `link` or `images`.
    pub field: String,
    pub message: String,
}

impl ContentProblem {
    pub fn new(field: &str, message: impl Into<String>) -> Self {
        Self { field: field.to_string(), message: message.into() }
    }
}

/// Count characters the way a person does (Unicode scalar values).
pub fn char_len(text: &str) -> usize {
    text.chars().count()
}

/// The link schemes herald publishes: a link is a web page.
const WEB_SCHEMES: [&str; 2] = ["http", "https"];

/// Schemes that run code or read the reader's own files when a link in the
/// text is followed (`data:` only with a media type, as in `data:text/html,`).
const HOSTILE_SCHEMES: [&str; 3] = ["javascript:", "vbscript:", "file:"];

/// A character no post should carry, whatever the platform: C0 and C1
/// controls (terminal escapes, BEL, NUL) except tab and line breaks, and the
/// bidirectional embeddings, overrides and isolates that make text read
/// differently from what it is ("Trojan Source"). The bidi marks LRM, RLM
/// and ALM, which Arabic and Hebrew text needs, are allowed.
pub fn is_hostile_char(c: char) -> bool {
    (c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
        || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// A character as a reader can find it: its code point and, for the usual
/// suspects, its name.
fn describe_char(c: char) -> String {
    let name = match c {
        '\u{1B}' => " (ESC, a terminal escape)",
        '\u{7}' => " (BEL)",
        '\u{0}' => " (NUL)",
        '\u{202A}'..='\u{202E}' => " (a bidirectional embedding or override)",
        '\u{2066}'..='\u{2069}' => " (a bidirectional isolate)",
        _ => "",
    };
    format!("U+{:04X}{name}", c as u32)
}

/// Content refused on every platform, before the platform's own rules:
/// hostile characters in the title, body or link, a link that is not an
/// http(s) URL, and `javascript:`, `vbscript:`, `file:` or `data:<type>`
/// links written in the text.
pub fn hostile_content(content: &PostContent) -> Vec<ContentProblem> {
    let mut problems = Vec::new();
    let fields =
        [("title", content.title.as_deref()), ("body", Some(content.body.as_str())), ("link", content.link.as_deref())];
    for (field, text) in fields {
        let Some(text) = text else { continue };
        if let Some((at, c)) = text.chars().enumerate().find(|(_, c)| is_hostile_char(*c)) {
            problems.push(ContentProblem::new(
                field,
                format!("character {} is {}; remove it (it can hide or disguise text)", at + 1, describe_char(c)),
            ));
        }
    }
    if let Some(link) = &content.link {
        let web = reqwest::Url::parse(link.trim())
            .is_ok_and(|url| WEB_SCHEMES.contains(&url.scheme()) && url.host_str().is_some());
        if !web {
            problems.push(ContentProblem::new("link", "must be an http:// or https:// address of a web page"));
        }
    }
    for (field, text) in [("title", content.title.as_deref()), ("body", Some(content.body.as_str()))] {
        if let Some(scheme) = text.and_then(hostile_scheme) {
            problems.push(ContentProblem::new(
                field,
                format!("holds a `{scheme}` link, which runs code or opens local files; link to an https:// page"),
            ));
        }
    }
    problems
}

/// The first hostile link scheme written in `text`, if any (ASCII case ignored).
fn hostile_scheme(text: &str) -> Option<String> {
    let lower = text.to_ascii_lowercase();
    let starts_word = |i: usize| i == 0 || !lower.as_bytes()[i - 1].is_ascii_alphanumeric();
    for scheme in HOSTILE_SCHEMES {
        if lower.match_indices(scheme).any(|(i, _)| starts_word(i)) {
            return Some(scheme.to_string());
        }
    }
    // `data:` is ordinary prose ("data: 12 cases") unless a media type follows.
    for (i, _) in lower.match_indices("data:") {
        let rest = &lower[i + 5..];
        let kind: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || "/+.-".contains(*c)).collect();
        if starts_word(i) && kind.contains('/') && rest[kind.len()..].starts_with([';', ',']) {
            return Some("data:".to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(title: Option<&str>, body: &str, link: Option<&str>) -> Vec<String> {
        let content = PostContent {
            title: title.map(str::to_string),
            body: body.to_string(),
            link: link.map(str::to_string),
            images: Vec::new(),
        };
        hostile_content(&content).iter().map(ToString::to_string).collect()
    }

    #[test]
    fn ordinary_text_in_any_script_passes() {
        assert!(
            problems(
                Some("反诈提醒"),
                "Beware.\n\tالاحتيال \u{200F}עברית\u{200E} data: 12 cases",
                Some("https://www.example.gov.cn/a")
            )
            .is_empty()
        );
        assert!(problems(None, "see https://www.example.gov.cn/a?file=x and metadata:text", None).is_empty());
    }

    #[test]
    fn controls_and_bidi_overrides_are_refused_by_position() {
        assert_eq!(
            problems(None, "ab\u{1B}[2J", None),
            ["body: character 3 is U+001B (ESC, a terminal escape); remove it (it can hide or disguise text)"]
        );
        assert!(
            problems(Some("a\u{202E}b"), "x", None)[0].starts_with("title: character 2 is U+202E (a bidirectional")
        );
        assert!(problems(None, "\u{2066}x", None)[0].contains("U+2066 (a bidirectional isolate)"));
        assert!(problems(None, "x\u{9B}", None)[0].contains("U+009B"));
    }

    #[test]
    fn links_must_be_web_pages_and_text_must_not_carry_script_links() {
        for link in [
            "javascript:alert(1)",
            "JaVaScRiPt:alert(1)",
            "file:///etc/passwd",
            "data:text/html,<b>",
            "vbscript:x",
            "ftp://example.org/",
            " javascript:alert(1)",
        ] {
            assert_eq!(
                problems(None, "x", Some(link)),
                ["link: must be an http:// or https:// address of a web page"],
                "{link}"
            );
        }
        assert!(problems(None, "click javascript:alert(1)", None)[0].starts_with("body: holds a `javascript:` link"));
        assert!(problems(None, "<a href=\"data:text/html;base64,PHNjcmlwdD4=\">", None)[0].contains("`data:` link"));
        assert!(problems(Some("see FILE:///etc/shadow"), "x", None)[0].starts_with("title: holds a `file:` link"));
    }
}
