//! Sorted, disjoint, non-adjacent interval lists (`[start, end)`).

use std::ops::Range;

/// Adds `[s, e)` to `set`, merging with overlapping or adjacent intervals.
pub fn insert(set: &mut Vec<(u32, u32)>, s: u32, e: u32) {
    if s >= e {
        return;
    }
    // First interval whose end reaches s (adjacent counts), last whose start <= e.
    let lo = set.partition_point(|&(_, ie)| ie < s);
    let hi = set.partition_point(|&(is, _)| is <= e);
    if lo == hi {
        set.insert(lo, (s, e));
        return;
    }
    let ns = s.min(set[lo].0);
    let ne = e.max(set[hi - 1].1);
    set.splice(lo..hi, std::iter::once((ns, ne)));
}

/// Removes `[s, e)` from `set`, splitting intervals as needed.
pub fn remove(set: &mut Vec<(u32, u32)>, s: u32, e: u32) {
    if s >= e {
        return;
    }
    let lo = set.partition_point(|&(_, ie)| ie <= s);
    let hi = set.partition_point(|&(is, _)| is < e);
    if lo >= hi {
        return;
    }
    let mut keep = Vec::with_capacity(2);
    if set[lo].0 < s {
        keep.push((set[lo].0, s));
    }
    if set[hi - 1].1 > e {
        keep.push((e, set[hi - 1].1));
    }
    set.splice(lo..hi, keep);
}

/// Total length of the intervals.
pub fn total(set: &[(u32, u32)]) -> u64 {
    set.iter().map(|&(s, e)| u64::from(e - s)).sum()
}

/// Appends `r` to a sorted list of absolute ranges, merging with the last one
/// when they touch (used to join ranges across chunk boundaries).
pub fn push_merged(out: &mut Vec<Range<u64>>, r: Range<u64>) {
    match out.last_mut() {
        Some(last) if last.end >= r.start => last.end = last.end.max(r.end),
        _ => out.push(r),
    }
}
