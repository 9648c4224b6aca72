//! The messages two nodes exchange, and the owned, validated form of a mutation
//! as it travels from the primary to the secondary.

use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::versions::{Range, Speaks};

use crate::fs::{AttrChange, Mutation};

/// The link's protocol versions this release speaks: 3 is the protocol of
/// the releases before ranges; 4 adds the versions in the Hello.
pub const PROTOCOL: Range = Range::new(3, 5);

/// The first version with consistent cuts: `WireMutation::Cut` and
/// `Message::ManifestAt`.
pub const CUTS: u8 = 5;

/// The one version a peer that says nothing speaks.
pub const BEFORE_RANGES: u8 = 3;

/// Every message of the node-to-node protocol. One connection carries one
/// module; the primary of the module connects to the secondary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// First message on a connection, both ways. `dirs` is how many
    /// directories the module replicates (both sides must agree);
    /// `generation` the sender's current data generation.
    /// `verify`: the connection compares trees instead of replicating.
    Hello {
        cluster: String,
        node: String,
        modules: Vec<String>,
        dirs: u32,
        generation: u64,
        verify: bool,
        /// From the primary: when the secondary acknowledges.
        acks: AckAt,
        /// The sender's protocol versions and release, encoded after the
        /// message (see `frame`), where a release before ranges stops
        /// reading: it sends none and reads none.
        #[serde(skip)]
        speaks: Option<Speaks>,
        /// From a primary's new daemon that took over from the previous one
        /// in place (`tandem upgrade`) after the peer confirmed every change:
        /// the stream goes on, and an up-to-date secondary stays so. Encoded
        /// after `speaks`, where a release before it stops reading.
        #[serde(skip)]
        resumes: bool,
    },
    /// Target to source, after Hello: names and ranges that may differ because
    /// the target changed them itself (it served alone before). Sent in parts;
    /// `last` ends the list.
    /// `full` (with `last`): the target asks for a full sync, by content.
    Diverged {
        dir: u32,
        files: Vec<DivergedFile>,
        paths: Vec<Vec<u8>>,
        last: bool,
        full: bool,
    },
    /// One change for directory `dir` of the module, numbered in the order the
    /// primary applied it. `resync`: part of a resynchronisation, where a name
    /// that is already gone or already there is expected, not an error.
    /// `times`: modification times to set once it is applied (the file
    /// written, the directories whose entries changed), so both trees agree.
    Mutate {
        seq: u64,
        dir: u32,
        resync: bool,
        mutation: WireMutation,
        times: Vec<(Vec<u8>, Time)>,
    },
    /// The source shipped everything that differed up to `seq`; once that is
    /// durable the target is up to date and adopts the source's generation
    /// (`generation` and its `history`).
    ResyncDone {
        seq: u64,
        generation: u64,
        history: Vec<u64>,
    },
    /// From the secondary: it has read every mutation up to `received`,
    /// applied up to `applied`, and made durable up to `durable`.
    Ack {
        received: u64,
        applied: u64,
        durable: u64,
    },
    /// Verify: the manifest of directory `dir`, or of just `paths`; regular
    /// files hashed when `hash` (all of them, or those in `hash_only`).
    ManifestRequest {
        dir: u32,
        paths: Option<Vec<Vec<u8>>>,
        hash: bool,
    },
    /// Part of a manifest, in order; `last` ends it.
    Manifest {
        dir: u32,
        items: Vec<ManifestItem>,
        last: bool,
    },
    /// The sender is closing the connection, and why.
    Close { reason: String },
    /// First and only message of a command relayed to the other node: a
    /// control request in its JSON form (the operator's command was given
    /// on one node and is about the other).
    Control { request: String },
    /// The answer to [`Message::Control`], in its JSON form.
    ControlReply { response: String },
    /// On a verify connection: the manifest of `paths` as the receiver's
    /// snapshot `snapshot` saw them (taken at a [`WireMutation::Cut`]).
    ManifestAt {
        dir: u32,
        paths: Vec<Vec<u8>>,
        snapshot: String,
    },
}

/// When the secondary acknowledges what it was sent: what the primary's
/// ack mode waits for. Whatever the mode, it also acknowledges every few
/// MiB applied, each syncfs, and when idle, so lag and change-log clears
/// keep moving.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum AckAt {
    /// After every batch applied (`async`: the lag counts applied bytes).
    #[default]
    Batch,
    /// As soon as a durability point is read (`received`).
    Received,
    /// Once a durability point is applied (`durable`).
    Applied,
}

