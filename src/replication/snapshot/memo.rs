//! What has been kept for the newest snapshot, per object: so a change asks
//! the store once per object and epoch, and the next change to the same
//! place costs a hash lookup.

use std::collections::HashMap;

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
    /// Byte ranges kept, sorted and disjoint, in whole blocks (the last one
    /// may end at the size).
    pub ranges: Vec<(u64, u64)>,
}

impl Kept {
    /// The parts of `[s, e)` not kept yet.
    pub fn gaps(&self, s: u64, e: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut at = s;
        for &(a, b) in &self.ranges {
            if b <= at {
                continue;
            }
            if a >= e {
                break;
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
        let mut merged = (s, e);
        let mut out = Vec::with_capacity(self.ranges.len() + 1);
        for &(a, b) in &self.ranges {
            if b < merged.0 || a > merged.1 {
                out.push((a, b));
            } else {
                merged = (merged.0.min(a), merged.1.max(b));
            }
        }
        out.push(merged);
        out.sort_unstable();
        self.ranges = out;
    }
}

#[derive(Default)]
pub struct Memo {
    /// Objects looked at in this epoch (absent: not asked about yet).
    pub objs: HashMap<Obj, Kept>,
}

impl Memo {
    pub fn clear(&mut self) {
        self.objs.clear();
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
        assert_eq!(k.ranges, vec![(2, 8)]);
        assert_eq!(k.gaps(2, 8), Vec::<(u64, u64)>::new());
        k.add(8, 9);
        assert_eq!(k.ranges, vec![(2, 9)]);
    }
}
