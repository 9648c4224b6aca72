//! A snapshot's tree written into a new directory, while the module runs.
//!
//! The tree is built in a hidden directory beside the target and renamed
//! into place at the end: the target holds the whole snapshot or nothing.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::view::View;
use super::{Result, Snapshot, SnapshotError, Snapshots};
use crate::fs::Errno;
use crate::fs::sys;
use crate::replication::entry;
use crate::replication::wire::{Entry, EntryKind, Time};

/// What a restore wrote.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Restored {
    pub path: PathBuf,
    pub files: u64,
    pub dirs: u64,
    pub others: u64,
    pub bytes: u64,
}

fn sys_err(op: &'static str, p: &Path, errno: Errno) -> SnapshotError {
    SnapshotError::Sys {
        op,
        path: super::shown(p),
        errno,
    }
}

/// A pre-order walk of one directory's tree as `view` sees it: `f` gets
/// each name with its object and metadata, parents before children.
pub fn walk(view: &View<'_>, mut f: impl FnMut(&Path, u64, &Entry) -> Result<()>) -> Result<()> {
    let root = view.root_ino()?;
    f(Path::new(""), root, &view.meta(root)?)?;
    let mut todo = vec![(PathBuf::new(), root)];
    let mut seen = HashSet::from([root]);
    while let Some((p, ino)) = todo.pop() {
        for (name, child) in view.names(ino)? {
            let cp = p.join(OsStr::from_bytes(&name));
            let e = view.meta(child)?;
            f(&cp, child, &e)?;
            // A directory met twice would be a loop: the store is wrong.
            if e.kind == EntryKind::Dir {
                if !seen.insert(child) {
                    return Err(SnapshotError::Corrupt(format!(
                        "directory {} is reached twice",
                        super::shown(&cp)
                    )));
                }
                todo.push((cp, child));
            }
        }
    }
    Ok(())
}

fn set_times(dest: BorrowedFd<'_>, p: &Path, e: &Entry) -> Result<()> {
    let fd = entry::open_node(dest, p).map_err(|er| sys_err("open", p, er))?;
    sys::utimens_fd(
        fd.as_fd(),
        &[Time::timespec(Some(e.atime)), Time::timespec(Some(e.mtime))],
    )
    .map_err(|er| sys_err("utimens", p, er))
}

fn restore_dir(view: &View<'_>, dest: BorrowedFd<'_>, done: &mut Restored) -> Result<()> {
    let mut first: HashMap<u64, PathBuf> = HashMap::new();
    let mut dirs: Vec<(PathBuf, Entry)> = Vec::new();
    walk(view, |p, ino, e| {
        if e.kind != EntryKind::Dir {
            if let Some(f) = first.get(&ino) {
                let src = entry::open_node(dest, f).map_err(|er| sys_err("open", f, er))?;
                let parent = entry::open_node(dest, p.parent().unwrap_or(Path::new("")))
                    .map_err(|er| sys_err("open", p, er))?;
                let name = entry::cstr(Path::new(p.file_name().unwrap_or_default()))
                    .map_err(|er| sys_err("name", p, er))?;
                return sys::link_fd(src.as_fd(), parent.as_fd(), &name)
                    .map_err(|er| sys_err("link", p, er));
            }
            first.insert(ino, p.to_path_buf());
        }
        entry::impose(dest, p, Some(e)).map_err(|er| sys_err("create", p, er))?;
        match e.kind {
            EntryKind::Dir => {
                done.dirs += 1;
                dirs.push((p.to_path_buf(), e.clone()));
            }
            EntryKind::File => {
                done.files += 1;
                let node = entry::open_node(dest, p).map_err(|er| sys_err("open", p, er))?;
                let w = sys::reopen(node.as_fd(), libc::O_WRONLY)
                    .map_err(|er| sys_err("open", p, er))?;
                view.content(ino, e.size, w.as_fd())?;
                done.bytes += e.size;
                set_times(dest, p, e)?;
            }
            _ => done.others += 1,
        }
        Ok(())
    })?;
    // Children changed their directories' times: set them last, deepest first.
    for (p, e) in dirs.iter().rev() {
        set_times(dest, p, e)?;
    }
    Ok(())
}

