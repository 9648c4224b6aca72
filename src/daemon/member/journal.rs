//! A module's log: the last lines in memory for `status` and `tandem log`,
//! every line appended to `STATE_DIR/modules/MODULE/log` so that it
//! outlives the daemon (one older file, `log.1`, is kept when it grows).
//! Beside it, `history` keeps each change of the module's state as a JSON
//! record, one a line, the same way: what `/api/history` shows, read as
//! written rather than from the log's text.

use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;

use crate::cluster::machine::State;
use crate::control::Transition;

/// Lines, and records, kept in memory.
pub(super) const LINES: usize = 1000;
/// Size at which a file is moved to `NAME.1` and started again.
const ROTATE_AT: u64 = 4 << 20;

pub(super) struct Journal {
    lines: VecDeque<String>,
    log: Appended,
    transitions: VecDeque<Transition>,
    history: Appended,
}

impl Journal {
    /// The journal at `path`, with the end of what an earlier run wrote.
    pub(super) fn open(path: PathBuf) -> Journal {
        let log = Appended::new(path.clone());
        let lines = last(log.lines());
        let mut history = Appended::new(path.with_file_name("history"));
        let transitions = if history.exists() {
            // A torn last line (the daemon died writing it) is skipped.
            last(
                history
                    .lines()
                    .filter_map(|l| serde_json::from_str(&l).ok()),
            )
        } else {
            // A state directory from a release that kept only the log: its
            // transitions are read from the log's text, once, and recorded,
            // so that the history goes on from there (none if no log either).
            let old: VecDeque<Transition> = lines.iter().filter_map(|l| from_text(l)).collect();
            for t in &old {
                history.push(&record(t));
            }
            old
        };
        Journal {
            lines,
            log,
            transitions,
            history,
        }
    }

    /// Adds a line (a failure to write it to disk is reported once, and the
    /// line is kept in memory).
    pub(super) fn push(&mut self, line: String) {
        self.log.push(&line);
        keep(&mut self.lines, line);
    }

    /// Records a change of state (its line in the log is the caller's).
    pub(super) fn record(&mut self, t: Transition) {
        self.history.push(&record(&t));
        keep(&mut self.transitions, t);
    }

    pub(super) fn iter(&self) -> std::collections::vec_deque::Iter<'_, String> {
        self.lines.iter()
    }

    pub(super) fn transitions(&self) -> std::collections::vec_deque::Iter<'_, Transition> {
        self.transitions.iter()
    }
}

fn keep<T>(q: &mut VecDeque<T>, x: T) {
    if q.len() == LINES {
        q.pop_front();
    }
    q.push_back(x);
}

/// The last `LINES` of `all`.
fn last<T>(all: impl Iterator<Item = T>) -> VecDeque<T> {
    let mut q = VecDeque::new();
    for x in all {
        keep(&mut q, x);
    }
    q
}

fn record(t: &Transition) -> String {
    serde_json::to_string(t).expect("transitions serialise")
}

/// `TIME From -> To: why`, the line the manager writes for a transition.
fn from_text(line: &str) -> Option<Transition> {
    let (at, rest) = line.split_once(' ')?;
    let (states, why) = rest.split_once(": ")?;
    let (from, to) = states.split_once(" -> ")?;
    let state = |s: &str| s.to_ascii_uppercase().parse::<State>().ok();
    Some(Transition {
        at: at.into(),
        from: state(from)?,
        to: state(to)?,
        why: why.into(),
    })
}

/// A file of lines, appended to and moved to `NAME.1` when it grows.
struct Appended {
    path: PathBuf,
    file: Option<std::fs::File>,
    size: u64,
}

impl Appended {
    fn new(path: PathBuf) -> Appended {
        let size = std::fs::metadata(&path).map_or(0, |m| m.len());
        Appended {
            path,
            file: None,
            size,
        }
    }

    fn older(&self) -> PathBuf {
        self.path.with_extension("1")
    }

    /// Whether an earlier run wrote here (a turnover may have left only
    /// the older file).
    fn exists(&self) -> bool {
        self.path.exists() || self.older().exists()
    }

