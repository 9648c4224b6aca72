//! The stream to the peer: sequence numbers, the link slot and the one
//! order lock (see `order.rs`), sending, the clears the peer's durability
//! earns, and waiting for the peer as the ack mode asks. What losing the
//! peer means is `peer.rs`'s to say; this file does the bookkeeping.
//!
//! Lock order: the order lock, then the acknowledgement tracker's lock;
//! never the other way round.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, MutexGuard};

use super::acks::{AckTracker, Need, Waited};
use super::clears::Clear;
use super::order::Order;
use super::outlet::Outbound;
use super::peer::{OnTimeout, PeerLoss};
use super::records::Records;
use crate::changelog::FileId;
use crate::config::Ack;
use crate::fs::Errno;
use crate::replication::dir::Dir;
use crate::replication::status::Tally;
use crate::replication::wire::{Message, Outgoing, Time, WireMutation};

/// How far plain writes may run ahead of the peer in the `durable` and
/// `received` modes before they wait.
pub const WINDOW: u64 = 32 << 20;

/// How long a resync lets its shipped-but-unapplied bytes grow.
pub const RESYNC_WINDOW: u64 = 64 << 20;
/// What a resync item without data counts for in the lag bounds: a file
/// made or set on the peer costs about what a 4 KiB write does.
pub const RESYNC_NAME_COST: u64 = 4 << 10;

/// How often, at most, acknowledgements clear the change log.
const CLEAR_EVERY: Duration = Duration::from_millis(10);
/// How many files dirty at once make their clearing worth giving memory
/// back for.
const GIVE_BACK_AFTER: u64 = 10_000;

/// An instant before any clear was put off.
fn long_ago() -> Instant {
    let now = Instant::now();
    now.checked_sub(CLEAR_EVERY * 100).unwrap_or(now)
}

pub struct Stream {
    pub module: String,
    pub ack: Ack,
    pub peer_timeout: Duration,
    pub async_max_lag: u64,
    pub dirs: Vec<Dir>,
    order: Mutex<Order>,
    pub acks: AckTracker,
    pub peer: PeerLoss,
    next_conn: AtomicU64,
    pub bytes_replicated: AtomicU64,
    /// When the application last changed something, sent live or marked
    /// for the resync (a file the peer does not have yet): it is writing.
    pub live: super::pace::LastChange,
    /// When the change log was last cleared of what the peer made durable.
    last_clear: Mutex<Instant>,
    /// The most files seen dirty at once since memory was last given back.
    dirty_peak: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    /// Modification times may be owed (set under the order lock as one is
    /// owed, cleared as they are all sent): the periodic round looks here
    /// before it takes the lock on a blocking thread.
    pub owing: std::sync::atomic::AtomicBool,
}

impl Stream {
    pub fn new(s: super::Settings, tally: std::sync::Arc<Tally>) -> Self {
        Self {
            order: Mutex::new(Order::new(s.dirs.len())),
            acks: AckTracker::new(tally, s.latency, s.blocking),
            peer: PeerLoss::new(s.ack, s.alone_ok, s.blocking),
            module: s.module,
            ack: s.ack,
            peer_timeout: s.peer_timeout,
            async_max_lag: s.async_max_lag,
            dirs: s.dirs,
            next_conn: AtomicU64::new(1),
            bytes_replicated: AtomicU64::new(0),
            live: Default::default(),
            last_clear: Mutex::new(long_ago()),
            dirty_peak: AtomicU64::new(0),
            last_error: Mutex::new(None),
            owing: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The order lock.
    pub fn lock(&self) -> MutexGuard<'_, Order> {
        self.order.lock()
    }

    pub fn note_error(&self, what: String) {
        tracing::error!("{}: {what}", self.module);
        *self.last_error.lock() = Some(what);
    }

    pub fn records(&self) -> Records<'_> {
        Records {
            dirs: &self.dirs,
            module: &self.module,
        }
    }

