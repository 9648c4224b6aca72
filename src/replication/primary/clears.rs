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
    ranges: HashMap<(u32, FileId), Vec<Range<u64>>>,
    sizes: HashSet<(u32, FileId)>,
}

impl Bucket {
    fn add(&mut self, c: Clear) {
        match &c {
            Clear::Range(d, id, r) => self.ranges.entry((*d, *id)).or_default().push(r.clone()),
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
                        out.extend(
                            subtract(r, self.open.ranges.get(&(d, id)))
                                .into_iter()
                                .flat_map(|r| subtract(r, Some(&hot)))
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

/// `r` minus every range in `minus`.
pub fn subtract(r: Range<u64>, minus: Option<&Vec<Range<u64>>>) -> Vec<Range<u64>> {
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
