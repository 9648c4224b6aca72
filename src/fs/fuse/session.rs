//! A FUSE session: the mount made over a directory, the INIT agreed with the
//! kernel, and the workers that take requests off `/dev/fuse` and dispatch
//! them to the file system. How many workers there are is the [`Readers`]'
//! to decide (the mount's gate): they start through the session's
//! [`Driver`], end when they waited long enough for a request, and while none
//! is left the process-wide watcher (`watch`) says when a request waits.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;

use nix::errno::Errno as Nix;

use super::abi::{self, Op};
use super::reply::Sender;
use super::{Errno, Filesystem, INodeNo, KernelConfig};

/// The largest write one request may carry (the most INIT agrees to).
pub const MAX_WRITE: u32 = 1 << 20;
/// The most one request holds: the largest write and its headers.
const READ_BUFFER: usize = MAX_WRITE as usize + 4096;
/// A worker that waited this long for a request asks whether to end.
pub const RETIRE: Duration = Duration::from_secs(2);

/// Who decides how many workers a session has (the mount's gate).
pub trait Readers: Send + Sync {
    /// The session's driver, to start workers and arm the watcher with.
    fn drive(&self, driver: Weak<dyn Driver>);
    /// A worker started as a follower waits here until it is to read.
    fn follow(&self);
    /// A reader waited [`RETIRE`] without a request: true if it ends.
    fn idle(&self) -> bool;
    /// A worker saw the session end (or fail) and ends.
    fn ended(&self);
    /// The watcher saw a request wait while no worker read: start one.
    /// False if none could start (the watcher tries again).
    fn kernel_waits(&self) -> bool;
    /// Returns once the session ended and every worker is gone.
    fn wait_ended(&self);
    fn is_finished(&self) -> bool;
}

/// What starts a session's workers and watches it while none reads.
pub trait Driver: Send + Sync {
    /// Starts a worker that reads, or one that first follows.
    fn spawn(&self, reader: bool) -> bool;
    /// Asks the watcher to say once when a request waits.
    fn arm(&self);
    /// Joins every worker that ended (all of them, once the session is over).
    fn join_ended(&self);
}

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
        let rootmode = std::fs::metadata(dir)?.mode();
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

    /// Starts serving the session: `readers` decide how many workers it has
    /// (none until a request waits, for a gate sized to the load).
    pub fn start(self, readers: Arc<dyn Readers>, name: &str) -> std::io::Result<Running> {
        set_nonblocking(self.fd.as_fd(), true)?;
        let token = super::watch::register(Arc::downgrade(&readers))?;
        let error = Arc::new(Mutex::new(None));
        let shared = Arc::new_cyclic(|me| Shared {
            fs: self.fs,
            fd: self.fd,
            readers: readers.clone(),
            name: name.to_owned(),
            token,
            me: me.clone(),
            error: error.clone(),
            threads: Mutex::new(Vec::new()),
        });
        let driver: Arc<dyn Driver> = shared;
        readers.drive(Arc::downgrade(&driver));
        Ok(Running {
            readers,
            error,
            driver,
        })
    }
}

/// Clears or sets `O_NONBLOCK` (a hand-over gives the next process the
/// descriptor as the kernel made it: blocking).
pub fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) -> std::io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    let flags = if on {
        flags | OFlag::O_NONBLOCK
    } else {
        flags - OFlag::O_NONBLOCK
    };
    fcntl(fd, FcntlArg::F_SETFL(flags))?;
    Ok(())
}

