//! What the change log may forget once the peer made it durable.
//!
//! The clears of the mutations sent in one stretch of the stream go into
//! the open bucket. A bucket is sealed at the last sequence number sent;
//! once the peer is durable past it, its clears are due, minus whatever the
//! open bucket marked again since (a range written again after it was sent
//! must stay marked until that later write is durable too). Pure
//! bookkeeping: the caller applies what [`Clears::due`] returns.

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use crate::changelog::FileId;

/// One thing the change log may forget.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Clear {
    /// Dirty bytes of a file.
    Range(u32, FileId, Range<u64>),
    /// A file's recorded size change.
    Size(u32, FileId),
    /// Namespace records up to a log sequence number.
    NsUpto(u32, u64),
}

#[derive(Default)]
struct Bucket {
    items: Vec<Clear>,
    /// Per file, sorted and merged: a resync's bucket holds thousands of
    /// ranges of one file, each looked up against the open bucket's.
    ranges: HashMap<(u32, FileId), Vec<Range<u64>>>,
    sizes: HashSet<(u32, FileId)>,
}

impl Bucket {
    fn add(&mut self, c: Clear) {
        match &c {
            Clear::Range(d, id, r) => insert(self.ranges.entry((*d, *id)).or_default(), r.clone()),
            Clear::Size(d, id) => {
                self.sizes.insert((*d, *id));
            }
            Clear::NsUpto(..) => {}
        }
        self.items.push(c);
    }
}

/// The open bucket and the sealed one, if any.
#[derive(Default)]
pub struct Clears {
    open: Bucket,
    sealed: Option<(u64, Bucket)>,
}

impl Clears {
    /// Earned by a mutation being sent now.
    pub fn add(&mut self, c: Clear) {
        self.open.add(c);
    }

    /// Nothing waits to be cleared.
    pub fn is_empty(&self) -> bool {
        self.open.items.is_empty() && self.sealed.is_none()
    }

    /// A new link: nothing sent on the old one will be acknowledged.
    pub fn reset(&mut self) {
        *self = Clears::default();
    }

    /// What may be forgotten now that the peer is durable up to `durable`,
    /// `last_sent` being the last sequence number sent. `hot` gives the
    /// ranges of a file that must stay marked whatever was sent (the hot
    /// extents of the activity log).
    pub fn due(
        &mut self,
        durable: u64,
        last_sent: u64,
        hot: impl Fn(u32, FileId, &Range<u64>) -> Vec<Range<u64>>,
    ) -> Vec<Clear> {
        let mut out = Vec::new();
        loop {
            if self.sealed.is_none() && !self.open.items.is_empty() {
                self.sealed = Some((last_sent, std::mem::take(&mut self.open)));
            }
            match &self.sealed {
                Some((upto, _)) if *upto <= durable => {}
                _ => return out,
            }
            let (_, bucket) = self.sealed.take().expect("checked");
            for c in bucket.items {
                match c {
                    Clear::Range(d, id, r) => {
                        let hot = hot(d, id, &r);
                        let again = self.open.ranges.get(&(d, id)).map_or(&[][..], |v| v);
                        out.extend(
                            subtract_sorted(r, again)
                                .into_iter()
                                .flat_map(|r| subtract_sorted(r, &hot))
                                .map(|r| Clear::Range(d, id, r)),
                        );
                    }
                    Clear::Size(d, id) if self.open.sizes.contains(&(d, id)) => {}
                    c => out.push(c),
                }
            }
        }
    }
}

/// Adds `r` to the sorted, merged list `v`, merging it with what it
/// touches. A resync's ranges come in order: then it is a push.
fn insert(v: &mut Vec<Range<u64>>, r: Range<u64>) {
    if r.start >= r.end {
        return;
    }
    let first = v.partition_point(|m| m.end < r.start);
    let last = v.partition_point(|m| m.start <= r.end);
    if first == last {
        v.insert(first, r);
        return;
    }
    let merged = v[first].start.min(r.start)..v[last - 1].end.max(r.end);
    v.splice(first..last, [merged]);
}

/// `r` minus the sorted, disjoint ranges `minus`: only those that overlap
/// it are looked at.
pub fn subtract_sorted(r: Range<u64>, minus: &[Range<u64>]) -> Vec<Range<u64>> {
    let mut out = Vec::new();
    let mut at = r.start;
    for m in &minus[minus.partition_point(|m| m.end <= r.start)..] {
        if m.start >= r.end {
            break;
        }
        if m.start > at {
            out.push(at..m.start);
        }
        at = at.max(m.end);
    }
    if at < r.end {
        out.push(at..r.end);
    }
    out
}

