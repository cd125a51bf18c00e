//! A post as a WeChat article: title, digest, HTML content with the body's
//! paragraphs and images, and the checks WeChat would apply, made before
//! anything is sent. Pure except for reading the image files' headers.

use std::io::Read;

use crate::content::char_len;
use crate::{ContentProblem, PostContent, Rendered};

/// The longest title WeChat accepts, in characters.
pub const MAX_TITLE_CHARS: usize = 32;
/// The longest author WeChat accepts, in characters.
pub const MAX_AUTHOR_CHARS: usize = 16;
/// The longest digest WeChat accepts, in characters.
pub const MAX_DIGEST_CHARS: usize = 128;
/// How much of the body becomes the digest, in characters.
pub const DIGEST_CHARS: usize = 120;
/// The content must be shorter than this many characters...
pub const MAX_CONTENT_CHARS: usize = 20_000;
/// ...and shorter than this many bytes.
pub const MAX_CONTENT_BYTES: usize = 1024 * 1024;
/// The cover (a `thumb` material) must be a JPEG of at most 64 KB.
pub const MAX_COVER_BYTES: u64 = 64 * 1024;
/// Images inside the article (`media/uploadimg`): JPEG or PNG under 1 MB.
pub const MAX_BODY_IMAGE_BYTES: u64 = 1024 * 1024;

/// Where an image of the body goes in the rendered HTML until it is
/// uploaded: `src="herald-image://N"`, N its index in the post's images.
/// Text from the post is escaped, so it can never contain this attribute.
const IMAGE_SRC_PREFIX: &str = "src=\"herald-image://";
/// How many characters an uploaded body image's URL is counted for in
/// `check`, before it is known: WeChat's `mmbiz.qpic.cn` URLs run to about
/// 150 (an estimate with a margin; the real URL is counted again before
/// the draft is saved).
pub const IMAGE_URL_CHARS: usize = 200;

/// What an image file is, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ImageKind {
    Jpeg,
    Png,
}

impl ImageKind {
    pub(super) fn mime(self) -> &'static str {
        match self {
            ImageKind::Jpeg => "image/jpeg",
            ImageKind::Png => "image/png",
        }
    }

    pub(super) fn extension(self) -> &'static str {
        match self {
            ImageKind::Jpeg => "jpg",
            ImageKind::Png => "png",
        }
    }

    pub(super) fn sniff(head: &[u8]) -> Option<ImageKind> {
        if head.starts_with(&[0xFF, 0xD8, 0xFF]) {
            Some(ImageKind::Jpeg)
        } else if head.starts_with(&[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A]) {
            Some(ImageKind::Png)
        } else {
            None
        }
    }
}

/// Render `content` as an article, or say everything WeChat would refuse.
pub(super) fn render(content: &PostContent) -> Result<Rendered, Vec<ContentProblem>> {
    let mut problems = Vec::new();
    match content.title.as_deref().map(str::trim) {
        None | Some("") => problems.push(ContentProblem::new("title", "WeChat articles need a title")),
        Some(title) if char_len(title) > MAX_TITLE_CHARS => problems.push(ContentProblem::new(
            "title",
            format!("{} characters; WeChat allows at most {MAX_TITLE_CHARS}", char_len(title)),
        )),
        Some(_) => {}
    }
    if content.body.trim().is_empty() {
        problems.push(ContentProblem::new("body", "must not be empty"));
    }
    if let Some(link) = &content.link
        && !is_web_url(link)
    {
        problems
            .push(ContentProblem::new("link", "must be an http or https URL (it becomes the article's source link)"));
    }
    match content.images.split_first() {
        None => problems.push(ContentProblem::new("images", "WeChat articles need a cover image")),
        Some((cover, others)) => {
            if let Err(problem) = check_image(cover, &[ImageKind::Jpeg], MAX_COVER_BYTES) {
                problems.push(ContentProblem::new("images", format!("the cover {problem}")));
            }
            for (index, image) in others.iter().enumerate() {
                if let Err(problem) = check_image(image, &[ImageKind::Jpeg, ImageKind::Png], MAX_BODY_IMAGE_BYTES - 1) {
                    problems.push(ContentProblem::new("images", format!("image {} {problem}", index + 2)));
                }
            }
        }
    }

    let html = article_html(&content.body, content.images.len());
    let chars = sent_chars(&html, content.images.len());
    if chars >= MAX_CONTENT_CHARS || html.len() >= MAX_CONTENT_BYTES {
        problems.push(ContentProblem::new(
            "body",
            format!(
                "the article is {chars} characters of HTML (each body image counted as its URL, \
                 {IMAGE_URL_CHARS} characters); WeChat needs fewer than {MAX_CONTENT_CHARS}"
            ),
        ));
    }
    let digest = digest(&html);
    if char_len(&digest) > MAX_DIGEST_CHARS {
        problems.push(ContentProblem::new("body", format!("the digest is longer than {MAX_DIGEST_CHARS} characters")));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Rendered {
        title: content.title.as_deref().map(|title| title.trim().to_string()),
        text: html,
        link: content.link.clone(),
        images: content.images.clone(),
    })
}

