//! Hostile content through every adapter's public `render`: emoji, mixed
//! scripts, right-to-left text, HTML and script injection, very long text,
//! odd whitespace, combining characters, control characters. Each platform
//! either refuses with a clear `ContentProblem`, or renders text that holds
//! the body whole (never cut, mid-character or otherwise) and escaped at
//! most once (WeChat renders HTML: `<script>` arrives escaped exactly once;
//! the plain-text platforms send it as written).

use std::sync::Arc;

use herald_adapters::registry::{self, HttpOptions};
use herald_adapters::{AccountSettings, Adapter, ContentProblem, Platform, PostContent, Rendered, Services};
use proptest::prelude::*;
use serde_json::json;

/// A JPEG small enough to be a WeChat cover.
const JPEG: &[u8] = &[0xFF, 0xD8, 0xFF, 0xE0, 0, 0x10, b'J', b'F', b'I', b'F', 0, 0xFF, 0xD9];

struct Platforms {
    _dir: tempfile::TempDir,
    cover: String,
    adapters: Vec<(Platform, Arc<dyn Adapter>)>,
}

/// Built once: every test shares the adapters (each holds an HTTP client).
fn platforms() -> &'static Platforms {
    static PLATFORMS: std::sync::OnceLock<Platforms> = std::sync::OnceLock::new();
    PLATFORMS.get_or_init(build)
}

fn build() -> Platforms {
    let dir = tempfile::tempdir().unwrap();
    let cover = dir.path().join("cover.jpg");
    std::fs::write(&cover, JPEG).unwrap();
    let settings = [
        (Platform::Weibo, json!({"access_token": "t", "safe_domain": "example.gov.cn", "rip": "203.0.113.7"})),
        (Platform::Wechat, json!({"appid": "wx0508814484963291", "secret": "s"})),
        (Platform::Tieba, json!({"bduss": "b", "forum": "wuhan"})),
        (Platform::Discourse, json!({"base_url": "http://127.0.0.1:9", "api_key": "k", "api_username": "system"})),
        (Platform::Mastodon, json!({"base_url": "http://127.0.0.1:9", "access_token": "t"})),
        (Platform::Webhook, json!({"url": "http://127.0.0.1:9/hook"})),
    ];
    let adapters = settings
        .into_iter()
        .map(|(platform, value)| {
            let settings = AccountSettings::deserialize(platform, value).expect("settings");
            let adapter = registry::build(&settings, HttpOptions::default(), &Services::in_memory("account"))
                .expect("an adapter");
            (platform, adapter)
        })
        .collect();
    Platforms { cover: cover.to_string_lossy().into_owned(), _dir: dir, adapters }
}

/// The post as staff would write it for `platform`: what each needs
/// besides the body (a safe link for Weibo, a cover for WeChat, a title).
fn content(platform: Platform, title: &str, body: &str, cover: &str) -> PostContent {
    PostContent {
        title: Some(title.to_string()),
        body: body.to_string(),
        link: Some("https://example.gov.cn/notice?id=1&lang=zh".to_string()),
        images: if platform == Platform::Wechat { vec![cover.to_string()] } else { Vec::new() },
    }
}

/// Undo HTML escaping once, the way a browser reads an attribute-free text node.
fn unescape_once(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let entities =
            [("&amp;", '&'), ("&lt;", '<'), ("&gt;", '>'), ("&quot;", '"'), ("&#39;", '\''), ("&#x27;", '\'')];
        match entities.iter().find(|(e, _)| rest.starts_with(e)) {
            Some((e, c)) => {
                out.push(*c);
                rest = &rest[e.len()..];
            }
            None => panic!("a bare `&` in HTML: {text:?}"),
        }
    }
    out.push_str(rest);
    out
}

/// What went wrong with one rendering, if anything.
fn judge(platform: Platform, content: &PostContent, result: &Result<Rendered, Vec<ContentProblem>>) -> Option<String> {
    let problems = match result {
        Err(problems) => problems,
        Ok(rendered) => return judge_rendered(platform, content, rendered),
    };
    if problems.is_empty() {
        return Some(format!("{platform}: refused with no reason"));
    }
    for p in problems {
        if !["title", "body", "link", "images"].contains(&p.field.as_str()) || p.message.trim().is_empty() {
            return Some(format!("{platform}: an unclear refusal: {p:?}"));
        }
    }
    None
}

fn judge_rendered(platform: Platform, content: &PostContent, rendered: &Rendered) -> Option<String> {
    let body = content.body.trim();
    if platform == Platform::Wechat {
        let html = &rendered.text;
        if html.contains("<script") || html.contains("<b>") {
            return Some(format!("wechat: markup from the post arrived unescaped: {html:?}"));
        }
        // Every paragraph, unescaped once, is exactly a line of the body.
        let paragraphs: Vec<String> = html
            .split("</p>\n")
            .filter(|p| !p.is_empty())
            .map(|p| p.strip_prefix("<p>").map(unescape_once).unwrap_or_else(|| format!("<not a paragraph: {p}>")))
            .collect();
        let lines: Vec<String> =
            content.body.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect();
        if paragraphs != lines {
            return Some(format!(
                "wechat: the article is not the body escaped once:\n  body lines {lines:?}\n  paragraphs {paragraphs:?}"
            ));
        }
    } else if !rendered.text.contains(body) {
        return Some(format!(
            "{platform}: the text does not hold the body whole:\n  body {body:?}\n  text {:?}",
            rendered.text
        ));
    }
    if let (Some(title), Some(given)) = (&rendered.title, &content.title)
        && title != given.trim()
        && title != given
    {
        return Some(format!("{platform}: the title changed: {given:?} -> {title:?}"));
    }
    None
}

