//! The change log: what may differ on the peer, recorded durably.
//!
//! It is the heart of fast resync after a node was away (DESIGN.md §3). It
//! holds four things:
//!
//! 1. **Stable file ids.** Every file or directory seen gets a [`FileId`]
//!    that survives renames. The map is stored both ways, id -> (parent id,
//!    name) and (parent id, name) -> id, so renaming a directory with a
//!    million files below it is one record update; a path is derived by
//!    walking parents up to [`ROOT_ID`] (whose name is empty). Paths are
//!    relative to the module root; `""` is the root. Removing a name (or
//!    renaming over it) drops that id and its dirty data: the namespace log
//!    records the change, and resync recreates the file from the source
//!    tree. Descendants of a dropped directory become unreachable
//!    ([`ChangeLog::path_of`] answers `None`). The map keeps **one name per
//!    id**: a hard link is recorded as [`NsChange::Link`]; its second name
//!    gets its own id when first [`ensure`](ChangeLog::ensure)d. Dirty bytes
//!    marked under either id reach the same inode when shipped by path.
//! 2. **The dirty index.** Byte ranges that may differ on the peer, keyed by
//!    (file id, chunk number) for fixed power-of-two chunks (default
//!    [`DEFAULT_CHUNK_SIZE`]), exact to the byte inside a chunk, so a resync
//!    ships about the bytes written. Truncation is recorded as a size change
//!    ([`ChangeLog::dirty_size`]).
//! 3. **Namespace changes** since the peer was last in sync: an ordered log
//!    of [`NsChange`] with monotonic sequence numbers.
//! 4. **Generations** ([`Generation`]), like DRBD's data generation UUIDs.
//!
//! # Durability and cost (RocksDB)
//!
//! Marking must not cost one fsync per write; like DRBD's activity log, the
//! set of *chunks* is kept durable, the exact ranges inside them are cheap:
//!
//! - Time is divided into **epochs**; [`ChangeLog::flush`] ends one (it syncs
//!   the WAL, then durably records "epoch E flushed"). Every chunk record
//!   carries the epoch of its last synced write.
//! - The **first mark of a chunk in an epoch** (including a chunk not dirty
//!   before) writes its record with a synced write before `mark` returns.
//!   Later marks of that chunk in the same epoch update the exact ranges in
//!   memory and write the record unsynced; they reach disk with the next
//!   synced write (the WAL is sequential) or the next `flush`.
//! - On open after a crash (kill -9, power loss), a chunk whose record's
//!   epoch is newer than the last flushed epoch may have lost exact-range
//!   updates, so it is widened to the **whole chunk**; a record from a
//!   flushed epoch is exact (any later change to it would have been synced
//!   with a newer epoch). So every chunk that had any mark before the crash
//!   is still known dirty, at worst at chunk granularity, without scanning
//!   the tree. A clean close is a `flush` (done on drop), after which all
//!   ranges are exact.
//! - Clears (the peer made bytes durable) and truncations write unsynced:
//!   losing one only makes the dirty set larger, never smaller.
//! - Name-map changes are written unsynced and become durable with the next
//!   synced write; callers log the namespace change with
//!   [`ChangeLog::log_ns`], which is synced, right after changing names, and
//!   any synced `mark` of a new id also persists the id's creation (WAL
//!   order). Size changes, namespace-log records and generations are synced.
//!
//! # On-disk layout (RocksDB)
//!
//! One column family per record kind; integers are big-endian so iteration
//! is ordered:
//!
//! | cf | key | value |
//! |---|---|---|
//! | `names` | parent id u64 ‖ name bytes | id u64 |
//! | `ids` | id u64 | parent id u64 ‖ name bytes |
//! | `dirty` | id u64 ‖ chunk u64 | epoch u64 ‖ (start u32 ‖ end u32)* |
//! | `sizes` | id u64 | smallest truncated length u64 |
//! | `nslog` | seq u64 | serde_json [`NsChange`] |
//! | `meta` | `chunk_size`, `next_id`, `next_seq`, `flushed_epoch` | u64 |
//! | `meta` | `generation` | serde_json [`Generation`] |
//! | `meta` | `ns_sent_upto` | u64 |
//! | `meta` | `compare_needed` | u64 (1 when set) |

mod chunks;
mod dirty;
mod error;
mod generation;
mod keys;
mod mem;
mod names;
mod ns;
mod ranges;
mod rocks;
#[cfg(test)]
mod tests;

use std::ops::Range;
use std::path::{Path, PathBuf};

pub use error::{ChangeLogError, Result};
pub use generation::{GENERATION_HISTORY, Generation, random_id};
pub use mem::MemChangeLog;
pub use ns::NsChange;
pub use rocks::RocksChangeLog;

/// A stable file id; survives renames. Ids are never reused.
pub type FileId = u64;

/// The id of the module root (its path is `""`).
pub const ROOT_ID: FileId = 1;

/// The default dirty-index chunk size: 64 KiB.
pub const DEFAULT_CHUNK_SIZE: u64 = 64 * 1024;

/// The change log's operations; see the module docs for semantics and
/// durability.
pub trait ChangeLog: Send + Sync {
    /// The dirty-index chunk size (a power of two).
    fn chunk_size(&self) -> u64;

