//! The names pass of a resync: every recorded namespace change is shipped
//! (renames and links replayed, every other touched name made equal to
//! ours), so that the peer has every name this node has and live changes
//! may flow while contents follow.
//!
//! It ships in rounds that each hold the stream for at most [`ROUND`]
//! ([`ROUND_BUSY`] while the application writes), and between rounds
//! waits, outside the order lock, for the peer to take what it was sent
//! (a few names while the application writes, and no more names a second
//! than the resync's minimum allows): a pass of a million names
//! holds the application's calls no longer than a round, however slowly
//! the peer makes files. Meanwhile the
//! application's changes are logged, not sent (the link is not ready yet);
//! each round reads the records logged since the last one, and the round
//! that leaves nothing behind marks the link ready, reading in that same
//! round which files' contents follow.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::changelog::{ChangeLogError, FileId, NsChange};
use crate::fs::sys;
use crate::replication::dir::Dir;
use crate::replication::entry;
use crate::replication::primary::{Exclusive, RESYNC_NAME_COST, Replicator};
use crate::replication::warm;
use crate::replication::wire::WireMutation;

use super::{now_ms, raw, touched};

/// How many records ahead of the one shipped their names are looked up.
const WARM_AHEAD: usize = 64;
/// The longest a round holds the stream.
const ROUND: Duration = Duration::from_millis(10);
/// The longest a round holds it while the application writes: each of its
/// changes meanwhile waits for the round.
const ROUND_BUSY: Duration = Duration::from_micros(500);
/// Once the records found at the start are shipped, how long the pass
/// chases the application's new ones at least (and at most as long as
/// the first part took) before it ships the rest in one round: an
/// application that changes names faster than the peer makes them is
/// held then, as long as that rest takes.
const CHASE: Duration = Duration::from_secs(10);

/// What the contents pass works from.
pub struct Plan {
    /// Per directory: the files whose contents follow.
    pub files: Vec<Vec<FileId>>,
    /// Per directory: the last namespace record shipped.
    pub ns_upto: Vec<u64>,
}

pub enum NamesError {
    Log(ChangeLogError),
    Read(String),
    Link,
}

impl From<ChangeLogError> for NamesError {
    fn from(e: ChangeLogError) -> Self {
        NamesError::Log(e)
    }
}

/// One directory's part of the pass.
#[derive(Default)]
struct DirPass {
    /// The last record read from the log.
    read: u64,
    /// The last record shipped.
    upto: u64,
    pending: VecDeque<(u64, NsChange)>,
    /// Where each name is last renamed away, among the records read. Made
    /// equal to ours before that, the name would be shipped as absent (it is
    /// gone here), and the replayed rename would find nothing to move: a
    /// record kept longer than the bytes it came with (the peer had them
    /// durably) must not cost the peer the file.
    moved_at: HashMap<PathBuf, u64>,
    /// Names made equal to ours, unchanged since, by [`key`]: a full sync
    /// makes every name of the tree, and a set of the paths themselves held
    /// them all over again.
    done: HashSet<u128>,
    /// Directories whose entries changed, which changed their times on the
    /// peer too: made equal to ours again once every record is shipped.
    parents: BTreeSet<PathBuf>,
    /// How many of the pending records, from the front, the warming
    /// threads were asked to look up.
    warmed: usize,
}

impl DirPass {
    /// Takes in records read from the log.
    fn absorb(&mut self, new: Vec<(u64, NsChange)>) {
        for (seq, change) in &new {
            self.read = *seq;
            if let NsChange::Rename { from, to, exchange } = change {
                self.moved_at.insert(from.clone(), *seq);
                if *exchange {
                    self.moved_at.insert(to.clone(), *seq);
                }
            }
            // Changed since it was made equal: again.
            for p in touched(change) {
                self.done.remove(&key(p));
            }
        }
        self.pending.extend(new);
    }

    /// The record just taken from the front was warmed (or is too late to
    /// be): asks for the names of the next ones to be looked up, so that
    /// in a cold tree the disk serves their lookups together.
    fn warm_ahead(&mut self, roots: &warm::Roots, dir: usize) {
        self.warmed = self.warmed.saturating_sub(1);
        while self.warmed < WARM_AHEAD.min(self.pending.len()) {
            for p in touched(&self.pending[self.warmed].1) {
                warm::ahead(roots, dir, p.clone(), Vec::new());
            }
            self.warmed += 1;
        }
    }
}

