//! One thread for the whole process watches the sessions nobody reads: when a
//! request waits in one of them, that session's readers are told
//! ([`Readers::kernel_waits`]) and start a worker. A mount at rest thus costs
//! no thread of its own.

use std::collections::HashMap;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{OnceLock, Weak};
use std::time::Duration;

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use parking_lot::Mutex;

use super::session::Readers;

struct Target {
    readers: Weak<dyn Readers>,
    /// In the epoll set (armed or spent).
    added: bool,
}

struct Watcher {
    epoll: Epoll,
    targets: Mutex<HashMap<u64, Target>>,
    next: AtomicU64,
}

static WATCHER: OnceLock<Watcher> = OnceLock::new();
static STARTED: Mutex<bool> = Mutex::new(false);

fn watcher() -> std::io::Result<&'static Watcher> {
    let w = match WATCHER.get() {
        Some(w) => w,
        None => {
            let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
            WATCHER.get_or_init(|| Watcher {
                epoll,
                targets: Mutex::new(HashMap::new()),
                next: AtomicU64::new(1),
            })
        }
    };
    let mut started = STARTED.lock();
    if !*started {
        std::thread::Builder::new()
            .name("fuse-watch".into())
            .spawn(move || w.run())?;
        *started = true;
    }
    Ok(w)
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
                let readers = self
                    .targets
                    .lock()
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
    let token = w.next.fetch_add(1, Ordering::Relaxed);
    w.targets.lock().insert(
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
    let mut targets = w.targets.lock();
    let Some(t) = targets.get_mut(&token) else {
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

/// Stops watching (before `fd` closes).
pub fn unregister(token: u64, fd: BorrowedFd<'_>) {
    let Some(w) = WATCHER.get() else { return };
    if w.targets.lock().remove(&token).is_some_and(|t| t.added) {
        let _ = w.epoll.delete(fd);
    }
}
