//! What has been kept for the newest snapshot, per object: so a change asks
//! the store once per object and epoch, and the next change to the same
//! place costs a hash lookup.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::keys::Obj;

/// What is kept of one object for the newest snapshot.
#[derive(Clone, Debug, Default)]
pub struct Kept {
    pub meta: bool,
    pub list: bool,
    pub gone: bool,
    /// The size when the metadata was kept: bytes past it did not exist at
    /// the snapshot, so overwriting them keeps nothing.
    pub size: Option<u64>,
    /// Byte ranges kept, start to end, disjoint and not touching, in whole
    /// blocks (the last one may end at the size). A map: a file overwritten
    /// at random holds many, and each change looks up and adds in log time.
    ranges: BTreeMap<u64, u64>,
}

impl Kept {
    /// The parts of `[s, e)` not kept yet.
    pub fn gaps(&self, s: u64, e: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        if s >= e {
            return out;
        }
        let mut at = s;
        // The range that starts at or before `s` may cover its beginning.
        let first = self.ranges.range(..=s).next_back().map(|(a, b)| (*a, *b));
        let rest = self
            .ranges
            .range(s.saturating_add(1)..e)
            .map(|(a, b)| (*a, *b));
        for (a, b) in first.into_iter().chain(rest) {
            if b <= at {
                continue;
            }
            if a > at {
                out.push((at, a));
            }
            at = at.max(b);
            if at >= e {
                break;
            }
        }
        if at < e {
            out.push((at, e));
        }
        out
    }

    pub fn add(&mut self, s: u64, e: u64) {
        if s >= e {
            return;
        }
        let (mut lo, mut hi) = (s, e);
        // Merge with every range that overlaps or touches [s, e].
        if let Some((&a, &b)) = self.ranges.range(..=s).next_back() {
            if b >= s {
                lo = a;
                hi = hi.max(b);
            }
        }
        let inside: Vec<(u64, u64)> = self.ranges.range(lo..=e).map(|(a, b)| (*a, *b)).collect();
        for (a, b) in inside {
            self.ranges.remove(&a);
            hi = hi.max(b);
        }
        self.ranges.insert(lo, hi);
    }

    /// The ranges, in order.
    #[cfg(test)]
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        self.ranges.iter().map(|(a, b)| (*a, *b)).collect()
    }
}

/// A name resolved to its object, open: so that overwriting the same file
/// again needs no path walk, no stat and no reopen.
pub struct Resolved {
    pub obj: Obj,
    /// Its kind (`S_IFMT` bits).
    pub fmt: u32,
    /// `O_PATH`.
    pub fd: Arc<OwnedFd>,
    /// `O_RDONLY`, once its bytes were read.
    pub rd: Option<Arc<OwnedFd>>,
}

/// Names resolved at most: past it they are forgotten all at once.
const NAMES: usize = 1024;

#[derive(Default)]
pub struct Memo {
    /// Objects looked at in this epoch (absent: not asked about yet).
    pub objs: HashMap<Obj, Kept>,
    /// Names resolved since the last namespace change (a rename or an
    /// unlink may make a name another object's: every one forgets them).
    names: HashMap<(u32, PathBuf), Resolved>,
    /// The newest snapshot was taken by this process, and `objs` has held
    /// every capture of its epoch since: an object not in it has nothing
    /// kept, and the store need not be asked (a resync's first change to
    /// each of thousands of files asked it in vain).
    pub fresh: bool,
}

impl Memo {
    pub fn clear(&mut self) {
        self.objs.clear();
        self.fresh = false;
        self.forget();
    }

    /// A snapshot was just taken: nothing is kept for its epoch yet.
    pub fn fresh_epoch(&mut self) {
        self.clear();
        self.fresh = true;
    }

    /// A namespace change is about to be made.
    pub fn renamed(&mut self) {
        self.forget();
    }

    /// Forgets the names resolved, closing them elsewhere: one may be the
    /// last hold on a file the change just removed.
    fn forget(&mut self) {
        if !self.names.is_empty() {
            crate::replication::release::later(std::mem::take(&mut self.names));
        }
    }

    pub fn resolved(&mut self, dir: u32, p: &Path) -> Option<&mut Resolved> {
        self.names.get_mut(&(dir, p.to_path_buf()))
    }

    pub fn resolve(&mut self, dir: u32, p: &Path, r: Resolved) {
        if self.names.len() >= NAMES {
            self.forget();
        }
        self.names.insert((dir, p.to_path_buf()), r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_are_what_is_not_kept() {
        let mut k = Kept::default();
        assert_eq!(k.gaps(0, 10), vec![(0, 10)]);
        k.add(2, 4);
        k.add(6, 8);
        assert_eq!(k.gaps(0, 10), vec![(0, 2), (4, 6), (8, 10)]);
        assert_eq!(k.gaps(3, 7), vec![(4, 6)]);
        k.add(4, 6);
        assert_eq!(k.ranges(), vec![(2, 8)]);
        assert_eq!(k.gaps(2, 8), Vec::<(u64, u64)>::new());
        k.add(8, 9);
        assert_eq!(k.ranges(), vec![(2, 9)]);
        k.add(20, 30);
        k.add(0, 1);
        assert_eq!(k.ranges(), vec![(0, 1), (2, 9), (20, 30)]);
        assert_eq!(k.gaps(0, 40), vec![(1, 2), (9, 20), (30, 40)]);
        assert_eq!(k.gaps(25, 28), Vec::<(u64, u64)>::new());
        k.add(1, 25);
        assert_eq!(k.ranges(), vec![(0, 30)]);
    }

    #[test]
    fn ranges_agree_with_a_bitmap() {
        // Random adds against a plain set of blocks.
        let mut seed = 7u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut k = Kept::default();
        let mut bits = [false; 200];
        for _ in 0..400 {
            let s = next(200);
            let e = (s + 1 + next(12)).min(200);
            k.add(s, e);
            bits[s as usize..e as usize]
                .iter_mut()
                .for_each(|b| *b = true);
            let (qs, qe) = (next(200), next(200));
            let (qs, qe) = (qs.min(qe), qs.max(qe));
            let mut want = Vec::new();
            let mut i = qs;
            while i < qe {
                if bits[i as usize] {
                    i += 1;
                    continue;
                }
                let j = (i..qe).find(|j| bits[*j as usize]).unwrap_or(qe);
                want.push((i, j));
                i = j;
            }
            assert_eq!(k.gaps(qs, qe), want);
            let r = k.ranges();
            assert!(r.windows(2).all(|w| w[0].1 < w[1].0), "{r:?}");
        }
    }
}
