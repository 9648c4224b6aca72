//! The file system's operations behind the FUSE callbacks (`callbacks.rs`):
//! helpers that return `Result<_, Errno>`. Mutating helpers describe the
//! call as a [`Mutation`] and let the sink run the local system calls.

use std::ffi::{CStr, OsStr};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use super::fuse::{
    Errno, FileAttr, FileHandle as Fh, FopenFlags, INodeNo, Request, TimeOrNow, WriteFlags,
};

use parking_lot::RwLock;

use super::attr::{file_attr, to_timespec};
use super::gate::{Gate, Place, blocking};
use super::handles::{DirHandle, FileHandle, Table};
use super::inode::{Inode, InodeTable, is_deleted};
use super::mutation::{AttrChange, Mutation, MutationSink, RelPath, Remains};
use super::sys::{self, SysResult, cname};

/// Writes at least this large may be answered before they are applied.
const EARLY_MIN: usize = 128 << 10;
/// ... if the file system keeps at least this much room for them,
const EARLY_ROOM: u64 = 256 << 20;
/// ... and they end below this offset (the smallest limit of ext4 with 4 KiB
/// blocks, XFS, Btrfs and tmpfs is 16 TiB; only ext2/3 with small blocks
/// refuse less).
const EARLY_MAX_END: u64 = 1 << 40;

/// Tunables of one mount.
#[derive(Clone, Debug)]
pub struct FsOptions {
    /// How long the kernel may cache names and attributes. Every change goes
    /// through this mount, so the cache cannot go stale behind the kernel's back.
    pub ttl: Duration,
    /// Keep files opened for writing in the kernel's page cache of the mount too.
    /// Off by default: writes then go from the application's buffer to tandem
    /// without an extra copy into a second page cache (sequential writes run at
    /// close to the bare speed, and written data is not cached twice); reads
    /// through such a descriptor are served by tandem from the real file's cache.
    pub cached_writes: bool,
}

impl Default for FsOptions {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(1),
            cached_writes: false,
        }
    }
}

pub struct TandemFs {
    /// Shared with the mount's owner, which hands them over (see `handover`).
    pub(super) inodes: Arc<InodeTable>,
    pub(super) files: Arc<Table<FileHandle>>,
    pub(super) dirs: Arc<Table<DirHandle>>,
    pub(super) sink: Arc<dyn MutationSink>,
    /// The real root's absolute path as the kernel prints descriptor paths.
    pub(super) root_prefix: PathBuf,
    pub(super) root_fd: RawFd,
    pub(super) opts: FsOptions,
    /// Files opened for writing bypass the mount's page cache (decided at init).
    pub(super) uncached_writes: Arc<AtomicBool>,
    /// Orders mutations against renames and removals: each mutation computes its
    /// path and passes the sink under the shared side, renames and removals under
    /// the exclusive side, so no mutation carries a name that a concurrent rename
    /// already changed.
    pub(super) ns: RwLock<()>,
    /// Bumped by every rename and removal (under the exclusive side of `ns`):
    /// names cached in an earlier generation may be stale.
    pub(super) ns_gen: AtomicU64,
    /// Which worker reads the next request.
    pub(super) gate: Arc<Gate>,
    /// Keeps the inode descriptors within the open-file limit.
    pub(super) reclaim: Arc<super::reclaim::Reclaim>,
}

impl TandemFs {
    pub fn new(
        root_fd: std::os::fd::OwnedFd,
        root_prefix: PathBuf,
        sink: Arc<dyn MutationSink>,
        opts: FsOptions,
        gate: Arc<Gate>,
    ) -> SysResult<Self> {
        let st = sys::stat_fd(root_fd.as_fd())?;
        let raw = root_fd.as_raw_fd();
        Ok(Self::with_tables(
            super::handover::Tables {
                inodes: Arc::new(InodeTable::new(root_fd, st.st_dev, st.st_ino)),
                files: Arc::default(),
                dirs: Arc::default(),
                uncached_writes: Arc::default(),
                root_prefix,
                root_fd: raw,
            },
            sink,
            opts,
            gate,
        ))
    }

