//! The chunk lists of a tree's files, kept between scans: a file whose
//! inode, size, mtime and ctime did not change is not read again, so a
//! repeated verify of unchanged data is a metadata scan.
//!
//! They live in a RocksDB of the directory's own (`chunks/` in its state
//! dir), opened when a scan starts and closed when it ends. A scan looks up
//! one file at a time, so its memory does not grow with the tree, and a
//! module at rest holds nothing of it. Once the store holds a tenth more
//! entries than the files the last full scan saw, the next full scan copies
//! every entry it sees into a fresh store that replaces the old one when the
//! scan completes: the entries of files gone are dropped without a pass of
//! their own. Copying on every full scan cost a repeated verify of a tree at
//! rest a tenth of its time.
//!
//! It is only a cache: an entry is trusted only while the file's key
//! matches, and a store that cannot be opened means files are read again.

use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, OsStr};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use rocksdb::{DB, DBCompressionType, Options, WriteOptions};
use serde::{Deserialize, Serialize};

use super::super::wire::ChunkSum;
use crate::fs::sys;

/// What a file is known by, and its chunks.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(super) struct Cached {
    pub size: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
    pub chunks: Vec<ChunkSum>,
}

const STORE: &CStr = c"chunks";
/// How many files the last full scan that ended well saw, under a key no
/// inode has (theirs are 8 bytes).
const SEEN: &[u8] = b"files";
const FRESH: &CStr = c"chunks.new";
/// The whole cache in one file, as releases before the store kept it: read
/// into the store once, then removed.
const LEGACY: &str = "manifest.cache";

/// The chunk-list cache of one replicated directory.
#[derive(Default)]
pub struct Cache {
    /// The directory's state dir; `None`: kept in memory (`mem`).
    at: Option<PathBuf>,
    mem: HashMap<u64, Cached>,
}

impl Cache {
    /// The cache kept in the state dir `at`.
    pub fn in_dir(at: &Path) -> Self {
        Self {
            at: Some(at.to_path_buf()),
            mem: HashMap::new(),
        }
    }

    /// Opens the cache for a scan. A `full` scan looks up every file of the
    /// tree in the cache (it hashes them all): what it does not see is
    /// dropped when it [finishes](Scan::finish) well.
    pub fn begin(&mut self, full: bool) -> Scan<'_> {
        let Cache { at, mem } = self;
        let store = match at.as_deref() {
            None => Store::Memory {
                map: Mutex::new(mem),
                seen: full.then(Mutex::default),
            },
            Some(at) => match open_store(at, full) {
                Ok((read, fresh)) => Store::Db {
                    read,
                    fresh,
                    at,
                    seen: full.then(AtomicU64::default),
                },
                Err(e) => {
                    tracing::warn!(
                        "the chunk cache in {} cannot be opened, files are read again: {e}",
                        at.display()
                    );
                    Store::Off
                }
            },
        };
        Scan { store }
    }
}

/// The cache opened for one scan, shared by its readers.
pub struct Scan<'a> {
    /// `Off` once closed.
    store: Store<'a>,
}

enum Store<'a> {
    Memory {
        map: Mutex<&'a mut HashMap<u64, Cached>>,
        /// The inodes a full scan saw.
        seen: Option<Mutex<HashSet<u64>>>,
    },
    Db {
        read: DB,
        /// A full scan's new store; `None`: entries go to `read`.
        fresh: Option<DB>,
        at: &'a Path,
        /// The files a full scan looked up.
        seen: Option<AtomicU64>,
    },
    Off,
}

impl<'a> Scan<'a> {
    /// No cache: every file hashed is read (a scan that hashes nothing).
    pub fn off() -> Self {
        Scan { store: Store::Off }
    }
}

impl Scan<'_> {
    /// The chunks of inode `ino` if it is known with this size and times.
    pub(super) fn get(
        &self,
        ino: u64,
        size: u64,
        mtime: (i64, i64),
        ctime: (i64, i64),
    ) -> Option<Vec<ChunkSum>> {
        let same = |c: &Cached| c.size == size && c.mtime == mtime && c.ctime == ctime;
        match &self.store {
            Store::Memory { map, seen } => {
                if let Some(seen) = seen {
                    seen.lock().insert(ino);
                }
                map.lock()
                    .get(&ino)
                    .filter(|c| same(c))
                    .map(|c| c.chunks.clone())
            }
            Store::Db {
                read, fresh, seen, ..
            } => {
                if let Some(seen) = seen {
                    seen.fetch_add(1, Ordering::Relaxed);
                }
                let key = ino.to_be_bytes();
                let raw = read.get_pinned(key).ok()??;
                let c: Cached = postcard::from_bytes(&raw).ok()?;
                if !same(&c) {
                    return None;
                }
                if let Some(fresh) = fresh {
                    let _ = fresh.put_opt(key, &raw, &no_wal());
                }
                Some(c.chunks)
            }
            Store::Off => None,
        }
    }

    /// Records the chunks of inode `ino`.
    pub(super) fn put(&self, ino: u64, c: Cached) {
        match &self.store {
            Store::Memory { map, .. } => {
                map.lock().insert(ino, c);
            }
            Store::Db { read, fresh, .. } => {
                let value = postcard::to_stdvec(&c).expect("serialisable");
                let db = fresh.as_ref().unwrap_or(read);
                let _ = db.put_opt(ino.to_be_bytes(), value, &no_wal());
            }
            Store::Off => {}
        }
    }

    /// Closes the cache: after a full scan that went `well`, what it saw
    /// replaces what was kept (when it copied it to a fresh store).
    pub fn finish(mut self, well: bool) {
        self.close(well);
    }

    fn close(&mut self, well: bool) {
        match std::mem::replace(&mut self.store, Store::Off) {
            Store::Memory { map, seen } => {
                if let (Some(seen), true) = (seen, well) {
                    let seen = seen.into_inner();
                    map.into_inner().retain(|ino, _| seen.contains(ino));
                }
            }
            Store::Db {
                read,
                fresh,
                at,
                seen,
            } => {
                if let (Some(seen), true) = (seen, well) {
                    let db = fresh.as_ref().unwrap_or(&read);
                    let n = seen.into_inner().to_be_bytes();
                    let _ = db.put_opt(SEEN, n, &no_wal());
                }
                let r = match fresh {
                    Some(fresh) => {
                        let flushed = if well { fresh.flush() } else { Ok(()) };
                        drop((read, fresh));
                        match flushed {
                            Ok(()) if well => swap_in(at),
                            _ => std::fs::remove_dir_all(named(at, FRESH)),
                        }
                    }
                    None => read.flush().map_err(std::io::Error::other),
                };
                if let Err(e) = r {
                    tracing::warn!("keeping the chunk cache in {}: {e}", at.display());
                }
                sys::give_back_memory();
            }
            Store::Off => {}
        }
    }
}

