//! The kernel's FUSE messages (`linux/fuse.h`, protocol 7.40): requests parsed
//! from the bytes `/dev/fuse` hands over, checked against their own lengths, so
//! that a malformed one is refused rather than read past.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{FileAttr, FileHandle, SetAttr, TimeOrNow};

pub const KERNEL_VERSION: u32 = 7;
pub const KERNEL_MINOR_VERSION: u32 = 40;

pub const IN_HEADER: usize = 40;
pub const OUT_HEADER: usize = 16;

pub const FUSE_LOOKUP: u32 = 1;
pub const FUSE_FORGET: u32 = 2;
pub const FUSE_GETATTR: u32 = 3;
pub const FUSE_SETATTR: u32 = 4;
pub const FUSE_READLINK: u32 = 5;
pub const FUSE_SYMLINK: u32 = 6;
pub const FUSE_MKNOD: u32 = 8;
pub const FUSE_MKDIR: u32 = 9;
pub const FUSE_UNLINK: u32 = 10;
pub const FUSE_RMDIR: u32 = 11;
pub const FUSE_RENAME: u32 = 12;
pub const FUSE_LINK: u32 = 13;
pub const FUSE_OPEN: u32 = 14;
pub const FUSE_READ: u32 = 15;
pub const FUSE_WRITE: u32 = 16;
pub const FUSE_STATFS: u32 = 17;
pub const FUSE_RELEASE: u32 = 18;
pub const FUSE_FSYNC: u32 = 20;
pub const FUSE_SETXATTR: u32 = 21;
pub const FUSE_GETXATTR: u32 = 22;
pub const FUSE_LISTXATTR: u32 = 23;
pub const FUSE_REMOVEXATTR: u32 = 24;
pub const FUSE_FLUSH: u32 = 25;
pub const FUSE_INIT: u32 = 26;
pub const FUSE_OPENDIR: u32 = 27;
pub const FUSE_READDIR: u32 = 28;
pub const FUSE_RELEASEDIR: u32 = 29;
pub const FUSE_FSYNCDIR: u32 = 30;
pub const FUSE_ACCESS: u32 = 34;
pub const FUSE_CREATE: u32 = 35;
pub const FUSE_INTERRUPT: u32 = 36;
pub const FUSE_DESTROY: u32 = 38;
pub const FUSE_BATCH_FORGET: u32 = 42;
pub const FUSE_FALLOCATE: u32 = 43;
pub const FUSE_RENAME2: u32 = 45;
pub const FUSE_LSEEK: u32 = 46;

pub const NOTIFY_INVAL_ENTRY: i32 = 3;

const FATTR_MODE: u32 = 1;
const FATTR_UID: u32 = 1 << 1;
const FATTR_GID: u32 = 1 << 2;
const FATTR_SIZE: u32 = 1 << 3;
const FATTR_ATIME: u32 = 1 << 4;
const FATTR_MTIME: u32 = 1 << 5;
const FATTR_FH: u32 = 1 << 6;
const FATTR_ATIME_NOW: u32 = 1 << 7;
const FATTR_MTIME_NOW: u32 = 1 << 8;
const GETATTR_FH: u32 = 1;
const FSYNC_FDATASYNC: u32 = 1;

/// The header every request starts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub len: u32,
    pub opcode: u32,
    pub unique: u64,
    pub nodeid: u64,
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

