//! When captures reach the disk.
//!
//! A capture is written to the store's log before the change it keeps is
//! applied: it is in the kernel's cache then, so a crash of the daemon (kill
//! -9, a panic) loses nothing. Syncing it there too would make every first
//! overwrite wait for a disk flush (a page writer ran at 0.09x of its speed
//! without a snapshot), so by default captures are synced in the background
//! ([`Durability::settle`], every second and at a clean stop).
//!
//! What that gives up is only a power loss (or a kernel crash) between a
//! change reaching the disk and its capture. So that such a snapshot is never
//! silently wrong, a marker holding the boot's id is synced before the first
//! unsynced capture and removed once all are synced and a second passed
//! without one: found at start-up with another boot's id, it means captures
//! may be lost, and the snapshots are marked broken ([`Durability::check`]).
//! `capture_sync = "before-change"` syncs every capture before its change
//! instead: snapshots survive a power loss, at that cost.

use rocksdb::{DB, WriteBatch, WriteOptions};

use super::data::Data;
use super::keys;

/// Why the store's state at start-up could not be settled.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("{0}")]
    Db(#[from] rocksdb::Error),
    #[error("syncing the kept bytes: {0}")]
    Data(#[from] std::io::Error),
}

/// How long without captures before the marker goes.
const QUIET_MS: u64 = 1000;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CaptureSync {
    /// Synced in the background; a power loss meanwhile breaks snapshots.
    #[default]
    Deferred,
    /// Synced before the change is applied.
    BeforeChange,
}

#[derive(Default)]
pub struct Durability {
    pub mode: CaptureSync,
    /// The marker is on disk: captures may not be.
    busy: bool,
    /// Captures written since the last sync.
    dirty: bool,
    last_ms: u64,
}

fn synced(sync: bool) -> WriteOptions {
    let mut w = WriteOptions::default();
    w.set_sync(sync);
    w
}

/// This boot of the machine (a power loss or a reset makes a new one).
pub fn boot_id() -> Vec<u8> {
    std::fs::read("/proc/sys/kernel/random/boot_id")
        .map(|v| v.trim_ascii().to_vec())
        .unwrap_or_default()
}

impl Durability {
    /// Writes captures, durably enough for the mode.
    pub fn write(&mut self, db: &DB, b: WriteBatch, now_ms: u64) -> Result<(), rocksdb::Error> {
        match self.mode {
            CaptureSync::BeforeChange => db.write_opt(b, &synced(true)),
            CaptureSync::Deferred => {
                if !self.busy {
                    db.put_opt(keys::UNSYNCED, boot_id(), &synced(true))?;
                    self.busy = true;
                }
                db.write_opt(b, &synced(false))?;
                self.dirty = true;
                self.last_ms = now_ms;
                Ok(())
            }
        }
    }

    /// Whether captures may be unsynced, and syncs them if so: the caller
    /// syncs outside the lock (`needs_sync`), then calls [`quiet`](Self::quiet).
    pub fn needs_sync(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// A sync failed: what was written is still unsynced.
    pub fn redirty(&mut self) {
        self.dirty = true;
    }

    /// After a sync: the marker goes once nothing was written for a while
    /// (`force`: at once, at a clean stop).
    pub fn quiet(&mut self, db: &DB, now_ms: u64, force: bool) -> Result<(), rocksdb::Error> {
        if self.busy && !self.dirty && (force || now_ms.saturating_sub(self.last_ms) >= QUIET_MS) {
            db.delete_opt(keys::UNSYNCED, &synced(true))?;
            self.busy = false;
        }
        Ok(())
    }

    /// At start-up: whether a marker left by another boot says captures may
    /// have been lost. Clears it (this boot's captures are all readable:
    /// the kernel's cache kept what the daemon wrote).
    pub fn check(db: &DB, data: &Data) -> Result<bool, CheckError> {
        let Some(v) = db.get(keys::UNSYNCED)? else {
            return Ok(false);
        };
        // What an earlier daemon of this boot wrote is in the cache only:
        // on disk before the marker goes.
        data.sync_all()?;
        db.flush_wal(true)?;
        db.delete_opt(keys::UNSYNCED, &synced(true))?;
        Ok(v != boot_id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(t: &tempfile::TempDir) -> DB {
        let mut o = rocksdb::Options::default();
        o.create_if_missing(true);
        DB::open(&o, t.path()).unwrap()
    }

    #[test]
    fn the_marker_stands_while_captures_may_be_unsynced() {
        let t = tempfile::tempdir().unwrap();
        let db = db(&t);
        let mut d = Durability::default();
        let mut b = WriteBatch::default();
        b.put(b"C1", b"x");
        d.write(&db, b, 1000).unwrap();
        assert_eq!(db.get(keys::UNSYNCED).unwrap(), Some(boot_id()));
        assert!(d.needs_sync());
        assert!(!d.needs_sync());
        // Not quiet long enough yet.
        d.quiet(&db, 1500, false).unwrap();
        assert!(db.get(keys::UNSYNCED).unwrap().is_some());
        d.quiet(&db, 2000, false).unwrap();
        assert!(db.get(keys::UNSYNCED).unwrap().is_none());
        // A capture after the sync: unsynced again, the marker back.
        d.write(&db, WriteBatch::default(), 2100).unwrap();
        assert!(db.get(keys::UNSYNCED).unwrap().is_some());
        d.quiet(&db, 9000, true).unwrap();
        assert!(db.get(keys::UNSYNCED).unwrap().is_some(), "not synced yet");
        assert!(d.needs_sync());
        d.quiet(&db, 9000, true).unwrap();
        assert!(db.get(keys::UNSYNCED).unwrap().is_none());
    }

    #[test]
    fn only_a_marker_from_another_boot_means_loss() {
        let t = tempfile::tempdir().unwrap();
        let db = db(&t);
        let data = Data::open(&t.path().join("x")).unwrap();
        data.append(1, b"kept").unwrap();
        assert!(!Durability::check(&db, &data).unwrap());
        db.put(keys::UNSYNCED, boot_id()).unwrap();
        assert!(
            !Durability::check(&db, &data).unwrap(),
            "a crash of the daemon loses nothing"
        );
        assert!(db.get(keys::UNSYNCED).unwrap().is_none());
        db.put(keys::UNSYNCED, b"an-earlier-boot").unwrap();
        assert!(Durability::check(&db, &data).unwrap());
        assert!(!Durability::check(&db, &data).unwrap(), "said once");
    }

    #[test]
    fn before_change_writes_no_marker() {
        let t = tempfile::tempdir().unwrap();
        let db = db(&t);
        let mut d = Durability {
            mode: CaptureSync::BeforeChange,
            ..Default::default()
        };
        d.write(&db, WriteBatch::default(), 1).unwrap();
        assert!(db.get(keys::UNSYNCED).unwrap().is_none());
        assert!(!d.needs_sync());
    }
}
