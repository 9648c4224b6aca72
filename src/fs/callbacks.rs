//! The FUSE callbacks: each validates, calls one helper of `ops.rs` that
//! returns `Result<_, Errno>`, and replies exactly once.

use std::ffi::OsStr;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::Ordering;

use super::fuse::{
    Errno, FileAttr, FileHandle as Fh, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, OpenFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request,
    SetAttr, WriteFlags,
};

use super::attr::{kind_of, kind_of_dirent};
use super::handles::DirHandle;
use super::inode::Inode;
use super::mutation::Mutation;
use super::sys::{self, SysResult, cname};

use super::ops::TandemFs;

impl TandemFs {
    fn reply_entry(&self, reply: ReplyEntry, r: SysResult<FileAttr>) {
        match r {
            Ok(attr) => reply.entry(&self.opts.ttl, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }
}

impl Filesystem for TandemFs {
    fn init(&mut self, config: &mut KernelConfig) -> std::io::Result<()> {
        // 1 MiB per write request: fewer round trips for large sequential writes.
        config.max_write = super::fuse::session::MAX_WRITE;
        config.add(InitFlags::FUSE_PARALLEL_DIROPS);
        // Access control lists are enforced by the kernel as on the bare directory;
        // modes of new files arrive unmasked with the caller's umask, which the real
        // file system applies only where no default ACL says otherwise.
        if config.add(InitFlags::FUSE_POSIX_ACL) {
            config.add(InitFlags::FUSE_DONT_MASK);
        }
        // With this the kernel stops asking for security.capability before every
        // write (a round trip each) and instead flags the writes that must clear
        // set-id bits, which do_write honours.
        config.add(InitFlags::FUSE_HANDLE_KILLPRIV_V2);
        // Uncached writers need the kernel to allow shared mappings of such files
        // (Linux 6.6 and later); without it they stay cached.
        if !self.opts.cached_writes && config.add(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP) {
            self.uncached_writes.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _turn = self.gate.enter();
        self.reply_entry(reply, self.do_lookup(parent, name));
    }

    // No turn: the worker counts as reading throughout (it reads again at
    // once), and the kernel sends a batch as one request whose forgets would
    // otherwise each take a turn of their own.
    fn forget(&self, ino: INodeNo, nlookup: u64) {
        self.inodes.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<Fh>, reply: ReplyAttr) {
        let _turn = self.gate.enter();
        match self.do_getattr(ino, fh) {
            Ok(attr) => reply.attr(&self.opts.ttl, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(&self, req: &Request, ino: INodeNo, set: SetAttr, reply: ReplyAttr) {
        let _turn = self.gate.enter();
        // Truncation by a caller without CAP_FSETID clears set-id bits (the kernel
        // leaves that to us once FUSE_HANDLE_KILLPRIV_V2 is agreed).
        if set.size.is_some() && set.mode.is_none() && req.uid() != 0 {
            if let Err(e) = self.inode(ino).and_then(|i| self.kill_suidgid(&i)) {
                return reply.error(e);
            }
        }
        let SetAttr {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
            fh,
        } = set;
        match self.do_setattr(ino, mode, uid, gid, size, atime, mtime, fh) {
            Ok(attr) => reply.attr(&self.opts.ttl, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _turn = self.gate.enter();
        match self.inode(ino).and_then(|i| sys::readlink_fd(i.fd())) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let _turn = self.gate.enter();
        self.reply_entry(reply, self.do_mknod(req, parent, name, mode, umask, rdev));
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let _turn = self.gate.enter();
        self.reply_entry(reply, self.do_mkdir(req, parent, name, mode, umask));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _turn = self.gate.enter();
        reply_empty(reply, self.do_remove(parent, name, false));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _turn = self.gate.enter();
        reply_empty(reply, self.do_remove(parent, name, true));
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let _turn = self.gate.enter();
        self.reply_entry(reply, self.do_symlink(req, parent, link_name, target));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        let _turn = self.gate.enter();
        reply_empty(
            reply,
            self.do_rename(parent, name, newparent, newname, flags),
        );
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let _turn = self.gate.enter();
        self.reply_entry(reply, self.do_link(ino, newparent, newname));
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _turn = self.gate.enter();
        let opened = self.inode(ino).and_then(|inode| {
            let file = sys::reopen(inode.fd(), Self::real_flags(flags.0))?;
            Ok(self.register(inode, file, flags.0))
        });
        match opened {
            Ok((fh, fopen)) => reply.opened(Fh(fh), fopen),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: Fh,
        offset: u64,
        size: u32,
        reply: ReplyData,
    ) {
        let _turn = self.gate.enter();
        match self.do_read(fh, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: Fh,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        reply: ReplyWrite,
    ) {
        let (_turn, mut place) = self.gate.enter_write();
        let h = match self.files.get(fh.0) {
            Ok(h) => h,
            Err(e) => return reply.error(e),
        };
        if self.answers_early(&h, &place, offset, data.len(), write_flags) {
            place.answer_early();
            reply.written(data.len() as u32);
            place.wait();
            if let Err(e) = self.do_write(&h, offset, data, write_flags) {
                let name = self.rel(&h.inode).ok().flatten();
                tracing::warn!(
                    "a write of {} bytes at {offset} to {}, already answered, failed: {}; the next write, close or fsync of that file reports it",
                    data.len(),
                    name.map_or("an unlinked file".into(), |p| p.display().to_string()),
                    super::errno_io(e)
                );
                h.defer(e);
            }
            return;
        }
        place.wait();
        let written = h
            .take_deferred()
            .and_then(|()| self.do_write(&h, offset, data, write_flags));
        drop(place);
        match written {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, fh: Fh, reply: ReplyEmpty) {
        let _turn = self.gate.enter();
        // Data reaches the real file before any request that follows a write,
        // so close has nothing left to push, only a failure to report.
        let handle = self.files.get(fh.0);
        if handle.as_ref().is_ok_and(|h| h.writable) {
            self.sink.closed();
        }
        reply_empty(reply, handle.and_then(|h| h.deferred()));
    }

    fn release(&self, _req: &Request, _ino: INodeNo, fh: Fh, reply: ReplyEmpty) {
        let _turn = self.gate.enter();
        self.files.remove(fh.0);
        reply.ok();
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, fh: Fh, datasync: bool, reply: ReplyEmpty) {
        let _turn = self.gate.enter();
        reply_empty(
            reply,
            self.files.get(fh.0).and_then(|h| {
                let synced = self.do_fsync(&h.inode, h.file.as_raw_fd(), datasync);
                h.take_deferred().and(synced)
            }),
        );
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _turn = self.gate.enter();
        let opened = self.inode(ino).and_then(|inode| {
            let fd = sys::openat(inode.fd(), c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
            Ok(self.dirs.insert(DirHandle::new(inode, fd)?))
        });
        match opened {
            Ok(fh) => reply.opened(Fh(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: Fh,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _turn = self.gate.enter();
        let listed = self.dirs.get(fh.0).and_then(|d| {
            let dfd = d.raw_fd();
            d.list(offset, |e| {
                // Some file systems leave the type out; ask the inode.
                let kind = kind_of_dirent(e.d_type).unwrap_or_else(|| {
                    // SAFETY: `dfd` is the descriptor of the stream `d`, which stays open for the
                    // whole `list` call this closure runs in.
                    let dir = unsafe { std::os::fd::BorrowedFd::borrow_raw(dfd) };
                    cname(e.name)
                        .and_then(|c| sys::stat_at(dir, &c))
                        .map_or(FileType::RegularFile, |st| kind_of(st.st_mode))
                });
                !reply.add(INodeNo(e.ino), e.offset, kind, e.name)
            })
        });
        match listed {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: Fh, reply: ReplyEmpty) {
        let _turn = self.gate.enter();
        self.dirs.remove(fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, fh: Fh, datasync: bool, reply: ReplyEmpty) {
        let _turn = self.gate.enter();
        reply_empty(
            reply,
            self.dirs
                .get(fh.0)
                .and_then(|d| self.do_fsync(&d.inode, d.raw_fd(), datasync)),
        );
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let _turn = self.gate.enter();
        match sys::statfs(self.root()) {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        reply: ReplyEmpty,
    ) {
        let _turn = self.gate.enter();
        let r = self.inode(ino).and_then(|inode| {
            let c = cname(name)?;
            no_xattr_on_symlink(&inode, Errno::EPERM)?;
            let _ns = self.ns.read();
            let path = self.rel(&inode)?;
            let m = Mutation::SetXattr {
                path,
                name: name.to_os_string(),
                value,
                flags,
            };
            self.sink
                .apply(&m, &mut || sys::setxattr(inode.fd(), &c, value, flags))
        });
        reply_empty(reply, r);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _turn = self.gate.enter();
        let r = self.inode(ino).and_then(|inode| {
            no_xattr_on_symlink(&inode, Errno::ENODATA)?;
            let c = cname(name)?;
            let mut buf = vec![0u8; size as usize];
            let n = sys::getxattr(inode.fd(), &c, &mut buf)?;
            buf.truncate(n);
            Ok((n, buf))
        });
        reply_xattr(r, size, reply);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _turn = self.gate.enter();
        let r = self.inode(ino).and_then(|inode| {
            if is_symlink(&inode) {
                return Ok((0, Vec::new()));
            }
            let mut buf = vec![0u8; size as usize];
            let n = sys::listxattr(inode.fd(), &mut buf)?;
            buf.truncate(n);
            Ok((n, buf))
        });
        reply_xattr(r, size, reply);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _turn = self.gate.enter();
        let r = self.inode(ino).and_then(|inode| {
            no_xattr_on_symlink(&inode, Errno::ENODATA)?;
            let c = cname(name)?;
            let _ns = self.ns.read();
            let path = self.rel(&inode)?;
            let m = Mutation::RemoveXattr {
                path,
                name: name.to_os_string(),
            };
            self.sink
                .apply(&m, &mut || sys::removexattr(inode.fd(), &c))
        });
        reply_empty(reply, r);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: u32, reply: ReplyEmpty) {
        let _turn = self.gate.enter();
        // default_permissions makes the kernel check access itself.
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let _turn = self.gate.enter();
        match self.do_create(req, parent, name, mode, umask, flags) {
            Ok((attr, fh, fopen)) => {
                reply.created(&self.opts.ttl, &attr, Generation(0), Fh(fh), fopen)
            }
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: Fh,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let _turn = self.gate.enter();
        let r = self.files.get(fh.0).and_then(|h| {
            let _ns = self.ns.read();
            let m = Mutation::Fallocate {
                path: self.rel(&h.inode)?,
                offset,
                length,
                mode,
            };
            self.sink
                .apply(&m, &mut || sys::fallocate(h.fd(), mode, offset, length))
        });
        reply_empty(reply, r);
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: Fh,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let _turn = self.gate.enter();
        match self
            .files
            .get(fh.0)
            .and_then(|h| sys::lseek(h.fd(), offset, whence))
        {
            Ok(off) => reply.offset(off),
            Err(e) => reply.error(e),
        }
    }
}

fn reply_empty(reply: ReplyEmpty, r: SysResult<()>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

fn is_symlink(inode: &Inode) -> bool {
    inode.kind == libc::S_IFLNK
}

/// Extended attributes of a symlink cannot be reached through its descriptor
/// without following it; user attributes are not allowed on symlinks anyway.
fn no_xattr_on_symlink(inode: &Inode, err: Errno) -> SysResult<()> {
    if is_symlink(inode) { Err(err) } else { Ok(()) }
}

fn reply_xattr(r: SysResult<(usize, Vec<u8>)>, size: u32, reply: ReplyXattr) {
    match r {
        Ok((n, _)) if size == 0 => reply.size(n as u32),
        Ok((_, buf)) => reply.data(&buf),
        Err(e) => reply.error(e),
    }
}
