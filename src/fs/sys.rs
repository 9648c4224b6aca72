//! Thin, safe wrappers over the *at family of system calls that the mount uses to
//! reach the real files below it. Everything goes through file descriptors opened
//! before the mount covered the directory: a path under the mount point would
//! loop back into the mount itself.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use super::fuse::Errno;

pub type SysResult<T> = Result<T, Errno>;

fn last() -> Errno {
    Errno::from(io::Error::last_os_error())
}

fn check(rc: libc::c_int) -> SysResult<()> {
    if rc < 0 { Err(last()) } else { Ok(()) }
}

fn check_len(rc: libc::ssize_t) -> SysResult<usize> {
    if rc < 0 { Err(last()) } else { Ok(rc as usize) }
}

/// A name from the kernel as a C string. Names never hold NUL (the kernel splits
/// on it), so a NUL means a malformed request.
pub fn cname(name: &OsStr) -> SysResult<CString> {
    CString::new(name.as_bytes()).map_err(|_| Errno::EINVAL)
}

const EMPTY: &CStr = c"";

/// `/proc/self/fd/N`: the way to reach an inode held by an `O_PATH` descriptor with
/// calls that do not take one (open with new flags, xattrs, chmod).
pub fn proc_path(fd: RawFd) -> CString {
    CString::new(format!("/proc/self/fd/{fd}")).expect("no NUL in a number")
}

