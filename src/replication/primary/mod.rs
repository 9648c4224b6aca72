//! The primary's half of replication: every mutation the mount sees is
//! recorded in the change log, applied locally, sent to the secondary on one
//! ordered stream, and answered when the module's ack mode holds.
//!
//! The parts, each with one job:
//! - `stream.rs`: the stream's state behind the one *order lock*, held from
//!   marking to sending, so the order on the wire is the order of the local
//!   applies and resync reads of the local tree are consistent with it;
//! - `records.rs`: the change-log records of a mutation;
//! - `clears.rs`: what the change log may forget once the peer made it
//!   durable (pure bookkeeping);
//! - `times.rs`: modification times owed to the peer;
//! - `acks.rs`: the peer's acknowledgements and waiting for them;
//! - `peer.rs`: what losing the peer means, decided in one place;
//! - `exclude.rs`: the module's `exclude` patterns on the write path;
//! - `write.rs`: the write path that the mount calls;
//! - this file: building the replicator, the link's events, the resync's
//!   entry points, the status.
//!
//! Lock order: the order lock, then the acknowledgement tracker's lock;
//! never the other way round. Waiting for the peer happens outside the
//! order lock, so many application threads have mutations in flight.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prometheus_client::metrics::histogram::Histogram;

use crate::changelog::FileId;
use crate::config::{Ack, Exclude};
use crate::fs::{Errno, LocalApply, Mutation, MutationSink};

mod acks;
mod clears;
mod exclude;
mod outlet;
mod peer;
mod records;
mod stream;
mod times;
mod write;

#[cfg(test)]
mod tests;

pub use outlet::{LinkError, Outbound, Outlet};
pub use peer::AloneCheck;

use acks::{AckTracker, Need, Waited};
use clears::Clear;
use peer::{OnTimeout, PeerLoss};
use records::Records;
use stream::Order;

use super::activity::EXTENT;
use super::dir::Dir;
use super::status::{ReplicationStatus, ResyncProgress, Tally, VerifyState};
use super::wire::{Message, Outgoing, Time, WireMutation};

/// What a replicator is built from, once: nothing is set afterwards.
pub struct Settings {
    pub module: String,
    pub ack: Ack,
    pub peer_timeout: Duration,
    pub async_max_lag: u64,
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
    pub async_max_lag: u64,
    pub dirs: Vec<Dir>,
    exclude: Exclude,
    order: Mutex<Order>,
    acks: AckTracker,
    peer: PeerLoss,
    next_conn: AtomicU64,
    bytes_replicated: AtomicU64,
    /// What the stream cost (flushes, acks, waits for the peer).
    pub tally: Arc<Tally>,
    /// When the change log was last cleared of what the peer made durable.
    last_clear: Mutex<Instant>,
    resync: Mutex<ResyncProgress>,
    last_error: Mutex<Option<String>>,
    pub verify: Mutex<VerifyState>,
}

/// How far plain writes may run ahead of the peer in the `durable` and
/// `received` modes before they wait.
pub const WINDOW: u64 = 32 << 20;

/// How long a resync lets its shipped-but-unapplied bytes grow.
pub const RESYNC_WINDOW: u64 = 64 << 20;

/// How often, at most, acknowledgements clear the change log.
const CLEAR_EVERY: Duration = Duration::from_millis(10);

/// An instant before any clear was put off.
fn long_ago() -> Instant {
    let now = Instant::now();
    now.checked_sub(CLEAR_EVERY * 100).unwrap_or(now)
}

impl Replicator {
    pub fn new(s: Settings) -> Arc<Self> {
        let tally = Arc::<Tally>::default();
        Arc::new(Self {
            order: Mutex::new(Order::new(s.dirs.len())),
            acks: AckTracker::new(tally.clone(), s.latency, s.blocking),
            peer: PeerLoss::new(s.ack, s.alone_ok, s.blocking),
            module: s.module,
            ack: s.ack,
            peer_timeout: s.peer_timeout,
            async_max_lag: s.async_max_lag,
            dirs: s.dirs,
            exclude: s.exclude,
            next_conn: AtomicU64::new(1),
            bytes_replicated: AtomicU64::new(0),
            tally,
            last_clear: Mutex::new(long_ago()),
            resync: Mutex::new(ResyncProgress::default()),
            last_error: Mutex::new(None),
            verify: Mutex::new(Default::default()),
        })
    }

    /// The sink for directory `dir` of the module.
    pub fn sink(self: &Arc<Self>, dir: u32) -> Arc<ReplicatingSink> {
        Arc::new(ReplicatingSink {
            rep: self.clone(),
            dir,
        })
    }

