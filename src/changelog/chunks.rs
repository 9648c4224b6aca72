//! The dirty chunks of one file, by chunk number.
//!
//! Most dirty files have one chunk or a few (a small file written, a file a
//! full sync sends whole): those are kept in a sorted vector of exactly
//! their size. A map per file cost a node of 464 bytes even for one chunk,
//! and a full sync of 300,000 new files held 300 MB on the serving node.
//! Past [`FEW`] chunks, a file's go to a map, where inserting stays cheap
//! however many there are.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;

use super::dirty::Chunk;

/// The most chunks kept in the vector.
const FEW: usize = 16;

#[derive(Debug)]
pub enum Chunks {
    /// Sorted by chunk number, no duplicates.
    Few(Vec<(u64, Chunk)>),
    Many(BTreeMap<u64, Chunk>),
}

impl Default for Chunks {
    fn default() -> Self {
        Chunks::Few(Vec::new())
    }
}

impl Chunks {
    pub fn get(&self, c: u64) -> Option<&Chunk> {
        match self {
            Chunks::Few(v) => v
                .binary_search_by_key(&c, |(k, _)| *k)
                .ok()
                .map(|i| &v[i].1),
            Chunks::Many(m) => m.get(&c),
        }
    }

    pub fn get_mut(&mut self, c: u64) -> Option<&mut Chunk> {
        match self {
            Chunks::Few(v) => v
                .binary_search_by_key(&c, |(k, _)| *k)
                .ok()
                .map(|i| &mut v[i].1),
            Chunks::Many(m) => m.get_mut(&c),
        }
    }

    /// Chunk `c`, made empty if it was not there; whether it was made.
    pub fn get_or_new(&mut self, c: u64) -> (&mut Chunk, bool) {
        if let Chunks::Few(v) = self
            && v.len() >= FEW
            && v.binary_search_by_key(&c, |(k, _)| *k).is_err()
        {
            *self = Chunks::Many(std::mem::take(v).into_iter().collect());
        }
        match self {
            Chunks::Few(v) => match v.binary_search_by_key(&c, |(k, _)| *k) {
                Ok(i) => (&mut v[i].1, false),
                Err(i) => {
                    // Exactly as many as it holds: most stay at one.
                    v.reserve_exact(1);
                    v.insert(i, (c, Chunk::default()));
                    (&mut v[i].1, true)
                }
            },
            Chunks::Many(m) => {
                let mut new = false;
                let ch = m.entry(c).or_insert_with(|| {
                    new = true;
                    Chunk::default()
                });
                (ch, new)
            }
        }
    }

    /// Puts `value` as chunk `c`; the one it replaces, if any.
    pub fn insert(&mut self, c: u64, value: Chunk) -> Option<Chunk> {
        let (slot, new) = self.get_or_new(c);
        let old = std::mem::replace(slot, value);
        (!new).then_some(old)
    }

    pub fn remove(&mut self, c: u64) -> Option<Chunk> {
        match self {
            Chunks::Few(v) => {
                let i = v.binary_search_by_key(&c, |(k, _)| *k).ok()?;
                let (_, ch) = v.remove(i);
                v.shrink_to_fit();
                Some(ch)
            }
            Chunks::Many(m) => m.remove(&c),
        }
    }

    pub fn is_empty(&self) -> bool {
        match self {
            Chunks::Few(v) => v.is_empty(),
            Chunks::Many(m) => m.is_empty(),
        }
    }

    /// The numbers of the chunks present in `r`, ascending.
    pub fn keys_in(&self, r: RangeInclusive<u64>) -> Vec<u64> {
        match self {
            Chunks::Few(v) => v
                .iter()
                .map(|(k, _)| *k)
                .filter(|k| r.contains(k))
                .collect(),
            Chunks::Many(m) => m.range(r).map(|(k, _)| *k).collect(),
        }
    }

    /// Every chunk, ascending.
    pub fn iter(&self) -> Box<dyn Iterator<Item = (u64, &Chunk)> + '_> {
        match self {
            Chunks::Few(v) => Box::new(v.iter().map(|(k, ch)| (*k, ch))),
            Chunks::Many(m) => Box::new(m.iter().map(|(k, ch)| (*k, ch))),
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn chunk(n: u32) -> Chunk {
        Chunk {
            ranges: vec![(0, n)],
            epoch: 0,
        }
    }

    #[test]
    fn it_behaves_as_a_map_before_and_after_it_becomes_one() {
        let mut c = Chunks::default();
        let mut m: BTreeMap<u64, Chunk> = BTreeMap::new();
        let mut rng = StdRng::seed_from_u64(3);
        for step in 0..5_000 {
            // Few keys at first, so that the vector fills and empties, then
            // many, so that it becomes a map.
            let k = rng.random_range(0..if step < 2_000 { 24 } else { 400 });
            match rng.random_range(0..4) {
                0 | 1 => {
                    let n = rng.random_range(1..100);
                    assert_eq!(c.insert(k, chunk(n)), m.insert(k, chunk(n)));
                }
                2 => assert_eq!(c.remove(k), m.remove(&k)),
                _ => {
                    let (ch, new) = c.get_or_new(k);
                    assert_eq!(new, !m.contains_key(&k));
                    ch.epoch += 1;
                    m.entry(k).or_default().epoch += 1;
                }
            }
            assert_eq!(c.get(k), m.get(&k));
            assert_eq!(c.is_empty(), m.is_empty());
            let lo = rng.random_range(0..400);
            let hi = lo + rng.random_range(0..50);
            assert_eq!(
                c.keys_in(lo..=hi),
                m.range(lo..=hi).map(|(k, _)| *k).collect::<Vec<_>>()
            );
            assert!(
                c.iter()
                    .map(|(k, ch)| (k, ch.clone()))
                    .eq(m.iter().map(|(k, ch)| (*k, ch.clone()))),
                "after step {step}"
            );
        }
        assert!(matches!(c, Chunks::Many(_)), "many chunks go to a map");
    }

    #[test]
    fn a_file_of_one_chunk_holds_one() {
        let mut c = Chunks::default();
        c.get_or_new(7).0.ranges.push((0, 10));
        let Chunks::Few(v) = &c else {
            panic!("one chunk is kept in the vector")
        };
        assert_eq!(v.capacity(), 1);
    }
}
