//! The intercepting mount: a FUSE file system mounted over a replicated directory
//! itself. The real files are reached through a descriptor of the directory opened
//! before the mount covered it, so applications keep their paths and no data moves;
//! every mutating call becomes a [`Mutation`] handed to a [`MutationSink`].

mod attr;
mod callbacks;
mod fuse;
mod gate;
mod handles;
pub mod handover;
mod inode;
pub mod mounts;
mod mutation;
mod ops;
mod reclaim;
pub mod sys;

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// File times to and from (seconds, nanoseconds), before the epoch as well.
pub use attr::{time as time_from_parts, to_timespec};
pub use fuse::Errno;
pub use gate::blocking;
pub use mutation::{
    AttrChange, CountingSink, LocalApply, Mutation, MutationSink, RelPath, Remains,
};
pub use ops::FsOptions;

/// Why a directory could not be mounted. Each names the directory.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("{0}: no such directory")]
    Missing(PathBuf),
    #[error("{0}: not a directory")]
    NotDirectory(PathBuf),
    #[error("{0}: cannot mount over the root directory")]
    Root(PathBuf),
    #[error("{0}: already mounted by a running tandem (stop it first)")]
    AlreadyMounted(PathBuf),
    #[error("{dir}: inside the tandem mount {outer}")]
    InsideMount { dir: PathBuf, outer: PathBuf },
    #[error("{dir}: a stale tandem mount could not be removed ({source}); run `umount -l {dir}`")]
    StaleCleanup {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("{dir}: {source}")]
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("{dir}: mount failed: {source} (is /dev/fuse present and are you root?)")]
    Fuse {
        dir: PathBuf,
        source: std::io::Error,
    },
}

impl MountError {
    /// Bad input (exit code 2) as opposed to a failure of the system.
    pub fn is_usage(&self) -> bool {
        !matches!(
            self,
            MountError::Fuse { .. } | MountError::StaleCleanup { .. }
        )
    }
}

/// What `mount` did before mounting, for the operator's log.
#[derive(Debug, Default)]
pub struct MountReport {
    /// Stale mounts (left by a killed process) that were detached first.
    pub stale_removed: usize,
}

pub struct MountConfig {
    pub fs: FsOptions,
    /// FUSE worker threads; requests from different threads run in parallel.
    pub threads: usize,
}

impl Default for MountConfig {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            fs: FsOptions::default(),
            threads: (cpus * 2).clamp(4, 16),
        }
    }
}

/// A live mount. Unmount with [`Mounted::unmount`]; dropping it unmounts too.
pub struct Mounted {
    dir: PathBuf,
    session: Option<fuse::Running>,
    gate: Arc<gate::Gate>,
    /// The session's `/dev/fuse` connection (a duplicate), to hand over.
    fuse: std::os::fd::OwnedFd,
    /// The file system's tables, to hand over.
    tables: handover::Tables,
}

/// Requests still under way when a hand-over had to start.
#[derive(Debug, thiserror::Error)]
#[error("{dir}: requests still under way after {} ms; nothing was handed over", within.as_millis())]
pub struct Busy {
    pub dir: PathBuf,
    pub within: std::time::Duration,
}

/// Why a handed-over session could not be taken up.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    #[error("{dir}: {source}")]
    Image {
        dir: PathBuf,
        source: handover::ImageError,
    },
    #[error("{dir}: taking up the FUSE session: {source}")]
    Session {
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// Ends the thread that watches idle mounts once none is left (at a stop).
pub fn end_watcher() {
    fuse::watch::end();
}

/// Checks `dir` and removes stale tandem mounts on it. Nothing is mounted.
pub fn prepare(dir: &Path) -> Result<(PathBuf, MountReport), MountError> {
    let io = |source| MountError::Io {
        dir: dir.to_path_buf(),
        source,
    };
    let mut report = MountReport::default();
    // A stale mount answers ENOTCONN even to canonicalize, so look it up by the
    // path as given (made absolute) before resolving anything through it.
    let abs = if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        std::env::current_dir().map_err(io)?.join(dir)
    };
    while mounts::tandem_mounts_at(&mounts::mounts().map_err(io)?, &abs) > 0 {
        if !mounts::is_stale(&abs) {
            return Err(MountError::AlreadyMounted(abs));
        }
        mounts::detach(&abs).map_err(|source| MountError::StaleCleanup {
            dir: abs.clone(),
            source,
        })?;
        report.stale_removed += 1;
    }
    let dir = match std::fs::canonicalize(&abs) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(MountError::Missing(abs)),
        Err(e) => return Err(io(e)),
    };
    if !dir.is_dir() {
        return Err(MountError::NotDirectory(dir));
    }
    if dir == Path::new("/") {
        return Err(MountError::Root(dir));
    }
    let all = mounts::mounts().map_err(io)?;
    if mounts::tandem_mounts_at(&all, &dir) > 0 && !mounts::is_stale(&dir) {
        return Err(MountError::AlreadyMounted(dir));
    }
    if let Some(outer) = mounts::enclosing_tandem_mount(&all, &dir) {
        return Err(MountError::InsideMount {
            dir: dir.clone(),
            outer: outer.to_path_buf(),
        });
    }
    Ok((dir, report))
}

