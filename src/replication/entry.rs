//! The state of one name as resync ships it: read on the source, imposed on
//! the target. Contents travel separately, as writes.

use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::fs::Errno;
use crate::fs::sys::{self, SysResult};

use super::wire::{Entry, EntryKind, Time};

pub fn kind_of(st: &libc::stat, fd: BorrowedFd<'_>) -> SysResult<EntryKind> {
    Ok(match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => EntryKind::File,
        libc::S_IFDIR => EntryKind::Dir,
        libc::S_IFLNK => EntryKind::Symlink(sys::readlink_fd(fd)?),
        libc::S_IFIFO => EntryKind::Fifo,
        libc::S_IFSOCK => EntryKind::Socket,
        libc::S_IFCHR => EntryKind::Char(st.st_rdev),
        libc::S_IFBLK => EntryKind::Block(st.st_rdev),
        _ => return Err(Errno::EINVAL),
    })
}

/// Opens `path` below `root` without following symlinks (`""` is the root).
pub fn open_node(root: BorrowedFd<'_>, path: &Path) -> SysResult<std::os::fd::OwnedFd> {
    if path.as_os_str().is_empty() {
        return sys::reopen(root, libc::O_PATH | libc::O_DIRECTORY);
    }
    sys::open_beneath(root, &cstr(path)?)
}

pub fn cstr(path: &Path) -> SysResult<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)
}

/// The current state of `path` below `root`; `None` if it does not exist.
pub fn read(root: BorrowedFd<'_>, path: &Path) -> SysResult<Option<Entry>> {
    let fd = match open_node(root, path) {
        Ok(fd) => fd,
        Err(e) if e.code() == libc::ENOENT || e.code() == libc::ENOTDIR => return Ok(None),
        Err(e) => return Err(e),
    };
    let st = sys::stat_fd(fd.as_fd())?;
    of_node(fd.as_fd(), &st).map(Some)
}

/// The kind of what `path` names, and its link count (`None`: nothing).
pub fn kind(root: BorrowedFd<'_>, path: &Path) -> SysResult<Option<(EntryKind, u64)>> {
    let fd = match open_node(root, path) {
        Ok(fd) => fd,
        Err(e) if e.code() == libc::ENOENT || e.code() == libc::ENOTDIR => return Ok(None),
        Err(e) => return Err(e),
    };
    let st = sys::stat_fd(fd.as_fd())?;
    Ok(Some((kind_of(&st, fd.as_fd())?, st.st_nlink as u64)))
}

/// The state of the node open as `fd` (`O_PATH`), whose stat is `st`.
pub fn of_node(fd: BorrowedFd<'_>, st: &libc::stat) -> SysResult<Entry> {
    let kind = kind_of(st, fd)?;
    let xattrs = if matches!(kind, EntryKind::Symlink(_)) {
        Vec::new()
    } else {
        read_xattrs(fd)?
    };
    Ok(Entry {
        kind,
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        size: st.st_size as u64,
        atime: Time::atime_of(st),
        mtime: Time::mtime_of(st),
        xattrs,
        links: st.st_nlink,
    })
}

fn xattr_names(fd: BorrowedFd<'_>) -> SysResult<Vec<Vec<u8>>> {
    let mut buf = vec![0u8; 4096];
    let n = loop {
        match sys::listxattr(fd, &mut buf) {
            Ok(n) => break n,
            Err(e) if e.code() == libc::ERANGE => buf.resize(buf.len() * 4, 0),
            Err(e) if e.code() == libc::ENOTSUP => return Ok(Vec::new()),
            Err(e) => return Err(e),
        }
    };
    Ok(buf[..n]
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| n.to_vec())
        .collect())
}

