//! The typed form of every change an application makes through the mount, and the
//! sink that sees each one. The replication pipeline is a sink; so is the logger
//! that `tandem mount` uses on its own.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use super::fuse::Errno;

/// Where a mutation lands, relative to the module root. `None` for a file that is
/// open but no longer has a name (unlinked while open): its bytes can never become
/// visible again, so a replica may ignore them.
pub type RelPath = Option<PathBuf>;

/// The attributes a `setattr` changes. Times are always concrete: a request for
/// "now" is resolved before it is applied, so a replica can set the same instant.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AttrChange {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SystemTime>,
    pub mtime: Option<SystemTime>,
}

/// One mutating file-system call, borrowed from the request that carried it.
/// What stays of a regular file when one of its names goes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Remains {
    /// Nothing under another name: the name was the file's last one.
    #[default]
    Nothing,
    /// Another name of the file, one the mount knows.
    Name(PathBuf),
    /// Other names, none of which the mount has looked up.
    Unseen,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mutation<'a> {
    /// A regular file, fifo, socket or device node came into existence.
    /// `mode` as requested; the new file's mode is `mode & !umask` unless the
    /// directory has a default ACL, which then decides (on either node alike).
    Create {
        path: PathBuf,
        mode: u32,
        umask: u32,
        rdev: u64,
        uid: u32,
        gid: u32,
    },
    Mkdir {
        path: PathBuf,
        mode: u32,
        umask: u32,
        uid: u32,
        gid: u32,
    },
    Symlink {
        path: PathBuf,
        target: PathBuf,
        uid: u32,
        gid: u32,
    },
    /// A new name `path` for the file already named `existing`.
    Link {
        existing: PathBuf,
        path: PathBuf,
    },
    /// `survivor`: what stays of the file (another name, if it is a hard
    /// link), so that what is recorded about the file can move to it.
    Unlink {
        path: PathBuf,
        survivor: Remains,
    },
    Rmdir {
        path: PathBuf,
    },
    /// `flags` are renameat2's (RENAME_NOREPLACE, RENAME_EXCHANGE).
    /// `survivor`: what stays of the file `to` named before.
    Rename {
        from: PathBuf,
        to: PathBuf,
        flags: u32,
        survivor: Remains,
    },
    /// `sync`: the file was opened O_SYNC or O_DSYNC, so the write is durable
    /// locally before it returns and must be on the peer too.
    Write {
        path: RelPath,
        offset: u64,
        data: &'a [u8],
        sync: bool,
    },
    Fallocate {
        path: RelPath,
        offset: u64,
        length: u64,
        mode: i32,
    },
    SetAttr {
        path: RelPath,
        change: AttrChange,
    },
    SetXattr {
        path: RelPath,
        name: OsString,
        value: &'a [u8],
        flags: i32,
    },
    RemoveXattr {
        path: RelPath,
        name: OsString,
    },
    /// The application asked for durability of a file (or directory) up to here.
    Fsync {
        path: RelPath,
        datasync: bool,
    },
}

impl Mutation<'_> {
    /// A short stable name of the call, used by counters and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Mutation::Create { .. } => "create",
            Mutation::Mkdir { .. } => "mkdir",
            Mutation::Symlink { .. } => "symlink",
            Mutation::Link { .. } => "link",
            Mutation::Unlink { .. } => "unlink",
            Mutation::Rmdir { .. } => "rmdir",
            Mutation::Rename { .. } => "rename",
            Mutation::Write { .. } => "write",
            Mutation::Fallocate { .. } => "fallocate",
            Mutation::SetAttr { .. } => "setattr",
            Mutation::SetXattr { .. } => "setxattr",
            Mutation::RemoveXattr { .. } => "removexattr",
            Mutation::Fsync { .. } => "fsync",
        }
    }

    /// Every kind, in the order `kind()` lists them (for counters and reports).
    pub const KINDS: [&'static str; 13] = [
        "create",
        "mkdir",
        "symlink",
        "link",
        "unlink",
        "rmdir",
        "rename",
        "write",
        "fallocate",
        "setattr",
        "setxattr",
        "removexattr",
        "fsync",
    ];
}

struct ShowPath<'p>(&'p Path);

impl fmt::Display for ShowPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.as_os_str().is_empty() {
            f.write_str(".")
        } else {
            write!(f, "{}", self.0.display())
        }
    }
}

struct ShowRel<'p>(&'p RelPath);

impl fmt::Display for ShowRel<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(p) => ShowPath(p).fmt(f),
            None => f.write_str("<unlinked>"),
        }
    }
}

fn show_name(name: &OsStr) -> String {
    name.to_string_lossy().into_owned()
}

