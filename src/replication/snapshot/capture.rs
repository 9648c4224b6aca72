//! Keeping what one change destroys, for the newest snapshot.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirEntryExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{DB, WriteBatch};

use super::data::Data;
use super::durability::Durability;
use super::keys::{self, Aspect, At, Obj};
use super::memo::{Kept, Memo, Resolved};
use super::{BLOCK, Effect, RUN, now_ms, obj, put, put_held, shown};
use crate::fs::Errno;
use crate::fs::sys;
use crate::replication::entry;
use crate::replication::wire::{Entry, EntryKind};

/// A batch of captures is written out once it holds this much.
const BATCH: usize = 64 << 20;

/// The names in a directory open as `fd`, each with its inode number.
pub fn read_names(fd: BorrowedFd<'_>) -> Result<Vec<(Vec<u8>, u64)>, Errno> {
    let d = sys::reopen(fd, libc::O_RDONLY | libc::O_DIRECTORY)?;
    let p = sys::proc_path(d.as_raw_fd());
    let mut out = Vec::new();
    for e in std::fs::read_dir(Path::new(OsStr::from_bytes(p.as_bytes()))).map_err(Errno::from)? {
        let e = e.map_err(Errno::from)?;
        out.push((e.file_name().as_bytes().to_vec(), e.ino()));
    }
    out.sort();
    Ok(out)
}

pub(super) fn encode_names(names: &[(Vec<u8>, u64)]) -> Vec<u8> {
    let raw = postcard::to_stdvec(names).expect("serialisable");
    // The thread's context: a resync that makes a file in each of a
    // thousand directories keeps a thousand lists.
    compress(&raw).unwrap_or_else(|| zstd::bulk::compress(&raw, 1).expect("compressing to memory"))
}

/// A capture the store holds that cannot be read back.
#[derive(Debug, thiserror::Error)]
#[error("kept {what}: {why}")]
pub struct Undecodable {
    what: &'static str,
    why: String,
}

fn undecodable(what: &'static str) -> impl Fn(&dyn std::fmt::Display) -> Undecodable {
    move |e| Undecodable {
        what,
        why: e.to_string(),
    }
}

