//! Stable file ids: the id <-> (parent id, name) map and the operations on it.
//!
//! The logic is written once over [`NameStore`] (reads of the committed map)
//! and a [`Txn`] that stages changes in an overlay; each implementation
//! applies a finished transaction's [`NameChanges`] atomically.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::{Component, Path, PathBuf};

use super::error::{ChangeLogError, Result};
use super::{FileId, ROOT_ID};

/// Deepest path accepted by `path_of` before a cycle is assumed.
const MAX_DEPTH: usize = 4096;

/// Read access to the committed name map.
pub trait NameStore {
    /// The id named `name` in directory `parent`.
    fn child(&self, parent: FileId, name: &OsStr) -> Result<Option<FileId>>;
    /// The (parent, name) of `id`.
    fn entry(&self, id: FileId) -> Result<Option<(FileId, OsString)>>;
}

/// Staged changes of one transaction, to be applied atomically.
#[derive(Debug, Default)]
pub struct NameChanges {
    /// (parent, name) -> Some(id) to set, None to delete.
    pub children: Vec<((FileId, OsString), Option<FileId>)>,
    /// id -> Some((parent, name)) to set, None to delete.
    pub entries: Vec<(FileId, Option<(FileId, OsString)>)>,
    /// Ids whose name was dropped (their dirty data goes too).
    pub dropped: Vec<FileId>,
    /// The next id to allocate, if it changed.
    pub next_id: Option<FileId>,
}

/// A name transaction: reads see the store plus this transaction's changes.
pub struct Txn<'a> {
    store: &'a dyn NameStore,
    next_id: FileId,
    allocated: bool,
    children: HashMap<(FileId, OsString), Option<FileId>>,
    entries: HashMap<FileId, Option<(FileId, OsString)>>,
    dropped: Vec<FileId>,
}

/// The plain components of a module-relative path ("" is the root).
pub fn components(path: &Path) -> Result<Vec<&OsStr>> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => return Err(ChangeLogError::InvalidPath(path.to_path_buf())),
        }
    }
    Ok(out)
}

impl<'a> Txn<'a> {
    pub fn new(store: &'a dyn NameStore, next_id: FileId) -> Self {
        Txn {
            store,
            next_id,
            allocated: false,
            children: HashMap::new(),
            entries: HashMap::new(),
            dropped: Vec::new(),
        }
    }

    fn child(&self, parent: FileId, name: &OsStr) -> Result<Option<FileId>> {
        match self.children.get(&(parent, name.to_os_string())) {
            Some(v) => Ok(*v),
            None => self.store.child(parent, name),
        }
    }

    fn entry(&self, id: FileId) -> Result<Option<(FileId, OsString)>> {
        match self.entries.get(&id) {
            Some(v) => Ok(v.clone()),
            None => self.store.entry(id),
        }
    }

    fn set(&mut self, id: FileId, parent: FileId, name: &OsStr) {
        self.children
            .insert((parent, name.to_os_string()), Some(id));
        self.entries.insert(id, Some((parent, name.to_os_string())));
    }

    /// Removes the name of `id` (which is `parent`/`name`) from the map.
    fn unset(&mut self, id: FileId, parent: FileId, name: &OsStr) {
        self.children.insert((parent, name.to_os_string()), None);
        self.entries.insert(id, None);
    }

    pub fn resolve(&self, path: &Path) -> Result<Option<FileId>> {
        let mut id = ROOT_ID;
        for c in components(path)? {
            match self.child(id, c)? {
                Some(next) => id = next,
                None => return Ok(None),
            }
        }
        Ok(Some(id))
    }

    pub fn ensure(&mut self, path: &Path) -> Result<FileId> {
        let mut id = ROOT_ID;
        for c in components(path)? {
            id = match self.child(id, c)? {
                Some(next) => next,
                None => {
                    let new = self.next_id;
                    self.next_id += 1;
                    self.allocated = true;
                    self.set(new, id, c);
                    new
                }
            };
        }
        Ok(id)
    }

    pub fn path_of(&self, id: FileId) -> Result<Option<PathBuf>> {
        let mut names = Vec::new();
        let mut cur = id;
        while cur != ROOT_ID {
            if names.len() > MAX_DEPTH {
                return Err(ChangeLogError::Corrupt {
                    what: "name map",
                    detail: format!("parent chain of id {id} is a cycle or too deep"),
                });
            }
            match self.entry(cur)? {
                Some((parent, name)) => {
                    names.push(name);
                    cur = parent;
                }
                None => return Ok(None),
            }
        }
        Ok(Some(names.iter().rev().collect()))
    }