fn is_web_url(text: &str) -> bool {
    reqwest::Url::parse(text).is_ok_and(|url| matches!(url.scheme(), "http" | "https") && url.host_str().is_some())
}

/// Check that the file at `path` is one of `kinds` and at most `max_bytes`
/// long; the error completes "the cover ..." / "image 2 ...".
pub(super) fn check_image(path: &str, kinds: &[ImageKind], max_bytes: u64) -> Result<ImageKind, String> {
    let (mut file, size) = crate::files::open_regular(std::path::Path::new(path))
        .map_err(|error| format!("`{path}` cannot be read: {error}"))?;
    let mut head = [0u8; 8];
    let mut filled = 0;
    while filled < head.len() {
        match file.read(&mut head[filled..]) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(error) => return Err(format!("`{path}` cannot be read: {error}")),
        }
    }
    let names = kinds.iter().map(|kind| kind.extension().to_uppercase()).collect::<Vec<_>>().join(" or ");
    let kind = ImageKind::sniff(&head[..filled])
        .filter(|kind| kinds.contains(kind))
        .ok_or_else(|| format!("`{path}` is not a {names} file"))?;
    if size > max_bytes {
        return Err(format!("`{path}` is {size} bytes; WeChat accepts at most {max_bytes}"));
    }
    Ok(kind)
}

/// The characters of `html` as WeChat will count them once each of the
/// `image_count - 1` body images' placeholder is replaced by its URL
/// ([`IMAGE_URL_CHARS`] each).
pub(super) fn sent_chars(html: &str, image_count: usize) -> usize {
    let placeholder = char_len(IMAGE_SRC_PREFIX) + 2; // the index and the closing quote, for indices below 10
    let body_images = image_count.saturating_sub(1);
    (char_len(html) + body_images * (char_len("src=\"\"") + IMAGE_URL_CHARS)).saturating_sub(body_images * placeholder)
}

/// The article's HTML: one paragraph per non-empty line of the body, then
/// one per image after the cover (placeholders until uploaded).
pub(super) fn article_html(body: &str, image_count: usize) -> String {
    let mut html = String::new();
    for line in body.lines().map(str::trim).filter(|line| !line.is_empty()) {
        html.push_str("<p>");
        html.push_str(&escape(line));
        html.push_str("</p>\n");
    }
    for index in 1..image_count {
        html.push_str(&format!("<p><img {IMAGE_SRC_PREFIX}{index}\"></p>\n"));
    }
    html
}

/// The digest: the first [`DIGEST_CHARS`] characters of the text
/// paragraphs of an article made by [`article_html`], joined by spaces.
pub(super) fn digest(html: &str) -> String {
    let text = html
        .split("</p>\n")
        .filter_map(|paragraph| paragraph.strip_prefix("<p>"))
        .filter(|paragraph| !paragraph.starts_with("<img "))
        .map(unescape)
        .collect::<Vec<_>>()
        .join(" ");
    text.chars().take(DIGEST_CHARS).collect()
}

/// Put the uploaded URL of each body image in place of its placeholder;
/// `urls[i]` is the URL of image `i + 1`.
pub(super) fn with_image_urls(html: &str, urls: &[String]) -> String {
    let mut html = html.to_string();
    for (offset, url) in urls.iter().enumerate() {
        let placeholder = format!("{IMAGE_SRC_PREFIX}{}\"", offset + 1);
        html = html.replace(&placeholder, &format!("src=\"{}\"", escape(url)));
    }
    html
}

/// Escape text for HTML content and attribute values.
pub(super) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

