//! The write path that the mount calls: record, apply locally, send, and
//! wait as the ack mode asks; and the modification times owed to the peer.
//!
//! The local apply runs before the send: a call that fails locally is never
//! replicated, so the two trees cannot diverge on an error only one side saw.
//! Dirty marks are cleared only once the secondary reports them durable
//! (see `clears.rs`).

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::Instant;

use super::clears::Clear;
use super::exclude::{Excluding, Scope};
use super::order::Order;
use super::stream::Stream;
use super::times::{stamp, stamps};
use crate::fs::{Errno, LocalApply, Mutation};
use crate::replication::snapshot::effects;
use crate::replication::wire::WireMutation;

/// One mutation of directory `dir`: recorded, applied by `local`, sent,
/// and answered as the ack mode asks. While this node holds a snapshot,
/// what the mutation destroys is kept first.
pub fn submit(
    x: &Excluding<'_>,
    dir: u32,
    m: &Mutation<'_>,
    local: LocalApply<'_>,
) -> Result<(), Errno> {
    let d = &x.stream.dirs[dir as usize];
    match &d.snaps {
        Some(snaps) if !matches!(m, Mutation::Fsync { .. }) => {
            let root = d.root.as_fd();
            let mut kept = || snaps.keeping(dir, root, || effects::of_mutation(m), || local());
            submit_kept(x, dir, m, &mut kept)
        }
        _ => submit_kept(x, dir, m, local),
    }
}

fn submit_kept(
    x: &Excluding<'_>,
    dir: u32,
    m: &Mutation<'_>,
    local: LocalApply<'_>,
) -> Result<(), Errno> {
    let s = x.stream;
    let unnamed = matches!(
        m,
        Mutation::Write { path: None, .. }
            | Mutation::Fallocate { path: None, .. }
            | Mutation::SetAttr { path: None, .. }
            | Mutation::SetXattr { path: None, .. }
            | Mutation::RemoveXattr { path: None, .. }
            | Mutation::Fsync { path: None, .. }
    );
    if s.peer.fenced() {
        return Err(Errno::EIO);
    }
    match x.scope(dir, m) {
        Scope::Replicated => {}
        scope => return x.submit(dir, m, scope, local),
    }
    let mut o = s.lock();
    let owes: Option<&PathBuf> = match m {
        Mutation::Write {
            path: Some(p),
            sync: false,
            ..
        }
        | Mutation::Fallocate { path: Some(p), .. } => Some(p),
        _ => None,
    };
    // Owed times go first wherever the peer sets times at once: before any
    // other kind of change, which may move or remove the file, and before a
    // full fsync, which makes them durable.
    if owes.is_none() && !matches!(m, Mutation::Fsync { datasync: true, .. }) {
        settle_owed_locked(s, &mut o);
    }
    if let Mutation::Fsync { .. } = m {
        // Changes nothing: the peer can start its fsync while ours runs.
        let sent = if o.streaming() && !unnamed {
            s.send_split(&mut o, dir, false, WireMutation::split(m), Vec::new())
        } else {
            None
        };
        let linked = o.link.is_some();
        drop(o);
        local()?;
        return match sent {
            Some((conn, seq)) => s.wait(conn, seq, s.need(true)),
            None => s.durable_unlinked(linked, unnamed, true),
        };
    }
    let records = s.records();
    let marked = records.mark(dir, m, &mut o).and_then(|id| {
        if let Some(p) = owes.filter(|_| o.streaming()) {
            o.owed.owe(&*s.dirs[dir as usize].log, dir, p)?;
            s.owing.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(id)
    });
    let written = match marked {
        Ok(id) => id,
        Err(e) => {
            // Without the record a later resync could miss this change: refuse it.
            drop(o);
            s.note_error(format!("change log: {e}"));
            return Err(Errno::EIO);
        }
    };
    local()?;
    if let Err(e) = records.after(dir, m, &mut o) {
        s.note_error(format!("change log: {e}"));
    }
    let sync = matches!(m, Mutation::Write { sync: true, .. });
    if !o.streaming() || unnamed {
        let linked = o.link.is_some();
        drop(o);
        return s.durable_unlinked(linked, unnamed, sync);
    }
    let times = stamps(s.dirs[dir as usize].root.as_fd(), m);
    if let Some(id) = written {
        let (off, len) = match m {
            Mutation::Write { offset, data, .. } => (*offset, data.len() as u64),
            Mutation::Fallocate { offset, length, .. } => (*offset, *length),
            _ => unreachable!("only writes and fallocates carry a file id"),
        };
        // Pending before the send: if the send finds the link gone, the
        // narrowing of the hot extents must keep this write marked.
        let seq = o.next_seq;
        o.activity.sent(dir, id, off, len, seq, Instant::now());
    }
    let sent = s.send_split(&mut o, dir, false, WireMutation::split(m), times);
    drop(o);
    match sent {
        Some((conn, seq)) => s.wait(conn, seq, s.need(sync)),
        None => Ok(()),
    }
}

/// Sends the owed modification times (files gone meanwhile are skipped:
/// their removal travels on its own).
pub fn settle_owed_locked(s: &Stream, o: &mut Order) {
    // Under the order lock, as every owing: none is owed once the loop ends.
    s.owing.store(false, std::sync::atomic::Ordering::Relaxed);
    for dir in 0..s.dirs.len() {
        let Some((paths, upto)) = o.owed.take(dir) else {
            continue;
        };
        let root = s.dirs[dir].root.as_fd();
        let times = paths.iter().filter_map(|p| stamp(root, p)).collect();
        if s.send(o, dir as u32, false, WireMutation::Times, times)
            .is_some()
            && o.resync_done.is_some()
        {
            // Forgotten once the peer has them durably.
            o.clears.add(Clear::NsUpto(dir as u32, upto));
        }
    }
}

/// Sends the owed modification times: a written file was closed, or time
/// passed (see `Replicator::keep_times`).
pub fn settle_owed(s: &Stream) {
    let mut o = s.lock();
    if o.streaming() && !s.peer.fenced() {
        settle_owed_locked(s, &mut o);
    }
}