impl fmt::Display for Mutation<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let k = self.kind();
        match self {
            Mutation::Create {
                path, mode, umask, ..
            }
            | Mutation::Mkdir {
                path, mode, umask, ..
            } => {
                write!(f, "{k} {} mode={mode:o} umask={umask:03o}", ShowPath(path))
            }
            Mutation::Symlink { path, target, .. } => {
                write!(f, "{k} {} -> {}", ShowPath(path), target.display())
            }
            Mutation::Link { existing, path } => {
                write!(f, "{k} {} => {}", ShowPath(existing), ShowPath(path))
            }
            Mutation::Unlink { path, .. } | Mutation::Rmdir { path } => {
                write!(f, "{k} {}", ShowPath(path))
            }
            Mutation::Rename {
                from, to, flags, ..
            } => {
                write!(f, "{k} {} -> {}", ShowPath(from), ShowPath(to))?;
                if *flags != 0 {
                    write!(f, " flags={flags:#x}")?;
                }
                Ok(())
            }
            Mutation::Write {
                path,
                offset,
                data,
                sync,
            } => {
                write!(
                    f,
                    "{k} {} @{offset}+{}{}",
                    ShowRel(path),
                    data.len(),
                    if *sync { " sync" } else { "" }
                )
            }
            Mutation::Fallocate {
                path,
                offset,
                length,
                mode,
            } => {
                write!(f, "{k} {} @{offset}+{length} mode={mode:#x}", ShowRel(path))
            }
            Mutation::SetAttr { path, change } => {
                write!(f, "{k} {}", ShowRel(path))?;
                if let Some(m) = change.mode {
                    write!(f, " mode={m:o}")?;
                }
                if let Some(u) = change.uid {
                    write!(f, " uid={u}")?;
                }
                if let Some(g) = change.gid {
                    write!(f, " gid={g}")?;
                }
                if let Some(s) = change.size {
                    write!(f, " size={s}")?;
                }
                if change.atime.is_some() {
                    f.write_str(" atime")?;
                }
                if change.mtime.is_some() {
                    f.write_str(" mtime")?;
                }
                Ok(())
            }
            Mutation::SetXattr {
                path, name, value, ..
            } => {
                write!(
                    f,
                    "{k} {} {}={}B",
                    ShowRel(path),
                    show_name(name),
                    value.len()
                )
            }
            Mutation::RemoveXattr { path, name } => {
                write!(f, "{k} {} {}", ShowRel(path), show_name(name))
            }
            Mutation::Fsync { path, datasync } => {
                write!(
                    f,
                    "{k} {}{}",
                    ShowRel(path),
                    if *datasync { " data" } else { "" }
                )
            }
        }
    }
}

/// The local half of a mutation: the system calls that apply it to the directory
/// under the mount. It reports the outcome; whatever else it produces (a new file
/// descriptor, a written length) it leaves in variables it captured.
pub type LocalApply<'f> = &'f mut dyn FnMut() -> Result<(), Errno>;

/// Receives every mutating call. The sink owns the ordering of the local apply
/// against whatever else it does (recording, sending, waiting for a peer), so the
/// replication pipeline can send first and apply in parallel, while a plain sink
/// just applies. Whatever the sink returns is what the application sees.
///
/// The sink must call `local` exactly once, and must not report success when
/// `local` failed: a failed call changed nothing and is never replicated.
pub trait MutationSink: Send + Sync + 'static {
    fn apply(&self, m: &Mutation<'_>, local: LocalApply<'_>) -> Result<(), Errno>;

    /// A descriptor open for writing was closed: metadata held back while
    /// the file was being written can go now. Changes nothing locally.
    fn closed(&self) {}
}

/// Counts mutations by kind and bytes written, and logs each one at debug level
/// (or prints it, for the demo).
#[derive(Default)]
pub struct CountingSink {
    counts: [AtomicU64; Mutation::KINDS.len()],
    bytes_written: AtomicU64,
    failed: AtomicU64,
    echo: bool,
    /// The sink that applies (the replication pipeline); `None`: apply locally.
    next: Option<std::sync::Arc<dyn MutationSink>>,
}

impl CountingSink {
    /// `echo` prints every applied mutation on stdout, one per line.
    pub fn new(echo: bool) -> Self {
        Self {
            echo,
            ..Self::default()
        }
    }

    /// Counts what `next` applies.
    pub fn wrapping(next: std::sync::Arc<dyn MutationSink>) -> Self {
        Self {
            next: Some(next),
            ..Self::default()
        }
    }

    /// `(kind, count)` for every kind seen at least once.
    pub fn counts(&self) -> Vec<(&'static str, u64)> {
        Mutation::KINDS
            .iter()
            .zip(&self.counts)
            .map(|(k, c)| (*k, c.load(Ordering::Relaxed)))
            .filter(|(_, c)| *c > 0)
            .collect()
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    pub fn bytes_written(&self) -> u64 {
        self.bytes_written.load(Ordering::Relaxed)
    }

    /// Calls whose local apply failed (not counted as mutations).
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// One line: `12 mutations (write 8, create 2, …), 32768 bytes written`.
    pub fn summary(&self) -> String {
        let parts: Vec<String> = self
            .counts()
            .iter()
            .map(|(k, c)| format!("{k} {c}"))
            .collect();
        format!(
            "{} mutations ({}), {} bytes written",
            self.total(),
            if parts.is_empty() {
                "none".to_string()
            } else {
                parts.join(", ")
            },
            self.bytes_written()
        )
    }
}

impl MutationSink for CountingSink {
    fn apply(&self, m: &Mutation<'_>, local: LocalApply<'_>) -> Result<(), Errno> {
        let result = match &self.next {
            Some(next) => next.apply(m, local),
            None => local(),
        };
        if result.is_err() {
            self.failed.fetch_add(1, Ordering::Relaxed);
            return result;
        }
        let idx = Mutation::KINDS
            .iter()
            .position(|k| *k == m.kind())
            .expect("every kind is listed");
        self.counts[idx].fetch_add(1, Ordering::Relaxed);
        if let Mutation::Write { data, .. } = m {
            self.bytes_written
                .fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        if self.echo {
            println!("{m}");
        } else {
            tracing::debug!(target: "tandem::mutation", "{m}");
        }
        result
    }

    fn closed(&self) {
        if let Some(next) = &self.next {
            next.closed();
        }
    }
}
