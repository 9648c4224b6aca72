//! One request handed to the file system: the operation's arguments as the
//! trait takes them, with the answer it is to give; what the file system
//! does not implement is answered ENOSYS, and forgets are never answered.

use std::path::Path;

use super::abi::{self, Op};
use super::reply::{self, Sender};
use super::{FileHandle, Filesystem, INodeNo, OpenFlags, Request};

/// Hands one request to the file system; false once the session is over.
pub(super) fn dispatch<FS: Filesystem>(fs: &FS, sender: &Sender, buf: &[u8]) -> bool {
    let (h, op) = match abi::parse(buf) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("a malformed FUSE request: {e}");
            // The unique number is where it always is, if anything is.
            if let Some(u) = buf.get(8..16) {
                let unique = u64::from_ne_bytes(u.try_into().unwrap_or_default());
                sender.send(unique, -libc::EIO, &[]);
            }
            return true;
        }
    };
    let req = Request {
        uid: h.uid,
        gid: h.gid,
    };
    let ino = INodeNo(h.nodeid);
    let s = || sender.clone();
    let u = h.unique;
    match op {
        Op::Destroy => {
            sender.send(u, 0, &[]);
            return false;
        }
        // Forgets are never answered.
        Op::Forget(n) => fs.forget(ino, n),
        Op::BatchForget(items) => {
            for (id, n) in items {
                fs.forget(INodeNo(id), n);
            }
        }
        // Answering ENOSYS tells the kernel to send no more of them.
        Op::Interrupt => sender.send(u, -libc::ENOSYS, &[]),
        Op::Init { .. } => sender.send(u, -libc::EIO, &[]),
        Op::Unknown(_) => sender.send(u, -libc::ENOSYS, &[]),
        Op::Lookup(name) => fs.lookup(&req, ino, name, reply::ReplyEntry::new(u, s())),
        Op::Getattr(fh) => fs.getattr(&req, ino, fh, reply::ReplyAttr::new(u, s())),
        Op::Setattr(set) => fs.setattr(&req, ino, set, reply::ReplyAttr::new(u, s())),
        Op::Readlink => fs.readlink(&req, ino, reply::ReplyData::new(u, s())),
        Op::Symlink { name, target } => fs.symlink(
            &req,
            ino,
            name,
            Path::new(target),
            reply::ReplyEntry::new(u, s()),
        ),
        Op::Mknod {
            mode,
            rdev,
            umask,
            name,
        } => fs.mknod(
            &req,
            ino,
            name,
            mode,
            umask,
            rdev,
            reply::ReplyEntry::new(u, s()),
        ),
        Op::Mkdir { mode, umask, name } => {
            fs.mkdir(&req, ino, name, mode, umask, reply::ReplyEntry::new(u, s()))
        }
        Op::Unlink(name) => fs.unlink(&req, ino, name, reply::ReplyEmpty::new(u, s())),
        Op::Rmdir(name) => fs.rmdir(&req, ino, name, reply::ReplyEmpty::new(u, s())),
        Op::Rename {
            newdir,
            flags,
            name,
            newname,
        } => fs.rename(
            &req,
            ino,
            name,
            INodeNo(newdir),
            newname,
            flags,
            reply::ReplyEmpty::new(u, s()),
        ),
        Op::Link { oldnodeid, name } => fs.link(
            &req,
            INodeNo(oldnodeid),
            ino,
            name,
            reply::ReplyEntry::new(u, s()),
        ),
        Op::Open(flags) => fs.open(&req, ino, OpenFlags(flags), reply::ReplyOpen::new(u, s())),
        Op::Read { fh, offset, size } => fs.read(
            &req,
            ino,
            FileHandle(fh),
            offset,
            size,
            reply::ReplyData::new(u, s()),
        ),
        Op::Write {
            fh,
            offset,
            write_flags,
            data,
        } => fs.write(
            &req,
            ino,
            FileHandle(fh),
            offset,
            data,
            super::WriteFlags(write_flags),
            reply::ReplyWrite::new(u, s()),
        ),
        Op::Statfs => fs.statfs(&req, ino, reply::ReplyStatfs::new(u, s())),
        Op::Release(fh) => fs.release(&req, ino, FileHandle(fh), reply::ReplyEmpty::new(u, s())),
        Op::Fsync { fh, datasync } => fs.fsync(
            &req,
            ino,
            FileHandle(fh),
            datasync,
            reply::ReplyEmpty::new(u, s()),
        ),
        Op::Setxattr { flags, name, value } => fs.setxattr(
            &req,
            ino,
            name,
            value,
            flags,
            reply::ReplyEmpty::new(u, s()),
        ),
        Op::Getxattr { size, name } => {
            fs.getxattr(&req, ino, name, size, reply::ReplyXattr::new(u, s()))
        }
        Op::Listxattr(size) => fs.listxattr(&req, ino, size, reply::ReplyXattr::new(u, s())),
        Op::Removexattr(name) => fs.removexattr(&req, ino, name, reply::ReplyEmpty::new(u, s())),
        Op::Flush(fh) => fs.flush(&req, ino, FileHandle(fh), reply::ReplyEmpty::new(u, s())),
        Op::Opendir(flags) => {
            fs.opendir(&req, ino, OpenFlags(flags), reply::ReplyOpen::new(u, s()))
        }
        Op::Readdir { fh, offset, size } => fs.readdir(
            &req,
            ino,
            FileHandle(fh),
            offset,
            reply::ReplyDirectory::new(u, s(), size as usize),
        ),
        Op::Releasedir(fh) => {
            fs.releasedir(&req, ino, FileHandle(fh), reply::ReplyEmpty::new(u, s()))
        }
        Op::Fsyncdir { fh, datasync } => fs.fsyncdir(
            &req,
            ino,
            FileHandle(fh),
            datasync,
            reply::ReplyEmpty::new(u, s()),
        ),
        Op::Access(mask) => fs.access(&req, ino, mask, reply::ReplyEmpty::new(u, s())),
        Op::Create {
            flags,
            mode,
            umask,
            name,
        } => fs.create(
            &req,
            ino,
            name,
            mode,
            umask,
            flags,
            reply::ReplyCreate::new(u, s()),
        ),
        Op::Fallocate {
            fh,
            offset,
            length,
            mode,
        } => fs.fallocate(
            &req,
            ino,
            FileHandle(fh),
            offset,
            length,
            mode,
            reply::ReplyEmpty::new(u, s()),
        ),
        Op::Lseek { fh, offset, whence } => fs.lseek(
            &req,
            ino,
            FileHandle(fh),
            offset,
            whence,
            reply::ReplyLseek::new(u, s()),
        ),
    }
    true
}
