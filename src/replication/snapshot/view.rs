//! One directory of the module as a snapshot saw it (or as it is now):
//! per object, the capture of the lowest epoch from the snapshot on, else
//! the live tree. The live tree is always read first and the captures
//! after: a change that races the read was kept before it was applied, so
//! the second look finds it.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use rocksdb::DB;

use super::capture::{decode_data, decode_meta, decode_names, read_names};
use super::data::Data;
use super::keys::{self, Aspect, Obj};
use super::memo::Kept;
use super::{Result, SnapshotError};
use crate::fs::Errno;
use crate::fs::sys;
use crate::replication::entry;
use crate::replication::wire::Entry;

pub struct View<'a> {
    db: &'a DB,
    data: &'a Data,
    /// The snapshot's id; `None`: the tree as it is now.
    at: Option<u64>,
    dir: u32,
    root: BorrowedFd<'a>,
    /// Where each live object is (one of its names), found on first need
    /// (shared by the threads of a restore).
    live: Mutex<Option<Arc<HashMap<u64, PathBuf>>>>,
}

fn sys_err(op: &'static str, p: &Path, errno: Errno) -> SnapshotError {
    SnapshotError::Sys {
        op,
        path: super::shown(p),
        errno,
    }
}

fn corrupt(e: String) -> SnapshotError {
    SnapshotError::Corrupt(e)
}

impl<'a> View<'a> {
    pub fn new(
        db: &'a DB,
        data: &'a Data,
        at: Option<u64>,
        dir: u32,
        root: BorrowedFd<'a>,
    ) -> Self {
        Self {
            db,
            data,
            at,
            dir,
            root,
            live: Mutex::new(None),
        }
    }

    fn obj(&self, ino: u64) -> Obj {
        Obj { dir: self.dir, ino }
    }

    pub fn root_ino(&self) -> Result<u64> {
        let st = sys::stat_fd(self.root).map_err(|e| sys_err("stat", Path::new(""), e))?;
        Ok(st.st_ino)
    }

    /// The capture of the lowest epoch `>= at` of one place.
    fn first(&self, ino: u64, aspect: Aspect) -> Result<Option<Vec<u8>>> {
        let Some(at) = self.at else {
            return Ok(None);
        };
        let place = keys::place_prefix(self.obj(ino), aspect, 0);
        let mut start = place.clone();
        start.extend_from_slice(&at.to_be_bytes());
        let mut it = super::scan(self.db, &start, keys::after(&place));
        match it.next() {
            Some(item) => {
                let (k, v) = item?;
                Ok(k.starts_with(&place).then(|| v.to_vec()))
            }
            None => Ok(None),
        }
    }

    /// Whether the object was kept whole since the snapshot (it lost its
    /// last name): a live object with its number is another one.
    pub fn gone(&self, ino: u64) -> Result<bool> {
        Ok(self.first(ino, Aspect::Gone)?.is_some())
    }

