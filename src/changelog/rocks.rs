//! [`RocksChangeLog`]: the change log in RocksDB. Durability rules and the
//! key layout are described in the module docs ([`super`]).

use std::ffi::{OsStr, OsString};
use std::ops::Range;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DB, DBCompressionType, Direction, IteratorMode, Options,
    WriteBatch, WriteOptions,
};

use super::dirty::{Chunk, DirtyIndex, check_chunk_size};
use super::error::{ChangeLogError, Result};
use super::keys::*;
use super::names::{NameChanges, NameStore, Txn};
use super::{ChangeLog, FileId, Generation, NsChange, ROOT_ID};

struct DirtyState {
    index: DirtyIndex,
    /// The current epoch; `epoch - 1` is the last durably flushed one.
    epoch: u64,
}

/// Past this many namespace records cleared at once, one range is deleted.
const NS_POINT_DELETES: u64 = 4096;

/// The change log stored in a RocksDB database directory.
pub struct RocksChangeLog {
    db: DB,
    chunk_size: u64,
    /// Guards name transactions; holds the next id to allocate.
    /// Lock order: `names` before `dirty`.
    names: Mutex<FileId>,
    dirty: Mutex<DirtyState>,
    /// Guards the namespace log; holds the next sequence number.
    ns: Mutex<u64>,
    /// Every namespace record below this one is deleted (taken after `ns`).
    ns_low: Mutex<u64>,
    generation: Mutex<Generation>,
}

struct DbNames<'a> {
    db: &'a DB,
}

impl NameStore for DbNames<'_> {
    fn child(&self, parent: FileId, name: &OsStr) -> Result<Option<FileId>> {
        match self
            .db
            .get_cf(cf(self.db, CF_NAMES), parent_name(parent, name))?
        {
            Some(v) => Ok(Some(read_u64("names value", &v)?)),
            None => Ok(None),
        }
    }
    fn entry(&self, id: FileId) -> Result<Option<(FileId, OsString)>> {
        match self.db.get_cf(cf(self.db, CF_IDS), u64_bytes(id))? {
            Some(v) => Ok(Some(decode_parent_name(&v)?)),
            None => Ok(None),
        }
    }
}

fn cf<'a>(db: &'a DB, name: &str) -> &'a ColumnFamily {
    db.cf_handle(name)
        .expect("column families are created at open")
}

fn write_opts(sync: bool) -> WriteOptions {
    let mut w = WriteOptions::default();
    w.set_sync(sync);
    w
}

fn get_u64(db: &DB, key: &[u8]) -> Result<Option<u64>> {
    match db.get_cf(cf(db, CF_META), key)? {
        Some(v) => Ok(Some(read_u64("meta value", &v)?)),
        None => Ok(None),
    }
}

fn json_err(what: &'static str, e: serde_json::Error) -> ChangeLogError {
    ChangeLogError::Corrupt {
        what,
        detail: e.to_string(),
    }
}

