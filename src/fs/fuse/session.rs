//! A FUSE session: the mount made over a directory, the INIT agreed with the
//! kernel, and the readers that take requests off `/dev/fuse` and dispatch
//! them to the file system. Each reader has a descriptor of its own
//! (`FUSE_DEV_IOC_CLONE`), so that the kernel hands its requests to whichever
//! reader waits and takes each answer back on the descriptor its request came
//! from.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use nix::errno::Errno as Nix;

use super::abi::{self, Op};
use super::reply::{self, Sender};
use super::{Errno, FileHandle, Filesystem, INodeNo, KernelConfig, OpenFlags, Request};

/// How much a request may hold: a write of the largest size agreed, with its
/// headers, and never less than the kernel's minimum of 8 KiB.
pub const MAX_WRITE: u32 = 1 << 20;
const READ_BUFFER: usize = MAX_WRITE as usize + 4096;

/// A mounted (or taken over) session, not read yet.
pub struct Session<FS> {
    fs: FS,
    fd: Arc<OwnedFd>,
}

/// The options the mount is made with.
pub struct MountOptions<'a> {
    /// The source the mount table shows.
    pub source: &'a str,
}

fn open_dev_fuse() -> std::io::Result<OwnedFd> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("/dev/fuse: {e} (is the fuse module loaded?)"),
            )
        })?;
    Ok(f.into())
}

impl<FS: Filesystem> Session<FS> {
    /// Mounts a FUSE file system over `dir` and agrees its terms with the
    /// kernel (`fs.init` is asked what to request).
    pub fn mount(mut fs: FS, dir: &Path, opts: &MountOptions<'_>) -> std::io::Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let rootmode = std::fs::metadata(dir)?.mode() & libc::S_IFMT;
        let fd = open_dev_fuse()?;
        let data = format!(
            "fd={},rootmode={:o},user_id={},group_id={},default_permissions,allow_other",
            fd.as_raw_fd(),
            rootmode,
            nix::unistd::getuid(),
            nix::unistd::getgid(),
        );
        nix::mount::mount(
            Some(opts.source),
            dir,
            Some("fuse"),
            nix::mount::MsFlags::empty(),
            Some(data.as_str()),
        )
        .map_err(|e| std::io::Error::other(format!("mount(2) of {}: {e}", dir.display())))?;
        let fd = Arc::new(fd);
        if let Err(e) = handshake(&mut fs, &fd) {
            // Nothing will ever answer this mount: take it away again.
            let _ = nix::mount::umount2(dir, nix::mount::MntFlags::MNT_DETACH);
            return Err(e);
        }
        Ok(Self { fs, fd })
    }

    /// A session another process agreed with the kernel and handed over:
    /// read from where it left off, without a new INIT.
    pub fn from_fd(fs: FS, fd: OwnedFd) -> Self {
        Self {
            fs,
            fd: Arc::new(fd),
        }
    }

    pub fn notifier(&self) -> Notifier {
        Notifier(Sender(self.fd.clone()))
    }

