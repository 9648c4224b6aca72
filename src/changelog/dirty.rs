//! The in-memory dirty index shared by both implementations.
//!
//! Per file id, a map chunk number -> [`Chunk`] (exact `[start, end)` byte
//! intervals relative to the chunk), plus the smallest length the file was
//! truncated to. Operations report which chunks they touched so that a
//! persistent implementation can write exactly those records.

use std::collections::BTreeMap;
use std::ops::Range;

use super::FileId;
use super::chunks::Chunks;
use super::error::{ChangeLogError, Result};
use super::ranges;

/// The dirty bytes of one chunk.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Chunk {
    /// Sorted, disjoint, non-adjacent `[start, end)` offsets inside the chunk.
    pub ranges: Vec<(u32, u32)>,
    /// Epoch of the last *synced* write of this chunk's record (RocksDB only;
    /// always 0 in memory). See the module docs on durability.
    pub epoch: u64,
}

/// What [`DirtyIndex::mark`] did to one chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Touched {
    pub chunk: u64,
    /// The chunk's record was not written durably in the current epoch: the
    /// write must be synced before `mark` returns.
    pub needs_sync: bool,
}

/// Dirty byte ranges and size changes of all files.
#[derive(Debug)]
pub struct DirtyIndex {
    chunk_size: u64,
    shift: u32,
    files: BTreeMap<FileId, Chunks>,
    /// File id -> smallest length it was truncated to since last cleared.
    sizes: BTreeMap<FileId, u64>,
    /// The dirty bytes of all files, and how many files have dirty bytes or
    /// a size change, kept as they change: a status asked for while a
    /// million files wait for a full sync does not walk them.
    bytes: u64,
    count: u64,
}

/// Checks that `chunk_size` is a power of two in 1..=2^31.
pub fn check_chunk_size(chunk_size: u64) -> Result<()> {
    if chunk_size.is_power_of_two() && chunk_size <= 1 << 31 {
        Ok(())
    } else {
        Err(ChangeLogError::InvalidChunkSize(chunk_size))
    }
}

fn end_of(offset: u64, len: u64) -> Result<u64> {
    offset
        .checked_add(len)
        .ok_or(ChangeLogError::InvalidRange { offset, len })
}

impl DirtyIndex {
    pub fn new(chunk_size: u64) -> Result<Self> {
        check_chunk_size(chunk_size)?;
        Ok(DirtyIndex {
            chunk_size,
            shift: chunk_size.trailing_zeros(),
            files: BTreeMap::new(),
            sizes: BTreeMap::new(),
            bytes: 0,
            count: 0,
        })
    }

    pub fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    /// Splits absolute `[start, end)` into (chunk, start in chunk, end in chunk).
    fn pieces(&self, start: u64, end: u64) -> impl Iterator<Item = (u64, u32, u32)> + use<> {
        let (cs, shift) = (self.chunk_size, self.shift);
        let first = start >> shift;
        let last = if end > start { (end - 1) >> shift } else { 0 };
        let n = if end > start { last - first + 1 } else { 0 };
        (0..n).map(move |i| {
            let c = first + i;
            let base = c << shift;
            let s = start.max(base) - base;
            let e = end.min(base.saturating_add(cs)) - base;
            (c, s as u32, e as u32)
        })
    }

    /// Marks `[offset, offset+len)` dirty. `epoch` is the caller's current
    /// durability epoch (0 for a purely in-memory log).
    pub fn mark(&mut self, id: FileId, offset: u64, len: u64, epoch: u64) -> Result<Vec<Touched>> {
        let end = end_of(offset, len)?;
        let mut touched = Vec::new();
        let pieces: Vec<_> = self.pieces(offset, end).collect();
        if pieces.is_empty() {
            return Ok(touched);
        }
        if !self.files.contains_key(&id) && !self.sizes.contains_key(&id) {
            self.count += 1;
        }
        let file = self.files.entry(id).or_default();
        for (c, s, e) in pieces {
            let (chunk, new) = file.get_or_new(c);
            let needs_sync = new || chunk.epoch != epoch;
            chunk.epoch = epoch;
            let before = ranges::total(&chunk.ranges);
            ranges::insert(&mut chunk.ranges, s, e);
            self.bytes += ranges::total(&chunk.ranges) - before;
            touched.push(Touched {
                chunk: c,
                needs_sync,
            });
        }
        Ok(touched)
    }

