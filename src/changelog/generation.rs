//! Data generations: random ids naming stretches of history.

use std::io::Read;

use serde::{Deserialize, Serialize};

use super::error::{ChangeLogError, Result};

/// How many earlier generation ids are remembered.
pub const GENERATION_HISTORY: usize = 16;

/// The current data generation and the ones before it, newest first
/// (like DRBD's data generation UUIDs). Two nodes compare these on connect:
/// equal `current` means in sync; one node's `current` in the other's
/// `history` means that node is behind; neither means split brain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generation {
    pub current: u64,
    /// Earlier ids, newest first, at most [`GENERATION_HISTORY`].
    pub history: Vec<u64>,
}

impl Generation {
    /// A first generation with a fresh random id and no history.
    pub fn fresh() -> Result<Self> {
        Ok(Generation {
            current: random_id()?,
            history: Vec::new(),
        })
    }

    /// The successor: `current` moves to the front of the history (which
    /// keeps the newest [`GENERATION_HISTORY`]) and a new random id is picked.
    pub fn next(&self) -> Result<Self> {
        let mut history = Vec::with_capacity(GENERATION_HISTORY);
        history.push(self.current);
        history.extend(self.history.iter().copied());
        history.truncate(GENERATION_HISTORY);
        let mut current = random_id()?;
        while current == self.current || history.contains(&current) {
            current = random_id()?;
        }
        Ok(Generation { current, history })
    }
}

impl Generation {
    /// `theirs`, with this generation's ids after its own history, so a
    /// later comparison still finds either line.
    pub fn adopted(&self, theirs: &Generation) -> Generation {
        let mut history = theirs.history.clone();
        for id in std::iter::once(self.current).chain(self.history.iter().copied()) {
            if id != theirs.current && !history.contains(&id) {
                history.push(id);
            }
        }
        history.truncate(GENERATION_HISTORY);
        Generation {
            current: theirs.current,
            history,
        }
    }
}

/// A non-zero random u64 from /dev/urandom.
pub fn random_id() -> Result<u64> {
    let mut f = std::fs::File::open("/dev/urandom").map_err(ChangeLogError::Random)?;
    loop {
        let mut b = [0u8; 8];
        f.read_exact(&mut b).map_err(ChangeLogError::Random)?;
        let v = u64::from_le_bytes(b);
        if v != 0 {
            return Ok(v);
        }
    }
}
