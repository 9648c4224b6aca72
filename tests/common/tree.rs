//! A directory tree as the tests compare it: every name below a root with
//! its kind, mode, owner, size, content, symlink target, extended
//! attributes, hard links and, as asked, link count and modification time.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// What a snapshot takes in beyond what it always holds.
#[derive(Clone, Copy)]
pub struct Holds {
    /// The root itself, under the empty name.
    pub root: bool,
    /// Link counts.
    pub nlink: bool,
    /// The modification time of the names whose time (in seconds) this
    /// accepts.
    pub mtime: fn(i64) -> bool,
}

/// What two replicas must agree on: the root and every modification time,
/// not link counts (a node may hold other names of a file outside the tree).
pub const REPLICA: Holds = Holds {
    root: true,
    nlink: false,
    mtime: |_| true,
};

/// Everything a tree must agree on for one name.
#[derive(Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// 0 for directories (their sizes depend on the file system).
    pub size: u64,
    pub nlink: Option<u64>,
    pub mtime: Option<(i64, i64)>,
    pub content: Option<Vec<u8>>,
    pub target: Option<PathBuf>,
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// The other names of the same inode (hard links), in name order.
    pub links: Vec<PathBuf>,
}

/// The tree below `root`, by name relative to it.
pub fn snapshot(root: &Path, holds: Holds) -> BTreeMap<PathBuf, Entry> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, Vec<PathBuf>> = BTreeMap::new();
    walk(root, Path::new(""), holds, &mut out, &mut inodes);
    for names in inodes.values() {
        for n in names {
            let others = names.iter().filter(|o| *o != n).cloned().collect();
            out.get_mut(n).unwrap().links = others;
        }
    }
    if !holds.root {
        out.remove(Path::new(""));
    }
    out
}

fn walk(
    root: &Path,
    rel: &Path,
    holds: Holds,
    out: &mut BTreeMap<PathBuf, Entry>,
    inodes: &mut BTreeMap<u64, Vec<PathBuf>>,
) {
    let full = root.join(rel);
    let md = std::fs::symlink_metadata(&full).unwrap();
    let ft = md.file_type();
    let kind = if ft.is_dir() {
        "dir"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_file() {
        "file"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_char_device() {
        "char"
    } else {
        "block"
    };
    let entry = Entry {
        kind,
        mode: md.mode(),
        uid: md.uid(),
        gid: md.gid(),
        size: if ft.is_dir() { 0 } else { md.size() },
        nlink: holds.nlink.then(|| md.nlink()),
        mtime: (holds.mtime)(md.mtime()).then(|| (md.mtime(), md.mtime_nsec())),
        content: ft.is_file().then(|| std::fs::read(&full).unwrap()),
        target: ft.is_symlink().then(|| std::fs::read_link(&full).unwrap()),
        xattrs: xattrs(&full),
        links: Vec::new(),
    };
    if !ft.is_dir() {
        inodes.entry(md.ino()).or_default().push(rel.to_path_buf());
    }
    out.insert(rel.to_path_buf(), entry);
    if ft.is_dir() {
        let mut names: Vec<_> = std::fs::read_dir(&full)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for n in names {
            walk(root, &rel.join(n), holds, out, inodes);
        }
    }
}

/// The extended attributes of `path` itself (a symlink's own).
fn xattrs(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let c = super::cpath(path);
    let mut buf = vec![0u8; 65536];
    // SAFETY: `c` is a NUL-terminated path and `buf` is writable for the
    // length passed; both outlive the call.
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    let mut out = BTreeMap::new();
    if n <= 0 {
        return out;
    }
    for name in buf[..n as usize]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
    {
        let cn = std::ffi::CString::new(name).unwrap();
        let mut v = vec![0u8; 65536];
        // SAFETY: `c` and `cn` are NUL-terminated and `v` is writable for the
        // length passed; all outlive the call.
        let m = unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        assert!(m >= 0, "getxattr {} {:?}", path.display(), cn);
        v.truncate(m as usize);
        out.insert(String::from_utf8_lossy(name).into_owned(), v);
    }
    out
}

/// Asserts that two replicas' trees are identical, naming the first
/// difference.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let (sa, sb) = (snapshot(a, REPLICA), snapshot(b, REPLICA));
    let names_a: Vec<_> = sa.keys().collect();
    let names_b: Vec<_> = sb.keys().collect();
    assert_eq!(names_a, names_b, "the trees hold different names");
    for (name, na) in &sa {
        let nb = &sb[name];
        if na != nb {
            let content = |n: &Entry| n.content.clone().unwrap_or_default();
            let (ca, cb) = (content(na), content(nb));
            let short = |n: &Entry, c: &[u8]| {
                format!(
                    "{} mode {:o} uid {} gid {} size {} mtime {:?} target {:?} xattrs {:?} links {:?} content-len {}",
                    n.kind,
                    n.mode,
                    n.uid,
                    n.gid,
                    n.size,
                    n.mtime,
                    n.target,
                    n.xattrs,
                    n.links,
                    c.len()
                )
            };
            let first_diff = ca.iter().zip(&cb).position(|(x, y)| x != y);
            let head = |c: &[u8]| String::from_utf8_lossy(&c[..c.len().min(24)]).into_owned();
            panic!(
                "{} differs:\n  primary:   {} {:?}\n  secondary: {} {:?}\n  first differing byte: {first_diff:?}",
                name.display(),
                short(na, &ca),
                head(&ca),
                short(nb, &cb),
                head(&cb)
            );
        }
    }
}
