//! The FUSE protocol, spoken to the kernel by tandem itself: the requests
//! read from `/dev/fuse` (`abi`), the answers (`reply`) and the sessions that
//! read them (`session`). Owning the loop lets a mount be served without
//! threads of a library's making, and lets a session be taken over from
//! another process without replaying its start.

pub mod abi;
mod dispatch;
pub mod reply;
pub mod session;
pub mod watch;

use std::ffi::OsStr;
use std::num::NonZeroI32;
use std::path::Path;
use std::time::SystemTime;

pub use reply::{
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLseek,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
};
pub use session::{Notifier, Running, Session};

/// An error answered to the kernel: a positive errno.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct Errno(NonZeroI32);

macro_rules! errnos {
    ($($name:ident),*) => {
        impl Errno {
            $(pub const $name: Errno = match NonZeroI32::new(libc::$name) {
                Some(n) => Errno(n),
                None => panic!("errno 0"),
            };)*
        }
    };
}
errnos!(
    EPERM, ENOENT, EIO, EBADF, EAGAIN, EXDEV, EINVAL, ENOSPC, ENODATA, EOPNOTSUPP, ESTALE
);

impl Errno {
    /// `err` if positive, else EIO.
    pub fn from_i32(err: i32) -> Errno {
        NonZeroI32::new(err)
            .filter(|e| e.get() > 0)
            .map_or(Errno::EIO, Errno)
    }

    pub fn code(self) -> i32 {
        self.0.get()
    }
}

impl From<std::io::Error> for Errno {
    fn from(e: std::io::Error) -> Self {
        Errno::from_i32(e.raw_os_error().unwrap_or(0))
    }
}

impl From<nix::errno::Errno> for Errno {
    fn from(e: nix::errno::Errno) -> Self {
        Errno::from_i32(e as i32)
    }
}

/// The kernel's number for an inode of the mount (1 is the root).
#[derive(Clone, Copy, Debug, Eq, PartialEq, Hash)]
pub struct INodeNo(pub u64);

/// A handle number this file system gave an open file or directory.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct FileHandle(pub u64);

#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct Generation(pub u64);

/// `open(2)` flags as the caller passed them.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct OpenFlags(pub i32);

#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum FileType {
    NamedPipe,
    CharDevice,
    BlockDevice,
    Directory,
    RegularFile,
    Symlink,
    Socket,
}

impl FileType {
    /// The `S_IFMT` bits of this kind.
    pub fn mode_bits(self) -> u32 {
        match self {
            FileType::NamedPipe => libc::S_IFIFO,
            FileType::CharDevice => libc::S_IFCHR,
            FileType::BlockDevice => libc::S_IFBLK,
            FileType::Directory => libc::S_IFDIR,
            FileType::RegularFile => libc::S_IFREG,
            FileType::Symlink => libc::S_IFLNK,
            FileType::Socket => libc::S_IFSOCK,
        }
    }
}

/// What the kernel caches of an inode.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct FileAttr {
    pub ino: INodeNo,
    pub size: u64,
    pub blocks: u64,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    pub kind: FileType,
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub blksize: u32,
}

/// A time `setattr` sets: given, or the time of the call.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum TimeOrNow {
    SpecificTime(SystemTime),
    Now,
}

/// Flags of the kernel's `fuse_open_out`.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub struct FopenFlags(pub u32);

impl FopenFlags {
    pub const FOPEN_DIRECT_IO: FopenFlags = FopenFlags(1);
    pub const FOPEN_KEEP_CACHE: FopenFlags = FopenFlags(1 << 1);

    pub fn empty() -> Self {
        FopenFlags(0)
    }
}

impl std::ops::BitOr for FopenFlags {
    type Output = Self;
    fn bitor(self, o: Self) -> Self {
        FopenFlags(self.0 | o.0)
    }
}

impl std::ops::BitOrAssign for FopenFlags {
    fn bitor_assign(&mut self, o: Self) {
        self.0 |= o.0;
    }
}

/// Flags of the kernel's `fuse_write_in`.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub struct WriteFlags(pub u32);

impl WriteFlags {
    pub const FUSE_WRITE_KILL_SUIDGID: WriteFlags = WriteFlags(1 << 2);

