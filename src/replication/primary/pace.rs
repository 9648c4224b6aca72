//! The pace of a resync, so that a returning node's catch-up leaves the
//! link and the disks to the application:
//! - at most `resync_max_rate` bytes a second (changed at runtime by
//!   `tandem resync M --rate`), a token bucket holding a tenth of a
//!   second's bytes: the rate holds over any second, and idle time gives no
//!   burst beyond it;
//! - while the application writes (a change of its own under way or done
//!   in the last [`BUSY_HOLD`]), at most `resync_min_rate`, in pieces of at most
//!   [`BUSY_PIECE`] with as few of them ahead of the application's
//!   changes in the stream as reach that minimum (the peer applies in
//!   order: a write queued behind 64 MiB waits for them): from
//!   [`BUSY_WINDOW`], widened while the rate shipped falls short of the
//!   minimum (a round to the peer takes longer when its disk is busy), up
//!   to [`BUSY_WINDOW_MAX`]; its names pass has at most [`BUSY_NAMES`]
//!   name changes ahead, and makes names at that minimum too (each counted
//!   as a few KiB: the peer's disk writes the files it makes back with
//!   the application's data); as soon as it stops, the resync takes the
//!   rest again;
//! - or paused by an operator, which outlives the daemon (a file in the
//!   module's state directory) and never holds back a failover: a paused
//!   resync ends with its link like any other.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

/// How long after the application's last change the resync still yields.
pub const BUSY_HOLD: Duration = Duration::from_millis(250);
/// Resync data allowed ahead of the peer's acknowledgement while the
/// application writes (otherwise `stream::RESYNC_WINDOW`).
pub const BUSY_WINDOW: u64 = 256 << 10;
/// Name changes the names pass has ahead of the peer while the application
/// writes: making a file costs the peer far more than writing 4 KiB, and
/// each change of the application waits behind those ahead of it.
const BUSY_NAMES: u64 = 8;
/// And otherwise: about a quarter second of the peer's work, so that an
/// application that starts writing meanwhile soon has the peer's ear.
const NAMES_AHEAD: u64 = 1024;
/// The most the window is widened to while the application writes.
pub const BUSY_WINDOW_MAX: u64 = 4 << 20;
/// How often the window while the application writes is reconsidered.
const FILL_SPAN: Duration = Duration::from_millis(500);
/// How long the resync runs free before that window is learnt anew.
const FILL_FORGET: Duration = Duration::from_secs(5);
/// The largest resync piece while the application writes: a change of the
/// application that arrives while the peer writes one waits that long.
pub const BUSY_PIECE: u64 = 128 << 10;
/// The span the current rate is measured over.
const METER_SPAN: Duration = Duration::from_secs(2);

/// What the resync is doing, as the status tells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Running,
    /// The application writes: held to `resync_min_rate`.
    Yielding,
    Paused,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Yielding => "yielding",
            State::Paused => "paused",
        }
    }
}

pub struct Pace {
    /// Bytes a second at most; 0: no cap.
    max: AtomicU64,
    /// Bytes a second while the application writes; 0: none.
    min: u64,
    /// When an operator paused it (Unix ms); 0: not paused.
    paused_at: AtomicU64,
    /// Where the pause is kept across restarts (none in unit tests).
    held: Option<PathBuf>,
    bucket: Mutex<Bucket>,
    meter: Mutex<Meter>,
    fill: Mutex<Fill>,
}

/// The window while the application writes, sized to what reaches the
/// minimum: the peer acknowledges a window a round at a time, so the rate
/// is at most the window over the round, and a round grows with the load
/// on the peer's disk.
struct Fill {
    window: u64,
    /// Since when the bytes and the waits below were counted, all while
    /// yielding.
    since: Option<Instant>,
    shipped: u64,
    /// Time spent waiting for the window.
    stalled: Duration,
    /// Since when the resync runs free.
    free_since: Option<Instant>,
}

impl Default for Fill {
    fn default() -> Self {
        Self {
            window: BUSY_WINDOW,
            since: None,
            shipped: 0,
            stalled: Duration::ZERO,
            free_since: None,
        }
    }
}

