//! After a split brain the operator picks the data of one node; the other is
//! then overwritten by a full sync. Before that, what the losing node changed
//! on its own is copied aside, so nothing it was told is done disappears
//! without a trace: every file its change log holds as dirty (whole, as it is
//! now) and a `MANIFEST` listing those files, their changed ranges and the
//! namespace changes (creations, removals, renames) not yet on the peer.

use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use super::dir::Dir;
use crate::changelog::ChangeLogError;
use crate::fs::sys;

/// Why the copy aside stopped short: nothing is overwritten then. Each
/// names the file or directory it was about.
#[derive(Debug, thiserror::Error)]
pub enum AsideError {
    /// Writing the copy or its manifest failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The change log could not say what diverged.
    #[error("{path}: {source}")]
    ChangeLog {
        path: PathBuf,
        #[source]
        source: ChangeLogError,
    },
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Aside {
    pub files: u64,
    pub bytes: u64,
}

/// How much of a diverged file is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    /// The whole file (a split brain: the node's own history is thrown away).
    Whole,
    /// Only its dirty ranges, at their offsets in a sparse file of the same
    /// size: what a node that stopped serving without handing over may have
    /// changed on its own, bounded by its change log rather than by its files.
    Ranges,
}

/// Copies the diverged files of every module dir into `into/DIR_INDEX/PATH`.
/// A file that vanished meanwhile is only listed. `progress` is called after
/// each file.
pub fn keep_aside(
    dirs: &[Dir],
    into: &Path,
    keep: Keep,
    progress: &dyn Fn(),
) -> Result<Aside, AsideError> {
    let io = |p: &Path| {
        let path = p.to_path_buf();
        move |source| AsideError::Io { path, source }
    };
    let log_err = |p: &Path| {
        let path = p.to_path_buf();
        move |source| AsideError::ChangeLog { path, source }
    };
    std::fs::create_dir_all(into).map_err(io(into))?;
    let manifest_path = into.join("MANIFEST");
    let mut manifest = std::fs::File::create(&manifest_path).map_err(io(&manifest_path))?;
    let mut done = Aside::default();
    for (i, d) in dirs.iter().enumerate() {
        let log = &d.log;
        let base = into.join(i.to_string());
        let mut lines = Vec::new();
        for id in log.dirty_files().map_err(log_err(into))? {
            let Some(path) = log.path_of(id).map_err(log_err(into))? else {
                continue;
            };
            let ranges_raw = log.dirty(id).map_err(log_err(&path))?;
            let ranges: Vec<String> = ranges_raw
                .iter()
                .map(|r| format!("{}-{}", r.start, r.end))
                .collect();
            let only = (keep == Keep::Ranges).then_some(&ranges_raw[..]);
            match copy_out(d, &path, &base.join(&path), only) {
                Ok(Some(n)) => {
                    done.files += 1;
                    done.bytes += n;
                    lines.push(format!("file {i} {} {}", path.display(), ranges.join(",")));
                }
                Ok(None) => {}
                Err(e) => lines.push(format!("gone {i} {} ({e})", path.display())),
            }
            progress();
        }
        for (seq, change) in log.ns_since(0).map_err(log_err(into))? {
            lines.push(format!("namespace {i} #{seq} {change:?}"));
        }
        for l in lines {
            writeln!(manifest, "{l}").map_err(io(&manifest_path))?;
        }
    }
    manifest.sync_all().map_err(io(&manifest_path))?;
    Ok(done)
}