/// Why what a change destroys could not be kept.
#[derive(Debug, thiserror::Error)]
pub enum KeepError {
    #[error("{op} {path}: {}", std::io::Error::from_raw_os_error(errno.code()))]
    Sys {
        op: &'static str,
        path: String,
        errno: Errno,
    },
    #[error("the snapshot store: {0}")]
    Store(#[from] rocksdb::Error),
    #[error(transparent)]
    Undecodable(#[from] Undecodable),
}

pub(super) fn decode_names(v: &[u8]) -> Result<Vec<(Vec<u8>, u64)>, Undecodable> {
    let raw = zstd::stream::decode_all(v).map_err(|e| undecodable("names")(&e))?;
    postcard::from_bytes(&raw).map_err(|e| undecodable("names")(&e))
}

pub(super) fn encode_meta(e: &Entry) -> Vec<u8> {
    postcard::to_stdvec(e).expect("serialisable")
}

pub(super) fn decode_meta(v: &[u8]) -> Result<Entry, Undecodable> {
    postcard::from_bytes(v).map_err(|e| undecodable("metadata")(&e))
}

/// Set in a data capture's length word: the bytes follow as they were.
const RAW: u32 = 1 << 31;

thread_local! {
    /// One compression context per thread: creating one per capture costs
    /// more than compressing a page.
    static ZSTD: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

fn compress(data: &[u8]) -> Option<Vec<u8>> {
    ZSTD.with(|z| {
        let mut z = z.borrow_mut();
        if z.is_none() {
            *z = zstd::bulk::Compressor::new(1).ok();
        }
        z.as_mut()?.compress(data).ok()
    })
}

/// Set in the length word: the bytes are in the epoch's data file
/// ([`Data`]) at the offset that follows (u64), that long (u32). Without
/// it (stores of earlier releases) they follow the word.
const FILED: u32 = 1 << 30;

/// Bytes to keep, as stored: the length word (the length, and [`RAW`] when
/// they are kept as they are) and what is stored. Most pages overwritten in
/// place (databases', media, encrypted) do not compress: what does not
/// look compressible, or did not shrink by a tenth, is kept as it is.
fn packed(data: &[u8]) -> (u32, std::borrow::Cow<'_, [u8]>) {
    let len = data.len() as u32;
    let packed = crate::replication::frame::compressible(data)
        .then(|| compress(data))
        .flatten()
        .filter(|c| c.len() * 10 < data.len() * 9);
    match packed {
        Some(c) => (len, c.into()),
        None => (len | RAW, data.into()),
    }
}

/// Bytes kept in the index itself (as earlier releases did).
#[cfg(test)]
pub(super) fn encode_data(data: &[u8]) -> Vec<u8> {
    let (word, stored) = packed(data);
    let mut v = word.to_be_bytes().to_vec();
    v.extend_from_slice(&stored);
    v
}

/// The index's value for bytes kept in an epoch's data file: their length
/// word, and where they are stored there (`off`, `len`).
fn filed(word: u32, off: u64, len: u32) -> Vec<u8> {
    let mut v = (word | FILED).to_be_bytes().to_vec();
    v.extend_from_slice(&off.to_be_bytes());
    v.extend_from_slice(&len.to_be_bytes());
    v
}

/// Bytes kept in epoch `epoch`'s data file: the index's value.
#[cfg(test)]
fn file_data(data: &[u8], epoch: u64, files: &Data) -> std::io::Result<(Vec<u8>, u64)> {
    let (word, stored) = packed(data);
    let off = files.append(epoch, &stored)?;
    Ok((filed(word, off, stored.len() as u32), stored.len() as u64))
}

/// Kept bytes on their way to the epoch's data file: appended together when
/// the captures are written ([`Keeper::finish`]), in one write however many
/// blocks a batch of changes overwrites.
#[derive(Default)]
pub struct Spool {
    bytes: Vec<u8>,
    /// Per capture: where it belongs, its length word, and where its
    /// stored bytes start in `bytes` (they end where the next one's start).
    index: Vec<(At, u32, usize)>,
}

impl Spool {
    fn add(&mut self, at: At, word: u32, stored: &[u8]) {
        self.index.push((at, word, self.bytes.len()));
        self.bytes.extend_from_slice(stored);
    }

    /// Appends the bytes to epoch `epoch`'s file and puts their index
    /// entries into `batch`.
    fn write(self, epoch: u64, files: &Data, batch: &mut WriteBatch) -> std::io::Result<()> {
        if self.index.is_empty() {
            return Ok(());
        }
        let base = files.append(epoch, &self.bytes)?;
        for (i, (at, word, start)) in self.index.iter().enumerate() {
            let end = self.index.get(i + 1).map_or(self.bytes.len(), |n| n.2);
            let len = (end - start) as u32;
            put_held(
                batch,
                at,
                &filed(*word, base + *start as u64, len),
                len as u64,
            );
        }
        Ok(())
    }
}

fn length_word(v: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?))
}

pub fn data_len(v: &[u8]) -> Option<u64> {
    length_word(v).map(|w| (w & !(RAW | FILED)) as u64)
}

/// The bytes a data capture of epoch `epoch` kept.
pub(super) fn decode_data(v: &[u8], epoch: u64, files: &Data) -> Result<Vec<u8>, Undecodable> {
    let word = length_word(v).ok_or_else(|| undecodable("data")(&"too short"))?;
    let len = (word & !(RAW | FILED)) as usize;
    let filed;
    let stored: &[u8] = if word & FILED != 0 {
        let off = v
            .get(4..12)
            .ok_or_else(|| undecodable("data")(&"too short"))?;
        let n = v
            .get(12..16)
            .ok_or_else(|| undecodable("data")(&"too short"))?;
        let off = u64::from_be_bytes(off.try_into().expect("8 bytes"));
        let n = u32::from_be_bytes(n.try_into().expect("4 bytes")) as usize;
        filed = files
            .read(epoch, off, n)
            .map_err(|e| undecodable("data")(&format!("epoch {epoch} at {off}: {e}")))?;
        &filed
    } else {
        &v[4..]
    };
    let out = if word & RAW != 0 {
        stored.to_vec()
    } else {
        zstd::bulk::decompress(stored, len).map_err(|e| undecodable("data")(&e))?
    };
    if out.len() != len {
        let why = format!("{} bytes where {len} were kept", out.len());
        return Err(undecodable("data")(&why));
    }
    Ok(out)
}

/// An object a change touches, open.
struct Node {
    fd: Arc<OwnedFd>,
    fmt: u32,
    obj: Obj,
}

impl Node {
    fn is(&self, fmt: u32) -> bool {
        self.fmt == fmt
    }