/// Mounts the intercepting file system over `dir` (which must pass [`prepare`]).
pub fn mount(
    dir: &Path,
    sink: Arc<dyn MutationSink>,
    config: &MountConfig,
) -> Result<(Mounted, MountReport), MountError> {
    let (dir, report) = prepare(dir)?;
    let io = |source| MountError::Io {
        dir: dir.clone(),
        source,
    };
    let root = sys::openat(
        cwd_fd(),
        &sys::cname(dir.as_os_str()).map_err(|e| io(errno_io(e)))?,
        libc::O_PATH | libc::O_DIRECTORY,
        0,
    )
    .map_err(|e| io(errno_io(e)))?;
    let prefix =
        sys::fd_path(std::os::fd::AsRawFd::as_raw_fd(&root)).map_err(|e| io(errno_io(e)))?;
    open_file_limit();
    let threads = config.threads.max(1);
    let gate = gate::Gate::sized(threads);
    let fs = ops::TandemFs::new(root, prefix, sink, config.fs.clone(), gate.clone())
        .map_err(|e| io(errno_io(e)))?;
    let tables = fs.tables();
    let reclaim = fs.reclaim.clone();
    let fuse_err = |source| MountError::Fuse {
        dir: dir.clone(),
        source,
    };
    let opts = fuse::session::MountOptions {
        source: mounts::SOURCE,
    };
    let session = fuse::Session::mount(fs, &dir, &opts).map_err(fuse_err)?;
    reclaim.set_notifier(session.notifier());
    let fuse = std::os::fd::AsFd::as_fd(&session)
        .try_clone_to_owned()
        .map_err(fuse_err)?;
    let session = match session.start(gate.clone(), WORKERS) {
        Ok(s) => s,
        Err(e) => {
            // Nobody would answer the mount: take it away again.
            let _ = mounts::detach(&dir);
            return Err(fuse_err(e));
        }
    };
    Ok((
        Mounted {
            dir,
            session: Some(session),
            gate,
            fuse,
            tables,
        },
        report,
    ))
}

/// The name of a mount's worker threads.
const WORKERS: &str = "fuse";

/// Takes up a session another process handed over (see [`Mounted::hand_over`]):
/// the same mount, inode and handle numbers, served from now on by this
/// process through `sink`.
///
/// # Safety
/// The descriptors `image` names were inherited for this purpose: open, and
/// owned by nothing else in this process.
pub unsafe fn resume(
    image: handover::SessionImage,
    sink: Arc<dyn MutationSink>,
    config: &MountConfig,
) -> Result<Mounted, ResumeError> {
    let dir = image.dir.clone();
    // Close-on-exec again, as every descriptor of the daemon.
    if let Err(e) = image.keep_across_exec(false) {
        tracing::warn!("{}: {e}", dir.display());
    }
    // SAFETY: the caller's contract.
    let (tables, fuse) =
        unsafe { image.clone().into_tables() }.map_err(|source| ResumeError::Image {
            dir: dir.clone(),
            source,
        })?;
    let uncached = image.uncached_writes;
    open_file_limit();
    let threads = config.threads.max(1);
    let gate = gate::Gate::sized(threads);
    let fs = ops::TandemFs::with_tables(tables, sink, config.fs.clone(), gate.clone());
    let tables = fs.tables();
    let reclaim = fs.reclaim.clone();
    let err = |source| ResumeError::Session {
        dir: dir.clone(),
        source,
    };
    let dup = fuse.try_clone().map_err(err)?;
    let session = fuse::Session::from_fd(fs, fuse);
    reclaim.set_notifier(session.notifier());
    tables
        .uncached_writes
        .store(uncached, std::sync::atomic::Ordering::Relaxed);
    let session = session.start(gate.clone(), WORKERS).map_err(err)?;
    Ok(Mounted {
        dir,
        session: Some(session),
        gate,
        fuse: dup,
        tables,
    })
}

/// Raises the open-file limit, and sizes the inode descriptors' budget to it.
fn open_file_limit() {
    match sys::raise_nofile_limit() {
        Ok(n) => reclaim::set_limit(n),
        Err(e) => tracing::warn!("cannot raise the open-file limit: {e}"),
    }
}

pub(crate) fn errno_io(e: Errno) -> std::io::Error {
    std::io::Error::from_raw_os_error(e.code())
}

fn cwd_fd() -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: AT_FDCWD is not -1 and is no real descriptor: the *at calls read it as the working
    // directory, and it is never closed, so it may be borrowed for 'static.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(libc::AT_FDCWD) }
}

