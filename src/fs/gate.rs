//! Which FUSE worker reads the next request (leader/followers).
//!
//! The kernel hands each request to the worker that has waited longest on
//! /dev/fuse. With several idle workers, consecutive requests of one caller (a
//! write, then its fdatasync) therefore each wake a different sleeping thread,
//! which costs tens of microseconds per request on a virtual machine. Here only
//! one worker at a time goes back to reading (the leader): it handles requests
//! itself and reads on, often finding the caller's next request already queued.
//!
//! A request that is about to wait (for the disk or the peer) calls
//! [`blocking`]. When requests have overlapped recently, that hands the reading
//! to an idle worker at once, so slow requests run in parallel. When they have
//! not (one caller, one request at a time) waking a worker would only cost the
//! caller latency, so nobody is woken; should a request arrive meanwhile and the
//! wait go on, a watching follower starts reading after [`STALL`], and from then
//! on the overlap is known.
//!
//! Every method of the file system holds a [`Turn`] while it runs; the turn's end
//! decides whether the thread reads again or waits as a follower.

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// A follower whose leader has been busy this long without handing over
/// starts reading anyway. One follower at a time watches for this.
const STALL: Duration = Duration::from_millis(10);
/// How long one overlap of requests makes waits hand over the reading at once.
const OVERLAP_MEMORY: Duration = Duration::from_secs(2);
/// Followers go back to reading after this long regardless, so that all of
/// them notice a session the kernel ended (they then read ENODEV and exit).
const IDLE_LIMIT: Duration = Duration::from_secs(1);

pub struct Gate {
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Debug)]
struct State {
    /// Workers reading /dev/fuse or on their way back to it.
    readers: usize,
    /// Followers waiting for their turn to read.
    idle: usize,
    /// Followers told to read that have not woken yet (counted in `readers`).
    granted: usize,
    /// When the last reader left to handle a request without handing over;
    /// `None` while someone reads.
    unread_since: Option<Instant>,
    /// Requests being handled.
    active: usize,
    /// When a request last started while another was being handled.
    overlap_at: Option<Instant>,
    /// A follower waits with the short timeout to catch a stalled leader.
    watching: bool,
    /// False once the mount goes away: everyone reads (and sees the end).
    open: bool,
}

thread_local! {
    /// The gate of the request this thread is handling, and whether it still
    /// owes the gate a reader (it left reading and has not handed over).
    static CURRENT: RefCell<Option<Arc<Gate>>> = const { RefCell::new(None) };
    static OWES_READER: Cell<bool> = const { Cell::new(false) };
}

impl Gate {
    /// A gate for `workers` threads, all of which start out reading.
    pub fn new(workers: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                readers: workers,
                idle: 0,
                granted: 0,
                unread_since: None,
                active: 0,
                overlap_at: None,
                watching: false,
                open: true,
            }),
            wake: Condvar::new(),
        })
    }

    /// Called as a request starts (the thread just left reading).
    pub fn enter(self: &Arc<Self>) -> Turn {
        CURRENT.with(|c| {
            let mut c = c.borrow_mut();
            if !c.as_ref().is_some_and(|g| Arc::ptr_eq(g, self)) {
                *c = Some(self.clone());
            }
        });
        let mut s = self.state.lock();
        s.readers = s.readers.saturating_sub(1);
        if s.readers == 0 || s.active > 0 {
            let now = Instant::now();
            if s.readers == 0 {
                s.unread_since = Some(now);
            }
            if s.active > 0 {
                s.overlap_at = Some(now);
            }
        }
        s.active += 1;
        drop(s);
        OWES_READER.set(true);
        Turn { _private: () }
    }

    /// Lets an idle follower read while the caller waits, if requests overlap.
    fn hand_over(&self) {
        let mut s = self.state.lock();
        let overlapping = s.overlap_at.is_some_and(|t| t.elapsed() < OVERLAP_MEMORY);
        if overlapping && s.readers == 0 && s.idle > 0 {
            s.idle -= 1;
            s.granted += 1;
            s.readers += 1;
            s.unread_since = None;
            self.wake.notify_one();
        }
    }

    /// The request is answered: read again if nobody else does, else follow.
    fn leave(&self) {
        let mut s = self.state.lock();
        s.active -= 1;
        if !s.open || s.readers == 0 {
            s.readers += 1;
            s.unread_since = None;
            return;
        }
        s.idle += 1;
        let since = Instant::now();
        let mut watching = false;
        loop {
            if !watching && !s.watching {
                s.watching = true;
                watching = true;
            }
            let wait = if watching { STALL } else { IDLE_LIMIT };
            let timed_out = self.wake.wait_for(&mut s, wait).timed_out();
            let stalled = s.unread_since.is_some_and(|t| t.elapsed() >= STALL);
            let done = if s.granted > 0 {
                s.granted -= 1;
                true
            } else if !s.open || (timed_out && (stalled || since.elapsed() >= IDLE_LIMIT)) {
                s.idle -= 1;
                s.readers += 1;
                s.unread_since = None;
                true
            } else {
                false
            };
            if done {
                if watching {
                    // Another follower takes over the watch.
                    s.watching = false;
                    if s.idle > 0 {
                        self.wake.notify_one();
                    }
                }
                return;
            }
        }
    }

    /// The mount is going away: followers return to reading and see its end.
    pub fn close(&self) {
        let mut s = self.state.lock();
        s.open = false;
        self.wake.notify_all();
    }

    #[cfg(test)]
    fn counts(&self) -> (usize, usize) {
        let s = self.state.lock();
        (s.readers, s.idle)
    }
}