/// A path's key in [`DirPass::done`]: 128 bits of its hash, which two
/// paths of any tree share with a chance far below a disk's silent errors.
fn key(p: &Path) -> u128 {
    use std::os::unix::ffi::OsStrExt;
    let h = blake3::hash(p.as_os_str().as_bytes());
    u128::from_le_bytes(h.as_bytes()[..16].try_into().expect("16 bytes"))
}

/// Ships every namespace record of every directory, the ones the
/// application logs meanwhile included, and marks the link ready;
/// `sent_upto` says which records may have reached the peer before.
pub fn ship(
    rep: &Replicator,
    conn: u64,
    sent_upto: &[u64],
    roots: &warm::Roots,
) -> Result<Plan, NamesError> {
    let mut dirs: Vec<DirPass> = Vec::new();
    let (mut files_total, mut bytes_total, mut names_total) = (0, 0, 0);
    for (d, sent) in rep.dirs().iter().zip(sent_upto) {
        let mut pass = DirPass::default();
        let ns = d.log.ns_since(0)?;
        let mut marks = Vec::new();
        for p in crate::replication::replay::uncertain_moves(&ns, *sent) {
            mark_whole(d, &p, &rep.module, &mut marks)?;
        }
        d.log.mark_many(&marks)?;
        files_total += d.log.dirty_files()?.len() as u64;
        bytes_total += d.log.dirty_bytes()?;
        names_total += ns.len() as u64;
        pass.absorb(ns);
        dirs.push(pass);
    }
    *rep.progress() = crate::replication::status::ResyncProgress {
        running: true,
        files_total,
        bytes_total,
        started_unix_ms: now_ms(),
        ..Default::default()
    };
    tracing::info!(
        "{}: resync starts: {names_total} name records, {files_total} files, {bytes_total} bytes",
        rep.module
    );
    let started = Instant::now();
    let mut caught_up: Option<Instant> = None;
    loop {
        rep.pace_hold(conn);
        // What the peer may have in hand: as in the contents pass.
        let most = (rep.names_window() / RESYNC_NAME_COST).max(1);
        let unbounded = caught_up.is_some_and(|at| at.elapsed() > (at - started).max(CHASE));
        let longest = if rep.pace_busy() { ROUND_BUSY } else { ROUND };
        let done = rep
            .exclusive(conn, |x| {
                round(
                    x,
                    rep,
                    roots,
                    &mut dirs,
                    (!unbounded).then_some((most, longest)),
                )
            })
            .ok_or(NamesError::Link)??;
        let records = match done {
            Round::More { records } => records,
            Round::Done(plan) => {
                let mut p = rep.progress();
                p.files_total = plan.files.iter().map(|f| f.len() as u64).sum();
                p.bytes_total = rep
                    .dirs()
                    .iter()
                    .map(|d| d.log.dirty_bytes())
                    .sum::<Result<u64, _>>()?;
                tracing::info!(
                    "{}: resync: {names_total} name records shipped in {} ms; contents follow",
                    rep.module,
                    started.elapsed().as_millis()
                );
                return Ok(plan);
            }
        };
        // Outside the order lock: the application's changes go on.
        rep.pace_take_names(records);
        if caught_up.is_none() && dirs.iter().all(|d| d.pending.is_empty()) {
            caught_up = Some(Instant::now());
        }
        if !rep.settle(conn) {
            return Err(NamesError::Link);
        }
    }
}

/// What a round left.
enum Round {
    /// Something, after shipping this many records.
    More { records: u64 },
    /// Nothing: the plan, with the link made ready.
    Done(Plan),
}

/// One round under the order lock: the records logged since the last
/// round are read, then records (and, once none are left, parents) are
/// shipped until `most` of them went or the round's time passed (`None`: no
/// limit).
fn round(
    x: &mut Exclusive<'_>,
    rep: &Replicator,
    roots: &warm::Roots,
    dirs: &mut [DirPass],
    most: Option<(u64, Duration)>,
) -> Result<Round, NamesError> {
    let t0 = Instant::now();
    for (d, pass) in dirs.iter_mut().enumerate() {
        let new = rep.dirs()[d].log.ns_since(pass.read)?;
        pass.absorb(new);
    }
    let (mut shipped, mut records) = (0u64, 0u64);
    let mut over = |n: u64| {
        shipped += n;
        most.is_some_and(|(m, longest)| shipped >= m || t0.elapsed() >= longest)
    };
    for (d, pass) in dirs.iter_mut().enumerate() {
        let dir = d as u32;
        while let Some((seq, change)) = pass.pending.pop_front() {
            pass.warm_ahead(roots, d);
            ship_record(x, rep, dir, pass, seq, &change)?;
            rep.progress().names += 1;
            records += 1;
            if over(1) {
                return Ok(Round::More { records });
            }
        }
    }
    for (d, pass) in dirs.iter_mut().enumerate() {
        while let Some(p) = pass.parents.pop_first() {
            ship_state(x, d as u32, &p, false)?;
            if over(1) {
                return Ok(Round::More { records });
            }
        }
    }
    // Nothing is left, and nothing can be logged before the link is ready.
    let mut files = Vec::new();
    for d in rep.dirs() {
        files.push(d.log.dirty_files()?);
    }
    x.ready();
    Ok(Round::Done(Plan {
        files,
        ns_upto: dirs.iter().map(|d| d.upto).collect(),
    }))
}