    /// Its state now (a resolved name may be older than the last change).
    fn stat(&self, p: &Path) -> Result<libc::stat, KeepError> {
        sys::stat_fd(self.fd.as_fd()).map_err(|e| sys_err("stat", p, e))
    }
}

/// Keeps what the effects of one change destroy; [`Keeper::finish`] makes
/// it durable before the change is applied.
pub struct Keeper<'a> {
    pub db: &'a DB,
    pub data: &'a Data,
    pub durability: &'a mut Durability,
    pub memo: &'a mut Memo,
    pub epoch: u64,
    pub dir: u32,
    pub root: BorrowedFd<'a>,
    pub batch: WriteBatch,
    pub spool: Spool,
}

impl Keeper<'_> {
    pub fn effect(&mut self, e: &Effect) -> Result<(), KeepError> {
        match e {
            Effect::Meta(p) => {
                if let Some(n) = self.node(p)? {
                    self.meta(&n, p)?;
                }
            }
            Effect::Bytes(p, off, len) => {
                if let Some(n) = self.node(p)? {
                    self.meta(&n, p)?;
                    self.bytes(&n, p, *off, off.saturating_add(*len))?;
                }
            }
            Effect::From(p, off) => {
                if let Some(n) = self.node(p)? {
                    self.meta(&n, p)?;
                    self.bytes(&n, p, *off, u64::MAX)?;
                }
            }
            Effect::Names(p) => {
                self.memo.renamed();
                if let Some(n) = self.node(p)? {
                    self.meta(&n, p)?;
                    self.names(&n, p)?;
                }
            }
            Effect::Drop(p) => {
                self.memo.renamed();
                self.drop(p)?
            }
            // Marked once it exists (see `born`).
            Effect::Born(_) => {}
        }
        Ok(())
    }

    /// Asks the kernel to read, without waiting, the bytes that keeping
    /// `e` will read (a write's before-image; nothing of an object made
    /// since the snapshot).
    pub fn read_ahead(&mut self, e: &Effect) -> Result<(), KeepError> {
        let Effect::Bytes(p, off, len) = e else {
            return Ok(());
        };
        let Some(n) = self.node(p)? else {
            return Ok(());
        };
        let gaps = self.unkept(&n, p, *off, off.saturating_add(*len))?;
        if gaps.is_empty() {
            return Ok(());
        }
        let f = self.readable(&n, p)?;
        for (a, b) in gaps {
            sys::will_need(f.as_fd(), a, b - a);
        }
        Ok(())
    }

    /// Writes what was kept, before the change is applied.
    pub fn finish(&mut self) -> Result<(), KeepError> {
        std::mem::take(&mut self.spool)
            .write(self.epoch, self.data, &mut self.batch)
            .map_err(|e| KeepError::Sys {
                op: "write",
                path: "the kept bytes".into(),
                errno: Errno::from(e),
            })?;
        if self.batch.is_empty() {
            return Ok(());
        }
        let b = std::mem::take(&mut self.batch);
        if self.durability.mode == super::CaptureSync::BeforeChange {
            self.data.sync().map_err(|e| KeepError::Sys {
                op: "sync",
                path: "the kept bytes".into(),
                errno: Errno::from(e),
            })?;
        }
        Ok(self.durability.write(self.db, b, now_ms())?)
    }

    fn spill(&mut self) -> Result<(), KeepError> {
        if self.batch.size_in_bytes() + self.spool.bytes.len() >= BATCH {
            self.finish()?;
        }
        Ok(())
    }

    fn node(&mut self, p: &Path) -> Result<Option<Node>, KeepError> {
        let dir = self.dir;
        if let Some(r) = self.memo.resolved(dir, p) {
            return Ok(Some(Node {
                fd: r.fd.clone(),
                fmt: r.fmt,
                obj: r.obj,
            }));
        }
        let fd = match entry::open_node(self.root, p) {
            Ok(fd) => fd,
            Err(e) if matches!(e.code(), libc::ENOENT | libc::ENOTDIR | libc::ELOOP) => {
                return Ok(None);
            }
            Err(e) => return Err(sys_err("open", p, e)),
        };
        let st = sys::stat_fd(fd.as_fd()).map_err(|e| sys_err("stat", p, e))?;
        let o = obj(self.dir, &st);
        if !self.memo.objs.contains_key(&o) {
            let k = if self.memo.fresh {
                Kept::default()
            } else {
                self.load(o)?
            };
            self.memo.objs.insert(o, k);
        }
        let n = Node {
            fd: Arc::new(fd),
            fmt: st.st_mode & libc::S_IFMT,
            obj: o,
        };
        self.memo.resolve(
            dir,
            p,
            Resolved {
                obj: o,
                fmt: n.fmt,
                fd: n.fd.clone(),
                rd: None,
            },
        );
        Ok(Some(n))
    }

    /// `n` open for reading, kept with its resolved name.
    fn readable(&mut self, n: &Node, p: &Path) -> Result<Arc<OwnedFd>, KeepError> {
        let cached = self.memo.resolved(self.dir, p);
        if let Some(rd) = cached.as_ref().and_then(|r| r.rd.clone()) {
            return Ok(rd);
        }
        let f = sys::reopen(n.fd.as_fd(), libc::O_RDONLY).map_err(|e| sys_err("open", p, e))?;
        let f = Arc::new(f);
        if let Some(r) = cached {
            r.rd = Some(f.clone());
        }
        Ok(f)
    }

    /// What the store already holds of `o` for this epoch (a daemon that
    /// restarted, or a newest snapshot deleted, left it only there).
    fn load(&self, o: Obj) -> Result<Kept, KeepError> {
        let mut k = Kept::default();
        let prefix = keys::object_prefix(o);
        for item in super::scan(self.db, &prefix, keys::after(&prefix)) {
            let (key, v) = item?;
            if !key.starts_with(&prefix) {
                break;
            }
            let Some(at) = keys::parse_capture(&key) else {
                break;
            };
            if at.epoch < self.epoch {
                continue;
            }
            match at.aspect {
                Aspect::Meta => {
                    k.meta = true;
                    let e = super::capture::decode_meta(&v)?;
                    if e.kind == EntryKind::File {
                        k.size = Some(e.size);
                    }
                }
                Aspect::List => k.list = true,
                Aspect::Gone => k.gone = true,
                Aspect::Data => {
                    let len = data_len(&v).ok_or_else(|| undecodable("data")(&"too short"))?;
                    k.add(at.off, at.off + len.div_ceil(BLOCK) * BLOCK);
                }
            }
        }
        Ok(k)
    }

    fn kept(&mut self, o: Obj) -> &mut Kept {
        self.memo.objs.entry(o).or_default()
    }

    fn at(&self, o: Obj, aspect: Aspect, off: u64) -> At {
        At {
            obj: o,
            aspect,
            off,
            epoch: self.epoch,
        }
    }

    fn meta(&mut self, n: &Node, p: &Path) -> Result<(), KeepError> {
        let k = self.kept(n.obj);
        if k.meta || k.gone {
            return Ok(());
        }
        let st = n.stat(p)?;
        let e = entry::of_node(n.fd.as_fd(), &st).map_err(|e| sys_err("read", p, e))?;
        let at = self.at(n.obj, Aspect::Meta, 0);
        put(&mut self.batch, &at, &encode_meta(&e));
        let k = self.kept(n.obj);
        k.meta = true;
        if e.kind == EntryKind::File {
            k.size = Some(e.size);
        }
        Ok(())
    }

    /// The parts of `[s, e)` of `n` that changing them would have to keep
    /// first: whole blocks of a regular file, within its size at the
    /// snapshot, not kept yet.
    fn unkept(&mut self, n: &Node, p: &Path, s: u64, e: u64) -> Result<Vec<(u64, u64)>, KeepError> {
        if !n.is(libc::S_IFREG) {
            return Ok(Vec::new());
        }
        let k = self.kept(n.obj);
        if k.gone {
            return Ok(Vec::new());
        }
        let base = match k.size {
            Some(s) => s,
            None => n.stat(p)?.st_size as u64,
        };
        let e = e.min(base);
        if s >= e {
            return Ok(Vec::new());
        }
        let start = s / BLOCK * BLOCK;
        let end = (e.div_ceil(BLOCK) * BLOCK).min(base);
        Ok(k.gaps(start, end))
    }

    fn bytes(&mut self, n: &Node, p: &Path, s: u64, e: u64) -> Result<(), KeepError> {
        let gaps = self.unkept(n, p, s, e)?;
        if gaps.is_empty() {
            return Ok(());
        }
        let f = self.readable(n, p)?;
        for (a, b) in gaps {
            let mut off = a;
            while off < b {
                let len = (b - off).min(RUN);
                let mut buf = vec![0u8; len as usize];
                let mut got = 0;
                while got < buf.len() {
                    let r = sys::pread(f.as_fd(), &mut buf[got..], off + got as u64)
                        .map_err(|e| sys_err("read", p, e))?;
                    if r == 0 {
                        break;
                    }
                    got += r;
                }
                // Past the end now (a truncation this epoch kept it
                // already): zeros, as a read of the snapshot gives.
                let at = self.at(n.obj, Aspect::Data, off);
                let (word, stored) = packed(&buf);
                self.spool.add(at, word, &stored);
                self.kept(n.obj).add(off, off + len.div_ceil(BLOCK) * BLOCK);
                off += len;
                self.spill()?;
            }
        }
        Ok(())
    }

    fn names(&mut self, n: &Node, p: &Path) -> Result<(), KeepError> {
        if !n.is(libc::S_IFDIR) {
            return Ok(());
        }
        let k = self.kept(n.obj);
        if k.list || k.gone {
            return Ok(());
        }
        let names = read_names(n.fd.as_fd()).map_err(|e| sys_err("list", p, e))?;
        let at = self.at(n.obj, Aspect::List, 0);
        put(&mut self.batch, &at, &encode_names(&names));
        self.kept(n.obj).list = true;
        Ok(())
    }

    fn gone(&mut self, n: &Node) {
        if self.kept(n.obj).gone {
            return;
        }
        let at = self.at(n.obj, Aspect::Gone, 0);
        put(&mut self.batch, &at, &[]);
        self.kept(n.obj).gone = true;
    }

    /// The name `p` goes: keep all of what it names if nothing else will
    /// name it (a directory: all below it too, counting the hard links
    /// that go with it).
    fn drop(&mut self, p: &Path) -> Result<(), KeepError> {
        let mut leaves: HashMap<Obj, (u64, PathBuf)> = HashMap::new();
        self.drop_walk(p, &mut leaves)?;
        for (_, (seen, path)) in leaves {
            let Some(n) = self.node(&path)? else {
                continue;
            };
            if seen >= n.stat(&path)?.st_nlink {
                self.meta(&n, &path)?;
                self.bytes(&n, &path, 0, u64::MAX)?;
                self.gone(&n);
            }
        }
        Ok(())
    }

    fn drop_walk(
        &mut self,
        p: &Path,
        leaves: &mut HashMap<Obj, (u64, PathBuf)>,
    ) -> Result<(), KeepError> {
        let Some(n) = self.node(p)? else {
            return Ok(());
        };
        if n.is(libc::S_IFDIR) {
            self.meta(&n, p)?;
            self.names(&n, p)?;
            let names = read_names(n.fd.as_fd()).map_err(|e| sys_err("list", p, e))?;
            for (name, _) in names {
                let child: PathBuf = p.join(OsStr::from_bytes(&name));
                self.drop_walk(&child, leaves)?;
            }
            self.gone(&n);
        } else {
            leaves.entry(n.obj).or_insert((0, p.to_path_buf())).0 += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_round_trips_compressed_or_raw() {
        let t = tempfile::tempdir().unwrap();
        let files = Data::open(t.path()).unwrap();
        let decode_data = |v: &[u8]| super::decode_data(v, 1, &files);
        let zeros = vec![0u8; 1 << 20];
        let v = encode_data(&zeros);
        assert!(v.len() < 10_000, "zeros compress");
        assert_eq!(data_len(&v), Some(1 << 20));
        assert_eq!(decode_data(&v).unwrap(), zeros);
        let noise = crate::replication::frame::noise(1, (1 << 20) + 5);
        for data in [&noise[..4096], &noise[..]] {
            let v = encode_data(data);
            assert_eq!(v.len(), data.len() + 4, "random bytes are kept as they are");
            assert_eq!(data_len(&v), Some(data.len() as u64));
            assert_eq!(decode_data(&v).unwrap(), data);
        }
        // Text compresses; a run whose sample compresses but whose rest
        // does not is still whole.
        let text = b"the quick brown fox jumps over the lazy dog. ".repeat(200);
        let v = encode_data(&text);
        assert!(v.len() < text.len() / 2, "text is compressed");
        assert_eq!(decode_data(&v).unwrap(), text);
        let mut mixed = vec![0u8; crate::replication::frame::SAMPLE];
        mixed.extend_from_slice(&noise[..1 << 19]);
        assert_eq!(decode_data(&encode_data(&mixed)).unwrap(), mixed);
        let mut bad = encode_data(&noise[..4096]);
        bad.pop();
        assert!(decode_data(&bad).is_err());
        // In the epoch's file: the index holds 16 bytes.
        for data in [&noise[..4096], &zeros[..], &noise[..]] {
            let (v, held) = file_data(data, 1, &files).unwrap();
            assert_eq!(v.len(), 16);
            assert!(held <= data.len() as u64);
            assert_eq!(data_len(&v), Some(data.len() as u64));
            assert_eq!(decode_data(&v).unwrap(), data);
        }
        let (v, _) = file_data(&noise[..100], 1, &files).unwrap();
        files.remove(1, 2).unwrap();
        assert!(decode_data(&v).is_err(), "its file is gone");
    }
}

fn sys_err(op: &'static str, p: &Path, e: Errno) -> KeepError {
    KeepError::Sys {
        op,
        path: shown(p),
        errno: e,
    }
}

/// The object just made at `p` is in no snapshot: its metadata counts as
/// kept, at size 0 (so none of its bytes existed then). Only in memory: a
/// restarted daemon keeps what it finds there, which is correct, only more.
pub(super) fn born(memo: &mut super::memo::Memo, dir: u32, root: BorrowedFd<'_>, p: &Path) {
    let Ok(fd) = entry::open_node(root, p) else {
        return;
    };
    let Ok(st) = sys::stat_fd(fd.as_fd()) else {
        return;
    };
    let k = memo.objs.entry(obj(dir, &st)).or_default();
    // Whatever an earlier object of this number left is for that object.
    if !k.gone {
        k.meta = true;
        k.list = true;
        k.size = Some(0);
    }
}