impl Message {
    /// The message's name, for errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "Hello",
            Message::Diverged { .. } => "Diverged",
            Message::Mutate { .. } => "Mutate",
            Message::ResyncDone { .. } => "ResyncDone",
            Message::Ack { .. } => "Ack",
            Message::Close { .. } => "Close",
            Message::Control { .. } => "Control",
            Message::ControlReply { .. } => "ControlReply",
            Message::ManifestAt { .. } => "ManifestAt",
            Message::ManifestRequest { .. } => "ManifestRequest",
            Message::Manifest { .. } => "Manifest",
        }
    }
}

/// A file's path and the byte ranges (start, end) that may differ.
pub type DivergedFile = (Vec<u8>, Vec<(u64, u64)>);

/// Seconds and nanoseconds since the epoch (negative seconds for older times).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Time {
    pub secs: i64,
    pub nanos: u32,
}

impl Time {
    /// A file's modification time from its stat.
    pub fn mtime_of(st: &libc::stat) -> Self {
        Time {
            secs: st.st_mtime,
            nanos: st.st_mtime_nsec as u32,
        }
    }

    pub fn atime_of(st: &libc::stat) -> Self {
        Time {
            secs: st.st_atime,
            nanos: st.st_atime_nsec as u32,
        }
    }

    /// For utimensat; `None` leaves that time as it is.
    pub fn timespec(t: Option<Time>) -> libc::timespec {
        match t {
            Some(t) => libc::timespec {
                tv_sec: t.secs,
                tv_nsec: t.nanos as i64,
            },
            None => libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            },
        }
    }
}

impl From<SystemTime> for Time {
    fn from(t: SystemTime) -> Self {
        let ts = crate::fs::to_timespec(t);
        Time {
            secs: ts.tv_sec,
            nanos: ts.tv_nsec as u32,
        }
    }
}

impl From<Time> for SystemTime {
    fn from(t: Time) -> Self {
        crate::fs::time_from_parts(t.secs, t.nanos as i64)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireAttrs {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<Time>,
    pub mtime: Option<Time>,
}

/// A mutation with owned data and paths as bytes (names need not be UTF-8).
/// `None` paths are files that were unlinked while open.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireMutation {
    Create {
        path: Vec<u8>,
        mode: u32,
        umask: u32,
        rdev: u64,
        uid: u32,
        gid: u32,
    },
    Mkdir {
        path: Vec<u8>,
        mode: u32,
        umask: u32,
        uid: u32,
        gid: u32,
    },
    Symlink {
        path: Vec<u8>,
        target: Vec<u8>,
        uid: u32,
        gid: u32,
    },
    Link {
        existing: Vec<u8>,
        path: Vec<u8>,
    },
    Unlink {
        path: Vec<u8>,
    },
    Rmdir {
        path: Vec<u8>,
    },
    Rename {
        from: Vec<u8>,
        to: Vec<u8>,
        flags: u32,
    },
    Write {
        path: Option<Vec<u8>>,
        offset: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        sync: bool,
    },
    Fallocate {
        path: Option<Vec<u8>>,
        offset: u64,
        length: u64,
        mode: i32,
    },
    SetAttr {
        path: Option<Vec<u8>>,
        attrs: WireAttrs,
    },
    SetXattr {
        path: Option<Vec<u8>>,
        name: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        flags: i32,
    },
    RemoveXattr {
        path: Option<Vec<u8>>,
        name: Vec<u8>,
    },
    Fsync {
        path: Option<Vec<u8>>,
        datasync: bool,
    },
    /// Make everything applied so far durable (syncfs on every directory of
    /// the module).
    Sync,
    /// Resync: make `path` what it is on the source (`None`: absent), apart
    /// from file contents, which travel as writes.
    Reconcile {
        path: Vec<u8>,
        entry: Option<Entry>,
    },
    /// Changes nothing but carries, in its message's `times`, the
    /// modification times of files written since their times last went out:
    /// writes do not carry them, since reading a file's times after every
    /// write makes the kernel give each later write a fresh fine-grained
    /// time, and every fdatasync on both nodes then writes the inode too.
    Times,
    /// Changes nothing: the secondary takes its snapshot `name` here, at
    /// the same point of the stream as the primary took its own.
    Cut {
        name: String,
    },
}

/// A content-defined chunk of a file and its BLAKE3 hash.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChunkSum {
    pub offset: u64,
    pub len: u32,
    pub hash: [u8; 32],
}