    /// A connection is up: mutations from now on travel on `tx`.
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

    /// The link `conn` ended; `failed`: not closed on purpose.
    pub fn unlink(&self, conn: u64, why: &str, failed: bool) {
        let mut o = self.order.lock();
        self.unlink_locked(&mut o, conn, why, failed);
    }

    /// [`unlink`](Self::unlink) under the order lock: however the link is
    /// found gone, the same bookkeeping follows; what it means for the
    /// generation is [`PeerLoss::unlinked`]'s to say.
    pub fn unlink_locked(&self, o: &mut Order, conn: u64, why: &str, failed: bool) {
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
                let narrowed = o.activity.narrow(durable);
                self.clear_ranges(
                    narrowed
                        .into_iter()
                        .flat_map(|(d, id, rs)| rs.into_iter().map(move |r| (d, id, r))),
                );
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

    /// Applies the clears the peer's durability earned. Batched: at most
    /// every [`CLEAR_EVERY`], and never by waiting for the order lock while
    /// a change holds it (the application's next call would wait behind the
    /// change log), unless clears have been put off for long. A later ack,
    /// or the peer's keepalive, clears what one skipped.
    pub fn clear_durable(&self, conn: u64, durable: u64) {
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
        drop(o);
        self.give_back_when_clear();
    }

    /// Once the files a big resync marked are cleared (all but a few the
    /// application keeps writing), gives the memory that marked them back to
    /// the system: the allocator keeps what a million small entries freed (a
    /// full sync of 300,000 files left the serving daemon at 180 MB).
    fn give_back_when_clear(&self) {
        let dirty: u64 = self
            .dirs
            .iter()
            .map(|d| d.log.dirty_count().unwrap_or(0))
            .sum();
        let peak = self
            .dirty_peak
            .fetch_max(dirty, Ordering::Relaxed)
            .max(dirty);
        if peak >= GIVE_BACK_AFTER && dirty < GIVE_BACK_AFTER / 100 {
            self.dirty_peak.store(0, Ordering::Relaxed);
            crate::fs::sys::give_back_memory();
        }
    }

    /// True if [`clear_durable`](Self::clear_durable) has nothing to do:
    /// nothing sent waits to be cleared and no extent is hot. Never waits
    /// for the order lock (false if it is held).
    pub fn nothing_to_clear(&self) -> bool {
        self.order
            .try_lock()
            .is_some_and(|o| o.clears.is_empty() && o.activity.is_empty())
    }

    /// [`clear_durable`](Self::clear_durable) now, under the order lock.
    fn clear_durable_locked(&self, o: &mut Order, durable: u64) {
        let now = Instant::now();
        if o.current(durable) && now.duration_since(o.last_cool) >= Duration::from_millis(250) {
            o.last_cool = now;
            let cooled = o.activity.cool(durable, now);
            self.clear_ranges(cooled.into_iter());
        }
        let last_sent = o.next_seq - 1;
        let Order {
            clears, activity, ..
        } = o;
        let due = clears.due(durable, last_sent, |d, id, r| activity.hot_ranges(d, id, r));
        // The ranges first, in one write per directory: this runs under the
        // order lock, and a resync's acknowledgement clears thousands.
        self.clear_ranges(due.iter().filter_map(|c| match c {
            Clear::Range(d, id, r) => Some((*d, *id, r.clone())),
            _ => None,
        }));
        for c in due {
            let r = match c {
                Clear::Range(..) => continue,
                Clear::Size(d, id) => self.dirs[d as usize].log.clear_size(id),
                Clear::NsUpto(d, seq) => self.dirs[d as usize].log.clear_ns_upto(seq),
            };
            if let Err(e) = r {
                self.note_error(format!("change log: {e}"));
            }
        }
    }

    /// Clears ranges of the directories' change logs, one write per log.
    fn clear_ranges(&self, ranges: impl Iterator<Item = (u32, FileId, Range<u64>)>) {
        let mut per_dir: Vec<Vec<(FileId, Range<u64>)>> = vec![Vec::new(); self.dirs.len()];
        for (d, id, r) in ranges {
            if let Some(v) = per_dir.get_mut(d as usize) {
                v.push((id, r));
            }
        }
        for (d, v) in per_dir.iter().enumerate() {
            if v.is_empty() {
                continue;
            }
            if let Err(e) = self.dirs[d].log.clear_many(v) {
                self.note_error(format!("change log: {e}"));
            }
        }
    }

    /// Sends one message under the order lock; `None` when alone.
    pub fn send(
        &self,
        o: &mut Order,
        dir: u32,
        resync: bool,
        m: WireMutation,
        times: Vec<(Vec<u8>, Time)>,
    ) -> Option<(u64, u64)> {
        self.send_split(o, dir, resync, (m, &[]), times)
    }

    /// [`send`](Self::send) of a mutation made without its write's data,
    /// which is `data` (see [`Outgoing`]).
    pub fn send_split(
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
        // What the lag bound counts: the data and a rough per-message
        // overhead; a resync's change of names costs the peer a file made
        // or set, which a byte count of the message would not show.
        let cost = if resync && payload == 0 {
            RESYNC_NAME_COST
        } else {
            payload + 64
        };
        self.acks.sent(seq, cost);
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
    pub fn durable_unlinked(
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
    pub fn alone(&self) -> Result<(), Errno> {
        self.peer.alone(&|| self.order.lock().link.is_some(), &|| {
            self.new_generation()
        })
    }

    /// Ok once `seq` satisfies `need` (or the link is gone and the call may
    /// go on without it); Err(EIO) if the node was fenced meanwhile. A peer
    /// that does not answer within `peer_timeout` is dropped, as far as the
    /// quorum allows.
    pub fn wait(&self, conn: u64, seq: u64, need: Need) -> Result<(), Errno> {
        self.wait_or_work(conn, seq, need, false)
    }

    /// Waits until what was sent on `conn` is within `window` of what the
    /// peer applied, for the resync while the application's changes are not
    /// in the stream: a peer that applies something within every
    /// `peer_timeout` is working through its queue, not lost (a full window
    /// of names takes a slow disk longer than one timeout). No application
    /// call waits here.
    pub fn wait_working(&self, conn: u64, window: u64) -> Result<(), Errno> {
        // The lag bound looks at no sequence number.
        self.wait_or_work(conn, 0, Need::Lag(window), true)
    }

    fn wait_or_work(&self, conn: u64, seq: u64, need: Need, work: bool) -> Result<(), Errno> {
        let mut deadline = Instant::now() + self.peer_timeout;
        let mut applied = self.acks.progress().0;
        loop {
            let why = match self
                .acks
                .wait(conn, seq, need, deadline, &|| self.peer.fenced())
            {
                Waited::Done => return Ok(()),
                Waited::TimedOut if work && self.acks.progress().0 > applied => {
                    applied = self.acks.progress().0;
                    deadline = Instant::now() + self.peer_timeout;
                    continue;
                }
                Waited::Halted => return Err(Errno::EIO),
                Waited::PeerGone => return self.without_peer(need),
                Waited::SendFailed(e) => format!("sending to the peer: {e}"),
                Waited::ReadFailed(e) => e.to_string(),
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
            self.unlink(conn, &why, true);
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
    /// stream, like a write that lands in the page cache; a resync item for
    /// room in the resync's window.
    pub fn need(&self, durable_call: bool) -> Need {
        match (self.ack, durable_call) {
            (Ack::Durable, true) => Need::Applied,
            (Ack::Received, true) => Need::Received,
            (Ack::Async, _) => Need::Lag(self.async_max_lag),
            (_, false) => Need::Lag(WINDOW),
        }
    }
}