impl Fill {
    /// The resync waited `d` for the window.
    fn stalled(&mut self, d: Duration) {
        if self.since.is_some() {
            self.stalled += d;
        }
    }

    /// `n` bytes shipped at `now`, toward `target` bytes a second if
    /// yielding (None: running free, which is not measured).
    fn shipped(&mut self, now: Instant, n: u64, target: Option<u64>) {
        let Some(target) = target.filter(|&t| t > 0) else {
            (self.since, self.shipped, self.stalled) = (None, 0, Duration::ZERO);
            let free = *self.free_since.get_or_insert(now);
            if now.saturating_duration_since(free) >= FILL_FORGET {
                self.window = BUSY_WINDOW;
            }
            return;
        };
        self.free_since = None;
        let Some(since) = self.since else {
            self.since = Some(now);
            return;
        };
        self.shipped += n;
        let span = now.saturating_duration_since(since);
        if span < FILL_SPAN {
            return;
        }
        let rate = self.shipped as f64 / span.as_secs_f64();
        let stalled = self.stalled.as_secs_f64() / span.as_secs_f64();
        // Short of the minimum while waiting on the window: a wider one.
        // Hardly ever waiting on it: the rate holds it back, so a narrower
        // one, fewer bytes ahead of the application's changes.
        if rate < target as f64 * 0.95 && stalled > 0.1 {
            self.window = (self.window * 3 / 2).min(BUSY_WINDOW_MAX);
        } else if stalled < 0.02 {
            self.window = (self.window * 9 / 10).max(BUSY_WINDOW);
        }
        (self.since, self.shipped, self.stalled) = (Some(now), 0, Duration::ZERO);
    }
}

/// Bytes that may go now (negative: owed), as of `at`.
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// Takes `n` bytes at `rate` as of `now`: how long to wait before
    /// sending them.
    fn debit(&mut self, now: Instant, n: u64, rate: u64) -> Duration {
        let rate = rate as f64;
        let burst = rate / 10.0;
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst) - n as f64;
        self.at = now;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / rate)
        }
    }
}

/// When the application last changed something: a time, not a count, so
/// that changes made long before the resync looks (while the peer was
/// away) are not taken for writing now. A change still under way (waiting
/// behind a round of the resync's names, say) is one being made now.
pub struct LastChange {
    base: Instant,
    /// Nanoseconds after `base`, plus one; 0: never.
    nanos: AtomicU64,
    /// Changes begun and not yet done.
    under_way: AtomicU64,
}

impl Default for LastChange {
    fn default() -> Self {
        Self {
            base: Instant::now(),
            nanos: AtomicU64::new(0),
            under_way: AtomicU64::new(0),
        }
    }
}

/// A change of the application under way (see [`LastChange::begin`]).
pub struct UnderWay<'a>(&'a LastChange);

impl Drop for UnderWay<'_> {
    fn drop(&mut self) {
        self.0.touch();
        self.0.under_way.fetch_sub(1, Ordering::Relaxed);
    }
}