/// One element of a manifest: a name's state (`None`: it does not exist), or
/// more chunks of the file named just before (long lists travel in parts).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ManifestItem {
    Entry { path: Vec<u8>, entry: Option<Entry> },
    Chunks(Vec<ChunkSum>),
}

/// The state of one name on the source, as resync ships it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub kind: EntryKind,
    /// Permission bits, set-id and sticky bits (no file type).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub atime: Time,
    pub mtime: Time,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Hard link count (0: not known).
    #[serde(default)]
    pub links: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    File,
    Dir,
    Symlink(Vec<u8>),
    Fifo,
    Socket,
    Char(u64),
    Block(u64),
}

fn bytes(p: &Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    p.as_os_str().as_bytes().to_vec()
}

fn opt(p: &Option<PathBuf>) -> Option<Vec<u8>> {
    p.as_deref().map(bytes)
}

/// A message on its way out. A write's data stays the caller's buffer
/// (`data`, with the message's own left empty) until it is encrypted into
/// the socket: on the sync path a copy of every byte costs more than all
/// the framing around it.
pub struct Outgoing<'a> {
    pub msg: Message,
    pub data: &'a [u8],
}

impl Outgoing<'_> {
    pub fn whole(msg: Message) -> Self {
        Outgoing { msg, data: &[] }
    }

    /// The message with its data in it.
    pub fn to_message(&self) -> Message {
        let mut m = self.msg.clone();
        if let Message::Mutate {
            mutation: WireMutation::Write { data, .. },
            ..
        } = &mut m
            && data.is_empty()
        {
            *data = self.data.to_vec();
        }
        m
    }
}

impl WireMutation {
    /// The wire form of `m`, a write's data left in place (returned apart).
    pub fn split<'a>(m: &Mutation<'a>) -> (WireMutation, &'a [u8]) {
        match m {
            Mutation::Write {
                path,
                offset,
                data,
                sync,
            } => (
                WireMutation::Write {
                    path: opt(path),
                    offset: *offset,
                    data: Vec::new(),
                    sync: *sync,
                },
                data,
            ),
            m => (WireMutation::from(m), &[]),
        }
    }
}

impl From<&Mutation<'_>> for WireMutation {
    fn from(m: &Mutation<'_>) -> Self {
        use std::os::unix::ffi::OsStrExt;
        match m {
            Mutation::Create {
                path,
                mode,
                umask,
                rdev,
                uid,
                gid,
            } => WireMutation::Create {
                path: bytes(path),
                mode: *mode,
                umask: *umask,
                rdev: *rdev,
                uid: *uid,
                gid: *gid,
            },
            Mutation::Mkdir {
                path,
                mode,
                umask,
                uid,
                gid,
            } => WireMutation::Mkdir {
                path: bytes(path),
                mode: *mode,
                umask: *umask,
                uid: *uid,
                gid: *gid,
            },
            Mutation::Symlink {
                path,
                target,
                uid,
                gid,
            } => WireMutation::Symlink {
                path: bytes(path),
                target: bytes(target),
                uid: *uid,
                gid: *gid,
            },
            Mutation::Link { existing, path } => WireMutation::Link {
                existing: bytes(existing),
                path: bytes(path),
            },
            Mutation::Unlink { path, .. } => WireMutation::Unlink { path: bytes(path) },
            Mutation::Rmdir { path } => WireMutation::Rmdir { path: bytes(path) },
            Mutation::Rename {
                from, to, flags, ..
            } => WireMutation::Rename {
                from: bytes(from),
                to: bytes(to),
                flags: *flags,
            },
            Mutation::Write {
                path,
                offset,
                data,
                sync,
            } => WireMutation::Write {
                path: opt(path),
                offset: *offset,
                data: data.to_vec(),
                sync: *sync,
            },
            Mutation::Fallocate {
                path,
                offset,
                length,
                mode,
            } => WireMutation::Fallocate {
                path: opt(path),
                offset: *offset,
                length: *length,
                mode: *mode,
            },
            Mutation::SetAttr { path, change } => WireMutation::SetAttr {
                path: opt(path),
                attrs: attrs(change),
            },
            Mutation::SetXattr {
                path,
                name,
                value,
                flags,
            } => WireMutation::SetXattr {
                path: opt(path),
                name: name.as_bytes().to_vec(),
                value: value.to_vec(),
                flags: *flags,
            },
            Mutation::RemoveXattr { path, name } => WireMutation::RemoveXattr {
                path: opt(path),
                name: name.as_bytes().to_vec(),
            },
            Mutation::Fsync { path, datasync } => WireMutation::Fsync {
                path: opt(path),
                datasync: *datasync,
            },
        }
    }
}

