//! Block-diff snapshots: points in time of a module on this node, kept by
//! saving what the changes after them destroy.
//!
//! Taking a snapshot copies nothing. Afterwards every change to the module's
//! real directories (the mount's on a serving node, the applier's on the
//! SECOND and during a resync) first passes [`Snapshots::keeping`], which
//! keeps, once per snapshot, what the change is about to destroy:
//!
//! - the bytes of a regular file about to be overwritten, truncated away or
//!   punched, in 4 KiB-aligned runs (the first overwrite of a range only);
//! - an object's metadata (kind, owner, mode, size, times, xattrs) before its
//!   first change;
//! - a directory's names before its first namespace change;
//! - all of an object about to lose its last name (`Gone`).
//!
//! Objects are their inode numbers on this node, so a rename keeps nothing
//! but the two directories' names. A capture belongs to the epoch of the
//! newest snapshot when it was made; the state of an object at snapshot `j`
//! is, per place, the capture of the lowest epoch `>= j`, else the live tree
//! (read before the capture index, so a change racing the read is seen). So
//! what several snapshots need of one place is kept once.
//!
//! Captures are indexed in RocksDB in the state directory, the bytes of
//! files appended to one file per epoch beside it (`data`), zstd-compressed
//! where that pays, all written before the change is applied and synced
//! soon after (`durability`): a snapshot is whole or, after a failure it
//! could not survive, marked broken: never silently wrong. A failure to
//! keep never fails the application's call.

mod at;
mod capture;
mod data;
pub mod diff;
mod durability;
pub mod effects;
pub mod keys;
mod memo;
pub mod restore;
pub mod retention;
pub mod view;

use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};
use rocksdb::{DB, DBCompressionType, Direction, IteratorMode, Options, WriteBatch, WriteOptions};
use serde::{Deserialize, Serialize};

use keys::{At, Obj};

pub use capture::{data_len, read_names};
pub use durability::CaptureSync;
use durability::Durability;
use memo::Memo;
pub use restore::walk;

/// Granularity of what is kept of file contents.
pub const BLOCK: u64 = 4096;
/// The longest run kept under one key.
const RUN: u64 = 1 << 20;

/// Why a snapshot was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Manual,
    /// Taken by the resync target before a resync changes anything.
    BeforeResync,
    Scheduled,
    /// A consistent cut for `tandem verify`, dropped after the check.
    Verify,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Manual => "manual",
            Kind::BeforeResync => "before-resync",
            Kind::Scheduled => "scheduled",
            Kind::Verify => "verify",
        }
    }
}

/// One snapshot's record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub id: u64,
    pub name: String,
    pub kind: Kind,
    /// The node that holds it (always this one: snapshots never travel).
    pub node: String,
    pub created_ms: u64,
    /// What this node was for the module: `primary`, `secondary`, `stopped`.
    pub role: String,
    /// The stream position it was taken at: every change up to it is in,
    /// none after.
    pub position: Option<u64>,
    pub generation: Option<String>,
    /// Whether the tree was a state the primary once had (false in the
    /// middle of a resync).
    pub consistent: bool,
    /// Set when something it needed could not be kept.
    pub broken: Option<String>,
    /// The module's directories, in order, when it was taken.
    pub dirs: Vec<PathBuf>,
}

/// A snapshot as `list` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Listed {
    #[serde(flatten)]
    pub snapshot: Snapshot,
    /// Bytes stored for it alone (shared captures count once, with the
    /// oldest snapshot that needs them).
    pub bytes: u64,
}

