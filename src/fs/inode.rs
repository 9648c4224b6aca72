//! The kernel's node ids mapped to `O_PATH` descriptors of the real inodes.
//!
//! Holding a descriptor per looked-up inode (rather than a path) keeps every node
//! valid across renames, and pins the inode so its number cannot be reused while
//! the kernel still refers to it. Node ids are the real inode numbers where they
//! are unambiguous, so `stat` through the mount shows what the bare directory shows.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::sys::fd_path;
use std::sync::Arc;

use parking_lot::Mutex;

/// The kernel's id for the mount's root directory.
pub const ROOT_ID: u64 = 1;
/// Synthetic ids (inodes on another device below the root, or real inode 1) start
/// here, far above any inode number a file system hands out.
const SYNTHETIC_BASE: u64 = 1 << 62;

pub struct Inode {
    pub id: u64,
    pub fd: OwnedFd,
    pub dev: u64,
    pub ino: u64,
    /// File type bits (`S_IFMT`): an inode never changes type.
    pub kind: u32,
    /// Descriptors of other names of a hard-linked file. The kernel may keep using
    /// a name after the one `fd` was opened by is unlinked, and a replica must be
    /// told a name that still exists.
    pub aliases: Mutex<Vec<OwnedFd>>,
    /// The last name computed for this inode and the namespace generation it was
    /// computed in (see `TandemFs::rel`): saves a readlink on every write.
    pub path_cache: Mutex<Option<(u64, PathBuf)>>,
}

impl Inode {
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Keeps `fd` as another name of this hard-linked file, unless a kept
    /// descriptor already shows the same path. Names that are gone are dropped.
    fn add_alias(&self, fd: OwnedFd) {
        let Ok(path) = fd_path(fd.as_raw_fd()) else {
            return;
        };
        let mut aliases = self.aliases.lock();
        aliases.retain(|a| fd_path(a.as_raw_fd()).is_ok_and(|p| !is_deleted(&p)));
        let known = std::iter::once(&self.fd).chain(aliases.iter());
        if known
            .map(|a| fd_path(a.as_raw_fd()))
            .any(|p| p.as_ref() == Ok(&path))
        {
            return;
        }
        aliases.push(fd);
    }

    /// Absolute paths the kernel shows for this inode's known names, primary
    /// first. A name that is gone shows with a " (deleted)" suffix. An error
    /// (such as a path longer than PATH_MAX) is passed on, never taken for "no name".
    pub fn paths(&self) -> Result<Vec<PathBuf>, super::fuse::Errno> {
        let primary = fd_path(self.fd.as_raw_fd())?;
        let mut out = vec![primary];
        if is_deleted(&out[0]) {
            for a in self.aliases.lock().iter() {
                out.push(fd_path(a.as_raw_fd())?);
            }
        }
        Ok(out)
    }

    /// Absolute paths of every known name that still exists (as far as the
    /// kernel's dentries tell).
    pub fn names(&self) -> Vec<PathBuf> {
        let aliases = self.aliases.lock();
        std::iter::once(&self.fd)
            .chain(aliases.iter())
            .filter_map(|a| fd_path(a.as_raw_fd()).ok())
            .filter(|p| !is_deleted(p))
            .collect()
    }
}

const DELETED: &[u8] = b" (deleted)";

pub fn is_deleted(p: &Path) -> bool {
    p.as_os_str().as_bytes().ends_with(DELETED)
}

struct Entry {
    inode: Arc<Inode>,
    nlookup: u64,
    /// When the kernel last asked for it (see [`Maps::tick`]).
    used: u64,
}

#[derive(Default)]
struct Maps {
    by_id: HashMap<u64, Entry>,
    by_key: HashMap<(u64, u64), u64>,
    next_synthetic: u64,
    /// Counts the table's uses: the clock of [`InodeTable::coldest`].
    tick: u64,
}

impl Maps {
    fn now(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }
}

pub struct InodeTable {
    root_dev: u64,
    maps: Mutex<Maps>,
}

impl InodeTable {
    pub fn new(root_fd: OwnedFd, dev: u64, ino: u64) -> Self {
        let root = Arc::new(Inode {
            id: ROOT_ID,
            fd: root_fd,
            dev,
            ino,
            kind: libc::S_IFDIR,
            aliases: Mutex::default(),
            path_cache: Mutex::default(),
        });
        let mut maps = Maps {
            next_synthetic: SYNTHETIC_BASE,
            ..Maps::default()
        };
        maps.by_key.insert((dev, ino), ROOT_ID);
        // The root is never forgotten: its lookup count starts at one and stays.
        maps.by_id.insert(
            ROOT_ID,
            Entry {
                inode: root,
                nlookup: 1,
                used: 0,
            },
        );
        super::reclaim::held(1);
        Self {
            root_dev: dev,
            maps: Mutex::new(maps),
        }
    }

    pub fn get(&self, id: u64) -> Option<Arc<Inode>> {
        let mut m = self.maps.lock();
        let now = m.now();
        let e = m.by_id.get_mut(&id)?;
        e.used = now;
        Some(e.inode.clone())
    }

    /// Up to `n` of the inodes the kernel asked for least recently (never
    /// the root).
    pub fn coldest(&self, n: usize) -> Vec<Arc<Inode>> {
        let m = self.maps.lock();
        let mut all: Vec<(u64, &Arc<Inode>)> = m
            .by_id
            .values()
            .filter(|e| e.inode.id != ROOT_ID)
            .map(|e| (e.used, &e.inode))
            .collect();
        if all.len() > n {
            all.select_nth_unstable_by_key(n, |(used, _)| *used);
            all.truncate(n);
        }
        all.into_iter().map(|(_, i)| i.clone()).collect()
    }

