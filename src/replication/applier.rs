//! The secondary's half of replication: applies the primary's changes, in
//! order, to the real directories. Every path is checked (relative, no `..`)
//! and resolved beneath the module root without following symlinks, so no
//! frame can reach outside the module.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::fs::Errno;
use crate::fs::sys;

use super::entry;
use super::snapshot::{Effect, Snapshots, effects};
use super::wire::{PathError, Time, WireAttrs, WireMutation, checked_path, checked_path_or_root};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("directory index {0} does not exist in this module")]
    Dir(u32),
    #[error(transparent)]
    Path(#[from] PathError),
    #[error("{op} {path}: {}", std::io::Error::from_raw_os_error(errno.code()))]
    Sys {
        op: &'static str,
        path: String,
        errno: Errno,
    },
}

/// Descriptors of files written recently: one path walk per file, not per write.
const OPEN_FILES: usize = 256;

pub struct Applier {
    /// Shared so a change can borrow its root while the applier changes.
    roots: std::sync::Arc<Vec<OwnedFd>>,
    /// This node's snapshots of the module: each change keeps first what it
    /// destroys.
    snaps: Option<std::sync::Arc<Snapshots>>,
    open: HashMap<(u32, PathBuf), OwnedFd>,
    /// Modification times of files written since their times were last set.
    /// An explicit time marks the inode dirty for data integrity, so setting
    /// it after every write would make every later fdatasync of the file
    /// write its inode too (an extra disk write in the primary's wait). They
    /// are set before any other kind of change, a full fsync or a sync, and
    /// before each periodic syncfs ([`Applier::settle_times`]).
    pending_times: HashMap<(u32, PathBuf), Time>,
}

/// A path from the wire: `""` (the root) only where `root_ok`.
fn path_of(raw: &[u8], root_ok: bool) -> Result<PathBuf, PathError> {
    if root_ok {
        checked_path_or_root(raw)
    } else {
        checked_path(raw)
    }
}

fn tolerated(e: Errno, tolerant: bool) -> bool {
    tolerant && matches!(e.code(), libc::ENOENT | libc::EEXIST | libc::ENOTDIR)
}

impl Applier {
    /// `roots`: `O_PATH` descriptors of the module's directories, in config order.
    pub fn new(roots: Vec<OwnedFd>) -> Self {
        Self {
            roots: std::sync::Arc::new(roots),
            snaps: None,
            open: HashMap::new(),
            pending_times: HashMap::new(),
        }
    }

    /// Changes keep what they destroy for `snaps` first.
    pub fn with_snapshots(mut self, snaps: Option<std::sync::Arc<Snapshots>>) -> Self {
        self.snaps = snaps;
        self
    }

    /// Readable descriptors of the roots, for syncfs on another thread.
    pub fn sync_handles(&self) -> std::io::Result<Vec<OwnedFd>> {
        self.roots
            .iter()
            .map(|r| {
                sys::reopen(r.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY)
                    .map_err(|e| std::io::Error::from_raw_os_error(e.code()))
            })
            .collect()
    }

    /// The roots, for the threads that read ahead of the resync.
    pub fn roots(&self) -> &super::warm::Roots {
        &self.roots
    }