    /// Removes `range` from the dirty set; returns the chunks touched.
    pub fn clear(&mut self, id: FileId, range: Range<u64>) -> Vec<u64> {
        let mut touched = Vec::new();
        if range.start >= range.end {
            return touched;
        }
        let (cs, shift) = (self.chunk_size, self.shift);
        let Some(file) = self.files.get_mut(&id) else {
            return touched;
        };
        // Only the chunks that exist: the range may be huge.
        let present = file.keys_in(range.start >> shift..=(range.end - 1) >> shift);
        for c in present {
            let base = c << shift;
            let s = (range.start.max(base) - base) as u32;
            let e = (range.end.min(base.saturating_add(cs)) - base) as u32;
            if let Some(ch) = file.get_mut(c) {
                let before = ch.ranges.len();
                let total = ranges::total(&ch.ranges);
                ranges::remove(&mut ch.ranges, s, e);
                let after = ranges::total(&ch.ranges);
                self.bytes -= total - after;
                if ch.ranges.len() != before || after != total {
                    touched.push(c);
                }
                if ch.ranges.is_empty() {
                    file.remove(c);
                }
            }
        }
        if file.is_empty() {
            self.files.remove(&id);
            self.count -= u64::from(!self.sizes.contains_key(&id));
        }
        touched
    }

    /// Drops ranges at or past `new_len` and records the size change (the
    /// smallest length since the last [`clear_size`](Self::clear_size)).
    /// Returns the chunks touched and the recorded size.
    pub fn truncate(&mut self, id: FileId, new_len: u64) -> (Vec<u64>, u64) {
        let mut touched = Vec::new();
        if let Some(file) = self.files.get_mut(&id) {
            let first = new_len >> self.shift;
            let base = first << self.shift;
            let affected = file.keys_in(first..=u64::MAX);
            for c in affected {
                if c == first && new_len > base {
                    let ch = file.get_mut(c).expect("listed");
                    let total = ranges::total(&ch.ranges);
                    ranges::remove(
                        &mut ch.ranges,
                        (new_len - base) as u32,
                        self.chunk_size as u32,
                    );
                    let after = ranges::total(&ch.ranges);
                    self.bytes -= total - after;
                    if after != total {
                        touched.push(c);
                    }
                    if ch.ranges.is_empty() {
                        file.remove(c);
                    }
                } else {
                    let ch = file.remove(c).expect("listed");
                    self.bytes -= ranges::total(&ch.ranges);
                    touched.push(c);
                }
            }
            if file.is_empty() {
                self.files.remove(&id);
            }
        } else if !self.sizes.contains_key(&id) {
            self.count += 1;
        }
        let size = self.sizes.entry(id).or_insert(new_len);
        *size = (*size).min(new_len);
        (touched, *size)
    }

    /// Forgets the size change of `id`; true if there was one.
    pub fn clear_size(&mut self, id: FileId) -> bool {
        let had = self.sizes.remove(&id).is_some();
        self.count -= u64::from(had && !self.files.contains_key(&id));
        had
    }

    /// The recorded size change of `id`.
    pub fn size(&self, id: FileId) -> Option<u64> {
        self.sizes.get(&id).copied()
    }

    /// Forgets everything about `id`; returns its chunks and whether it had
    /// a size change.
    pub fn remove_file(&mut self, id: FileId) -> (Vec<u64>, bool) {
        let file = self.files.remove(&id);
        let sized = self.sizes.remove(&id).is_some();
        self.count -= u64::from(file.is_some() || sized);
        let chunks = file
            .map(|f| {
                self.bytes -= f
                    .iter()
                    .map(|(_, ch)| ranges::total(&ch.ranges))
                    .sum::<u64>();
                f.iter().map(|(c, _)| c).collect()
            })
            .unwrap_or_default();
        (chunks, sized)
    }

