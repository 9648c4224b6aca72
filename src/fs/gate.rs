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
//!
//! A mount's workers are sized to its load ([`Gate::sized`]): an idle mount has
//! none, and the process-wide watcher starts the first when a request waits;
//! the first request it handles starts a follower (to catch a stall), a wait
//! that should hand over with no follower idle starts another reader, up to
//! the mount's limit; a reader that waited a while for a request
//! (`fuse::session::RETIRE`) ends, unless it is the last reader of a mount
//! with other workers.
//!
//! A large write may be answered before it is applied (see `ops`), so that the
//! caller prepares its next write while this one is copied into the real file.
//! Writes therefore take a [`Place`] in the order they arrive and are applied in
//! that order; every other request waits until the writes answered early
//! before it arrived are applied, so whatever starts after such an answer sees
//! the data.

use std::cell::{Cell, RefCell};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};

use super::fuse::session::{Driver, Readers};

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
    /// Signalled as each write is applied.
    applied: Condvar,
    /// Signalled when a freeze ends.
    parked: Condvar,
    /// Signalled as workers end.
    ended: Condvar,
    /// What starts workers and watches the session while none reads; only a
    /// sized gate has one.
    driver: OnceLock<Weak<dyn Driver>>,
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
    /// The place the next write gets, and the place whose turn it is to apply.
    next_place: u64,
    applying: u64,
    /// Writes answered and not yet applied.
    early: usize,
    /// Handing the session over: no worker goes back to reading, each one
    /// parks as its request ends (see [`Gate::freeze`]).
    frozen: bool,
    /// Threads serving the mount, and how many it may have.
    workers: usize,
    max_workers: usize,
    /// No worker: the watcher is asked to say when a request waits.
    armed: bool,
    /// A worker saw the session end.
    over: bool,
}

thread_local! {
    /// The gate of the request this thread is handling, and whether it still
    /// owes the gate a reader (it left reading and has not handed over).
    static CURRENT: RefCell<Option<Arc<Gate>>> = const { RefCell::new(None) };
    static OWES_READER: Cell<bool> = const { Cell::new(false) };
}

impl Gate {
    /// A gate for `workers` threads, all of which start out reading.
    #[cfg(test)]
    pub fn new(workers: usize) -> Arc<Self> {
        Self::with(workers, workers)
    }

    /// A gate whose workers come and go with the load, up to `max`; it has
    /// none until its session drives it ([`Readers::drive`]).
    pub fn sized(max: usize) -> Arc<Self> {
        Self::with(0, max.max(1))
    }