    pub fn root(&self, dir: u32) -> Result<BorrowedFd<'_>, ApplyError> {
        self.roots
            .get(dir as usize)
            .map(|r| r.as_fd())
            .ok_or(ApplyError::Dir(dir))
    }

    /// Keeps now what the changes about to follow in directory `dir` will
    /// overwrite (see [`Snapshots::keep_ahead`]).
    pub fn keep_ahead(&self, dir: u32, effects: &[Effect]) {
        if let (Some(snaps), Some(root)) = (&self.snaps, self.roots.get(dir as usize)) {
            snaps.keep_ahead(dir, root.as_fd(), effects);
        }
    }

    /// Applies one change and the modification times the primary ended up
    /// with. `tolerant` (resync): a name already gone or already present is
    /// not an error.
    pub fn apply(
        &mut self,
        dir: u32,
        m: &WireMutation,
        tolerant: bool,
        times: &[(Vec<u8>, Time)],
    ) -> Result<(), ApplyError> {
        self.apply_with(dir, m, &[], tolerant, times)
    }

    /// [`apply`](Self::apply) of a write whose data is `data` rather than
    /// its own (which is then empty): the data stays where it was read.
    pub fn apply_with(
        &mut self,
        dir: u32,
        m: &WireMutation,
        data: &[u8],
        tolerant: bool,
        times: &[(Vec<u8>, Time)],
    ) -> Result<(), ApplyError> {
        let deferred = match m {
            WireMutation::Write { .. } | WireMutation::Times => true,
            WireMutation::Fsync { datasync, .. } => *datasync,
            _ => false,
        };
        if !deferred {
            self.settle_times()?;
        }
        match self.snaps.clone() {
            Some(snaps) => {
                let roots = self.roots.clone();
                let root = roots.get(dir as usize).ok_or(ApplyError::Dir(dir))?.as_fd();
                snaps.keeping(
                    dir,
                    root,
                    || effects::of_wire(root, m, data.len() as u64),
                    || self.apply_change(dir, m, data, tolerant),
                )?
            }
            None => self.apply_change(dir, m, data, tolerant)?,
        }
        if deferred {
            for (raw, t) in times {
                self.pending_times.insert((dir, path_of(raw, true)?), *t);
            }
            Ok(())
        } else {
            self.set_times(dir, times)
        }
    }

    /// Sets the modification times still pending.
    pub fn settle_times(&mut self) -> Result<(), ApplyError> {
        std::mem::take(&mut self.pending_times)
            .into_iter()
            .try_for_each(|((dir, p), t)| self.set_time(dir, &p, t))
    }

    fn apply_change(
        &mut self,
        dir: u32,
        m: &WireMutation,
        apart: &[u8],
        tolerant: bool,
    ) -> Result<(), ApplyError> {
        let shown = |p: &Path| {
            if p.as_os_str().is_empty() {
                ".".to_string()
            } else {
                p.display().to_string()
            }
        };
        let fail = |op: &'static str, p: &Path| {
            let path = shown(p);
            move |errno: Errno| ApplyError::Sys { op, path, errno }
        };
        let wrap = |op: &'static str, p: &Path, r: Result<(), Errno>| match r {
            Err(e) if tolerated(e, tolerant) => Ok(()),
            other => other.map_err(fail(op, p)),
        };
        match m {
            WireMutation::Create {
                path,
                mode,
                umask,
                rdev,
                uid,
                gid,
            } => {
                let p = checked_path(path)?;
                let r = self.in_parent(dir, &p, |d, n| {
                    sys::set_thread_umask(*umask)?;
                    sys::mknodat(d, n, *mode, *rdev)?;
                    chown_at(d, n, *uid, *gid)
                });
                wrap("create", &p, r)
            }
            WireMutation::Mkdir {
                path,
                mode,
                umask,
                uid,
                gid,
            } => {
                let p = checked_path(path)?;
                let r = self.in_parent(dir, &p, |d, n| {
                    sys::set_thread_umask(*umask)?;
                    sys::mkdirat(d, n, *mode)?;
                    chown_at(d, n, *uid, *gid)
                });
                wrap("mkdir", &p, r)
            }
            WireMutation::Symlink {
                path,
                target,
                uid,
                gid,
            } => {
                let p = checked_path(path)?;
                let t = CString::new(target.clone())
                    .map_err(|_| PathError::Nul(String::from_utf8_lossy(target).into_owned()))?;
                let r = self.in_parent(dir, &p, |d, n| {
                    sys::symlinkat(&t, d, n)?;
                    chown_at(d, n, *uid, *gid)
                });
                wrap("symlink", &p, r)
            }
            WireMutation::Link { existing, path } => {
                let e = checked_path(existing)?;
                let p = checked_path(path)?;
                self.forget(dir, Some(&p));
                let root = self.root(dir)?;
                let r = entry::open_node(root, &e).and_then(|src| {
                    self.in_parent(dir, &p, |d, n| {
                        // Replayed by a resync: the source had no such name
                        // when it linked, and what this node holds there
                        // is older (made equal to the source's later state).
                        if tolerant {
                            entry::remove_tree(d, n)?;
                        }
                        sys::link_fd(src.as_fd(), d, n)
                    })
                });
                wrap("link", &p, r)
            }
            WireMutation::Unlink { path } => {
                let p = checked_path(path)?;
                self.forget(dir, Some(&p));
                let r = self.in_parent(dir, &p, |d, n| sys::unlinkat(d, n, 0));
                wrap("unlink", &p, r)
            }
            WireMutation::Rmdir { path } => {
                let p = checked_path(path)?;
                self.forget(dir, None);
                let r = self.in_parent(dir, &p, |d, n| sys::unlinkat(d, n, libc::AT_REMOVEDIR));
                wrap("rmdir", &p, r)
            }
            WireMutation::Rename { from, to, flags } => {
                let f = checked_path(from)?;
                let t = checked_path(to)?;
                self.forget(dir, None);
                let r = self.parent_fd(dir, &f).and_then(|(fd1, n1)| {
                    let (fd2, n2) = self.parent_fd(dir, &t)?;
                    sys::renameat2(fd1.as_fd(), &n1, fd2.as_fd(), &n2, *flags)
                });
                wrap("rename", &f, r)
            }
            WireMutation::Write {
                path: Some(path),
                offset,
                data,
                sync,
            } => {
                let p = checked_path(path)?;
                let data = if data.is_empty() { apart } else { data };
                let r = self.file(dir, &p).and_then(|fd| {
                    sys::pwrite_all(fd, data, *offset)?;
                    if *sync { sys::fsync(fd, true) } else { Ok(()) }
                });
                wrap("write", &p, r)
            }
            WireMutation::Fallocate {
                path: Some(path),
                offset,
                length,
                mode,
            } => {
                let p = checked_path(path)?;
                let r = self
                    .file(dir, &p)
                    .and_then(|fd| sys::fallocate(fd, *mode, *offset, *length));
                wrap("fallocate", &p, r)
            }
            WireMutation::SetAttr {
                path: Some(path),
                attrs,
            } => {
                let p = path_of(path, true)?;
                let r = self.set_attrs(dir, &p, attrs);
                wrap("setattr", &p, r)
            }
            WireMutation::SetXattr {
                path: Some(path),
                name,
                value,
                flags,
            } => {
                let p = path_of(path, true)?;
                let c = CString::new(name.clone())
                    .map_err(|_| PathError::Nul(String::from_utf8_lossy(name).into_owned()))?;
                let r = self
                    .node(dir, &p)
                    .and_then(|fd| sys::setxattr(fd.as_fd(), &c, value, *flags));
                wrap("setxattr", &p, r)
            }
            WireMutation::RemoveXattr {
                path: Some(path),
                name,
            } => {
                let p = path_of(path, true)?;
                let c = CString::new(name.clone())
                    .map_err(|_| PathError::Nul(String::from_utf8_lossy(name).into_owned()))?;
                let r = self
                    .node(dir, &p)
                    .and_then(|fd| sys::removexattr(fd.as_fd(), &c));
                wrap("removexattr", &p, r)
            }
            WireMutation::Fsync {
                path: Some(path),
                datasync,
            } => {
                let p = path_of(path, true)?;
                let r = match self.open.get(&(dir, p.clone())) {
                    // The file just written: no path walk.
                    Some(fd) => sys::fsync(fd.as_fd(), *datasync),
                    None => self.node(dir, &p).and_then(|fd| {
                        let f = sys::reopen(fd.as_fd(), libc::O_RDONLY)?;
                        sys::fsync(f.as_fd(), *datasync)
                    }),
                };
                wrap("fsync", &p, r)
            }
            WireMutation::Times | WireMutation::Cut { .. } => {
                self.root(dir)?;
                Ok(())
            }
            WireMutation::Sync => {
                // Every directory, not only `dir`'s: the seq of a sync is
                // acknowledged durable for the whole module, and the
                // directories may sit on different file systems.
                self.root(dir)?;
                let r = self.roots.iter().try_for_each(|root| {
                    let f = sys::reopen(root.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY)?;
                    nix::unistd::syncfs(&f).map_err(|e| Errno::from(std::io::Error::from(e)))
                });
                wrap("sync", Path::new(""), r)
            }
            WireMutation::Reconcile { path, entry: e } => {
                let p = path_of(path, true)?;
                // What it may replace is the name and what is under it.
                self.forget_under(dir, &p);
                let root = self.root(dir)?;
                let r = entry::impose(root, &p, e.as_ref());
                wrap("resync", &p, r)
            }
            // A file without a name any more: its bytes can never be seen again.
            WireMutation::Write { path: None, .. }
            | WireMutation::Fallocate { path: None, .. }
            | WireMutation::SetAttr { path: None, .. }
            | WireMutation::SetXattr { path: None, .. }
            | WireMutation::RemoveXattr { path: None, .. }
            | WireMutation::Fsync { path: None, .. } => Ok(()),
        }
    }

    /// Sets the modification times the primary ended up with. A name that is
    /// gone by now (a later change removed it) is skipped.
    fn set_times(&self, dir: u32, times: &[(Vec<u8>, Time)]) -> Result<(), ApplyError> {
        times
            .iter()
            .try_for_each(|(raw, t)| self.set_time(dir, &path_of(raw, true)?, *t))
    }

    fn set_time(&self, dir: u32, p: &Path, t: Time) -> Result<(), ApplyError> {
        match &self.snaps {
            Some(snaps) => snaps.keeping(
                dir,
                self.root(dir)?,
                || vec![Effect::Meta(p.to_path_buf())],
                || self.set_time_now(dir, p, t),
            ),
            None => self.set_time_now(dir, p, t),
        }
    }

    fn set_time_now(&self, dir: u32, p: &Path, t: Time) -> Result<(), ApplyError> {
        let ts = [Time::timespec(None), Time::timespec(Some(t))];
        // The file just written needs no path walk.
        let r = match self.open.get(&(dir, p.to_path_buf())) {
            Some(fd) => sys::utimens_fd(fd.as_fd(), &ts),
            None => match self.node(dir, p) {
                Ok(fd) => sys::utimens_fd(fd.as_fd(), &ts),
                Err(e) if matches!(e.code(), libc::ENOENT | libc::ENOTDIR) => return Ok(()),
                Err(e) => Err(e),
            },
        };
        r.map_err(|errno| ApplyError::Sys {
            op: "utimens",
            path: p.display().to_string(),
            errno,
        })
    }

    /// Drops cached descriptors: of one path, or all of them (after a
    /// rename or removal of a directory, any cached path may be stale).
    fn forget(&mut self, dir: u32, path: Option<&Path>) {
        match path {
            Some(p) => {
                self.open.remove(&(dir, p.to_path_buf()));
            }
            None => self.open.clear(),
        }
    }

    /// Drops the cached descriptors of `path` and of every path under it.
    fn forget_under(&mut self, dir: u32, path: &Path) {
        self.open
            .retain(|(d, p), _| *d != dir || !p.starts_with(path));
    }

    /// The directory holding `path` and the last component's name.
    fn parent_fd(&self, dir: u32, path: &Path) -> Result<(OwnedFd, CString), Errno> {
        let root = self.root(dir).map_err(|_| Errno::EINVAL)?;
        let parent = entry::open_node(root, path.parent().unwrap_or(Path::new("")))?;
        let name = path.file_name().ok_or(Errno::EINVAL)?;
        let c = CString::new(name.as_bytes()).map_err(|_| Errno::EINVAL)?;
        Ok((parent, c))
    }

    fn in_parent(
        &self,
        dir: u32,
        path: &Path,
        f: impl FnOnce(BorrowedFd<'_>, &std::ffi::CStr) -> Result<(), Errno>,
    ) -> Result<(), Errno> {
        let (fd, name) = self.parent_fd(dir, path)?;
        f(fd.as_fd(), &name)
    }

    fn node(&self, dir: u32, path: &Path) -> Result<OwnedFd, Errno> {
        let root = self.root(dir).map_err(|_| Errno::EINVAL)?;
        entry::open_node(root, path)
    }

    /// A writable descriptor of the regular file `path` (cached).
    fn file(&mut self, dir: u32, path: &Path) -> Result<BorrowedFd<'_>, Errno> {
        let key = (dir, path.to_path_buf());
        if !self.open.contains_key(&key) {
            let node = self.node(dir, path)?;
            let st = sys::stat_fd(node.as_fd())?;
            if st.st_mode & libc::S_IFMT != libc::S_IFREG {
                return Err(Errno::EINVAL);
            }
            let fd = sys::reopen(node.as_fd(), libc::O_RDWR)?;
            if self.open.len() >= OPEN_FILES {
                self.open.clear();
            }
            self.open.insert(key.clone(), fd);
        }
        Ok(self.open[&key].as_fd())
    }

    fn set_attrs(&mut self, dir: u32, path: &Path, a: &WireAttrs) -> Result<(), Errno> {
        if let Some(size) = a.size {
            let fd = self.file(dir, path)?;
            sys::ftruncate(fd, size)?;
        }
        let fd = self.node(dir, path)?;
        if a.uid.is_some() || a.gid.is_some() {
            sys::fchownat_fd(fd.as_fd(), a.uid, a.gid)?;
        }
        if let Some(mode) = a.mode {
            sys::chmod_fd(fd.as_fd(), mode & 0o7777)?;
        }
        if a.atime.is_some() || a.mtime.is_some() {
            sys::utimens_fd(
                fd.as_fd(),
                &[Time::timespec(a.atime), Time::timespec(a.mtime)],
            )?;
        }
        Ok(())
    }
}

