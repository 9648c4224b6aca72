//! Handing a live mount to another process (an in-place upgrade of the
//! daemon) without unmounting: the kernel queues the application's requests
//! while nobody reads the session, so the old process stops reading (see
//! `Gate::freeze`), and the new one goes on from the same `/dev/fuse`
//! connection with the same inode and handle numbers, descriptors and all.
//!
//! The image names descriptors by number: across `execve` they stay open
//! once their close-on-exec flag is cleared ([`SessionImage::keep_across_exec`]).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::handles::{DirHandle, FileHandle, Table};
use super::inode::{InodeImage, InodeTable};

/// What a file system's methods share with the mount's owner.
pub(super) struct Tables {
    pub inodes: Arc<InodeTable>,
    pub files: Arc<Table<FileHandle>>,
    pub dirs: Arc<Table<DirHandle>>,
    pub uncached_writes: Arc<AtomicBool>,
    pub root_prefix: PathBuf,
    pub root_fd: RawFd,
}

/// One mount as the next process needs it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SessionImage {
    /// The mount point.
    pub dir: PathBuf,
    /// The `/dev/fuse` connection.
    pub fuse: RawFd,
    pub root_prefix: PathBuf,
    pub uncached_writes: bool,
    pub inodes: Vec<InodeImage>,
    pub next_synthetic: u64,
    pub files: Vec<FileImage>,
    pub next_file: u64,
    pub dirs: Vec<DirImage>,
    pub next_dir: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileImage {
    pub fh: u64,
    pub inode: u64,
    pub fd: RawFd,
    pub writable: bool,
    pub direct: bool,
    pub sync: bool,
    /// A write error not reported yet (errno).
    pub deferred: Option<i32>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DirImage {
    pub fh: u64,
    pub inode: u64,
    pub fd: RawFd,
}

/// Why a hand-over image cannot be taken back into a mount.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("descriptor {0} is not open")]
    Closed(RawFd),
    #[error("descriptor {0} is named twice")]
    Twice(RawFd),
    #[error("handle {fh} refers to inode {inode}, which the image lacks")]
    NoInode { fh: u64, inode: u64 },
    #[error("{0}")]
    Inodes(&'static str),
    #[error("directory handle {fh}: {errno:?}")]
    Dir { fh: u64, errno: super::fuse::Errno },
}

impl SessionImage {
    pub(super) fn take(dir: PathBuf, fuse: RawFd, t: &Tables) -> Self {
        let (mut inodes, next_synthetic) = t.inodes.export();
        let (files, next_file) = t.files.export();
        let (dirs, next_dir) = t.dirs.export();
        // Inodes only a handle still holds (the kernel forgot them).
        let handle_inodes = files
            .iter()
            .map(|(_, f)| &f.inode)
            .chain(dirs.iter().map(|(_, d)| &d.inode));
        for inode in handle_inodes {
            if !inodes.iter().any(|i| i.id == inode.id) {
                inodes.push(InodeImage::of(inode, 0));
            }
        }
        SessionImage {
            dir,
            fuse,
            root_prefix: t.root_prefix.clone(),
            uncached_writes: t.uncached_writes.load(Ordering::Relaxed),
            inodes,
            next_synthetic,
            files: files
                .iter()
                .map(|(fh, f)| FileImage {
                    fh: *fh,
                    inode: f.inode.id,
                    fd: f.file.as_raw_fd(),
                    writable: f.writable,
                    direct: f.direct,
                    sync: f.sync,
                    deferred: f.deferred.lock().map(|e| e.code()),
                })
                .collect(),
            next_file,
            dirs: dirs
                .iter()
                .map(|(fh, d)| DirImage {
                    fh: *fh,
                    inode: d.inode.id,
                    fd: d.raw_fd(),
                })
                .collect(),
            next_dir,
        }
    }

    /// Every descriptor the image names.
    pub fn fds(&self) -> Vec<RawFd> {
        let mut out = vec![self.fuse];
        for i in &self.inodes {
            out.push(i.fd);
            out.extend(&i.aliases);
        }
        out.extend(self.files.iter().map(|f| f.fd));
        out.extend(self.dirs.iter().map(|d| d.fd));
        out
    }

    /// Lets the descriptors survive `execve` (or, with `false`, closes them
    /// on exec again, as every descriptor of the daemon is).
    pub fn keep_across_exec(&self, keep: bool) -> std::io::Result<()> {
        keep_across_exec(&self.fds(), keep)
    }

    /// Checks that every descriptor is open and named once.
    pub fn check(&self) -> Result<(), ImageError> {
        let mut seen = std::collections::HashSet::new();
        for fd in self.fds() {
            if !seen.insert(fd) {
                return Err(ImageError::Twice(fd));
            }
            // SAFETY: F_GETFD only reads the flags of a descriptor number.
            if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                return Err(ImageError::Closed(fd));
            }
        }
        Ok(())
    }

    /// Takes the descriptors back into tables (after [`SessionImage::check`]),
    /// and the `/dev/fuse` connection.
    ///
    /// # Safety
    /// The descriptors the image names belong to this process and to nothing
    /// else in it (they were inherited across `execve` for this purpose).
    pub(super) unsafe fn into_tables(self) -> Result<(Tables, OwnedFd), ImageError> {
        self.check()?;
        let nlookups: Vec<u64> = self.inodes.iter().map(|i| i.nlookup).collect();
        let files_at = |id: u64| -> bool {
            self.files.iter().any(|f| f.inode == id) || self.dirs.iter().any(|d| d.inode == id)
        };
        for f in &self.files {
            if !self.inodes.iter().any(|i| i.id == f.inode) {
                return Err(ImageError::NoInode {
                    fh: f.fh,
                    inode: f.inode,
                });
            }
        }
        for d in &self.dirs {
            if !self.inodes.iter().any(|i| i.id == d.inode) {
                return Err(ImageError::NoInode {
                    fh: d.fh,
                    inode: d.inode,
                });
            }
        }
        // An inode with no lookup and no handle would only leak.
        let kept: Vec<bool> = self
            .inodes
            .iter()
            .map(|i| i.nlookup > 0 || i.id == super::inode::ROOT_ID || files_at(i.id))
            .collect();
        let root_fd = self
            .inodes
            .iter()
            .find(|i| i.id == super::inode::ROOT_ID)
            .map(|i| i.fd)
            .ok_or(ImageError::Inodes("the root inode is missing"))?;
        let inodes: Vec<_> = self
            .inodes
            .into_iter()
            // SAFETY: checked open and named once above; the caller's
            // contract says they are this image's to own.
            .map(|i| unsafe { i.into_inode() })
            .collect();
        let (table, aside) = {
            let mut keep_inodes = Vec::new();
            let mut keep_n = Vec::new();
            for ((i, n), k) in inodes.into_iter().zip(nlookups).zip(kept) {
                if k {
                    keep_inodes.push(i);
                    keep_n.push(n);
                }
            }
            InodeTable::restore(keep_inodes, &keep_n, self.next_synthetic)
                .map_err(ImageError::Inodes)?
        };
        let find = |id: u64| {
            table
                .get(id)
                .or_else(|| aside.iter().find(|i| i.id == id).cloned())
                .expect("checked above")
        };
        let files = self
            .files
            .into_iter()
            .map(|f| {
                let handle = FileHandle {
                    inode: find(f.inode),
                    // SAFETY: as above.
                    file: unsafe { OwnedFd::from_raw_fd(f.fd) },
                    writable: f.writable,
                    direct: f.direct,
                    sync: f.sync,
                    deferred: parking_lot::Mutex::new(f.deferred.map(super::fuse::Errno::from_i32)),
                };
                (f.fh, handle)
            })
            .collect();
        let mut dirs = Vec::new();
        for d in self.dirs {
            // SAFETY: as above.
            let fd = unsafe { OwnedFd::from_raw_fd(d.fd) };
            let h = DirHandle::new(find(d.inode), fd)
                .map_err(|errno| ImageError::Dir { fh: d.fh, errno })?;
            dirs.push((d.fh, h));
        }
        // SAFETY: as above.
        let fuse = unsafe { OwnedFd::from_raw_fd(self.fuse) };
        Ok((
            Tables {
                inodes: Arc::new(table),
                files: Arc::new(Table::restore(files, self.next_file)),
                dirs: Arc::new(Table::restore(dirs, self.next_dir)),
                uncached_writes: Arc::new(AtomicBool::new(self.uncached_writes)),
                root_prefix: self.root_prefix,
                root_fd,
            },
            fuse,
        ))
    }
}

/// Lets descriptors survive `execve` (`keep`), or closes them on exec again.
pub fn keep_across_exec(fds: &[RawFd], keep: bool) -> std::io::Result<()> {
    let flag = if keep { 0 } else { libc::FD_CLOEXEC };
    for &fd in fds {
        // SAFETY: F_SETFD only sets the flags of a descriptor number.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, flag) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A descriptor of this process's own, duplicated from an inherited number
/// that stays open (and is closed by whoever owns it).
pub fn duplicate(fd: RawFd) -> std::io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC reads the descriptor number only; a number
    // that is not open fails with EBADF.
    let n = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: just made, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}
