//! The module's `exclude` patterns on the write path: a change to an excluded
//! path is applied here only, and is neither recorded nor sent. A rename or
//! hard link across the boundary is what it looks like from the peer: an
//! included name that leaves becomes its removal there, one that enters
//! (an excluded file renamed into place, the usual way to save a file) is
//! shipped whole. The directories holding an excluded change get their
//! modification times from here, so the trees still compare equal.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use super::clears::Clear;
use super::order::Order;
use super::stream::Stream;
use super::times::{bytes, stamp};
use super::write::settle_owed_locked;
use crate::changelog::NsChange;
use crate::config::Exclude;
use crate::fs::{Errno, LocalApply, Mutation, sys};
use crate::replication::wire::WireMutation;
use crate::replication::{entry, manifest};

/// Largest data piece per message when a file is shipped whole.
const PIECE: u64 = 1 << 20;

/// What a mutation is to the peer, given the exclusions.
pub(super) enum Scope {
    /// Replicated as usual.
    Replicated,
    /// Applied here only.
    Local,
    /// An included name goes out of sight (renamed to an excluded one).
    Leaves(PathBuf),
    /// An included name now holds what was excluded: shipped whole.
    Enters(PathBuf),
}

/// The stream seen through the module's exclusions.
pub struct Excluding<'a> {
    pub stream: &'a Stream,
    pub exclude: &'a Exclude,
}