/// One request's arguments, by operation.
#[derive(Debug, PartialEq, Eq)]
pub enum Op<'a> {
    Init {
        major: u32,
        minor: u32,
        max_readahead: u32,
        flags: u64,
    },
    Destroy,
    Interrupt,
    Lookup(&'a OsStr),
    Forget(u64),
    /// `(nodeid, nlookup)` pairs.
    BatchForget(Vec<(u64, u64)>),
    Getattr(Option<FileHandle>),
    Setattr(SetAttr),
    Readlink,
    Symlink {
        name: &'a OsStr,
        target: &'a OsStr,
    },
    Mknod {
        mode: u32,
        rdev: u32,
        umask: u32,
        name: &'a OsStr,
    },
    Mkdir {
        mode: u32,
        umask: u32,
        name: &'a OsStr,
    },
    Unlink(&'a OsStr),
    Rmdir(&'a OsStr),
    Rename {
        newdir: u64,
        flags: u32,
        name: &'a OsStr,
        newname: &'a OsStr,
    },
    Link {
        oldnodeid: u64,
        name: &'a OsStr,
    },
    Open(i32),
    Read {
        fh: u64,
        offset: u64,
        size: u32,
    },
    Write {
        fh: u64,
        offset: u64,
        write_flags: u32,
        data: &'a [u8],
    },
    Statfs,
    Release(u64),
    Fsync {
        fh: u64,
        datasync: bool,
    },
    Setxattr {
        flags: i32,
        name: &'a OsStr,
        value: &'a [u8],
    },
    Getxattr {
        size: u32,
        name: &'a OsStr,
    },
    Listxattr(u32),
    Removexattr(&'a OsStr),
    Flush(u64),
    Opendir(i32),
    Readdir {
        fh: u64,
        offset: u64,
        size: u32,
    },
    Releasedir(u64),
    Fsyncdir {
        fh: u64,
        datasync: bool,
    },
    Access(u32),
    Create {
        flags: i32,
        mode: u32,
        umask: u32,
        name: &'a OsStr,
    },
    Fallocate {
        fh: u64,
        offset: u64,
        length: u64,
        mode: i32,
    },
    Lseek {
        fh: u64,
        offset: i64,
        whence: i32,
    },
    /// An operation this file system does not implement.
    Unknown(u32),
}

/// Why a request could not be read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadRequest {
    #[error("request of {got} bytes, shorter than its header")]
    Short { got: usize },
    #[error("request says {said} bytes, {got} arrived")]
    Length { said: u32, got: usize },
    #[error("opcode {opcode}: arguments cut short")]
    Args { opcode: u32 },
}

/// Reads fixed-size fields and NUL-terminated names off a request's arguments.
struct Args<'a>(&'a [u8]);

impl<'a> Args<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_ne_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_ne_bytes(self.take(8)?.try_into().ok()?))
    }
    fn name(&mut self) -> Option<&'a OsStr> {
        let end = self.0.iter().position(|&b| b == 0)?;
        let name = &self.0[..end];
        self.0 = &self.0[end + 1..];
        Some(OsStr::from_bytes(name))
    }
}

/// Parses one request as read from `/dev/fuse`.
pub fn parse(buf: &[u8]) -> Result<(Header, Op<'_>), BadRequest> {
    if buf.len() < IN_HEADER {
        return Err(BadRequest::Short { got: buf.len() });
    }
    let mut a = Args(buf);
    let header = (|| {
        Some(Header {
            len: a.u32()?,
            opcode: a.u32()?,
            unique: a.u64()?,
            nodeid: a.u64()?,
            uid: a.u32()?,
            gid: a.u32()?,
            pid: a.u32()?,
        })
    })()
    .ok_or(BadRequest::Short { got: buf.len() })?;
    // total_extlen and padding: no extension is ever agreed.
    a.take(4).ok_or(BadRequest::Short { got: buf.len() })?;
    if header.len as usize != buf.len() {
        return Err(BadRequest::Length {
            said: header.len,
            got: buf.len(),
        });
    }
    let op = op(header.opcode, a).ok_or(BadRequest::Args {
        opcode: header.opcode,
    })?;
    Ok((header, op))
}

