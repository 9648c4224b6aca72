//! What each kind of change touches, for [`Snapshots::keeping`](super::Snapshots::keeping):
//! the mount's mutations on a serving node, the applier's on the SECOND.

use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};

use super::Effect;
use crate::fs::Mutation;
use crate::replication::entry;
use crate::replication::wire::{Entry, WireMutation, checked_path, checked_path_or_root};

fn parent(p: &Path) -> PathBuf {
    p.parent().unwrap_or(Path::new("")).to_path_buf()
}

/// A namespace change of the name `p` (created or removed).
fn named(out: &mut Vec<Effect>, p: &Path, removed: bool) {
    out.push(Effect::Names(parent(p)));
    if removed {
        out.push(Effect::Drop(p.to_path_buf()));
    }
}

fn renamed(out: &mut Vec<Effect>, from: &Path, to: &Path, flags: u32) {
    out.push(Effect::Names(parent(from)));
    out.push(Effect::Names(parent(to)));
    if flags & libc::RENAME_EXCHANGE == 0 {
        // What `to` named goes (if it was its last name).
        out.push(Effect::Drop(to.to_path_buf()));
    }
}

fn fallocated(out: &mut Vec<Effect>, p: PathBuf, off: u64, len: u64, mode: i32) {
    if mode & (libc::FALLOC_FL_COLLAPSE_RANGE | libc::FALLOC_FL_INSERT_RANGE) != 0 {
        out.push(Effect::From(p, off));
    } else if mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0 {
        out.push(Effect::Bytes(p, off, len));
    } else {
        out.push(Effect::Meta(p));
    }
}

fn resized(out: &mut Vec<Effect>, p: PathBuf, size: Option<u64>) {
    match size {
        Some(s) => out.push(Effect::From(p, s)),
        None => out.push(Effect::Meta(p)),
    }
}

/// The effects of a mutation made through the mount.
pub fn of_mutation(m: &Mutation<'_>) -> Vec<Effect> {
    let mut out = Vec::new();
    match m {
        Mutation::Create { path, .. }
        | Mutation::Mkdir { path, .. }
        | Mutation::Symlink { path, .. }
        | Mutation::Link { path, .. } => named(&mut out, path, false),
        Mutation::Unlink { path, .. } | Mutation::Rmdir { path } => named(&mut out, path, true),
        Mutation::Rename {
            from, to, flags, ..
        } => renamed(&mut out, from, to, *flags),
        Mutation::Write {
            path: Some(p),
            offset,
            data,
            ..
        } => out.push(Effect::Bytes(p.clone(), *offset, data.len() as u64)),
        Mutation::Fallocate {
            path: Some(p),
            offset,
            length,
            mode,
        } => fallocated(&mut out, p.clone(), *offset, *length, *mode),
        Mutation::SetAttr {
            path: Some(p),
            change,
        } => resized(&mut out, p.clone(), change.size),
        Mutation::SetXattr { path: Some(p), .. } | Mutation::RemoveXattr { path: Some(p), .. } => {
            out.push(Effect::Meta(p.clone()))
        }
        // Unnamed files are in no snapshot's tree; fsync changes nothing.
        _ => {}
    }
    out
}

/// The effects of a change the applier makes (`len`: the bytes of a write
/// whose data travels apart).
pub fn of_wire(root: BorrowedFd<'_>, m: &WireMutation, len: u64) -> Vec<Effect> {
    let mut out = Vec::new();
    let p = |raw: &[u8]| checked_path(raw).ok();
    let any = |raw: &[u8]| checked_path_or_root(raw).ok();
    match m {
        WireMutation::Create { path, .. }
        | WireMutation::Mkdir { path, .. }
        | WireMutation::Symlink { path, .. } => {
            if let Some(p) = p(path) {
                named(&mut out, &p, false);
            }
        }
        // A resync's replay replaces what the name held.
        WireMutation::Link { path, .. } => {
            if let Some(p) = p(path) {
                named(&mut out, &p, true);
            }
        }
        WireMutation::Unlink { path } | WireMutation::Rmdir { path } => {
            if let Some(p) = p(path) {
                named(&mut out, &p, true);
            }
        }
        WireMutation::Rename { from, to, flags } => {
            if let (Some(f), Some(t)) = (p(from), p(to)) {
                renamed(&mut out, &f, &t, *flags);
            }
        }
        WireMutation::Write {
            path: Some(path),
            offset,
            data,
            ..
        } => {
            if let Some(p) = p(path) {
                let len = if data.is_empty() {
                    len
                } else {
                    data.len() as u64
                };
                out.push(Effect::Bytes(p, *offset, len));
            }
        }
        WireMutation::Fallocate {
            path: Some(path),
            offset,
            length,
            mode,
        } => {
            if let Some(p) = p(path) {
                fallocated(&mut out, p, *offset, *length, *mode);
            }
        }
        WireMutation::SetAttr {
            path: Some(path),
            attrs,
        } => {
            if let Some(p) = any(path) {
                resized(&mut out, p, attrs.size);
            }
        }
        WireMutation::SetXattr {
            path: Some(path), ..
        }
        | WireMutation::RemoveXattr {
            path: Some(path), ..
        } => {
            if let Some(p) = any(path) {
                out.push(Effect::Meta(p));
            }
        }
        WireMutation::Reconcile { path, entry: e } => {
            if let Some(p) = any(path) {
                reconciled(&mut out, root, p, e.as_ref());
            }
        }
        _ => {}
    }
    out
}

/// A resync imposing `want` on the name `p`. The names of its directory
/// change only when the name comes, goes or takes another object; a file
/// reconciled in place (every file a resync's data pass ends with) changes
/// only its own metadata and size.
fn reconciled(out: &mut Vec<Effect>, root: BorrowedFd<'_>, p: PathBuf, want: Option<&Entry>) {
    let have = entry::kind(root, &p).ok().flatten();
    let names = |out: &mut Vec<Effect>| {
        if !p.as_os_str().is_empty() {
            out.push(Effect::Names(parent(&p)));
        }
    };
    match (have, want) {
        (None, Some(_)) => {
            names(out);
            out.push(Effect::Born(p));
        }
        (None, None) => {}
        (Some(_), None) => {
            names(out);
            out.push(Effect::Drop(p));
        }
        (Some((h, _)), Some(w)) if h != w.kind => {
            names(out);
            out.push(Effect::Drop(p));
        }
        (Some((_, links)), Some(w)) => {
            let file = w.kind == crate::replication::wire::EntryKind::File;
            // Linked here and not on the source: the name gets an object
            // of its own (see `entry::impose`).
            if file && w.links == 1 && links > 1 {
                names(out);
            }
            resized(out, p, file.then_some(w.size));
        }
    }
}