pub fn openat(dir: BorrowedFd<'_>, name: &CStr, flags: i32, mode: u32) -> SysResult<OwnedFd> {
    // SAFETY: `dir` is borrowed, so open, and `name` is a NUL-terminated C string; both live across
    // the call.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode,
        )
    };
    if fd < 0 {
        Err(last())
    } else {
        // SAFETY: openat succeeded, so `fd` is a new descriptor nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

/// `O_PATH` open of a multi-component path below `dir` that follows no symlink
/// and cannot leave `dir` (openat2 with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS).
pub fn open_beneath(dir: BorrowedFd<'_>, path: &CStr) -> SysResult<OwnedFd> {
    // struct open_how from linux/openat2.h (libc's is non-exhaustive).
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let how = OpenHow {
        flags: (libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: `dir` is open, `path` is NUL-terminated, and `how` is a live struct open_how in the
    // kernel's layout (repr(C), three u64), passed with its size.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            path.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        Err(last())
    } else {
        // SAFETY: openat2 succeeded, so `fd` is a new descriptor nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
    }
}

/// Raises the soft limit on open descriptors to the hard limit: the mount holds
/// one descriptor per inode the kernel has cached (up to half the limit, see
/// `reclaim.rs`), which 1024 does not cover.
pub fn raise_nofile_limit() -> std::io::Result<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `r` is a live rlimit for the kernel to fill in.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if r.rlim_cur < r.rlim_max {
        r.rlim_cur = r.rlim_max;
        // SAFETY: `r` is a live rlimit for the kernel to read.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(r.rlim_cur)
}

/// Opens the inode held by an `O_PATH` descriptor again, with real access flags.
pub fn reopen(fd: BorrowedFd<'_>, flags: i32) -> SysResult<OwnedFd> {
    let p = proc_path(fd.as_raw_fd());
    // SAFETY: `p` is a NUL-terminated path living across the call.
    let fd = unsafe { libc::open(p.as_ptr(), (flags & !libc::O_NOFOLLOW) | libc::O_CLOEXEC) };
    if fd < 0 {
        Err(last())
    } else {
        // SAFETY: open succeeded, so `fd` is a new descriptor nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

pub fn stat_fd(fd: BorrowedFd<'_>) -> SysResult<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `fd` is open, EMPTY is NUL-terminated, and `st` has room for one libc::stat.
    check(unsafe {
        libc::fstatat(
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // SAFETY: fstatat succeeded (checked above), so it filled `st` in.
    Ok(unsafe { st.assume_init() })
}

/// `stat` of `name` in `dir`, not following a final symlink.
pub fn stat_at(dir: BorrowedFd<'_>, name: &CStr) -> SysResult<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `dir` is open, `name` is NUL-terminated, and `st` has room for one libc::stat.
    check(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // SAFETY: fstatat succeeded (checked above), so it filled `st` in.
    Ok(unsafe { st.assume_init() })
}

pub fn mkdirat(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> SysResult<()> {
    // SAFETY: `dir` is open and `name` NUL-terminated for the call.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) })
}

pub fn mknodat(dir: BorrowedFd<'_>, name: &CStr, mode: u32, rdev: u64) -> SysResult<()> {
    // SAFETY: `dir` is open and `name` NUL-terminated for the call.
    check(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode, rdev) })
}

pub fn symlinkat(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> SysResult<()> {
    // SAFETY: `dir` is open, `target` and `name` NUL-terminated for the call.
    check(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) })
}

/// A new name for the inode behind an `O_PATH` descriptor (needs CAP_DAC_READ_SEARCH,
/// which the daemon has as root).
pub fn link_fd(fd: BorrowedFd<'_>, dir: BorrowedFd<'_>, name: &CStr) -> SysResult<()> {
    // SAFETY: `fd` and `dir` are open, EMPTY and `name` NUL-terminated for the call.
    check(unsafe {
        libc::linkat(
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    })
}

pub fn unlinkat(dir: BorrowedFd<'_>, name: &CStr, flags: i32) -> SysResult<()> {
    // SAFETY: `dir` is open and `name` NUL-terminated for the call.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) })
}

pub fn renameat2(
    olddir: BorrowedFd<'_>,
    old: &CStr,
    newdir: BorrowedFd<'_>,
    new: &CStr,
    flags: u32,
) -> SysResult<()> {
    // SAFETY: both directories are open, `old` and `new` NUL-terminated for the call.
    check(unsafe {
        libc::renameat2(
            olddir.as_raw_fd(),
            old.as_ptr(),
            newdir.as_raw_fd(),
            new.as_ptr(),
            flags,
        )
    })
}

pub fn readlink_fd(fd: BorrowedFd<'_>) -> SysResult<Vec<u8>> {
    readlinkat(fd.as_raw_fd(), EMPTY)
}

fn readlinkat(dirfd: RawFd, name: &CStr) -> SysResult<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: `dirfd` is open or AT_FDCWD, `name` NUL-terminated, and `buf` a live Vec passed
        // with its length, so the kernel writes within it.
        let n = check_len(unsafe {
            libc::readlinkat(dirfd, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        })?;
        if n < buf.len() {
            buf.truncate(n);
            return Ok(buf);
        }
        buf.resize(buf.len() * 4, 0);
    }
}

/// The absolute path the kernel currently knows for a descriptor: it follows
/// renames, and ends in " (deleted)" once the last name is gone.
pub fn fd_path(fd: RawFd) -> SysResult<PathBuf> {
    let link = proc_path(fd);
    let bytes = readlinkat(libc::AT_FDCWD, &link)?;
    Ok(PathBuf::from(OsStr::from_bytes(&bytes)))
}

pub fn fchownat_fd(fd: BorrowedFd<'_>, uid: Option<u32>, gid: Option<u32>) -> SysResult<()> {
    let u = uid.unwrap_or(u32::MAX);
    let g = gid.unwrap_or(u32::MAX);
    // SAFETY: `fd` is open and EMPTY NUL-terminated for the call.
    check(unsafe {
        libc::fchownat(
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            u,
            g,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

/// chmod through /proc: the descriptor is `O_PATH`, which fchmod refuses.
pub fn chmod_fd(fd: BorrowedFd<'_>, mode: u32) -> SysResult<()> {
    let p = proc_path(fd.as_raw_fd());
    // SAFETY: `p` is a NUL-terminated path living across the call.
    check(unsafe { libc::fchmodat(libc::AT_FDCWD, p.as_ptr(), mode, 0) })
}

pub fn utimens_fd(fd: BorrowedFd<'_>, times: &[libc::timespec; 2]) -> SysResult<()> {
    // SAFETY: `fd` is open, EMPTY NUL-terminated, and `times` points to the two timespecs utimensat
    // reads.
    check(unsafe {
        libc::utimensat(
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            times.as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

pub fn ftruncate(fd: BorrowedFd<'_>, size: u64) -> SysResult<()> {
    // SAFETY: ftruncate takes no pointer; `fd` is borrowed, so open.
    check(unsafe { libc::ftruncate(fd.as_raw_fd(), size as libc::off_t) })
}

/// Copies `len` bytes from `from` at `off_in` to `to` at `off_out` inside the
/// kernel (a reflink where the file system shares extents); where the two
/// file systems cannot, through a buffer. Returns the bytes copied (0 at the
/// end of `from`).
pub fn copy_range(
    from: BorrowedFd<'_>,
    off_in: u64,
    to: BorrowedFd<'_>,
    off_out: u64,
    len: u64,
) -> SysResult<usize> {
    let (mut i, mut o) = (off_in as i64, off_out as i64);
    match nix::fcntl::copy_file_range(from, Some(&mut i), to, Some(&mut o), len as usize) {
        Ok(n) => Ok(n),
        Err(e)
            if matches!(
                e,
                nix::errno::Errno::EXDEV
                    | nix::errno::Errno::EINVAL
                    | nix::errno::Errno::ENOSYS
                    | nix::errno::Errno::EOPNOTSUPP
            ) =>
        {
            let mut buf = vec![0u8; len.min(1 << 20) as usize];
            let n = pread(from, &mut buf, off_in)?;
            pwrite_all(to, &buf[..n], off_out)?;
            Ok(n)
        }
        Err(e) => Err(Errno::from(io::Error::from_raw_os_error(e as i32))),
    }
}

/// Asks the kernel to start reading `len` bytes at `offset` into the page
/// cache. Advisory: a failure only costs speed, so it is not reported.
pub fn will_need(fd: BorrowedFd<'_>, offset: u64, len: u64) {
    // SAFETY: posix_fadvise takes no pointer; `fd` is borrowed, so open.
    unsafe {
        libc::posix_fadvise(
            fd.as_raw_fd(),
            offset.min(i64::MAX as u64) as i64,
            len.min(i64::MAX as u64) as i64,
            libc::POSIX_FADV_WILLNEED,
        )
    };
}

pub fn pread(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> SysResult<usize> {
    // SAFETY: `buf` is a live slice passed with its length, so the kernel writes within it; `fd` is
    // open.
    check_len(unsafe {
        libc::pread(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            offset as libc::off_t,
        )
    })
}

/// Like [`pread`] but reads only what the page cache holds: EAGAIN where it
/// would wait for the disk (EOPNOTSUPP on file systems that cannot tell).
pub fn pread_cached(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> SysResult<usize> {
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: `iov` describes `buf` (a live slice and its length) and is the one iovec passed; `fd`
    // is open.
    check_len(unsafe {
        libc::preadv2(
            fd.as_raw_fd(),
            &iov,
            1,
            offset as libc::off_t,
            libc::RWF_NOWAIT,
        )
    })
}

/// Writes all of `data` or fails: a short write that ends in an error leaves the
/// application told "failed", never "done" for bytes that did not land.
pub fn pwrite_all(fd: BorrowedFd<'_>, mut data: &[u8], mut offset: u64) -> SysResult<()> {
    while !data.is_empty() {
        // SAFETY: `data` is a live slice passed with its length; `fd` is open.
        let n = check_len(unsafe {
            libc::pwrite(
                fd.as_raw_fd(),
                data.as_ptr().cast(),
                data.len(),
                offset as libc::off_t,
            )
        })?;
        if n == 0 {
            return Err(Errno::ENOSPC);
        }
        data = &data[n..];
        offset += n as u64;
    }
    Ok(())
}

pub fn fsync(fd: BorrowedFd<'_>, datasync: bool) -> SysResult<()> {
    // SAFETY: fsync and fdatasync take no pointer; `fd` is borrowed, so open.
    check(unsafe {
        if datasync {
            libc::fdatasync(fd.as_raw_fd())
        } else {
            libc::fsync(fd.as_raw_fd())
        }
    })
}

pub fn fallocate(fd: BorrowedFd<'_>, mode: i32, offset: u64, len: u64) -> SysResult<()> {
    // SAFETY: fallocate takes no pointer; `fd` is borrowed, so open.
    check(unsafe {
        libc::fallocate(
            fd.as_raw_fd(),
            mode,
            offset as libc::off_t,
            len as libc::off_t,
        )
    })
}

pub fn lseek(fd: BorrowedFd<'_>, offset: i64, whence: i32) -> SysResult<i64> {
    // SAFETY: lseek takes no pointer; `fd` is borrowed, so open.
    let r = unsafe { libc::lseek(fd.as_raw_fd(), offset as libc::off_t, whence) };
    if r < 0 { Err(last()) } else { Ok(r as i64) }
}

pub fn statfs(fd: BorrowedFd<'_>) -> SysResult<libc::statvfs> {
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `fd` is open and `st` has room for one libc::statvfs.
    check(unsafe { libc::fstatvfs(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstatvfs succeeded (checked above), so it filled `st` in.
    Ok(unsafe { st.assume_init() })
}

// Extended attributes go through /proc/self/fd/N because the kernel refuses them on
// O_PATH descriptors; the magic link lands on the inode itself.

pub fn getxattr(fd: BorrowedFd<'_>, name: &CStr, buf: &mut [u8]) -> SysResult<usize> {
    let p = proc_path(fd.as_raw_fd());
    // SAFETY: `p` and `name` are NUL-terminated, and `buf` is a live slice passed with its length.
    check_len(unsafe {
        libc::getxattr(
            p.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    })
}

pub fn listxattr(fd: BorrowedFd<'_>, buf: &mut [u8]) -> SysResult<usize> {
    let p = proc_path(fd.as_raw_fd());
    // SAFETY: `p` is NUL-terminated, and `buf` is a live slice passed with its length.
    check_len(unsafe { libc::listxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) })
}

pub fn setxattr(fd: BorrowedFd<'_>, name: &CStr, value: &[u8], flags: i32) -> SysResult<()> {
    let p = proc_path(fd.as_raw_fd());
    // SAFETY: `p` and `name` are NUL-terminated, and `value` is a live slice passed with its
    // length.
    check(unsafe {
        libc::setxattr(
            p.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })
}

pub fn removexattr(fd: BorrowedFd<'_>, name: &CStr) -> SysResult<()> {
    let p = proc_path(fd.as_raw_fd());
    // SAFETY: `p` and `name` are NUL-terminated for the call.
    check(unsafe { libc::removexattr(p.as_ptr(), name.as_ptr()) })
}

/// A buffer aligned for O_DIRECT transfers (4 KiB covers every common device).
pub struct AlignedBuf {
    ptr: *mut u8,
    len: usize,
}

const DIRECT_ALIGN: usize = 4096;

impl AlignedBuf {
    pub fn new(len: usize) -> Self {
        let layout =
            std::alloc::Layout::from_size_align(len.max(1), DIRECT_ALIGN).expect("valid layout");
        // SAFETY: the layout's size is not zero (len.max(1)).
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "out of memory allocating {len} bytes");
        Self { ptr, len }
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` is the allocation of at least `len` bytes made (zeroed) in `new`, owned by
        // `self` and freed only on drop; the shared borrow of `self` keeps it from being written
        // meanwhile.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` is the allocation of at least `len` bytes made (zeroed) in `new`, owned by
        // `self` and freed only on drop; the unique borrow of `self` makes this the only access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    /// Whether a caller's buffer already meets the alignment O_DIRECT needs.
    pub fn is_aligned(data: &[u8]) -> bool {
        (data.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN)
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = std::alloc::Layout::from_size_align(self.len.max(1), DIRECT_ALIGN)
            .expect("valid layout");
        // SAFETY: `ptr` was allocated in `new` with this same layout, and is freed once, here.
        unsafe { std::alloc::dealloc(self.ptr, layout) }
    }
}

// SAFETY: AlignedBuf owns its allocation alone, as a Box<[u8]> does, so it may be used and freed
// from another thread.
unsafe impl Send for AlignedBuf {}

/// Sets the umask of the calling thread only: the first call gives the thread
/// its own file-system attributes (unshare CLONE_FS), so FUSE workers creating
/// files for different callers never see each other's umask.
pub fn set_thread_umask(mask: u32) -> SysResult<()> {
    thread_local! {
        static UNSHARED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    if !UNSHARED.with(|u| u.get()) {
        // SAFETY: unshare takes no pointer; CLONE_FS only gives this thread its own root, working
        // directory and umask.
        check(unsafe { libc::unshare(libc::CLONE_FS) })?;
        UNSHARED.with(|u| u.set(true));
    }
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask & 0o777));
    Ok(())
}

/// Returns freed memory to the system: a scan of a big tree, or the clearing
/// of a big resync's marks, frees hundreds of MiB in small blocks, which the
/// allocator would otherwise keep.
pub fn give_back_memory() {
    // SAFETY: malloc_trim takes no pointer; it only walks the allocator's own
    // free lists.
    unsafe { libc::malloc_trim(0) };
}
