//! The state behind the stream's one *order lock*, held from marking to
//! sending, so the order on the wire is the order of the local applies and
//! resync reads of the local tree are consistent with the stream.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use super::clears::Clears;
use super::outlet::Outbound;
use super::times::Owed;
use crate::changelog::FileId;
use crate::replication::activity::Activity;

pub struct Order {
    pub next_seq: u64,
    /// The stream to the peer; `None` while alone.
    pub link: Option<(u64, Outbound)>,
    /// Whether the peer's names match ours (the resync's first pass is
    /// done), so live mutations can be sent: before that one could name a
    /// file the peer does not have yet.
    pub ready: bool,
    pub clears: Clears,
    /// Hot extents of files written while the peer is connected.
    pub activity: Activity,
    /// The last seq of the resync on this link, once it shipped everything
    /// the change log held. Until then namespace records are cleared only by
    /// the resync itself, and the activity log clears nothing.
    pub resync_done: Option<u64>,
    pub last_cool: Instant,
    /// File ids by path, per directory, to spare the change log a lookup
    /// per write; emptied whenever names move.
    pub ids: Vec<HashMap<PathBuf, FileId>>,
    /// Changes whenever names move or go, so a cached path can be trusted
    /// while it stays the same.
    pub names_gen: u64,
    pub owed: Owed,
}

impl Order {
    pub fn new(dirs: usize) -> Self {
        Order {
            next_seq: 1,
            link: None,
            ready: false,
            clears: Clears::default(),
            activity: Activity::default(),
            resync_done: None,
            last_cool: Instant::now(),
            ids: vec![HashMap::new(); dirs],
            names_gen: 0,
            owed: Owed::new(dirs),
        }
    }

    /// Whether the stream is connection `conn`'s.
    pub fn linked(&self, conn: u64) -> bool {
        self.link.as_ref().is_some_and(|(c, _)| *c == conn)
    }

    pub fn conn(&self) -> Option<u64> {
        self.link.as_ref().map(|(c, _)| *c)
    }

    /// Whether live mutations go to the peer now.
    pub fn streaming(&self) -> bool {
        self.link.is_some() && self.ready
    }

    /// Whether the peer holds, durably, everything up to the end of the
    /// resync: then nothing older than the live stream is owed to it.
    pub fn current(&self, durable: u64) -> bool {
        self.resync_done.is_some_and(|d| durable >= d)
    }

    /// Names moved or went: cached ids of `dir` can no longer be trusted.
    pub fn names_moved(&mut self, dir: u32) {
        self.ids[dir as usize].clear();
        self.names_gen += 1;
    }

    /// A new link starts from a clean stream.
    pub fn restart(&mut self, link: (u64, Outbound)) {
        self.link = Some(link);
        self.ready = false;
        self.clears.reset();
        self.resync_done = None;
    }
}