    /// Starts `readers` threads reading the session.
    pub fn spawn(self, readers: usize, name: &str) -> std::io::Result<Running> {
        let fs = Arc::new(self.fs);
        let mut fds = vec![self.fd.clone()];
        for _ in 1..readers.max(1) {
            fds.push(Arc::new(clone_fd(self.fd.as_fd())?));
        }
        let mut threads = Vec::with_capacity(fds.len());
        for (i, fd) in fds.into_iter().enumerate() {
            let fs = fs.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || read_loop(&*fs, fd));
            match spawned {
                Ok(t) => threads.push(t),
                // Those started serve; one is enough.
                Err(e) if !threads.is_empty() => {
                    tracing::warn!("starting a FUSE reader: {e}");
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Running { threads })
    }
}

impl<FS> AsFd for Session<FS> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A second descriptor of the same session whose requests are answered on it.
fn clone_fd(of: BorrowedFd<'_>) -> std::io::Result<OwnedFd> {
    // _IOR(229, 0, uint32_t)
    const FUSE_DEV_IOC_CLONE: libc::c_ulong = 0x8004_e500;
    let fd = open_dev_fuse()?;
    let mut source = of.as_raw_fd() as u32;
    // SAFETY: the ioctl reads one u32 (the source descriptor's number) through
    // a pointer to a live local, and both descriptors are open for the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), FUSE_DEV_IOC_CLONE, &mut source) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

/// Reads one request; `None` once the session ended.
fn read_request(fd: &OwnedFd, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
    loop {
        match nix::unistd::read(fd, buf) {
            Ok(n) => return Ok(Some(n)),
            // Interrupted before it was read, or a signal: read on.
            Err(Nix::ENOENT | Nix::EINTR | Nix::EAGAIN) => continue,
            Err(Nix::ENODEV) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}

fn handshake<FS: Filesystem>(fs: &mut FS, fd: &Arc<OwnedFd>) -> std::io::Result<()> {
    let mut buf = vec![0u8; READ_BUFFER];
    let sender = Sender(fd.clone());
    loop {
        let n = read_request(fd, &mut buf)?.ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "the FUSE session ended before its INIT",
            )
        })?;
        let (h, op) = abi::parse(&buf[..n])
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        let Op::Init {
            major,
            minor,
            max_readahead,
            flags,
        } = op
        else {
            sender.send(h.unique, -libc::EIO, &[]);
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("FUSE opcode {} before INIT", h.opcode),
            ));
        };
        if major > abi::KERNEL_VERSION {
            // Ours goes back; the kernel asks again in our version.
            let mut out = Vec::new();
            out.extend_from_slice(&abi::KERNEL_VERSION.to_ne_bytes());
            out.extend_from_slice(&abi::KERNEL_MINOR_VERSION.to_ne_bytes());
            out.resize(64, 0);
            sender.send(h.unique, 0, &[&out]);
            continue;
        }
        if major < abi::KERNEL_VERSION || minor < 12 {
            sender.send(h.unique, -libc::EPROTO, &[]);
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                format!("FUSE protocol {major}.{minor} is older than 7.12"),
            ));
        }
        let mut config = KernelConfig::new(flags, max_readahead);
        if let Err(e) = fs.init(&mut config) {
            sender.send(
                h.unique,
                -Errno::from_i32(e.raw_os_error().unwrap_or(0)).code(),
                &[],
            );
            return Err(e);
        }
        config.max_write = config.max_write.min(MAX_WRITE);
        sender.send(h.unique, 0, &[&abi::init_out(&config)]);
        return Ok(());
    }
}

fn read_loop<FS: Filesystem>(fs: &FS, fd: Arc<OwnedFd>) -> std::io::Result<()> {
    let mut buf = vec![0u8; READ_BUFFER];
    let sender = Sender(fd.clone());
    while let Some(n) = read_request(&fd, &mut buf)? {
        if !dispatch(fs, &sender, &buf[..n]) {
            break;
        }
    }
    Ok(())
}

