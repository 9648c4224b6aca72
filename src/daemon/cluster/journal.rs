//! A module's log: the last lines in memory for `status` and `tandem log`,
//! every line appended to `STATE_DIR/modules/MODULE/log` so that it
//! outlives the daemon (one older file, `log.1`, is kept when it grows).

use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;

/// Lines kept in memory.
pub(super) const LINES: usize = 1000;
/// Size at which the file is moved to `log.1` and started again.
const ROTATE_AT: u64 = 4 << 20;

pub(super) struct Journal {
    lines: VecDeque<String>,
    path: PathBuf,
    file: Option<std::fs::File>,
    size: u64,
}

impl Journal {
    /// The journal at `path`, with the end of what an earlier run wrote.
    pub(super) fn open(path: PathBuf) -> Journal {
        let mut lines = VecDeque::new();
        for p in [path.with_extension("1"), path.clone()] {
            if let Ok(text) = std::fs::read_to_string(&p) {
                for l in text.lines() {
                    if lines.len() == LINES {
                        lines.pop_front();
                    }
                    lines.push_back(l.to_string());
                }
            }
        }
        let size = std::fs::metadata(&path).map_or(0, |m| m.len());
        Journal {
            lines,
            path,
            file: None,
            size,
        }
    }

    /// Adds a line (a failure to write it to disk is reported once, and the
    /// line is kept in memory).
    pub(super) fn push(&mut self, line: String) {
        if let Err(e) = self.append(&line) {
            if self.file.is_some() {
                tracing::warn!("{}: {e}", self.path.display());
            }
            self.file = None;
        }
        if self.lines.len() == LINES {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
    }

    fn append(&mut self, line: &str) -> std::io::Result<()> {
        if self.size >= ROTATE_AT {
            self.file = None;
            std::fs::rename(&self.path, self.path.with_extension("1"))?;
            self.size = 0;
        }
        if self.file.is_none() {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            self.file = Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?,
            );
        }
        let f = self.file.as_mut().expect("opened above");
        f.write_all(format!("{line}\n").as_bytes())?;
        self.size += line.len() as u64 + 1;
        Ok(())
    }

    pub(super) fn iter(&self) -> std::collections::vec_deque::Iter<'_, String> {
        self.lines.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_outlive_the_journal_and_the_file_turns_over() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("m").join("log");
        let mut j = Journal::open(path.clone());
        j.push("one".into());
        j.push("two".into());
        drop(j);
        let mut j = Journal::open(path.clone());
        assert_eq!(j.iter().cloned().collect::<Vec<_>>(), ["one", "two"]);
        let long = "x".repeat(1 << 20);
        for _ in 0..5 {
            j.push(long.clone());
        }
        j.push("last".into());
        assert!(path.with_extension("1").exists(), "turned over");
        assert!(std::fs::metadata(&path).unwrap().len() < ROTATE_AT);
        let j = Journal::open(path);
        assert_eq!(j.iter().last().unwrap(), "last");
        assert!(j.iter().count() <= LINES);
    }
}
