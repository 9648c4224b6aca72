//! [`MemChangeLog`]: the change log kept in memory only (tests, and nodes
//! that do not need resync after a restart).

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::ops::Range;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use super::dirty::DirtyIndex;
use super::names::{NameChanges, NameStore, Txn};
use super::{ChangeLog, FileId, Generation, NsChange, ROOT_ID, Result};

#[derive(Default)]
struct Names {
    children: HashMap<(FileId, OsString), FileId>,
    entries: HashMap<FileId, (FileId, OsString)>,
    next_id: FileId,
}

impl NameStore for Names {
    fn child(&self, parent: FileId, name: &OsStr) -> Result<Option<FileId>> {
        Ok(self.children.get(&(parent, name.to_os_string())).copied())
    }
    fn entry(&self, id: FileId) -> Result<Option<(FileId, OsString)>> {
        Ok(self.entries.get(&id).cloned())
    }
}

struct State {
    names: Names,
    dirty: DirtyIndex,
    ns: BTreeMap<u64, NsChange>,
    next_seq: u64,
    ns_sent_upto: u64,
    compare_needed: bool,
    generation: Generation,
}

/// The change log in memory; same semantics as [`RocksChangeLog`](super::RocksChangeLog)
/// without durability.
pub struct MemChangeLog {
    state: Mutex<State>,
}

impl MemChangeLog {
    pub fn new(chunk_size: u64) -> Result<Self> {
        Ok(MemChangeLog {
            state: Mutex::new(State {
                names: Names {
                    next_id: ROOT_ID + 1,
                    ..Names::default()
                },
                dirty: DirtyIndex::new(chunk_size)?,
                ns: BTreeMap::new(),
                next_seq: 1,
                ns_sent_upto: u64::MAX,
                compare_needed: false,
                generation: Generation::fresh()?,
            }),
        })
    }

    /// Runs a name transaction and applies it.
    fn names<T>(&self, f: impl FnOnce(&mut Txn) -> Result<T>) -> Result<T> {
        let mut st = self.state.lock();
        let (out, changes) = {
            let mut txn = Txn::new(&st.names, st.names.next_id);
            let out = f(&mut txn)?;
            (out, txn.finish())
        };
        apply(&mut st, changes);
        Ok(out)
    }
}

fn apply(st: &mut State, c: NameChanges) {
    let n = &mut st.names;
    for (k, v) in c.children {
        match v {
            Some(id) => n.children.insert(k, id),
            None => n.children.remove(&k),
        };
    }
    for (id, v) in c.entries {
        match v {
            Some(e) => n.entries.insert(id, e),
            None => n.entries.remove(&id),
        };
    }
    if let Some(next) = c.next_id {
        n.next_id = next;
    }
    for id in c.dropped {
        st.dirty.remove_file(id);
    }
}

impl ChangeLog for MemChangeLog {
    fn chunk_size(&self) -> u64 {
        self.state.lock().dirty.chunk_size()
    }

    fn resolve(&self, path: &Path) -> Result<Option<FileId>> {
        let st = self.state.lock();
        Txn::new(&st.names, 0).resolve(path)
    }
    fn ensure(&self, path: &Path) -> Result<FileId> {
        self.names(|t| t.ensure(path))
    }
    fn path_of(&self, id: FileId) -> Result<Option<PathBuf>> {
        let st = self.state.lock();
        Txn::new(&st.names, 0).path_of(id)
    }
    fn rename(&self, from: &Path, to: &Path) -> Result<Option<FileId>> {
        self.names(|t| t.rename(from, to))
    }
    fn exchange(&self, a: &Path, b: &Path) -> Result<()> {
        self.names(|t| t.exchange(a, b))
    }
    fn remove(&self, path: &Path) -> Result<Option<FileId>> {
        self.names(|t| t.remove(path))
    }

    fn mark(&self, id: FileId, offset: u64, len: u64) -> Result<()> {
        self.state.lock().dirty.mark(id, offset, len, 0).map(drop)
    }
    fn dirty(&self, id: FileId) -> Result<Vec<Range<u64>>> {
        Ok(self.state.lock().dirty.dirty(id))
    }
    fn dirty_files(&self) -> Result<Vec<FileId>> {
        Ok(self.state.lock().dirty.dirty_files())
    }
    fn dirty_bytes(&self) -> Result<u64> {
        Ok(self.state.lock().dirty.dirty_bytes())
    }
    fn dirty_count(&self) -> Result<u64> {
        Ok(self.state.lock().dirty.dirty_count())
    }
    fn clear(&self, id: FileId, range: Range<u64>) -> Result<()> {
        self.state.lock().dirty.clear(id, range);
        Ok(())
    }
    fn truncate(&self, id: FileId, new_len: u64) -> Result<()> {
        self.state.lock().dirty.truncate(id, new_len);
        Ok(())
    }
    fn dirty_size(&self, id: FileId) -> Result<Option<u64>> {
        Ok(self.state.lock().dirty.size(id))
    }
    fn clear_size(&self, id: FileId) -> Result<()> {
        self.state.lock().dirty.clear_size(id);
        Ok(())
    }

    fn log_ns(&self, change: NsChange) -> Result<u64> {
        let mut st = self.state.lock();
        let seq = st.next_seq;
        st.next_seq += 1;
        st.ns.insert(seq, change);
        Ok(seq)
    }
    fn ns_since(&self, seq: u64) -> Result<Vec<(u64, NsChange)>> {
        let st = self.state.lock();
        Ok(st
            .ns
            .range(seq.saturating_add(1)..)
            .map(|(&s, c)| (s, c.clone()))
            .collect())
    }
    fn clear_ns_upto(&self, seq: u64) -> Result<()> {
        let mut st = self.state.lock();
        st.ns = st.ns.split_off(&seq.saturating_add(1));
        Ok(())
    }
    fn ns_sent_upto(&self) -> Result<u64> {
        Ok(self.state.lock().ns_sent_upto)
    }
    fn ns_sending(&self, sending: bool) -> Result<()> {
        let mut st = self.state.lock();
        st.ns_sent_upto = if sending {
            u64::MAX
        } else {
            st.ns_sent_upto.min(st.next_seq - 1)
        };
        Ok(())
    }

    fn compare_needed(&self) -> Result<bool> {
        Ok(self.state.lock().compare_needed)
    }
    fn set_compare_needed(&self, needed: bool) -> Result<()> {
        self.state.lock().compare_needed = needed;
        Ok(())
    }

    fn generation(&self) -> Result<Generation> {
        Ok(self.state.lock().generation.clone())
    }
    fn new_generation(&self) -> Result<Generation> {
        let mut st = self.state.lock();
        st.generation = st.generation.next()?;
        Ok(st.generation.clone())
    }

    fn adopt_generation(&self, g: &Generation) -> Result<()> {
        let mut st = self.state.lock();
        st.generation = st.generation.adopted(g);
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }
}
