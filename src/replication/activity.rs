//! The activity log: while the peer is connected, writes do not touch the
//! change log one by one. Like DRBD's activity log, a whole *extent* is marked
//! durably the first time it is written ("heated"); later writes to a hot
//! extent cost nothing there. An extent cools (its mark is cleared) once every
//! write to it is durable on the peer and it has been idle a while. After a
//! crash of the primary, hot extents are resynchronised whole.
//!
//! When the link drops, each hot extent is narrowed to the exact ranges the
//! peer had not made durable, so a resync after a disconnect still ships about
//! what was written, not whole extents.

use std::collections::HashMap;
use std::ops::Range;
use std::time::{Duration, Instant};

use crate::changelog::FileId;

/// Size of one extent of the activity log.
pub const EXTENT: u64 = 4 << 20;
/// How long an extent stays hot after its last write.
pub const IDLE: Duration = Duration::from_secs(2);
/// More hot extents than this cool as soon as they are durable, idle or not.
pub const MAX_HOT: usize = 1024;

type Key = (u32, FileId, u64);

struct Extent {
    last_seq: u64,
    last_used: Instant,
    /// Writes sent but maybe not yet durable on the peer: (range, seq).
    pending: Vec<(Range<u64>, u64)>,
}

#[derive(Default)]
pub struct Activity {
    hot: HashMap<Key, Extent>,
}

fn extents(off: u64, len: u64) -> Range<u64> {
    if len == 0 {
        return 0..0;
    }
    off / EXTENT..(off + len - 1) / EXTENT + 1
}

impl Activity {
    /// Extents of `[off, off+len)` that are not hot: the caller marks each
    /// whole, durably, then calls [`heat`](Self::heat).
    pub fn cold(&self, dir: u32, id: FileId, off: u64, len: u64) -> Vec<u64> {
        extents(off, len)
            .filter(|e| !self.hot.contains_key(&(dir, id, *e)))
            .collect()
    }

    pub fn heat(&mut self, dir: u32, id: FileId, ext: u64, now: Instant) {
        self.hot.insert(
            (dir, id, ext),
            Extent {
                last_seq: 0,
                last_used: now,
                pending: Vec::new(),
            },
        );
    }

    /// A write to `[off, off+len)` went out as `seq`.
    pub fn sent(&mut self, dir: u32, id: FileId, off: u64, len: u64, seq: u64, now: Instant) {
        for e in extents(off, len) {
            if let Some(x) = self.hot.get_mut(&(dir, id, e)) {
                let (s, end) = ((e * EXTENT).max(off), ((e + 1) * EXTENT).min(off + len));
                x.pending.push((s..end, seq));
                x.last_seq = seq;
                x.last_used = now;
            }
        }
    }

    /// The hot extents of `id` that reach `from` or past it.
    pub fn hot_from(&self, dir: u32, id: FileId, from: u64) -> Vec<u64> {
        let first = from / EXTENT;
        self.hot
            .keys()
            .filter(|(d, i, e)| *d == dir && *i == id && *e >= first)
            .map(|(_, _, e)| *e)
            .collect()
    }

    /// The hot extents of `from` become `to`'s (another name of the same
    /// file took over its records).
    pub fn rekey(&mut self, dir: u32, from: FileId, to: FileId) {
        for e in self.hot_from(dir, from, 0) {
            let x = self.hot.remove(&(dir, from, e)).expect("listed");
            match self.hot.get_mut(&(dir, to, e)) {
                Some(y) => {
                    y.pending.extend(x.pending);
                    y.last_seq = y.last_seq.max(x.last_seq);
                    y.last_used = y.last_used.max(x.last_used);
                }
                None => {
                    self.hot.insert((dir, to, e), x);
                }
            }
        }
    }

    /// Whether `[start, end)` of `id` lies in a hot extent (the activity log,
    /// not the exact dirty index, owns it until the extent cools).
    pub fn hot_ranges(&self, dir: u32, id: FileId, r: &Range<u64>) -> Vec<Range<u64>> {
        extents(r.start, r.end - r.start)
            .filter(|e| self.hot.contains_key(&(dir, id, *e)))
            .map(|e| e * EXTENT..(e + 1) * EXTENT)
            .collect()
    }

