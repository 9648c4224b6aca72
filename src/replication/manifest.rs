//! Manifests of a replicated tree: every name's state and, for regular files,
//! content-defined chunks (FastCDC, ~64 KiB average) hashed with BLAKE3.
//! Verify and full sync compare two manifests; only chunks whose hashes
//! differ need to travel.
//!
//! Hashing a file is the expensive part, so chunk lists are cached per
//! directory, keyed by inode with the file's size, mtime and ctime: a file
//! whose key did not change is not read again, and a repeated verify of
//! unchanged data is a metadata scan.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::fs::sys;

use super::entry;
use super::wire::{ChunkSum, Entry, EntryKind};

pub const MIN_CHUNK: usize = 16 * 1024;
pub const AVG_CHUNK: usize = 64 * 1024;
pub const MAX_CHUNK: usize = 256 * 1024;

/// One name of the tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub path: PathBuf,
    pub entry: Entry,
    /// Empty unless hashed (regular files only).
    pub chunks: Vec<ChunkSum>,
}

/// Counters a scan updates as it goes, for progress reports.
#[derive(Default, Debug)]
pub struct ScanProgress {
    pub files: AtomicU64,
    pub bytes_hashed: AtomicU64,
    pub bytes_cached: AtomicU64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Cached {
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    chunks: Vec<ChunkSum>,
}

/// The chunk-list cache of one directory, kept in a file in the state dir.
#[derive(Default)]
pub struct Cache {
    by_inode: HashMap<u64, Cached>,
    seen: HashMap<u64, ()>,
    path: Option<PathBuf>,
}

impl Cache {
    /// Loads the cache kept at `path` (an unreadable one starts empty).
    pub fn load(path: &Path) -> Self {
        let by_inode = std::fs::read(path)
            .ok()
            .and_then(|b| postcard::from_bytes(&b).ok())
            .unwrap_or_default();
        Self {
            by_inode,
            seen: HashMap::new(),
            path: Some(path.to_path_buf()),
        }
    }

    /// Writes the cache back, keeping only inodes seen by full scans since load.
    pub fn save(&mut self, full_scan: bool) -> std::io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        if full_scan {
            let seen = std::mem::take(&mut self.seen);
            self.by_inode.retain(|ino, _| seen.contains_key(ino));
        }
        let bytes = postcard::to_stdvec(&self.by_inode).map_err(std::io::Error::other)?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, path)
    }
}

fn errno(e: crate::fs::Errno) -> std::io::Error {
    std::io::Error::from_raw_os_error(e.code())
}

/// The chunks of the open regular file `fd`.
pub fn chunk_file(fd: BorrowedFd<'_>, progress: &ScanProgress) -> std::io::Result<Vec<ChunkSum>> {
    const MAX_BUF: usize = 4 << 20;
    // A small file gets a buffer its size (plus one byte to see the end).
    let size = sys::stat_fd(fd).map_err(errno)?.st_size as usize;
    let cap = if size < MAX_BUF { size + 1 } else { MAX_BUF };
    let mut buf = vec![0u8; cap];
    let mut have = 0usize;
    let mut base = 0u64; // file offset of buf[0]
    let mut eof = false;
    let mut out = Vec::new();
    loop {
        while !eof && have < buf.len() {
            let n = sys::pread(fd, &mut buf[have..], base + have as u64).map_err(errno)?;
            if n == 0 {
                eof = true;
            }
            have += n;
        }
        if have == 0 {
            break;
        }
        let mut used = 0usize;
        for c in fastcdc::v2020::FastCDC::new(&buf[..have], MIN_CHUNK, AVG_CHUNK, MAX_CHUNK) {
            // The last chunk of a full buffer may continue past it: read on.
            if !eof && c.offset + c.length == have {
                break;
            }
            let data = &buf[c.offset..c.offset + c.length];
            out.push(ChunkSum {
                offset: base + c.offset as u64,
                len: c.length as u32,
                hash: *blake3::hash(data).as_bytes(),
            });
            used = c.offset + c.length;
        }
        progress
            .bytes_hashed
            .fetch_add(used as u64, Ordering::Relaxed);
        if eof && used == have {
            break;
        }
        if used == 0 && buf.len() < MAX_BUF {
            // The file grew past the small buffer: give it room for whole chunks.
            buf.resize(MAX_BUF, 0);
            continue;
        }
        buf.copy_within(used..have, 0);
        have -= used;
        base += used as u64;
    }
    Ok(out)
}

fn stat_times(st: &libc::stat) -> ((i64, i64), (i64, i64)) {
    (
        (st.st_mtime, st.st_mtime_nsec),
        (st.st_ctime, st.st_ctime_nsec),
    )
}

/// Which regular files a scan hashes.
pub type HashIf<'a> = &'a dyn Fn(&Path) -> bool;

/// Hash every regular file.
pub fn all(_: &Path) -> bool {
    true
}

/// Hash none.
pub fn none(_: &Path) -> bool {
    false
}