    fn note_error(&self, what: String) {
        tracing::error!("{}: {what}", self.module);
        *self.last_error.lock() = Some(what);
    }

    fn records(&self) -> Records<'_> {
        Records {
            dirs: &self.dirs,
            module: &self.module,
        }
    }

    // ---- the link ----

    /// A connection is up: mutations from now on travel on `tx`. Returns the
    /// connection's id.
    pub fn attach(&self, tx: Outbound) -> u64 {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let mut o = self.order.lock();
        o.restart((conn, tx.clone()));
        let first = o.next_seq;
        // The first acknowledgement of a link clears at once.
        *self.last_clear.lock() = long_ago();
        self.peer.attached();
        self.acks.attach(conn, tx, first);
        conn
    }

    /// The connection `conn` is gone (or must go): from now on the primary
    /// is alone, and whatever was not durable on the peer stays marked.
    pub fn detach(&self, conn: u64, why: &str) {
        self.unlink(conn, why, true);
    }

    /// Closes the link on purpose (this node stops serving after the peer
    /// got everything): the peer's copy stays as current as this one.
    pub fn close_link(&self, why: &str) {
        let conn = self.order.lock().conn();
        if let Some(conn) = conn {
            self.unlink(conn, why, false);
        }
    }

    /// Drops the current link so the next one resynchronises what the
    /// change log holds now.
    pub fn force_resync(&self, why: &str) {
        let conn = self.order.lock().conn();
        if let Some(conn) = conn {
            self.detach(conn, why);
        }
    }

    /// Fences the primary: whatever waits for the peer now fails with EIO,
    /// and so does every later change. Nothing is acknowledged without the
    /// peer from here on; the link closes without a new generation (this node
    /// acknowledged nothing alone).
    pub fn fence(&self, why: &str) {
        self.peer.fence();
        self.close_link(why);
        self.acks.wake();
    }

    fn unlink(&self, conn: u64, why: &str, failed: bool) {
        let mut o = self.order.lock();
        self.unlink_locked(&mut o, conn, why, failed);
        drop(o);
        self.resync.lock().running = false;
    }

    /// [`unlink`](Self::unlink) under the order lock: however the link is
    /// found gone, the same bookkeeping follows; what it means for the
    /// generation is [`PeerLoss::unlinked`]'s to say.
    fn unlink_locked(&self, o: &mut Order, conn: u64, why: &str, failed: bool) {
        let durable = self.acks.durable();
        if o.linked(conn) {
            // What the peer holds durably is forgotten first, as the next
            // acknowledgement would have: the names recorded with it must
            // not outlive the byte ranges the narrowing below forgets.
            self.clear_durable_locked(o, durable);
            let current = o.current(durable);
            let verdict = self.peer.unlinked(failed, current);
            if verdict.new_generation {
                self.new_generation();
            }
            // Hot extents become exact again: only what the peer may lack
            // stays marked. Before the peer was current (a resync still
            // running), whole extents stay: they may hold older marks.
            if current {
                for (d, id, clears) in o.activity.narrow(durable) {
                    let log = &self.dirs[d as usize].log;
                    if let Err(e) = clears.into_iter().try_for_each(|r| log.clear(id, r)) {
                        self.note_error(format!("change log: {e}"));
                    }
                }
            } else {
                o.activity.forget();
            }
            for d in &self.dirs {
                // Changes logged from now on do not reach the peer.
                if let Err(e) = d.log.ns_sending(false) {
                    self.note_error(format!("change log: {e}"));
                }
            }
            if let Some((_, outlet)) = o.link.take() {
                outlet.close(verdict.graceful);
            }
            o.resync_done = None;
            o.ready = false;
            // Their records stay: the resync ships those files' times.
            o.owed.forget();
            o.clears.reset();
            tracing::warn!(
                "{}: peer out of date from seq {}: {why}",
                self.module,
                o.next_seq
            );
            *self.last_error.lock() = Some(why.to_string());
        }
        self.acks.detach(conn);
    }

    pub fn is_attached(&self, conn: u64) -> bool {
        self.order.lock().linked(conn)
    }

    /// [`is_attached`](Self::is_attached) without the order lock, which a
    /// change may hold for a while.
    pub fn still_linked(&self, conn: u64) -> bool {
        self.acks.still_linked(conn)
    }

    /// An acknowledgement from the peer on connection `conn`; false once
    /// that connection is no longer the link.
    pub fn on_ack(&self, conn: u64, received: u64, applied: u64, durable: u64) -> bool {
        self.acks.record(conn, received, applied, durable) && {
            self.clear_durable(conn, durable);
            true
        }
    }

    /// Clears the change log of what the peer reported durable on `conn`
    /// (for acknowledgements recorded without clearing).
    pub fn clear_acked(&self, conn: u64) {
        self.clear_durable(conn, self.acks.durable());
    }

    /// Takes what the peer sent on connection `conn` and clears the change
    /// log; why the link ends, if it does.
    pub fn take_replies(&self, conn: u64, msgs: Vec<Message>) -> Result<(), LinkError> {
        self.acks.take(conn, msgs)?;
        self.clear_acked(conn);
        Ok(())
    }

    /// Applies the clears the peer's durability earned. Batched: at most
    /// every [`CLEAR_EVERY`], and never by waiting for the order lock while
    /// a change holds it (the application's next call would wait behind the
    /// change log), unless clears have been put off for long. A later ack,
    /// or the peer's keepalive, clears what one skipped.
    fn clear_durable(&self, conn: u64, durable: u64) {
        let now = Instant::now();
        let last = *self.last_clear.lock();
        if now.duration_since(last) < CLEAR_EVERY {
            return;
        }
        let mut o = match self.order.try_lock() {
            Some(o) => o,
            None if now.duration_since(last) < CLEAR_EVERY * 20 => return,
            None => self.order.lock(),
        };
        *self.last_clear.lock() = now;
        if o.linked(conn) {
            self.clear_durable_locked(&mut o, durable);
        }
    }

    /// [`clear_durable`](Self::clear_durable) now, under the order lock.
    fn clear_durable_locked(&self, o: &mut Order, durable: u64) {
        let now = Instant::now();
        if o.current(durable) && now.duration_since(o.last_cool) >= Duration::from_millis(250) {
            o.last_cool = now;
            for (d, id, r) in o.activity.cool(durable, now) {
                if let Err(e) = self.dirs[d as usize].log.clear(id, r) {
                    self.note_error(format!("change log: {e}"));
                }
            }
        }
        let last_sent = o.next_seq - 1;
        let Order {
            clears, activity, ..
        } = o;
        for c in clears.due(durable, last_sent, |d, id, r| activity.hot_ranges(d, id, r)) {
            let r = match c {
                Clear::Range(d, id, r) => self.dirs[d as usize].log.clear(id, r),
                Clear::Size(d, id) => self.dirs[d as usize].log.clear_size(id),
                Clear::NsUpto(d, seq) => self.dirs[d as usize].log.clear_ns_upto(seq),
            };
            if let Err(e) = r {
                self.note_error(format!("change log: {e}"));
            }
        }
    }

    /// Sends one message under the order lock; `None` when alone.
    fn send_locked(
        &self,
        o: &mut Order,
        dir: u32,
        resync: bool,
        m: WireMutation,
        times: Vec<(Vec<u8>, Time)>,
    ) -> Option<(u64, u64)> {
        self.send_split(o, dir, resync, (m, &[]), times)
    }

    /// [`send_locked`](Self::send_locked) of a mutation made without its
    /// write's data, which is `data` (see [`Outgoing`]).
    fn send_split(
        &self,
        o: &mut Order,
        dir: u32,
        resync: bool,
        (m, data): (WireMutation, &[u8]),
        times: Vec<(Vec<u8>, Time)>,
    ) -> Option<(u64, u64)> {
        let (conn, tx) = o.link.as_ref()?;
        let conn = *conn;
        let seq = o.next_seq;
        let payload = match &m {
            WireMutation::Write { data: own, .. } => (own.len() + data.len()) as u64,
            _ => 0,
        };
        // A durability point goes out at once: the peer's flush overlaps
        // ours. Anything else waits for one (or for a waiter's flush).
        let now = matches!(
            m,
            WireMutation::Fsync { .. }
                | WireMutation::Write { sync: true, .. }
                | WireMutation::Sync
        );
        let msg = Message::Mutate {
            seq,
            dir,
            resync,
            mutation: m,
            times,
        };
        if let Err(e) = tx.send(&Outgoing { msg, data }, now) {
            // The link is gone, with the same consequences as any other
            // loss (new generation, exact marks), not silently.
            self.unlink_locked(o, conn, &format!("sending to the peer: {e}"), true);
            return None;
        }
        o.next_seq += 1;
        // What the lag bound counts: the data and a rough per-message overhead.
        self.acks.sent(seq, payload + 64);
        self.bytes_replicated.fetch_add(payload, Ordering::Relaxed);
        Some((conn, seq))
    }

    /// Starts a new generation in every directory's change log.
    fn new_generation(&self) {
        for d in &self.dirs {
            if let Err(e) = d.log.new_generation() {
                self.note_error(format!("change log: {e}"));
            }
        }
    }

    /// A call made while there is no link: one that promises durability (in
    /// an ack mode that waits for the peer) goes through [`alone`](Self::alone).
    fn durable_unlinked(
        &self,
        linked: bool,
        unnamed: bool,
        durable_call: bool,
    ) -> Result<(), Errno> {
        if linked || unnamed || !self.peer.waits_for_peer(durable_call) {
            return Ok(());
        }
        self.alone()
    }

    /// A call that promises durability finds no peer (see [`PeerLoss::alone`]).
    fn alone(&self) -> Result<(), Errno> {
        self.peer.alone(&|| self.order.lock().link.is_some(), &|| {
            self.new_generation()
        })
    }

    /// Ok once `seq` satisfies `need` (or the link is gone and the call may
    /// go on without it); Err(EIO) if the node was fenced meanwhile. A peer
    /// that does not answer within `peer_timeout` is dropped, as far as the
    /// quorum allows.
    fn wait(&self, conn: u64, seq: u64, need: Need) -> Result<(), Errno> {
        let mut deadline = Instant::now() + self.peer_timeout;
        loop {
            let why = match self
                .acks
                .wait(conn, seq, need, deadline, &|| self.peer.fenced())
            {
                Waited::Done => return Ok(()),
                Waited::Halted => return Err(Errno::EIO),
                Waited::PeerGone => return self.without_peer(need),
                Waited::Broken(e) => format!("sending to the peer: {e}"),
                Waited::TimedOut => match self.peer.on_timeout() {
                    OnTimeout::Fail => return Err(Errno::EIO),
                    OnTimeout::KeepWaiting => {
                        deadline = Instant::now() + Duration::from_millis(20);
                        continue;
                    }
                    OnTimeout::DropPeer => format!(
                        "peer did not acknowledge seq {seq} within {} ms",
                        self.peer_timeout.as_millis()
                    ),
                },
            };
            self.detach(conn, &why);
            return self.without_peer(need);
        }
    }

    /// A call whose peer is gone: one that promises durability is kept alone
    /// only as [`alone`](Self::alone) allows (under a new generation).
    fn without_peer(&self, need: Need) -> Result<(), Errno> {
        match need {
            Need::Lag(_) => Ok(()),
            Need::Applied | Need::Received => self.alone(),
        }
    }

    /// What a mutation waits for: a call that promises durability (fsync,
    /// O_SYNC) waits per the ack mode; anything else only for room in the
    /// stream, like a write that lands in the page cache.
    fn need(&self, durable_call: bool) -> Need {
        match (self.ack, durable_call) {
            (Ack::Durable, true) => Need::Applied,
            (Ack::Received, true) => Need::Received,
            (Ack::Async, _) => Need::Lag(self.async_max_lag),
            (_, false) => Need::Lag(WINDOW),
        }
    }

    // ---- resync support ----

    /// Ships one resync item built under the order lock (so it reads the
    /// local tree consistently with the stream). `build` gets the names
    /// generation and returns the mutation and the clears it earns. Returns
    /// false once the link is gone.
    pub fn ship<F>(&self, conn: u64, dir: u32, build: F) -> bool
    where
        F: FnOnce(&Dir, u64) -> Option<(WireMutation, Vec<(Vec<u8>, Time)>, Vec<ResyncClear>)>,
    {
        let seq = {
            let mut o = self.order.lock();
            if !o.linked(conn) {
                return false;
            }
            let Some((m, times, clears)) = build(&self.dirs[dir as usize], o.names_gen) else {
                return true;
            };
            let Some((_, seq)) = self.send_locked(&mut o, dir, true, m, times) else {
                return false;
            };
            for c in clears {
                o.clears.add(match c {
                    ResyncClear::Range(id, r) => Clear::Range(dir, id, r),
                    ResyncClear::Size(id) => Clear::Size(dir, id),
                });
            }
            seq
        };
        // Keep the window bounded so live writes never queue behind a whole resync.
        self.wait(conn, seq, Need::Lag(RESYNC_WINDOW)).is_ok() && self.is_attached(conn)
    }

    /// Runs `f` with the stream to itself: no live mutation is applied or sent
    /// meanwhile. The resync ships the namespace this way, then marks the
    /// link ready for live mutations. `None` if `conn` is gone.
    pub fn exclusive<R>(&self, conn: u64, f: impl FnOnce(&mut Exclusive<'_>) -> R) -> Option<R> {
        let o = self.order.lock();
        if !o.linked(conn) {
            return None;
        }
        let mut x = Exclusive { rep: self, o };
        let r = f(&mut x);
        x.o.ready = true;
        Some(r)
    }

    /// The resync has shipped everything: namespace records up to `ns_upto`
    /// (per dir) may go once durable, and from now on live records clear too.
    pub fn finish_resync(
        &self,
        conn: u64,
        ns_upto: &[u64],
        generation: crate::changelog::Generation,
    ) -> bool {
        let mut o = self.order.lock();
        if !o.linked(conn) {
            return false;
        }
        // One sync makes every directory durable on the peer.
        if self
            .send_locked(&mut o, 0, true, WireMutation::Sync, Vec::new())
            .is_none()
        {
            return false;
        }
        for (d, upto) in ns_upto.iter().enumerate() {
            if *upto > 0 {
                o.clears.add(Clear::NsUpto(d as u32, *upto));
            }
        }
        let seq = o.next_seq - 1;
        o.resync_done = Some(seq);
        let Some((_, tx)) = &o.link else { return false };
        let done = Message::ResyncDone {
            seq,
            generation: generation.current,
            history: generation.history,
        };
        match tx.send(&Outgoing::whole(done), true) {
            Ok(()) => true,
            Err(e) => {
                self.unlink_locked(&mut o, conn, &format!("sending to the peer: {e}"), true);
                false
            }
        }
    }

    pub fn progress(&self) -> parking_lot::MutexGuard<'_, ResyncProgress> {
        self.resync.lock()
    }

    pub fn status(&self) -> ReplicationStatus {
        let (applied, durable) = self.acks.progress();
        let (peer, sent, hot) = {
            let o = self.order.lock();
            let peer = match (&o.link, o.resync_done) {
                (None, _) => "alone",
                (Some(_), None) => "resyncing",
                (Some(_), Some(_)) => "connected",
            };
            // Once the peer is current, hot extents of the activity log are
            // crash insurance, not differences: leave them out.
            let hot = if o.current(durable) {
                o.activity.snapshot()
            } else {
                Default::default()
            };
            (peer, o.next_seq - 1, hot)
        };
        let (mut dirty_bytes, mut dirty_files) = (0, 0);
        for (d, dir) in self.dirs.iter().enumerate() {
            for id in dir.log.dirty_files().unwrap_or_default() {
                let ranges = dir.log.dirty(id).unwrap_or_default();
                let size_changed = dir.log.dirty_size(id).ok().flatten().is_some();
                let bytes: u64 = ranges
                    .into_iter()
                    .flat_map(|r| {
                        let hot_here: Vec<Range<u64>> = (r.start / EXTENT..r.end.div_ceil(EXTENT))
                            .filter(|e| hot.contains(&(d as u32, id, *e)))
                            .map(|e| e * EXTENT..(e + 1) * EXTENT)
                            .collect();
                        clears::subtract(r, Some(&hot_here))
                    })
                    .map(|r| r.end - r.start)
                    .sum();
                if bytes > 0 || size_changed {
                    dirty_files += 1;
                }
                dirty_bytes += bytes;
            }
        }
        ReplicationStatus {
            role: "primary".into(),
            peer: peer.into(),
            ack: self.ack.to_string(),
            sent,
            applied,
            durable,
            dirty_bytes,
            dirty_files,
            bytes_replicated: self.bytes_replicated.load(Ordering::Relaxed),
            resync: self.resync.lock().clone(),
            last_error: self.last_error.lock().clone(),
            verify: self.verify.lock().clone(),
            hot_extents: hot.len() as u64,
            wire: self.tally.counts(),
        }
    }
}

/// The stream held by a resync; see [`Replicator::exclusive`].
pub struct Exclusive<'r> {
    rep: &'r Replicator,
    o: parking_lot::MutexGuard<'r, Order>,
}

impl Exclusive<'_> {
    pub fn dir(&self, dir: u32) -> &Dir {
        &self.rep.dirs[dir as usize]
    }

    /// Sends one item; false once the link is gone.
    pub fn ship(&mut self, dir: u32, m: WireMutation) -> bool {
        self.rep
            .send_locked(&mut self.o, dir, true, m, Vec::new())
            .is_some()
    }
}

/// What a resync item lets the change log forget once durable on the peer.
pub enum ResyncClear {
    Range(FileId, Range<u64>),
    Size(FileId),
}

/// The mount's sink for one directory of a replicated module.
pub struct ReplicatingSink {
    rep: Arc<Replicator>,
    dir: u32,
}

impl MutationSink for ReplicatingSink {
    fn apply(&self, m: &Mutation<'_>, local: LocalApply<'_>) -> Result<(), Errno> {
        self.rep.submit(self.dir, m, local)
    }

    fn closed(&self) {
        self.rep.settle_owed();
    }
}