pub fn read_xattrs(fd: BorrowedFd<'_>) -> SysResult<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    for name in xattr_names(fd)? {
        let c = CString::new(name.clone()).map_err(|_| Errno::EINVAL)?;
        let mut buf = vec![0u8; 4096];
        loop {
            match sys::getxattr(fd, &c, &mut buf) {
                Ok(n) => {
                    buf.truncate(n);
                    out.push((name, buf));
                    break;
                }
                Err(e) if e.code() == libc::ERANGE => buf.resize(buf.len() * 4, 0),
                // Removed between list and get.
                Err(e) if e.code() == libc::ENODATA => break,
                Err(e) => return Err(e),
            }
        }
    }
    out.sort();
    Ok(out)
}

fn same_kind(st: &libc::stat, fd: BorrowedFd<'_>, want: &EntryKind) -> SysResult<bool> {
    Ok(&kind_of(st, fd)? == want)
}

fn create(parent: BorrowedFd<'_>, name: &std::ffi::CStr, kind: &EntryKind) -> SysResult<()> {
    match kind {
        EntryKind::File => sys::mknodat(parent, name, libc::S_IFREG | 0o600, 0),
        EntryKind::Dir => sys::mkdirat(parent, name, 0o700),
        EntryKind::Symlink(target) => {
            let t = CString::new(target.clone()).map_err(|_| Errno::EINVAL)?;
            sys::symlinkat(&t, parent, name)
        }
        EntryKind::Fifo => sys::mknodat(parent, name, libc::S_IFIFO | 0o600, 0),
        EntryKind::Socket => sys::mknodat(parent, name, libc::S_IFSOCK | 0o600, 0),
        EntryKind::Char(rdev) => sys::mknodat(parent, name, libc::S_IFCHR | 0o600, *rdev),
        EntryKind::Block(rdev) => sys::mknodat(parent, name, libc::S_IFBLK | 0o600, *rdev),
    }
}

/// Gives `name` in `parent` (the regular file `fd`) an inode of its own with
/// the same contents, leaving its other hard links as they are.
fn unshare(parent: BorrowedFd<'_>, name: &std::ffi::CStr, fd: BorrowedFd<'_>) -> SysResult<()> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = CString::new(format!(".tandem-unshare-{}-{n}", std::process::id()))
        .map_err(|_| Errno::EINVAL)?;
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW;
    let mut to = std::fs::File::from(sys::openat(parent, &tmp, flags, 0o600)?);
    let mut from = std::fs::File::from(sys::reopen(fd, libc::O_RDONLY)?);
    let r = std::io::copy(&mut from, &mut to)
        .map_err(Errno::from)
        .and_then(|_| sys::renameat2(parent, &tmp, parent, name, 0));
    if r.is_err() {
        let _ = sys::unlinkat(parent, &tmp, 0);
    }
    r
}

/// Removes `name` in `parent`, a whole tree if it is a directory.
pub fn remove_tree(parent: BorrowedFd<'_>, name: &std::ffi::CStr) -> SysResult<()> {
    let st = match sys::stat_at(parent, name) {
        Ok(st) => st,
        Err(e) if e.code() == libc::ENOENT => return Ok(()),
        Err(e) => return Err(e),
    };
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return sys::unlinkat(parent, name, 0);
    }
    let dir = sys::openat(
        parent,
        name,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    )?;
    let listing = std::fs::read_dir(Path::new(std::ffi::OsStr::from_bytes(
        sys::proc_path(std::os::fd::AsRawFd::as_raw_fd(&dir)).as_bytes(),
    )))
    .map_err(Errno::from)?;
    for child in listing {
        let child = child.map_err(Errno::from)?;
        let c = CString::new(child.file_name().as_bytes()).map_err(|_| Errno::EINVAL)?;
        remove_tree(dir.as_fd(), &c)?;
    }
    sys::unlinkat(parent, name, libc::AT_REMOVEDIR)
}

