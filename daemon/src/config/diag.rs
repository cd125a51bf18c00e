//! Diagnostics: what is wrong (or doubtful) in a config, and exactly where.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One finding of the config loader, with the file, line and column it is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: PathBuf,
    /// 1-based; 0 when the finding is about the file as a whole.
    pub line: usize,
    /// 1-based, counted in characters; 0 when the finding is about the file as a whole.
    pub column: usize,
    pub message: String,
}

impl Diagnostic {
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        if self.line == 0 {
            write!(f, "{}: {kind}: {}", self.file.display(), self.message)
        } else {
            write!(f, "{}:{}:{}: {kind}: {}", self.file.display(), self.line, self.column, self.message)
        }
    }
}

/// A source file being read, able to turn byte spans into line and column.
pub struct SourceFile {
    pub path: PathBuf,
    pub text: String,
    line_starts: Vec<usize>,
}

impl SourceFile {
    pub fn new(path: PathBuf, text: String) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Self { path, text, line_starts }
    }

    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// 1-based line and character column of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&start| start <= offset).saturating_sub(1);
        let start = self.line_starts[line];
        let column = self.text.get(start..offset).map_or(1, |s| s.chars().count() + 1);
        (line + 1, column)
    }
}

/// Collects the findings of one load, in the order they were made.
#[derive(Debug, Default)]
pub struct Diagnostics {
    pub items: Vec<Diagnostic>,
}

impl Diagnostics {
    pub fn push(
        &mut self,
        severity: Severity,
        file: &SourceFile,
        span: Option<Range<usize>>,
        message: impl Into<String>,
    ) {
        let (line, column) = span.map_or((0, 0), |s| file.line_col(s.start));
        self.items.push(Diagnostic { severity, file: file.path.clone(), line, column, message: message.into() });
    }

    pub fn error(&mut self, file: &SourceFile, span: Option<Range<usize>>, message: impl Into<String>) {
        self.push(Severity::Error, file, span, message);
    }

    pub fn warning(&mut self, file: &SourceFile, span: Option<Range<usize>>, message: impl Into<String>) {
        self.push(Severity::Warning, file, span, message);
    }

    /// A finding about a file that could not be read at all.
    pub fn file_error(&mut self, path: &Path, message: impl Into<String>) {
        self.items.push(Diagnostic {
            severity: Severity::Error,
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            message: message.into(),
        });
    }

    pub fn has_errors(&self) -> bool {
        self.items.iter().any(Diagnostic::is_error)
    }

    /// How many errors were reported so far.
    pub fn error_count(&self) -> usize {
        self.items.iter().filter(|d| d.is_error()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_count_characters_not_bytes() {
        let file = SourceFile::new("a.toml".into(), "a = 1\ntitle = \"反诈\" x\n".into());
        assert_eq!(file.line_col(0), (1, 1));
        assert_eq!(file.line_col(6), (2, 1));
        let x = file.text.find(" x").unwrap() + 1;
        assert_eq!(file.line_col(x), (2, 14));
    }
}