fn op(opcode: u32, mut a: Args<'_>) -> Option<Op<'_>> {
    Some(match opcode {
        FUSE_INIT => {
            let (major, minor, max_readahead, flags) = (a.u32()?, a.u32()?, a.u32()?, a.u32()?);
            let mut flags = u64::from(flags);
            // The second word of flags exists from 7.36, when the first says so.
            if flags & super::InitFlags::FUSE_INIT_EXT != 0 {
                flags |= u64::from(a.u32()?) << 32;
            }
            Op::Init {
                major,
                minor,
                max_readahead,
                flags,
            }
        }
        FUSE_DESTROY => Op::Destroy,
        FUSE_INTERRUPT => Op::Interrupt,
        FUSE_LOOKUP => Op::Lookup(a.name()?),
        FUSE_FORGET => Op::Forget(a.u64()?),
        FUSE_BATCH_FORGET => {
            let count = a.u32()? as usize;
            a.u32()?;
            let mut items = Vec::with_capacity(count.min(a.0.len() / 16));
            for _ in 0..count {
                items.push((a.u64()?, a.u64()?));
            }
            Op::BatchForget(items)
        }
        FUSE_GETATTR => {
            let (flags, _) = (a.u32()?, a.u32()?);
            let fh = a.u64()?;
            Op::Getattr((flags & GETATTR_FH != 0).then_some(FileHandle(fh)))
        }
        FUSE_SETATTR => Op::Setattr(setattr(&mut a)?),
        FUSE_READLINK => Op::Readlink,
        FUSE_SYMLINK => Op::Symlink {
            name: a.name()?,
            target: a.name()?,
        },
        FUSE_MKNOD => {
            let (mode, rdev, umask, _) = (a.u32()?, a.u32()?, a.u32()?, a.u32()?);
            Op::Mknod {
                mode,
                rdev,
                umask,
                name: a.name()?,
            }
        }
        FUSE_MKDIR => Op::Mkdir {
            mode: a.u32()?,
            umask: a.u32()?,
            name: a.name()?,
        },
        FUSE_UNLINK => Op::Unlink(a.name()?),
        FUSE_RMDIR => Op::Rmdir(a.name()?),
        FUSE_RENAME => Op::Rename {
            newdir: a.u64()?,
            flags: 0,
            name: a.name()?,
            newname: a.name()?,
        },
        FUSE_RENAME2 => {
            let (newdir, flags, _) = (a.u64()?, a.u32()?, a.u32()?);
            Op::Rename {
                newdir,
                flags,
                name: a.name()?,
                newname: a.name()?,
            }
        }
        FUSE_LINK => Op::Link {
            oldnodeid: a.u64()?,
            name: a.name()?,
        },
        FUSE_OPEN => Op::Open(a.u32()? as i32),
        FUSE_OPENDIR => Op::Opendir(a.u32()? as i32),
        FUSE_READ | FUSE_READDIR => {
            let (fh, offset, size) = (a.u64()?, a.u64()?, a.u32()?);
            a.take(20)?;
            if opcode == FUSE_READ {
                Op::Read { fh, offset, size }
            } else {
                Op::Readdir { fh, offset, size }
            }
        }
        FUSE_WRITE => {
            let (fh, offset, size, write_flags) = (a.u64()?, a.u64()?, a.u32()?, a.u32()?);
            a.take(16)?;
            Op::Write {
                fh,
                offset,
                write_flags,
                data: a.take(size as usize)?,
            }
        }
        FUSE_STATFS => Op::Statfs,
        FUSE_RELEASE | FUSE_RELEASEDIR => {
            let fh = a.u64()?;
            a.take(16)?;
            if opcode == FUSE_RELEASE {
                Op::Release(fh)
            } else {
                Op::Releasedir(fh)
            }
        }
        FUSE_FSYNC | FUSE_FSYNCDIR => {
            let (fh, flags, _) = (a.u64()?, a.u32()?, a.u32()?);
            let datasync = flags & FSYNC_FDATASYNC != 0;
            if opcode == FUSE_FSYNC {
                Op::Fsync { fh, datasync }
            } else {
                Op::Fsyncdir { fh, datasync }
            }
        }
        FUSE_SETXATTR => {
            let (size, flags) = (a.u32()?, a.u32()?);
            Op::Setxattr {
                flags: flags as i32,
                name: a.name()?,
                value: a.take(size as usize)?,
            }
        }
        FUSE_GETXATTR => {
            let (size, _) = (a.u32()?, a.u32()?);
            Op::Getxattr {
                size,
                name: a.name()?,
            }
        }
        FUSE_LISTXATTR => Op::Listxattr(a.u32()?),
        FUSE_REMOVEXATTR => Op::Removexattr(a.name()?),
        FUSE_FLUSH => {
            let fh = a.u64()?;
            a.take(16)?;
            Op::Flush(fh)
        }
        FUSE_ACCESS => Op::Access(a.u32()?),
        FUSE_CREATE => {
            let (flags, mode, umask, _) = (a.u32()?, a.u32()?, a.u32()?, a.u32()?);
            Op::Create {
                flags: flags as i32,
                mode,
                umask,
                name: a.name()?,
            }
        }
        FUSE_FALLOCATE => {
            let (fh, offset, length, mode) = (a.u64()?, a.u64()?, a.u64()?, a.u32()?);
            Op::Fallocate {
                fh,
                offset,
                length,
                mode: mode as i32,
            }
        }
        FUSE_LSEEK => {
            let (fh, offset, whence) = (a.u64()?, a.u64()?, a.u32()?);
            Op::Lseek {
                fh,
                offset: offset as i64,
                whence: whence as i32,
            }
        }
        other => Op::Unknown(other),
    })
}

fn setattr(a: &mut Args<'_>) -> Option<SetAttr> {
    let valid = a.u32()?;
    a.u32()?;
    let fh = a.u64()?;
    let size = a.u64()?;
    let _lock_owner = a.u64()?;
    let (atime, mtime, _ctime) = (a.u64()?, a.u64()?, a.u64()?);
    let (atimensec, mtimensec, _ctimensec) = (a.u32()?, a.u32()?, a.u32()?);
    let mode = a.u32()?;
    a.u32()?;
    let (uid, gid) = (a.u32()?, a.u32()?);
    a.u32()?;
    let has = |bit: u32| valid & bit != 0;
    let time = |set: u32, now: u32, secs: u64, nsecs: u32| {
        if has(now) {
            Some(TimeOrNow::Now)
        } else if has(set) {
            Some(TimeOrNow::SpecificTime(system_time(secs as i64, nsecs)))
        } else {
            None
        }
    };
    Some(SetAttr {
        mode: has(FATTR_MODE).then_some(mode),
        uid: has(FATTR_UID).then_some(uid),
        gid: has(FATTR_GID).then_some(gid),
        size: has(FATTR_SIZE).then_some(size),
        atime: time(FATTR_ATIME, FATTR_ATIME_NOW, atime, atimensec),
        mtime: time(FATTR_MTIME, FATTR_MTIME_NOW, mtime, mtimensec),
        fh: has(FATTR_FH).then_some(FileHandle(fh)),
    })
}

fn system_time(secs: i64, nsecs: u32) -> SystemTime {
    let nsecs = Duration::from_nanos(u64::from(nsecs.min(999_999_999)));
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64) + nsecs
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + nsecs
    }
}