/// Makes `path` below `root` match `entry` (or absent), except for contents
/// past what truncation to `entry.size` gives.
pub fn impose(root: BorrowedFd<'_>, path: &Path, entry: Option<&Entry>) -> SysResult<()> {
    let is_root = path.as_os_str().is_empty();
    // The object already there, when it stays: opened once.
    let mut kept = None;
    if !is_root {
        let parent_path = path.parent().unwrap_or(Path::new(""));
        let parent = match open_node(root, parent_path) {
            Ok(p) => p,
            // The parent is gone: so is the name; nothing to remove, and a
            // name to create will get its parent from its own record first.
            Err(e)
                if entry.is_none() && (e.code() == libc::ENOENT || e.code() == libc::ENOTDIR) =>
            {
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let name = CString::new(path.file_name().ok_or(Errno::EINVAL)?.as_bytes())
            .map_err(|_| Errno::EINVAL)?;
        let Some(entry) = entry else {
            return remove_tree(parent.as_fd(), &name);
        };
        match sys::openat(parent.as_fd(), &name, libc::O_PATH | libc::O_NOFOLLOW, 0) {
            Ok(fd) => {
                let st = sys::stat_fd(fd.as_fd())?;
                if !same_kind(&st, fd.as_fd(), &entry.kind)? {
                    remove_tree(parent.as_fd(), &name)?;
                    create(parent.as_fd(), &name, &entry.kind)?;
                } else if entry.kind == EntryKind::File && entry.links == 1 && st.st_nlink > 1 {
                    // Linked here but not on the source: what is imposed on
                    // this name (and written to it) must not reach the others.
                    unshare(parent.as_fd(), &name, fd.as_fd())?;
                } else {
                    kept = Some((fd, st));
                }
            }
            Err(e) if e.code() == libc::ENOENT => create(parent.as_fd(), &name, &entry.kind)?,
            Err(e) => return Err(e),
        }
    }
    let Some(entry) = entry else {
        return Err(Errno::EINVAL);
    };
    let (fd, st) = match kept {
        Some(k) => k,
        None => {
            let fd = open_node(root, path)?;
            let st = sys::stat_fd(fd.as_fd())?;
            (fd, st)
        }
    };
    let symlink = matches!(entry.kind, EntryKind::Symlink(_));
    if entry.kind == EntryKind::File && st.st_size as u64 != entry.size {
        let w = sys::reopen(fd.as_fd(), libc::O_WRONLY)?;
        sys::ftruncate(w.as_fd(), entry.size)?;
    }
    // What already agrees is left alone: most files a resync reconciles
    // only changed their contents.
    let chowned = st.st_uid != entry.uid || st.st_gid != entry.gid;
    if chowned {
        sys::fchownat_fd(fd.as_fd(), Some(entry.uid), Some(entry.gid))?;
    }
    if !symlink {
        let have = read_xattrs(fd.as_fd())?;
        let mut changed = chowned;
        for (name, _) in &have {
            if !entry.xattrs.iter().any(|(n, _)| n == name) {
                let c = CString::new(name.clone()).map_err(|_| Errno::EINVAL)?;
                match sys::removexattr(fd.as_fd(), &c) {
                    Ok(()) => {}
                    Err(e) if e.code() == libc::ENODATA => {}
                    Err(e) => return Err(e),
                }
                changed = true;
            }
        }
        for (name, value) in &entry.xattrs {
            if !have.iter().any(|(n, v)| n == name && v == value) {
                let c = CString::new(name.clone()).map_err(|_| Errno::EINVAL)?;
                sys::setxattr(fd.as_fd(), &c, value, 0)?;
                changed = true;
            }
        }
        // After the ACL xattrs, which also set group bits; and after an
        // owner's change, which may clear the set-id bits.
        if changed || st.st_mode & 0o7777 != entry.mode & 0o7777 {
            sys::chmod_fd(fd.as_fd(), entry.mode)?;
        }
    }
    sys::utimens_fd(
        fd.as_fd(),
        &[
            Time::timespec(Some(entry.atime)),
            Time::timespec(Some(entry.mtime)),
        ],
    )
}