    fn scan_live(&self) -> Result<HashMap<u64, PathBuf>> {
        let mut map = HashMap::new();
        let root_ino = self.root_ino()?;
        map.insert(root_ino, PathBuf::new());
        let mut todo = vec![PathBuf::new()];
        while let Some(p) = todo.pop() {
            let fd = match entry::open_node(self.root, &p) {
                Ok(fd) => fd,
                // Moved, removed or replaced by a symlink since it was
                // listed: what it held is kept.
                Err(e) if matches!(e.code(), libc::ENOENT | libc::ENOTDIR | libc::ELOOP) => {
                    continue;
                }
                Err(e) => return Err(sys_err("open", &p, e)),
            };
            let names = match read_names(fd.as_fd()) {
                Ok(n) => n,
                Err(e) if matches!(e.code(), libc::ENOENT | libc::ENOTDIR) => continue,
                Err(e) => return Err(sys_err("list", &p, e)),
            };
            for (name, ino) in names {
                let child = p.join(OsStr::from_bytes(&name));
                if map.insert(ino, child.clone()).is_none() {
                    // A directory has one name; stat to tell it from a file.
                    if let Ok(st) = sys::stat_at(
                        fd.as_fd(),
                        &entry::cstr(Path::new(OsStr::from_bytes(&name)))
                            .map_err(|e| sys_err("name", &child, e))?,
                    ) {
                        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                            todo.push(child);
                        }
                    }
                }
            }
        }
        Ok(map)
    }

    /// The live object `ino` (`O_PATH`), if it is still in the tree.
    fn live_node(&self, ino: u64) -> Result<Option<OwnedFd>> {
        for fresh in [false, true] {
            let map = {
                let mut live = self.live.lock();
                if fresh || live.is_none() {
                    *live = Some(Arc::new(self.scan_live()?));
                }
                live.clone().expect("just set")
            };
            let path = map.get(&ino).cloned();
            let Some(path) = path else {
                if fresh {
                    return Ok(None);
                }
                continue;
            };
            match entry::open_node(self.root, &path) {
                Ok(fd) => {
                    let st = sys::stat_fd(fd.as_fd()).map_err(|e| sys_err("stat", &path, e))?;
                    if st.st_ino == ino {
                        return Ok(Some(fd));
                    }
                }
                // The remembered path no longer leads there (a name on it
                // is gone or now a symlink): look again.
                Err(e) if matches!(e.code(), libc::ENOENT | libc::ENOTDIR | libc::ELOOP) => {}
                Err(e) => return Err(sys_err("open", &path, e)),
            }
        }
        Ok(None)
    }

    fn missing(&self, ino: u64, what: &str) -> SnapshotError {
        corrupt(format!(
            "the {what} of object {ino} in directory {} is neither kept nor in the tree",
            self.dir
        ))
    }

    /// The object's kind, owner, mode, size, times and xattrs.
    pub fn meta(&self, ino: u64) -> Result<Entry> {
        let live = if self.gone(ino)? {
            None
        } else {
            match self.live_node(ino)? {
                Some(fd) => {
                    let st =
                        sys::stat_fd(fd.as_fd()).map_err(|e| sys_err("stat", Path::new(""), e))?;
                    Some(
                        entry::of_node(fd.as_fd(), &st)
                            .map_err(|e| sys_err("read", Path::new(""), e))?,
                    )
                }
                None => None,
            }
        };
        if let Some(v) = self.first(ino, Aspect::Meta)? {
            return decode_meta(&v).map_err(|e| corrupt(e.to_string()));
        }
        live.ok_or_else(|| self.missing(ino, "metadata"))
    }

    /// The names in directory `ino`, each with its object.
    pub fn names(&self, ino: u64) -> Result<Vec<(Vec<u8>, u64)>> {
        let live = if self.gone(ino)? {
            None
        } else {
            match self.live_node(ino)? {
                Some(fd) => match read_names(fd.as_fd()) {
                    Ok(n) => Some(n),
                    Err(e) if matches!(e.code(), libc::ENOENT | libc::ENOTDIR) => None,
                    Err(e) => return Err(sys_err("list", Path::new(""), e)),
                },
                None => None,
            }
        };
        if let Some(v) = self.first(ino, Aspect::List)? {
            return decode_names(&v).map_err(|e| corrupt(e.to_string()));
        }
        live.ok_or_else(|| self.missing(ino, "names"))
    }

    /// Writes the contents of file `ino` (`size` bytes) into `out`.
    pub fn content(&self, ino: u64, size: u64, out: BorrowedFd<'_>) -> Result<u64> {
        let mut copied = 0;
        if !self.gone(ino)? {
            if let Some(fd) = self.live_node(ino)? {
                let from = sys::reopen(fd.as_fd(), libc::O_RDONLY)
                    .map_err(|e| sys_err("open", Path::new(""), e))?;
                copied = copy(from.as_fd(), out, size)?;
            }
        }
        let Some(at) = self.at else {
            return Ok(copied);
        };
        // Runs from the lowest epoch paint first; later ones fill the rest.
        let mut runs = self.runs(ino, at, u64::MAX)?;
        runs.sort_by_key(|(epoch, off, _)| (*epoch, *off));
        paint(self.data, &runs, 0, u64::MAX, |at, bytes| {
            sys::pwrite_all(out, bytes, at).map_err(|e| sys_err("write", Path::new(""), e))
        })?;
        sys::ftruncate(out, size).map_err(|e| sys_err("truncate", Path::new(""), e))?;
        Ok(size)
    }

    /// The snapshot's bytes `[off, off + len)` of file `ino` (zeros past its
    /// end), given its runs from the snapshot on, lowest epoch first.
    pub fn read_with(
        &self,
        ino: u64,
        runs: &[(u64, u64, Vec<u8>)],
        off: u64,
        len: usize,
    ) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        if !self.gone(ino)? {
            if let Some(fd) = self.live_node(ino)? {
                let f = sys::reopen(fd.as_fd(), libc::O_RDONLY)
                    .map_err(|e| sys_err("open", Path::new(""), e))?;
                let mut got = 0;
                while got < len {
                    let n = sys::pread(f.as_fd(), &mut buf[got..], off + got as u64)
                        .map_err(|e| sys_err("read", Path::new(""), e))?;
                    if n == 0 {
                        break;
                    }
                    got += n;
                }
            }
        }
        paint(self.data, runs, off, off + len as u64, |at, bytes| {
            let i = (at - off) as usize;
            buf[i..i + bytes.len()].copy_from_slice(bytes);
            Ok(())
        })?;
        Ok(buf)
    }

    /// Every run kept of file `ino` in epochs `[from, until)`: (epoch, offset, value).
    pub fn runs(&self, ino: u64, from: u64, until: u64) -> Result<Vec<(u64, u64, Vec<u8>)>> {
        let mut prefix = keys::object_prefix(self.obj(ino));
        prefix.push(Aspect::Data as u8);
        let mut out = Vec::new();
        for item in super::scan(self.db, &prefix, keys::after(&prefix)) {
            let (k, v) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            let at = keys::parse_capture(&k).ok_or_else(|| corrupt("a capture key".into()))?;
            if at.epoch >= from && at.epoch < until {
                out.push((at.epoch, at.off, v.to_vec()));
            }
        }
        Ok(out)
    }
}