/// Seconds (negative before the epoch) and nanoseconds, as the kernel counts time.
fn kernel_time(t: SystemTime) -> (u64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs(), d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            let (mut s, mut n) = (-(d.as_secs() as i64), d.subsec_nanos());
            if n > 0 {
                s -= 1;
                n = 1_000_000_000 - n;
            }
            (s as u64, n)
        }
    }
}

fn put32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_ne_bytes());
}

fn put64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_ne_bytes());
}

/// `fuse_attr` (88 bytes).
pub fn put_attr(out: &mut Vec<u8>, a: &FileAttr) {
    let (at, atn) = kernel_time(a.atime);
    let (mt, mtn) = kernel_time(a.mtime);
    let (ct, ctn) = kernel_time(a.ctime);
    for v in [a.ino.0, a.size, a.blocks, at, mt, ct] {
        put64(out, v);
    }
    let mode = a.kind.mode_bits() | u32::from(a.perm);
    for v in [
        atn, mtn, ctn, mode, a.nlink, a.uid, a.gid, a.rdev, a.blksize, 0,
    ] {
        put32(out, v);
    }
}

/// `fuse_entry_out` (128 bytes).
pub fn put_entry(out: &mut Vec<u8>, ttl: Duration, a: &FileAttr, generation: u64) {
    for v in [a.ino.0, generation, ttl.as_secs(), ttl.as_secs()] {
        put64(out, v);
    }
    put32(out, ttl.subsec_nanos());
    put32(out, ttl.subsec_nanos());
    put_attr(out, a);
}

/// `fuse_attr_out` (104 bytes).
pub fn put_attr_out(out: &mut Vec<u8>, ttl: Duration, a: &FileAttr) {
    put64(out, ttl.as_secs());
    put32(out, ttl.subsec_nanos());
    put32(out, 0);
    put_attr(out, a);
}

/// `fuse_open_out` (16 bytes).
pub fn put_open(out: &mut Vec<u8>, fh: u64, flags: u32) {
    put64(out, fh);
    put32(out, flags);
    put32(out, 0);
}

/// A `fuse_out_header` for an answer of `len` bytes in all.
pub fn out_header(len: usize, error: i32, unique: u64) -> [u8; OUT_HEADER] {
    let mut h = [0u8; OUT_HEADER];
    h[0..4].copy_from_slice(&(len as u32).to_ne_bytes());
    h[4..8].copy_from_slice(&error.to_ne_bytes());
    h[8..16].copy_from_slice(&unique.to_ne_bytes());
    h
}