/// What a new snapshot is.
#[derive(Clone, Debug)]
pub struct New {
    pub name: Option<String>,
    pub kind: Kind,
    pub role: String,
    pub position: Option<u64>,
    pub generation: Option<String>,
    pub consistent: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot store: {0}")]
    Db(#[from] rocksdb::Error),
    #[error("module {module} has no snapshot {name:?}")]
    Unknown { module: String, name: String },
    #[error("snapshot name {name:?}: {why}")]
    BadName { name: String, why: &'static str },
    #[error("module {module} already has a snapshot named {name:?}")]
    Taken { module: String, name: String },
    #[error("snapshot {name:?} is broken ({why}); it cannot be restored")]
    Broken { name: String, why: String },
    #[error("{path}: {why}")]
    Target { path: PathBuf, why: String },
    #[error("{op} {path}: {}", std::io::Error::from_raw_os_error(errno.code()))]
    Sys {
        op: &'static str,
        path: String,
        errno: crate::fs::Errno,
    },
    #[error("snapshot store: {0}")]
    Corrupt(String),
}

pub type Result<T> = std::result::Result<T, SnapshotError>;

/// A change about to be made to the object at a path (relative to a
/// directory's root, `""` the root itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Attributes, times or xattrs.
    Meta(PathBuf),
    /// The bytes `[off, off + len)` of a regular file (and its metadata).
    Bytes(PathBuf, u64, u64),
    /// Every byte from `off` on (truncate, collapse, insert).
    From(PathBuf, u64),
    /// The names in a directory.
    Names(PathBuf),
    /// The name goes: the object with it, if it was its last name (a
    /// directory with everything under it).
    Drop(PathBuf),
    /// The change makes a new object at this name (a resync creating a
    /// file at its final size): no snapshot holds it, so once it exists
    /// nothing of it is kept — not the holes a read would find in it.
    Born(PathBuf),
}

/// The snapshots of one module on this node.
pub struct Snapshots {
    module: String,
    /// The store's directory (scratch files go there too).
    path: PathBuf,
    /// The module's directories, in order.
    dirs: Vec<PathBuf>,
    db: DB,
    /// The kept bytes of files.
    data: data::Data,
    /// The newest snapshot, whose epoch captures belong to. Changes hold it
    /// shared from their capture to their apply, a new snapshot exclusively:
    /// so a snapshot falls between two changes, never inside one.
    newest: RwLock<Option<u64>>,
    memo: Mutex<Memo>,
    /// When captures reach the disk.
    durability: Mutex<Durability>,
    failures: AtomicU64,
    /// This node's name, for the records.
    node: Mutex<String>,
    /// Set while a resync writes into this copy (kept in the store).
    resyncing: Mutex<Option<Resyncing>>,
    /// Before-resync snapshots kept (`keep_before_resync`).
    keep_before_resync: std::sync::atomic::AtomicU32,
    /// When the last resync into this copy ended (0: not since the start).
    resync_ended_ms: AtomicU64,
}

/// This copy is being resynchronised: between two states of the primary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resyncing {
    pub since_ms: u64,
    /// The newest snapshot of a consistent state before it (the one taken
    /// as the resync began, or an older one if that failed).
    pub last_consistent: Option<String>,
}

/// This node's snapshots of a module, in the status.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub count: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newest_ms: Option<u64>,
    /// Snapshots marked broken.
    pub broken: u64,
    /// Captures that could not be kept since the daemon started.
    pub failures: u64,
    /// Set while a resync writes into this copy: it is between two states
    /// of the primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inconsistent_since_ms: Option<u64>,
    /// Then, the newest snapshot of a consistent state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_consistent: Option<String>,
    /// A rollback to this snapshot did not finish: run it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolling_back: Option<String>,
    /// The last scheduled snapshot failed (when, why): an alert until the
    /// next one is taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_failed: Option<String>,
    /// Scheduled snapshots that failed since the daemon started.
    #[serde(default)]
    pub schedule_failures: u64,
}

/// A rollback under way (kept in the store until it ends).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollingBack {
    pub to: String,
    pub since_ms: u64,
}

/// How many automatic before-resync snapshots a node keeps by default.
pub const KEEP_BEFORE_RESYNC: u32 = 3;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn synced() -> WriteOptions {
    let mut w = WriteOptions::default();
    w.set_sync(true);
    w
}