impl Drop for Scan<'_> {
    fn drop(&mut self) {
        self.close(false);
    }
}

fn named(at: &Path, name: &CStr) -> PathBuf {
    at.join(OsStr::from_bytes(name.to_bytes()))
}

fn no_wal() -> WriteOptions {
    // A crash loses what was not flushed: files are read again.
    let mut w = WriteOptions::default();
    w.disable_wal(true);
    w
}

fn open_db(path: &Path) -> Result<DB, rocksdb::Error> {
    let mut o = Options::default();
    o.create_if_missing(true);
    // BLAKE3 sums do not compress.
    o.set_compression_type(DBCompressionType::None);
    o.set_write_buffer_size(16 << 20);
    o.set_max_open_files(64);
    o.set_keep_log_file_num(2);
    DB::open(&o, path)
}

/// The store to read, and for a full scan that prunes a fresh one to fill.
fn open_store(at: &Path, full: bool) -> std::io::Result<(DB, Option<DB>)> {
    // The store is opened first: its lock keeps a second scan of the same
    // directory away from the fresh one too.
    let read = open_db(&named(at, STORE)).map_err(std::io::Error::other)?;
    import_legacy(at, &read);
    let fresh = if full && overgrown(&read) {
        let path = named(at, FRESH);
        // Left by a scan that did not end: it may miss entries.
        match std::fs::remove_dir_all(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        Some(open_db(&path).map_err(std::io::Error::other)?)
    } else {
        None
    };
    Ok((read, fresh))
}

/// Whether the store holds a tenth more entries than the files the last full
/// scan saw, and a few dozen (or it never counted them): entries of files
/// gone are worth dropping.
fn overgrown(db: &DB) -> bool {
    let last = db
        .get(SEEN)
        .ok()
        .flatten()
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map(u64::from_be_bytes);
    let Some(last) = last else { return true };
    let keys = db
        .property_int_value("rocksdb.estimate-num-keys")
        .ok()
        .flatten()
        .unwrap_or(u64::MAX);
    // Rewritten entries and the count's own key count twice until RocksDB
    // compacts them: a few dozen are no reason to copy a store.
    keys > last + last / 10 + 64
}

/// Reads the single-file cache of earlier releases into the store.
fn import_legacy(at: &Path, db: &DB) {
    let path = at.join(LEGACY);
    let Ok(bytes) = std::fs::read(&path) else {
        return;
    };
    let map: HashMap<u64, Cached> = postcard::from_bytes(&bytes).unwrap_or_default();
    drop(bytes);
    for (ino, c) in map {
        let value = postcard::to_stdvec(&c).expect("serialisable");
        let _ = db.put_opt(ino.to_be_bytes(), value, &no_wal());
    }
    if db.flush().is_ok() {
        let _ = std::fs::remove_file(&path);
    }
}

/// Puts the fresh store in place of the old one in one step, and removes
/// the old one.
fn swap_in(at: &Path) -> std::io::Result<()> {
    let dir = std::fs::File::open(at)?;
    sys::renameat2(
        dir.as_fd(),
        FRESH,
        dir.as_fd(),
        STORE,
        libc::RENAME_EXCHANGE,
    )
    .map_err(|e| std::io::Error::from_raw_os_error(e.code()))?;
    std::fs::remove_dir_all(named(at, FRESH))
}

#[cfg(test)]
impl Cache {
    /// How many files the cache knows (reads the store).
    pub(super) fn len(&mut self) -> usize {
        match &self.at {
            None => self.mem.len(),
            Some(at) => {
                let db = open_db(&named(at, STORE)).unwrap();
                db.iterator(rocksdb::IteratorMode::Start)
                    .filter(|kv| kv.as_ref().is_ok_and(|(k, _)| k.len() == 8))
                    .count()
            }
        }
    }
}
