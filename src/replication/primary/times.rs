//! Modification times the peer is owed. A plain write does not carry its
//! file's time (the next write would move it again): the time is *owed*,
//! recorded once per stretch in the change log so a resync ships it if the
//! link or this node goes first, and sent when the file is closed, before
//! a change of another kind, or every so often (see `keep_times`).

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use crate::changelog::{ChangeLog, NsChange};
use crate::fs::Mutation;
use crate::replication::entry;
use crate::replication::wire::Time;

/// Per directory: files written since their times last went to the peer,
/// with the change-log record that keeps each owed.
pub struct Owed(Vec<HashMap<PathBuf, u64>>);

impl Owed {
    pub fn new(dirs: usize) -> Self {
        Owed(vec![HashMap::new(); dirs])
    }

    /// Records, once per stretch, that `p`'s time is owed.
    pub fn owe(&mut self, log: &dyn ChangeLog, dir: u32, p: &Path) -> crate::changelog::Result<()> {
        let owed = &mut self.0[dir as usize];
        if owed.contains_key(p) {
            return Ok(());
        }
        let seq = log.log_ns(NsChange::SetAttr {
            path: p.to_path_buf(),
        })?;
        owed.insert(p.to_path_buf(), seq);
        Ok(())
    }

    /// The files owed in `dir`, and the last record that keeps them owed;
    /// `None` when nothing is.
    pub fn take(&mut self, dir: usize) -> Option<(Vec<PathBuf>, u64)> {
        let owed = std::mem::take(&mut self.0[dir]);
        let upto = owed.values().copied().max()?;
        Some((owed.into_keys().collect(), upto))
    }

    /// The link went: the records stay, and the resync ships those times.
    pub fn forget(&mut self) {
        self.0.iter_mut().for_each(HashMap::clear);
    }
}

/// The modification times the peer should end up with after `m`: the
/// file written, and the directories whose entries changed.
pub fn stamps(root: BorrowedFd<'_>, m: &Mutation<'_>) -> Vec<(Vec<u8>, Time)> {
    let parent = |p: &Path| p.parent().unwrap_or(Path::new("")).to_path_buf();
    let mut paths: Vec<PathBuf> = match m {
        // Other writes and fallocates owe theirs.
        Mutation::Write {
            path: Some(p),
            sync: true,
            ..
        }
        | Mutation::SetXattr { path: Some(p), .. }
        | Mutation::RemoveXattr { path: Some(p), .. } => vec![p.clone()],
        Mutation::SetAttr {
            path: Some(p),
            change,
        } if change.size.is_some() || change.mtime.is_none() => vec![p.clone()],
        Mutation::Create { path, .. }
        | Mutation::Mkdir { path, .. }
        | Mutation::Symlink { path, .. } => {
            vec![path.clone(), parent(path)]
        }
        Mutation::Link { path, .. } | Mutation::Unlink { path, .. } | Mutation::Rmdir { path } => {
            vec![parent(path)]
        }
        Mutation::Rename { from, to, .. } => vec![parent(from), parent(to)],
        _ => Vec::new(),
    };
    paths.dedup();
    paths.iter().filter_map(|p| stamp(root, p)).collect()
}

/// `p`'s modification time as the peer is to set it; `None` once `p` is gone.
pub fn stamp(root: BorrowedFd<'_>, p: &Path) -> Option<(Vec<u8>, Time)> {
    let fd = entry::open_node(root, p).ok()?;
    let st = crate::fs::sys::stat_fd(fd.as_fd()).ok()?;
    Some((bytes(p.as_os_str()), Time::mtime_of(&st)))
}

pub fn bytes(s: &std::ffi::OsStr) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    s.as_bytes().to_vec()
}
