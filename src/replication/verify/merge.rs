//! The first pass of a verify as a merge of two ordered streams: this node's
//! scan and the peer's manifest both come in walk order (parents first,
//! names sorted), which is the order of their paths, so each pair of items
//! is compared as it arrives and neither tree is held in memory. A tree of
//! ten million files costs what a few parts of it do.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use super::{Item, ManifestItem, SessionError, checked_path, protocol};

/// Items made whole from the parts of a manifest, in order.
#[derive(Default)]
pub struct Assembler {
    /// The item whose chunks may still follow.
    open: Option<Item>,
    ready: VecDeque<Item>,
    ended: bool,
    /// The last path handed on: each must come after it.
    last: Option<PathBuf>,
}

impl Assembler {
    /// Takes one part; `last`: no part follows.
    pub fn feed(&mut self, items: Vec<ManifestItem>, last: bool) -> Result<(), SessionError> {
        for it in items {
            match it {
                ManifestItem::Entry { path, entry } => {
                    self.close();
                    let p = if path.is_empty() {
                        PathBuf::new()
                    } else {
                        checked_path(&path).map_err(protocol)?
                    };
                    if let Some(entry) = entry {
                        self.open = Some(Item {
                            path: p,
                            entry,
                            chunks: Vec::new(),
                        });
                    }
                }
                ManifestItem::Chunks(c) => match &mut self.open {
                    Some(it) => it.chunks.extend(c),
                    None => return Err(protocol("chunks without a file in a manifest")),
                },
            }
        }
        if last {
            self.close();
            self.ended = true;
        }
        Ok(())
    }

    fn close(&mut self) {
        if let Some(it) = self.open.take() {
            self.ready.push_back(it);
        }
    }

    /// Whether the next item is whole, or none will come: nothing to feed.
    pub fn fed(&self) -> bool {
        !self.ready.is_empty() || self.ended
    }

    pub fn peek(&self) -> Option<&Item> {
        self.ready.front()
    }

    /// The next item, refused if it does not come after the one before it
    /// (`what` names the stream).
    pub fn take(&mut self, what: &str) -> Result<Option<Item>, SessionError> {
        let Some(it) = self.ready.pop_front() else {
            return Ok(None);
        };
        if self.last.as_deref().is_some_and(|l| l >= it.path.as_path()) {
            return Err(protocol(format!(
                "{what} is out of order at {}",
                it.path.display()
            )));
        }
        self.last = Some(it.path.clone());
        Ok(Some(it))
    }

    /// Everything, once the last part was fed (a manifest of named paths).
    pub fn into_items(mut self) -> impl Iterator<Item = Item> {
        self.close();
        self.ready.into_iter()
    }
}

/// Which side a merge step takes from.
#[derive(Debug, PartialEq, Eq)]
pub enum Side {
    Ours,
    Theirs,
    Both,
}

/// Where two ordered streams stand: which to take from next (`None`: both
/// ended). A side that ended counts as past every path.
pub fn next_side(ours: Option<&Path>, theirs: Option<&Path>) -> Option<Side> {
    Some(match (ours, theirs) {
        (None, None) => return None,
        (Some(_), None) => Side::Ours,
        (None, Some(_)) => Side::Theirs,
        (Some(a), Some(b)) => match a.cmp(b) {
            std::cmp::Ordering::Less => Side::Ours,
            std::cmp::Ordering::Greater => Side::Theirs,
            std::cmp::Ordering::Equal => Side::Both,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::wire::{Entry, EntryKind, Time};

    fn state(kind: EntryKind, size: u64) -> Entry {
        let t = Time { secs: 0, nanos: 0 };
        Entry {
            kind,
            mode: 0o755,
            uid: 0,
            gid: 0,
            size,
            atime: t,
            mtime: t,
            xattrs: Vec::new(),
            links: 1,
        }
    }

    fn entry(path: &str) -> ManifestItem {
        ManifestItem::Entry {
            path: path.as_bytes().to_vec(),
            entry: Some(state(EntryKind::Dir, 0)),
        }
    }

    #[test]
    fn walk_order_is_path_order() {
        // '.' and '-' sort before '/': as bytes "a.b" < "a/x", as paths not.
        let walk = ["", "a", "a/x", "a/x/y", "a-b", "a.b", "b"];
        for w in walk.windows(2) {
            assert_eq!(
                next_side(Some(Path::new(w[0])), Some(Path::new(w[1]))),
                Some(Side::Ours),
                "{w:?}"
            );
        }
        assert_eq!(next_side(None, Some(Path::new("a"))), Some(Side::Theirs));
        assert_eq!(next_side(None, None), None);
    }

    #[test]
    fn items_are_made_whole_across_parts_and_kept_in_order() {
        let mut a = Assembler::default();
        let chunk = crate::replication::wire::ChunkSum {
            offset: 0,
            len: 3,
            hash: [1; 32],
        };
        let file = ManifestItem::Entry {
            path: b"f".to_vec(),
            entry: Some(state(EntryKind::File, 6)),
        };
        a.feed(vec![entry(""), file], false).unwrap();
        // The file's chunks may still come: only the root is whole.
        assert_eq!(a.take("x").unwrap().unwrap().path, PathBuf::new());
        assert!(!a.fed());
        a.feed(vec![ManifestItem::Chunks(vec![chunk.clone()])], false)
            .unwrap();
        a.feed(vec![ManifestItem::Chunks(vec![chunk]), entry("g")], true)
            .unwrap();
        let f = a.take("x").unwrap().unwrap();
        assert_eq!((f.path.as_path(), f.chunks.len()), (Path::new("f"), 2));
        assert_eq!(a.take("x").unwrap().unwrap().path, Path::new("g"));
        assert!(a.fed() && a.take("x").unwrap().is_none());

        let mut b = Assembler::default();
        b.feed(vec![entry("b"), entry("a")], true).unwrap();
        b.take("the peer's manifest").unwrap();
        let e = b.take("the peer's manifest").unwrap_err().to_string();
        assert!(
            e.contains("the peer's manifest is out of order at a"),
            "{e}"
        );
        let mut c = Assembler::default();
        assert!(c.feed(vec![ManifestItem::Chunks(vec![])], true).is_err());
    }
}
