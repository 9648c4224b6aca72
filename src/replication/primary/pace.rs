//! The pace of a resync: at most `resync_max_rate` bytes a second (changed
//! at runtime by `tandem resync M --rate`), or paused, so that a returning
//! node's catch-up leaves the link and the disks to the application. A
//! token bucket holding a tenth of a second's bytes: the rate holds over any
//! second, and a short pause gives no burst beyond it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

pub struct Pace {
    /// Bytes a second; 0: no cap.
    rate: AtomicU64,
    /// Nothing is shipped until resumed.
    paused: AtomicBool,
    bucket: Mutex<Bucket>,
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

impl Pace {
    pub fn new(rate: u64) -> Self {
        Self {
            rate: AtomicU64::new(rate),
            paused: AtomicBool::new(false),
            bucket: Mutex::new(Bucket {
                tokens: 0.0,
                at: Instant::now(),
            }),
        }
    }

    /// Bytes a second (0: no cap).
    pub fn rate(&self) -> u64 {
        self.rate.load(Ordering::Relaxed)
    }

    pub fn set_rate(&self, rate: u64) {
        self.rate.store(rate, Ordering::Relaxed);
    }

    pub fn paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::Relaxed);
    }

    /// Waits until `n` more bytes may go: while paused (as long as `going`
    /// says the resync is still wanted: a lost link ends it), then for the
    /// rate.
    pub fn take(&self, n: u64, going: impl Fn() -> bool) {
        while self.paused() && going() {
            std::thread::sleep(Duration::from_millis(50));
        }
        let rate = self.rate();
        if rate == 0 {
            return;
        }
        let wait = self.bucket.lock().debit(Instant::now(), n, rate);
        if !wait.is_zero() {
            std::thread::sleep(wait);
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
        let p = Pace::new(0);
        let t = Instant::now();
        for _ in 0..1000 {
            p.take(1 << 30, || true);
        }
        assert!(t.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn a_pause_holds_until_resumed_or_no_longer_wanted() {
        let p = std::sync::Arc::new(Pace::new(0));
        p.set_paused(true);
        let q = p.clone();
        let t = Instant::now();
        let waiter = std::thread::spawn(move || q.take(1, || true));
        std::thread::sleep(Duration::from_millis(300));
        assert!(!waiter.is_finished(), "paused");
        p.set_paused(false);
        waiter.join().unwrap();
        assert!(t.elapsed() >= Duration::from_millis(300));
        // A link gone ends the wait though still paused.
        p.set_paused(true);
        let t = Instant::now();
        p.take(1, || false);
        assert!(t.elapsed() < Duration::from_millis(50));
    }
}