/// `fuse_init_out` (64 bytes) for the terms agreed.
pub fn init_out(config: &super::KernelConfig) -> Vec<u8> {
    let flags = config.agreed() | (config.offered & super::InitFlags::FUSE_INIT_EXT);
    let page = 4096u32;
    let max_pages = (config.max_write.max(config.max_readahead).max(1) - 1) / page + 1;
    let mut out = Vec::with_capacity(64);
    put32(&mut out, KERNEL_VERSION);
    put32(&mut out, KERNEL_MINOR_VERSION);
    put32(&mut out, config.max_readahead);
    put32(&mut out, flags as u32);
    // max_background 16, congestion_threshold 12 (three quarters)
    out.extend_from_slice(&16u16.to_ne_bytes());
    out.extend_from_slice(&12u16.to_ne_bytes());
    put32(&mut out, config.max_write);
    // time_gran: nanoseconds
    put32(&mut out, 1);
    out.extend_from_slice(&(max_pages.min(u32::from(u16::MAX)) as u16).to_ne_bytes());
    out.extend_from_slice(&0u16.to_ne_bytes());
    put32(&mut out, (flags >> 32) as u32);
    put32(&mut out, 0);
    out.resize(64, 0);
    out
}

/// Appends one `fuse_dirent` (padded to 8 bytes) unless it would pass `max`;
/// false if it did not fit.
pub fn put_dirent(
    out: &mut Vec<u8>,
    max: usize,
    ino: u64,
    off: u64,
    kind: u32,
    name: &[u8],
) -> bool {
    let len = 24 + name.len();
    let padded = len.next_multiple_of(8);
    if out.len() + padded > max {
        return false;
    }
    put64(out, ino);
    put64(out, off);
    put32(out, name.len() as u32);
    put32(out, kind);
    out.extend_from_slice(name);
    out.resize(out.len() + padded - len, 0);
    true
}

