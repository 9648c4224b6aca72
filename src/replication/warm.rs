//! Warms the kernel's caches for the files a resync reaches next, on both
//! nodes: the file's name and inode, and the ranges about to be read (on
//! the peer: overwritten, after their before-image is read). A resync goes
//! through its files one at a time, and after a restart, or in a big tree,
//! each costs a few disk waits when cold; a few threads that look the next
//! files up meanwhile let the disk serve those waits together.
//!
//! The threads are shared by every module of the process, started when
//! there is work and gone after a spell without (or at once, at a stop:
//! [`end_all`]). A job is only a hint: when the queue is full it is dropped.

use std::ops::Range;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, mpsc};
use std::time::Duration;

use parking_lot::Mutex;

use super::entry;
use crate::fs::sys;

const THREADS: usize = 4;
const QUEUE: usize = 512;
/// How long a thread waits for work before it ends.
const IDLE: Duration = Duration::from_secs(5);
/// How often a waiting thread looks whether it should end.
const TICK: Duration = Duration::from_millis(50);

/// The roots of a module's directories, as the jobs refer to them.
pub type Roots = Arc<Vec<OwnedFd>>;

struct Job {
    roots: Roots,
    dir: usize,
    path: PathBuf,
    ranges: Vec<Range<u64>>,
}

struct Pool {
    tx: mpsc::SyncSender<Job>,
    rx: Mutex<mpsc::Receiver<Job>>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// Set by [`end_all`]: threads end instead of waiting.
    ending: AtomicBool,
}

static POOL: OnceLock<Pool> = OnceLock::new();

/// Asks for `path` in directory `dir` of `roots` to be looked up, and
/// `ranges` of it read from the disk, ahead of its use.
pub fn ahead(roots: &Roots, dir: usize, path: PathBuf, ranges: Vec<Range<u64>>) {
    let pool = POOL.get_or_init(|| {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        Pool {
            tx,
            rx: Mutex::new(rx),
            threads: Mutex::new(Vec::new()),
            ending: AtomicBool::new(false),
        }
    });
    let job = Job {
        roots: roots.clone(),
        dir,
        path,
        ranges,
    };
    if pool.tx.try_send(job).is_err() {
        return;
    }
    let mut threads = pool.threads.lock();
    threads.retain(|t| !t.is_finished());
    if threads.len() < THREADS
        && let Ok(t) = std::thread::Builder::new()
            .name("tandem-warm".into())
            .spawn(move || work(pool))
    {
        threads.push(t);
    }
}

fn work(pool: &'static Pool) {
    let mut idle = Duration::ZERO;
    while !pool.ending.load(Ordering::Acquire) {
        let job = pool.rx.lock().recv_timeout(TICK);
        match job {
            Ok(job) => {
                idle = Duration::ZERO;
                warm(&job);
            }
            Err(mpsc::RecvTimeoutError::Timeout) if idle < IDLE => idle += TICK,
            Err(_) => return,
        }
    }
}

/// Ends the threads, each after the job it is doing, and drops the jobs
/// still queued: at a stop, nothing is left running. Later jobs start
/// threads again.
pub fn end_all() {
    let Some(pool) = POOL.get() else {
        return;
    };
    pool.ending.store(true, Ordering::Release);
    let threads = std::mem::take(&mut *pool.threads.lock());
    for t in threads {
        let _ = t.join();
    }
    while pool.rx.lock().try_recv().is_ok() {}
    pool.ending.store(false, Ordering::Release);
}

fn warm(job: &Job) {
    if let Some(root) = job.roots.get(job.dir) {
        // The lookup alone brings the name and the inode in.
        let _ = read_ahead(root.as_fd(), &job.path, &job.ranges);
    }
}

/// Opens the regular file `path` below `root` for reading and asks the
/// kernel to read `ranges` of it; `None` if it is not there or not a
/// regular file.
pub fn read_ahead(root: BorrowedFd<'_>, path: &Path, ranges: &[Range<u64>]) -> Option<OwnedFd> {
    let node = entry::open_node(root, path).ok()?;
    let st = sys::stat_fd(node.as_fd()).ok()?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return None;
    }
    let fd = sys::reopen(node.as_fd(), libc::O_RDONLY).ok()?;
    for r in ranges {
        sys::will_need(fd.as_fd(), r.start, r.end - r.start);
    }
    Some(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cached_pages(path: &std::path::Path) -> usize {
        let f = std::fs::File::open(path).unwrap();
        let len = f.metadata().unwrap().len() as usize;
        // SAFETY: a read-only shared mapping of an open file of `len` bytes,
        // unmapped below; mincore writes one byte per page into `vec`.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&f),
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            let pages = len.div_ceil(4096);
            let mut vec = vec![0u8; pages];
            assert_eq!(libc::mincore(p, len, vec.as_mut_ptr()), 0);
            libc::munmap(p, len);
            vec.iter().filter(|b| **b & 1 != 0).count()
        }
    }

    #[test]
    fn the_ranges_asked_for_are_read_ahead() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("f");
        std::fs::write(&path, vec![5u8; 4 << 20]).unwrap();
        let f = std::fs::File::open(&path).unwrap();
        f.sync_all().unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
        // SAFETY: fadvise takes no pointer; `fd` is open.
        unsafe { libc::posix_fadvise(fd, 0, 0, libc::POSIX_FADV_DONTNEED) };
        let before = cached_pages(&path);
        assert!(
            before < 64,
            "the test's file system keeps {before} pages cached"
        );
        let roots: Roots = Arc::new(vec![std::fs::File::open(t.path()).unwrap().into()]);
        ahead(
            &roots,
            0,
            "f".into(),
            vec![1 << 20..(1 << 20) + (256 << 10)],
        );
        let warmed = (0..200).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            cached_pages(&path) >= before + 64
        });
        assert!(
            warmed,
            "{} pages cached, {before} before",
            cached_pages(&path)
        );
        // A name that is not there, or that leaves the root, is no error.
        ahead(&roots, 0, "missing".into(), vec![0..10]);
        ahead(&roots, 0, "../f".into(), vec![0..10]);
        ahead(&roots, 7, "f".into(), vec![0..10]);
        // At a stop, the threads end.
        end_all();
        let names: Vec<String> = std::fs::read_dir("/proc/self/task")
            .unwrap()
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
            .collect();
        assert!(
            !names.iter().any(|n| n.trim() == "tandem-warm"),
            "{names:?}"
        );
    }
}