fn unescape(text: &str) -> String {
    text.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&#39;", "'").replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    const JPEG: &[u8] = &[0xFF, 0xD8, 0xFF, 0xE0, 0, 0x10, b'J', b'F', b'I', b'F', 0, 0xFF, 0xD9];
    const PNG: &[u8] = &[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, 0, 0, 0, 0];

    fn file(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> String {
        let path = dir.path().join(name);
        std::fs::File::create(&path).unwrap().write_all(bytes).unwrap();
        path.to_string_lossy().into_owned()
    }

    fn content(dir: &tempfile::TempDir) -> PostContent {
        PostContent {
            title: Some("防范电信诈骗".into()),
            body: "Never move money to a \"safe account\".\n\n  Call 110 <now> & hang up.  \n".into(),
            link: Some("https://example.gov.cn/alerts/42".into()),
            images: vec![file(dir, "cover.jpg", JPEG), file(dir, "poster.png", PNG)],
        }
    }

    fn fields(problems: &[ContentProblem]) -> Vec<&str> {
        problems.iter().map(|problem| problem.field.as_str()).collect()
    }

    #[test]
    fn renders_paragraphs_escaped_and_image_placeholders() {
        let dir = tempfile::tempdir().unwrap();
        let content = content(&dir);
        let rendered = render(&content).unwrap();
        assert_eq!(
            rendered.text,
            "<p>Never move money to a &quot;safe account&quot;.</p>\n\
             <p>Call 110 &lt;now&gt; &amp; hang up.</p>\n\
             <p><img src=\"herald-image://1\"></p>\n"
        );
        assert_eq!(rendered.title.as_deref(), Some("防范电信诈骗"));
        assert_eq!(rendered.link, content.link);
        assert_eq!(rendered.images, content.images);
        assert_eq!(digest(&rendered.text), "Never move money to a \"safe account\". Call 110 <now> & hang up.");
        let html = with_image_urls(&rendered.text, &["http://mmbiz.qpic.cn/a?b=1&c=2".into()]);
        assert!(html.ends_with("<p><img src=\"http://mmbiz.qpic.cn/a?b=1&amp;c=2\"></p>\n"), "{html}");
    }

    #[test]
    fn text_that_looks_like_a_placeholder_stays_text() {
        let html = article_html("<img src=\"herald-image://1\">", 1);
        assert_eq!(with_image_urls(&html, &["http://x/".into()]), html);
    }

    #[test]
    fn the_digest_is_the_first_120_characters() {
        let body = "字".repeat(300);
        assert_eq!(digest(&article_html(&body, 3)).chars().count(), DIGEST_CHARS);
    }

    #[test]
    fn a_post_without_an_image_has_no_cover() {
        let dir = tempfile::tempdir().unwrap();
        let mut content = content(&dir);
        content.images.clear();
        let problems = render(&content).unwrap_err();
        assert_eq!(problems, vec![ContentProblem::new("images", "WeChat articles need a cover image")]);
    }

    #[test]
    fn titles_are_required_and_at_most_32_characters() {
        let dir = tempfile::tempdir().unwrap();
        let mut content = content(&dir);
        content.title = Some("字".repeat(32));
        assert!(render(&content).is_ok());
        content.title = Some("字".repeat(33));
        let problems = render(&content).unwrap_err();
        assert_eq!(fields(&problems), ["title"]);
        assert!(problems[0].message.contains("33 characters"), "{}", problems[0]);
        content.title = None;
        assert_eq!(render(&content).unwrap_err()[0].message, "WeChat articles need a title");
    }

    #[test]
    fn the_cover_must_be_a_small_jpeg() {
        let dir = tempfile::tempdir().unwrap();
        let mut content = content(&dir);
        content.images[0] = file(&dir, "cover.png", PNG);
        assert_eq!(fields(&render(&content).unwrap_err()), ["images"]);

        let mut big = JPEG.to_vec();
        big.resize(64 * 1024 + 1, 0);
        content.images[0] = file(&dir, "big.jpg", &big);
        let problems = render(&content).unwrap_err();
        assert!(problems[0].message.contains("65537 bytes"), "{}", problems[0]);

        big.truncate(64 * 1024);
        content.images[0] = file(&dir, "just.jpg", &big);
        assert!(render(&content).is_ok());

        content.images[0] = dir.path().join("missing.jpg").to_string_lossy().into_owned();
        assert!(render(&content).unwrap_err()[0].message.contains("cannot be read"));
    }

    #[test]
    fn body_images_must_be_jpeg_or_png_under_1_mb() {
        let dir = tempfile::tempdir().unwrap();
        let mut content = content(&dir);
        content.images.push(file(&dir, "text.gif", b"GIF89a...."));
        let problems = render(&content).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert!(problems[0].message.starts_with("image 3 "), "{}", problems[0]);
    }

    #[test]
    fn too_long_a_body_and_a_bad_link_are_refused_together() {
        let dir = tempfile::tempdir().unwrap();
        let mut content = content(&dir);
        content.body = "Beware of fake police calls.\n".repeat(700);
        content.link = Some("javascript:alert(1)".into());
        let problems = render(&content).unwrap_err();
        assert_eq!(fields(&problems), ["link", "body"]);
        assert!(problems[1].message.contains("fewer than 20000"), "{}", problems[1]);
    }

    #[test]
    fn an_empty_body_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut content = content(&dir);
        content.body = " \n ".into();
        assert_eq!(fields(&render(&content).unwrap_err()), ["body"]);
    }
}