    /// Drops the name at `path`; returns the id it had.
    pub fn remove(&mut self, path: &Path) -> Result<Option<FileId>> {
        let comps = components(path)?;
        let Some((last, dir)) = comps.split_last() else {
            return Ok(None); // the root is never removed
        };
        let Some(parent) = self.resolve(&dir.iter().collect::<PathBuf>())? else {
            return Ok(None);
        };
        let Some(id) = self.child(parent, last)? else {
            return Ok(None);
        };
        self.unset(id, parent, last);
        self.dropped.push(id);
        Ok(Some(id))
    }

    /// The id of `path`'s parent directory (created if missing) and its last
    /// component; None for the root.
    fn parent_for<'p>(&mut self, path: &'p Path) -> Result<Option<(FileId, &'p OsStr)>> {
        let comps = components(path)?;
        let Some((last, dir)) = comps.split_last() else {
            return Ok(None);
        };
        let parent = self.ensure(&dir.iter().collect::<PathBuf>())?;
        Ok(Some((parent, *last)))
    }

    /// True if `dir` is `id` or one of its ancestors is.
    fn is_below(&self, mut dir: FileId, id: FileId) -> Result<bool> {
        for _ in 0..=MAX_DEPTH {
            if dir == id {
                return Ok(true);
            }
            if dir == ROOT_ID {
                return Ok(false);
            }
            match self.entry(dir)? {
                Some((p, _)) => dir = p,
                None => return Ok(false),
            }
        }
        Ok(false)
    }

    /// Moves the name `from` to `to`, dropping any id `to` had. Returns the
    /// moved id (None if `from` had none: then only the target is dropped).
    pub fn rename(&mut self, from: &Path, to: &Path) -> Result<Option<FileId>> {
        let bad = |why| ChangeLogError::InvalidRename {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
            why,
        };
        let src = self.resolve(from)?;
        if components(from)?.is_empty() || components(to)?.is_empty() {
            return Err(bad("the module root cannot be renamed"));
        }
        if src.is_some() && src == self.resolve(to)? {
            return Ok(src); // same file: rename(2) does nothing
        }
        let Some(id) = src else {
            self.remove(to)?;
            return Ok(None);
        };
        let (from_parent, from_name) = self.entry(id)?.expect("resolved ids have an entry");
        let (to_parent, to_name) = self.parent_for(to)?.expect("checked not root");
        if self.is_below(to_parent, id)? {
            return Err(bad("a directory cannot move below itself"));
        }
        self.remove(to)?;
        self.children.insert((from_parent, from_name), None);
        self.set(id, to_parent, to_name);
        Ok(Some(id))
    }

    /// Swaps the names `a` and `b` (RENAME_EXCHANGE). If only one is known it
    /// moves to the other name.
    pub fn exchange(&mut self, a: &Path, b: &Path) -> Result<()> {
        let (ia, ib) = (self.resolve(a)?, self.resolve(b)?);
        match (ia, ib) {
            (Some(ia), Some(ib)) if ia != ib => {
                let bad = |why| ChangeLogError::InvalidRename {
                    from: a.to_path_buf(),
                    to: b.to_path_buf(),
                    why,
                };
                let (pa, na) = self
                    .entry(ia)?
                    .ok_or(bad("the module root cannot be renamed"))?;
                let (pb, nb) = self
                    .entry(ib)?
                    .ok_or(bad("the module root cannot be renamed"))?;
                if self.is_below(pb, ia)? || self.is_below(pa, ib)? {
                    return Err(bad("a directory cannot move below itself"));
                }
                self.set(ia, pb, &nb);
                self.set(ib, pa, &na);
                Ok(())
            }
            (Some(_), None) => self.rename(a, b).map(drop),
            (None, Some(_)) => self.rename(b, a).map(drop),
            _ => Ok(()),
        }
    }

    pub fn finish(self) -> NameChanges {
        NameChanges {
            next_id: self.allocated.then_some(self.next_id),
            children: self.children.into_iter().collect(),
            entries: self.entries.into_iter().collect(),
            dropped: self.dropped,
        }
    }
}