    fn with(workers: usize, max_workers: usize) -> Arc<Self> {
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
                next_place: 0,
                applying: 0,
                early: 0,
                frozen: false,
                workers,
                max_workers,
                armed: false,
                over: false,
            }),
            wake: Condvar::new(),
            applied: Condvar::new(),
            parked: Condvar::new(),
            ended: Condvar::new(),
            driver: OnceLock::new(),
        })
    }

    fn driver(&self) -> Option<Arc<dyn Driver>> {
        self.driver.get().and_then(Weak::upgrade)
    }

    /// Starts one more worker, reading or following, if the gate may grow.
    fn grow(&self, s: &mut State, reader: bool) -> bool {
        if s.workers >= s.max_workers || !s.open || s.frozen {
            return false;
        }
        let Some(d) = self.driver() else {
            return false;
        };
        s.workers += 1;
        if reader {
            s.readers += 1;
            s.unread_since = None;
        } else {
            s.idle += 1;
        }
        if d.spawn(reader) {
            return true;
        }
        s.workers -= 1;
        if reader {
            s.readers -= 1;
        } else {
            s.idle -= 1;
        }
        false
    }

    /// Nobody serves the mount: the watcher says when a request waits.
    fn arm(&self, s: &mut State) {
        if s.open && !s.frozen && !s.over && !s.armed {
            if let Some(d) = self.driver() {
                s.armed = true;
                d.arm();
            }
        }
    }

    /// Called as a request starts (the thread just left reading). Returns once
    /// every write answered before it is applied (writes answered later do not
    /// hold it up, so a stream of them cannot starve other callers).
    pub fn enter(self: &Arc<Self>) -> Turn {
        let (turn, mut s) = self.start();
        if s.early > 0 {
            self.grant(&mut s);
            OWES_READER.set(false);
            let arrived = s.next_place;
            while s.applying < arrived {
                self.applied.wait(&mut s);
            }
        }
        turn
    }

    /// Called as a write starts: it takes its place among the writes instead
    /// of waiting for those answered early.
    pub fn enter_write(self: &Arc<Self>) -> (Turn, Place<'_>) {
        let (turn, mut s) = self.start();
        let n = s.next_place;
        s.next_place += 1;
        let place = Place {
            gate: self,
            n,
            follows_early: s.early > 0,
            early: false,
        };
        (turn, place)
    }

    /// Lets an idle follower read now.
    fn grant(&self, s: &mut State) {
        if s.readers == 0 && s.idle > 0 && !s.frozen {
            s.idle -= 1;
            s.granted += 1;
            s.readers += 1;
            s.unread_since = None;
            self.wake.notify_one();
        } else if s.readers == 0 {
            self.grow(s, true);
        }
    }

    fn start(self: &Arc<Self>) -> (Turn, MutexGuard<'_, State>) {
        CURRENT.with(|c| {
            let mut c = c.borrow_mut();
            if !c.as_ref().is_some_and(|g| Arc::ptr_eq(g, self)) {
                *c = Some(self.clone());
            }
        });
        OWES_READER.set(true);
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
        // Someone watches for this request stalling the others.
        if s.readers == 0 && s.idle == 0 {
            self.grow(&mut s, false);
        }
        (Turn { _private: () }, s)
    }

    /// Lets an idle follower read while the caller waits, if requests overlap.
    fn hand_over(&self) {
        let mut s = self.state.lock();
        if s.overlap_at.is_some_and(|t| t.elapsed() < OVERLAP_MEMORY) {
            self.grant(&mut s);
        }
    }

    /// The request is answered: read again if nobody else does, else follow.
    fn leave(&self) {
        let mut s = self.state.lock();
        s.active -= 1;
        if s.frozen && s.open {
            self.park(&mut s);
        }
        if !s.open || s.readers == 0 {
            s.readers += 1;
            s.unread_since = None;
            return;
        }
        s.idle += 1;
        self.follow_locked(&mut s);
    }

    /// Waits as a follower (counted in `idle`) until told to read.
    fn follow_locked(&self, s: &mut MutexGuard<'_, State>) {
        // A follower just started may have missed the wake-up meant for it.
        if s.granted > 0 && !(s.frozen && s.open) {
            s.granted -= 1;
            return;
        }
        if !s.open {
            s.idle -= 1;
            s.readers += 1;
            return;
        }
        let since = Instant::now();
        let mut watching = false;
        loop {
            if !watching && !s.watching {
                s.watching = true;
                watching = true;
            }
            let wait = if watching { STALL } else { IDLE_LIMIT };
            let timed_out = self.wake.wait_for(s, wait).timed_out();
            if s.frozen && s.open {
                // A follower told to read before the freeze stays.
                if s.granted > 0 {
                    s.granted -= 1;
                    s.readers -= 1;
                }
                continue;
            }
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

    /// The mount is going away: followers return to reading and see its end
    /// (a sized gate without workers starts one to see it).
    pub fn close(&self) {
        let mut s = self.state.lock();
        s.open = false;
        self.wake.notify_all();
        self.parked.notify_all();
        if s.workers == 0 && !s.over {
            if let Some(d) = self.driver() {
                s.workers += 1;
                s.readers += 1;
                if !d.spawn(true) {
                    s.workers -= 1;
                    s.readers -= 1;
                    s.over = true;
                    self.ended.notify_all();
                }
            }
        }
    }

    /// Stops reading for a hand-over: from now on every worker parks as its
    /// request ends instead of reading again. Those still reading are each
    /// drawn out by one more request (see `Mounted::freeze`); once none reads
    /// and none handles a request, [`Gate::quiet`] is true and the kernel
    /// holds every new request until someone reads the session again.
    pub fn freeze(&self) {
        self.state.lock().frozen = true;
    }

    /// Undoes [`Gate::freeze`]: the parked workers go back to reading.
    pub fn thaw(&self) {
        let mut s = self.state.lock();
        s.frozen = false;
        self.parked.notify_all();
        self.wake.notify_all();
        if s.workers == 0 {
            self.arm(&mut s);
        }
    }

    pub fn frozen(&self) -> bool {
        self.state.lock().frozen
    }

    /// Frozen, and no worker reads or handles a request.
    pub fn quiet(&self) -> bool {
        let s = self.state.lock();
        s.frozen && s.readers == 0 && s.active == 0
    }

    /// Waits, as neither reader nor follower, until thawed or closed.
    fn park(&self, s: &mut MutexGuard<'_, State>) {
        while s.frozen && s.open {
            self.parked.wait(s);
        }
    }

    /// Workers serving the mount now.
    pub fn workers(&self) -> usize {
        self.state.lock().workers
    }

    #[cfg(test)]
    fn counts(&self) -> (usize, usize) {
        let s = self.state.lock();
        (s.readers, s.idle)
    }
}

impl Readers for Gate {
    fn drive(&self, driver: Weak<dyn Driver>) {
        let _ = self.driver.set(driver);
        let mut s = self.state.lock();
        if s.workers == 0 {
            self.arm(&mut s);
        }
    }

    fn follow(&self) {
        let mut s = self.state.lock();
        self.follow_locked(&mut s);
    }

    fn idle(&self) -> bool {
        let mut s = self.state.lock();
        if self.driver.get().is_none() || !s.open {
            return false;
        }
        // The last reader stays while other workers may come back to read.
        if s.readers > 1 || s.workers == 1 {
            s.readers -= 1;
            s.workers -= 1;
            if s.workers == 0 {
                self.arm(&mut s);
            }
            self.ended.notify_all();
            return true;
        }
        false
    }

    fn ended(&self) {
        let mut s = self.state.lock();
        s.over = true;
        s.readers = s.readers.saturating_sub(1);
        s.workers = s.workers.saturating_sub(1);
        self.ended.notify_all();
    }

    fn kernel_waits(&self) -> bool {
        let mut s = self.state.lock();
        if !s.armed {
            return true;
        }
        s.armed = false;
        if s.frozen || s.workers > 0 {
            // A thaw arms again; a worker reads.
            return true;
        }
        if self.grow(&mut s, true) {
            return true;
        }
        self.arm(&mut s);
        false
    }

    fn wait_ended(&self) {
        let mut s = self.state.lock();
        while s.workers > 0 || !(s.over || self.driver().is_none()) {
            self.ended.wait(&mut s);
        }
    }

    fn is_finished(&self) -> bool {
        let s = self.state.lock();
        s.over && s.workers == 0
    }
}

/// One request's hold on the gate; dropping it ends the request.
pub struct Turn {
    _private: (),
}

/// A write's place in the order writes are applied; dropping it lets the next
/// write apply (after waiting for this place's turn, if that did not happen).
pub struct Place<'a> {
    gate: &'a Gate,
    n: u64,
    /// A write answered early had yet to be applied when this one arrived.
    follows_early: bool,
    early: bool,
}

