//! Namespace change records: what happened to names and metadata, in order.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One namespace or metadata change that the peer may not have seen.
///
/// This is the change log's own small vocabulary, independent of the FUSE
/// layer's `Mutation`: it records *which* names changed, not the data needed
/// to replay the call (resync reads the current state of the source tree).
/// Paths are relative to the module root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NsChange {
    /// A regular file, fifo, socket or device node was created.
    Create {
        path: PathBuf,
    },
    Mkdir {
        path: PathBuf,
    },
    Symlink {
        path: PathBuf,
        target: PathBuf,
    },
    /// `path` became a second name of the file named `existing`. The change
    /// log keeps one name per file id; the new name gets its own id the first
    /// time it is [`ensure`](super::ChangeLog::ensure)d, and resync recreates
    /// the link from this record.
    Link {
        existing: PathBuf,
        path: PathBuf,
    },
    Unlink {
        path: PathBuf,
    },
    Rmdir {
        path: PathBuf,
    },
    /// `exchange`: renameat2's RENAME_EXCHANGE (both names swapped).
    Rename {
        from: PathBuf,
        to: PathBuf,
        exchange: bool,
    },
    /// Mode, owner, times (or size: see also [`ChangeLog::truncate`](super::ChangeLog::truncate)).
    SetAttr {
        path: PathBuf,
    },
    SetXattr {
        path: PathBuf,
        name: Vec<u8>,
    },
    RemoveXattr {
        path: PathBuf,
        name: Vec<u8>,
    },
}