/// Hands `put` the bytes of `[from, until)` that `runs` (lowest epoch
/// first) kept: each place from the first run that has it.
fn paint(
    data: &Data,
    runs: &[(u64, u64, Vec<u8>)],
    from: u64,
    until: u64,
    mut put: impl FnMut(u64, &[u8]) -> Result<()>,
) -> Result<()> {
    let mut painted = Kept::default();
    for (epoch, r_off, v) in runs {
        let r_len = super::capture::data_len(v).unwrap_or(0);
        let (a, z) = ((*r_off).max(from), (r_off + r_len).min(until));
        if a >= z {
            continue;
        }
        let data = decode_data(v, *epoch, data).map_err(|e| corrupt(e.to_string()))?;
        for (x, y) in painted.gaps(a, z) {
            put(x, &data[(x - r_off) as usize..(y - r_off) as usize])?;
        }
        painted.add(a, z);
    }
    Ok(())
}

/// Copies up to `size` bytes of `from` to `out` in the kernel.
fn copy(from: BorrowedFd<'_>, out: BorrowedFd<'_>, size: u64) -> Result<u64> {
    let mut done = 0u64;
    while done < size {
        let n = sys::copy_range(from, done, out, done, (size - done).min(1 << 30))
            .map_err(|e| sys_err("copy", Path::new(""), e))?;
        if n == 0 {
            break;
        }
        done += n as u64;
    }
    Ok(done)
}
