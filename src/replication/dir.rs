//! A replicated directory as the primary's pipeline, resync and verify use it.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::changelog::ChangeLog;

/// One replicated directory of the module.
pub struct Dir {
    /// `O_PATH` descriptor of the real directory, opened before the mount.
    pub root: OwnedFd,
    pub log: Arc<dyn ChangeLog>,
    /// Chunk lists of the files, for verify and full sync.
    pub cache: Mutex<super::manifest::Cache>,
    /// The module's snapshots on this node (shared by its directories).
    pub snaps: Option<Arc<super::snapshot::Snapshots>>,
}