    // ---- file ids ----

    /// The id of `path`, if it has one.
    fn resolve(&self, path: &Path) -> Result<Option<FileId>>;
    /// The id of `path`, creating ids for missing components.
    fn ensure(&self, path: &Path) -> Result<FileId>;
    /// The current path of `id`; `None` if it was dropped or is unreachable.
    fn path_of(&self, id: FileId) -> Result<Option<PathBuf>>;
    /// Moves the name `from` to `to` (parents of `to` get ids if missing).
    /// An id `to` had is dropped with its dirty data. Returns the moved id,
    /// `None` if `from` had none.
    fn rename(&self, from: &Path, to: &Path) -> Result<Option<FileId>>;
    /// Swaps two names (renameat2 RENAME_EXCHANGE).
    fn exchange(&self, a: &Path, b: &Path) -> Result<()>;
    /// Drops the name `path`, its id and the id's dirty data. Returns the id.
    fn remove(&self, path: &Path) -> Result<Option<FileId>>;

    // ---- dirty index ----

    /// Records that `[offset, offset+len)` of `id` may differ on the peer.
    /// Durable (at least at chunk granularity) when it returns.
    fn mark(&self, id: FileId, offset: u64, len: u64) -> Result<()>;
    /// The dirty ranges of `id`: merged, sorted, absolute offsets.
    fn dirty(&self, id: FileId) -> Result<Vec<Range<u64>>>;
    /// Ids with dirty bytes or a size change, ascending.
    fn dirty_files(&self) -> Result<Vec<FileId>>;
    /// The total number of dirty bytes.
    fn dirty_bytes(&self) -> Result<u64>;
    /// How many files have dirty bytes or a size change.
    fn dirty_count(&self) -> Result<u64>;
    /// The peer made `range` of `id` durable: forget exactly that range.
    fn clear(&self, id: FileId, range: Range<u64>) -> Result<()>;
    /// [`clear`](Self::clear) of each range, written at once.
    fn clear_many(&self, clears: &[(FileId, Range<u64>)]) -> Result<()> {
        clears
            .iter()
            .try_for_each(|(id, r)| self.clear(*id, r.clone()))
    }
    /// `id` was truncated to `new_len`: dirty ranges past it are dropped and
    /// the size change is recorded (see [`dirty_size`](Self::dirty_size)).
    fn truncate(&self, id: FileId, new_len: u64) -> Result<()>;
    /// The smallest length `id` was truncated to since the size change was
    /// last cleared: bytes from there to the current end may differ.
    fn dirty_size(&self, id: FileId) -> Result<Option<u64>>;
    /// The peer applied the size of `id`: forget its size change.
    fn clear_size(&self, id: FileId) -> Result<()>;

    // ---- namespace log ----

    /// Appends a namespace change (synced); returns its sequence number
    /// (monotonic, never reused, starting at 1).
    fn log_ns(&self, change: NsChange) -> Result<u64>;
    /// The changes with a sequence number greater than `seq`, in order.
    fn ns_since(&self, seq: u64) -> Result<Vec<(u64, NsChange)>>;
    /// Forgets the changes with a sequence number up to `seq` inclusive.
    fn clear_ns_upto(&self, seq: u64) -> Result<()>;
    /// The changes up to this sequence number may have reached the peer
    /// (`u64::MAX`: every change, also those still to come — the state of a
    /// new log, and of one whose link was up when the node stopped).
    fn ns_sent_upto(&self) -> Result<u64>;
    /// Records (durably) whether changes logged from now on may reach the
    /// peer: `true` while a link carries them, `false` once it is gone (the
    /// changes logged so far stay counted as sent).
    fn ns_sending(&self, sending: bool) -> Result<()>;

    /// Whether the next resync must compare the trees by content: records
    /// were lost that no name could keep (a hard-linked file changed under a
    /// name that went, its other names unknown).
    fn compare_needed(&self) -> Result<bool>;
    /// Sets or clears (durably) [`compare_needed`](Self::compare_needed).
    fn set_compare_needed(&self, needed: bool) -> Result<()>;

    // ---- generations ----

    /// The current generation and its history.
    fn generation(&self) -> Result<Generation>;
    /// Starts a new generation (persisted); returns it.
    fn new_generation(&self) -> Result<Generation>;
    /// Takes the peer's generation after a completed resync (persisted):
    /// the data is now the peer's, so is its history.
    fn adopt_generation(&self, g: &Generation) -> Result<()>;

    /// Makes everything recorded so far durable and exact.
    fn flush(&self) -> Result<()>;

    // ---- batches (one durable write for many records) ----

    /// Marks many ranges at once; durable when it returns, like [`mark`](Self::mark).
    fn mark_many(&self, marks: &[(FileId, u64, u64)]) -> Result<()> {
        marks
            .iter()
            .try_for_each(|(id, off, len)| self.mark(*id, *off, *len))
    }
    /// Appends many namespace changes with one durable write; returns the
    /// sequence number of the last (`None` for none).
    fn log_ns_many(&self, changes: Vec<NsChange>) -> Result<Option<u64>> {
        let mut last = None;
        for c in changes {
            last = Some(self.log_ns(c)?);
        }
        Ok(last)
    }
}
