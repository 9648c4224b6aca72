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

use parking_lot::{Condvar, Mutex};
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
    times_of(fd.as_fd(), p, e)
}

/// Gives the node open as `fd` (the restored `p`) the times of `e`.
fn times_of(fd: BorrowedFd<'_>, p: &Path, e: &Entry) -> Result<()> {
    sys::utimens_fd(
        fd,
        &[Time::timespec(Some(e.atime)), Time::timespec(Some(e.mtime))],
    )
    .map_err(|er| sys_err("utimens", p, er))
}

/// Threads writing a restore. A single walk waits on each read of a cold
/// tree in turn (`cp -a` does); several keep the disk's queue full.
const WORKERS: usize = 4;

/// The directories still to restore, shared by the workers.
#[derive(Default)]
struct Queue {
    todo: Vec<(PathBuf, u64)>,
    /// Workers restoring a directory now (they may queue more).
    busy: usize,
    failed: Option<SnapshotError>,
}

/// One directory's tree being restored by [`WORKERS`] threads, each taking
/// a directory at a time: its names, their entries and the files' bytes.
struct Restore<'a> {
    view: &'a View<'a>,
    dest: BorrowedFd<'a>,
    queue: Mutex<Queue>,
    wake: Condvar,
    /// The first name restored of each file with several (the others are
    /// linked to it).
    first: Mutex<HashMap<u64, PathBuf>>,
    /// Directories met: one met twice would be a loop (a wrong store).
    seen: Mutex<HashSet<u64>>,
    /// Directories, whose times are set last.
    dirs: Mutex<Vec<(PathBuf, Entry)>>,
    done: Mutex<Restored>,
}

impl Restore<'_> {
    fn worker(&self) {
        loop {
            let (p, ino) = {
                let mut q = self.queue.lock();
                loop {
                    if q.failed.is_some() {
                        return;
                    }
                    if let Some(job) = q.todo.pop() {
                        q.busy += 1;
                        break job;
                    }
                    if q.busy == 0 {
                        return;
                    }
                    self.wake.wait(&mut q);
                }
            };
            let r = self.directory(&p, ino);
            let mut q = self.queue.lock();
            q.busy -= 1;
            if let Err(e) = r {
                q.failed.get_or_insert(e);
            }
            self.wake.notify_all();
        }
    }

    fn directory(&self, p: &Path, ino: u64) -> Result<()> {
        for (name, child) in self.view.names(ino)? {
            if self.queue.lock().failed.is_some() {
                return Ok(());
            }
            let cp = p.join(OsStr::from_bytes(&name));
            let e = self.view.meta(child)?;
            self.entry(&cp, child, &e)?;
            if e.kind == EntryKind::Dir {
                if !self.seen.lock().insert(child) {
                    return Err(SnapshotError::Corrupt(format!(
                        "directory {} is reached twice",
                        super::shown(&cp)
                    )));
                }
                self.queue.lock().todo.push((cp, child));
                self.wake.notify_one();
            }
        }
        Ok(())
    }

    fn entry(&self, p: &Path, ino: u64, e: &Entry) -> Result<()> {
        let dest = self.dest;
        if e.kind != EntryKind::Dir {
            // A name of a file met before (under another name, perhaps by
            // another thread that is still creating it): a link to it.
            let claimed = {
                let mut first = self.first.lock();
                match first.get(&ino) {
                    Some(f) => Some(f.clone()),
                    None => {
                        first.insert(ino, p.to_path_buf());
                        None
                    }
                }
            };
            if let Some(f) = claimed {
                return self.link(&f, p);
            }
        }
        entry::impose(dest, p, Some(e)).map_err(|er| sys_err("create", p, er))?;
        match e.kind {
            EntryKind::Dir => {
                self.done.lock().dirs += 1;
                self.dirs.lock().push((p.to_path_buf(), e.clone()));
            }
            EntryKind::File => {
                let node = entry::open_node(dest, p).map_err(|er| sys_err("open", p, er))?;
                let w = sys::reopen(node.as_fd(), libc::O_WRONLY)
                    .map_err(|er| sys_err("open", p, er))?;
                self.view.content(ino, e.size, w.as_fd())?;
                times_of(node.as_fd(), p, e)?;
                let mut done = self.done.lock();
                done.files += 1;
                done.bytes += e.size;
            }
            _ => self.done.lock().others += 1,
        }
        Ok(())
    }
}

impl Restore<'_> {
    /// Links `p` to the file first restored as `f` (waiting for it while
    /// the thread that claimed it creates it).
    fn link(&self, f: &Path, p: &Path) -> Result<()> {
        let parent = entry::open_node(self.dest, p.parent().unwrap_or(Path::new("")))
            .map_err(|er| sys_err("open", p, er))?;
        let name = entry::cstr(Path::new(p.file_name().unwrap_or_default()))
            .map_err(|er| sys_err("name", p, er))?;
        let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            match entry::open_node(self.dest, f) {
                Ok(src) => {
                    return sys::link_fd(src.as_fd(), parent.as_fd(), &name)
                        .map_err(|er| sys_err("link", p, er));
                }
                Err(er)
                    if er.code() == libc::ENOENT
                        && std::time::Instant::now() < until
                        && self.queue.lock().failed.is_none() =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(er) => return Err(sys_err("open", f, er)),
            }
        }
    }
}

fn restore_dir(view: &View<'_>, dest: BorrowedFd<'_>, done: &mut Restored) -> Result<()> {
    let root = view.root_ino()?;
    let top = view.meta(root)?;
    entry::impose(dest, Path::new(""), Some(&top))
        .map_err(|er| sys_err("create", Path::new(""), er))?;
    let work = Restore {
        view,
        dest,
        queue: Mutex::new(Queue {
            todo: vec![(PathBuf::new(), root)],
            ..Queue::default()
        }),
        wake: Condvar::new(),
        first: Mutex::new(HashMap::new()),
        seen: Mutex::new(HashSet::from([root])),
        dirs: Mutex::new(vec![(PathBuf::new(), top)]),
        done: Mutex::new(std::mem::take(done)),
    };
    work.done.lock().dirs += 1;
    std::thread::scope(|s| {
        for _ in 0..WORKERS {
            s.spawn(|| work.worker());
        }
    });
    *done = work.done.into_inner();
    if let Some(e) = work.queue.into_inner().failed {
        return Err(e);
    }
    // Children changed their directories' times: set them last, deepest first.
    let mut dirs = work.dirs.into_inner();
    dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
    for (p, e) in &dirs {
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