    /// The older file's lines, then the current one's.
    fn lines(&self) -> impl Iterator<Item = String> {
        [self.older(), self.path.clone()]
            .into_iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .flat_map(|text| text.lines().map(str::to_string).collect::<Vec<_>>())
    }

    /// Appends a line; a failure is reported once.
    fn push(&mut self, line: &str) {
        if let Err(e) = self.append(line) {
            if self.file.is_some() {
                tracing::warn!("{}: {e}", self.path.display());
            }
            self.file = None;
        }
    }

    fn append(&mut self, line: &str) -> std::io::Result<()> {
        if self.size >= ROTATE_AT {
            self.file = None;
            std::fs::rename(&self.path, self.older())?;
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

    fn t(at: &str, from: State, to: State, why: &str) -> Transition {
        Transition {
            at: at.into(),
            from,
            to,
            why: why.into(),
        }
    }

    #[test]
    fn transitions_are_records_that_outlive_the_journal() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("m").join("log");
        let mut j = Journal::open(path.clone());
        assert_eq!(j.transitions().count(), 0);
        // A reason that reads like a transition stays the record's reason.
        let odd = t(
            "2026-12-05T17:00:00.123Z",
            State::Wait,
            State::Second,
            "Prim -> Alone: told so",
        );
        let gone = t(
            "2026-12-05T17:00:01.000Z",
            State::Second,
            State::Alone,
            "the peer is gone",
        );
        j.push("2026-12-05T17:00:00.123Z Wait -> Second: Prim -> Alone: told so".into());
        j.record(odd.clone());
        j.push("2026-12-05T17:00:00.500Z start_prim done in 3 ms".into());
        j.record(gone.clone());
        drop(j);
        let text = std::fs::read_to_string(d.path().join("m").join("history")).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.contains(r#""from":"SECOND","to":"ALONE""#), "{text}");
        // A line torn by a crash is skipped, not an error.
        std::fs::write(
            d.path().join("m").join("history"),
            format!("{text}{{\"at\":\"2026-"),
        )
        .unwrap();
        let j = Journal::open(path);
        assert_eq!(j.transitions().cloned().collect::<Vec<_>>(), [odd, gone]);
        assert_eq!(j.iter().count(), 2, "the log keeps its own lines");
    }

    #[test]
    fn a_state_directory_with_only_the_text_log_has_its_transitions_read_once() {
        let d = tempfile::tempdir().unwrap();
        let m = d.path().join("m");
        std::fs::create_dir_all(&m).unwrap();
        std::fs::write(
            m.join("log"),
            "2026-12-05T16:59:59.000Z starting as Wait (last run: none)\n\
             2026-12-05T17:00:00.123Z Wait -> Second: the peer serves\n\
             2026-12-05T17:00:00.500Z start_prim done in 3 ms\n\
             2026-12-05T17:00:01.000Z Second -> Prim: the peer is gone\n",
        )
        .unwrap();
        let mut j = Journal::open(m.join("log"));
        let got: Vec<_> = j.transitions().cloned().collect();
        assert_eq!(
            got,
            [
                t(
                    "2026-12-05T17:00:00.123Z",
                    State::Wait,
                    State::Second,
                    "the peer serves"
                ),
                t(
                    "2026-12-05T17:00:01.000Z",
                    State::Second,
                    State::Prim,
                    "the peer is gone"
                ),
            ]
        );
        let next = t(
            "2026-12-05T17:00:02.000Z",
            State::Prim,
            State::Stop,
            "stopped",
        );
        j.record(next.clone());
        drop(j);
        // Recorded: the next run reads the records, the old ones included.
        let j = Journal::open(m.join("log"));
        let again: Vec<_> = j.transitions().cloned().collect();
        assert_eq!(again.len(), 3);
        assert_eq!(again[..2], got[..]);
        assert_eq!(again[2], next);
        // No log and no records: an empty history, no error.
        let j = Journal::open(d.path().join("new").join("log"));
        assert_eq!(j.transitions().count(), 0);
        assert!(!d.path().join("new").exists(), "nothing written");
    }
}