    /// Over tables already filled (a session handed over by another process).
    pub(super) fn with_tables(
        t: super::handover::Tables,
        sink: Arc<dyn MutationSink>,
        opts: FsOptions,
        gate: Arc<Gate>,
    ) -> Self {
        Self {
            reclaim: Arc::new(super::reclaim::Reclaim::new(t.root_prefix.clone())),
            inodes: t.inodes,
            files: t.files,
            dirs: t.dirs,
            sink,
            root_prefix: t.root_prefix,
            root_fd: t.root_fd,
            opts,
            uncached_writes: t.uncached_writes,
            ns: RwLock::new(()),
            ns_gen: AtomicU64::new(0),
            gate,
        }
    }

    /// The tables a hand-over carries, shared.
    pub(super) fn tables(&self) -> super::handover::Tables {
        super::handover::Tables {
            inodes: self.inodes.clone(),
            files: self.files.clone(),
            dirs: self.dirs.clone(),
            uncached_writes: self.uncached_writes.clone(),
            root_prefix: self.root_prefix.clone(),
            root_fd: self.root_fd,
        }
    }

    /// The real root directory (its descriptor lives as long as the inode table).
    pub(super) fn root(&self) -> std::os::fd::BorrowedFd<'_> {
        // SAFETY: `root_fd` is the number of the root inode's OwnedFd, which the inode table in
        // `self` keeps open as long as `self` lives (the root is never forgotten).
        unsafe { std::os::fd::BorrowedFd::borrow_raw(self.root_fd) }
    }

    pub(super) fn inode(&self, id: INodeNo) -> SysResult<Arc<Inode>> {
        self.inodes.get(id.0).ok_or(Errno::ESTALE)
    }

    /// The path of an inode relative to the module root: a name it still has,
    /// `None` once it has none (unlinked while open).
    ///
    /// Callers hold `ns` (either side), so no name changes while this runs; a name
    /// computed in the current namespace generation is still right.
    pub(super) fn rel(&self, inode: &Inode) -> SysResult<RelPath> {
        let generation = self.ns_gen.load(Ordering::Acquire);
        if let Some((g, p)) = &*inode.path_cache.lock() {
            if *g == generation {
                return Ok(Some(p.clone()));
            }
        }
        let found = self.find_rel(inode)?;
        if let Some(p) = &found {
            *inode.path_cache.lock() = Some((generation, p.clone()));
        }
        Ok(found)
    }

    pub(super) fn find_rel(&self, inode: &Inode) -> SysResult<RelPath> {
        for abs in inode.paths()? {
            let Ok(rel) = abs.strip_prefix(&self.root_prefix) else {
                // Only possible if the root itself was moved from outside the mount.
                return Err(Errno::EXDEV);
            };
            if !is_deleted(&abs) || self.names_inode(rel, inode) {
                return Ok(Some(rel.to_path_buf()));
            }
        }
        Ok(None)
    }

    /// Whether `rel` (a name that merely ends in " (deleted)") really names `inode`.
    /// The walk may not follow symlinks nor leave the root: an absolute symlink
    /// could otherwise lead the daemon into its own mount.
    pub(super) fn names_inode(&self, rel: &Path, inode: &Inode) -> bool {
        let Ok(c) = cname(rel.as_os_str()) else {
            return false;
        };
        sys::open_beneath(self.root(), &c)
            .and_then(|f| sys::stat_fd(f.as_fd()))
            .is_ok_and(|st| st.st_dev == inode.dev && st.st_ino == inode.ino)
    }

    /// What stays of the regular file `name` in `parent` (`path`) when
    /// `path` goes: preferably another name the kernel looked up.
    pub(super) fn survivor(&self, parent: &Inode, name: &CStr, path: &Path) -> Remains {
        let Ok(st) = sys::stat_at(parent.fd(), name) else {
            return Remains::Nothing;
        };
        if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_nlink < 2 {
            return Remains::Nothing;
        }
        self.inodes
            .by_key(st.st_dev, st.st_ino)
            .and_then(|inode| {
                inode
                    .names()
                    .into_iter()
                    .filter_map(|abs| Some(abs.strip_prefix(&self.root_prefix).ok()?.to_path_buf()))
                    .find(|rel| rel != path && self.names_inode(rel, &inode))
            })
            .map_or(Remains::Unseen, Remains::Name)
    }

    pub(super) fn child(&self, parent: &Inode, name: &OsStr) -> SysResult<PathBuf> {
        let dir = self.rel(parent)?.ok_or(Errno::ENOENT)?;
        Ok(dir.join(name))
    }

    /// Looks up `name` under `parent` and registers the kernel's new reference.
    pub(super) fn entry(&self, parent: &Inode, name: &CStr) -> SysResult<(Arc<Inode>, FileAttr)> {
        let fd = sys::openat(parent.fd(), name, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
        let st = sys::stat_fd(fd.as_fd())?;
        let inode = self.inodes.lookup(fd, &st);
        self.reclaim.after_lookup(&self.inodes);
        let attr = file_attr(inode.id, &st);
        Ok((inode, attr))
    }

    /// The owner a new file gets: the caller, and the directory's group when the
    /// directory is set-group-id (as the kernel does for a bare directory).
    pub(super) fn new_owner(&self, req: &Request, parent: &Inode) -> SysResult<(u32, u32)> {
        let st = sys::stat_fd(parent.fd())?;
        let gid = if st.st_mode & libc::S_ISGID != 0 {
            st.st_gid
        } else {
            req.gid()
        };
        Ok((req.uid(), gid))
    }

    /// The daemon creates as root; give the file to the caller. A chown clears
    /// set-id bits on regular files, so they are put back as they were created.
    pub(super) fn chown_new(
        &self,
        parent: &Inode,
        name: &CStr,
        owner: (u32, u32),
    ) -> SysResult<()> {
        if owner == (0, 0) {
            return Ok(());
        }
        let fd = sys::openat(parent.fd(), name, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
        let created = sys::stat_fd(fd.as_fd())?.st_mode;
        sys::fchownat_fd(fd.as_fd(), Some(owner.0), Some(owner.1))?;
        let setid = created & (libc::S_ISUID | libc::S_ISGID);
        if setid != 0 && created & libc::S_IFMT == libc::S_IFREG {
            sys::chmod_fd(fd.as_fd(), created & 0o7777)?;
        }
        Ok(())
    }

    pub(super) fn do_lookup(&self, parent: INodeNo, name: &OsStr) -> SysResult<FileAttr> {
        let p = self.inode(parent)?;
        Ok(self.entry(&p, &cname(name)?)?.1)
    }

    pub(super) fn do_getattr(&self, ino: INodeNo, fh: Option<Fh>) -> SysResult<FileAttr> {
        let inode = self.inode(ino)?;
        let st = match fh.and_then(|f| self.files.get(f.0).ok()) {
            Some(h) => sys::stat_fd(h.fd())?,
            None => sys::stat_fd(inode.fd())?,
        };
        Ok(file_attr(inode.id, &st))
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn do_setattr(
        &self,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        fh: Option<Fh>,
    ) -> SysResult<FileAttr> {
        let _ns = self.ns.read();
        let inode = self.inode(ino)?;
        let handle = fh.and_then(|f| self.files.get(f.0).ok());
        // "Now" is fixed here so that the replica can be given the same instant.
        let now = SystemTime::now();
        let resolve = |t: TimeOrNow| match t {
            TimeOrNow::SpecificTime(t) => t,
            TimeOrNow::Now => now,
        };
        let change = AttrChange {
            mode: mode.map(|m| m & 0o7777),
            uid,
            gid,
            size,
            atime: atime.map(resolve),
            mtime: mtime.map(resolve),
        };
        let m = Mutation::SetAttr {
            path: self.rel(&inode)?,
            change: change.clone(),
        };
        self.sink.apply(&m, &mut || {
            // Size first, then owner (which clears set-id bits), then mode, then times:
            // the order in which each later step is not undone by an earlier one.
            if let Some(size) = change.size {
                match &handle {
                    Some(h) if h.writable => sys::ftruncate(h.fd(), size)?,
                    _ => {
                        let f = sys::reopen(inode.fd(), libc::O_WRONLY)?;
                        sys::ftruncate(f.as_fd(), size)?;
                    }
                }
            }
            if change.uid.is_some() || change.gid.is_some() {
                sys::fchownat_fd(inode.fd(), change.uid, change.gid)?;
            }
            if let Some(mode) = change.mode {
                sys::chmod_fd(inode.fd(), mode)?;
            }
            if change.atime.is_some() || change.mtime.is_some() {
                let omit = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: libc::UTIME_OMIT,
                };
                let times = [
                    change.atime.map_or(omit, to_timespec),
                    change.mtime.map_or(omit, to_timespec),
                ];
                sys::utimens_fd(inode.fd(), &times)?;
            }
            Ok(())
        })?;
        Ok(file_attr(inode.id, &sys::stat_fd(inode.fd())?))
    }

    pub(super) fn do_mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
    ) -> SysResult<FileAttr> {
        let _ns = self.ns.read();
        let p = self.inode(parent)?;
        let c = cname(name)?;
        let owner = self.new_owner(req, &p)?;
        let m = Mutation::Create {
            path: self.child(&p, name)?,
            mode,
            umask,
            rdev: rdev as u64,
            uid: owner.0,
            gid: owner.1,
        };
        self.sink.apply(&m, &mut || {
            sys::set_thread_umask(umask)?;
            sys::mknodat(p.fd(), &c, mode, rdev as u64)?;
            self.chown_new(&p, &c, owner)
        })?;
        Ok(self.entry(&p, &c)?.1)
    }

    pub(super) fn do_mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
    ) -> SysResult<FileAttr> {
        let _ns = self.ns.read();
        let p = self.inode(parent)?;
        let c = cname(name)?;
        let owner = self.new_owner(req, &p)?;
        let m = Mutation::Mkdir {
            path: self.child(&p, name)?,
            mode,
            umask,
            uid: owner.0,
            gid: owner.1,
        };
        self.sink.apply(&m, &mut || {
            sys::set_thread_umask(umask)?;
            sys::mkdirat(p.fd(), &c, mode)?;
            self.chown_new(&p, &c, owner)
        })?;
        Ok(self.entry(&p, &c)?.1)
    }

    pub(super) fn do_symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        target: &Path,
    ) -> SysResult<FileAttr> {
        let _ns = self.ns.read();
        let p = self.inode(parent)?;
        let c = cname(name)?;
        let t = cname(target.as_os_str())?;
        let owner = self.new_owner(req, &p)?;
        let m = Mutation::Symlink {
            path: self.child(&p, name)?,
            target: target.to_path_buf(),
            uid: owner.0,
            gid: owner.1,
        };
        self.sink.apply(&m, &mut || {
            sys::symlinkat(&t, p.fd(), &c)?;
            self.chown_new(&p, &c, owner)
        })?;
        Ok(self.entry(&p, &c)?.1)
    }

    pub(super) fn do_link(
        &self,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
    ) -> SysResult<FileAttr> {
        let _ns = self.ns.read();
        let inode = self.inode(ino)?;
        let p = self.inode(newparent)?;
        let c = cname(newname)?;
        // A file without a name cannot get one back (only O_TMPFILE files can).
        let existing = self.rel(&inode)?.ok_or(Errno::ENOENT)?;
        let m = Mutation::Link {
            existing,
            path: self.child(&p, newname)?,
        };
        self.sink
            .apply(&m, &mut || sys::link_fd(inode.fd(), p.fd(), &c))?;
        Ok(self.entry(&p, &c)?.1)
    }

    pub(super) fn do_remove(&self, parent: INodeNo, name: &OsStr, dir: bool) -> SysResult<()> {
        // Renames and removals change the names other calls report: they run
        // alone, so every mutation reaches the sink with the name it had then.
        let _ns = self.ns.write();
        let p = self.inode(parent)?;
        let c = cname(name)?;
        let path = self.child(&p, name)?;
        let (m, flags) = if dir {
            (Mutation::Rmdir { path }, libc::AT_REMOVEDIR)
        } else {
            let survivor = self.survivor(&p, &c, &path);
            (Mutation::Unlink { path, survivor }, 0)
        };
        self.ns_gen.fetch_add(1, Ordering::Release);
        self.sink
            .apply(&m, &mut || sys::unlinkat(p.fd(), &c, flags))
    }

    pub(super) fn do_rename(
        &self,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: u32,
    ) -> SysResult<()> {
        // Renames and removals change the names other calls report: they run
        // alone, so every mutation reaches the sink with the name it had then.
        let _ns = self.ns.write();
        let p = self.inode(parent)?;
        let np = self.inode(newparent)?;
        let (c, nc) = (cname(name)?, cname(newname)?);
        let to = self.child(&np, newname)?;
        let survivor = if flags & libc::RENAME_EXCHANGE == 0 {
            self.survivor(&np, &nc, &to)
        } else {
            Remains::Nothing
        };
        let m = Mutation::Rename {
            from: self.child(&p, name)?,
            to,
            flags,
            survivor,
        };
        self.ns_gen.fetch_add(1, Ordering::Release);
        self.sink
            .apply(&m, &mut || sys::renameat2(p.fd(), &c, np.fd(), &nc, flags))
    }

    /// Flags for the real file: the kernel already did what O_CREAT, O_EXCL and
    /// O_TRUNC ask, and O_APPEND would make pwrite ignore the kernel's offsets.
    pub(super) fn real_flags(flags: i32) -> i32 {
        flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY | libc::O_TRUNC | libc::O_APPEND)
    }

    pub(super) fn register(
        &self,
        inode: Arc<Inode>,
        file: std::os::fd::OwnedFd,
        flags: i32,
    ) -> (u64, FopenFlags) {
        let writable = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let direct = flags & libc::O_DIRECT != 0;
        let sync = flags & (libc::O_SYNC | libc::O_DSYNC) != 0;
        let fopen = if direct || (writable && self.uncached_writes.load(Ordering::Relaxed)) {
            FopenFlags::FOPEN_DIRECT_IO
        } else {
            // Every write passes through this mount, so cached pages stay valid across opens.
            FopenFlags::FOPEN_KEEP_CACHE
        };
        let fh = self.files.insert(FileHandle {
            inode,
            file,
            writable,
            sync,
            direct,
            deferred: Default::default(),
        });
        (fh, fopen)
    }

    pub(super) fn do_read(&self, fh: Fh, offset: u64, size: u32) -> SysResult<Vec<u8>> {
        let h = self.files.get(fh.0)?;
        if h.direct {
            blocking();
            let mut buf = sys::AlignedBuf::new(size as usize);
            let n = sys::pread(h.fd(), buf.as_mut_slice(), offset)?;
            return Ok(buf.as_slice()[..n].to_vec());
        }
        let mut buf = vec![0u8; size as usize];
        let n = read_announced(h.fd(), &mut buf, offset)?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Clears set-user-id (and group-executable set-group-id) bits as the kernel
    /// does when a caller without CAP_FSETID writes or truncates a file.
    pub(super) fn kill_suidgid(&self, inode: &Inode) -> SysResult<()> {
        let _ns = self.ns.read();
        let st = sys::stat_fd(inode.fd())?;
        let mut mode = st.st_mode & 0o7777;
        if mode & libc::S_ISUID != 0 {
            mode &= !libc::S_ISUID;
        }
        if mode & (libc::S_ISGID | libc::S_IXGRP) == libc::S_ISGID | libc::S_IXGRP {
            mode &= !libc::S_ISGID;
        }
        if mode == st.st_mode & 0o7777 {
            return Ok(());
        }
        let change = AttrChange {
            mode: Some(mode),
            ..AttrChange::default()
        };
        let m = Mutation::SetAttr {
            path: self.rel(inode)?,
            change,
        };
        self.sink.apply(&m, &mut || sys::chmod_fd(inode.fd(), mode))
    }

    /// Whether a write may be answered before it is applied. Large ones gain
    /// (the caller copies its next block while this one is copied into the real
    /// file), and so does any write that would otherwise wait for one answered
    /// early: the kernel splits a large write from an unaligned buffer into a
    /// large request and a small one. Only writes that cannot fail for a reason
    /// the caller would expect at once qualify: none promising durability, none
    /// clearing set-id bits, none while free space is short, none far beyond
    /// any file size a common file system refuses (EFBIG), none after a failure
    /// not yet reported.
    pub(super) fn answers_early(
        &self,
        h: &FileHandle,
        place: &Place,
        offset: u64,
        len: usize,
        flags: WriteFlags,
    ) -> bool {
        (len >= EARLY_MIN || place.follows_early())
            && !h.sync
            && !h.direct
            && !flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID)
            && offset.saturating_add(len as u64) <= EARLY_MAX_END
            && h.deferred().is_ok()
            && sys::statfs(h.fd())
                .is_ok_and(|st| st.f_bavail.saturating_mul(st.f_frsize) >= EARLY_ROOM)
    }

    pub(super) fn do_write(
        &self,
        h: &FileHandle,
        offset: u64,
        data: &[u8],
        flags: WriteFlags,
    ) -> SysResult<u32> {
        if flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID) {
            self.kill_suidgid(&h.inode)?;
        }
        let _ns = self.ns.read();
        let m = Mutation::Write {
            path: self.rel(&h.inode)?,
            offset,
            data,
            sync: h.sync,
        };
        if h.direct || h.sync {
            blocking();
        }
        self.sink.apply(&m, &mut || {
            if h.direct && !sys::AlignedBuf::is_aligned(data) {
                let mut buf = sys::AlignedBuf::new(data.len());
                buf.as_mut_slice().copy_from_slice(data);
                sys::pwrite_all(h.fd(), buf.as_slice(), offset)
            } else {
                sys::pwrite_all(h.fd(), data, offset)
            }
        })?;
        Ok(data.len() as u32)
    }

    pub(super) fn do_fsync(&self, inode: &Inode, fd: RawFd, datasync: bool) -> SysResult<()> {
        blocking();
        let _ns = self.ns.read();
        let m = Mutation::Fsync {
            path: self.rel(inode)?,
            datasync,
        };
        self.sink.apply(&m, &mut || {
            // SAFETY: `fd` belongs to a file or directory handle that the caller (fsync, fsyncdir)
            // holds for this whole call, so it is open while borrowed.
            sys::fsync(unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }, datasync)
        })
    }

    pub(super) fn do_create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> SysResult<(FileAttr, u64, FopenFlags)> {
        let _ns = self.ns.read();
        let p = self.inode(parent)?;
        let c = cname(name)?;
        let owner = self.new_owner(req, &p)?;
        let real = Self::real_flags(flags);
        let m = Mutation::Create {
            path: self.child(&p, name)?,
            mode,
            umask,
            rdev: 0,
            uid: owner.0,
            gid: owner.1,
        };
        let mut file = None;
        let created = self.sink.apply(&m, &mut || {
            sys::set_thread_umask(umask)?;
            let fd = sys::openat(
                p.fd(),
                &c,
                real | libc::O_CREAT | libc::O_EXCL,
                mode & 0o7777,
            )?;
            self.chown_new(&p, &c, owner)?;
            file = Some(fd);
            Ok(())
        });
        let file = match (created, file) {
            (Ok(()), Some(f)) => f,
            // Another opener created it between the kernel's lookup and ours. ESTALE
            // makes the kernel walk the path again and open the file it now finds,
            // with its own permission checks, as a bare directory would.
            (Err(e), _) if e.code() == libc::EEXIST && flags & libc::O_EXCL == 0 => {
                return Err(Errno::ESTALE);
            }
            (Err(e), _) => return Err(e),
            (Ok(()), None) => unreachable!("the sink reported success without applying the create"),
        };
        let (inode, attr) = self.entry(&p, &c)?;
        let (fh, fopen) = self.register(inode, file, flags);
        Ok((attr, fh, fopen))
    }
}

/// Reads like one pread (all of `buf` unless the file ends first), but
/// announces a wait for the disk before making one, so that another worker
/// serves requests meanwhile; data in the page cache is read without it.
fn read_announced(
    fd: std::os::fd::BorrowedFd<'_>,
    buf: &mut [u8],
    offset: u64,
) -> SysResult<usize> {
    let mut done = 0;
    while done < buf.len() {
        let at = offset + done as u64;
        match sys::pread_cached(fd, &mut buf[done..], at) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(Errno::EAGAIN | Errno::EOPNOTSUPP) => {
                blocking();
                return match sys::pread(fd, &mut buf[done..], at) {
                    Ok(n) => Ok(done + n),
                    Err(_) if done > 0 => Ok(done),
                    Err(e) => Err(e),
                };
            }
            Err(_) if done > 0 => break,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}
