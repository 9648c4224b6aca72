//! The primary's half of replication: every mutation the mount sees is
//! recorded in the change log, applied locally, sent to the secondary on one
//! ordered stream, and answered when the module's ack mode holds.
//!
//! [`Replicator`] is the façade that the mount, the link and the resync
//! call; the parts behind it have one job each:
//! - `stream.rs`: the link slot, sending, waiting for the peer; `order.rs`:
//!   the state behind its one order lock; `acks.rs`: the acknowledgements;
//! - `peer.rs`: what losing the peer means, decided in one place;
//! - `records.rs`, `clears.rs`, `times.rs`: the change-log records of a
//!   mutation, what may be forgotten once durable, times owed to the peer;
//! - `write.rs`: the write path; `exclude.rs`: the same through `exclude`;
//! - `shipping.rs`: the resync's entry points; `report.rs`: the status.
//!
//! Lock order: the order lock, then the acknowledgement tracker's lock;
//! never the other way round. Waiting for the peer happens outside the
//! order lock, so many application threads have mutations in flight.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::metrics::histogram::Histogram;

use crate::config::{Ack, Exclude};
use crate::fs::{Errno, LocalApply, Mutation, MutationSink};

mod acks;
mod clears;
mod exclude;
mod order;
mod outlet;
mod pace;
mod peer;
mod records;
mod report;
mod shipping;
mod stream;
mod times;
mod write;

#[cfg(test)]
mod tests;

pub use outlet::{LinkError, Outbound, Outlet};
pub use peer::AloneCheck;
pub use shipping::{Exclusive, Item, ResyncClear};
pub use stream::RESYNC_NAME_COST;

use exclude::Excluding;
use stream::Stream;

use super::dir::Dir;
use super::status::{ReplicationStatus, ResyncProgress, Tally, VerifyState};
use super::wire::Message;

/// What a replicator is built from, once: nothing is set afterwards.
pub struct Settings {
    pub module: String,
    pub ack: Ack,
    pub peer_timeout: Duration,
    pub async_max_lag: u64,
    /// Bytes a second a resync may ship at most (0: no cap).
    pub resync_max_rate: u64,
    /// Bytes a second a resync keeps while the application writes.
    pub resync_min_rate: u64,
    /// Where an operator's pause of the resync is kept across restarts.
    pub pause_file: Option<std::path::PathBuf>,
    pub dirs: Vec<Dir>,
    pub exclude: Exclude,
    /// With a quorum: whether this node may go on without its peer (it
    /// holds the lease, an address answers). While it may not, a call whose
    /// peer stopped acknowledging waits for the peer or for the fence.
    pub alone_ok: Option<AloneCheck>,
    /// Where the waits for the peer's acknowledgement are counted.
    pub latency: Option<Histogram>,
    /// Said before a call sleeps waiting for the peer (the mount's gate
    /// lets another worker read requests meanwhile).
    pub blocking: fn(),
}

pub struct Replicator {
    pub module: String,
    pub ack: Ack,
    pub peer_timeout: Duration,
    stream: Stream,
    exclude: Exclude,
    /// What the stream cost (flushes, acks, waits for the peer).
    pub tally: Arc<Tally>,
    resync: Mutex<ResyncProgress>,
    pub verify: Mutex<VerifyState>,
    /// What the link last agreed with the peer (protocol, its release).
    pub agreed: Mutex<Option<crate::versions::Agreed>>,
    /// How fast a resync may ship.
    pub pace: pace::Pace,
    /// The next Hello says that the stream goes on (a new daemon that took
    /// over after the peer confirmed every change): told once.
    pub resumes: std::sync::atomic::AtomicBool,
}

impl Replicator {
    pub fn new(mut s: Settings) -> Arc<Self> {
        let tally = Arc::<Tally>::default();
        let exclude = std::mem::take(&mut s.exclude);
        let pace = pace::Pace::new(s.resync_max_rate, s.resync_min_rate, s.pause_file.take());
        Arc::new(Self {
            module: s.module.clone(),
            ack: s.ack,
            peer_timeout: s.peer_timeout,
            stream: Stream::new(s, tally.clone()),
            exclude,
            tally,
            resync: Mutex::new(ResyncProgress::default()),
            verify: Mutex::new(Default::default()),
            agreed: Mutex::new(None),
            pace,
            resumes: Default::default(),
        })
    }