    pub fn contains(self, f: WriteFlags) -> bool {
        self.0 & f.0 == f.0
    }
}

/// Capabilities of the kernel's INIT, as one 64-bit set (`flags2` above).
pub struct InitFlags;

impl InitFlags {
    pub const FUSE_ASYNC_READ: u64 = 1;
    pub const FUSE_BIG_WRITES: u64 = 1 << 5;
    pub const FUSE_DONT_MASK: u64 = 1 << 6;
    pub const FUSE_PARALLEL_DIROPS: u64 = 1 << 18;
    pub const FUSE_POSIX_ACL: u64 = 1 << 20;
    pub const FUSE_MAX_PAGES: u64 = 1 << 22;
    pub const FUSE_HANDLE_KILLPRIV_V2: u64 = 1 << 28;
    pub const FUSE_INIT_EXT: u64 = 1 << 30;
    pub const FUSE_DIRECT_IO_ALLOW_MMAP: u64 = 1 << 36;
}

/// The session's terms, agreed at INIT: what the kernel offers, what the file
/// system asks for.
#[derive(Clone, Debug)]
pub struct KernelConfig {
    offered: u64,
    requested: u64,
    pub max_write: u32,
    pub max_readahead: u32,
}

impl KernelConfig {
    fn new(offered: u64, max_readahead: u32) -> Self {
        let mut requested = InitFlags::FUSE_ASYNC_READ | InitFlags::FUSE_BIG_WRITES;
        if offered & InitFlags::FUSE_MAX_PAGES != 0 {
            requested |= InitFlags::FUSE_MAX_PAGES;
        }
        Self {
            offered,
            requested,
            max_write: 128 << 10,
            max_readahead,
        }
    }

    /// Asks for `flag`; false if the kernel does not offer it.
    pub fn add(&mut self, flag: u64) -> bool {
        if self.offered & flag != flag {
            return false;
        }
        self.requested |= flag;
        true
    }

    /// What is agreed: asked for and offered.
    pub fn agreed(&self) -> u64 {
        self.requested & self.offered
    }
}

/// Who asked: the caller's credentials as the kernel reports them.
#[derive(Clone, Copy, Debug)]
pub struct Request {
    uid: u32,
    gid: u32,
}

impl Request {
    pub fn uid(&self) -> u32 {
        self.uid
    }
    pub fn gid(&self) -> u32 {
        self.gid
    }
}

/// What `setattr` changes; `None` leaves it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeOrNow>,
    pub mtime: Option<TimeOrNow>,
    pub fh: Option<FileHandle>,
}

/// A file system served over FUSE. Each method answers through its reply
/// exactly once; a reply dropped unanswered answers EIO.
#[allow(clippy::too_many_arguments)]
pub trait Filesystem: Send + Sync + 'static {
    fn init(&mut self, config: &mut KernelConfig) -> std::io::Result<()>;
    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry);
    fn forget(&self, ino: INodeNo, nlookup: u64);
    fn getattr(&self, req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr);
    fn setattr(&self, req: &Request, ino: INodeNo, set: SetAttr, reply: ReplyAttr);
    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData);
    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    );
    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    );
    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty);
    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty);
    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    );
    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    );
    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    );
    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen);
    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        reply: ReplyData,
    );
    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        reply: ReplyWrite,
    );
    fn flush(&self, req: &Request, ino: INodeNo, fh: FileHandle, reply: ReplyEmpty);
    fn release(&self, req: &Request, ino: INodeNo, fh: FileHandle, reply: ReplyEmpty);
    fn fsync(&self, req: &Request, ino: INodeNo, fh: FileHandle, datasync: bool, reply: ReplyEmpty);
    fn opendir(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen);
    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    );
    fn releasedir(&self, req: &Request, ino: INodeNo, fh: FileHandle, reply: ReplyEmpty);
    fn fsyncdir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    );
    fn statfs(&self, req: &Request, ino: INodeNo, reply: ReplyStatfs);
    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        reply: ReplyEmpty,
    );
    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr);
    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr);
    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty);
    fn access(&self, req: &Request, ino: INodeNo, mask: u32, reply: ReplyEmpty);
    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    );
    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    );
    fn lseek(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    );
}
