//! Manifests of a replicated tree: every name's state and, for regular files,
//! content-defined chunks (FastCDC, ~64 KiB average) hashed with BLAKE3.
//! Verify and full sync compare two manifests; only chunks whose hashes
//! differ need to travel.
//!
//! Hashing a file is the expensive part, so chunk lists are cached (see
//! [`cache`]).

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;

use parking_lot::Mutex;

use crate::fs::sys;

mod cache;

use cache::Cached;
pub use cache::{Cache, Scan};

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

fn errno(e: crate::fs::Errno) -> std::io::Error {
    std::io::Error::from_raw_os_error(e.code())
}

/// The chunks of the open regular file `fd`.
pub fn chunk_file(fd: BorrowedFd<'_>, progress: &ScanProgress) -> std::io::Result<Vec<ChunkSum>> {
    chunk_file_until(fd, progress, &AtomicBool::new(false))
}

/// [`chunk_file`], given up (`Interrupted`) once `stop` is set.
fn chunk_file_until(
    fd: BorrowedFd<'_>,
    progress: &ScanProgress,
    stop: &AtomicBool,
) -> std::io::Result<Vec<ChunkSum>> {
    const MAX_BUF: usize = 4 << 20;
    const AHEAD: usize = 16 << 20;
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
        if stop.load(Ordering::Relaxed) {
            return Err(std::io::ErrorKind::Interrupted.into());
        }
        if size > MAX_BUF {
            // The next reads are asked for before this buffer is hashed, so
            // the disk works while the CPU does.
            sys::will_need(fd, base + have as u64, AHEAD as u64);
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
    cache: &Scan<'_>,
    progress: &ScanProgress,
) -> std::io::Result<Option<Item>> {
    let never = AtomicBool::new(false);
    item_shared(root, path, hash(path), cache, progress, &never)
}

/// The items of `paths` in the order given (`None`: it does not exist),
/// looked up by [`READERS`] threads at once. Regular files are hashed when
/// `hash` says so. The first failure ends the lookups.
pub fn items(
    root: BorrowedFd<'_>,
    paths: &[PathBuf],
    hash: HashIf<'_>,
    cache: &Scan<'_>,
    progress: &ScanProgress,
) -> std::io::Result<Vec<Option<Item>>> {
    let want: Vec<bool> = paths.iter().map(|p| hash(p)).collect();
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let found: Vec<Mutex<Option<Item>>> = paths.iter().map(|_| Mutex::new(None)).collect();
    // The failure that stopped the others (theirs only say they stopped).
    let failed = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..READERS.min(paths.len()) {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(path) = paths.get(i) else { break };
                    match item_shared(root, path, want[i], cache, progress, &stop) {
                        Ok(it) => *found[i].lock() = it,
                        Err(e) => {
                            if !stop.swap(true, Ordering::Relaxed) {
                                *failed.lock() = Some(e);
                            }
                        }
                    }
                }
            });
        }
    });
    match failed.into_inner() {
        Some(e) => Err(e),
        None => Ok(found.into_iter().map(Mutex::into_inner).collect()),
    }
}

