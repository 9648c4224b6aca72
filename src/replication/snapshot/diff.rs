//! What changed between two snapshots, or between a snapshot and now:
//! names added, removed or replaced, and, per file kept alive, the
//! metadata that differs and the byte ranges written in between.

use std::collections::BTreeMap;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::capture::data_len;
use super::restore::walk;
use super::view::View;
use super::{Result, Snapshot, Snapshots};
use crate::replication::wire::{Entry, EntryKind};

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Change {
    pub path: String,
    /// `added`, `removed`, `replaced` (another object under the name) or
    /// `changed`.
    pub change: &'static str,
    /// For `changed`: which attributes differ.
    pub attrs: Vec<&'static str>,
    /// For `changed` files: byte ranges written, merged.
    pub ranges: Vec<(u64, u64)>,
}

fn tree(view: &View<'_>) -> Result<BTreeMap<PathBuf, (u64, Entry)>> {
    let mut out = BTreeMap::new();
    walk(view, |p, ino, e| {
        out.insert(p.to_path_buf(), (ino, e.clone()));
        Ok(())
    })?;
    Ok(out)
}

fn attrs(a: &Entry, b: &Entry) -> Vec<&'static str> {
    let mut out = Vec::new();
    if a.kind != b.kind {
        out.push("target");
    }
    if a.mode != b.mode {
        out.push("mode");
    }
    if a.uid != b.uid || a.gid != b.gid {
        out.push("owner");
    }
    if a.kind == EntryKind::File && a.size != b.size {
        out.push("size");
    }
    if a.kind != EntryKind::Dir && a.mtime != b.mtime {
        out.push("mtime");
    }
    if a.xattrs != b.xattrs {
        out.push("xattrs");
    }
    out
}

fn merge(mut r: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    r.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (s, e) in r {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

impl Snapshots {
    /// The changes from snapshot `a` to snapshot `b` (`None`: now).
    pub fn diff(
        &self,
        a: &str,
        b: Option<&str>,
        roots: &[BorrowedFd<'_>],
    ) -> Result<(Snapshot, Option<Snapshot>, Vec<Change>)> {
        let sa = self.find(a)?;
        let sb = b.map(|n| self.find(n)).transpose()?;
        let (from, until) = match &sb {
            Some(sb) if sb.id < sa.id => {
                return self.diff(&sb.name, Some(&sa.name), roots);
            }
            Some(sb) => (sa.id, sb.id),
            None => (sa.id, u64::MAX),
        };
        let mut out = Vec::new();
        for (i, root) in roots.iter().enumerate() {
            let va = self.view(Some(sa.id), i as u32, *root);
            let vb = self.view(sb.as_ref().map(|s| s.id), i as u32, *root);
            let ta = tree(&va)?;
            let tb = tree(&vb)?;
            let show = |p: &Path| {
                if roots.len() == 1 {
                    super::shown(p)
                } else {
                    let base = sa.dirs.get(i).cloned().unwrap_or_default();
                    base.join(p).display().to_string()
                }
            };
            for (p, (ino, e)) in &ta {
                match tb.get(p) {
                    None => out.push(Change {
                        path: show(p),
                        change: "removed",
                        attrs: Vec::new(),
                        ranges: Vec::new(),
                    }),
                    Some((ino_b, _)) if ino_b != ino => out.push(Change {
                        path: show(p),
                        change: "replaced",
                        attrs: Vec::new(),
                        ranges: Vec::new(),
                    }),
                    Some((_, eb)) => {
                        let mut ranges = Vec::new();
                        if e.kind == EntryKind::File {
                            for (_, off, v) in va.runs(*ino, from, until)? {
                                let len = data_len(&v).unwrap_or(0);
                                let end = (off + len).min(e.size.max(eb.size));
                                if end > off {
                                    ranges.push((off, end));
                                }
                            }
                            if e.size != eb.size {
                                ranges.push((e.size.min(eb.size), e.size.max(eb.size)));
                            }
                        }
                        let ranges = merge(ranges);
                        let attrs = attrs(e, eb);
                        if !attrs.is_empty() || !ranges.is_empty() {
                            out.push(Change {
                                path: show(p),
                                change: "changed",
                                attrs,
                                ranges,
                            });
                        }
                    }
                }
            }
            for p in tb.keys().filter(|p| !ta.contains_key(*p)) {
                out.push(Change {
                    path: show(p),
                    change: "added",
                    attrs: Vec::new(),
                    ranges: Vec::new(),
                });
            }
        }
        out.sort_by(|x, y| x.path.cmp(&y.path));
        Ok((sa, sb, out))
    }
}