/// Hands one request to the file system; false once the session is over.
fn dispatch<FS: Filesystem>(fs: &FS, sender: &Sender, buf: &[u8]) -> bool {
    let (h, op) = match abi::parse(buf) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("a malformed FUSE request: {e}");
            // The unique number is where it always is, if anything is.
            if let Some(u) = buf.get(8..16) {
                let unique = u64::from_ne_bytes(u.try_into().unwrap_or_default());
                sender.send(unique, -libc::EIO, &[]);
            }
            return true;
        }
    };
    let req = Request {
        uid: h.uid,
        gid: h.gid,
    };
    let ino = INodeNo(h.nodeid);
    let s = || sender.clone();
    let u = h.unique;
    match op {
        Op::Destroy => {
            sender.send(u, 0, &[]);
            return false;
        }
        // Forgets are never answered.
        Op::Forget(n) => fs.forget(ino, n),
        Op::BatchForget(items) => {
            for (id, n) in items {
                fs.forget(INodeNo(id), n);
            }
        }
        // Answering ENOSYS tells the kernel to send no more of them.
        Op::Interrupt => sender.send(u, -libc::ENOSYS, &[]),
        Op::Init { .. } => sender.send(u, -libc::EIO, &[]),
        Op::Unknown(_) => sender.send(u, -libc::ENOSYS, &[]),
        Op::Lookup(name) => fs.lookup(&req, ino, name, reply::ReplyEntry::new(u, s())),
        Op::Getattr(fh) => fs.getattr(&req, ino, fh, reply::ReplyAttr::new(u, s())),
        Op::Setattr(set) => fs.setattr(&req, ino, set, reply::ReplyAttr::new(u, s())),
        Op::Readlink => fs.readlink(&req, ino, reply::ReplyData::new(u, s())),
        Op::Symlink { name, target } => fs.symlink(
            &req,
            ino,
            name,
            Path::new(target),
            reply::ReplyEntry::new(u, s()),
        ),
        Op::Mknod {
            mode,
            rdev,
            umask,
            name,
        } => fs.mknod(
            &req,
            ino,
            name,
            mode,
            umask,
            rdev,
            reply::ReplyEntry::new(u, s()),
        ),
        Op::Mkdir { mode, umask, name } => {
            fs.mkdir(&req, ino, name, mode, umask, reply::ReplyEntry::new(u, s()))
        }
        Op::Unlink(name) => fs.unlink(&req, ino, name, reply::ReplyEmpty::new(u, s())),
        Op::Rmdir(name) => fs.rmdir(&req, ino, name, reply::ReplyEmpty::new(u, s())),
        Op::Rename {
            newdir,
            flags,
            name,
            newname,
        } => fs.rename(
            &req,
            ino,
            name,
            INodeNo(newdir),
            newname,
            flags,
            reply::ReplyEmpty::new(u, s()),
        ),
        Op::Link { oldnodeid, name } => fs.link(
            &req,
            INodeNo(oldnodeid),
            ino,
            name,
            reply::ReplyEntry::new(u, s()),
        ),
        Op::Open(flags) => fs.open(&req, ino, OpenFlags(flags), reply::ReplyOpen::new(u, s())),
        Op::Read { fh, offset, size } => fs.read(
            &req,
            ino,
            FileHandle(fh),
            offset,
            size,
            reply::ReplyData::new(u, s()),
        ),
        Op::Write {
            fh,
            offset,
            write_flags,
            data,
        } => fs.write(
            &req,
            ino,
            FileHandle(fh),
            offset,
            data,
            super::WriteFlags(write_flags),
            reply::ReplyWrite::new(u, s()),
        ),
        Op::Statfs => fs.statfs(&req, ino, reply::ReplyStatfs::new(u, s())),
        Op::Release(fh) => fs.release(&req, ino, FileHandle(fh), reply::ReplyEmpty::new(u, s())),
        Op::Fsync { fh, datasync } => fs.fsync(
            &req,
            ino,
            FileHandle(fh),
            datasync,
            reply::ReplyEmpty::new(u, s()),
        ),
        Op::Setxattr { flags, name, value } => fs.setxattr(
            &req,
            ino,
            name,
            value,
            flags,
            reply::ReplyEmpty::new(u, s()),
        ),
        Op::Getxattr { size, name } => {
            fs.getxattr(&req, ino, name, size, reply::ReplyXattr::new(u, s()))
        }
        Op::Listxattr(size) => fs.listxattr(&req, ino, size, reply::ReplyXattr::new(u, s())),
        Op::Removexattr(name) => fs.removexattr(&req, ino, name, reply::ReplyEmpty::new(u, s())),
        Op::Flush(fh) => fs.flush(&req, ino, FileHandle(fh), reply::ReplyEmpty::new(u, s())),
        Op::Opendir(flags) => {
            fs.opendir(&req, ino, OpenFlags(flags), reply::ReplyOpen::new(u, s()))
        }
        Op::Readdir { fh, offset, size } => fs.readdir(
            &req,
            ino,
            FileHandle(fh),
            offset,
            reply::ReplyDirectory::new(u, s(), size as usize),
        ),
        Op::Releasedir(fh) => {
            fs.releasedir(&req, ino, FileHandle(fh), reply::ReplyEmpty::new(u, s()))
        }
        Op::Fsyncdir { fh, datasync } => fs.fsyncdir(
            &req,
            ino,
            FileHandle(fh),
            datasync,
            reply::ReplyEmpty::new(u, s()),
        ),
        Op::Access(mask) => fs.access(&req, ino, mask, reply::ReplyEmpty::new(u, s())),
        Op::Create {
            flags,
            mode,
            umask,
            name,
        } => fs.create(
            &req,
            ino,
            name,
            mode,
            umask,
            flags,
            reply::ReplyCreate::new(u, s()),
        ),
        Op::Fallocate {
            fh,
            offset,
            length,
            mode,
        } => fs.fallocate(
            &req,
            ino,
            FileHandle(fh),
            offset,
            length,
            mode,
            reply::ReplyEmpty::new(u, s()),
        ),
        Op::Lseek { fh, offset, whence } => fs.lseek(
            &req,
            ino,
            FileHandle(fh),
            offset,
            whence,
            reply::ReplyLseek::new(u, s()),
        ),
    }
    true
}

/// The readers of a session.
pub struct Running {
    threads: Vec<JoinHandle<std::io::Result<()>>>,
}

impl Running {
    /// True once every reader saw the session end.
    pub fn is_finished(&self) -> bool {
        self.threads.iter().all(|t| t.is_finished())
    }

    /// Waits for every reader; the first failure, if any.
    pub fn join(self) -> std::io::Result<()> {
        let mut first = Ok(());
        for t in self.threads {
            let r = t
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("a FUSE reader panicked")));
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}

/// Tells the kernel to drop what it caches (from any thread).
#[derive(Clone, Debug)]
pub struct Notifier(Sender);

impl Notifier {
    /// Forget the name `name` in directory `parent`.
    pub fn inval_entry(&self, parent: INodeNo, name: &std::ffi::OsStr) -> std::io::Result<()> {
        use std::os::unix::ffi::OsStrExt;
        self.0.notify(&abi::inval_entry(parent.0, name.as_bytes()))
    }
}