    /// The node of the inode `(dev, ino)`, if the kernel knows it.
    pub fn by_key(&self, dev: u64, ino: u64) -> Option<Arc<Inode>> {
        let m = self.maps.lock();
        let id = m.by_key.get(&(dev, ino))?;
        m.by_id.get(id).map(|e| e.inode.clone())
    }

    /// Registers one more kernel reference to the inode behind `fd` (a fresh
    /// `O_PATH` descriptor, `st` its stat), reusing the node if the inode is known.
    pub fn lookup(&self, fd: OwnedFd, st: &libc::stat) -> Arc<Inode> {
        let (dev, ino, kind) = (st.st_dev, st.st_ino, st.st_mode & libc::S_IFMT);
        let mut m = self.maps.lock();
        let now = m.now();
        if let Some(id) = m.by_key.get(&(dev, ino)).copied() {
            let e = m.by_id.get_mut(&id).expect("key map and id map agree");
            e.nlookup += 1;
            e.used = now;
            let inode = e.inode.clone();
            drop(m);
            if kind != libc::S_IFDIR && st.st_nlink > 1 {
                inode.add_alias(fd);
            }
            return inode;
        }
        let id = if dev == self.root_dev && ino != ROOT_ID && ino < SYNTHETIC_BASE {
            ino
        } else {
            m.next_synthetic += 1;
            m.next_synthetic
        };
        let inode = Arc::new(Inode {
            id,
            fd,
            dev,
            ino,
            kind,
            aliases: Mutex::default(),
            path_cache: Mutex::default(),
        });
        m.by_key.insert((dev, ino), id);
        m.by_id.insert(
            id,
            Entry {
                inode: inode.clone(),
                nlookup: 1,
                used: now,
            },
        );
        super::reclaim::held(1);
        inode
    }

    /// Drops `n` kernel references; the descriptor closes with the last one.
    pub fn forget(&self, id: u64, n: u64) {
        if id == ROOT_ID {
            return;
        }
        let mut m = self.maps.lock();
        let Some(e) = m.by_id.get_mut(&id) else {
            return;
        };
        e.nlookup = e.nlookup.saturating_sub(n);
        if e.nlookup == 0 {
            let key = (e.inode.dev, e.inode.ino);
            m.by_id.remove(&id);
            m.by_key.remove(&key);
            super::reclaim::held(-1);
        }
    }
}

impl Drop for InodeTable {
    fn drop(&mut self) {
        super::reclaim::held(-(self.maps.get_mut().by_id.len() as isize));
    }
}

/// One inode as a hand-over carries it: descriptors by number.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InodeImage {
    pub id: u64,
    pub fd: RawFd,
    pub dev: u64,
    pub ino: u64,
    pub kind: u32,
    pub aliases: Vec<RawFd>,
    /// The kernel's lookups; 0 for an inode only an open handle still holds.
    pub nlookup: u64,
}

impl InodeImage {
    pub fn of(inode: &Inode, nlookup: u64) -> Self {
        Self {
            id: inode.id,
            fd: inode.fd.as_raw_fd(),
            dev: inode.dev,
            ino: inode.ino,
            kind: inode.kind,
            aliases: inode.aliases.lock().iter().map(|a| a.as_raw_fd()).collect(),
            nlookup,
        }
    }

    /// Takes ownership of the descriptors it names.
    ///
    /// # Safety
    /// Each descriptor named is open, owned by nobody else, and named once.
    pub unsafe fn into_inode(self) -> Inode {
        // SAFETY: the caller's contract.
        let own = |fd| unsafe { OwnedFd::from_raw_fd(fd) };
        Inode {
            id: self.id,
            fd: own(self.fd),
            dev: self.dev,
            ino: self.ino,
            kind: self.kind,
            aliases: Mutex::new(self.aliases.into_iter().map(own).collect()),
            path_cache: Mutex::default(),
        }
    }
}

impl InodeTable {
    /// Every inode the kernel knows, and the next synthetic number.
    pub fn export(&self) -> (Vec<InodeImage>, u64) {
        let m = self.maps.lock();
        let mut out: Vec<InodeImage> = m
            .by_id
            .values()
            .map(|e| InodeImage::of(&e.inode, e.nlookup))
            .collect();
        out.sort_by_key(|i| i.id);
        (out, m.next_synthetic)
    }

    /// A table of inodes handed over (the root among them). Inodes with no
    /// lookup left are returned aside: only open handles still hold them.
    pub fn restore(
        inodes: Vec<Inode>,
        nlookups: &[u64],
        next_synthetic: u64,
    ) -> Result<(Self, Vec<Arc<Inode>>), &'static str> {
        let mut maps = Maps {
            next_synthetic,
            ..Maps::default()
        };
        let mut aside = Vec::new();
        let mut root_dev = None;
        for (inode, &nlookup) in inodes.into_iter().zip(nlookups) {
            let inode = Arc::new(inode);
            if inode.id == ROOT_ID {
                root_dev = Some(inode.dev);
            }
            if nlookup == 0 && inode.id != ROOT_ID {
                aside.push(inode);
                continue;
            }
            if maps
                .by_key
                .insert((inode.dev, inode.ino), inode.id)
                .is_some()
                || maps.by_id.contains_key(&inode.id)
            {
                return Err("an inode is named twice");
            }
            maps.by_id.insert(
                inode.id,
                Entry {
                    inode,
                    nlookup,
                    used: 0,
                },
            );
        }
        let root_dev = root_dev.ok_or("the root inode is missing")?;
        super::reclaim::held(maps.by_id.len() as isize);
        Ok((
            Self {
                root_dev,
                maps: Mutex::new(maps),
            },
            aside,
        ))
    }
}