    /// The module's directories.
    pub fn dirs(&self) -> &[Dir] {
        &self.stream.dirs
    }

    /// The sink for directory `dir` of the module.
    pub fn sink(self: &Arc<Self>, dir: u32) -> Arc<ReplicatingSink> {
        Arc::new(ReplicatingSink {
            rep: self.clone(),
            dir,
        })
    }

    fn excluding(&self) -> Excluding<'_> {
        Excluding {
            stream: &self.stream,
            exclude: &self.exclude,
        }
    }

    /// The module's exclusions, if it has any.
    pub fn exclusions(&self) -> Option<&Exclude> {
        self.excluding().exclusions()
    }

    /// Whether `p`, as it is in directory `dir` now, is excluded.
    pub fn is_excluded(&self, dir: u32, p: &Path) -> bool {
        self.excluding().is_excluded(dir, p)
    }

    /// A connection is up: mutations from now on travel on `tx`. Returns the
    /// connection's id.
    pub fn attach(&self, tx: Outbound) -> u64 {
        self.stream.attach(tx)
    }

    /// The connection `conn` is gone (or must go): from now on the primary
    /// is alone, and whatever was not durable on the peer stays marked.
    pub fn detach(&self, conn: u64, why: &str) {
        self.unlink(conn, why, true);
    }

    /// Closes the link on purpose (this node stops serving after the peer
    /// got everything): the peer's copy stays as current as this one.
    pub fn close_link(&self, why: &str) {
        let conn = self.stream.lock().conn();
        if let Some(conn) = conn {
            self.unlink(conn, why, false);
        }
    }

    /// Drops the current link so the next one resynchronises what the
    /// change log holds now.
    pub fn force_resync(&self, why: &str) {
        let conn = self.stream.lock().conn();
        if let Some(conn) = conn {
            self.detach(conn, why);
        }
    }

    /// Fences the primary: whatever waits for the peer now fails with EIO,
    /// and so does every later change. Nothing is acknowledged without the
    /// peer from here on; the link closes without a new generation (this node
    /// acknowledged nothing alone).
    pub fn fence(&self, why: &str) {
        self.stream.peer.fence();
        self.close_link(why);
        self.stream.acks.wake();
    }

    fn unlink(&self, conn: u64, why: &str, failed: bool) {
        self.stream.unlink(conn, why, failed);
        self.resync.lock().running = false;
    }

    pub fn is_attached(&self, conn: u64) -> bool {
        self.stream.lock().linked(conn)
    }

    /// [`is_attached`](Self::is_attached) without the order lock, which a
    /// change may hold for a while.
    pub fn still_linked(&self, conn: u64) -> bool {
        self.stream.acks.still_linked(conn)
    }

    /// An acknowledgement from the peer on connection `conn`; false once
    /// that connection is no longer the link.
    pub fn on_ack(&self, conn: u64, received: u64, applied: u64, durable: u64) -> bool {
        self.stream.acks.record(conn, received, applied, durable) && {
            self.stream.clear_durable(conn, durable);
            true
        }
    }

    /// Whether the change log has nothing waiting to be cleared (looked at
    /// without waiting: false while a change holds the order lock).
    pub fn nothing_to_clear(&self) -> bool {
        self.stream.nothing_to_clear()
    }

    /// Clears the change log of what the peer reported durable on `conn`
    /// (for acknowledgements recorded without clearing).
    pub fn clear_acked(&self, conn: u64) {
        self.stream.clear_durable(conn, self.stream.acks.durable());
    }

    /// Takes what the peer sent on connection `conn` and clears the change
    /// log; why the link ends, if it does.
    pub fn take_replies(&self, conn: u64, msgs: Vec<Message>) -> Result<(), LinkError> {
        self.stream.acks.take(conn, msgs)?;
        self.clear_acked(conn);
        Ok(())
    }

    /// Sends the owed modification times: a written file was closed, or
    /// time passed.
    pub fn settle_owed(&self) {
        write::settle_owed(&self.stream);
    }

    /// While connection `conn` lasts (and until `stop`), sends owed times
    /// every `every`, for files written and then left open. A task, not a
    /// thread: an idle module costs no thread of its own for it; a round with
    /// times owed runs on a shared thread (`steps`), as it takes the order lock.
    pub fn keep_times(self: &Arc<Self>, conn: u64, every: Duration, stop: &crate::stop::Stop) {
        let weak = Arc::downgrade(self);
        stop.spawn(format!("times-{}", self.module), async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(rep) = weak.upgrade() else { return };
                if !rep.still_linked(conn) {
                    return;
                }
                if !rep.stream.owing.load(std::sync::atomic::Ordering::Relaxed) {
                    continue;
                }
                if crate::replication::steps::run(move || rep.settle_owed())
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
    }

    /// Ships one resync item built under the order lock; false once the
    /// link is gone.
    pub fn ship(&self, conn: u64, dir: u32, build: impl FnOnce(&Dir, u64) -> Option<Item>) -> bool {
        match shipping::ship(&self.stream, conn, dir, self.resync_window(), build) {
            Some(waited) => {
                self.pace.stalled(waited);
                true
            }
            None => false,
        }
    }

    /// Waits until the resync on `conn` may ship its next piece (see
    /// [`pace`]); outside the order lock, so live changes go on meanwhile.
    pub fn pace_hold(&self, conn: u64) {
        self.pace.hold(|| self.live(), || self.still_linked(conn));
    }

    /// Whether the application writes now: the resync yields.
    pub fn pace_busy(&self) -> bool {
        self.pace.busy(self.live())
    }

    /// The largest piece the resync may ship next (`most` when the
    /// application is not writing).
    pub fn pace_piece(&self, most: u64) -> u64 {
        self.pace.piece(self.live(), most)
    }

    /// The resync shipped `n` bytes: waits as long as its rate says.
    pub fn pace_take(&self, n: u64) {
        self.pace.take(n, self.live());
    }

    /// The names pass shipped `n` name changes: waits as long as the
    /// minimum says while the application writes.
    pub fn pace_take_names(&self, n: u64) {
        self.pace.take_names(n, RESYNC_NAME_COST, self.live());
    }

    /// When the application last changed something: it is writing.
    fn live(&self) -> Option<std::time::Instant> {
        self.stream.live.get()
    }

    /// Whether connection `conn` is still the peer's link.
    pub fn linked(&self, conn: u64) -> bool {
        self.stream.lock().linked(conn)
    }

    /// Runs `f` with the stream to itself: no live mutation is applied or sent
    /// meanwhile. The resync ships the namespace this way, a round at a time,
    /// then marks the link ready for live mutations. `None` if `conn` is gone.
    /// What `f` sent starts out at once, as far as the socket takes it
    /// without waiting: after a quiet spell the link's backstop looks only
    /// every 100 ms, while the peer could be making the names.
    pub fn exclusive<R>(&self, conn: u64, f: impl FnOnce(&mut Exclusive<'_>) -> R) -> Option<R> {
        let o = self.stream.lock();
        if !o.linked(conn) {
            return None;
        }
        let mut x = Exclusive {
            stream: &self.stream,
            o,
        };
        let r = f(&mut x);
        let outlet = x.o.link.as_ref().map(|(_, tx)| tx.clone());
        drop(x);
        if let Some(tx) = outlet {
            tx.nudge();
        }
        Some(r)
    }

    /// How much the resync may have sent that the peer has not applied.
    pub fn resync_window(&self) -> u64 {
        self.pace.window(self.live(), stream::RESYNC_WINDOW)
    }

    /// How much the names pass may have sent that the peer has not applied
    /// (a name change counts as [`RESYNC_NAME_COST`]).
    pub fn names_window(&self) -> u64 {
        (self.pace.names_ahead(self.live()) * RESYNC_NAME_COST).min(self.resync_window())
    }

    /// Waits, outside the order lock, until what was sent on `conn` is
    /// within the names pass's window, as long as the peer works through
    /// it; false once the link is gone. For the names pass: no application
    /// change waits behind what it sent.
    pub fn settle(&self, conn: u64) -> bool {
        shipping::settle(&self.stream, conn, self.names_window())
    }

    /// The resync has shipped everything (see [`shipping::finish`]).
    pub fn finish_resync(
        &self,
        conn: u64,
        ns_upto: &[u64],
        generation: crate::changelog::Generation,
    ) -> bool {
        shipping::finish(&self.stream, conn, ns_upto, generation)
    }

    pub fn progress(&self) -> parking_lot::MutexGuard<'_, ResyncProgress> {
        self.resync.lock()
    }

    /// Runs `f` between two changes of the stream, with the position of the
    /// last one: nothing is applied locally meanwhile.
    pub fn at_cut<R>(&self, f: impl FnOnce(u64) -> R) -> R {
        let o = self.stream.lock();
        f(o.next_seq.saturating_sub(1))
    }

    /// Takes a snapshot here and has the peer take its own at the same
    /// point of the stream: a consistent cut for a verify. Its name, or
    /// `None` where there can be none (no link, a peer without cuts).
    pub fn verify_cut(&self) -> Option<String> {
        use crate::replication::snapshot::{Kind, New};
        let snaps = self.stream.dirs.first()?.snaps.clone()?;
        let protocol = self.agreed.lock().as_ref()?.protocol;
        if protocol < crate::replication::wire::CUTS {
            return None;
        }
        let mut o = self.stream.lock();
        if !o.streaming() {
            return None;
        }
        // The peer sets the times this node has before the cut.
        write::settle_owed_locked(&self.stream, &mut o);
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let taken = snaps
            .create(New {
                name: Some(format!("verify-{at}")),
                kind: Kind::Verify,
                role: "primary".into(),
                position: Some(o.next_seq.saturating_sub(1)),
                generation: None,
                consistent: true,
            })
            .ok()?;
        let sent = self.stream.send(
            &mut o,
            0,
            false,
            crate::replication::wire::WireMutation::Cut {
                name: taken.name.clone(),
            },
            Vec::new(),
        );
        drop(o);
        if sent.is_none() {
            let _ = snaps.delete(&taken.name);
            return None;
        }
        Some(taken.name)
    }

    /// Drops a verify's snapshot of this node.
    pub fn drop_cut(&self, name: &str) {
        if let Some(snaps) = self.stream.dirs.first().and_then(|d| d.snaps.clone())
            && let Err(e) = snaps.delete(name)
        {
            tracing::warn!("{}: verify snapshot {name}: {e}", self.module);
        }
    }

    pub fn status(&self) -> ReplicationStatus {
        let mut resync = self.resync.lock().clone();
        resync.max_rate = self.pace.rate();
        resync.min_rate = self.pace.min_rate();
        resync.paused = self.pace.paused();
        resync.paused_since_unix_ms = self.pace.paused_since();
        if resync.running {
            resync.state = self.pace.state(self.live()).as_str().into();
            resync.rate = self.pace.measured();
            let left = resync.bytes_total.saturating_sub(resync.bytes_done);
            resync.eta_seconds =
                (resync.rate > 0 && !resync.paused).then(|| left.div_ceil(resync.rate));
        }
        let verify = self.verify.lock().clone();
        let agreed = self.agreed.lock().clone().unwrap_or_default();
        ReplicationStatus {
            protocol: (agreed.protocol > 0).then_some(agreed.protocol),
            peer_version: agreed.peer_software,
            ..report::status(&self.stream, resync, verify, &self.tally)
        }
    }
}

/// The mount's sink for one directory of a replicated module.
pub struct ReplicatingSink {
    rep: Arc<Replicator>,
    dir: u32,
}

impl MutationSink for ReplicatingSink {
    fn apply(&self, m: &Mutation<'_>, local: LocalApply<'_>) -> Result<(), Errno> {
        let _change = self.rep.stream.live.begin();
        write::submit(&self.rep.excluding(), self.dir, m, local)
    }

    fn closed(&self) {
        self.rep.settle_owed();
    }
}
