//! Makes a following module's applied changes durable (its syncfs) on a
//! thread of its own, so that applying never waits for the disk. The thread
//! is there only while there is something to make durable: the first
//! request starts it, and it ends after a spell without one, so that a
//! module at rest holds no thread for it (32 following modules held 32).

use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

/// How long the thread waits for another request before it ends: longer
/// than the pause between two syncs while changes flow.
pub const IDLE: Duration = Duration::from_secs(3);

#[derive(Default)]
struct State {
    /// The latest change asked to be made durable, and the latest made so.
    want: u64,
    synced: u64,
    running: bool,
    /// A sync failed: nothing is durable past `synced` any more.
    failed: bool,
    closing: bool,
}

#[derive(Default)]
struct Queue {
    state: Mutex<State>,
    wake: Condvar,
}

/// The syncs of one session, run by threads of `scope`; `sync(seq)` makes
/// everything applied up to `seq` durable and says so to the primary
/// (false: it failed).
pub struct Syncer<'scope, 'env> {
    scope: &'scope std::thread::Scope<'scope, 'env>,
    queue: Arc<Queue>,
    sync: &'env (dyn Fn(u64) -> bool + Sync),
    idle: Duration,
}

impl<'scope, 'env> Syncer<'scope, 'env> {
    pub fn new(
        scope: &'scope std::thread::Scope<'scope, 'env>,
        sync: &'env (dyn Fn(u64) -> bool + Sync),
        idle: Duration,
    ) -> Self {
        Syncer {
            scope,
            queue: Arc::default(),
            sync,
            idle,
        }
    }

    /// Asks for everything applied up to `seq` to be made durable, without
    /// waiting for it; false once a sync failed (or no thread could start).
    pub fn request(&self, seq: u64) -> bool {
        let mut s = self.queue.state.lock();
        if s.failed {
            return false;
        }
        s.want = s.want.max(seq);
        if s.running {
            self.queue.wake.notify_one();
            return true;
        }
        s.running = true;
        drop(s);
        let (queue, sync, idle) = (self.queue.clone(), self.sync, self.idle);
        let started = std::thread::Builder::new()
            .name("tandem-syncfs".into())
            .spawn_scoped(self.scope, move || run(&queue, sync, idle));
        if started.is_err() {
            let mut s = self.queue.state.lock();
            s.running = false;
            s.failed = true;
            return false;
        }
        true
    }

    /// Lets the thread end once what was asked is durable; the scope's end
    /// waits for it.
    pub fn close(&self) {
        self.queue.state.lock().closing = true;
        self.queue.wake.notify_all();
    }
}

fn run(q: &Queue, sync: &(dyn Fn(u64) -> bool + Sync), idle: Duration) {
    let mut s = q.state.lock();
    loop {
        if s.want > s.synced {
            // Every request up to now is covered by this one sync.
            let seq = s.want;
            let ok = parking_lot::MutexGuard::unlocked(&mut s, || sync(seq));
            if !ok {
                s.failed = true;
                s.running = false;
                return;
            }
            s.synced = seq;
            continue;
        }
        if s.closing || q.wake.wait_for(&mut s, idle).timed_out() && s.want <= s.synced {
            s.running = false;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::Instant;

    const SHORT: Duration = Duration::from_millis(50);

    fn running(s: &Syncer<'_, '_>) -> bool {
        s.queue.state.lock().running
    }

    #[test]
    fn a_thread_runs_only_while_there_is_something_to_sync() {
        let synced = Mutex::new(Vec::new());
        let sync = |seq: u64| {
            std::thread::sleep(Duration::from_millis(20));
            synced.lock().push(seq);
            true
        };
        std::thread::scope(|scope| {
            let s = Syncer::new(scope, &sync, SHORT);
            assert!(!running(&s), "no thread before a request");
            assert!(s.request(5));
            assert!(running(&s));
            // Requests made while a sync runs are served by one more.
            assert!(s.request(6));
            assert!(s.request(9));
            let t = Instant::now();
            while running(&s) {
                assert!(t.elapsed() < Duration::from_secs(5), "the thread ended");
                std::thread::sleep(Duration::from_millis(5));
            }
            let got = synced.lock().clone();
            assert_eq!(got.last(), Some(&9), "{got:?}");
            assert!(got.len() <= 2, "requests coalesce: {got:?}");
            // After the idle spell it starts again for the next request.
            assert!(s.request(12));
            assert!(running(&s));
            s.close();
        });
        assert_eq!(synced.lock().last(), Some(&12), "close waits for the last");
    }

    #[test]
    fn a_failed_sync_fails_every_later_request() {
        let calls = AtomicUsize::new(0);
        let sync = |_seq: u64| {
            calls.fetch_add(1, Ordering::SeqCst);
            false
        };
        std::thread::scope(|scope| {
            let s = Syncer::new(scope, &sync, SHORT);
            assert!(s.request(1));
            let t = Instant::now();
            while running(&s) {
                assert!(t.elapsed() < Duration::from_secs(5));
                std::thread::sleep(Duration::from_millis(5));
            }
            assert!(!s.request(2), "a failed sync is reported");
            s.close();
        });
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn close_leaves_nothing_asked_unsynced() {
        let slow = AtomicBool::new(true);
        let synced = Mutex::new(0u64);
        let sync = |seq: u64| {
            if slow.swap(false, Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(100));
            }
            *synced.lock() = seq;
            true
        };
        std::thread::scope(|scope| {
            let s = Syncer::new(scope, &sync, IDLE);
            assert!(s.request(1));
            std::thread::sleep(Duration::from_millis(20));
            assert!(s.request(2));
            s.close();
        });
        assert_eq!(*synced.lock(), 2);
    }
}
