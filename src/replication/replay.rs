//! Which replayed renames may move the wrong file on the peer.
//!
//! A resync replays recorded renames literally, so a file keeps its contents
//! on the peer and only what changed in it travels. A record the peer may
//! already have applied (sent live but not yet acknowledged durable, or
//! shipped by a resync that was cut short) is replayed too, and that is safe
//! unless its source name was taken again afterwards: after `mv a b; echo x >
//! a` a second `mv a b` on the peer puts the new `a` over `b`. An exchange
//! applied twice swaps back. For those moves the file (wherever it is named at
//! the end of the log) must be shipped whole; everything else stays a delta,
//! including every rename logged while the peer was away (the change log
//! knows which records may have been sent: `ns_sent_upto`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::changelog::NsChange;

/// The names, as of the end of `ns`, of the files moved by renames whose
/// replay may act on another file than the one the record moved. Only
/// records up to `sent_upto` may have reached the peer; the peer never saw
/// the others, so their replay is exact. A file removed or replaced later is
/// left out (nothing of it is shipped).
pub fn uncertain_moves(ns: &[(u64, NsChange)], sent_upto: u64) -> Vec<PathBuf> {
    // The last record that gives each name to something.
    let mut named: HashMap<&Path, usize> = HashMap::new();
    for (i, (_, c)) in ns.iter().enumerate() {
        for p in names_given(c) {
            named.insert(p, i);
        }
    }
    let taken_after =
        |p: &Path, i: usize| p.ancestors().any(|a| named.get(a).is_some_and(|j| *j > i));
    let mut out = Vec::new();
    for (i, (seq, c)) in ns.iter().enumerate() {
        let NsChange::Rename { from, to, exchange } = c else {
            continue;
        };
        if *seq > sent_upto {
            continue;
        }
        let moved: Vec<&PathBuf> = if *exchange {
            vec![from, to]
        } else if taken_after(from, i) {
            vec![to]
        } else {
            continue;
        };
        let later = &ns[i + 1..];
        out.extend(moved.into_iter().filter_map(|p| follow(later, p.clone())));
    }
    out.sort();
    out.dedup();
    out
}

/// The names `c` gives to something.
fn names_given(c: &NsChange) -> Vec<&Path> {
    match c {
        NsChange::Create { path }
        | NsChange::Mkdir { path }
        | NsChange::Symlink { path, .. }
        | NsChange::Link { path, .. } => vec![path],
        NsChange::Rename { from, to, exchange } if *exchange => vec![from, to],
        NsChange::Rename { to, .. } => vec![to],
        _ => Vec::new(),
    }
}

/// Where the entry named `p` is named after the records `later`, if it still
/// has a name.
fn follow(later: &[(u64, NsChange)], mut p: PathBuf) -> Option<PathBuf> {
    fn moved(p: &Path, from: &Path, to: &Path) -> Option<PathBuf> {
        let rest = p.strip_prefix(from).ok()?;
        Some(if rest.as_os_str().is_empty() {
            to.to_path_buf()
        } else {
            to.join(rest)
        })
    }
    for (_, c) in later {
        match c {
            NsChange::Rename { from, to, exchange } => {
                if let Some(q) = moved(&p, from, to) {
                    p = q;
                } else if *exchange {
                    if let Some(q) = moved(&p, to, from) {
                        p = q;
                    }
                } else if p.starts_with(to) {
                    // Replaced by what was renamed over it.
                    return None;
                }
            }
            NsChange::Unlink { path } | NsChange::Rmdir { path } if p.starts_with(path) => {
                return None;
            }
            _ => {}
        }
    }
    Some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rename(from: &str, to: &str) -> NsChange {
        NsChange::Rename {
            from: from.into(),
            to: to.into(),
            exchange: false,
        }
    }

    fn log(changes: Vec<NsChange>) -> Vec<(u64, NsChange)> {
        (1..).zip(changes).collect()
    }

    fn paths(v: &[&str]) -> Vec<PathBuf> {
        v.iter().map(PathBuf::from).collect()
    }

    #[test]
    fn a_rename_whose_source_name_is_taken_again_is_uncertain() {
        let create = |p: &str| NsChange::Create { path: p.into() };
        // Log rotation: the rotated file must travel whole.
        let ns = log(vec![rename("log", "log.1"), create("log")]);
        assert_eq!(uncertain_moves(&ns, u64::MAX), paths(&["log.1"]));
        // The same, followed to the file's last name.
        let ns = log(vec![
            rename("log", "log.1"),
            create("log"),
            rename("log.1", "old/log.1"),
        ]);
        assert_eq!(uncertain_moves(&ns, u64::MAX), paths(&["old/log.1"]));
        // The source's parent directory named again.
        let ns = log(vec![rename("d/x", "y"), rename("e", "d")]);
        assert_eq!(uncertain_moves(&ns, u64::MAX), paths(&["y"]));
    }

    #[test]
    fn plain_renames_stay_deltas_and_removed_files_are_left_out() {
        let ns = log(vec![rename("a", "b"), rename("c", "d")]);
        assert!(uncertain_moves(&ns, u64::MAX).is_empty());
        // Uncertain, but the moved file is gone by the end of the log.
        let ns = log(vec![
            rename("a", "b"),
            NsChange::Create { path: "a".into() },
            NsChange::Unlink { path: "b".into() },
        ]);
        assert!(uncertain_moves(&ns, u64::MAX).is_empty());
        let ns = log(vec![
            rename("a", "b"),
            NsChange::Mkdir { path: "a".into() },
            rename("c", "b"),
        ]);
        assert!(
            uncertain_moves(&ns, u64::MAX).is_empty(),
            "b was replaced by c"
        );
    }

    #[test]
    fn renames_the_peer_never_saw_are_replayed_exactly() {
        let create = |p: &str| NsChange::Create { path: p.into() };
        // Rotated twice: the first while linked (seq 1-2), the second alone.
        let ns = log(vec![
            rename("log", "log.1"),
            create("log"),
            rename("log", "log.2"),
            create("log"),
        ]);
        assert_eq!(uncertain_moves(&ns, 2), paths(&["log.1"]));
        assert!(uncertain_moves(&ns, 0).is_empty());
        assert_eq!(uncertain_moves(&ns, 4), paths(&["log.1", "log.2"]));
    }

    #[test]
    fn an_exchange_is_always_uncertain_for_both_files() {
        let ns = log(vec![
            NsChange::Rename {
                from: "a".into(),
                to: "b".into(),
                exchange: true,
            },
            rename("a", "dir/a"),
        ]);
        assert_eq!(uncertain_moves(&ns, u64::MAX), paths(&["b", "dir/a"]));
    }
}