impl RocksChangeLog {
    /// Opens (or creates) the change log in `dir`. `chunk_size` must be the
    /// one the log was created with. After a crash, chunks whose exact
    /// ranges may have been lost are widened to whole chunks (see module docs).
    pub fn open(dir: &Path, chunk_size: u64) -> Result<Self> {
        check_chunk_size(chunk_size)?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_compression_type(DBCompressionType::Zstd);
        let cfs = ALL_CFS
            .iter()
            .map(|n| ColumnFamilyDescriptor::new(*n, Options::default()));
        let db = DB::open_cf_descriptors(&opts, dir, cfs)?;

        let mut batch = WriteBatch::default();
        let meta = cf(&db, CF_META);
        match get_u64(&db, META_CHUNK_SIZE)? {
            Some(stored) if stored != chunk_size => {
                return Err(ChangeLogError::ChunkSizeMismatch {
                    stored,
                    requested: chunk_size,
                });
            }
            Some(_) => {}
            None => batch.put_cf(meta, META_CHUNK_SIZE, u64_bytes(chunk_size)),
        }
        let next_id = get_u64(&db, META_NEXT_ID)?.unwrap_or(ROOT_ID + 1);
        let next_seq = get_u64(&db, META_NEXT_SEQ)?.unwrap_or(1);
        let ns_low = match db
            .iterator_cf(cf(&db, CF_NSLOG), IteratorMode::Start)
            .next()
        {
            Some(item) => read_u64("nslog key", &item?.0)?.min(next_seq),
            None => next_seq,
        };
        let generation = match db.get_cf(meta, META_GENERATION)? {
            Some(v) => serde_json::from_slice(&v).map_err(|e| json_err("generation", e))?,
            None => {
                let g = Generation::fresh()?;
                batch.put_cf(
                    meta,
                    META_GENERATION,
                    serde_json::to_vec(&g).expect("serialisable"),
                );
                g
            }
        };

        // Recovery: records written in an epoch that was never flushed may
        // miss later unsynced range updates; widen them to the whole chunk.
        let flushed = get_u64(&db, META_FLUSHED_EPOCH)?.unwrap_or(0);
        let epoch = flushed + 1;
        let mut index = DirtyIndex::new(chunk_size)?;
        let mut widened = 0usize;
        for item in db.iterator_cf(cf(&db, CF_DIRTY), IteratorMode::Start) {
            let (k, v) = item?;
            let (id, chunk) = decode_chunk_key(&k)?;
            let mut value = decode_chunk(&v, chunk_size)?;
            if value.epoch > flushed {
                value = Chunk {
                    ranges: vec![(0, chunk_size as u32)],
                    epoch,
                };
                batch.put_cf(cf(&db, CF_DIRTY), &k, encode_chunk(&value));
                widened += 1;
            }
            index.load_chunk(id, chunk, value);
        }
        for item in db.iterator_cf(cf(&db, CF_SIZES), IteratorMode::Start) {
            let (k, v) = item?;
            index.load_size(read_u64("sizes key", &k)?, read_u64("sizes value", &v)?);
        }
        if widened > 0 {
            tracing::warn!(
                chunks = widened,
                "change log was not flushed before it closed: dirty chunks widened to whole chunks"
            );
        }
        // Everything loaded (and widened) is now exact: close epoch `epoch`.
        batch.put_cf(meta, META_FLUSHED_EPOCH, u64_bytes(epoch));
        db.write_opt(batch, &write_opts(true))?;

        Ok(RocksChangeLog {
            db,
            chunk_size,
            names: Mutex::new(next_id),
            dirty: Mutex::new(DirtyState {
                index,
                epoch: epoch + 1,
            }),
            ns: Mutex::new(next_seq),
            ns_low: Mutex::new(ns_low),
            generation: Mutex::new(generation),
        })
    }

    fn cf(&self, name: &str) -> &ColumnFamily {
        cf(&self.db, name)
    }

    /// Adds the current record of each chunk (or its deletion) to `batch`.
    fn put_chunks(&self, batch: &mut WriteBatch, index: &DirtyIndex, id: FileId, chunks: &[u64]) {
        for &c in chunks {
            let key = chunk_key(id, c);
            match index.get(id, c) {
                Some(ch) => batch.put_cf(self.cf(CF_DIRTY), key, encode_chunk(ch)),
                None => batch.delete_cf(self.cf(CF_DIRTY), key),
            }
        }
    }

    fn read_names<T>(&self, f: impl FnOnce(&Txn) -> Result<T>) -> Result<T> {
        let store = DbNames { db: &self.db };
        f(&Txn::new(&store, 0))
    }

    /// Runs a name transaction and writes it (unsynced: see module docs).
    fn write_names<T>(&self, f: impl FnOnce(&mut Txn) -> Result<T>) -> Result<T> {
        let mut next_id = self.names.lock();
        let store = DbNames { db: &self.db };
        let mut txn = Txn::new(&store, *next_id);
        let out = f(&mut txn)?;
        let changes: NameChanges = txn.finish();

        let mut batch = WriteBatch::default();
        for ((parent, name), v) in &changes.children {
            let key = parent_name(*parent, name);
            match v {
                Some(id) => batch.put_cf(self.cf(CF_NAMES), key, u64_bytes(*id)),
                None => batch.delete_cf(self.cf(CF_NAMES), key),
            }
        }
        for (id, v) in &changes.entries {
            match v {
                Some((parent, name)) => {
                    batch.put_cf(self.cf(CF_IDS), u64_bytes(*id), parent_name(*parent, name))
                }
                None => batch.delete_cf(self.cf(CF_IDS), u64_bytes(*id)),
            }
        }
        if let Some(n) = changes.next_id {
            batch.put_cf(self.cf(CF_META), META_NEXT_ID, u64_bytes(n));
        }
        if changes.dropped.is_empty() {
            self.db.write_opt(batch, &write_opts(false))?;
        } else {
            let mut dirty = self.dirty.lock();
            for &id in &changes.dropped {
                let (chunks, had_size) = dirty.index.remove_file(id);
                self.put_chunks(&mut batch, &dirty.index, id, &chunks);
                if had_size {
                    batch.delete_cf(self.cf(CF_SIZES), u64_bytes(id));
                }
            }
            self.db.write_opt(batch, &write_opts(false))?;
        }
        if let Some(n) = changes.next_id {
            *next_id = n;
        }
        Ok(out)
    }
}