fn chown_at(dir: BorrowedFd<'_>, name: &std::ffi::CStr, uid: u32, gid: u32) -> Result<(), Errno> {
    let fd = sys::openat(dir, name, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
    sys::fchownat_fd(fd.as_fd(), Some(uid), Some(gid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn mtime(p: &Path) -> (i64, i64) {
        let m = std::fs::metadata(p).unwrap();
        (m.mtime(), m.mtime_nsec())
    }

    fn write(path: &str, data: &[u8]) -> WireMutation {
        WireMutation::Write {
            path: Some(path.into()),
            offset: 0,
            data: data.to_vec(),
            sync: false,
        }
    }

    fn applier(at: &Path) -> Applier {
        // SAFETY: AT_FDCWD is not -1 and is no real descriptor: the *at calls read it as the
        // working directory, and it is never closed.
        let root = sys::openat(
            unsafe { BorrowedFd::borrow_raw(libc::AT_FDCWD) },
            &CString::new(at.as_os_str().as_bytes()).unwrap(),
            libc::O_PATH | libc::O_DIRECTORY,
            0,
        )
        .unwrap();
        Applier::new(vec![root])
    }

    #[test]
    fn a_link_a_resync_replays_replaces_what_the_name_held() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("a"), b"linked").unwrap();
        // Made equal to the source's later state before the link's record.
        std::fs::write(t.path().join("b"), b"older").unwrap();
        let mut a = applier(t.path());
        let link = WireMutation::Link {
            existing: b"a".to_vec(),
            path: b"b".to_vec(),
        };
        // Live, a name that exists is an error, and nothing changes.
        assert!(a.apply(0, &link, false, &[]).is_err());
        assert_eq!(std::fs::read(t.path().join("b")).unwrap(), b"older");
        a.apply(0, &link, true, &[]).unwrap();
        let (ma, mb) = (
            std::fs::metadata(t.path().join("a")).unwrap(),
            std::fs::metadata(t.path().join("b")).unwrap(),
        );
        assert_eq!(
            (ma.ino(), ma.nlink()),
            (mb.ino(), 2),
            "b is a's second name"
        );
        // Replayed again (its record may have reached this node before).
        a.apply(0, &link, true, &[]).unwrap();
        assert_eq!(std::fs::metadata(t.path().join("b")).unwrap().nlink(), 2);
        // With no file to link, the name is left as it is.
        std::fs::write(t.path().join("c"), b"c").unwrap();
        let gone = WireMutation::Link {
            existing: b"missing".to_vec(),
            path: b"c".to_vec(),
        };
        a.apply(0, &gone, true, &[]).unwrap();
        assert_eq!(std::fs::read(t.path().join("c")).unwrap(), b"c");
    }

    #[test]
    fn times_of_writes_are_set_after_fdatasyncs_and_before_anything_else() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("a"), b"old").unwrap();
        let mut a = applier(t.path());
        let stamp = |secs| vec![(b"a".to_vec(), Time { secs, nanos: 7 })];
        a.apply(0, &write("a", b"new"), false, &stamp(1_000_000))
            .unwrap();
        let fsync = WireMutation::Fsync {
            path: Some(b"a".to_vec()),
            datasync: true,
        };
        a.apply(0, &fsync, false, &[]).unwrap();
        assert_eq!(std::fs::read(t.path().join("a")).unwrap(), b"new");
        assert_ne!(mtime(&t.path().join("a")), (1_000_000, 7), "set too early");
        a.apply(0, &write("a", b"newer"), false, &stamp(2_000_000))
            .unwrap();
        // The latest time is set before a rename moves the file.
        let rename = WireMutation::Rename {
            from: b"a".to_vec(),
            to: b"b".to_vec(),
            flags: 0,
        };
        a.apply(0, &rename, false, &[]).unwrap();
        assert_eq!(mtime(&t.path().join("b")), (2_000_000, 7));
        // And by settle_times, which runs before each periodic syncfs.
        std::fs::write(t.path().join("c"), b"c").unwrap();
        let stamp_c = vec![(
            b"c".to_vec(),
            Time {
                secs: 3_000_000,
                nanos: 0,
            },
        )];
        a.apply(0, &write("c", b"cc"), false, &stamp_c).unwrap();
        assert_ne!(mtime(&t.path().join("c")), (3_000_000, 0));
        a.settle_times().unwrap();
        assert_eq!(mtime(&t.path().join("c")), (3_000_000, 0));
        // Times that travel on their own wait the same way; a full fsync
        // sets them before it makes the file durable.
        let later = vec![(
            b"b".to_vec(),
            Time {
                secs: 4_000_000,
                nanos: 1,
            },
        )];
        a.apply(0, &WireMutation::Times, false, &later).unwrap();
        assert_ne!(mtime(&t.path().join("b")), (4_000_000, 1));
        let full = WireMutation::Fsync {
            path: Some(b"b".to_vec()),
            datasync: false,
        };
        a.apply(0, &full, false, &[]).unwrap();
        assert_eq!(mtime(&t.path().join("b")), (4_000_000, 1));
    }
}