impl LastChange {
    /// The application begins a change; it is done when the guard goes.
    pub fn begin(&self) -> UnderWay<'_> {
        self.under_way.fetch_add(1, Ordering::Relaxed);
        self.touch();
        UnderWay(self)
    }

    fn touch(&self) {
        let n = self.base.elapsed().as_nanos() as u64 + 1;
        self.nanos.store(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> Option<Instant> {
        if self.under_way.load(Ordering::Relaxed) > 0 {
            return Some(Instant::now());
        }
        let n = self.nanos.load(Ordering::Relaxed);
        (n > 0).then(|| self.base + Duration::from_nanos(n - 1))
    }
}

/// Whether a change at `last` makes the resync yield at `now`.
fn busy_at(last: Option<Instant>, now: Instant) -> bool {
    last.is_some_and(|t| now.saturating_duration_since(t) < BUSY_HOLD)
}

/// Bytes shipped, sampled: the rate over the last [`METER_SPAN`].
#[derive(Default)]
struct Meter {
    total: u64,
    samples: std::collections::VecDeque<(Instant, u64)>,
}

impl Meter {
    fn add(&mut self, now: Instant, n: u64) {
        self.total += n;
        // One sample per 50 ms is plenty for a 2 s span.
        match self.samples.back_mut() {
            Some((at, t)) if now.duration_since(*at) < Duration::from_millis(50) => *t = self.total,
            _ => self.samples.push_back((now, self.total)),
        }
        self.prune(now);
    }

    fn prune(&mut self, now: Instant) {
        while self.samples.len() > 1 && now.duration_since(self.samples[1].0) >= METER_SPAN {
            self.samples.pop_front();
        }
    }

    fn rate(&mut self, now: Instant) -> u64 {
        self.prune(now);
        let Some(&(first, at_first)) = self.samples.front() else {
            return 0;
        };
        let secs = now.duration_since(first).as_secs_f64();
        if secs < 0.2 {
            return 0;
        }
        // Nothing shipped for a whole span: stopped.
        if now.duration_since(first) >= METER_SPAN && self.samples.len() == 1 {
            return 0;
        }
        ((self.total - at_first) as f64 / secs) as u64
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Pace {
    /// A pace of at most `max` and, while the application writes, `min`
    /// bytes a second; paused if `held` (a file) says so.
    pub fn new(max: u64, min: u64, held: Option<PathBuf>) -> Self {
        let paused_at = held
            .as_deref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .map(|s| s.trim().parse::<u64>().unwrap_or(1).max(1))
            .unwrap_or(0);
        Self {
            max: AtomicU64::new(max),
            min,
            paused_at: AtomicU64::new(paused_at),
            held,
            bucket: Mutex::new(Bucket {
                tokens: 0.0,
                at: Instant::now(),
            }),
            meter: Mutex::default(),
            fill: Mutex::default(),
        }
    }

    /// Bytes a second at most (0: no cap).
    pub fn rate(&self) -> u64 {
        self.max.load(Ordering::Relaxed)
    }

    /// Bytes a second while the application writes.
    pub fn min_rate(&self) -> u64 {
        self.min
    }

    pub fn set_rate(&self, rate: u64) {
        self.max.store(rate, Ordering::Relaxed);
    }

    pub fn paused(&self) -> bool {
        self.paused_since().is_some()
    }

    /// When it was paused (Unix ms), if it is.
    pub fn paused_since(&self) -> Option<u64> {
        Some(self.paused_at.load(Ordering::Relaxed)).filter(|&t| t > 0)
    }

    /// Pauses or resumes, kept across restarts: refused, changing nothing,
    /// if that cannot be written down.
    pub fn set_paused(&self, paused: bool) -> std::io::Result<()> {
        if paused == self.paused() {
            return Ok(());
        }
        let at = now_ms();
        if let Some(p) = &self.held {
            if paused {
                crate::durable::write_atomically(p, at.to_string().as_bytes())?;
            } else {
                match std::fs::remove_file(p) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
        }
        self.paused_at
            .store(if paused { at } else { 0 }, Ordering::Relaxed);
        Ok(())
    }

    /// Whether the application wrote lately, given when it last changed
    /// something.
    pub fn busy(&self, last: Option<Instant>) -> bool {
        busy_at(last, Instant::now())
    }

    /// How much resync data may be ahead of the peer's acknowledgement.
    pub fn window(&self, last: Option<Instant>, otherwise: u64) -> u64 {
        if self.busy(last) {
            self.fill.lock().window.min(otherwise)
        } else {
            otherwise
        }
    }

    /// How many name changes the names pass may have ahead of the peer.
    pub fn names_ahead(&self, last: Option<Instant>) -> u64 {
        if self.busy(last) {
            BUSY_NAMES
        } else {
            NAMES_AHEAD
        }
    }

    /// The resync waited `d` for its window (see [`Fill`]).
    pub fn stalled(&self, d: Duration) {
        self.fill.lock().stalled(d);
    }

    /// The largest piece the resync may ship next.
    pub fn piece(&self, last: Option<Instant>, otherwise: u64) -> u64 {
        if self.busy(last) {
            BUSY_PIECE.min(otherwise)
        } else {
            otherwise
        }
    }

    /// What the resync is doing now, given when the application last
    /// changed something.
    pub fn state(&self, last: Option<Instant>) -> State {
        if self.paused() {
            State::Paused
        } else if self.busy(last) {
            State::Yielding
        } else {
            State::Running
        }
    }

    /// The rate shipped over the last two seconds.
    pub fn measured(&self) -> u64 {
        self.meter.lock().rate(Instant::now())
    }

    /// Waits before the next piece: while paused and, with no minimum,
    /// while the application writes (`last`: when it last changed
    /// something, read anew), as long as `going` says the resync is still wanted (a
    /// lost link ends it).
    pub fn hold(&self, last: impl Fn() -> Option<Instant>, going: impl Fn() -> bool) {
        while self.paused() && going() {
            std::thread::sleep(Duration::from_millis(50));
        }
        while self.min == 0 && self.busy(last()) && going() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Counts `n` bytes shipped and waits until the rate allows more: the
    /// cap, lowered to the minimum while the application writes.
    pub fn take(&self, n: u64, last: Option<Instant>) {
        let busy = self.busy(last);
        let rate = self.effective(busy);
        let now = Instant::now();
        self.meter.lock().add(now, n);
        self.fill.lock().shipped(now, n, busy.then_some(rate));
        if rate > 0 {
            self.wait_for(n, rate);
        }
    }

    /// Takes `n` bytes from the bucket at `rate` and waits until they may go.
    fn wait_for(&self, n: u64, rate: u64) {
        let wait = self.bucket.lock().debit(Instant::now(), n, rate);
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }

    /// The names pass shipped `n` name changes: while the application
    /// writes, waits as long as the minimum says, each counted as `cost`
    /// bytes (making a file costs the peer's disk about what writing
    /// that much does). Not counted against the cap, nor in the rate
    /// shown: a name is a few dozen bytes on the link.
    pub fn take_names(&self, n: u64, cost: u64, last: Option<Instant>) {
        if self.busy(last) && self.min > 0 {
            self.wait_for(n * cost, self.min);
        }
    }

    /// The cap in force (0: none).
    fn effective(&self, busy: bool) -> u64 {
        let max = self.rate();
        match (busy, max) {
            (false, max) => max,
            (true, 0) => self.min,
            (true, max) => self.min.min(max),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_holds_over_time_and_idle_time_gives_no_burst() {
        let t0 = Instant::now();
        let mut b = Bucket {
            tokens: 0.0,
            at: t0,
        };
        let rate = 10 << 20;
        // Pieces of 1 MiB sent as soon as allowed: 100 of them take 10 s.
        let mut now = t0;
        for _ in 0..100 {
            now += b.debit(now, 1 << 20, rate);
        }
        let took = now.duration_since(t0).as_secs_f64();
        assert!((took - 10.0).abs() < 0.11, "{took}");
        // A minute idle: at most a tenth of a second's bytes at once.
        now += Duration::from_secs(60);
        assert_eq!(b.debit(now, 1 << 20, rate), Duration::ZERO);
        assert!(b.debit(now, 1 << 20, rate) > Duration::from_millis(90));
    }

    #[test]
    fn no_cap_never_waits() {
        let p = Pace::new(0, 1 << 20, None);
        let t = Instant::now();
        for _ in 0..1000 {
            p.hold(|| None, || true);
            p.take(1 << 30, None);
        }
        assert!(t.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn names_are_held_to_the_minimum_only_while_the_application_writes() {
        let p = Pace::new(1 << 20, 4 << 20, None);
        let t = Instant::now();
        // 1 MiB of names at 4 MiB/s, less the bucket's tenth of a second.
        p.take_names(256, 4 << 10, Some(Instant::now()));
        let held = t.elapsed();
        assert!(held >= Duration::from_millis(140), "{held:?}");
        let t = Instant::now();
        p.take_names(256, 4 << 10, None);
        // Held, it would wait about as long again.
        assert!(t.elapsed() < Duration::from_millis(100), "idle: not held");
        assert_eq!(p.meter.lock().total, 0, "names are not bytes shown");
        let none = Pace::new(0, 0, None);
        let t = Instant::now();
        none.take_names(256, 4 << 10, Some(Instant::now()));
        assert!(
            t.elapsed() < Duration::from_millis(100),
            "no minimum: the hold waits"
        );
    }

    #[test]
    fn a_pause_holds_until_resumed_or_no_longer_wanted() {
        let p = std::sync::Arc::new(Pace::new(0, 0, None));
        p.set_paused(true).unwrap();
        let q = p.clone();
        let t = Instant::now();
        let waiter = std::thread::spawn(move || q.hold(|| None, || true));
        std::thread::sleep(Duration::from_millis(300));
        assert!(!waiter.is_finished(), "paused");
        assert_eq!(p.state(None), State::Paused);
        p.set_paused(false).unwrap();
        waiter.join().unwrap();
        assert!(t.elapsed() >= Duration::from_millis(300));
        // A link gone ends the wait though still paused.
        p.set_paused(true).unwrap();
        let t = Instant::now();
        p.hold(|| None, || false);
        assert!(t.elapsed() < Duration::from_millis(50));
    }

    #[test]
    fn a_pause_is_kept_in_its_file_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let held = dir.path().join("resync-paused");
        let p = Pace::new(0, 0, Some(held.clone()));
        assert!(!p.paused());
        p.set_paused(true).unwrap();
        let since = p.paused_since().unwrap();
        let again = Pace::new(0, 0, Some(held.clone()));
        assert_eq!(again.paused_since(), Some(since));
        again.set_paused(false).unwrap();
        assert!(!held.exists());
        assert!(!Pace::new(0, 0, Some(held.clone())).paused());
        // A pause that cannot be written down is refused and not taken.
        let nowhere = Pace::new(0, 0, Some(dir.path().join("gone/resync-paused")));
        assert!(nowhere.set_paused(true).is_err());
        assert!(!nowhere.paused());
    }

    #[test]
    fn live_changes_hold_the_resync_to_its_minimum_until_they_stop() {
        let t0 = Instant::now();
        assert!(!busy_at(None, t0), "no change yet");
        assert!(busy_at(Some(t0), t0));
        assert!(busy_at(Some(t0), t0 + BUSY_HOLD / 2), "held a moment after");
        assert!(!busy_at(Some(t0), t0 + BUSY_HOLD), "then free again");
        let last = LastChange::default();
        assert_eq!(last.get(), None);
        let before = Instant::now();
        let change = last.begin();
        std::thread::sleep(BUSY_HOLD * 2);
        // Under way (held up behind the resync): the application is busy.
        assert!(busy_at(last.get(), Instant::now()), "a change under way");
        drop(change);
        let at = last.get().unwrap();
        assert!(
            at >= before + BUSY_HOLD * 2 && at <= Instant::now(),
            "{at:?}"
        );
        assert!(busy_at(last.get(), Instant::now()), "just done");
        let now = Some(Instant::now());
        let p = Pace::new(0, 5 << 20, None);
        assert_eq!(p.effective(false), 0);
        assert_eq!(p.effective(true), 5 << 20);
        p.set_rate(2 << 20);
        assert_eq!(p.effective(true), 2 << 20, "the cap is never exceeded");
        assert_eq!(p.effective(false), 2 << 20);
        assert_eq!(p.window(None, 64 << 20), 64 << 20);
        assert_eq!(p.window(now, 64 << 20), BUSY_WINDOW);
        assert_eq!(p.piece(now, 1 << 20), BUSY_PIECE);
        assert_eq!(p.piece(now, 4096), 4096);
        assert_eq!(p.names_ahead(now), BUSY_NAMES);
        assert_eq!(p.names_ahead(None), NAMES_AHEAD);
        assert_eq!(p.state(now), State::Yielding);
        assert_eq!(p.state(Some(t0 - BUSY_HOLD)), State::Running);
    }

    /// What `Fill` reaches against a peer whose round takes `round` plus
    /// the window at `apply` bytes a second, the rate held to `target` by
    /// the bucket: the window at the end and the rate over the last second
    /// of `secs`.
    fn fill_against(
        f: &mut Fill,
        t0: Instant,
        secs: u64,
        round: Duration,
        apply: f64,
        target: u64,
    ) -> (u64, f64) {
        let (mut now, end) = (t0, t0 + Duration::from_secs(secs));
        let mut last_second = 0u64;
        while now < end {
            // A window a round, or what the bucket allows if less: then
            // the resync waits on the bucket, not on the window.
            let round = round.as_secs_f64() + f.window as f64 / apply;
            let by_rate = f.window as f64 / target as f64;
            let took = round.max(by_rate);
            f.stalled(Duration::from_secs_f64(took - by_rate));
            now += Duration::from_secs_f64(took);
            f.shipped(now, f.window, Some(target));
            if end.saturating_duration_since(now) < Duration::from_secs(1) {
                last_second += f.window;
            }
        }
        (f.window, last_second as f64)
    }

    #[test]
    fn the_window_while_yielding_widens_to_reach_the_minimum_and_no_further() {
        let t0 = Instant::now();
        let (min, peer) = (12u64 << 20, 200.0 * (1 << 20) as f64);
        // A busy peer (33 ms a round): 256 KiB a round is 7.6 MiB/s.
        let mut f = Fill::default();
        let (w, rate) = fill_against(&mut f, t0, 10, Duration::from_millis(33), peer, min);
        assert!(w > BUSY_WINDOW && w < BUSY_WINDOW_MAX, "{w}");
        assert!(
            rate >= min as f64 * 0.95,
            "{:.1} MiB/s",
            rate / (1 << 20) as f64
        );
        // A quick peer needs no more than the least window.
        let mut quick = Fill::default();
        let (w, rate) = fill_against(&mut quick, t0, 10, Duration::from_millis(2), peer, min);
        assert_eq!(w, BUSY_WINDOW);
        assert!(rate >= min as f64 * 0.95);
        // A peer that cannot reach it: the window stops at its bound.
        let mut slow = Fill::default();
        let (w, _) = fill_against(&mut slow, t0, 30, Duration::from_secs(1), peer, min);
        assert_eq!(w, BUSY_WINDOW_MAX);
        // A lower target (a cap set meanwhile) narrows it again.
        let (w, _) = fill_against(
            &mut slow,
            t0 + Duration::from_secs(30),
            200,
            Duration::from_millis(2),
            peer,
            1 << 20,
        );
        assert_eq!(w, BUSY_WINDOW);
        // Running free for a while: learnt anew next time.
        let mut f2 = Fill {
            window: BUSY_WINDOW_MAX,
            ..Fill::default()
        };
        f2.shipped(t0, 1 << 20, None);
        f2.shipped(t0 + FILL_FORGET / 2, 1 << 20, None);
        assert_eq!(
            f2.window, BUSY_WINDOW_MAX,
            "a pause of the application's writes"
        );
        f2.shipped(t0 + FILL_FORGET, 1 << 20, None);
        assert_eq!(f2.window, BUSY_WINDOW);
    }

    #[test]
    fn the_meter_reads_the_last_two_seconds() {
        let t0 = Instant::now();
        let mut m = Meter::default();
        for i in 0..40 {
            m.add(t0 + Duration::from_millis(100 * i), 1 << 20);
        }
        // 10 MiB/s over the last 2 s.
        let r = m.rate(t0 + Duration::from_millis(4000)) as f64 / (1 << 20) as f64;
        assert!((r - 10.0).abs() < 1.0, "{r}");
        assert_eq!(m.rate(t0 + Duration::from_secs(60)), 0, "stopped");
    }
}