const LONG_CHINESE: usize = 5_000;

fn hostile() -> Vec<(&'static str, String)> {
    vec![
        ("emoji", "⚠️ 注意诈骗 🚨 👮‍♀️ 👨‍👩‍👧‍👦 🇨🇳 🏳️‍🌈 ❤️‍🔥 1️⃣".to_string()),
        ("mixed scripts", "反诈提醒 Fraud alert мошенничество احتيال धोखाधड़ी 詐欺にご注意 사기 주의".to_string()),
        ("right to left", "\u{202E}txet desrever\u{202C} مرحبا بالعالم שלום עולם \u{200F}(123)\u{200E}".to_string()),
        (
            "html and script",
            "<script>alert('x')</script> & <b>bold</b> &lt;already escaped&gt; \"quoted\" <img src=x onerror=alert(1)>"
                .to_string(),
        ),
        ("entity lookalikes", "&amp;amp; &#60;script&#62; &#x3C; &nbsp; AT&T".to_string()),
        (
            "odd whitespace",
            "\u{00A0}\u{2003}first\u{2028}second\u{3000}\tend\r\n\r\n  \u{FEFF}last\u{0085}".to_string(),
        ),
        (
            "combining marks",
            "e\u{0301}\u{0301} Z\u{0351}\u{0346}\u{035E}al\u{0336}g\u{0335}o n\u{0303} \u{0915}\u{094D}\u{0937}"
                .to_string(),
        ),
        (
            "zero width and controls",
            "a\u{200B}b\u{200D}c\u{2060}d \u{0007}\u{001B}[31mred\u{001B}[0m \u{FFFD} \u{10FFFF}".to_string(),
        ),
        ("very long chinese", "防范电信网络诈骗。".repeat(LONG_CHINESE / 9 + 1)),
        ("very long ascii", "Never transfer money to a stranger. ".repeat(3_000)),
        ("only whitespace", "\u{3000}\u{00A0} \t\r\n\u{2003}".to_string()),
    ]
}

#[test]
fn hostile_content_renders_whole_or_is_refused_clearly() {
    let platforms = platforms();
    let mut failures = Vec::new();
    let mut refused = Vec::new();
    for (platform, adapter) in &platforms.adapters {
        for (what, body) in hostile() {
            // Titles are hostile too, but short enough for every platform.
            let title = format!("Warning <b>&</b> ⚠️ {}", what.chars().take(8).collect::<String>());
            let title = if *platform == Platform::Discourse { format!("{title} about fraud") } else { title };
            let content = content(*platform, &title, &body, &platforms.cover);
            let result = adapter.render(&content);
            if let Some(failure) = judge(*platform, &content, &result) {
                failures.push(format!("{what}: {failure}"));
            }
            if let Err(problems) = &result {
                refused.push(format!(
                    "{platform} refuses {what}: {}",
                    problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
                ));
                // Only emptiness and length are reasons to refuse these.
                let expected = what.starts_with("very long") || what == "only whitespace";
                if !expected {
                    failures.push(format!("{what}: {platform} refused content it should take: {problems:?}"));
                }
            } else if what == "only whitespace" {
                // Discourse takes a topic that is only its link (the body's
                // blanks are trimmed away); the others refuse an empty body.
                let link_only = result.as_ref().is_ok_and(|r| r.text.trim() == content.link.as_deref().unwrap_or(""));
                if !(*platform == Platform::Discourse && link_only) {
                    failures.push(format!("{platform} accepted a body of whitespace only: {result:?}"));
                }
            }
        }
    }
    println!("{}", refused.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn wechat_escapes_script_exactly_once() {
    let platforms = platforms();
    let (_, wechat) = platforms.adapters.iter().find(|(p, _)| *p == Platform::Wechat).unwrap();
    let content = content(Platform::Wechat, "Notice", "<script>alert(\"x\")</script> & more", &platforms.cover);
    let html = wechat.render(&content).expect("renders").text;
    assert_eq!(html, "<p>&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; more</p>\n");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Arbitrary Unicode bodies and titles: the same judgement.
    #[test]
    fn arbitrary_text_renders_whole_or_is_refused_clearly(body in any::<String>(), title in "\\PC{0,20}") {
        let platforms = platforms();
        for (platform, adapter) in &platforms.adapters {
            let content = content(*platform, &title, &body, &platforms.cover);
            let result = adapter.render(&content);
            let failure = judge(*platform, &content, &result);
            prop_assert!(failure.is_none(), "{}", failure.unwrap_or_default());
        }
    }
}
