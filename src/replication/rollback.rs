//! This node's copy brought back to one of its snapshots, in place.
//!
//! The tree the snapshot saw is read through its view while the live tree
//! is changed to match it, every change made by the applier with what it
//! destroys kept first: so the view does not move under the rollback, and
//! every other snapshot (older or newer) stays whole. Only what differs is
//! written: an object the snapshot saw that is still alive gets back the
//! ranges kept since; a name that now leads elsewhere is made anew.
//!
//! A rollback cut short leaves a marker; running it again finishes it.
//! The change logs are told to compare by content at the next resync, in
//! whichever direction it goes: the rollback is not in their records.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use super::snapshot::view::View;
use super::snapshot::{
    Result, RollingBack, Snapshot, SnapshotError, Snapshots, data_len, read_names, walk,
};
use crate::fs::sys;
use crate::replication::applier::Applier;
use crate::replication::entry;
use crate::replication::wire::{Entry, EntryKind, WireAttrs, WireMutation};

/// What a rollback changed.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RolledBack {
    pub removed: u64,
    pub made: u64,
    pub rewritten: u64,
    pub bytes: u64,
}

fn b(p: &Path) -> Vec<u8> {
    p.as_os_str().as_bytes().to_vec()
}

fn apply_err(e: crate::replication::applier::ApplyError) -> SnapshotError {
    SnapshotError::Corrupt(format!("rollback: {e}"))
}

/// The live tree's names under `root`, deepest first.
fn live_names(root: BorrowedFd<'_>) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(p) = todo.pop() {
        let fd = entry::open_node(root, &p).map_err(|e| SnapshotError::Sys {
            op: "open",
            path: super::snapshot::shown(&p),
            errno: e,
        })?;
        let names = read_names(fd.as_fd()).map_err(|e| SnapshotError::Sys {
            op: "list",
            path: super::snapshot::shown(&p),
            errno: e,
        })?;
        for (name, _) in names {
            let c = p.join(OsStr::from_bytes(&name));
            if let Ok(st) = sys::stat_at(
                fd.as_fd(),
                &entry::cstr(Path::new(OsStr::from_bytes(&name))).map_err(|e| {
                    SnapshotError::Sys {
                        op: "name",
                        path: super::snapshot::shown(&c),
                        errno: e,
                    }
                })?,
            ) && st.st_mode & libc::S_IFMT == libc::S_IFDIR
            {
                todo.push(c.clone());
            }
            out.push(c);
        }
    }
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    Ok(out)
}

struct Roll<'a> {
    view: View<'a>,
    /// The snapshot's id.
    at: u64,
    applier: Applier,
    dir: u32,
    done: RolledBack,
}

impl Roll<'_> {
    fn apply(&mut self, m: WireMutation) -> Result<()> {
        self.applier
            .apply(self.dir, &m, false, &[])
            .map_err(apply_err)
    }

    fn reconcile(&mut self, p: &Path, e: Option<&Entry>) -> Result<()> {
        self.apply(WireMutation::Reconcile {
            path: b(p),
            entry: e.cloned(),
        })
    }

    /// Writes the snapshot's bytes of `ranges` of file `ino` to `p`.
    fn write_back(&mut self, p: &Path, ino: u64, ranges: &[(u64, u64)]) -> Result<()> {
        let at = self.at;
        let mut runs = self.view.runs(ino, at, u64::MAX)?;
        runs.sort_by_key(|(epoch, off, _)| (*epoch, *off));
        for &(s, e) in ranges {
            let mut off = s;
            while off < e {
                let len = (e - off).min(1 << 20) as usize;
                let data = self.view.read_with(ino, &runs, off, len)?;
                self.apply(WireMutation::Write {
                    path: Some(b(p)),
                    offset: off,
                    data,
                    sync: false,
                })?;
                self.done.bytes += len as u64;
                off += len as u64;
            }
        }
        Ok(())
    }

    fn times(&mut self, p: &Path, e: &Entry) -> Result<()> {
        if matches!(e.kind, EntryKind::Symlink(_)) {
            return Ok(());
        }
        self.apply(WireMutation::SetAttr {
            path: Some(b(p)),
            attrs: WireAttrs {
                atime: Some(e.atime),
                mtime: Some(e.mtime),
                ..Default::default()
            },
        })
    }
}

fn live_ino(root: BorrowedFd<'_>, p: &Path) -> Option<(u64, u64)> {
    let fd = entry::open_node(root, p).ok()?;
    let st = sys::stat_fd(fd.as_fd()).ok()?;
    Some((st.st_ino, st.st_nlink))
}