/// A `FUSE_NOTIFY_INVAL_ENTRY` message, header included.
pub fn inval_entry(parent: u64, name: &[u8]) -> Vec<u8> {
    let len = OUT_HEADER + 16 + name.len() + 1;
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&out_header(len, NOTIFY_INVAL_ENTRY, 0));
    put64(&mut out, parent);
    put32(&mut out, name.len() as u32);
    put32(&mut out, 0);
    out.extend_from_slice(name);
    out.push(0);
    out
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A request as the kernel lays it out.
    pub fn request(opcode: u32, unique: u64, nodeid: u64, args: &[u8]) -> Vec<u8> {
        let len = (IN_HEADER + args.len()) as u32;
        let mut b = Vec::new();
        put32(&mut b, len);
        put32(&mut b, opcode);
        put64(&mut b, unique);
        put64(&mut b, nodeid);
        for v in [1000, 1001, 4242, 0] {
            put32(&mut b, v);
        }
        b.extend_from_slice(args);
        b
    }

    #[test]
    fn a_write_carries_its_data_and_header() {
        let mut args = Vec::new();
        for v in [7u64, 4096] {
            put64(&mut args, v);
        }
        put32(&mut args, 5);
        put32(&mut args, 4);
        args.extend_from_slice(&[0; 16]);
        args.extend_from_slice(b"hello");
        let b = request(FUSE_WRITE, 9, 3, &args);
        let (h, op) = parse(&b).unwrap();
        assert_eq!(
            (h.unique, h.nodeid, h.uid, h.gid, h.pid),
            (9, 3, 1000, 1001, 4242)
        );
        assert_eq!(
            op,
            Op::Write {
                fh: 7,
                offset: 4096,
                write_flags: 4,
                data: b"hello"
            }
        );
    }

    #[test]
    fn short_or_lying_requests_are_refused() {
        assert_eq!(parse(&[0; 10]), Err(BadRequest::Short { got: 10 }));
        let mut b = request(FUSE_LOOKUP, 1, 1, b"name\0");
        b.push(0);
        assert!(matches!(parse(&b), Err(BadRequest::Length { .. })));
        // A name without its NUL, and a write whose data is cut short.
        let b = request(FUSE_LOOKUP, 1, 1, b"name");
        assert_eq!(
            parse(&b),
            Err(BadRequest::Args {
                opcode: FUSE_LOOKUP
            })
        );
        let mut args = vec![0u8; 40];
        args[16..20].copy_from_slice(&100u32.to_ne_bytes());
        let b = request(FUSE_WRITE, 1, 1, &args);
        assert_eq!(parse(&b), Err(BadRequest::Args { opcode: FUSE_WRITE }));
        // A forget batch that claims more than it holds.
        let mut args = Vec::new();
        put32(&mut args, 3);
        put32(&mut args, 0);
        put64(&mut args, 5);
        put64(&mut args, 1);
        let b = request(FUSE_BATCH_FORGET, 1, 0, &args);
        assert!(parse(&b).is_err());
    }

    #[test]
    fn names_come_in_pairs_for_rename_and_symlink() {
        let mut args = Vec::new();
        put64(&mut args, 12);
        put32(&mut args, 1);
        put32(&mut args, 0);
        args.extend_from_slice(b"a\0b\0");
        let b = request(FUSE_RENAME2, 1, 2, &args);
        let (_, op) = parse(&b).unwrap();
        assert_eq!(
            op,
            Op::Rename {
                newdir: 12,
                flags: 1,
                name: OsStr::new("a"),
                newname: OsStr::new("b")
            }
        );
        let b = request(FUSE_SYMLINK, 1, 2, b"link\0/target\0");
        let (_, op) = parse(&b).unwrap();
        assert_eq!(
            op,
            Op::Symlink {
                name: OsStr::new("link"),
                target: OsStr::new("/target")
            }
        );
    }

    #[test]
    fn setattr_reads_only_the_fields_marked_valid() {
        let mut args = Vec::new();
        put32(&mut args, FATTR_SIZE | FATTR_MTIME_NOW | FATTR_ATIME);
        put32(&mut args, 0);
        for v in [0u64, 1234, 0, 99, 55, 0] {
            put64(&mut args, v);
        }
        for v in [7u32, 0, 0, 0o644, 0, 5, 6, 0] {
            put32(&mut args, v);
        }
        assert_eq!(args.len(), 88);
        let b = request(FUSE_SETATTR, 1, 2, &args);
        let (_, op) = parse(&b).unwrap();
        let Op::Setattr(s) = op else { panic!("{op:?}") };
        assert_eq!(s.size, Some(1234));
        assert_eq!(s.mode, None);
        assert_eq!(s.uid, None);
        assert_eq!(s.mtime, Some(TimeOrNow::Now));
        assert_eq!(
            s.atime,
            Some(TimeOrNow::SpecificTime(UNIX_EPOCH + Duration::new(99, 7)))
        );
    }

    #[test]
    fn times_before_the_epoch_keep_positive_nanoseconds() {
        let t = UNIX_EPOCH - Duration::new(1, 250_000_000);
        assert_eq!(kernel_time(t), ((-2i64) as u64, 750_000_000));
        assert_eq!(system_time(-2, 750_000_000), t);
    }

    #[test]
    fn entries_and_dirents_have_the_kernel_sizes() {
        let a = FileAttr {
            ino: super::super::INodeNo(5),
            size: 1,
            blocks: 1,
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            kind: super::super::FileType::Directory,
            perm: 0o755,
            nlink: 2,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
        };
        let mut out = Vec::new();
        put_entry(&mut out, Duration::from_secs(1), &a, 0);
        assert_eq!(out.len(), 128);
        assert_eq!(
            u32::from_ne_bytes(out[40 + 60..40 + 64].try_into().unwrap()),
            libc::S_IFDIR | 0o755
        );
        let mut out = Vec::new();
        put_attr_out(&mut out, Duration::from_secs(1), &a);
        assert_eq!(out.len(), 104);
        let mut out = Vec::new();
        assert!(put_dirent(&mut out, 64, 5, 1, 4, b"abc"));
        assert_eq!(out.len(), 32);
        assert!(!put_dirent(&mut out, 64, 6, 2, 4, b"0123456789"));
        assert_eq!(out.len(), 32);
        let c = super::super::KernelConfig {
            offered: super::super::InitFlags::FUSE_INIT_EXT
                | super::super::InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP,
            requested: super::super::InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP,
            max_write: 1 << 20,
            max_readahead: 128 << 10,
        };
        let init = init_out(&c);
        assert_eq!(init.len(), 64);
        assert_eq!(
            u32::from_ne_bytes(init[12..16].try_into().unwrap()),
            1 << 30
        );
        assert_eq!(u32::from_ne_bytes(init[32..36].try_into().unwrap()), 1 << 4);
        assert_eq!(u16::from_ne_bytes(init[28..30].try_into().unwrap()), 256);
    }
}
