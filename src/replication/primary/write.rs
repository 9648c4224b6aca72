//! The write path that the mount calls: record, apply locally, send, and
//! wait as the ack mode asks; and the modification times owed to the peer.
//!
//! The local apply runs before the send: a call that fails locally is never
//! replicated, so the two trees cannot diverge on an error only one side saw.
//! Dirty marks are cleared only once the secondary reports them durable
//! (see `clears.rs`).

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::clears::Clear;
use super::exclude::Scope;
use super::stream::Order;
use super::times::{stamp, stamps};
use super::{Replicator, WireMutation};
use crate::fs::{Errno, LocalApply, Mutation};

impl Replicator {
    pub(super) fn submit(
        &self,
        dir: u32,
        m: &Mutation<'_>,
        local: LocalApply<'_>,
    ) -> Result<(), Errno> {
        let unnamed = matches!(
            m,
            Mutation::Write { path: None, .. }
                | Mutation::Fallocate { path: None, .. }
                | Mutation::SetAttr { path: None, .. }
                | Mutation::SetXattr { path: None, .. }
                | Mutation::RemoveXattr { path: None, .. }
                | Mutation::Fsync { path: None, .. }
        );
        if self.peer.fenced() {
            return Err(Errno::EIO);
        }
        match self.scope(dir, m) {
            Scope::Replicated => {}
            scope => return self.submit_scoped(dir, m, scope, local),
        }
        let mut o = self.order.lock();
        let owes: Option<&PathBuf> = match m {
            Mutation::Write {
                path: Some(p),
                sync: false,
                ..
            }
            | Mutation::Fallocate { path: Some(p), .. } => Some(p),
            _ => None,
        };
        // Owed times go first wherever the peer sets times at once: before
        // any other kind of change, which may move or remove the file, and
        // before a full fsync, which makes them durable.
        if owes.is_none() && !matches!(m, Mutation::Fsync { datasync: true, .. }) {
            self.settle_owed_locked(&mut o);
        }
        if let Mutation::Fsync { .. } = m {
            // Changes nothing: the peer can start its fsync while ours runs.
            let sent = if o.streaming() && !unnamed {
                self.send_split(&mut o, dir, false, WireMutation::split(m), Vec::new())
            } else {
                None
            };
            let linked = o.link.is_some();
            drop(o);
            local()?;
            return match sent {
                Some((conn, seq)) => self.wait(conn, seq, self.need(true)),
                None => self.durable_unlinked(linked, unnamed, true),
            };
        }
        let records = self.records();
        let marked = records.mark(dir, m, &mut o).and_then(|id| {
            if let Some(p) = owes.filter(|_| o.streaming()) {
                o.owed.owe(&*self.dirs[dir as usize].log, dir, p)?;
            }
            Ok(id)
        });
        let written = match marked {
            Ok(id) => id,
            Err(e) => {
                // Without the record a later resync could miss this change: refuse it.
                drop(o);
                self.note_error(format!("change log: {e}"));
                return Err(Errno::EIO);
            }
        };
        local()?;
        if let Err(e) = records.after(dir, m, &mut o) {
            self.note_error(format!("change log: {e}"));
        }
        let sync = matches!(m, Mutation::Write { sync: true, .. });
        if !o.streaming() || unnamed {
            let linked = o.link.is_some();
            drop(o);
            return self.durable_unlinked(linked, unnamed, sync);
        }
        let times = stamps(self.dirs[dir as usize].root.as_fd(), m);
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
        let sent = self.send_split(&mut o, dir, false, WireMutation::split(m), times);
        drop(o);
        match sent {
            Some((conn, seq)) => self.wait(conn, seq, self.need(sync)),
            None => Ok(()),
        }
    }

    /// Sends the owed modification times (files gone meanwhile are skipped:
    /// their removal travels on its own).
    pub(super) fn settle_owed_locked(&self, o: &mut Order) {
        for dir in 0..self.dirs.len() {
            let Some((paths, upto)) = o.owed.take(dir) else {
                continue;
            };
            let root = self.dirs[dir].root.as_fd();
            let times = paths.iter().filter_map(|p| stamp(root, p)).collect();
            if self
                .send_locked(o, dir as u32, false, WireMutation::Times, times)
                .is_some()
                && o.resync_done.is_some()
            {
                // Forgotten once the peer has them durably.
                o.clears.add(Clear::NsUpto(dir as u32, upto));
            }
        }
    }

    /// Sends the owed modification times: a written file was closed, or
    /// time passed (see [`keep_times`](Self::keep_times)).
    pub fn settle_owed(&self) {
        let mut o = self.order.lock();
        if o.streaming() && !self.peer.fenced() {
            self.settle_owed_locked(&mut o);
        }
    }

    /// While connection `conn` lasts (and until `stop`), sends owed times
    /// every `every`, for files written and then left open.
    pub fn keep_times(self: &Arc<Self>, conn: u64, every: Duration, stop: &crate::stop::Stop) {
        let weak = Arc::downgrade(self);
        let stop2 = stop.clone();
        let spawned = stop.thread(format!("times-{}", self.module), move || {
            while !stop2.sleep(every) {
                let Some(rep) = weak.upgrade() else { return };
                if !rep.order.lock().linked(conn) {
                    return;
                }
                rep.settle_owed();
            }
        });
        if let Err(e) = spawned {
            self.note_error(format!("cannot start the thread that sends times: {e}"));
        }
    }
}