/// Ships record `seq`: a rename or link replayed, and every name it
/// touched made equal to ours.
fn ship_record(
    x: &mut Exclusive<'_>,
    rep: &Replicator,
    dir: u32,
    pass: &mut DirPass,
    seq: u64,
    change: &NsChange,
) -> Result<(), NamesError> {
    pass.upto = seq;
    let literal = match change {
        NsChange::Rename { from, to, exchange } => Some(WireMutation::Rename {
            from: raw(from),
            to: raw(to),
            flags: if *exchange { libc::RENAME_EXCHANGE } else { 0 },
        }),
        NsChange::Link { existing, path } => Some(WireMutation::Link {
            existing: raw(existing),
            path: raw(path),
        }),
        _ => None,
    };
    if let Some(m) = literal {
        // A replayed rename changes what names mean: reconcile again.
        pass.done.clear();
        if !x.ship(dir, m) {
            return Err(NamesError::Link);
        }
    }
    for p in touched(change) {
        if let Some(parent) = p.parent() {
            pass.parents.insert(parent.to_path_buf());
        }
        if rep.is_excluded(dir, p) || pass.moved_at.get(p).is_some_and(|at| *at > seq) {
            continue;
        }
        if pass.done.insert(key(p)) {
            ship_state(x, dir, p, true)?;
        }
    }
    Ok(())
}

/// Every byte of the file at `p` (of every file below it, for a directory),
/// to be marked dirty: a replayed rename may have put another file there on
/// the peer (see [`crate::replication::replay`]).
fn mark_whole(
    d: &Dir,
    p: &Path,
    module: &str,
    marks: &mut Vec<(FileId, u64, u64)>,
) -> Result<(), NamesError> {
    let root = d.root.as_fd();
    let Ok(node) = entry::open_node(root, p) else {
        return Ok(());
    };
    let st = sys::stat_fd(node.as_fd()).map_err(|e| {
        let e = std::io::Error::from_raw_os_error(e.code());
        NamesError::Read(format!("reading {}: {e}", p.display()))
    })?;
    match st.st_mode & libc::S_IFMT {
        libc::S_IFREG if st.st_size > 0 => {
            marks.push((d.log.ensure(p)?, 0, st.st_size as u64));
        }
        libc::S_IFDIR => {
            tracing::warn!(
                "{module}: resync: the directory {} may hold other entries on the peer \
                 (a rename replayed after its source name was reused); its files travel \
                 whole; `tandem verify --repair` removes what only the peer has",
                p.display()
            );
            let names = crate::replication::manifest::list_dir(root, p)
                .map_err(|e| NamesError::Read(format!("listing {}: {e}", p.display())))?;
            for (name, _) in names {
                use std::os::unix::ffi::OsStrExt;
                mark_whole(
                    d,
                    &p.join(std::ffi::OsStr::from_bytes(&name)),
                    module,
                    marks,
                )?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Ships the current state of `p`; a name that is gone is shipped as
/// absent only if `absent_too`.
fn ship_state(
    x: &mut Exclusive<'_>,
    dir: u32,
    p: &Path,
    absent_too: bool,
) -> Result<(), NamesError> {
    let entry = entry::read(x.dir(dir).root.as_fd(), p).map_err(|e| {
        NamesError::Read(format!(
            "reading {}: {}",
            p.display(),
            std::io::Error::from_raw_os_error(e.code())
        ))
    })?;
    if entry.is_none() && !absent_too {
        return Ok(());
    }
    if x.ship(
        dir,
        WireMutation::Reconcile {
            path: raw(p),
            entry,
        },
    ) {
        Ok(())
    } else {
        Err(NamesError::Link)
    }
}