/// The item for `path` below `root`; `None` if it does not exist. Regular
/// files are hashed when `hash` says so (through the cache).
pub fn item(
    root: BorrowedFd<'_>,
    path: &Path,
    hash: HashIf<'_>,
    cache: &mut Cache,
    progress: &ScanProgress,
) -> std::io::Result<Option<Item>> {
    let node = match entry::open_node(root, path) {
        Ok(n) => n,
        Err(e) if e.code() == libc::ENOENT || e.code() == libc::ENOTDIR => return Ok(None),
        Err(e) => return Err(errno(e)),
    };
    let st = sys::stat_fd(node.as_fd()).map_err(errno)?;
    let entry = entry::of_node(node.as_fd(), &st).map_err(errno)?;
    progress.files.fetch_add(1, Ordering::Relaxed);
    let mut chunks = Vec::new();
    if entry.kind == EntryKind::File && hash(path) {
        let (mtime, ctime) = stat_times(&st);
        cache.seen.insert(st.st_ino, ());
        match cache.by_inode.get(&st.st_ino) {
            Some(c) if c.size == st.st_size as u64 && c.mtime == mtime && c.ctime == ctime => {
                progress.bytes_cached.fetch_add(c.size, Ordering::Relaxed);
                chunks = c.chunks.clone();
            }
            _ => {
                let fd = sys::reopen(node.as_fd(), libc::O_RDONLY).map_err(errno)?;
                chunks = chunk_file(fd.as_fd(), progress)?;
                // Only if nothing changed while reading.
                let after = sys::stat_fd(fd.as_fd()).map_err(errno)?;
                if stat_times(&after) == (mtime, ctime) && after.st_size == st.st_size {
                    cache.by_inode.insert(
                        st.st_ino,
                        Cached {
                            size: st.st_size as u64,
                            mtime,
                            ctime,
                            chunks: chunks.clone(),
                        },
                    );
                }
            }
        }
    }
    Ok(Some(Item {
        path: path.to_path_buf(),
        entry,
        chunks,
    }))
}

/// Every name below `root` (the root itself as `""`), parents before
/// children, in sorted order.
pub fn scan(
    root: BorrowedFd<'_>,
    hash: HashIf<'_>,
    cache: &mut Cache,
    progress: &ScanProgress,
    out: &mut dyn FnMut(Item) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut stack = vec![PathBuf::new()];
    while let Some(path) = stack.pop() {
        let Some(it) = item(root, &path, hash, cache, progress)? else {
            continue; // removed while scanning
        };
        let is_dir = it.entry.kind == EntryKind::Dir;
        out(it)?;
        if is_dir {
            let mut names = list_dir(root, &path)?;
            names.sort();
            // Reversed onto the stack so they come off in order.
            for n in names.into_iter().rev() {
                stack.push(path.join(OsStr::from_bytes(&n)));
            }
        }
    }
    Ok(())
}

fn list_dir(root: BorrowedFd<'_>, path: &Path) -> std::io::Result<Vec<Vec<u8>>> {
    let node = match entry::open_node(root, path) {
        Ok(n) => n,
        Err(e) if e.code() == libc::ENOENT => return Ok(Vec::new()),
        Err(e) => return Err(errno(e)),
    };
    let dir = sys::reopen(node.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY).map_err(errno)?;
    let p = sys::proc_path(dir.as_raw_fd());
    let mut names = Vec::new();
    for e in std::fs::read_dir(Path::new(OsStr::from_bytes(p.as_bytes())))? {
        names.push(e?.file_name().as_bytes().to_vec());
    }
    Ok(names)
}

/// A name from the tree as the reports show it.
pub fn display(p: &Path) -> String {
    if p.as_os_str().is_empty() {
        ".".into()
    } else {
        p.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks_of(data: &[u8]) -> Vec<ChunkSum> {
        let t = tempfile_in_tmp(data);
        let f = std::fs::File::open(&t).unwrap();
        let r = chunk_file(f.as_fd(), &ScanProgress::default()).unwrap();
        std::fs::remove_file(&t).unwrap();
        r
    }

    fn tempfile_in_tmp(data: &[u8]) -> PathBuf {
        let p = std::env::temp_dir().join(format!(
            "tandem-chunks-{}-{}",
            std::process::id(),
            blake3::hash(data).to_hex()
        ));
        std::fs::write(&p, data).unwrap();
        p
    }

    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn chunks_cover_the_file_and_match_a_single_pass() {
        let data = noise(10 << 20, 42);
        let chunks = chunks_of(&data);
        let mut at = 0u64;
        for c in &chunks {
            assert_eq!(c.offset, at);
            assert!(c.len as usize <= MAX_CHUNK);
            assert_eq!(
                &c.hash,
                blake3::hash(&data[at as usize..at as usize + c.len as usize]).as_bytes()
            );
            at += c.len as u64;
        }
        assert_eq!(at, data.len() as u64);
        // The buffered reader cuts exactly where one pass over the whole file does.
        let whole: Vec<_> = fastcdc::v2020::FastCDC::new(&data, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK)
            .map(|c| (c.offset as u64, c.length as u32))
            .collect();
        let ours: Vec<_> = chunks.iter().map(|c| (c.offset, c.len)).collect();
        assert_eq!(ours, whole);
        assert!(chunks_of(b"").is_empty());
    }

    #[test]
    fn an_insertion_changes_only_nearby_chunks() {
        let data = noise(4 << 20, 7);
        let mut edited = data[..1_000_000].to_vec();
        edited.extend_from_slice(b"inserted bytes");
        edited.extend_from_slice(&data[1_000_000..]);
        let (a, b) = (chunks_of(&data), chunks_of(&edited));
        let hashes: std::collections::HashSet<_> = a.iter().map(|c| c.hash).collect();
        let new = b.iter().filter(|c| !hashes.contains(&c.hash)).count();
        assert!(new <= 2, "{new} of {} chunks changed", b.len());
    }
}
