//! Collects errors while the configuration is checked, turning byte spans into lines.

use std::ops::Range;

use super::error::ConfigError;

pub(super) type Span = Range<usize>;

pub(super) struct Report {
    /// Byte offset where each line starts; line n (1-based) starts at `line_starts[n - 1]`.
    line_starts: Vec<usize>,
    errors: Vec<ConfigError>,
}

impl Report {
    pub fn new(text: &str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self {
            line_starts,
            errors: Vec::new(),
        }
    }

    pub fn line_of(&self, offset: usize) -> usize {
        self.line_starts.partition_point(|&start| start <= offset)
    }

    pub fn error(
        &mut self,
        field: impl Into<String>,
        span: Option<Span>,
        message: impl Into<String>,
    ) {
        let line = span.map(|s| self.line_of(s.start));
        self.errors.push(ConfigError::new(field, line, message));
    }

    /// Number of errors so far; a section is usable only if it added none.
    pub fn count(&self) -> usize {
        self.errors.len()
    }

    /// Errors in file order; those without a line (missing sections) come last.
    pub fn into_errors(mut self) -> Vec<ConfigError> {
        self.errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
        self.errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_map_to_lines() {
        let report = Report::new("a\nbc\n\nd");
        assert_eq!(report.line_of(0), 1);
        assert_eq!(report.line_of(1), 1); // the newline belongs to its line
        assert_eq!(report.line_of(2), 2);
        assert_eq!(report.line_of(5), 3);
        assert_eq!(report.line_of(6), 4);
        assert_eq!(report.line_of(100), 4);
    }
}