/// What a session's workers share.
struct Shared<FS> {
    fs: FS,
    fd: Arc<OwnedFd>,
    readers: Arc<dyn Readers>,
    name: String,
    token: u64,
    me: Weak<Shared<FS>>,
    error: Arc<Mutex<Option<std::io::Error>>>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl<FS: Filesystem> Driver for Shared<FS> {
    fn spawn(&self, reader: bool) -> bool {
        let Some(me) = self.me.upgrade() else {
            return false;
        };
        match std::thread::Builder::new()
            .name(self.name.clone())
            .spawn(move || me.work(reader))
        {
            Ok(t) => {
                let mut threads = self.threads.lock();
                // Those that ended are joined as others start.
                let (done, live): (Vec<_>, Vec<_>) =
                    threads.drain(..).partition(|t| t.is_finished());
                *threads = live;
                threads.push(t);
                drop(threads);
                for t in done {
                    let _ = t.join();
                }
                true
            }
            Err(e) => {
                tracing::warn!("starting a FUSE worker: {e}");
                false
            }
        }
    }

    fn arm(&self) {
        if let Err(e) = super::watch::arm(self.token, self.fd.as_fd()) {
            tracing::error!("watching a FUSE session: {e}");
        }
    }

    fn join_ended(&self) {
        let threads = std::mem::take(&mut *self.threads.lock());
        for t in threads {
            let _ = t.join();
        }
    }
}

impl<FS> Drop for Shared<FS> {
    fn drop(&mut self) {
        super::watch::unregister(self.token, self.fd.as_fd());
    }
}

impl<FS: Filesystem> Shared<FS> {
    /// One worker: reads and dispatches requests until the session ends or
    /// its readers let it go.
    fn work(&self, reader: bool) {
        if !reader {
            self.readers.follow();
        }
        let mut buf = Vec::with_capacity(READ_BUFFER);
        let sender = Sender(self.fd.clone());
        let patience =
            nix::poll::PollTimeout::try_from(RETIRE).unwrap_or(nix::poll::PollTimeout::MAX);
        loop {
            let mut fds = [nix::poll::PollFd::new(
                self.fd.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            match nix::poll::poll(&mut fds, patience) {
                Ok(0) => {
                    if self.readers.idle() {
                        return;
                    }
                    continue;
                }
                Ok(_) | Err(Nix::EINTR) => {}
                Err(e) => return self.fail(e),
            }
            match read_uninit(self.fd.as_fd(), &mut buf) {
                Ok(()) => {
                    if !super::dispatch::dispatch(&self.fs, &sender, &buf) {
                        return self.readers.ended();
                    }
                }
                // Taken by another worker, interrupted, or a signal.
                Err(Nix::EAGAIN | Nix::ENOENT | Nix::EINTR) => {}
                // The session ended (a request dequeued as the kernel tore the
                // connection down reads ECONNABORTED instead).
                Err(Nix::ENODEV | Nix::ECONNABORTED) => return self.readers.ended(),
                Err(e) => return self.fail(e),
            }
        }
    }

    fn fail(&self, e: Nix) {
        tracing::error!("reading the FUSE session: {e}");
        self.error.lock().get_or_insert(e.into());
        self.readers.ended();
    }
}

impl<FS> AsFd for Session<FS> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Reads one request into `buf`'s capacity. The buffer is never zeroed
/// first: only what requests fill counts in memory, not the largest size one
/// could have.
fn read_uninit(fd: BorrowedFd<'_>, buf: &mut Vec<u8>) -> nix::Result<()> {
    buf.clear();
    // SAFETY: read(2) writes at most `capacity` bytes at the start of the
    // vector's own allocation, which nothing else uses meanwhile.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.capacity()) };
    if n < 0 {
        return Err(Nix::last());
    }
    // SAFETY: the kernel initialised the first `n` bytes (n <= capacity).
    unsafe { buf.set_len(n as usize) };
    Ok(())
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

/// A session being served.
pub struct Running {
    readers: Arc<dyn Readers>,
    error: Arc<Mutex<Option<std::io::Error>>>,
    /// The workers' shared state, kept while the session is served.
    driver: Arc<dyn Driver>,
}

impl Running {
    /// True once the session ended and every worker is gone.
    pub fn is_finished(&self) -> bool {
        self.readers.is_finished()
    }

    /// Waits for the session's end and its workers; the first failure, if any.
    pub fn join(self) -> std::io::Result<()> {
        self.readers.wait_ended();
        self.driver.join_ended();
        match self.error.lock().take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
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
