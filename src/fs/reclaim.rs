//! Keeps the mounts' descriptors within the process's open-file limit.
//!
//! A mount holds an `O_PATH` descriptor per inode the kernel has cached (see
//! `inode.rs`), and the kernel keeps inodes cached for as long as memory
//! allows: an application that walks a tree of a million files through the
//! mount would otherwise run the daemon out of descriptors, and every call
//! of every module would fail with EMFILE. Past a budget (half the limit,
//! shared by every mount of the process), the least recently used names are
//! invalidated in the kernel (`FUSE_NOTIFY_INVAL_ENTRY`): it drops the
//! dentries and inodes nothing uses, and its forgets close the descriptors.
//! Inodes in use (open files, working directories) stay.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::inode::{InodeTable, ROOT_ID};
use super::sys;

/// Inode descriptors held by every mount of this process.
static HELD: AtomicUsize = AtomicUsize::new(0);
/// How many they may be: half the open-file limit (set at the first mount).
static BUDGET: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Counts descriptors inode tables opened (`delta` > 0) or closed.
pub fn held(delta: isize) {
    if delta >= 0 {
        HELD.fetch_add(delta as usize, Ordering::Relaxed);
    } else {
        HELD.fetch_sub(delta.unsigned_abs(), Ordering::Relaxed);
    }
}

/// Sets the budget from the open-file limit `nofile`.
pub fn set_limit(nofile: u64) {
    let budget = (nofile / 2).max(512).min(usize::MAX as u64) as usize;
    BUDGET.store(budget, Ordering::Relaxed);
}

fn over() -> bool {
    HELD.load(Ordering::Relaxed) > BUDGET.load(Ordering::Relaxed)
}

/// One mount's reclaimer.
pub struct Reclaim {
    notifier: Mutex<Option<super::fuse::Notifier>>,
    /// The real root's absolute path as the kernel prints descriptor paths.
    prefix: PathBuf,
    running: AtomicBool,
    /// When a reclaim last found nothing the kernel would let go.
    stalled: Mutex<Option<Instant>>,
}

/// The least a reclaim asks the kernel to drop, and how long after one that
/// found the kernel holding on to everything it asked for the next may start.
const BATCH: usize = 256;
const SPACING: Duration = Duration::from_millis(100);

impl Reclaim {
    pub fn new(prefix: PathBuf) -> Self {
        Self {
            notifier: Mutex::new(None),
            prefix,
            running: AtomicBool::new(false),
            stalled: Mutex::new(None),
        }
    }

    /// The session's notifier, once it exists.
    pub fn set_notifier(&self, n: super::fuse::Notifier) {
        *self.notifier.lock() = Some(n);
    }

    /// After a lookup: past the budget, asks the kernel (from a thread of
    /// its own: the kernel takes the parent's lock, which a request this
    /// worker serves may hold) to forget the coldest names of `table`, until
    /// a quarter of the budget is free again or the kernel holds on to them.
    pub fn after_lookup(self: &Arc<Self>, table: &Arc<InodeTable>) {
        if !over() || self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        let recent = self.stalled.lock().is_some_and(|t| t.elapsed() < SPACING);
        let Some(notifier) = self.notifier.lock().clone().filter(|_| !recent) else {
            self.running.store(false, Ordering::Release);
            return;
        };
        let (me, table) = (self.clone(), table.clone());
        let spawned = std::thread::Builder::new()
            .name("tandem-reclaim".into())
            .spawn(move || {
                let mut total = 0;
                loop {
                    let low = BUDGET.load(Ordering::Relaxed) / 4 * 3;
                    let excess = HELD.load(Ordering::Relaxed).saturating_sub(low);
                    if excess == 0 {
                        break;
                    }
                    // Names asked for before whose forgets are still on
                    // their way are asked for again, and refused.
                    let asked = invalidate(&notifier, &table, &me.prefix, excess.max(BATCH));
                    total += asked;
                    if asked == 0 {
                        *me.stalled.lock() = Some(Instant::now());
                        break;
                    }
                }
                tracing::debug!("asked the kernel to forget {total} names");
                me.running.store(false, Ordering::Release);
            });
        if spawned.is_err() {
            self.running.store(false, Ordering::Release);
        }
    }
}

/// Invalidates up to `n` of the least recently used names of `table`;
/// how many the kernel took.
fn invalidate(
    notifier: &super::fuse::Notifier,
    table: &InodeTable,
    prefix: &Path,
    n: usize,
) -> usize {
    let Some(root) = table.get(ROOT_ID) else {
        return 0;
    };
    let mut asked = 0;
    for inode in table.coldest(n) {
        let Ok(path) = sys::fd_path(inode.fd.as_raw_fd()) else {
            continue;
        };
        let Ok(rel) = path.strip_prefix(prefix) else {
            continue;
        };
        let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
            continue;
        };
        let Some(parent_id) = parent_id(table, root.fd.as_fd(), parent) else {
            continue;
        };
        if notifier
            .inval_entry(super::fuse::INodeNo(parent_id), name)
            .is_ok()
        {
            asked += 1;
        }
    }
    asked
}

/// The node id of the directory `rel` below the root, if the kernel knows it.
fn parent_id(table: &InodeTable, root: BorrowedFd<'_>, rel: &Path) -> Option<u64> {
    if rel.as_os_str().is_empty() {
        return Some(ROOT_ID);
    }
    let name = sys::cname(rel.as_os_str()).ok()?;
    let fd = sys::openat(
        root,
        &name,
        libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    )
    .ok()?;
    let st = sys::stat_fd(fd.as_fd()).ok()?;
    table.by_key(st.st_dev, st.st_ino).map(|i| i.id)
}