impl Place<'_> {
    /// The write is about to be answered before it is applied: requests that
    /// start from now on wait for it. The caller's next request will come
    /// before this one is applied, so a follower reads meanwhile.
    pub fn answer_early(&mut self) {
        let mut s = self.gate.state.lock();
        self.gate.grant(&mut s);
        s.early += 1;
        self.early = true;
        OWES_READER.set(false);
    }

    /// Whether a write answered early had yet to be applied when this one
    /// arrived: this one would wait for it.
    pub fn follows_early(&self) -> bool {
        self.follows_early
    }

    /// Waits until the writes that arrived before this one are applied.
    pub fn wait(&self) {
        self.wait_locked(&mut self.gate.state.lock());
    }

    fn wait_locked(&self, s: &mut MutexGuard<'_, State>) {
        if s.applying != self.n {
            // Waiting on other writes is waiting: let someone else read.
            if OWES_READER.replace(false) {
                self.gate.grant(s);
            }
            while s.applying != self.n {
                self.gate.applied.wait(s);
            }
        }
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let mut s = self.gate.state.lock();
        self.wait_locked(&mut s);
        s.applying += 1;
        if self.early {
            s.early -= 1;
        }
        self.gate.applied.notify_all();
    }
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

    /// A request: runs on a worker, which has just left reading.
    type Job = Box<dyn FnOnce(&Arc<Gate>) + Send>;

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
                            job(&gate);
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

        /// Runs `f` as a request other than a write.
        fn submit(&self, f: impl FnOnce() + Send + 'static) {
            self.tx
                .as_ref()
                .unwrap()
                .send(Box::new(move |gate: &Arc<Gate>| {
                    let _turn = gate.enter();
                    f()
                }))
                .unwrap();
        }

        /// Runs `f` as a write, with its place.
        fn submit_write(&self, f: impl FnOnce(&mut Place) + Send + 'static) {
            self.tx
                .as_ref()
                .unwrap()
                .send(Box::new(move |gate: &Arc<Gate>| {
                    let (_turn, mut place) = gate.enter_write();
                    f(&mut place)
                }))
                .unwrap();
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
    fn writes_answered_early_apply_in_order_and_later_requests_see_them() {
        let pool = Pool::new(4);
        let log = Arc::new(Mutex::new(Vec::new()));
        let (answered_tx, answered_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        // A large write, answered at once and applied when released.
        let l = log.clone();
        pool.submit_write(move |place| {
            place.answer_early();
            answered_tx.send(()).unwrap();
            release_rx.recv().unwrap();
            place.wait();
            l.lock().push("first write");
        });
        answered_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        // The caller goes on: a write answered normally, then a read.
        let l = log.clone();
        let (second_tx, second_rx) = mpsc::channel();
        pool.submit_write(move |place| {
            place.wait();
            l.lock().push("second write");
            second_tx.send(()).unwrap();
        });
        let l = log.clone();
        let (read_tx, read_rx) = mpsc::channel();
        pool.submit(move || {
            l.lock().push("read");
            read_tx.send(()).unwrap();
        });
        assert!(
            read_rx.recv_timeout(Duration::from_millis(100)).is_err(),
            "a request ran before the write answered early was applied"
        );
        assert!(log.lock().is_empty());
        release_tx.send(()).unwrap();
        second_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        read_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        // The read came before the second write was answered, so the two may
        // run in either order; both come after the write answered early.
        let log = log.lock().clone();
        assert_eq!(log[0], "first write", "{log:?}");
        assert_eq!(log.len(), 3, "{log:?}");
        assert!(
            log.contains(&"second write") && log.contains(&"read"),
            "{log:?}"
        );
        pool.settle((1, 3));
        pool.stop();
    }

    #[test]
    fn a_request_waits_only_for_writes_answered_before_it_arrived() {
        let pool = Pool::new(4);
        let early_write = |pool: &Pool| {
            let (answered_tx, answered_rx) = mpsc::channel();
            let (release_tx, release_rx) = mpsc::channel::<()>();
            pool.submit_write(move |place| {
                place.answer_early();
                answered_tx.send(()).unwrap();
                release_rx.recv().unwrap();
            });
            answered_rx.recv_timeout(Duration::from_secs(5)).unwrap();
            release_tx
        };
        let first = early_write(&pool);
        let (read_tx, read_rx) = mpsc::channel();
        pool.submit(move || read_tx.send(()).unwrap());
        std::thread::sleep(Duration::from_millis(20));
        // Another caller's write, answered after the read arrived, is still
        // being applied when the first one is done.
        let second = early_write(&pool);
        assert!(
            read_rx.try_recv().is_err(),
            "the read passed an unapplied write"
        );
        first.send(()).unwrap();
        read_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the read waited for a write answered after it arrived");
        second.send(()).unwrap();
        pool.settle((1, 3));
        pool.stop();
    }

    #[test]
    fn a_write_answered_early_leaves_someone_reading() {
        let pool = Pool::new(2);
        pool.call(|| ());
        pool.settle((1, 1));
        let gate = pool.gate.clone();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let (counts_tx, counts_rx) = mpsc::channel();
        pool.submit_write(move |place| {
            place.answer_early();
            counts_tx.send(gate.counts()).unwrap();
            release_rx.recv().unwrap();
        });
        assert_eq!(
            counts_rx.recv_timeout(Duration::from_secs(5)).unwrap(),
            (1, 0)
        );
        // The next write is read at once and waits only for its turn.
        let (seen_tx, seen_rx) = mpsc::channel();
        pool.submit_write(move |place| {
            seen_tx.send(place.follows_early()).unwrap();
        });
        assert!(seen_rx.recv_timeout(Duration::from_secs(5)).unwrap());
        release_tx.send(()).unwrap();
        pool.settle((1, 1));
        pool.stop();
    }

    #[test]
    fn a_frozen_gate_parks_every_worker_and_a_thaw_sends_them_back() {
        let pool = Pool::new(3);
        pool.settle((3, 0));
        pool.gate.freeze();
        assert!(!pool.gate.quiet(), "workers still read");
        // One request per worker draws each out of reading; each parks.
        for _ in 0..3 {
            pool.call(|| ());
        }
        // (The caller hears its answer before the worker's turn ends.)
        let deadline = Instant::now() + Duration::from_secs(2);
        while !pool.gate.quiet() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(pool.gate.quiet());
        pool.settle((0, 0));
        // Nobody takes the next request until the thaw.
        let (tx, rx) = mpsc::channel();
        pool.submit(move || tx.send(()).unwrap());
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
        pool.gate.thaw();
        rx.recv_timeout(Duration::from_secs(2))
            .expect("served after the thaw");
        assert!(!pool.gate.quiet());
        pool.stop();
    }

    #[test]
    fn blocking_outside_a_request_does_nothing() {
        let gate = Gate::new(1);
        blocking();
        assert_eq!(gate.counts(), (1, 0));
    }
}
