//! Data generations as the machine compares them: which of two copies is
//! newer, or whether both changed on their own.

use serde::{Deserialize, Serialize};

/// A data generation as the machine compares it (see `changelog::Generation`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gen {
    pub current: u64,
    pub history: Vec<u64>,
    /// Never served nor synchronised: its data counts for nothing.
    pub fresh: bool,
}

impl std::fmt::Display for Gen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.current)?;
        if self.fresh {
            write!(f, " (fresh)")?;
        }
        Ok(())
    }
}

/// How two generations relate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    Same,
    /// The other side has everything this side has, and more.
    Behind,
    Ahead,
    /// Both changed on their own since they last agreed.
    Split,
}

pub fn compare(mine: &Gen, theirs: &Gen) -> Order {
    match (mine.fresh, theirs.fresh) {
        (true, true) => return Order::Same,
        (true, false) => return Order::Behind,
        (false, true) => return Order::Ahead,
        _ => {}
    }
    if mine.current == theirs.current {
        Order::Same
    } else if theirs.history.contains(&mine.current) {
        Order::Behind
    } else if mine.history.contains(&theirs.current) {
        Order::Ahead
    } else {
        Order::Split
    }
}
