//! The change-log records of a mutation: what it may change on the peer,
//! recorded before it is applied (marks, namespace records), and the name
//! map updated after it succeeded (renames, removals, hard links handing
//! their records over).

use std::path::Path;
use std::time::Instant;

use super::clears::Clear;
use super::order::Order;
use super::times::bytes;
use crate::changelog::{FileId, NsChange, Result};
use crate::fs::{Mutation, Remains};
use crate::replication::activity::EXTENT;
use crate::replication::dir::Dir;

/// Records into the change logs of a module's directories.
pub struct Records<'a> {
    pub dirs: &'a [Dir],
    pub module: &'a str,
}

impl Records<'_> {
    /// Appends a namespace record; once the peer is current, a record sent
    /// live may be cleared when the peer makes it durable.
    pub fn ns(&self, o: &mut Order, dir: u32, c: NsChange) -> Result<()> {
        let seq = self.dirs[dir as usize].log.log_ns(c)?;
        if o.streaming() && o.resync_done.is_some() {
            o.clears.add(Clear::NsUpto(dir, seq));
        }
        Ok(())
    }

    /// Records what `m` may change on the peer, before it is applied.
    /// Returns the file id of the bytes a write or fallocate changes.
    pub fn mark(&self, dir: u32, m: &Mutation<'_>, o: &mut Order) -> Result<Option<FileId>> {
        let log = &self.dirs[dir as usize].log;
        let (p, off, len) = match m {
            Mutation::Write {
                path: Some(p),
                offset,
                data,
                ..
            } => (p, *offset, data.len() as u64),
            Mutation::Fallocate {
                path: Some(p),
                offset,
                length,
                ..
            } => (p, *offset, *length),
            _ => {
                self.mark_names(dir, m, o)?;
                return Ok(None);
            }
        };
        let id = self.file_id(o, dir, p)?;
        if o.streaming() {
            // Connected: the activity log's whole-extent marks cover it.
            let now = Instant::now();
            for ext in o.activity.cold(dir, id, off, len) {
                log.mark(id, ext * EXTENT, EXTENT)?;
                o.activity.heat(dir, id, ext, now);
            }
        } else if len > 0 {
            log.mark(id, off, len)?;
        }
        Ok(Some(id))
    }

    /// The records of a change to names or metadata, before it is applied.
    fn mark_names(&self, dir: u32, m: &Mutation<'_>, o: &mut Order) -> Result<()> {
        let change = match m {
            Mutation::SetAttr {
                path: Some(p),
                change,
            } => {
                if let Some(size) = change.size {
                    let id = self.file_id(o, dir, p)?;
                    self.truncate(o, dir, id, size)?;
                    if o.streaming() {
                        o.clears.add(Clear::Size(dir, id));
                    }
                }
                NsChange::SetAttr { path: p.clone() }
            }
            Mutation::SetXattr {
                path: Some(p),
                name,
                ..
            } => NsChange::SetXattr {
                path: p.clone(),
                name: bytes(name.as_ref()),
            },
            Mutation::RemoveXattr {
                path: Some(p),
                name,
            } => NsChange::RemoveXattr {
                path: p.clone(),
                name: bytes(name.as_ref()),
            },
            Mutation::Create { path, .. } => NsChange::Create { path: path.clone() },
            Mutation::Mkdir { path, .. } => NsChange::Mkdir { path: path.clone() },
            Mutation::Symlink { path, target, .. } => NsChange::Symlink {
                path: path.clone(),
                target: target.clone(),
            },
            Mutation::Unlink { path, .. } => NsChange::Unlink { path: path.clone() },
            Mutation::Rmdir { path } => NsChange::Rmdir { path: path.clone() },
            // Renames and links are recorded after they succeed (a rename or
            // link replayed by a resync must be one that happened); nothing
            // else changes names.
            _ => return Ok(()),
        };
        self.ns(o, dir, change)
    }

    pub fn file_id(&self, o: &mut Order, dir: u32, p: &Path) -> Result<FileId> {
        let ids = &mut o.ids[dir as usize];
        if let Some(id) = ids.get(p) {
            return Ok(*id);
        }
        let id = self.dirs[dir as usize].log.ensure(p)?;
        if ids.len() > 65536 {
            ids.clear();
        }
        ids.insert(p.to_path_buf(), id);
        Ok(id)
    }

    /// Updates the name map after `m` succeeded locally.
    pub fn after(&self, dir: u32, m: &Mutation<'_>, o: &mut Order) -> Result<()> {
        let log = &self.dirs[dir as usize].log;
        match m {
            Mutation::Unlink { path, survivor } => {
                o.names_moved(dir);
                self.hand_over(o, dir, path, survivor)?;
                log.remove(path)?;
            }
            Mutation::Rmdir { path } => {
                o.names_moved(dir);
                log.remove(path)?;
            }
            Mutation::Rename {
                from,
                to,
                flags,
                survivor,
            } => {
                o.names_moved(dir);
                self.hand_over(o, dir, to, survivor)?;
                let exchange = flags & libc::RENAME_EXCHANGE != 0;
                if exchange {
                    log.exchange(from, to)?;
                } else {
                    log.rename(from, to)?;
                }
                let c = NsChange::Rename {
                    from: from.clone(),
                    to: to.clone(),
                    exchange,
                };
                self.ns(o, dir, c)?;
            }
            Mutation::Link { existing, path } => {
                let c = NsChange::Link {
                    existing: existing.clone(),
                    path: path.clone(),
                };
                self.ns(o, dir, c)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Records that `id` was truncated to `size`. The change log drops the
    /// marks past it, but a hot extent must stay marked whole: later writes
    /// to it are not marked one by one.
    fn truncate(&self, o: &Order, dir: u32, id: FileId, size: u64) -> Result<()> {
        let log = &self.dirs[dir as usize].log;
        log.truncate(id, size)?;
        for ext in o.activity.hot_from(dir, id, size) {
            log.mark(id, ext * EXTENT, EXTENT)?;
        }
        Ok(())
    }

    /// The name `gone` of a hard-linked file goes while the file lives on:
    /// what is recorded about the file (dirty ranges, a size change, hot
    /// extents) moves to the surviving name, or the peer's other names of it
    /// would never get those changes. Without a known name, the next resync
    /// compares the trees by content instead.
    fn hand_over(&self, o: &mut Order, dir: u32, gone: &Path, survivor: &Remains) -> Result<()> {
        if *survivor == Remains::Nothing {
            return Ok(());
        }
        let log = &self.dirs[dir as usize].log;
        let Some(id) = log.resolve(gone)? else {
            return Ok(());
        };
        let mut ranges = log.dirty(id)?;
        let size = log.dirty_size(id)?;
        let hot = !o.activity.hot_from(dir, id, 0).is_empty();
        if ranges.is_empty() && size.is_none() && !hot {
            return Ok(());
        }
        let Remains::Name(survivor) = survivor else {
            if !log.compare_needed()? {
                tracing::warn!(
                    "{}: {} was changed and removed while the file lives on under \
                     names not seen here: the next resync compares the trees by content",
                    self.module,
                    gone.display()
                );
                log.set_compare_needed(true)?;
            }
            return Ok(());
        };
        let to = log.ensure(survivor)?;
        o.activity.rekey(dir, id, to);
        if let Some(size) = size {
            // The size change drops the survivor's own marks past `size`:
            // they are marked again below.
            ranges.extend(log.dirty(to)?);
            self.truncate(o, dir, to, size)?;
        }
        let marks: Vec<_> = ranges
            .into_iter()
            .map(|r| (to, r.start, r.end - r.start))
            .collect();
        log.mark_many(&marks)
    }
}
