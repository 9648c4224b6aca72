//! Errors that name the file, the line and the field, so an operator can go straight to
//! the mistake.

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Field path such as `module[0].dirs[1]`; empty when the problem is the file itself.
    pub field: String,
    /// 1-based line, when the problem can be tied to one.
    pub line: Option<usize>,
    pub message: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, line: Option<usize>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            line,
            message: message.into(),
        }
    }

    /// Renders `FILE:LINE: FIELD: MESSAGE`, the form editors and CI logs turn into links.
    pub fn in_file<'a>(&'a self, file: &'a Path) -> impl fmt::Display + 'a {
        InFile { error: self, file }
    }
}

impl ConfigError {
    fn write_field_and_message(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

/// Without the file name (which lives in [`ConfigErrors`]) this prints `LINE: FIELD: MESSAGE`.
impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "{line}: ")?;
        }
        self.write_field_and_message(f)
    }
}

impl std::error::Error for ConfigError {}

struct InFile<'a> {
    error: &'a ConfigError,
    file: &'a Path,
}

impl fmt::Display for InFile<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.error.line {
            write!(f, ":{line}")?;
        }
        f.write_str(": ")?;
        self.error.write_field_and_message(f)
    }
}

/// Every problem found in one file; loading never stops at the first one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    pub file: PathBuf,
    pub errors: Vec<ConfigError>,
}

impl ConfigErrors {
    /// A problem with the file as a whole, such as it being unreadable.
    pub fn whole_file(file: &Path, message: impl Into<String>) -> Self {
        Self {
            file: file.to_path_buf(),
            errors: vec![ConfigError::new("", None, message)],
        }
    }
}

/// One error per line, each as `FILE:LINE: FIELD: MESSAGE`.
impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}", error.in_file(&self.file))?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_forms() {
        let file = Path::new("/etc/tandem.toml");
        let full = ConfigError::new("heartbeat.port", Some(7), "must be between 1 and 65535");
        assert_eq!(
            full.in_file(file).to_string(),
            "/etc/tandem.toml:7: heartbeat.port: must be between 1 and 65535"
        );
        let no_line = ConfigError::new("cluster.name", None, "is required");
        assert_eq!(
            no_line.in_file(file).to_string(),
            "/etc/tandem.toml: cluster.name: is required"
        );
        let errors = ConfigErrors {
            file: file.into(),
            errors: vec![full, no_line],
        };
        assert_eq!(errors.to_string().lines().count(), 2);
        let unreadable = ConfigErrors::whole_file(file, "cannot read it");
        assert_eq!(unreadable.to_string(), "/etc/tandem.toml: cannot read it");
    }
}