impl<'a> Excluding<'a> {
    pub fn exclusions(&self) -> Option<&'a Exclude> {
        Some(self.exclude).filter(|e| !e.is_empty())
    }

    /// Whether `p` in directory `dir` is excluded; its kind is looked up
    /// only when it is not known and a pattern depends on it.
    fn excluded(&self, dir: u32, p: &Path, is_dir: Option<bool>) -> bool {
        let Some(ex) = self.exclusions() else {
            return false;
        };
        let is_dir = match is_dir {
            Some(d) => d,
            None if ex.by_kind() => self.is_dir(dir, p),
            None => false,
        };
        ex.excluded(p, is_dir)
    }

    /// Whether `p`, as it is in directory `dir` now, is excluded.
    pub fn is_excluded(&self, dir: u32, p: &Path) -> bool {
        self.excluded(dir, p, None)
    }

    fn is_dir(&self, dir: u32, p: &Path) -> bool {
        entry::open_node(self.stream.dirs[dir as usize].root.as_fd(), p)
            .ok()
            .and_then(|fd| sys::stat_fd(fd.as_fd()).ok())
            .is_some_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
    }

    /// What `m` is to the peer (read before it is applied).
    pub fn scope(&self, dir: u32, m: &Mutation<'_>) -> Scope {
        if self.exclusions().is_none() {
            return Scope::Replicated;
        }
        let local = |yes: bool| if yes { Scope::Local } else { Scope::Replicated };
        match m {
            Mutation::Create { path, .. } | Mutation::Symlink { path, .. } => {
                local(self.excluded(dir, path, Some(false)))
            }
            Mutation::Unlink { path, .. } => local(self.excluded(dir, path, Some(false))),
            Mutation::Mkdir { path, .. } | Mutation::Rmdir { path } => {
                local(self.excluded(dir, path, Some(true)))
            }
            Mutation::Write { path: Some(p), .. } | Mutation::Fallocate { path: Some(p), .. } => {
                local(self.excluded(dir, p, Some(false)))
            }
            Mutation::SetAttr { path: Some(p), .. }
            | Mutation::SetXattr { path: Some(p), .. }
            | Mutation::RemoveXattr { path: Some(p), .. }
            | Mutation::Fsync { path: Some(p), .. } => local(self.excluded(dir, p, None)),
            Mutation::Link { existing, path } => {
                match (
                    self.excluded(dir, existing, Some(false)),
                    self.excluded(dir, path, Some(false)),
                ) {
                    (_, true) => Scope::Local,
                    (true, false) => Scope::Enters(path.clone()),
                    (false, false) => Scope::Replicated,
                }
            }
            Mutation::Rename {
                from, to, flags, ..
            } => {
                let is_dir = Some(self.is_dir(dir, from));
                let exchange = flags & libc::RENAME_EXCHANGE != 0;
                let to_dir = if exchange {
                    Some(self.is_dir(dir, to))
                } else {
                    is_dir
                };
                match (
                    self.excluded(dir, from, is_dir),
                    self.excluded(dir, to, to_dir),
                ) {
                    (false, false) => Scope::Replicated,
                    (true, true) => Scope::Local,
                    // Exchanged: the included name holds the other's entry.
                    (true, false) => Scope::Enters(to.clone()),
                    (false, true) if exchange => Scope::Enters(from.clone()),
                    (false, true) => Scope::Leaves(from.clone()),
                }
            }
            _ => Scope::Replicated,
        }
    }

    /// Applies a mutation that is not (or not as such) replicated.
    pub fn submit(
        &self,
        dir: u32,
        m: &Mutation<'_>,
        scope: Scope,
        local: LocalApply<'_>,
    ) -> Result<(), Errno> {
        let parents = parents_of(m);
        if matches!(scope, Scope::Local) && parents.is_empty() {
            // An excluded file's contents or metadata: nothing to record,
            // send or order with the stream.
            return local();
        }
        let s = self.stream;
        let mut o = s.lock();
        let crossing = match &scope {
            Scope::Leaves(p) | Scope::Enters(p) => Some(p),
            Scope::Local | Scope::Replicated => None,
        };
        if let Some(p) = crossing {
            // What the peer is owed goes before the name moves.
            settle_owed_locked(s, &mut o);
            // Recorded before it is applied: a resync makes the peer's name
            // what ours is, whatever happens next.
            if let Err(e) =
                self.stream
                    .records()
                    .ns(&mut o, dir, NsChange::SetAttr { path: p.clone() })
            {
                drop(o);
                self.stream.note_error(format!("change log: {e}"));
                return Err(Errno::EIO);
            }
        }
        local()?;
        let mut last = None;
        if let Some(p) = crossing {
            o.names_moved(dir);
            let log = &self.stream.dirs[dir as usize].log;
            let r = log.remove(p).and_then(|_| match scope {
                Scope::Enters(_) => self.ship_whole(&mut o, dir, p, &mut last),
                _ => {
                    let gone = WireMutation::Reconcile {
                        path: bytes(p.as_os_str()),
                        entry: None,
                    };
                    last = self.stream.send(&mut o, dir, false, gone, Vec::new());
                    Ok(())
                }
            });
            if let Err(e) = r {
                self.stream.note_error(format!("change log: {e}"));
            }
        }
        if let Some(seq) = self.touch_parents(&mut o, dir, parents) {
            last = Some(seq);
        }
        drop(o);
        match last {
            Some((conn, seq)) => s.wait(conn, seq, s.need(false)),
            None => Ok(()),
        }
    }

    /// The included directories among `parents` get our times.
    fn touch_parents(
        &self,
        o: &mut Order,
        dir: u32,
        mut parents: Vec<PathBuf>,
    ) -> Option<(u64, u64)> {
        parents.retain(|p| !self.excluded(dir, p, Some(true)));
        if parents.is_empty() {
            return None;
        }
        if !o.streaming() {
            for p in parents {
                if let Err(e) = self
                    .stream
                    .records()
                    .ns(o, dir, NsChange::SetAttr { path: p })
                {
                    self.stream.note_error(format!("change log: {e}"));
                }
            }
            return None;
        }
        let root = self.stream.dirs[dir as usize].root.as_fd();
        let times = parents.iter().filter_map(|p| stamp(root, p)).collect();
        self.stream.send(o, dir, false, WireMutation::Times, times)
    }

    /// Ships `p` (and, for a directory, every included entry below it) as
    /// it is here: marked first, so a resync ships it if the link goes.
    fn ship_whole(
        &self,
        o: &mut Order,
        dir: u32,
        p: &Path,
        last: &mut Option<(u64, u64)>,
    ) -> crate::changelog::Result<()> {
        let root = self.stream.dirs[dir as usize].root.as_fd();
        let Ok(Some(e)) = entry::read(root, p) else {
            return Ok(());
        };
        let is_dir = e.kind == crate::replication::wire::EntryKind::Dir;
        if p != Path::new("") && self.excluded(dir, p, Some(is_dir)) {
            return Ok(());
        }
        self.stream.records().ns(
            o,
            dir,
            NsChange::SetAttr {
                path: p.to_path_buf(),
            },
        )?;
        let file = e.kind == crate::replication::wire::EntryKind::File;
        let size = e.size;
        let id = if file && size > 0 {
            let id = self.stream.records().file_id(o, dir, p)?;
            self.stream.dirs[dir as usize].log.mark(id, 0, size)?;
            Some(id)
        } else {
            None
        };
        let raw = bytes(p.as_os_str());
        let reconcile = |e| WireMutation::Reconcile {
            path: raw.clone(),
            entry: e,
        };
        if o.streaming() {
            *last = self
                .stream
                .send(o, dir, false, reconcile(Some(e.clone())), Vec::new())
                .or(*last);
        }
        if let Some(id) = id
            && o.streaming()
            && let Ok(node) = entry::open_node(root, p)
            && let Ok(fd) = sys::reopen(node.as_fd(), libc::O_RDONLY)
        {
            let mut off = 0;
            while off < size {
                let mut buf = vec![0u8; PIECE.min(size - off) as usize];
                let n = match sys::pread(fd.as_fd(), &mut buf, off) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                buf.truncate(n);
                let sent = self.stream.send(
                    o,
                    dir,
                    false,
                    WireMutation::Write {
                        path: Some(raw.clone()),
                        offset: off,
                        data: buf,
                        sync: false,
                    },
                    Vec::new(),
                );
                if sent.is_none() {
                    break;
                }
                *last = sent;
                o.clears.add(Clear::Range(dir, id, off..off + n as u64));
                off += n as u64;
            }
            // The writes moved its time on the peer: ours again.
            if let Ok(Some(e)) = entry::read(root, p) {
                *last = self
                    .stream
                    .send(o, dir, false, reconcile(Some(e)), Vec::new())
                    .or(*last);
            }
        }
        if is_dir {
            let names = manifest::list_dir(root, p).unwrap_or_default();
            for (name, _) in names {
                use std::os::unix::ffi::OsStrExt;
                self.ship_whole(o, dir, &p.join(std::ffi::OsStr::from_bytes(&name)), last)?;
            }
            // Its entries changed its time on the peer.
            if o.streaming()
                && let Ok(Some(e)) = entry::read(root, p)
            {
                *last = self
                    .stream
                    .send(o, dir, false, reconcile(Some(e)), Vec::new())
                    .or(*last);
            }
        }
        Ok(())
    }
}

/// The directories whose entries `m` changes.
fn parents_of(m: &Mutation<'_>) -> Vec<PathBuf> {
    let parent = |p: &Path| p.parent().unwrap_or(Path::new("")).to_path_buf();
    let mut parents = match m {
        Mutation::Create { path, .. }
        | Mutation::Mkdir { path, .. }
        | Mutation::Symlink { path, .. }
        | Mutation::Link { path, .. }
        | Mutation::Unlink { path, .. }
        | Mutation::Rmdir { path } => vec![parent(path)],
        Mutation::Rename { from, to, .. } => vec![parent(from), parent(to)],
        _ => Vec::new(),
    };
    parents.dedup();
    parents
}