/// `r` minus every range in `minus`, in any order: the model the sorted
/// subtraction is checked against.
#[cfg(test)]
fn subtract(r: Range<u64>, minus: Option<&Vec<Range<u64>>>) -> Vec<Range<u64>> {
    let mut out = vec![r];
    for m in minus.into_iter().flatten() {
        out = out
            .into_iter()
            .flat_map(|o| {
                let mut v = Vec::new();
                if m.start > o.start {
                    v.push(o.start..m.start.min(o.end));
                }
                if m.end < o.end {
                    v.push(m.end.max(o.start)..o.end);
                }
                v.into_iter().filter(|x| x.start < x.end)
            })
            .collect();
    }
    out
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn id(n: u64) -> FileId {
        n
    }

    #[test]
    fn subtracting_ranges_keeps_only_what_was_not_marked_again() {
        assert_eq!(subtract(0..100, None), vec![0..100]);
        let one = |r: Range<u64>| vec![r];
        assert_eq!(subtract(0..100, Some(&one(10..20))), vec![0..10, 20..100]);
        assert_eq!(subtract(0..100, Some(&one(0..100))), vec![]);
        assert_eq!(subtract(0..100, Some(&vec![50..200, 0..10])), vec![10..50]);
        assert_eq!(subtract(10..20, Some(&vec![0..5, 30..40])), vec![10..20]);
    }

    #[test]
    fn sorted_lists_merge_on_insert_and_subtract_like_any_list() {
        let mut v = Vec::new();
        for r in [
            50..60,
            10..20,
            30..40,
            20..25,
            55..70,
            0..5,
            80..90,
            5..6,
            100..100,
        ] {
            insert(&mut v, r);
        }
        assert_eq!(v, vec![0..6, 10..25, 30..40, 50..70, 80..90]);
        insert(&mut v, 24..85);
        assert_eq!(v, vec![0..6, 10..90]);
        // Against the plain subtraction, over many ranges and lists.
        let mut rng = StdRng::seed_from_u64(7);
        let mut next = |n: u64| rng.random_range(0..n);
        for _ in 0..2000 {
            let (mut sorted, mut plain) = (Vec::new(), Vec::new());
            for _ in 0..next(12) {
                let s = next(1000);
                let r = s..s + 1 + next(120);
                insert(&mut sorted, r.clone());
                plain.push(r);
            }
            assert!(
                sorted.windows(2).all(|w| w[0].end < w[1].start),
                "{sorted:?}"
            );
            let s = next(1000);
            let r = s..s + 1 + next(400);
            assert_eq!(
                subtract_sorted(r.clone(), &sorted),
                subtract(r.clone(), Some(&plain)),
                "{r:?} minus {plain:?}"
            );
        }
    }

    #[test]
    fn a_bucket_is_due_once_the_peer_is_durable_past_its_last_send() {
        let mut c = Clears::default();
        let none = |_: u32, _: FileId, _: &Range<u64>| Vec::new();
        c.add(Clear::Range(0, id(1), 0..10));
        c.add(Clear::NsUpto(0, 7));
        assert_eq!(c.due(4, 5, none), vec![], "sealed at 5, durable at 4");
        // Marked again after the seal: that part stays.
        c.add(Clear::Range(0, id(1), 5..8));
        c.add(Clear::Size(0, id(2)));
        assert_eq!(
            c.due(5, 6, none),
            vec![
                Clear::Range(0, id(1), 0..5),
                Clear::Range(0, id(1), 8..10),
                Clear::NsUpto(0, 7)
            ]
        );
        assert_eq!(
            c.due(6, 6, none),
            vec![Clear::Range(0, id(1), 5..8), Clear::Size(0, id(2))]
        );
        assert_eq!(c.due(100, 100, none), vec![]);
    }

    #[test]
    fn hot_ranges_and_sizes_marked_again_stay() {
        let mut c = Clears::default();
        c.add(Clear::Range(0, id(1), 0..100));
        c.add(Clear::Size(0, id(1)));
        assert_eq!(c.due(0, 1, |_, _, _| Vec::new()), vec![]);
        c.add(Clear::Size(0, id(1)));
        let hot = |_: u32, _: FileId, _: &Range<u64>| vec![40..60];
        assert_eq!(
            c.due(1, 2, hot),
            vec![
                Clear::Range(0, id(1), 0..40),
                Clear::Range(0, id(1), 60..100)
            ],
            "the size is owed again by the open bucket"
        );
        c.reset();
        assert_eq!(c.due(10, 10, |_, _, _| Vec::new()), vec![]);
    }
}