/// [`item`] for one of the scan's readers.
fn item_shared(
    root: BorrowedFd<'_>,
    path: &Path,
    want_hash: bool,
    cache: &Scan<'_>,
    progress: &ScanProgress,
    stop: &AtomicBool,
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
    if entry.kind == EntryKind::File && want_hash {
        let (mtime, ctime) = stat_times(&st);
        match cache.get(st.st_ino, st.st_size as u64, mtime, ctime) {
            Some(c) => {
                progress
                    .bytes_cached
                    .fetch_add(st.st_size as u64, Ordering::Relaxed);
                chunks = c;
            }
            None => {
                let fd = sys::reopen(node.as_fd(), libc::O_RDONLY).map_err(errno)?;
                chunks = chunk_file_until(fd.as_fd(), progress, stop)?;
                // Only if nothing changed while reading.
                let after = sys::stat_fd(fd.as_fd()).map_err(errno)?;
                if stat_times(&after) == (mtime, ctime) && after.st_size == st.st_size {
                    cache.put(
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

/// How many names are looked up (and files read and hashed) at once: a cold
/// tree is read at the disk's latency one file at a time, while several
/// reads in flight let it serve them together, and hashing overlaps reading.
const READERS: usize = 4;
/// How far the walk may run ahead of the items already handed out.
const WINDOW: usize = 256;

type Found = std::io::Result<Option<Item>>;

/// An item of the walk, in walk order: looked up already, or by a reader.
enum Slot {
    Done(Found),
    Running(mpsc::Receiver<Found>),
}

/// Every name below `root` (the root itself as `""`), parents before
/// children, in sorted order. Directories are listed by the walk itself;
/// every other name is looked up by one of [`READERS`] threads, and the
/// items are handed to `out` in walk order.
pub fn scan(
    root: BorrowedFd<'_>,
    hash: HashIf<'_>,
    cache: &Scan<'_>,
    progress: &ScanProgress,
    out: &mut dyn FnMut(Item) -> std::io::Result<()>,
) -> std::io::Result<()> {
    // Set when the walk ends early: what is still queued is not looked up,
    // and a file being hashed is given up.
    let stop = AtomicBool::new(false);
    let (jobs, queue) = mpsc::sync_channel::<(PathBuf, bool, mpsc::Sender<Found>)>(WINDOW);
    let queue = Mutex::new(queue);
    std::thread::scope(|s| {
        for _ in 0..READERS {
            s.spawn(|| {
                loop {
                    let job = queue.lock().recv();
                    let Ok((path, want, reply)) = job else { break };
                    if stop.load(Ordering::Relaxed) {
                        continue; // nobody listens any more
                    }
                    let found =
                        item_shared(root, &path, want, cache, progress, &stop).and_then(|it| {
                            match it {
                                // Its children would have to come next, and the
                                // walk is past them: the tree changed under the scan.
                                Some(it) if it.entry.kind == EntryKind::Dir => {
                                    Err(std::io::Error::other(format!(
                                        "{} became a directory during the scan",
                                        display(&path)
                                    )))
                                }
                                other => Ok(other),
                            }
                        });
                    let _ = reply.send(found);
                }
            });
        }
        // Set however the walk ends (an error, or a panic unwinding).
        struct Stop<'a>(&'a AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let _stop = Stop(&stop);
        let r = walk(root, hash, cache, progress, &stop, &jobs, out);
        drop(jobs); // the readers end once the queue is empty
        r
    })
}

fn walk(
    root: BorrowedFd<'_>,
    hash: HashIf<'_>,
    cache: &Scan<'_>,
    progress: &ScanProgress,
    stop: &AtomicBool,
    jobs: &mpsc::SyncSender<(PathBuf, bool, mpsc::Sender<Found>)>,
    out: &mut dyn FnMut(Item) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut pending = VecDeque::new();
    // (path, is a directory as far as its parent's listing says)
    let mut stack = vec![(PathBuf::new(), true)];
    while let Some((path, dir)) = stack.pop() {
        if !dir {
            let (tx, rx) = mpsc::channel();
            let want = hash(&path);
            jobs.send((path, want, tx)).map_err(|_| reader_gone())?;
            pending.push_back(Slot::Running(rx));
        } else {
            let found = item_shared(root, &path, false, cache, progress, stop);
            let listed = match &found {
                // Not a directory after all (replaced since it was listed, or
                // its type unknown): looked up again, as any other name.
                Ok(Some(it)) if it.entry.kind != EntryKind::Dir => {
                    progress.files.fetch_sub(1, Ordering::Relaxed);
                    stack.push((path, false));
                    continue;
                }
                Ok(Some(_)) => list_dir(root, &path),
                _ => Ok(Vec::new()),
            };
            pending.push_back(Slot::Done(found));
            match listed {
                Ok(mut names) => {
                    names.sort();
                    // Reversed onto the stack so they come off in order.
                    for (n, is_dir) in names.into_iter().rev() {
                        stack.push((path.join(OsStr::from_bytes(&n)), is_dir));
                    }
                }
                // After what came before it, like any other failure.
                Err(e) => {
                    pending.push_back(Slot::Done(Err(e)));
                    stack.clear();
                }
            }
        }
        hand_out(&mut pending, WINDOW, out)?;
    }
    hand_out(&mut pending, 0, out)
}

/// Hands out the items at the front that are ready, waiting for the front
/// one while more than `keep` are pending.
fn hand_out(
    pending: &mut VecDeque<Slot>,
    keep: usize,
    out: &mut dyn FnMut(Item) -> std::io::Result<()>,
) -> std::io::Result<()> {
    while let Some(slot) = pending.pop_front() {
        let found = match slot {
            Slot::Done(f) => f,
            Slot::Running(rx) if pending.len() >= keep => rx.recv().map_err(|_| reader_gone())?,
            Slot::Running(rx) => match rx.try_recv() {
                Ok(f) => f,
                Err(mpsc::TryRecvError::Empty) => {
                    pending.push_front(Slot::Running(rx));
                    return Ok(());
                }
                Err(mpsc::TryRecvError::Disconnected) => return Err(reader_gone()),
            },
        };
        if let Some(it) = found? {
            out(it)?;
        }
    }
    Ok(())
}

fn reader_gone() -> std::io::Error {
    std::io::Error::other("a scan reader ended")
}

/// The names in the directory `path`, each with whether it is a directory.
pub(super) fn list_dir(root: BorrowedFd<'_>, path: &Path) -> std::io::Result<Vec<(Vec<u8>, bool)>> {
    let node = match entry::open_node(root, path) {
        Ok(n) => n,
        Err(e) if e.code() == libc::ENOENT => return Ok(Vec::new()),
        Err(e) => return Err(errno(e)),
    };
    let dir = sys::reopen(node.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY).map_err(errno)?;
    let p = sys::proc_path(dir.as_raw_fd());
    let mut names = Vec::new();
    for e in std::fs::read_dir(Path::new(OsStr::from_bytes(p.as_bytes())))? {
        let e = e?;
        // The type from the listing itself; one that cannot be told is
        // looked up as a directory, and the item says what it is.
        let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(true);
        names.push((e.file_name().as_bytes().to_vec(), is_dir));
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
    use std::os::unix::fs::FileExt;

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

    /// Every name, parents first, in sorted order: what one thread walking
    /// the tree and reading each file in turn would hand out.
    fn serial_walk(dir: &Path, rel: &Path, out: &mut Vec<PathBuf>) {
        out.push(rel.to_path_buf());
        let full = dir.join(rel);
        if std::fs::symlink_metadata(&full).unwrap().is_dir() {
            let mut names: Vec<_> = std::fs::read_dir(&full)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            for n in names {
                serial_walk(dir, &rel.join(n), out);
            }
        }
    }

    /// Every item of a full scan that ends well.
    fn full_scan(
        root: &std::fs::File,
        hash: HashIf<'_>,
        cache: &mut Cache,
        progress: &ScanProgress,
    ) -> Vec<Item> {
        let mut got = Vec::new();
        let s = cache.begin(true);
        scan(root.as_fd(), hash, &s, progress, &mut |it| {
            got.push(it);
            Ok(())
        })
        .unwrap();
        s.finish(true);
        got
    }

    #[test]
    fn a_parallel_scan_hands_out_every_name_in_walk_order_and_hashes_through_the_cache() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        // Files and directories mixed in one directory, a deep path, a
        // symlink, an empty file and one larger than a read buffer.
        for i in 0..40 {
            let sub = d.join(format!("d{:02}", i % 7)).join(format!("e{}", i % 3));
            std::fs::create_dir_all(&sub).unwrap();
            std::fs::write(sub.join(format!("f{i}")), noise(1000 + i * 997, i as u64)).unwrap();
            std::fs::write(d.join(format!("top{i}")), noise(i * 50, i as u64)).unwrap();
        }
        std::fs::write(d.join("d03/big"), noise(9 << 20, 7)).unwrap();
        std::os::unix::fs::symlink("top1", d.join("link")).unwrap();
        let mut want = Vec::new();
        serial_walk(d, Path::new(""), &mut want);

        let root = std::fs::File::open(d).unwrap();
        let mut cache = Cache::default();
        let progress = ScanProgress::default();
        let hash_if = |p: &Path| !p.starts_with("d05");
        let got = full_scan(&root, &hash_if, &mut cache, &progress);
        let paths: Vec<_> = got.iter().map(|it| it.path.clone()).collect();
        assert!(paths == want, "walk order: {paths:?}\nwanted {want:?}");
        for it in &got {
            let full = d.join(&it.path);
            let meta = std::fs::symlink_metadata(&full).unwrap();
            if meta.is_file() && !it.path.starts_with("d05") {
                assert_eq!(
                    it.chunks,
                    chunks_of(&std::fs::read(&full).unwrap()),
                    "{:?}",
                    it.path
                );
            } else {
                assert!(it.chunks.is_empty(), "{:?} hashed", it.path);
            }
        }
        let hashed = progress.bytes_hashed.load(Ordering::Relaxed);
        assert!(hashed > 9 << 20);
        assert_eq!(progress.bytes_cached.load(Ordering::Relaxed), 0);

        // Again: nothing read, the same chunks from the cache.
        let again = ScanProgress::default();
        let second = full_scan(&root, &hash_if, &mut cache, &again);
        // (Reading the files moved their access times: paths and chunks only.)
        let sums = |v: &[Item]| {
            v.iter()
                .map(|it| (it.path.clone(), it.chunks.clone()))
                .collect::<Vec<_>>()
        };
        assert!(sums(&second) == sums(&got), "the second scan differs");
        assert_eq!(again.bytes_hashed.load(Ordering::Relaxed), 0);
        assert_eq!(again.bytes_cached.load(Ordering::Relaxed), hashed);
    }

    #[test]
    fn items_of_named_paths_come_in_the_order_asked_with_the_files_hashed() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        std::fs::create_dir(d.join("sub")).unwrap();
        let mut paths = Vec::new();
        for i in 0..60 {
            std::fs::write(d.join(format!("f{i}")), noise(500 + i * 4099, i as u64)).unwrap();
            paths.push(PathBuf::from(format!("f{i}")));
            if i % 20 == 0 {
                paths.push(PathBuf::from(format!("missing{i}")));
                paths.push(PathBuf::from("sub"));
            }
        }
        // Reversed: the order asked, not the walk's.
        paths.reverse();
        let root = std::fs::File::open(d).unwrap();
        let mut cache = Cache::default();
        let progress = ScanProgress::default();
        let s = cache.begin(false);
        let got = items(root.as_fd(), &paths, &all, &s, &progress).unwrap();
        s.finish(true);
        assert_eq!(got.len(), paths.len());
        for (p, it) in paths.iter().zip(&got) {
            let name = p.to_str().unwrap();
            match it {
                None => assert!(name.starts_with("missing"), "{name} not found"),
                Some(it) if name == "sub" => {
                    assert_eq!((&it.path, &it.entry.kind), (p, &EntryKind::Dir));
                    assert!(it.chunks.is_empty());
                }
                Some(it) => {
                    assert_eq!(&it.path, p);
                    assert_eq!(
                        it.chunks,
                        chunks_of(&std::fs::read(d.join(p)).unwrap()),
                        "{name}"
                    );
                }
            }
        }
        // Through the cache: a second lookup reads nothing.
        let again = ScanProgress::default();
        let s = cache.begin(false);
        let second = items(root.as_fd(), &paths, &all, &s, &again).unwrap();
        s.finish(true);
        assert_eq!(again.bytes_hashed.load(Ordering::Relaxed), 0);
        let sums = |v: &[Option<Item>]| {
            v.iter()
                .map(|i| i.as_ref().map(|i| i.chunks.clone()))
                .collect::<Vec<_>>()
        };
        assert!(sums(&second) == sums(&got));
        // A name below a file is not there either.
        let deep = vec![PathBuf::from("f1/below"), PathBuf::from("f1")];
        let s = cache.begin(false);
        let got = items(root.as_fd(), &deep, &none, &s, &ScanProgress::default()).unwrap();
        assert!(got[0].is_none());
        assert!(got[1].as_ref().is_some_and(|it| it.chunks.is_empty()));
    }

    #[test]
    fn the_cache_kept_in_a_store_spares_unchanged_files_and_forgets_files_gone() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("tree");
        std::fs::create_dir(&d).unwrap();
        for i in 0..300 {
            std::fs::write(d.join(format!("f{i}")), noise(5000 + i * 311, i as u64)).unwrap();
        }
        let root = std::fs::File::open(&d).unwrap();
        let state = t.path().join("state");
        std::fs::create_dir(&state).unwrap();
        let mut cache = Cache::in_dir(&state);
        let scan_with = |cache: &mut Cache, full: bool, well: bool| {
            let progress = ScanProgress::default();
            let s = cache.begin(full);
            scan(root.as_fd(), &all, &s, &progress, &mut |_| Ok(())).unwrap();
            s.finish(well);
            progress
        };
        let first = scan_with(&mut cache, true, true);
        let hashed = first.bytes_hashed.load(Ordering::Relaxed);
        assert!(hashed > 0);
        assert_eq!(cache.len(), 300);
        // A fresh cache over the same store: nothing hashed again.
        let mut cache = Cache::in_dir(&state);
        let second = scan_with(&mut cache, true, true);
        assert_eq!(second.bytes_hashed.load(Ordering::Relaxed), 0);
        assert_eq!(second.bytes_cached.load(Ordering::Relaxed), hashed);

        // A full scan that does not end well counts for nothing; what it
        // hashed is kept (each entry is checked against its file anyway).
        for i in 100..250 {
            std::fs::remove_file(d.join(format!("f{i}"))).unwrap();
        }
        std::fs::write(d.join("f7"), b"changed").unwrap();
        let failed = scan_with(&mut cache, true, false);
        assert_eq!(failed.bytes_hashed.load(Ordering::Relaxed), 7);
        assert_eq!(cache.len(), 300);
        assert!(!state.join("chunks.new").exists());
        // A partial scan records what it hashed in the store itself.
        std::fs::write(d.join("f8"), b"changed too").unwrap();
        let partial = scan_with(&mut cache, false, true);
        assert_eq!(partial.bytes_hashed.load(Ordering::Relaxed), 11);
        assert_eq!(cache.len(), 300);
        // The entries of files gone stay while they are few against the
        // files the last full scan saw (300): this scan sees 150.
        let counted = scan_with(&mut cache, true, true);
        assert_eq!(counted.bytes_hashed.load(Ordering::Relaxed), 0);
        assert_eq!(cache.len(), 300);
        assert!(!state.join("chunks.new").exists());
        // Against 150, 150 more is too many: the next full scan drops them,
        // and one that fails on the way keeps them.
        scan_with(&mut cache, true, false);
        assert_eq!(cache.len(), 300);
        let pruned = scan_with(&mut cache, true, true);
        assert_eq!(pruned.bytes_hashed.load(Ordering::Relaxed), 0);
        assert_eq!(cache.len(), 150);
        // Then the store is in proportion again: copied no more.
        scan_with(&mut cache, true, true);
        assert_eq!(cache.len(), 150);
    }

    #[test]
    fn the_single_file_cache_of_earlier_releases_is_read_into_the_store_once() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("tree");
        std::fs::create_dir(&d).unwrap();
        let data = noise(70_000, 3);
        std::fs::write(d.join("f"), &data).unwrap();
        let st = std::fs::metadata(d.join("f")).unwrap();
        use std::os::unix::fs::MetadataExt;
        // Chunks that are not the file's: proof they came from the old cache.
        let fake = vec![ChunkSum {
            offset: 0,
            len: 70_000,
            hash: [9; 32],
        }];
        let old: std::collections::HashMap<u64, Cached> = [(
            st.ino(),
            Cached {
                size: st.size(),
                mtime: (st.mtime(), st.mtime_nsec()),
                ctime: (st.ctime(), st.ctime_nsec()),
                chunks: fake.clone(),
            },
        )]
        .into();
        let state = t.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::fs::write(
            state.join("manifest.cache"),
            postcard::to_stdvec(&old).unwrap(),
        )
        .unwrap();
        let root = std::fs::File::open(&d).unwrap();
        let mut cache = Cache::in_dir(&state);
        let s = cache.begin(false);
        let it = item(
            root.as_fd(),
            Path::new("f"),
            &all,
            &s,
            &ScanProgress::default(),
        )
        .unwrap()
        .unwrap();
        s.finish(true);
        assert_eq!(it.chunks, fake);
        assert!(!state.join("manifest.cache").exists());
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn a_scan_stops_at_the_first_error_its_consumer_returns_without_reading_on() {
        let t = tempfile::tempdir().unwrap();
        const FILES: usize = 300;
        // Large files (sparse, so cheap to make) keep the readers slow next to
        // the walk thread: however long that thread is descheduled between
        // the error and setting the stop flag, they hash few files meanwhile.
        const SIZE: usize = 4 << 20;
        for i in 0..FILES {
            let f = std::fs::File::create(t.path().join(format!("f{i:04}"))).unwrap();
            f.write_all_at(&noise(4096, i as u64), 0).unwrap();
            f.set_len(SIZE as u64).unwrap();
        }
        let root = std::fs::File::open(t.path()).unwrap();
        let progress = ScanProgress::default();
        let mut seen = 0;
        let mut at_error = 0;
        let r = scan(
            root.as_fd(),
            &all,
            &Cache::default().begin(true),
            &progress,
            &mut |_| {
                seen += 1;
                if seen == 2 {
                    at_error = progress.bytes_hashed.load(Ordering::Relaxed) as usize;
                    Err(std::io::Error::other("enough"))
                } else {
                    Ok(())
                }
            },
        );
        assert_eq!(r.unwrap_err().to_string(), "enough");
        assert_eq!(seen, 2);
        // The names already queued were dropped, not read and hashed: after
        // the error only files already being read may still have been counted
        // (a margin for the walk thread descheduled while four readers keep
        // both CPUs busy; without the stop flag the queue of up to 256 names
        // is read to its end).
        let after = progress.bytes_hashed.load(Ordering::Relaxed) as usize - at_error;
        assert!(
            after <= 24 * READERS * SIZE,
            "{} files hashed after the error",
            after / SIZE
        );
    }
}
