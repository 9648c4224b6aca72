//! Answers to the kernel's requests: each one is sent once, as one `writev`
//! on the descriptor the request was read from; one dropped unsent answers EIO,
//! so that no caller waits forever on a request a panic or a bug left behind.

use std::ffi::OsStr;
use std::io::IoSlice;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::Duration;

use super::abi;
use super::{Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo};

/// Where the answers of one reader's requests go.
#[derive(Clone, Debug)]
pub struct Sender(pub(super) Arc<OwnedFd>);

impl Sender {
    /// Writes one message; `parts` follow the header in order.
    pub(super) fn send(&self, unique: u64, error: i32, parts: &[&[u8]]) {
        let len = abi::OUT_HEADER + parts.iter().map(|p| p.len()).sum::<usize>();
        let header = abi::out_header(len, error, unique);
        let mut iov = Vec::with_capacity(parts.len() + 1);
        iov.push(IoSlice::new(&header));
        iov.extend(
            parts
                .iter()
                .filter(|p| !p.is_empty())
                .map(|p| IoSlice::new(p)),
        );
        match nix::sys::uio::writev(&*self.0, &iov) {
            Ok(_) => {}
            // The caller went away (interrupted, or the mount was aborted).
            Err(nix::errno::Errno::ENOENT | nix::errno::Errno::ENODEV) => {}
            Err(e) => tracing::warn!("answering FUSE request {unique}: {e}"),
        }
    }

    /// Writes a notification (its header included in `msg`).
    pub(super) fn notify(&self, msg: &[u8]) -> std::io::Result<()> {
        nix::unistd::write(&*self.0, msg)?;
        Ok(())
    }
}

/// One request's answer, not yet given.
#[derive(Debug)]
struct Raw {
    unique: u64,
    sender: Option<Sender>,
}

impl Raw {
    fn send(mut self, parts: &[&[u8]]) {
        if let Some(s) = self.sender.take() {
            s.send(self.unique, 0, parts);
        }
    }

    fn error(mut self, e: Errno) {
        if let Some(s) = self.sender.take() {
            s.send(self.unique, -e.code(), &[]);
        }
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        if let Some(s) = self.sender.take() {
            s.send(self.unique, -libc::EIO, &[]);
        }
    }
}

macro_rules! reply {
    ($($name:ident),*) => {$(
        #[derive(Debug)]
        pub struct $name(Raw);
        impl $name {
            pub(super) fn new(unique: u64, sender: Sender) -> Self {
                Self(Raw { unique, sender: Some(sender) })
            }
            pub fn error(self, e: Errno) {
                self.0.error(e);
            }
        }
    )*};
}
reply!(
    ReplyEntry,
    ReplyAttr,
    ReplyData,
    ReplyOpen,
    ReplyWrite,
    ReplyEmpty,
    ReplyStatfs,
    ReplyCreate,
    ReplyLseek,
    ReplyXattr
);

impl ReplyEntry {
    pub fn entry(self, ttl: &Duration, attr: &FileAttr, generation: Generation) {
        let mut out = Vec::with_capacity(128);
        abi::put_entry(&mut out, *ttl, attr, generation.0);
        self.0.send(&[&out]);
    }
}

impl ReplyAttr {
    pub fn attr(self, ttl: &Duration, attr: &FileAttr) {
        let mut out = Vec::with_capacity(104);
        abi::put_attr_out(&mut out, *ttl, attr);
        self.0.send(&[&out]);
    }
}

impl ReplyData {
    pub fn data(self, data: &[u8]) {
        self.0.send(&[data]);
    }
}

impl ReplyOpen {
    pub fn opened(self, fh: FileHandle, flags: FopenFlags) {
        let mut out = Vec::with_capacity(16);
        abi::put_open(&mut out, fh.0, flags.0);
        self.0.send(&[&out]);
    }
}

impl ReplyWrite {
    pub fn written(self, size: u32) {
        let mut out = [0u8; 8];
        out[..4].copy_from_slice(&size.to_ne_bytes());
        self.0.send(&[&out]);
    }
}

impl ReplyEmpty {
    pub fn ok(self) {
        self.0.send(&[]);
    }
}

impl ReplyStatfs {
    #[allow(clippy::too_many_arguments)]
    pub fn statfs(
        self,
        blocks: u64,
        bfree: u64,
        bavail: u64,
        files: u64,
        ffree: u64,
        bsize: u32,
        namelen: u32,
        frsize: u32,
    ) {
        let mut out = Vec::with_capacity(80);
        for v in [blocks, bfree, bavail, files, ffree] {
            out.extend_from_slice(&v.to_ne_bytes());
        }
        for v in [bsize, namelen, frsize] {
            out.extend_from_slice(&v.to_ne_bytes());
        }
        out.resize(80, 0);
        self.0.send(&[&out]);
    }
}

impl ReplyCreate {
    pub fn created(
        self,
        ttl: &Duration,
        attr: &FileAttr,
        generation: Generation,
        fh: FileHandle,
        flags: FopenFlags,
    ) {
        let mut out = Vec::with_capacity(144);
        abi::put_entry(&mut out, *ttl, attr, generation.0);
        abi::put_open(&mut out, fh.0, flags.0);
        self.0.send(&[&out]);
    }
}

impl ReplyLseek {
    pub fn offset(self, offset: i64) {
        self.0.send(&[&offset.to_ne_bytes()]);
    }
}

impl ReplyXattr {
    /// The size an attribute (or the list) needs: the answer to a size of 0.
    pub fn size(self, size: u32) {
        let mut out = [0u8; 8];
        out[..4].copy_from_slice(&size.to_ne_bytes());
        self.0.send(&[&out]);
    }

    pub fn data(self, data: &[u8]) {
        self.0.send(&[data]);
    }
}

/// A directory listing, filled up to the size the kernel asked for.
#[derive(Debug)]
pub struct ReplyDirectory {
    raw: Raw,
    max: usize,
    buf: Vec<u8>,
}

impl ReplyDirectory {
    pub(super) fn new(unique: u64, sender: Sender, max: usize) -> Self {
        Self {
            raw: Raw {
                unique,
                sender: Some(sender),
            },
            max,
            buf: Vec::with_capacity(max.min(64 << 10)),
        }
    }

    /// Adds an entry; true once the listing is full (this entry left out).
    #[must_use]
    pub fn add(&mut self, ino: INodeNo, offset: u64, kind: FileType, name: &OsStr) -> bool {
        !abi::put_dirent(
            &mut self.buf,
            self.max,
            ino.0,
            offset,
            kind.mode_bits() >> 12,
            name.as_bytes(),
        )
    }

    pub fn ok(self) {
        let Self { raw, buf, .. } = self;
        raw.send(&[&buf]);
    }

    pub fn error(self, e: Errno) {
        self.raw.error(e);
    }
}
