//! Delta resync: what the source ships when the peer comes back.
//!
//! The union of the source's change log and the target's own diverged set
//! (folded into the source's log first, so an interrupted resync still knows
//! it) is shipped through the live, ordered stream: namespace records first
//! (renames and links replayed, every other touched name made equal to the
//! source's current state), then the dirty byte ranges of every file, then
//! each file's size and metadata. Items are read from the local tree under the
//! order lock, so the application keeps writing meanwhile and the stream stays
//! consistent; the names go in short rounds, so the application is never held
//! for long. Marks are cleared only when the target reports them durable; a
//! resync cut short leaves them in place and the next one resumes from there.

use std::ops::Range;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::changelog::{ChangeLog, FileId, NsChange};
use crate::fs::sys;

use super::entry;
use super::primary::{Replicator, ResyncClear};
use super::warm;
use super::wire::WireMutation;
use names::NamesError;

mod names;

/// Largest data piece per message.
const PIECE: u64 = 1 << 20;

/// What the target may have changed on its own, per directory.
#[derive(Clone, Debug, Default)]
pub struct Diverged {
    pub files: Vec<(PathBuf, Vec<Range<u64>>)>,
    pub paths: Vec<PathBuf>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn raw(p: &Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    p.as_os_str().as_bytes().to_vec()
}

/// The target's side: what its own change log says may differ.
pub fn diverged_of(log: &dyn ChangeLog) -> crate::changelog::Result<Diverged> {
    let mut d = Diverged::default();
    for id in log.dirty_files()? {
        let Some(path) = log.path_of(id)? else {
            continue;
        };
        if log.dirty_size(id)?.is_some() {
            d.paths.push(path.clone());
        }
        d.files.push((path, log.dirty(id)?));
    }
    for (_, c) in log.ns_since(0)? {
        d.paths.extend(touched(&c).into_iter().cloned());
    }
    Ok(d)
}

/// Forgets everything in `log` (the target, once the source's resync is durable).
pub fn clear_all(log: &dyn ChangeLog) -> crate::changelog::Result<()> {
    for id in log.dirty_files()? {
        let ranges: Vec<_> = log.dirty(id)?.into_iter().map(|r| (id, r)).collect();
        log.clear_many(&ranges)?;
        log.clear_size(id)?;
    }
    if let Some((last, _)) = log.ns_since(0)?.last() {
        log.clear_ns_upto(*last)?;
    }
    log.flush()
}

fn touched(c: &NsChange) -> Vec<&PathBuf> {
    match c {
        NsChange::Create { path }
        | NsChange::Mkdir { path }
        | NsChange::Symlink { path, .. }
        | NsChange::Unlink { path }
        | NsChange::Rmdir { path }
        | NsChange::SetAttr { path }
        | NsChange::SetXattr { path, .. }
        | NsChange::RemoveXattr { path, .. } => vec![path],
        NsChange::Link { existing, path } => vec![existing, path],
        NsChange::Rename { from, to, .. } => vec![from, to],
    }
}

/// Why a resync stopped early.
#[derive(Debug, thiserror::Error)]
pub enum ResyncError {
    /// The link was lost: the next one resyncs again.
    #[error("{module}: resync interrupted (link lost)")]
    Interrupted { module: String },
    #[error("change log: {0}")]
    ChangeLog(#[from] crate::changelog::ChangeLogError),
    /// A name to ship could not be read here.
    #[error("{module}: resync: {why}")]
    Read { module: String, why: String },
}

/// Runs one resync on connection `conn`. Returns why it stopped early.
pub fn run(rep: &Replicator, conn: u64, diverged: Vec<Diverged>) -> Result<(), ResyncError> {
    // 1. The target's own changes become ours to ship (durably, first).
    for (d, dv) in diverged.iter().enumerate() {
        let log = &rep.dirs()[d].log;
        let mut marks = Vec::new();
        // What the target holds under excluded names is its own.
        let dir = d as u32;
        for (p, ranges) in dv.files.iter().filter(|(p, _)| !rep.is_excluded(dir, p)) {
            let id = log.ensure(p)?;
            marks.extend(ranges.iter().map(|r| (id, r.start, r.end - r.start)));
        }
        log.mark_many(&marks)?;
        let names = dv
            .paths
            .iter()
            .filter(|p| !rep.is_excluded(dir, p))
            .map(|p| NsChange::SetAttr { path: p.clone() })
            .collect();
        log.log_ns_many(names)?;
    }
    // Which records may have reached the peer before this resync (read
    // first: from here on, all of them may).
    let mut sent_upto = Vec::new();
    for d in rep.dirs() {
        sent_upto.push(d.log.ns_sent_upto()?);
        d.log.ns_sending(true)?;
    }
    // The warming threads look both passes' names up ahead of them.
    let roots: warm::Roots = std::sync::Arc::new(
        rep.dirs()
            .iter()
            .map(|d| d.root.try_clone())
            .collect::<std::io::Result<_>>()
            .map_err(|e| ResyncError::Read {
                module: rep.module.clone(),
                why: format!("a directory's descriptor: {e}"),
            })?,
    );
    // 2. Names (see [`names`]): afterwards the peer has every name we have,
    //    so live mutations can flow while contents follow.
    let stopped = || ResyncError::Interrupted {
        module: rep.module.clone(),
    };
    let plan = names::ship(rep, conn, &sent_upto, &roots).map_err(|e| match e {
        NamesError::Log(e) => e.into(),
        NamesError::Read(why) => ResyncError::Read {
            module: rep.module.clone(),
            why,
        },
        NamesError::Link => stopped(),
    })?;
    // 3. Contents, then each file's final size and metadata.
    for (d, files) in plan.files.iter().enumerate() {
        let dir = d as u32;
        let log = &rep.dirs()[d].log;
        // Files are looked up by the warming threads a hundred ahead, then
        // opened and their dirty ranges requested from the disk a few dozen
        // ahead, so small files are not read one disk wait at a time.
        let mut ahead: std::collections::VecDeque<(FileId, Option<Opened>)> =
            std::collections::VecDeque::new();
        let mut upcoming = files.iter().copied();
        let (mut warmed, mut opened) = (0, 0);
        loop {
            while warmed < files.len().min(opened + WARM_AHEAD) {
                warm_file(&roots, d, &rep.dirs()[d], files[warmed]);
                warmed += 1;
            }
            while ahead.len() < LOOKAHEAD {
                let Some(next) = upcoming.next() else { break };
                ahead.push_back((next, prefetch(&rep.dirs()[d], next)));
                opened += 1;
            }
            let Some((id, fd)) = ahead.pop_front() else {
                break;
            };
            let ranges = log.dirty(id)?;
            let shipped = std::cell::Cell::new(0u64);
            // Pieces past the end of the file travel as its size, below.
            let past_end = std::cell::RefCell::new(Vec::new());
            let open = std::cell::RefCell::new(fd);
            let named: std::cell::RefCell<Option<(u64, PathBuf)>> = std::cell::RefCell::new(None);
            for r in &ranges {
                let mut off = r.start;
                while off < r.end {
                    rep.pace_hold(conn);
                    let piece = off..(off + rep.pace_piece(PIECE)).min(r.end);
                    off = piece.end;
                    let ok = rep.ship(conn, dir, |dir_state, names_gen| {
                        // The path only changes when names do.
                        let mut named = named.borrow_mut();
                        let path = match &*named {
                            Some((g, p)) if *g == names_gen => p.clone(),
                            _ => {
                                let p = dir_state.log.path_of(id).ok()??;
                                *named = Some((names_gen, p.clone()));
                                p
                            }
                        };
                        let mut open = open.borrow_mut();
                        match read_range(dir_state, &path, piece.clone(), names_gen, &mut open) {
                            Some(data) if !data.is_empty() => Some((
                                {
                                    rep.progress().bytes_sent += data.len() as u64;
                                    shipped.set(data.len() as u64);
                                    WireMutation::Write {
                                        path: Some(raw(&path)),
                                        offset: piece.start,
                                        data,
                                        sync: false,
                                    }
                                },
                                Vec::new(),
                                vec![ResyncClear::Range(id, piece.clone())],
                            )),
                            _ => {
                                past_end.borrow_mut().push(piece.clone());
                                None
                            }
                        }
                    });
                    if !ok {
                        return Err(stopped());
                    }
                    // Outside the stream's lock: live changes go on meanwhile.
                    rep.pace_take(shipped.take());
                    rep.progress().bytes_done += piece.end - piece.start;
                }
            }
            let Some(path) = log.path_of(id)? else {
                // Unreachable now: its name's removal was shipped above.
                let ranges: Vec<_> = ranges.into_iter().map(|r| (id, r)).collect();
                log.clear_many(&ranges)?;
                log.clear_size(id)?;
                rep.progress().files_done += 1;
                continue;
            };
            let mut clears = vec![ResyncClear::Size(id)];
            clears.extend(
                past_end
                    .into_inner()
                    .into_iter()
                    .map(|r| ResyncClear::Range(id, r)),
            );
            if !reconcile(rep, conn, dir, &path, clears) {
                return Err(stopped());
            }
            rep.progress().files_done += 1;
        }
    }
    let generation = rep.dirs()[0].log.generation()?;
    if !rep.finish_resync(conn, &plan.ns_upto, generation) {
        return Err(stopped());
    }
    let mut p = rep.progress();
    p.running = false;
    p.finished_unix_ms = now_ms();
    tracing::info!(
        "{}: resync shipped {} bytes ({} marked) of {} files in {} ms",
        rep.module,
        p.bytes_sent,
        p.bytes_done,
        p.files_done,
        p.finished_unix_ms.saturating_sub(p.started_unix_ms)
    );
    Ok(())
}

/// Ships the current state of `path` (read under the order lock).
fn reconcile(rep: &Replicator, conn: u64, dir: u32, path: &Path, clears: Vec<ResyncClear>) -> bool {
    rep.ship(conn, dir, |d, _| {
        let entry = entry::read(d.root.as_fd(), path).ok()?;
        Some((
            WireMutation::Reconcile {
                path: raw(path),
                entry,
            },
            Vec::new(),
            clears,
        ))
    })
}

/// How many files the data pass opens and reads ahead.
const LOOKAHEAD: usize = 32;
/// How far ahead of the files opened the warming threads look files up.
const WARM_AHEAD: usize = 96;

/// A file opened for the data pass, and the names generation in which it was
/// last seen to be its path's file (`None`: opened ahead, outside the order
/// lock, so names may have moved in between).
struct Opened {
    names_gen: Option<u64>,
    fd: std::os::fd::OwnedFd,
}

/// Has the warming threads look up file `id` and read its dirty ranges.
fn warm_file(roots: &warm::Roots, d: usize, dir: &super::dir::Dir, id: FileId) {
    if let (Ok(Some(path)), Ok(ranges)) = (dir.log.path_of(id), dir.log.dirty(id)) {
        warm::ahead(roots, d, path, ranges);
    }
}

/// Opens the regular file `id` and asks the kernel to read its dirty ranges.
fn prefetch(d: &super::dir::Dir, id: FileId) -> Option<Opened> {
    let path = d.log.path_of(id).ok()??;
    let fd = warm::read_ahead(d.root.as_fd(), &path, &d.log.dirty(id).ok()?)?;
    Some(Opened {
        names_gen: None,
        fd,
    })
}

/// Reads `range` of the regular file `path`, clipped to its current size.
/// Runs under the order lock in names generation `names_gen`. `open` keeps
/// the file open from one piece to the next.
fn read_range(
    d: &super::dir::Dir,
    path: &Path,
    range: Range<u64>,
    names_gen: u64,
    open: &mut Option<Opened>,
) -> Option<Vec<u8>> {
    if open.as_ref().is_none_or(|o| o.names_gen != Some(names_gen)) {
        // Names moved since the file was opened (or it was opened ahead):
        // read only if it is still the file at `path`, never another one
        // that took its name.
        let node = entry::open_node(d.root.as_fd(), path).ok()?;
        let st = sys::stat_fd(node.as_fd()).ok()?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            *open = None;
            return None;
        }
        let same = open.as_ref().is_some_and(|o| {
            sys::stat_fd(o.fd.as_fd())
                .is_ok_and(|was| (was.st_dev, was.st_ino) == (st.st_dev, st.st_ino))
        });
        if !same {
            *open = Some(Opened {
                names_gen: None,
                fd: sys::reopen(node.as_fd(), libc::O_RDONLY).ok()?,
            });
        }
        open.as_mut()?.names_gen = Some(names_gen);
    }
    // A short read is the file's end: no stat per piece.
    let fd = open.as_ref()?.fd.as_fd();
    let mut buf = vec![0u8; (range.end - range.start) as usize];
    let mut got = 0;
    while got < buf.len() {
        match sys::pread(fd, &mut buf[got..], range.start + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(_) => return None,
        }
    }
    buf.truncate(got);
    Some(buf)
}
