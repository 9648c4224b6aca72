//! One name as a snapshot saw it, with its content chunks: what a verify
//! compares at a consistent cut.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path};

use super::{Result, SnapshotError, Snapshots};
use crate::replication::manifest::{self, Item, ScanProgress};
use crate::replication::wire::EntryKind;

impl Snapshots {
    /// `path` of directory `dir` (real root `root`) as snapshot `name` saw
    /// it, hashed like a verify's manifest; `None` if it had no such name.
    pub fn item_at(
        &self,
        name: &str,
        dir: u32,
        root: BorrowedFd<'_>,
        path: &Path,
    ) -> Result<Option<Item>> {
        let s = self.find(name)?;
        let view = self.view(Some(s.id), dir, root);
        let mut ino = view.root_ino()?;
        for c in path.components() {
            let Component::Normal(part) = c else {
                return Ok(None);
            };
            if view.meta(ino)?.kind != EntryKind::Dir {
                return Ok(None);
            }
            match view
                .names(ino)?
                .into_iter()
                .find(|(n, _)| OsStr::from_bytes(n) == part)
            {
                Some((_, child)) => ino = child,
                None => return Ok(None),
            }
        }
        let entry = view.meta(ino)?;
        let mut chunks = Vec::new();
        if entry.kind == EntryKind::File {
            // The content as it was, in a file of no name beside the store.
            let tmp: std::fs::File = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_TMPFILE)
                .open(&self.path)
                .map_err(|e| SnapshotError::Target {
                    path: self.path.clone(),
                    why: format!("cannot make a scratch file: {e}"),
                })?;
            view.content(ino, entry.size, tmp.as_fd())?;
            chunks = manifest::chunk_file(tmp.as_fd(), &ScanProgress::default()).map_err(|e| {
                SnapshotError::Target {
                    path: path.to_path_buf(),
                    why: format!("hashing the snapshot's copy: {e}"),
                }
            })?;
        }
        Ok(Some(Item {
            path: path.to_path_buf(),
            entry,
            chunks,
        }))
    }
}