    pub fn get(&self, id: FileId, chunk: u64) -> Option<&Chunk> {
        self.files.get(&id).and_then(|f| f.get(chunk))
    }

    /// The record of `chunk` of `id` was not written: its next mark writes
    /// it durably again.
    pub fn unsynced(&mut self, id: FileId, chunk: u64) {
        if let Some(ch) = self.files.get_mut(&id).and_then(|f| f.get_mut(chunk)) {
            ch.epoch = 0;
        }
    }

    /// Inserts a chunk as loaded from storage.
    pub fn load_chunk(&mut self, id: FileId, chunk: u64, value: Chunk) {
        if value.ranges.is_empty() {
            return;
        }
        if !self.files.contains_key(&id) && !self.sizes.contains_key(&id) {
            self.count += 1;
        }
        self.bytes += ranges::total(&value.ranges);
        if let Some(old) = self.files.entry(id).or_default().insert(chunk, value) {
            self.bytes -= ranges::total(&old.ranges);
        }
    }

    /// Inserts a size change as loaded from storage.
    pub fn load_size(&mut self, id: FileId, size: u64) {
        if self.sizes.insert(id, size).is_none() && !self.files.contains_key(&id) {
            self.count += 1;
        }
    }

    /// Merged, sorted absolute dirty ranges of `id`.
    pub fn dirty(&self, id: FileId) -> Vec<Range<u64>> {
        let mut out = Vec::new();
        if let Some(file) = self.files.get(&id) {
            for (c, ch) in file.iter() {
                let base = c << self.shift;
                for &(s, e) in &ch.ranges {
                    ranges::push_merged(&mut out, base + u64::from(s)..base + u64::from(e));
                }
            }
        }
        out
    }

    /// Ids with dirty bytes or a size change, ascending.
    pub fn dirty_files(&self) -> Vec<FileId> {
        let mut ids: Vec<FileId> = self
            .files
            .keys()
            .chain(self.sizes.keys())
            .copied()
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    pub fn dirty_bytes(&self) -> u64 {
        self.bytes
    }

    /// How many files have dirty bytes or a size change.
    pub fn dirty_count(&self) -> u64 {
        self.count
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// The counts walked out of the maps, as they were computed before
    /// they were kept.
    fn walked(d: &DirtyIndex) -> (u64, u64) {
        let bytes = d
            .files
            .values()
            .flat_map(|f| f.iter().map(|(_, ch)| ch))
            .map(|ch| ranges::total(&ch.ranges))
            .sum();
        (bytes, d.dirty_files().len() as u64)
    }

    #[test]
    fn the_kept_counts_agree_with_the_maps_after_every_change() {
        let mut d = DirtyIndex::new(64 << 10).unwrap();
        // A fixed sequence of every kind of change, over few files so that
        // they meet.
        let mut rng = StdRng::seed_from_u64(7);
        let mut next = |n: u64| rng.random_range(0..n);
        for step in 0..20_000 {
            let id: FileId = next(8) + 1;
            let off = next(1 << 20);
            let len = next(300 << 10);
            match next(8) {
                0..=2 => {
                    d.mark(id, off, len, 1).unwrap();
                }
                3 | 4 => {
                    d.clear(id, off..off + len);
                }
                5 => {
                    d.truncate(id, off);
                }
                6 => {
                    d.clear_size(id);
                }
                _ if next(4) == 0 => {
                    d.remove_file(id);
                }
                _ => {
                    let ch = Chunk {
                        ranges: vec![(0, len as u32 % (64 << 10) + 1)],
                        epoch: 0,
                    };
                    d.load_chunk(id, off >> 16, ch);
                    d.load_size(id, off);
                }
            }
            assert_eq!(
                (d.dirty_bytes(), d.dirty_count()),
                walked(&d),
                "after step {step}"
            );
        }
    }
}