/// Whether `inner` is `outer` or below it (both absolute, canonical).
fn within(inner: &Path, outer: &Path) -> bool {
    inner.starts_with(outer)
}

fn open_dir(p: &Path) -> std::io::Result<OwnedFd> {
    Ok(std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(p)?
        .into())
}

/// Where the restore of directory `i` of `dirs` goes inside the target.
fn labels(dirs: &[PathBuf]) -> Vec<PathBuf> {
    if dirs.len() == 1 {
        return vec![PathBuf::new()];
    }
    let mut out: Vec<PathBuf> = Vec::new();
    for (i, d) in dirs.iter().enumerate() {
        let base = d
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_else(|| format!("dir{i}").into());
        let mut label = PathBuf::from(&base);
        if out.contains(&label) {
            label = PathBuf::from(format!("{}-{i}", base.to_string_lossy()));
        }
        out.push(label);
    }
    out
}

impl Snapshots {
    /// Writes snapshot `name` into `to` (absolute; absent or an empty
    /// directory), from the module's real directories `roots`.
    pub fn restore(
        &self,
        name: &str,
        roots: &[BorrowedFd<'_>],
        to: &Path,
    ) -> Result<(Snapshot, Restored)> {
        let s = self.find(name)?;
        if let Some(why) = &s.broken {
            return Err(SnapshotError::Broken {
                name: s.name.clone(),
                why: why.clone(),
            });
        }
        let target = |why: String| SnapshotError::Target {
            path: to.to_path_buf(),
            why,
        };
        if roots.len() != s.dirs.len() {
            return Err(target(format!(
                "the module has {} directories now and had {} at the snapshot",
                roots.len(),
                s.dirs.len()
            )));
        }
        if !to.is_absolute() {
            return Err(target("must be an absolute path".into()));
        }
        let (parent, leaf) = match (to.parent(), to.file_name()) {
            (Some(p), Some(l)) => (p, l),
            _ => return Err(target("must name a directory below /".into())),
        };
        let parent = parent
            .canonicalize()
            .map_err(|e| target(format!("its parent: {e}")))?;
        let full = parent.join(leaf);
        for d in &s.dirs {
            let d = d.canonicalize().unwrap_or_else(|_| d.clone());
            if within(&full, &d) || within(&d, &full) {
                return Err(target(format!(
                    "overlaps the module's directory {}",
                    d.display()
                )));
            }
        }
        match std::fs::symlink_metadata(&full) {
            Ok(m) if !m.is_dir() => return Err(target("exists and is not a directory".into())),
            Ok(_) => {
                let mut it = std::fs::read_dir(&full).map_err(|e| target(e.to_string()))?;
                if it.next().is_some() {
                    return Err(target("is not empty".into()));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(target(e.to_string())),
        }
        // What a restore into the same target cut short left (a daemon
        // killed): never the target itself, only its hidden staging.
        let stale = format!(".{}.tandem-restore-", leaf.to_string_lossy());
        if let Ok(entries) = std::fs::read_dir(&parent) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(&stale) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let staging = parent.join(format!(
            ".{}.tandem-restore-{}-{n}",
            leaf.to_string_lossy(),
            std::process::id()
        ));
        std::fs::create_dir(&staging).map_err(|e| SnapshotError::Target {
            path: staging.clone(),
            why: e.to_string(),
        })?;
        let mut done = Restored {
            path: full.clone(),
            ..Restored::default()
        };
        let result = (|| {
            for (i, (root, label)) in roots.iter().zip(labels(&s.dirs)).enumerate() {
                let d = staging.join(&label);
                if !label.as_os_str().is_empty() {
                    std::fs::create_dir(&d).map_err(|e| SnapshotError::Target {
                        path: d.clone(),
                        why: e.to_string(),
                    })?;
                }
                let dest = open_dir(&d).map_err(|e| SnapshotError::Target {
                    path: d.clone(),
                    why: e.to_string(),
                })?;
                let view = self.view(Some(s.id), i as u32, *root);
                restore_dir(&view, dest.as_fd(), &mut done)?;
            }
            std::fs::rename(&staging, &full)
                .map_err(|e| target(format!("cannot move into place: {e}")))
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
        Ok((s, done))
    }
}