fn attrs(c: &AttrChange) -> WireAttrs {
    WireAttrs {
        mode: c.mode,
        uid: c.uid,
        gid: c.gid,
        size: c.size,
        atime: c.atime.map(Time::from),
        mtime: c.mtime.map(Time::from),
    }
}

/// Why a path from the network was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    #[error("empty path")]
    Empty,
    #[error("path {0:?} holds a NUL byte")]
    Nul(String),
    #[error("path {0:?} is absolute")]
    Absolute(String),
    #[error("path {0:?} leaves the module root")]
    Escapes(String),
}

/// Checks a path received from the peer: relative, no `..`, no `.`, no empty
/// component, no NUL. Symlinks along the path are the applier's concern (it
/// resolves beneath the root without following them).
/// Like [`checked_path`], but the empty path names the module's root.
pub fn checked_path_or_root(raw: &[u8]) -> Result<PathBuf, PathError> {
    if raw.is_empty() {
        return Ok(PathBuf::new());
    }
    checked_path(raw)
}

pub fn checked_path(raw: &[u8]) -> Result<PathBuf, PathError> {
    use std::os::unix::ffi::OsStrExt;
    let shown = || String::from_utf8_lossy(raw).into_owned();
    if raw.is_empty() {
        return Err(PathError::Empty);
    }
    if raw.contains(&0) {
        return Err(PathError::Nul(shown()));
    }
    if raw[0] == b'/' {
        return Err(PathError::Absolute(shown()));
    }
    if raw
        .split(|b| *b == b'/')
        .any(|c| c.is_empty() || c == b"." || c == b"..")
    {
        return Err(PathError::Escapes(shown()));
    }
    let p = PathBuf::from(std::ffi::OsStr::from_bytes(raw));
    debug_assert!(p.components().all(|c| matches!(c, Component::Normal(_))));
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_leave_the_root_are_refused() {
        assert_eq!(checked_path(b"a/b/c").unwrap(), PathBuf::from("a/b/c"));
        assert_eq!(checked_path(b"").unwrap_err(), PathError::Empty);
        assert!(matches!(
            checked_path(b"/etc/passwd"),
            Err(PathError::Absolute(_))
        ));
        for bad in [&b"../x"[..], b"a/../../x", b"a/./b", b"a//b", b"a/", b".."] {
            assert!(
                matches!(checked_path(bad), Err(PathError::Escapes(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(checked_path(b"a\0b"), Err(PathError::Nul(_))));
        // Names that merely contain dots are ordinary names.
        assert!(checked_path(b"..hidden/x..y/...").is_ok());
    }

    #[test]
    fn times_round_trip_on_both_sides_of_the_epoch() {
        for (s, n) in [
            (0i64, 0u32),
            (1_700_000_000, 5),
            (-1, 999_999_999),
            (-5, 250_000_000),
            (-7, 0),
        ] {
            let t = Time { secs: s, nanos: n };
            assert_eq!(Time::from(SystemTime::from(t)), t, "{s}.{n}");
        }
    }

    #[test]
    fn mutations_convert_with_their_data() {
        let m = Mutation::Write {
            path: Some("a/b".into()),
            offset: 7,
            data: b"xyz",
            sync: true,
        };
        assert_eq!(
            WireMutation::from(&m),
            WireMutation::Write {
                path: Some(b"a/b".to_vec()),
                offset: 7,
                data: b"xyz".to_vec(),
                sync: true
            }
        );
        let m = Mutation::Write {
            path: None,
            offset: 0,
            data: b"",
            sync: false,
        };
        assert!(matches!(
            WireMutation::from(&m),
            WireMutation::Write { path: None, .. }
        ));
    }
}
