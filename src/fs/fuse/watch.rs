//! One thread for the whole process watches the sessions nobody reads: when a
//! request waits in one of them, that session's readers are told
//! ([`Readers::kernel_waits`]) and start a worker. A mount at rest thus costs
//! no thread of its own.

use std::collections::HashMap;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use parking_lot::Mutex;

use super::session::Readers;

struct Target {
    readers: Weak<dyn Readers>,
    /// In the epoll set (armed or spent).
    added: bool,
}

#[derive(Default)]
struct Inner {
    targets: HashMap<u64, Target>,
    /// The thread runs (it ends once no session is left).
    running: bool,
    threads: Vec<JoinHandle<()>>,
}

struct Watcher {
    epoll: Epoll,
    /// Written when the last session goes: the thread ends.
    wake: EventFd,
    inner: Mutex<Inner>,
    next: AtomicU64,
}

/// The token of the wake-up descriptor; sessions' tokens start at 1.
const WAKE: u64 = 0;

static WATCHER: OnceLock<Watcher> = OnceLock::new();

fn watcher() -> std::io::Result<&'static Watcher> {
    if let Some(w) = WATCHER.get() {
        return Ok(w);
    }
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    let wake = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
    epoll.add(&wake, EpollEvent::new(EpollFlags::EPOLLIN, WAKE))?;
    Ok(WATCHER.get_or_init(|| Watcher {
        epoll,
        wake,
        inner: Mutex::new(Inner::default()),
        next: AtomicU64::new(WAKE + 1),
    }))
}

impl Watcher {
    fn run(&self) {
        let mut events = [EpollEvent::empty(); 32];
        loop {
            let n = match self.epoll.wait(&mut events, EpollTimeout::NONE) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    tracing::error!("watching FUSE sessions: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            for ev in &events[..n] {
                if ev.data() == WAKE {
                    let _ = self.wake.read();
                    let mut inner = self.inner.lock();
                    if inner.targets.is_empty() {
                        inner.running = false;
                        return;
                    }
                    continue;
                }
                let readers = self
                    .inner
                    .lock()
                    .targets
                    .get(&ev.data())
                    .and_then(|t| t.readers.upgrade());
                // A worker could not start (out of threads): the session is
                // armed again; try again shortly rather than spin.
                if readers.is_some_and(|r| !r.kernel_waits()) {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }
}

/// Adds a session to watch (not armed yet); its token.
pub fn register(readers: Weak<dyn Readers>) -> std::io::Result<u64> {
    let w = watcher()?;
    let mut inner = w.inner.lock();
    if !inner.running {
        let t = std::thread::Builder::new()
            .name("fuse-watch".into())
            .spawn(move || w.run())?;
        inner.threads.push(t);
        inner.running = true;
    }
    let token = w.next.fetch_add(1, Ordering::Relaxed);
    inner.targets.insert(
        token,
        Target {
            readers,
            added: false,
        },
    );
    Ok(token)
}

/// Tells the session's readers once when a request waits on `fd`.
pub fn arm(token: u64, fd: BorrowedFd<'_>) -> std::io::Result<()> {
    let w = watcher()?;
    let mut inner = w.inner.lock();
    let Some(t) = inner.targets.get_mut(&token) else {
        return Ok(());
    };
    let flags = EpollFlags::EPOLLIN | EpollFlags::EPOLLONESHOT;
    if t.added {
        w.epoll.modify(fd, &mut EpollEvent::new(flags, token))?;
    } else {
        w.epoll.add(fd, EpollEvent::new(flags, token))?;
        t.added = true;
    }
    Ok(())
}

/// Stops watching (before `fd` closes). The thread ends with the last session.
pub fn unregister(token: u64, fd: BorrowedFd<'_>) {
    let Some(w) = WATCHER.get() else { return };
    let mut inner = w.inner.lock();
    if inner.targets.remove(&token).is_some_and(|t| t.added) {
        let _ = w.epoll.delete(fd);
    }
    if inner.targets.is_empty() {
        let _ = w.wake.write(1);
    }
}

/// Waits for the watcher to end, if no session is left: at a stop, nothing
/// is left running. A later mount starts it again.
pub fn end() {
    let Some(w) = WATCHER.get() else { return };
    let threads = {
        let mut inner = w.inner.lock();
        if !inner.targets.is_empty() {
            return;
        }
        let _ = w.wake.write(1);
        std::mem::take(&mut inner.threads)
    };
    for t in threads {
        let _ = t.join();
    }
}