    /// The peer is durable up to `durable`: forgets what it holds, and
    /// returns the extents that cool now (to be cleared whole).
    pub fn cool(&mut self, durable: u64, now: Instant) -> Vec<(u32, FileId, Range<u64>)> {
        let crowded = self.hot.len() > MAX_HOT;
        let mut out = Vec::new();
        self.hot.retain(|(dir, id, e), x| {
            x.pending.retain(|(_, s)| *s > durable);
            let done = x.pending.is_empty() && x.last_seq <= durable;
            if done && (crowded || now.duration_since(x.last_used) >= IDLE) {
                out.push((*dir, *id, *e * EXTENT..(*e + 1) * EXTENT));
                false
            } else {
                true
            }
        });
        out
    }

    /// The link dropped with the peer durable up to `durable`: every hot
    /// extent goes, returning for each the parts that may be cleared (all of
    /// it but the writes the peer may not have).
    pub fn narrow(&mut self, durable: u64) -> Vec<(u32, FileId, Vec<Range<u64>>)> {
        let mut out = Vec::new();
        for ((dir, id, e), x) in self.hot.drain() {
            let mut keep: Vec<Range<u64>> = x
                .pending
                .into_iter()
                .filter(|(_, s)| *s > durable)
                .map(|(r, _)| r)
                .collect();
            keep.sort_by_key(|r| r.start);
            let mut clear = Vec::new();
            let mut at = e * EXTENT;
            for r in keep {
                if r.start > at {
                    clear.push(at..r.start);
                }
                at = at.max(r.end);
            }
            if at < (e + 1) * EXTENT {
                clear.push(at..(e + 1) * EXTENT);
            }
            out.push((dir, id, clear));
        }
        out
    }

    /// Drops every hot extent without clearing anything (their whole marks
    /// stay in the change log).
    pub fn forget(&mut self) {
        self.hot.clear();
    }

    /// The hot extents, as (dir, file, extent number).
    pub fn snapshot(&self) -> std::collections::HashSet<Key> {
        self.hot.keys().copied().collect()
    }

    pub fn len(&self) -> usize {
        self.hot.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hot.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_heats_its_extents_once() {
        let mut a = Activity::default();
        let now = Instant::now();
        assert_eq!(a.cold(0, 7, EXTENT - 10, 20), vec![0, 1]);
        a.heat(0, 7, 0, now);
        assert_eq!(a.cold(0, 7, EXTENT - 10, 20), vec![1]);
        a.heat(0, 7, 1, now);
        assert!(a.cold(0, 7, 0, 2 * EXTENT).is_empty());
        assert_eq!(a.cold(1, 7, 0, 1), vec![0], "another directory");
        assert!(a.cold(0, 7, 0, 0).is_empty());
    }

    #[test]
    fn extents_cool_only_when_durable_and_idle() {
        let mut a = Activity::default();
        let t0 = Instant::now();
        a.heat(0, 1, 0, t0);
        a.sent(0, 1, 100, 10, 5, t0);
        assert!(a.cool(4, t0 + IDLE * 2).is_empty(), "seq 5 not durable");
        assert!(a.cool(5, t0).is_empty(), "not idle");
        assert_eq!(a.cool(5, t0 + IDLE), vec![(0, 1, 0..EXTENT)]);
        assert!(a.is_empty());
    }

    #[test]
    fn a_dropped_link_keeps_exactly_what_the_peer_may_lack() {
        let mut a = Activity::default();
        let t0 = Instant::now();
        a.heat(0, 1, 0, t0);
        a.sent(0, 1, 0, 4096, 1, t0);
        a.sent(0, 1, 8192, 4096, 2, t0);
        a.sent(0, 1, 20000, 100, 3, t0);
        // Durable up to 1: the writes of seq 2 and 3 stay marked.
        let n = a.narrow(1);
        assert_eq!(n, vec![(0, 1, vec![0..8192, 12288..20000, 20100..EXTENT])]);
        assert!(a.is_empty());
    }
}