fn rollback_dir(
    store: &Arc<Snapshots>,
    s: &Snapshot,
    dir: u32,
    roots: &[BorrowedFd<'_>],
) -> Result<RolledBack> {
    let root = roots[dir as usize];
    let view = store.view(Some(s.id), dir, root);
    // The snapshot's tree, parents first.
    let mut want: Vec<(PathBuf, u64, Entry)> = Vec::new();
    walk(&view, |p, ino, e| {
        want.push((p.to_path_buf(), ino, e.clone()));
        Ok(())
    })?;
    let names: BTreeSet<&Path> = want.iter().map(|(p, _, _)| p.as_path()).collect();
    let dup = roots
        .iter()
        .map(|r| r.try_clone_to_owned())
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|e| SnapshotError::Corrupt(format!("rollback: {e}")))?;
    let mut roll = Roll {
        view,
        at: s.id,
        applier: Applier::new(dup).with_snapshots(Some(store.clone())),
        dir,
        done: RolledBack::default(),
    };
    // Names the snapshot did not have go first (deepest first), so what
    // takes their place can be made.
    for p in live_names(root)? {
        if !names.contains(p.as_path()) && live_ino(root, &p).is_some() {
            roll.reconcile(&p, None)?;
            roll.done.removed += 1;
        }
    }
    // Where each object of the snapshot got its first name back.
    let mut first: HashMap<u64, PathBuf> = HashMap::new();
    let mut dirs = Vec::new();
    for (p, ino, e) in &want {
        if p.as_os_str().is_empty() {
            continue;
        }
        if e.kind != EntryKind::Dir {
            if let Some(f) = first.get(ino) {
                let linked = match (live_ino(root, f), live_ino(root, p)) {
                    (Some((a, _)), Some((b, _))) => a == b,
                    _ => false,
                };
                if !linked {
                    roll.reconcile(p, None)?;
                    roll.apply(WireMutation::Link {
                        existing: b(f),
                        path: b(p),
                    })?;
                    roll.done.made += 1;
                }
                continue;
            }
            first.insert(*ino, p.clone());
        }
        let was = live_ino(root, p);
        // The same object (not another one given its number since): only
        // what changed since the snapshot differs.
        let same = was.is_some_and(|(i, _)| i == *ino) && !roll.view.gone(*ino)?;
        if same && !store.changed_since(s.id, dir, *ino)? {
            if e.kind == EntryKind::Dir {
                // Names made or removed in it by the rollback moved its times.
                dirs.push((p.clone(), e.clone()));
            }
            continue;
        }
        if was.is_some() && !same && e.kind != EntryKind::Dir {
            // Another object: writing into it would reach its other names.
            roll.reconcile(p, None)?;
        }
        roll.reconcile(p, Some(e))?;
        if same {
            roll.done.rewritten += 1;
        } else {
            roll.done.made += 1;
        }
        match e.kind {
            EntryKind::Dir => dirs.push((p.clone(), e.clone())),
            EntryKind::File => {
                let ranges = if same {
                    roll.view
                        .runs(*ino, s.id, u64::MAX)?
                        .iter()
                        .map(|(_, off, v)| {
                            let len = data_len(v).unwrap_or(0);
                            (*off, (*off + len).min(e.size))
                        })
                        .filter(|(a, z)| z > a)
                        .collect()
                } else {
                    vec![(0, e.size)]
                };
                roll.write_back(p, *ino, &ranges)?;
                roll.times(p, e)?;
            }
            _ => {}
        }
    }
    // Directories' times once their names are back; the root's metadata last.
    for (p, e) in dirs.iter().rev() {
        roll.times(p, e)?;
    }
    if let Some((_, _, e)) = want.first() {
        roll.reconcile(Path::new(""), Some(e))?;
    }
    roll.apply(WireMutation::Sync)?;
    roll.applier.settle_times().map_err(apply_err)?;
    Ok(roll.done)
}

/// Brings the module's directories (`roots`) back to snapshot `name`.
/// The caller makes sure nothing else changes them meanwhile (the module
/// neither serves nor receives here).
pub fn rollback(
    snaps: &Arc<Snapshots>,
    name: &str,
    roots: &[BorrowedFd<'_>],
) -> Result<(Snapshot, RolledBack)> {
    let s = snaps.find(name)?;
    if let Some(why) = &s.broken {
        return Err(SnapshotError::Broken {
            name: s.name.clone(),
            why: why.clone(),
        });
    }
    if roots.len() != s.dirs.len() {
        return Err(SnapshotError::Target {
            path: s.dirs.first().cloned().unwrap_or_default(),
            why: format!(
                "the module has {} directories now and had {} at the snapshot",
                roots.len(),
                s.dirs.len()
            ),
        });
    }
    let marker = RollingBack {
        to: s.name.clone(),
        since_ms: crate::cluster::heartbeat::now_ms(),
    };
    snaps.mark_rollback(Some(&marker))?;
    let mut total = RolledBack::default();
    for d in 0..roots.len() {
        let r = rollback_dir(snaps, &s, d as u32, roots)?;
        total.removed += r.removed;
        total.made += r.made;
        total.rewritten += r.rewritten;
        total.bytes += r.bytes;
    }
    snaps.mark_rollback(None)?;
    if s.consistent {
        // A consistent state again, whatever a resync had left.
        snaps.end_resync()?;
    }
    Ok((s, total))
}