/// One request's hold on the gate; dropping it ends the request.
pub struct Turn {
    _private: (),
}

impl Drop for Turn {
    fn drop(&mut self) {
        OWES_READER.set(false);
        if let Some(g) = CURRENT.with(|c| c.borrow().clone()) {
            g.leave();
        }
    }
}

/// Announces that the current request is about to wait (disk, peer, lock held
/// across such a wait): another worker takes over reading meanwhile. Does
/// nothing outside a request or when already announced.
pub fn blocking() {
    if !OWES_READER.replace(false) {
        return;
    }
    CURRENT.with(|c| {
        if let Some(g) = c.borrow().as_ref() {
            g.hand_over();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    type Job = Box<dyn FnOnce() + Send>;

    /// `n` workers that, like the kernel's readers, take a request only while
    /// they are not following, and run each in a turn.
    struct Pool {
        gate: Arc<Gate>,
        tx: Option<mpsc::Sender<Job>>,
        threads: Vec<std::thread::JoinHandle<()>>,
    }

    impl Pool {
        fn new(n: usize) -> Self {
            let gate = Gate::new(n);
            let (tx, rx) = mpsc::channel::<Job>();
            let rx = Arc::new(Mutex::new(rx));
            let threads = (0..n)
                .map(|_| {
                    let (gate, rx) = (gate.clone(), rx.clone());
                    std::thread::spawn(move || {
                        loop {
                            let Ok(job) = rx.lock().recv() else { return };
                            let _turn = gate.enter();
                            job();
                        }
                    })
                })
                .collect();
            Self {
                gate,
                tx: Some(tx),
                threads,
            }
        }

        /// Runs `f` as a request and waits for its answer.
        fn call<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
            let (done_tx, done_rx) = mpsc::channel();
            self.submit(move || done_tx.send(f()).unwrap());
            done_rx
                .recv_timeout(Duration::from_secs(5))
                .expect("no worker took the request")
        }

        fn submit(&self, f: impl FnOnce() + Send + 'static) {
            self.tx.as_ref().unwrap().send(Box::new(f)).unwrap();
        }

        fn settle(&self, want: (usize, usize)) {
            let deadline = Instant::now() + Duration::from_secs(2);
            while self.gate.counts() != want && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            assert_eq!(self.gate.counts(), want, "(readers, followers)");
        }

        fn stop(mut self) {
            self.gate.close();
            drop(self.tx.take());
            for t in self.threads.drain(..) {
                t.join().unwrap();
            }
        }
    }

    #[test]
    fn quick_requests_leave_one_reader_and_the_others_following() {
        let pool = Pool::new(4);
        for i in 0..50 {
            assert_eq!(pool.call(move || i), i);
        }
        pool.settle((1, 3));
        pool.stop();
    }

    #[test]
    fn a_lone_caller_waiting_wakes_nobody() {
        let pool = Pool::new(2);
        pool.call(|| ());
        pool.settle((1, 1));
        let gate = pool.gate.clone();
        let counts = pool.call(move || {
            blocking();
            gate.counts()
        });
        assert_eq!(counts, (0, 1), "the follower was woken for nothing");
        pool.stop();
    }

    #[test]
    fn once_requests_overlap_a_wait_hands_reading_to_a_follower() {
        let pool = Pool::new(2);
        pool.call(|| ());
        pool.settle((1, 1));
        // A request blocks without announcing it; the watching follower takes
        // over and the next request overlaps it.
        let (release_tx, release_rx) = mpsc::channel::<()>();
        pool.submit(move || release_rx.recv().unwrap());
        assert_eq!(pool.call(|| 7), 7);
        release_tx.send(()).unwrap();
        pool.settle((1, 1));
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let (seen_tx, seen_rx) = mpsc::channel();
        let gate = pool.gate.clone();
        pool.submit(move || {
            let before = gate.counts();
            blocking();
            seen_tx.send((before, gate.counts())).unwrap();
            release_rx.recv().unwrap();
        });
        let (before, after) = seen_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(before, (0, 1), "nobody reads while the leader works");
        assert_eq!(after, (1, 0), "the follower was told to read");
        // Served while the slow request still waits.
        assert_eq!(pool.call(|| 8), 8);
        release_tx.send(()).unwrap();
        pool.settle((1, 1));
        pool.stop();
    }

    #[test]
    fn a_request_that_blocks_unannounced_stalls_the_others_only_briefly() {
        let pool = Pool::new(2);
        pool.call(|| ());
        pool.settle((1, 1));
        let (release_tx, release_rx) = mpsc::channel::<()>();
        pool.submit(move || release_rx.recv().unwrap());
        let started = Instant::now();
        assert_eq!(pool.call(|| 7), 7);
        assert!(
            started.elapsed() < IDLE_LIMIT / 2,
            "{:?}",
            started.elapsed()
        );
        release_tx.send(()).unwrap();
        pool.stop();
    }

    #[test]
    fn blocking_outside_a_request_does_nothing() {
        let gate = Gate::new(1);
        blocking();
        assert_eq!(gate.counts(), (1, 0));
    }
}
