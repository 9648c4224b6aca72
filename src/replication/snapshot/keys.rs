//! The key layout of the snapshot store. Every number is big-endian, so the
//! keys sort as the numbers do.
//!
//! - `S id` → a snapshot's record (JSON);
//! - `N` → the next snapshot id;
//! - `R` → a resync is writing into this copy;
//! - `B` → a rollback is under way;
//! - `U` → captures may not be on disk yet (the boot's id);
//! - `C dir ino aspect off epoch` → what the object was before the first
//!   change after snapshot `epoch` (the newest when it was kept); for
//!   bytes, where they are in the epoch's data file;
//! - `E epoch dir ino aspect off` → the stored size of that capture: the
//!   captures of one epoch, for deletion and for the bytes held.

pub const NEXT: &[u8] = b"N";
/// The marker of a resync under way (see `Snapshots::begin_resync`).
pub const RESYNCING: &[u8] = b"R";
/// The marker of a rollback under way.
pub const ROLLING_BACK: &[u8] = b"B";
/// Captures may be unsynced (see `durability`).
pub const UNSYNCED: &[u8] = b"U";
const RECORD: u8 = b'S';
const CAPTURE: u8 = b'C';
const BY_EPOCH: u8 = b'E';

/// What of an object a capture holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Aspect {
    /// Kind, owner, mode, size, times, xattrs, symlink target.
    Meta = 0,
    /// A directory's names and the objects they lead to.
    List = 1,
    /// Everything of the object is kept: never read it from the live tree.
    Gone = 2,
    /// Bytes of a regular file from `off`.
    Data = 3,
}

impl Aspect {
    fn of(b: u8) -> Option<Self> {
        Some(match b {
            0 => Aspect::Meta,
            1 => Aspect::List,
            2 => Aspect::Gone,
            3 => Aspect::Data,
            _ => return None,
        })
    }
}

/// An object of the module: its directory and inode number on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Obj {
    pub dir: u32,
    pub ino: u64,
}

/// One capture's place: which object, what of it, where, and its epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct At {
    pub obj: Obj,
    pub aspect: Aspect,
    pub off: u64,
    pub epoch: u64,
}

/// The first key after every key that starts with `prefix`: the upper bound
/// of a scan, so it never steps over deleted keys past its range.
pub fn after(prefix: &[u8]) -> Vec<u8> {
    let mut k = prefix.to_vec();
    while let Some(last) = k.pop() {
        if last < 0xff {
            k.push(last + 1);
            return k;
        }
    }
    vec![0xff; prefix.len() + 1]
}

/// `E epoch` up to `until` (exclusive): the epoch index of `[from, until)`.
pub fn epochs_until(until: u64) -> Vec<u8> {
    if until == u64::MAX {
        after(&[BY_EPOCH])
    } else {
        epoch_prefix(until)
    }
}

pub fn record(id: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = RECORD;
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
}

pub fn record_prefix() -> [u8; 1] {
    [RECORD]
}

pub fn record_id(key: &[u8]) -> Option<u64> {
    (key.len() == 9 && key[0] == RECORD).then(|| u64::from_be_bytes(key[1..].try_into().unwrap()))
}

/// `C dir ino` (13 bytes): every capture of one object.
pub fn object_prefix(o: Obj) -> Vec<u8> {
    let mut k = Vec::with_capacity(30);
    k.push(CAPTURE);
    k.extend_from_slice(&o.dir.to_be_bytes());
    k.extend_from_slice(&o.ino.to_be_bytes());
    k
}

/// `C dir ino aspect off` (22 bytes): one place across epochs.
pub fn place_prefix(o: Obj, aspect: Aspect, off: u64) -> Vec<u8> {
    let mut k = object_prefix(o);
    k.push(aspect as u8);
    k.extend_from_slice(&off.to_be_bytes());
    k
}

pub fn capture(at: &At) -> Vec<u8> {
    let mut k = place_prefix(at.obj, at.aspect, at.off);
    k.extend_from_slice(&at.epoch.to_be_bytes());
    k
}

pub fn parse_capture(k: &[u8]) -> Option<At> {
    if k.len() != 30 || k[0] != CAPTURE {
        return None;
    }
    Some(At {
        obj: Obj {
            dir: u32::from_be_bytes(k[1..5].try_into().unwrap()),
            ino: u64::from_be_bytes(k[5..13].try_into().unwrap()),
        },
        aspect: Aspect::of(k[13])?,
        off: u64::from_be_bytes(k[14..22].try_into().unwrap()),
        epoch: u64::from_be_bytes(k[22..30].try_into().unwrap()),
    })
}

pub fn by_epoch(at: &At) -> Vec<u8> {
    let mut k = Vec::with_capacity(30);
    k.push(BY_EPOCH);
    k.extend_from_slice(&at.epoch.to_be_bytes());
    k.extend_from_slice(&at.obj.dir.to_be_bytes());
    k.extend_from_slice(&at.obj.ino.to_be_bytes());
    k.push(at.aspect as u8);
    k.extend_from_slice(&at.off.to_be_bytes());
    k
}

pub fn epoch_prefix(epoch: u64) -> Vec<u8> {
    let mut k = vec![BY_EPOCH];
    k.extend_from_slice(&epoch.to_be_bytes());
    k
}

pub fn parse_by_epoch(k: &[u8]) -> Option<At> {
    if k.len() != 30 || k[0] != BY_EPOCH {
        return None;
    }
    Some(At {
        epoch: u64::from_be_bytes(k[1..9].try_into().unwrap()),
        obj: Obj {
            dir: u32::from_be_bytes(k[9..13].try_into().unwrap()),
            ino: u64::from_be_bytes(k[13..21].try_into().unwrap()),
        },
        aspect: Aspect::of(k[21])?,
        off: u64::from_be_bytes(k[22..30].try_into().unwrap()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_sort_by_number() {
        let at = At {
            obj: Obj { dir: 2, ino: 77 },
            aspect: Aspect::Data,
            off: 1 << 40,
            epoch: 9,
        };
        assert_eq!(parse_capture(&capture(&at)), Some(at));
        assert_eq!(parse_by_epoch(&by_epoch(&at)), Some(at));
        let later = At { epoch: 10, ..at };
        assert!(capture(&at) < capture(&later));
        assert!(capture(&at).starts_with(&place_prefix(at.obj, at.aspect, at.off)));
        assert_eq!(record_id(&record(300)), Some(300));
        assert!(record(2) < record(256));
        assert_eq!(after(b"C\x01"), b"C\x02");
        assert_eq!(after(b"C\xff"), b"D");
        assert!(capture(&at) < after(&object_prefix(at.obj)));
    }
}
