//! Open files and directories of the mount, by the handle number the kernel holds.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, IntoRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::fuse::Errno;
use parking_lot::Mutex;

use super::inode::Inode;

pub struct FileHandle {
    pub inode: Arc<Inode>,
    pub file: OwnedFd,
    /// Opened for writing (a truncate through it can use it directly).
    pub writable: bool,
    /// Opened with O_DIRECT: transfers need aligned buffers.
    pub direct: bool,
    /// Opened with O_SYNC or O_DSYNC: every write is durable when it returns.
    pub sync: bool,
    /// The error of a write that was answered before it was applied, for the
    /// next write or fsync through this handle to report (and every close until
    /// then), as a file system reports a failed write-back.
    pub deferred: Mutex<Option<Errno>>,
}

impl FileHandle {
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Keeps the first failure until it is reported.
    pub fn defer(&self, e: Errno) {
        self.deferred.lock().get_or_insert(e);
    }

    pub fn take_deferred(&self) -> Result<(), Errno> {
        self.deferred.lock().take().map_or(Ok(()), Err)
    }

    /// Reports the failure without clearing it: every process that shares the
    /// descriptor flushes it as it closes its copy (a forked child at exec, for
    /// one), and such a close must not swallow what the writer's fsync reports.
    pub fn deferred(&self) -> Result<(), Errno> {
        self.deferred.lock().map_or(Ok(()), Err)
    }
}

/// A directory stream. The kernel resumes listings at the offsets we gave it,
/// which are the real directory's own cookies, so `seekdir` is exact.
pub struct DirHandle {
    pub inode: Arc<Inode>,
    stream: Mutex<DirStream>,
}

struct DirStream(*mut libc::DIR);

// SAFETY: a DIR stream is not tied to the thread that opened it, and the pointer is only used under
// the handle's mutex (or by drop, which has the stream alone), so it may move to another thread.
unsafe impl Send for DirStream {}

impl Drop for DirStream {
    fn drop(&mut self) {
        // SAFETY: `self.0` is the non-null stream fdopendir returned, closed here only, once (which
        // closes its descriptor too).
        unsafe { libc::closedir(self.0) };
    }
}

pub struct DirEntry<'a> {
    pub ino: u64,
    pub offset: u64,
    pub d_type: u8,
    pub name: &'a OsStr,
}

impl DirHandle {
    pub fn new(inode: Arc<Inode>, fd: OwnedFd) -> Result<Self, Errno> {
        let raw = fd.into_raw_fd();
        // SAFETY: `raw` is an open directory descriptor we own (taken out of the OwnedFd); on
        // success the stream owns it.
        let dir = unsafe { libc::fdopendir(raw) };
        if dir.is_null() {
            let e = Errno::from(std::io::Error::last_os_error());
            // SAFETY: fdopendir failed, so `raw` is still ours and open; it is closed once, here.
            unsafe { libc::close(raw) };
            return Err(e);
        }
        Ok(Self {
            inode,
            stream: Mutex::new(DirStream(dir)),
        })
    }

    /// Calls `f` for each entry from `offset` on until it returns `false` (buffer full).
    pub fn list(&self, offset: u64, mut f: impl FnMut(DirEntry<'_>) -> bool) -> Result<(), Errno> {
        let s = self.stream.lock();
        // SAFETY: `s.0` is the open stream, used under the lock `s` holds; seekdir only sets the
        // position (a stale offset makes readdir stop or fail, nothing else).
        unsafe {
            if offset == 0 {
                libc::rewinddir(s.0);
            } else {
                libc::seekdir(s.0, offset as libc::c_long);
            }
        }
        loop {
            // SAFETY: __errno_location returns this thread's errno, valid to write for the thread's
            // life.
            unsafe { *libc::__errno_location() = 0 };
            // SAFETY: `s.0` is the open stream, used under the lock `s` holds.
            let ent = unsafe { libc::readdir64(s.0) };
            if ent.is_null() {
                let err = std::io::Error::last_os_error();
                return match err.raw_os_error() {
                    Some(0) | None => Ok(()),
                    Some(_) => Err(Errno::from(err)),
                };
            }
            // SAFETY: `ent` is not null and points to the entry readdir64 returned, valid until the
            // next readdir64 or closedir on the stream; neither can happen before this pass ends
            // (the lock is held, and `f` cannot keep the entry).
            let ent = unsafe { &*ent };
            // SAFETY: `d_name` holds a NUL-terminated name inside the entry, valid as long as
            // `ent`.
            let name = unsafe { std::ffi::CStr::from_ptr(ent.d_name.as_ptr()) };
            let more = f(DirEntry {
                ino: ent.d_ino,
                offset: ent.d_off as u64,
                d_type: ent.d_type,
                name: OsStr::from_bytes(name.to_bytes()),
            });
            if !more {
                return Ok(());
            }
        }
    }

    pub fn raw_fd(&self) -> i32 {
        // SAFETY: the stream is open (closed only on drop), and is used under its lock.
        unsafe { libc::dirfd(self.stream.lock().0) }
    }
}

/// Handle numbers are never reused during a mount, so a stale number from the
/// kernel can only miss, never hit another file.
pub struct Table<T> {
    next: AtomicU64,
    map: Mutex<HashMap<u64, Arc<T>>>,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Self {
            next: AtomicU64::new(1),
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl<T> Table<T> {
    pub fn insert(&self, value: T) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed);
        self.map.lock().insert(fh, Arc::new(value));
        fh
    }

    pub fn get(&self, fh: u64) -> Result<Arc<T>, Errno> {
        self.map.lock().get(&fh).cloned().ok_or(Errno::EBADF)
    }

    pub fn remove(&self, fh: u64) -> Option<Arc<T>> {
        self.map.lock().remove(&fh)
    }

    /// How many handles are open.
    pub fn len(&self) -> usize {
        self.map.lock().len()
    }
}

impl<T> Table<T> {
    /// Every handle with its number, and the next number.
    pub fn export(&self) -> (Vec<(u64, Arc<T>)>, u64) {
        let mut all: Vec<_> = self
            .map
            .lock()
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        all.sort_by_key(|(k, _)| *k);
        (all, self.next.load(Ordering::Relaxed))
    }

    /// A table of handles handed over, numbers kept.
    pub fn restore(entries: Vec<(u64, T)>, next: u64) -> Self {
        Self {
            next: AtomicU64::new(next),
            map: Mutex::new(entries.into_iter().map(|(k, v)| (k, Arc::new(v))).collect()),
        }
    }
}