/// Copies a regular file below the module root to `to` (with `only`, just
/// those ranges, at their offsets); `None` for anything else (a directory's
/// or a link's change is in the namespace list). Returns the bytes copied.
fn copy_out(
    d: &Dir,
    path: &Path,
    to: &PathBuf,
    only: Option<&[std::ops::Range<u64>]>,
) -> std::io::Result<Option<u64>> {
    let os = |e: crate::fs::Errno| std::io::Error::from_raw_os_error(e.code());
    let c = sys::cname(path.as_os_str()).map_err(os)?;
    let at = sys::open_beneath(d.root.as_fd(), &c).map_err(os)?;
    let st = sys::stat_fd(at.as_fd()).map_err(os)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Ok(None);
    }
    let fd = sys::reopen(at.as_fd(), libc::O_RDONLY).map_err(os)?;
    let mut from = std::fs::File::from(fd);
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut out = std::fs::File::create(to)?;
    let n = match only {
        None => std::io::copy(&mut from, &mut out)?,
        Some(ranges) => {
            use std::os::unix::fs::FileExt;
            let size = st.st_size as u64;
            out.set_len(size)?;
            let mut buf = vec![0u8; 1 << 20];
            let mut n = 0;
            for r in ranges {
                let mut at = r.start;
                while at < r.end.min(size) {
                    let want = ((r.end.min(size) - at) as usize).min(buf.len());
                    let got = from.read_at(&mut buf[..want], at)?;
                    if got == 0 {
                        break;
                    }
                    out.write_all_at(&buf[..got], at)?;
                    at += got as u64;
                    n += got as u64;
                }
            }
            n
        }
    };
    out.sync_all()?;
    Ok(Some(n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changelog::{ChangeLog, MemChangeLog, NsChange};
    use std::sync::Arc;

    #[test]
    fn dirty_files_are_copied_whole_and_listed_with_their_ranges() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("sub")).unwrap();
        std::fs::write(root.path().join("sub/a"), b"hello world").unwrap();
        std::fs::write(root.path().join("clean"), b"untouched").unwrap();
        let log = Arc::new(MemChangeLog::new(65536).unwrap());
        let a = log.ensure(Path::new("sub/a")).unwrap();
        log.mark(a, 6, 5).unwrap();
        let gone = log.ensure(Path::new("gone")).unwrap();
        log.mark(gone, 0, 1).unwrap();
        log.log_ns(NsChange::Unlink { path: "old".into() }).unwrap();
        let dir = Dir {
            root: std::fs::File::open(root.path()).unwrap().into(),
            log,
            cache: parking_lot::Mutex::new(Default::default()),
            snaps: None,
        };
        let out = tempfile::tempdir().unwrap();
        let calls = std::cell::Cell::new(0);
        let done = keep_aside(std::slice::from_ref(&dir), out.path(), Keep::Whole, &|| {
            calls.set(calls.get() + 1)
        })
        .unwrap();
        assert_eq!(calls.get(), 2, "once per dirty file");
        assert_eq!(
            done,
            Aside {
                files: 1,
                bytes: 11
            }
        );
        assert_eq!(
            std::fs::read(out.path().join("0/sub/a")).unwrap(),
            b"hello world"
        );
        assert!(!out.path().join("0/clean").exists());
        let m = std::fs::read_to_string(out.path().join("MANIFEST")).unwrap();
        assert!(m.contains("file 0 sub/a 6-11"), "{m}");
        assert!(m.contains("gone 0 gone"), "{m}");
        assert!(m.contains("Unlink"), "{m}");
    }

    #[test]
    fn set_aside_copies_only_the_dirty_ranges_at_their_offsets() {
        let root = tempfile::tempdir().unwrap();
        let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(root.path().join("big"), &body).unwrap();
        let log = Arc::new(MemChangeLog::new(65536).unwrap());
        let id = log.ensure(Path::new("big")).unwrap();
        log.mark(id, 100_000, 10).unwrap();
        log.mark(id, 299_990, 100).unwrap();
        let dir = Dir {
            root: std::fs::File::open(root.path()).unwrap().into(),
            log,
            cache: parking_lot::Mutex::new(Default::default()),
            snaps: None,
        };
        let out = tempfile::tempdir().unwrap();
        let done =
            keep_aside(std::slice::from_ref(&dir), out.path(), Keep::Ranges, &|| {}).unwrap();
        assert_eq!(
            done,
            Aside {
                files: 1,
                bytes: 20
            },
            "clipped to the file's end"
        );
        let kept = std::fs::read(out.path().join("0/big")).unwrap();
        assert_eq!(kept.len(), body.len());
        assert_eq!(kept[100_000..100_010], body[100_000..100_010]);
        assert_eq!(kept[299_990..], body[299_990..]);
        assert!(
            kept[..100_000].iter().all(|&b| b == 0),
            "only the dirty ranges"
        );
        let m = std::fs::read_to_string(out.path().join("MANIFEST")).unwrap();
        assert!(m.contains("file 0 big 100000-100010"), "{m}");
    }
}
