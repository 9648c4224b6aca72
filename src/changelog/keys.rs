//! Key and value encodings of the RocksDB change log (big-endian integers so
//! that iteration follows numeric order). See the module docs for the table.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use super::FileId;
use super::dirty::Chunk;
use super::error::{ChangeLogError, Result};

pub const CF_NAMES: &str = "names";
pub const CF_IDS: &str = "ids";
pub const CF_DIRTY: &str = "dirty";
pub const CF_SIZES: &str = "sizes";
pub const CF_NSLOG: &str = "nslog";
pub const CF_META: &str = "meta";
pub const ALL_CFS: [&str; 6] = [CF_NAMES, CF_IDS, CF_DIRTY, CF_SIZES, CF_NSLOG, CF_META];

pub const META_CHUNK_SIZE: &[u8] = b"chunk_size";
pub const META_NEXT_ID: &[u8] = b"next_id";
pub const META_NEXT_SEQ: &[u8] = b"next_seq";
pub const META_FLUSHED_EPOCH: &[u8] = b"flushed_epoch";
pub const META_GENERATION: &[u8] = b"generation";
pub const META_NS_SENT_UPTO: &[u8] = b"ns_sent_upto";
pub const META_COMPARE_NEEDED: &[u8] = b"compare_needed";

fn corrupt(what: &'static str, bytes: &[u8]) -> ChangeLogError {
    ChangeLogError::Corrupt {
        what,
        detail: format!(
            "{} bytes: {:02x?}",
            bytes.len(),
            &bytes[..bytes.len().min(32)]
        ),
    }
}

pub fn u64_bytes(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}

pub fn read_u64(what: &'static str, b: &[u8]) -> Result<u64> {
    let a: [u8; 8] = b
        .get(..8)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| corrupt(what, b))?;
    Ok(u64::from_be_bytes(a))
}

/// parent ‖ name: the key of `names`, the value of `ids`.
pub fn parent_name(parent: FileId, name: &OsStr) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + name.len());
    k.extend_from_slice(&parent.to_be_bytes());
    k.extend_from_slice(name.as_bytes());
    k
}

pub fn decode_parent_name(b: &[u8]) -> Result<(FileId, OsString)> {
    let parent = read_u64("ids value", b)?;
    Ok((parent, OsString::from_vec(b[8..].to_vec())))
}

/// id ‖ chunk: the key of `dirty`.
pub fn chunk_key(id: FileId, chunk: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&id.to_be_bytes());
    k[8..].copy_from_slice(&chunk.to_be_bytes());
    k
}

pub fn decode_chunk_key(b: &[u8]) -> Result<(FileId, u64)> {
    if b.len() != 16 {
        return Err(corrupt("dirty key", b));
    }
    Ok((read_u64("dirty key", b)?, read_u64("dirty key", &b[8..])?))
}

/// epoch ‖ (start ‖ end)*.
pub fn encode_chunk(c: &Chunk) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + 8 * c.ranges.len());
    v.extend_from_slice(&c.epoch.to_be_bytes());
    for &(s, e) in &c.ranges {
        v.extend_from_slice(&s.to_be_bytes());
        v.extend_from_slice(&e.to_be_bytes());
    }
    v
}

pub fn decode_chunk(b: &[u8], chunk_size: u64) -> Result<Chunk> {
    if b.len() < 8 || !(b.len() - 8).is_multiple_of(8) {
        return Err(corrupt("dirty value", b));
    }
    let epoch = read_u64("dirty value", b)?;
    let mut ranges = Vec::with_capacity((b.len() - 8) / 8);
    let mut prev_end = None;
    for p in b[8..].chunks_exact(8) {
        let s = u32::from_be_bytes(p[..4].try_into().expect("4 bytes"));
        let e = u32::from_be_bytes(p[4..].try_into().expect("4 bytes"));
        // Sorted, disjoint, non-adjacent, inside the chunk.
        if s >= e || u64::from(e) > chunk_size || prev_end.is_some_and(|pe| s <= pe) {
            return Err(corrupt("dirty value", b));
        }
        prev_end = Some(e);
        ranges.push((s, e));
    }
    Ok(Chunk { ranges, epoch })
}