/// Snapshot names: a file-name-like word, never a path.
pub fn check_name(name: &str) -> Result<()> {
    let bad = |why| {
        Err(SnapshotError::BadName {
            name: name.to_string(),
            why,
        })
    };
    if name.is_empty() || name.len() > 64 {
        return bad("must be 1 to 64 characters");
    }
    if name.contains('/') || name.contains("..") {
        return bad("must not contain '/' or '..'");
    }
    if name.starts_with('.') || name.starts_with('-') {
        return bad("must not start with '.' or '-'");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'))
    {
        return bad("may hold only letters, digits, '.', '_', '-' and ':'");
    }
    Ok(())
}

impl Snapshots {
    /// Opens (or creates) the store of `module` in `dir`.
    pub fn open(dir: &Path, module: &str, dirs: Vec<PathBuf>) -> Result<Self> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        // The data is zstd already; the small records compress themselves.
        opts.set_compression_type(DBCompressionType::None);
        let db = DB::open(&opts, dir)?;
        let kept = |why: String| SnapshotError::Target {
            path: dir.join("kept"),
            why,
        };
        let data = data::Data::open(dir).map_err(|e| kept(e.to_string()))?;
        let lost = Durability::check(&db, &data).map_err(|e| match e {
            durability::CheckError::Db(e) => SnapshotError::Db(e),
            e => kept(e.to_string()),
        })?;
        let s = Self {
            data,
            module: module.to_string(),
            path: dir.to_path_buf(),
            dirs,
            db,
            newest: RwLock::new(None),
            memo: Mutex::new(Memo::default()),
            durability: Mutex::new(Durability::default()),
            failures: AtomicU64::new(0),
            node: Mutex::new(String::new()),
            resyncing: Mutex::new(None),
            keep_before_resync: std::sync::atomic::AtomicU32::new(KEEP_BEFORE_RESYNC),
            resync_ended_ms: AtomicU64::new(0),
        };
        *s.newest.write() = s.records()?.last().map(|r| r.id);
        if let Some(v) = s.db.get(keys::RESYNCING)? {
            *s.resyncing.lock() = Some(
                serde_json::from_slice(&v)
                    .map_err(|e| SnapshotError::Corrupt(format!("resync marker: {e}")))?,
            );
        }
        if lost {
            s.broke(
                "the machine stopped (a power loss or a kernel crash) while what they keep of \
                 the last changes before it was not all on disk yet",
            );
        }
        Ok(s)
    }

    /// When captures are synced (`[module.snapshots] capture_sync`).
    pub fn set_capture_sync(&self, mode: CaptureSync) {
        self.durability.lock().mode = mode;
    }

    /// Syncs the captures written since the last call (every second, and
    /// with `stopping` at a clean stop, after which nothing is unsynced).
    pub fn settle(&self, stopping: bool) {
        if self.durability.lock().needs_sync() {
            // The bytes first: the index must never point at what is not there.
            let synced = self
                .data
                .sync()
                .map_err(|e| e.to_string())
                .and_then(|()| self.db.flush_wal(true).map_err(|e| e.to_string()));
            if let Err(e) = synced {
                tracing::error!(module = %self.module, "cannot sync the snapshot store: {e}");
                self.durability.lock().redirty();
                return;
            }
        }
        if let Err(e) = self.durability.lock().quiet(&self.db, now_ms(), stopping) {
            tracing::error!(module = %self.module, "snapshot store: {e}");
        }
    }

    /// How many before-resync snapshots to keep (this node's policy).
    pub fn set_keep_before_resync(&self, n: u32) {
        self.keep_before_resync.store(n.max(1), Ordering::Relaxed);
    }

    /// Names this node in the records of the snapshots it takes.
    pub fn set_node(&self, node: &str) {
        *self.node.lock() = node.to_string();
    }

    /// Whether a resync is writing into this copy, and since when.
    pub fn resyncing(&self) -> Option<Resyncing> {
        self.resyncing.lock().clone()
    }

    /// Whether a resync is writing into this copy (no copy of its marker).
    pub fn is_resyncing(&self) -> bool {
        self.resyncing.lock().is_some()
    }

    /// A resync starts writing into this copy (called before its first
    /// change, where the changes are ordered): the first time, a snapshot
    /// of the consistent tree is taken and this copy is marked
    /// inconsistent until [`end_resync`](Self::end_resync). A resync that
    /// goes on after an interruption takes none: the tree is not consistent.
    pub fn begin_resync(
        &self,
        position: Option<u64>,
        generation: Option<String>,
    ) -> Result<Option<Snapshot>> {
        let mut r = self.resyncing.lock();
        if r.is_some() {
            return Ok(None);
        }
        let taken = self.create(New {
            name: None,
            kind: Kind::BeforeResync,
            role: "secondary".into(),
            position,
            generation,
            consistent: true,
        });
        // Marked even when the snapshot failed: the copy is inconsistent
        // from here on either way.
        let last_consistent = match &taken {
            Ok(s) => Some(s.name.clone()),
            Err(_) => self
                .records()
                .ok()
                .and_then(|rs| {
                    rs.into_iter()
                        .rev()
                        .find(|s| s.consistent && s.broken.is_none())
                })
                .map(|s| s.name),
        };
        let marker = Resyncing {
            since_ms: now_ms(),
            last_consistent,
        };
        self.db.put_opt(
            keys::RESYNCING,
            serde_json::to_vec(&marker).expect("serialisable"),
            &synced(),
        )?;
        *r = Some(marker);
        drop(r);
        let s = taken?;
        self.prune(
            Kind::BeforeResync,
            self.keep_before_resync.load(Ordering::Relaxed) as usize,
        );
        Ok(Some(s))
    }

    /// Records (durably) that a rollback is under way, or that it ended.
    pub fn mark_rollback(&self, r: Option<&RollingBack>) -> Result<()> {
        match r {
            Some(r) => self.db.put_opt(
                keys::ROLLING_BACK,
                serde_json::to_vec(r).expect("serialisable"),
                &synced(),
            )?,
            None => self.db.delete_opt(keys::ROLLING_BACK, &synced())?,
        }
        Ok(())
    }

    /// A rollback that did not finish (run it again to finish it).
    pub fn rolling_back(&self) -> Option<RollingBack> {
        let v = self.db.get(keys::ROLLING_BACK).ok()??;
        serde_json::from_slice(&v).ok()
    }

    /// The resync finished and is durable: this copy is consistent again.
    pub fn end_resync(&self) -> Result<()> {
        let mut r = self.resyncing.lock();
        if r.is_some() {
            self.db.delete_opt(keys::RESYNCING, &synced())?;
            *r = None;
            self.resync_ended_ms.store(now_ms(), Ordering::Relaxed);
        }
        Ok(())
    }

    /// When the last resync into this copy ended, if it did since the start.
    pub fn resync_ended_ms(&self) -> Option<u64> {
        Some(self.resync_ended_ms.load(Ordering::Relaxed)).filter(|t| *t > 0)
    }

    /// Deletes the oldest snapshots of `kind` beyond the newest `keep`.
    pub fn prune(&self, kind: Kind, keep: usize) {
        let Ok(records) = self.records() else {
            return;
        };
        let of_kind: Vec<_> = records.iter().filter(|r| r.kind == kind).collect();
        let excess = of_kind.len().saturating_sub(keep);
        for r in &of_kind[..excess] {
            match self.delete(&r.id.to_string()) {
                Ok(_) => {
                    tracing::info!(module = %self.module, "snapshot {} expired (only the newest {keep} {} snapshots are kept)", r.name, kind.as_str())
                }
                Err(e) => {
                    tracing::error!(module = %self.module, "cannot expire snapshot {}: {e}", r.name)
                }
            }
        }
    }

    pub fn module(&self) -> &str {
        &self.module
    }

    /// Captures that could not be kept since the daemon started.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    fn records(&self) -> Result<Vec<Snapshot>> {
        let mut out = Vec::new();
        let p = keys::record_prefix();
        for item in scan(&self.db, &p, keys::after(&p)) {
            let (k, v) = item?;
            if keys::record_id(&k).is_none() {
                break;
            }
            out.push(
                serde_json::from_slice(&v)
                    .map_err(|e| SnapshotError::Corrupt(format!("record: {e}")))?,
            );
        }
        Ok(out)
    }

    /// What the status says about this node's snapshots (no scan of what
    /// they hold).
    pub fn summary(&self) -> Summary {
        let records = self.records().unwrap_or_default();
        let r = self.resyncing();
        Summary {
            count: records.len() as u64,
            oldest_ms: records.first().map(|s| s.created_ms),
            newest: records.last().map(|s| s.name.clone()),
            newest_ms: records.last().map(|s| s.created_ms),
            broken: records.iter().filter(|s| s.broken.is_some()).count() as u64,
            failures: self.failures(),
            inconsistent_since_ms: r.as_ref().map(|r| r.since_ms),
            last_consistent: r.and_then(|r| r.last_consistent),
            rolling_back: self.rolling_back().map(|r| r.to),
            ..Default::default()
        }
    }

    /// Every snapshot, oldest first, with the bytes each holds.
    pub fn list(&self) -> Result<Vec<Listed>> {
        let records = self.records()?;
        let mut out = Vec::with_capacity(records.len());
        for (i, r) in records.iter().enumerate() {
            let until = records.get(i + 1).map(|n| n.id).unwrap_or(u64::MAX);
            out.push(Listed {
                bytes: self.bytes_between(r.id, until)?,
                snapshot: r.clone(),
            });
        }
        Ok(out)
    }

    /// Bytes of the captures of epochs `[from, until)`.
    fn bytes_between(&self, from: u64, until: u64) -> Result<u64> {
        let mut total = 0;
        let start = keys::epoch_prefix(from);
        for item in scan(&self.db, &start, keys::epochs_until(until)) {
            let (k, v) = item?;
            let Some(at) = keys::parse_by_epoch(&k) else {
                break;
            };
            if at.epoch >= until {
                break;
            }
            total += v
                .get(..8)
                .map_or(0, |b| u64::from_be_bytes(b.try_into().unwrap()));
        }
        Ok(total)
    }

    /// The snapshot named `name` (or numbered so).
    pub fn find(&self, name: &str) -> Result<Snapshot> {
        self.records()?
            .into_iter()
            .find(|r| r.name == name || r.id.to_string() == name)
            .ok_or_else(|| SnapshotError::Unknown {
                module: self.module.clone(),
                name: name.to_string(),
            })
    }

    /// Takes a snapshot. The caller holds whatever orders the changes (the
    /// stream's order on a primary, the applier on a SECOND), so `position`
    /// is exact; here no change is between its capture and its apply.
    pub fn create(&self, new: New) -> Result<Snapshot> {
        if let Some(n) = &new.name {
            check_name(n)?;
        }
        let mut newest = self.newest.write();
        let records = self.records()?;
        let id = match self.db.get(keys::NEXT)? {
            Some(v) if v.len() == 8 => u64::from_be_bytes(v[..].try_into().unwrap()),
            _ => 1,
        }
        .max(records.last().map_or(1, |r| r.id + 1));
        let name = new
            .name
            .clone()
            .unwrap_or_else(|| format!("{}-{id}", new.kind.as_str()));
        if records.iter().any(|r| r.name == name) {
            return Err(SnapshotError::Taken {
                module: self.module.clone(),
                name,
            });
        }
        let s = Snapshot {
            id,
            name,
            kind: new.kind,
            node: self.node.lock().clone(),
            created_ms: now_ms(),
            role: new.role,
            position: new.position,
            generation: new.generation,
            consistent: new.consistent,
            broken: None,
            dirs: self.dirs.clone(),
        };
        let mut b = WriteBatch::default();
        b.put(
            keys::record(id),
            serde_json::to_vec(&s).expect("serialisable"),
        );
        b.put(keys::NEXT, (id + 1).to_be_bytes());
        self.db.write_opt(b, &synced())?;
        *newest = Some(id);
        self.memo.lock().fresh_epoch();
        Ok(s)
    }

    /// Deletes a snapshot of this node. What it kept that an older snapshot
    /// still needs stays (it serves that one now).
    pub fn delete(&self, name: &str) -> Result<Snapshot> {
        let mut newest = self.newest.write();
        let records = self.records()?;
        let Some(i) = records
            .iter()
            .position(|r| r.name == name || r.id.to_string() == name)
        else {
            return Err(SnapshotError::Unknown {
                module: self.module.clone(),
                name: name.to_string(),
            });
        };
        let gone = records[i].clone();
        let older = i.checked_sub(1).map(|j| records[j].id);
        let until = records.get(i + 1).map(|r| r.id).unwrap_or(u64::MAX);
        let mut b = WriteBatch::default();
        b.delete(keys::record(gone.id));
        if older.is_none() {
            // Nothing older: what epochs [gone, next) kept serves nobody.
            let start = keys::epoch_prefix(gone.id);
            for item in scan(&self.db, &start, keys::epochs_until(until)) {
                let (k, _) = item?;
                let Some(at) = keys::parse_by_epoch(&k) else {
                    break;
                };
                if at.epoch >= until {
                    break;
                }
                b.delete(&k);
                b.delete(keys::capture(&at));
            }
        }
        self.db.write_opt(b, &synced())?;
        if older.is_none() {
            // Their index entries are gone for good: so are their bytes.
            if let Err(e) = self.data.remove(gone.id, until) {
                tracing::warn!(module = %self.module, "cannot remove what snapshot {} kept: {e}", gone.name);
            }
        }
        if *newest == Some(gone.id) {
            *newest = older;
            // What counts as kept for the newest is now every epoch from it.
            self.memo.lock().clear();
        }
        Ok(gone)
    }

    /// Marks snapshots broken (the newest first needs what failed; older
    /// ones may too: all are marked, as what they share cannot be told
    /// apart cheaply).
    fn broke(&self, why: &str) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let Ok(records) = self.records() else {
            return;
        };
        let mut b = WriteBatch::default();
        let mut marked = Vec::new();
        for mut r in records {
            if r.broken.is_none() {
                r.broken = Some(why.to_string());
                marked.push(r.name.clone());
                b.put(
                    keys::record(r.id),
                    serde_json::to_vec(&r).expect("serialisable"),
                );
            }
        }
        if !marked.is_empty() {
            tracing::error!(
                module = %self.module,
                "snapshots {} are broken: {why}",
                marked.join(", ")
            );
            let _ = self.db.write_opt(b, &synced());
        }
    }

    /// Whether any snapshot exists (the write path's only cost without one).
    pub fn any(&self) -> bool {
        self.newest.read().is_some()
    }

    /// Applies a change with what it destroys kept first: `effects` says
    /// what the change touches (asked only while a snapshot exists), `apply`
    /// makes it. No snapshot is taken between the two.
    pub fn keeping<R>(
        &self,
        dir: u32,
        root: BorrowedFd<'_>,
        effects: impl FnOnce() -> Vec<Effect>,
        apply: impl FnOnce() -> R,
    ) -> R {
        let newest = self.newest.read();
        let mut born = Vec::new();
        let mut renames = false;
        if let Some(epoch) = *newest {
            let list = effects();
            renames = list
                .iter()
                .any(|e| matches!(e, Effect::Names(_) | Effect::Drop(_)));
            if self.keep(epoch, dir, root, &list, false) {
                born = list
                    .into_iter()
                    .filter_map(|e| match e {
                        Effect::Born(p) => Some(p),
                        _ => None,
                    })
                    .collect();
            }
        }
        let r = apply();
        if renames || !born.is_empty() {
            let mut memo = self.memo.lock();
            // Names were resolved to keep what the change destroys: the
            // one it moved onto another object means that one now.
            if renames {
                memo.renamed();
            }
            // Objects made by the change exist only now.
            for p in &born {
                capture::born(&mut memo, dir, root, p);
            }
        }
        r
    }

    /// Keeps now, in one write, what changes about to follow will destroy:
    /// `effects` are theirs, in order. Each change still keeps through
    /// [`keeping`](Self::keeping), which finds it done. Keeping early is
    /// always right: what was not kept yet has not changed since the
    /// newest snapshot, so it reads the same now as just before its
    /// change; a name that those changes will make mean another object
    /// only costs that object kept too (only bytes and metadata are kept
    /// ahead, never a removal).
    pub fn keep_ahead(&self, dir: u32, root: BorrowedFd<'_>, effects: &[Effect]) {
        let newest = self.newest.read();
        if let Some(epoch) = *newest {
            debug_assert!(
                effects
                    .iter()
                    .all(|e| matches!(e, Effect::Bytes(..) | Effect::Meta(_)))
            );
            self.keep(epoch, dir, root, effects, true);
        }
    }

    /// Keeps what `list` destroys for snapshot epoch `epoch`; false if it
    /// could not (the snapshots are marked broken then). `ahead`: the
    /// kernel is first asked for every range it will read, so that cold
    /// blocks reach the disk together rather than one wait at a time.
    fn keep(
        &self,
        epoch: u64,
        dir: u32,
        root: BorrowedFd<'_>,
        list: &[Effect],
        ahead: bool,
    ) -> bool {
        if list.is_empty() {
            return true;
        }
        let mut memo = self.memo.lock();
        let mut durability = self.durability.lock();
        let mut keep = capture::Keeper {
            db: &self.db,
            data: &self.data,
            durability: &mut durability,
            memo: &mut memo,
            epoch,
            dir,
            root,
            batch: WriteBatch::default(),
            spool: Default::default(),
        };
        let read = if ahead {
            list.iter().try_for_each(|e| keep.read_ahead(e))
        } else {
            Ok(())
        };
        let kept = read
            .and_then(|()| list.iter().try_for_each(|e| keep.effect(e)))
            .and_then(|()| keep.finish());
        match kept {
            Ok(()) => true,
            Err(why) => {
                // What the memo says is kept may not be: start over.
                memo.clear();
                drop(durability);
                drop(memo);
                self.broke(&why.to_string());
                false
            }
        }
    }

    /// Whether anything of object `ino` of directory `dir` was kept since
    /// snapshot `id`: it changed after it.
    pub fn changed_since(&self, id: u64, dir: u32, ino: u64) -> Result<bool> {
        let prefix = keys::object_prefix(Obj { dir, ino });
        for item in scan(&self.db, &prefix, keys::after(&prefix)) {
            let (k, _) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            if keys::parse_capture(&k).is_some_and(|at| at.epoch >= id) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// What snapshot `id` saw, for reading (restore, diff, rollback).
    pub fn view<'a>(&'a self, id: Option<u64>, dir: u32, root: BorrowedFd<'a>) -> view::View<'a> {
        view::View::new(&self.db, &self.data, id, dir, root)
    }
}

/// The keys from `from` to `until` (exclusive), the scan bounded so that
/// deleted keys past the range are never stepped over.
pub(crate) fn scan<'a>(
    db: &'a DB,
    from: &[u8],
    until: Vec<u8>,
) -> rocksdb::DBIteratorWithThreadMode<'a, DB> {
    let mut o = rocksdb::ReadOptions::default();
    o.set_iterate_upper_bound(until);
    db.iterator_opt(IteratorMode::From(from, Direction::Forward), o)
}

/// Stores one capture and its epoch index entry in `b`.
fn put(b: &mut WriteBatch, at: &At, value: &[u8]) {
    put_held(b, at, value, value.len() as u64);
}

/// [`put`] of a capture that holds `held` bytes (elsewhere).
fn put_held(b: &mut WriteBatch, at: &At, value: &[u8], held: u64) {
    b.put(keys::capture(at), value);
    b.put(keys::by_epoch(at), held.to_be_bytes());
}

/// A path as reports show it.
pub fn shown(p: &Path) -> String {
    if p.as_os_str().is_empty() {
        ".".into()
    } else {
        p.display().to_string()
    }
}

fn obj(dir: u32, st: &libc::stat) -> Obj {
    Obj {
        dir,
        ino: st.st_ino,
    }
}