impl Drop for RocksChangeLog {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::warn!(error = %e, "flushing the change log on close failed");
        }
    }
}

impl ChangeLog for RocksChangeLog {
    fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    fn resolve(&self, path: &Path) -> Result<Option<FileId>> {
        self.read_names(|t| t.resolve(path))
    }
    fn ensure(&self, path: &Path) -> Result<FileId> {
        if let Some(id) = self.resolve(path)? {
            return Ok(id);
        }
        self.write_names(|t| t.ensure(path))
    }
    fn path_of(&self, id: FileId) -> Result<Option<PathBuf>> {
        self.read_names(|t| t.path_of(id))
    }
    fn rename(&self, from: &Path, to: &Path) -> Result<Option<FileId>> {
        self.write_names(|t| t.rename(from, to))
    }
    fn exchange(&self, a: &Path, b: &Path) -> Result<()> {
        self.write_names(|t| t.exchange(a, b))
    }
    fn remove(&self, path: &Path) -> Result<Option<FileId>> {
        self.write_names(|t| t.remove(path))
    }

    fn mark(&self, id: FileId, offset: u64, len: u64) -> Result<()> {
        let mut dirty = self.dirty.lock();
        let epoch = dirty.epoch;
        let touched = dirty.index.mark(id, offset, len, epoch)?;
        if touched.is_empty() {
            return Ok(());
        }
        let sync = touched.iter().any(|t| t.needs_sync);
        let chunks: Vec<u64> = touched.iter().map(|t| t.chunk).collect();
        let mut batch = WriteBatch::default();
        self.put_chunks(&mut batch, &dirty.index, id, &chunks);
        if let Err(e) = self.db.write_opt(batch, &write_opts(sync)) {
            // Not durable: make the next mark of these chunks sync again.
            for &c in &chunks {
                dirty.index.unsynced(id, c);
            }
            return Err(e.into());
        }
        Ok(())
    }
    fn dirty(&self, id: FileId) -> Result<Vec<Range<u64>>> {
        Ok(self.dirty.lock().index.dirty(id))
    }
    fn dirty_files(&self) -> Result<Vec<FileId>> {
        Ok(self.dirty.lock().index.dirty_files())
    }
    fn dirty_bytes(&self) -> Result<u64> {
        Ok(self.dirty.lock().index.dirty_bytes())
    }
    fn dirty_count(&self) -> Result<u64> {
        Ok(self.dirty.lock().index.dirty_count())
    }
    fn clear(&self, id: FileId, range: Range<u64>) -> Result<()> {
        let mut dirty = self.dirty.lock();
        let chunks = dirty.index.clear(id, range);
        if chunks.is_empty() {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        self.put_chunks(&mut batch, &dirty.index, id, &chunks);
        self.db.write_opt(batch, &write_opts(false))?;
        Ok(())
    }
    fn clear_many(&self, clears: &[(FileId, Range<u64>)]) -> Result<()> {
        let mut dirty = self.dirty.lock();
        let mut batch = WriteBatch::default();
        for (id, r) in clears {
            let chunks = dirty.index.clear(*id, r.clone());
            // A chunk cleared twice is written twice: the later one stands.
            self.put_chunks(&mut batch, &dirty.index, *id, &chunks);
        }
        if batch.is_empty() {
            return Ok(());
        }
        self.db.write_opt(batch, &write_opts(false))?;
        Ok(())
    }
    fn truncate(&self, id: FileId, new_len: u64) -> Result<()> {
        let mut dirty = self.dirty.lock();
        let (chunks, size) = dirty.index.truncate(id, new_len);
        let mut batch = WriteBatch::default();
        self.put_chunks(&mut batch, &dirty.index, id, &chunks);
        batch.put_cf(self.cf(CF_SIZES), u64_bytes(id), u64_bytes(size));
        self.db.write_opt(batch, &write_opts(true))?;
        Ok(())
    }
    fn dirty_size(&self, id: FileId) -> Result<Option<u64>> {
        Ok(self.dirty.lock().index.size(id))
    }
    fn clear_size(&self, id: FileId) -> Result<()> {
        let mut dirty = self.dirty.lock();
        if dirty.index.clear_size(id) {
            self.db
                .delete_cf_opt(self.cf(CF_SIZES), u64_bytes(id), &write_opts(false))?;
        }
        Ok(())
    }

    fn log_ns(&self, change: NsChange) -> Result<u64> {
        let mut next = self.ns.lock();
        let seq = *next;
        let mut batch = WriteBatch::default();
        let value = serde_json::to_vec(&change).expect("NsChange is serialisable");
        batch.put_cf(self.cf(CF_NSLOG), u64_bytes(seq), value);
        batch.put_cf(self.cf(CF_META), META_NEXT_SEQ, u64_bytes(seq + 1));
        self.db.write_opt(batch, &write_opts(true))?;
        *next = seq + 1;
        Ok(seq)
    }
    fn log_ns_many(&self, changes: Vec<NsChange>) -> Result<Option<u64>> {
        if changes.is_empty() {
            return Ok(None);
        }
        let mut next = self.ns.lock();
        let mut seq = *next;
        let mut batch = WriteBatch::default();
        for change in &changes {
            let value = serde_json::to_vec(change).expect("NsChange is serialisable");
            batch.put_cf(self.cf(CF_NSLOG), u64_bytes(seq), value);
            seq += 1;
        }
        batch.put_cf(self.cf(CF_META), META_NEXT_SEQ, u64_bytes(seq));
        self.db.write_opt(batch, &write_opts(true))?;
        *next = seq;
        Ok(Some(seq - 1))
    }
    fn mark_many(&self, marks: &[(FileId, u64, u64)]) -> Result<()> {
        let mut dirty = self.dirty.lock();
        let epoch = dirty.epoch;
        let mut batch = WriteBatch::default();
        let mut sync = false;
        let mut written: Vec<(FileId, u64)> = Vec::new();
        for &(id, offset, len) in marks {
            let touched = dirty.index.mark(id, offset, len, epoch)?;
            sync |= touched.iter().any(|t| t.needs_sync);
            let chunks: Vec<u64> = touched.iter().map(|t| t.chunk).collect();
            self.put_chunks(&mut batch, &dirty.index, id, &chunks);
            written.extend(chunks.into_iter().map(|c| (id, c)));
        }
        if let Err(e) = self.db.write_opt(batch, &write_opts(sync)) {
            for (id, c) in written {
                dirty.index.unsynced(id, c);
            }
            return Err(e.into());
        }
        Ok(())
    }
    fn ns_since(&self, seq: u64) -> Result<Vec<(u64, NsChange)>> {
        let Some(start) = seq.checked_add(1) else {
            return Ok(Vec::new());
        };
        let start = u64_bytes(start);
        let mode = IteratorMode::From(&start, Direction::Forward);
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_NSLOG), mode) {
            let (k, v) = item?;
            let change = serde_json::from_slice(&v).map_err(|e| json_err("nslog value", e))?;
            out.push((read_u64("nslog key", &k)?, change));
        }
        Ok(out)
    }
    fn clear_ns_upto(&self, seq: u64) -> Result<()> {
        let next = self.ns.lock();
        let mut low = self.ns_low.lock();
        let nslog = self.cf(CF_NSLOG);
        // Records are numbered without gaps below `next`: the ones cleared
        // now are deleted one by one. A range deleted from 0 at each call
        // would pile up overlapping tombstones, which every iterator of the
        // log then splits again (quadratic: seconds per read once a few
        // thousand names were made while the peer was connected).
        let last = seq.min(next.saturating_sub(1));
        let mut batch = WriteBatch::default();
        if last >= *low {
            if last - *low < NS_POINT_DELETES {
                for k in *low..=last {
                    batch.delete_cf(nslog, u64_bytes(k));
                }
            } else {
                batch.delete_range_cf(nslog, u64_bytes(*low), u64_bytes(last + 1));
            }
        }
        if seq == u64::MAX {
            batch.delete_cf(nslog, u64_bytes(u64::MAX));
        }
        if batch.is_empty() {
            return Ok(());
        }
        // Losing this (unsynced) delete only makes old records reappear.
        self.db.write_opt(batch, &write_opts(false))?;
        *low = (*low).max(last.saturating_add(1));
        Ok(())
    }

    fn compare_needed(&self) -> Result<bool> {
        Ok(get_u64(&self.db, META_COMPARE_NEEDED)?.is_some_and(|v| v != 0))
    }
    fn set_compare_needed(&self, needed: bool) -> Result<()> {
        self.db.put_cf_opt(
            self.cf(CF_META),
            META_COMPARE_NEEDED,
            u64_bytes(u64::from(needed)),
            &write_opts(true),
        )?;
        Ok(())
    }

    fn ns_sent_upto(&self) -> Result<u64> {
        Ok(get_u64(&self.db, META_NS_SENT_UPTO)?.unwrap_or(u64::MAX))
    }
    fn ns_sending(&self, sending: bool) -> Result<()> {
        let next = self.ns.lock();
        let upto = if sending {
            u64::MAX
        } else {
            self.ns_sent_upto()?.min(*next - 1)
        };
        self.db.put_cf_opt(
            self.cf(CF_META),
            META_NS_SENT_UPTO,
            u64_bytes(upto),
            &write_opts(true),
        )?;
        Ok(())
    }

    fn generation(&self) -> Result<Generation> {
        Ok(self.generation.lock().clone())
    }
    fn new_generation(&self) -> Result<Generation> {
        let mut g = self.generation.lock();
        let next = g.next()?;
        let value = serde_json::to_vec(&next).expect("Generation is serialisable");
        self.db
            .put_cf_opt(self.cf(CF_META), META_GENERATION, value, &write_opts(true))?;
        *g = next.clone();
        Ok(next)
    }

    fn adopt_generation(&self, theirs: &Generation) -> Result<()> {
        let mut g = self.generation.lock();
        let next = g.adopted(theirs);
        let value = serde_json::to_vec(&next).expect("Generation is serialisable");
        self.db
            .put_cf_opt(self.cf(CF_META), META_GENERATION, value, &write_opts(true))?;
        *g = next;
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        let mut dirty = self.dirty.lock();
        self.db.flush_wal(true)?;
        let epoch = dirty.epoch;
        self.db.put_cf_opt(
            self.cf(CF_META),
            META_FLUSHED_EPOCH,
            u64_bytes(epoch),
            &write_opts(true),
        )?;
        dirty.epoch = epoch + 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changelog::{ChangeLog, DEFAULT_CHUNK_SIZE};

    fn deletes_in_memtable(log: &RocksChangeLog) -> u64 {
        log.db
            .property_int_value_cf(log.cf(CF_NSLOG), "rocksdb.num-deletes-active-mem-table")
            .unwrap()
            .unwrap()
    }

    #[test]
    fn names_records_cleared_one_at_a_time_are_deleted_each_once() {
        let dir = tempfile::tempdir().unwrap();
        let log = RocksChangeLog::open(dir.path(), DEFAULT_CHUNK_SIZE).unwrap();
        let mkdir = |i: usize| NsChange::Mkdir {
            path: format!("d{i}").into(),
        };
        let seqs: Vec<u64> = (0..300).map(|i| log.log_ns(mkdir(i)).unwrap()).collect();
        // As acknowledgements clear them: one record at a time, some twice.
        for s in &seqs[..200] {
            log.clear_ns_upto(*s).unwrap();
            log.clear_ns_upto(*s).unwrap();
        }
        // Each record once: no range from the start again at every call.
        assert_eq!(deletes_in_memtable(&log), 200);
        let left = log.ns_since(0).unwrap();
        assert_eq!(left.len(), 100);
        assert_eq!(left[0], (seqs[200], mkdir(200)));
        drop(log);
        // Reopened: what is left is found again and cleared from there.
        let log = RocksChangeLog::open(dir.path(), DEFAULT_CHUNK_SIZE).unwrap();
        assert_eq!(log.ns_since(0).unwrap(), left);
        log.clear_ns_upto(seqs[249]).unwrap();
        assert_eq!(log.ns_since(0).unwrap(), left[50..].to_vec());
        let next = log.log_ns(mkdir(300)).unwrap();
        assert!(next > seqs[299]);
        log.clear_ns_upto(u64::MAX).unwrap();
        assert!(log.ns_since(0).unwrap().is_empty());
    }
}
