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