impl Mounted {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Unmounts and waits for the serving threads. If applications still hold
    /// files open, the mount is detached: new opens reach the bare directory
    /// (which holds every byte already) and this returns once the last user closed.
    pub fn unmount(mut self) -> std::io::Result<Unmounted> {
        self.unmount_inner()
    }

    fn unmount_inner(&mut self) -> std::io::Result<Unmounted> {
        let Some(session) = self.session.take() else {
            return Ok(Unmounted::Clean);
        };
        // A file closed a moment ago may still be being released: the kernel
        // holds the mount until the release is answered, which under load
        // takes a while and is no reason to leave the mount detached. The
        // wait goes on while handles are being released, up to a bound.
        const QUIET: std::time::Duration = std::time::Duration::from_millis(300);
        const AT_MOST: std::time::Duration = std::time::Duration::from_secs(3);
        let open = || self.tables.files.len() + self.tables.dirs.len();
        let started = std::time::Instant::now();
        let (mut last_open, mut last_change) = (open(), started);
        let umounted = loop {
            match mounts::umount(&self.dir, 0) {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    let now = open();
                    if now < last_open {
                        last_change = std::time::Instant::now();
                    }
                    last_open = now;
                    if last_change.elapsed() < QUIET && started.elapsed() < AT_MOST {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                        continue;
                    }
                    break Err(e);
                }
                r => break r,
            }
        };
        let how = match umounted {
            Ok(()) => Unmounted::Clean,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                mounts::detach(&self.dir)?;
                Unmounted::Detached
            }
            // Already unmounted from outside (`umount DIR`): only the threads remain.
            Err(e)
                if e.raw_os_error() == Some(libc::EINVAL)
                    && (session.is_finished()
                        || mounts::mounts()
                            .is_ok_and(|m| mounts::tandem_mounts_at(&m, &self.dir) == 0)) =>
            {
                Unmounted::Clean
            }
            Err(e) => return Err(e),
        };
        // Followers go back to reading and see the end (or serve a detached mount).
        self.gate.close();
        match session.join() {
            // A worker that dequeued a request while the kernel tore the
            // connection down at the end of the session reads ECONNABORTED
            // instead of ENODEV: the session ended all the same.
            Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => Ok(how),
            Err(e) => Err(e),
            Ok(()) => Ok(how),
        }
    }

    /// Stops reading the session for a hand-over: requests under way finish,
    /// new ones wait in the kernel. Each worker still reading is drawn out by
    /// a `statfs` of the mount point; if requests are still under way after
    /// `within` (one waiting on a lock, say), reading resumes and nothing is
    /// handed over.
    pub fn freeze(&self, within: std::time::Duration) -> Result<(), Busy> {
        use std::time::Instant;
        self.gate.freeze();
        let (gate, dir) = (self.gate.clone(), self.dir.clone());
        // Left blocked if its request arrives after the last worker parked:
        // whoever reads the session next answers it.
        let nudger = std::thread::Builder::new()
            .name("fs-drain".into())
            .spawn(move || {
                while gate.frozen() && !gate.quiet() {
                    let _ = nix::sys::statfs::statfs(&dir);
                }
            });
        let deadline = Instant::now() + within;
        while !self.gate.quiet() {
            if nudger.is_err() || Instant::now() >= deadline {
                self.gate.thaw();
                return Err(Busy {
                    dir: self.dir.clone(),
                    within,
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        Ok(())
    }

    /// Reading resumes after [`Mounted::freeze`].
    pub fn thaw(&self) {
        self.gate.thaw();
    }

    /// What the next process needs to go on serving this frozen mount. The
    /// mount is left as it is: its workers stay parked and nothing is
    /// unmounted or closed (the process is about to be replaced).
    pub fn hand_over(mut self) -> handover::SessionImage {
        debug_assert!(self.gate.quiet(), "hand over a frozen mount");
        // As the kernel made it: a release that reads it blocking takes it up.
        if let Err(e) = fuse::session::set_nonblocking(std::os::fd::AsFd::as_fd(&self.fuse), false)
        {
            tracing::warn!("{}: {e}", self.dir.display());
        }
        let image = handover::SessionImage::take(
            self.dir.clone(),
            std::os::fd::AsRawFd::as_raw_fd(&self.fuse),
            &self.tables,
        );
        // Never joined nor unmounted: the workers are parked for good.
        std::mem::forget(self.session.take());
        std::mem::forget(self);
        image
    }

    /// Threads serving the mount now: none at rest, more under load.
    pub fn workers(&self) -> usize {
        self.gate.workers()
    }

    /// True once the kernel ended the session (unmounted from outside).
    pub fn is_finished(&self) -> bool {
        self.session.as_ref().is_none_or(|s| s.is_finished())
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Unmounted {
    Clean,
    /// Files were still open: the mount was detached and served them until closed.
    Detached,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(e) = self.unmount_inner() {
            tracing::error!("unmounting {}: {e}", self.dir.display());
        }
    }
}
