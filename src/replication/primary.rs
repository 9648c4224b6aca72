//! The primary's half of replication: every mutation the mount sees is
//! recorded in the change log, applied locally, sent to the secondary on one
//! ordered stream, and answered when the module's ack mode holds.
//!
//! One lock (the *order lock*) is held from marking to enqueueing, so the order
//! on the wire is the order of the local applies, and resync reads of the
//! local tree are consistent with the stream. Waiting for the peer happens
//! outside it, so many application threads have mutations in flight at once.
//!
//! The local apply runs before the send: a call that fails locally is never
//! replicated, so the two trees cannot diverge on an error only one side saw.
//!
//! Dirty marks are cleared only once the secondary reports them durable; see
//! [`Bucket`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::Range;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::changelog::{FileId, NsChange};
use crate::config::Ack;
use crate::fs::{Errno, LocalApply, Mutation, MutationSink, Remains};

mod exclude;

use super::activity::{Activity, EXTENT};
use super::dir::Dir;
use super::entry;
use super::status::{ReplicationStatus, ResyncProgress, Tally, VerifyState};
use super::wire::{Message, Outgoing, Time, WireMutation};

/// What may be forgotten from the change log once the peer made it durable.
enum Clear {
    Range(u32, FileId, Range<u64>),
    Size(u32, FileId),
    NsUpto(u32, u64),
}

/// The clears of the mutations sent in one stretch of the stream. A bucket is
/// sealed at the last sequence number sent; once the peer is durable past it,
/// its clears are applied, minus whatever the open bucket marked again since.
#[derive(Default)]
struct Bucket {
    items: Vec<Clear>,
    ranges: HashMap<(u32, FileId), Vec<Range<u64>>>,
    sizes: HashSet<(u32, FileId)>,
}

impl Bucket {
    fn add(&mut self, c: Clear) {
        match &c {
            Clear::Range(d, id, r) => self.ranges.entry((*d, *id)).or_default().push(r.clone()),
            Clear::Size(d, id) => {
                self.sizes.insert((*d, *id));
            }
            Clear::NsUpto(..) => {}
        }
        self.items.push(c);
    }

    fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// `r` minus every range in `minus`.
fn subtract(r: Range<u64>, minus: Option<&Vec<Range<u64>>>) -> Vec<Range<u64>> {
    let mut out = vec![r];
    for m in minus.into_iter().flatten() {
        out = out
            .into_iter()
            .flat_map(|o| {
                let mut v = Vec::new();
                if m.start > o.start {
                    v.push(o.start..m.start.min(o.end));
                }
                if m.end < o.end {
                    v.push(m.end.max(o.start)..o.end);
                }
                v.into_iter().filter(|x| x.start < x.end)
            })
            .collect();
    }
    out
}

/// Where the primary's messages go: the link to the peer.
pub trait Outlet: Send + Sync {
    /// Queues `m`; `now`: someone is about to wait for it, so it goes out
    /// at once, with everything queued before it.
    fn send(&self, m: &Outgoing<'_>, now: bool) -> Result<(), String>;
    /// Writes whatever is queued.
    fn flush(&self) -> Result<(), String>;
    /// Ends the link; `graceful`: what was queued goes out first.
    fn close(&self, graceful: bool);
    /// A waiting call reads the peer's answers itself, until `until` at
    /// most; `None` when another thread is reading them.
    fn read(&self, until: Instant) -> Option<Result<Vec<Message>, String>> {
        let _ = until;
        None
    }
}

pub type Outbound = Arc<dyn Outlet>;

struct Order {
    next_seq: u64,
    /// The stream to the peer; `None` while alone.
    link: Option<(u64, Outbound)>,
    /// Whether the peer's names match ours (the resync's first pass is
    /// done), so live mutations can be sent: before that one could name a
    /// file the peer does not have yet.
    ready: bool,
    open: Bucket,
    sealed: Option<(u64, Bucket)>,
    /// Hot extents of files written while the peer is connected.
    activity: Activity,
    /// The last seq of the resync on this link, once it shipped everything
    /// the change log held. Until then namespace records are cleared only by
    /// the resync itself, and the activity log clears nothing.
    resync_done: Option<u64>,
    last_cool: Instant,
    /// File ids by path, per directory, to spare the change log a lookup
    /// per write; emptied whenever names move.
    ids: Vec<HashMap<PathBuf, FileId>>,
    /// Changes whenever names move or go, so a cached path can be trusted
    /// while it stays the same.
    names_gen: u64,
    /// Per directory: files written since their modification times last
    /// went to the peer, with the record that keeps them owed across a
    /// lost link or a crash (see [`WireMutation::Times`]).
    owed: Vec<HashMap<PathBuf, u64>>,
}

impl Order {
    /// Whether the stream is connection `conn`'s.
    fn linked(&self, conn: u64) -> bool {
        self.link.as_ref().is_some_and(|(c, _)| *c == conn)
    }

    /// Whether live mutations go to the peer now.
    fn streaming(&self) -> bool {
        self.link.is_some() && self.ready
    }

    /// Whether the peer holds, durably, everything up to the end of the
    /// resync: then nothing older than the live stream is owed to it.
    fn current(&self, durable: u64) -> bool {
        self.resync_done.is_some_and(|d| durable >= d)
    }
}

/// Bytes sent but not yet applied by the peer, for the lag bounds of `async`
/// and of resync: (seq, cumulative bytes up to it) for every unapplied seq.
#[derive(Default)]
struct Lag {
    unapplied: VecDeque<(u64, u64)>,
    sent_total: u64,
    applied_total: u64,
}

impl Lag {
    fn bytes(&self) -> u64 {
        self.sent_total - self.applied_total
    }

    fn applied(&mut self, upto: u64) {
        while let Some(&(seq, total)) = self.unapplied.front() {
            if seq > upto {
                break;
            }
            self.applied_total = total;
            self.unapplied.pop_front();
        }
    }
}

#[derive(Default)]
struct Acks {
    /// What a waiter flushes before it sleeps.
    outlet: Option<Outbound>,
    conn: u64,
    connected: bool,
    /// Counts acknowledgements: a waiter that saw one count and finds
    /// another need not sleep.
    version: u64,
    received: u64,
    applied: u64,
    durable: u64,
}

pub struct Replicator {
    pub module: String,
    pub ack: Ack,
    pub peer_timeout: Duration,
    pub async_max_lag: u64,
    pub dirs: Vec<Dir>,
    order: Mutex<Order>,
    lag: Mutex<Lag>,
    acks: Mutex<Acks>,
    acked: Condvar,
    next_conn: AtomicU64,
    /// This node lost its peer and its quorum and stops serving: calls that
    /// would wait for the peer fail instead of being acknowledged alone.
    fenced: std::sync::atomic::AtomicBool,
    /// With a quorum: whether this node may go on without its peer (it holds
    /// the lease, an address answers). While it may not, a call whose peer
    /// stopped acknowledging waits — for the peer or for the fence — instead
    /// of being acknowledged alone: the peer may be about to take over.
    alone_ok: Mutex<Option<AloneCheck>>,
    /// How long calls that promise durability waited for the peer (for
    /// `/metrics`).
    latency: std::sync::OnceLock<prometheus_client::metrics::histogram::Histogram>,
    /// The peer was current and the link is gone, but nothing that promised
    /// durability has been acknowledged without it yet: the new generation
    /// that says the peer fell behind is started just before the first such
    /// acknowledgement. A node that froze, was cut off or lost its lease and
    /// acknowledged nothing alone thus keeps the generation its peer has, and
    /// comes back as that peer's SECOND instead of as a split brain.
    owe_generation: Mutex<bool>,
    /// The module's `exclude` patterns (see [`exclude`]).
    exclude: std::sync::OnceLock<crate::config::Exclude>,
    bytes_replicated: AtomicU64,
    /// What the stream cost (flushes, acks, waits for the peer).
    pub tally: Arc<Tally>,
    /// When the change log was last cleared of what the peer made durable.
    last_clear: Mutex<Instant>,
    resync: Mutex<ResyncProgress>,
    last_error: Mutex<Option<String>>,
    pub verify: Mutex<VerifyState>,
}

pub type AloneCheck = Arc<dyn Fn() -> bool + Send + Sync>;

/// How far plain writes may run ahead of the peer in the `durable` and
/// `received` modes before they wait.
pub const WINDOW: u64 = 32 << 20;

/// How long a waiting call reads, or sleeps while another reads, before it
/// looks again (at the fence, the quorum, its deadline).
const LEAD_SLICE: Duration = Duration::from_millis(20);
const FOLLOW_SLICE: Duration = Duration::from_millis(2);

/// How often, at most, acknowledgements clear the change log.
const CLEAR_EVERY: Duration = Duration::from_millis(10);

/// An instant before any clear was put off.
fn long_ago() -> Instant {
    let now = Instant::now();
    now.checked_sub(CLEAR_EVERY * 100).unwrap_or(now)
}

/// How long a resync lets its shipped-but-unapplied bytes grow.
pub const RESYNC_WINDOW: u64 = 64 << 20;

impl Replicator {
    pub fn new(
        module: &str,
        ack: Ack,
        peer_timeout: Duration,
        async_max_lag: u64,
        dirs: Vec<Dir>,
    ) -> Arc<Self> {
        let n = dirs.len();
        Arc::new(Self {
            module: module.to_string(),
            ack,
            peer_timeout,
            async_max_lag,
            dirs,
            order: Mutex::new(Order {
                next_seq: 1,
                link: None,
                ready: false,
                open: Bucket::default(),
                sealed: None,
                activity: Activity::default(),
                resync_done: None,
                last_cool: Instant::now(),
                ids: vec![HashMap::new(); n],
                names_gen: 0,
                owed: vec![HashMap::new(); n],
            }),
            lag: Mutex::new(Lag::default()),
            acks: Mutex::new(Acks::default()),
            acked: Condvar::new(),
            next_conn: AtomicU64::new(1),
            fenced: std::sync::atomic::AtomicBool::new(false),
            alone_ok: Mutex::new(None),
            latency: std::sync::OnceLock::new(),
            owe_generation: Mutex::new(false),
            exclude: std::sync::OnceLock::new(),
            bytes_replicated: AtomicU64::new(0),
            tally: Arc::default(),
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

    // ---- the link ----

    /// A connection is up: mutations from now on travel on `tx`. Returns the
    /// connection's id.
    pub fn attach(&self, tx: Outbound) -> u64 {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let mut o = self.order.lock();
        let outlet = tx.clone();
        o.link = Some((conn, tx));
        o.ready = false;
        o.open = Bucket::default();
        o.sealed = None;
        o.resync_done = None;
        let first = o.next_seq;
        drop(o);
        // The first acknowledgement of a link clears at once.
        *self.last_clear.lock() = long_ago();
        // The peer resynchronises from the change log and then shares this
        // node's generation: nothing was acknowledged alone.
        *self.owe_generation.lock() = false;
        *self.lag.lock() = Lag::default();
        let mut a = self.acks.lock();
        *a = Acks {
            outlet: Some(outlet),
            conn,
            connected: true,
            version: a.version + 1,
            received: first - 1,
            applied: first - 1,
            durable: first - 1,
        };
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
        let conn = self.order.lock().link.as_ref().map(|(c, _)| *c);
        if let Some(conn) = conn {
            self.unlink(conn, why, false);
        }
    }

    fn unlink(&self, conn: u64, why: &str, failed: bool) {
        let mut o = self.order.lock();
        self.unlink_locked(&mut o, conn, why, failed);
        drop(o);
        let mut r = self.resync.lock();
        r.running = false;
    }

    /// [`unlink`](Self::unlink) under the order lock (the acknowledgement
    /// lock is never held while the order lock is taken, so taking it here is
    /// safe): however the link is found gone, the same bookkeeping follows.
    fn unlink_locked(&self, o: &mut Order, conn: u64, why: &str, failed: bool) {
        let durable = self.acks.lock().durable;
        if o.linked(conn) {
            // What the peer holds durably is forgotten first, as the next
            // acknowledgement would have: the names recorded with it must
            // not outlive the byte ranges the narrowing below forgets.
            self.clear_durable_locked(o, durable);
            if failed && o.current(durable) {
                // The peer was current and is no longer: a new generation
                // (before anything is acknowledged without it) tells the peer
                // and the cluster manager that its copy fell behind. Where
                // every promise of durability waits for the peer, it is
                // started with the first one kept without it.
                if self.ack == Ack::Async {
                    self.new_generation();
                } else {
                    *self.owe_generation.lock() = true;
                }
            }
            // Hot extents become exact again: only what the peer may lack
            // stays marked. Before the peer was current (a resync still
            // running), whole extents stay: they may hold older marks.
            if o.current(durable) {
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
                outlet.close(!failed);
            }
            o.resync_done = None;
            o.ready = false;
            // Their records stay: the resync ships those files' times.
            o.owed.iter_mut().for_each(HashMap::clear);
            o.open = Bucket::default();
            o.sealed = None;
            tracing::warn!(
                "{}: peer out of date from seq {}: {why}",
                self.module,
                o.next_seq
            );
            *self.last_error.lock() = Some(why.to_string());
        }
        let mut a = self.acks.lock();
        if a.conn == conn {
            a.connected = false;
            a.outlet = None;
        }
        self.acked.notify_all();
    }

    /// Drops the current link so the next one resynchronises what the
    /// change log holds now.
    pub fn force_resync(&self, why: &str) {
        let conn = self.order.lock().link.as_ref().map(|(c, _)| *c);
        if let Some(conn) = conn {
            self.detach(conn, why);
        }
    }

    pub fn is_attached(&self, conn: u64) -> bool {
        self.order.lock().linked(conn)
    }

    /// [`is_attached`](Self::is_attached) without the order lock, which a
    /// change may hold for a while.
    pub fn still_linked(&self, conn: u64) -> bool {
        let a = self.acks.lock();
        a.conn == conn && a.connected
    }

    /// An acknowledgement from the peer on connection `conn`; false once
    /// that connection is no longer the link.
    pub fn on_ack(&self, conn: u64, received: u64, applied: u64, durable: u64) -> bool {
        self.record_ack(conn, received, applied, durable) && {
            self.clear_durable(conn, durable);
            true
        }
    }

    /// Clears the change log of what the peer reported durable on `conn`
    /// (for acknowledgements recorded without clearing).
    pub fn clear_acked(&self, conn: u64) {
        let durable = self.acks.lock().durable;
        self.clear_durable(conn, durable);
    }

    /// [`on_ack`](Self::on_ack) without clearing the change log: what a
    /// waiting call does, so the application never waits for a clear.
    fn record_ack(&self, conn: u64, received: u64, applied: u64, durable: u64) -> bool {
        {
            let mut a = self.acks.lock();
            if a.conn != conn || !a.connected {
                return false;
            }
            Tally::count(&self.tally.acks, 1);
            a.version += 1;
            a.received = a.received.max(received);
            a.applied = a.applied.max(applied);
            a.durable = a.durable.max(durable);
            self.lag.lock().applied(a.applied);
            self.acked.notify_all();
        }
        true
    }

    /// Takes what the peer sent on connection `conn`, clearing the change
    /// log if `clear`; why the link ends, if it does.
    pub fn take_replies(&self, conn: u64, msgs: Vec<Message>, clear: bool) -> Result<(), String> {
        for m in msgs {
            match m {
                Message::Ack {
                    received,
                    applied,
                    durable,
                } => {
                    let linked = if clear {
                        self.on_ack(conn, received, applied, durable)
                    } else {
                        self.record_ack(conn, received, applied, durable)
                    };
                    if !linked {
                        return Err("link dropped".into());
                    }
                }
                Message::Close { reason } => return Err(format!("peer closed the link: {reason}")),
                other => {
                    return Err(format!(
                        "unexpected message from the peer: {}",
                        other.kind()
                    ));
                }
            }
        }
        Ok(())
    }

    /// Waits for the peer's answer until `deadline`, or a little less: the
    /// calling thread reads it itself when no other thread does, so the
    /// answer wakes one thread instead of two (the link's reader, then this
    /// one). `seen`: the acknowledgements counted when the caller looked.
    fn await_reply(&self, conn: u64, outlet: &dyn Outlet, deadline: Instant, seen: u64) {
        let read = outlet.read(deadline.min(Instant::now() + LEAD_SLICE));
        let Some(read) = read else {
            // Another thread reads: it wakes this one, or hands over the
            // reading when it leaves.
            let mut a = self.acks.lock();
            if a.version == seen && a.conn == conn && a.connected {
                let until = deadline.min(Instant::now() + FOLLOW_SLICE);
                self.acked.wait_until(&mut a, until);
            }
            return;
        };
        if let Err(why) = read.and_then(|msgs| self.take_replies(conn, msgs, false)) {
            self.detach(conn, &why);
        }
        // Calls that waited while this one read take over the reading.
        let mut a = self.acks.lock();
        a.version += 1;
        self.acked.notify_all();
    }

    /// Applies the sealed bucket's clears once the peer is durable past it,
    /// then seals the open bucket. Batched: at most every [`CLEAR_EVERY`],
    /// and never by waiting for the order lock while a change holds it
    /// (the application's next call would wait behind the change log),
    /// unless clears have been put off for long. A later ack, or the
    /// peer's keepalive, clears what one skipped.
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
        loop {
            if o.sealed.is_none() && !o.open.is_empty() {
                let upto = o.next_seq - 1;
                let open = std::mem::take(&mut o.open);
                o.sealed = Some((upto, open));
            }
            match &o.sealed {
                Some((upto, _)) if *upto <= durable => {}
                _ => return,
            }
            let (_, bucket) = o.sealed.take().expect("checked");
            for c in bucket.items {
                let r = match c {
                    Clear::Range(d, id, r) => {
                        let log = &self.dirs[d as usize].log;
                        let hot = o.activity.hot_ranges(d, id, &r);
                        subtract(r, o.open.ranges.get(&(d, id)))
                            .into_iter()
                            .flat_map(|r| subtract(r, Some(&hot)))
                            .try_for_each(|r| log.clear(id, r))
                    }
                    Clear::Size(d, id) if !o.open.sizes.contains(&(d, id)) => {
                        self.dirs[d as usize].log.clear_size(id)
                    }
                    Clear::Size(..) => Ok(()),
                    Clear::NsUpto(d, seq) => self.dirs[d as usize].log.clear_ns_upto(seq),
                };
                if let Err(e) = r {
                    self.note_error(format!("change log: {e}"));
                }
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
        // What the lag bound counts: the data and a rough per-message overhead.
        let bytes = payload + 64;
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
        let mut lag = self.lag.lock();
        lag.sent_total += bytes;
        let total = lag.sent_total;
        lag.unapplied.push_back((seq, total));
        drop(lag);
        self.bytes_replicated.fetch_add(payload, Ordering::Relaxed);
        Some((conn, seq))
    }

    /// Waits until `seq` satisfies `need` on connection `conn`, at most
    /// `peer_timeout`; on timeout the peer is dropped and marked out of date.
    /// Fences the primary: whatever waits for the peer now fails with EIO,
    /// and so does every later change. Nothing is acknowledged without the
    /// peer from here on; the link closes without a new generation (this node
    /// acknowledged nothing alone).
    pub fn fence(&self, why: &str) {
        self.fenced.store(true, Ordering::SeqCst);
        let conn = self.order.lock().link.as_ref().map(|(c, _)| *c);
        if let Some(conn) = conn {
            self.unlink(conn, why, false);
        }
        let _a = self.acks.lock();
        self.acked.notify_all();
    }

    /// Starts a new generation in every directory's change log.
    fn new_generation(&self) {
        for d in &self.dirs {
            if let Err(e) = d.log.new_generation() {
                self.note_error(format!("change log: {e}"));
            }
        }
    }

    /// Sets the quorum check that lets this node go on alone.
    pub fn set_alone_check(&self, check: AloneCheck) {
        *self.alone_ok.lock() = Some(check);
    }

    /// Where the waits for the peer's acknowledgement are counted.
    pub fn set_latency(&self, h: prometheus_client::metrics::histogram::Histogram) {
        let _ = self.latency.set(h);
    }

    /// A call made while there is no link: one that promises durability (in
    /// an ack mode that waits for the peer) goes through [`alone`](Self::alone).
    fn durable_unlinked(
        &self,
        linked: bool,
        unnamed: bool,
        durable_call: bool,
    ) -> Result<(), Errno> {
        let waits_for_peer = !matches!(self.need(durable_call), Need::Lag(_));
        if linked || unnamed || !waits_for_peer {
            return Ok(());
        }
        self.alone()
    }

    /// A call that promises durability finds no peer to make it durable: it
    /// returns once this node may serve alone (it holds quorum), or once a
    /// link is back (the peer then resynchronises and is behind until it is
    /// done, so it cannot take over meanwhile), or with EIO once fenced.
    fn alone(&self) -> Result<(), Errno> {
        loop {
            if self.fenced.load(Ordering::SeqCst) {
                return Err(Errno::EIO);
            }
            if self.order.lock().link.is_some() {
                return Ok(());
            }
            let check = self.alone_ok.lock().clone();
            if check.is_none_or(|ok| ok()) {
                let mut owe = self.owe_generation.lock();
                if std::mem::take(&mut *owe) {
                    self.new_generation();
                    // Looked at again: a quorum that keeps the newest
                    // generation (witness, etcd) learns of this one before
                    // anything is acknowledged under it, so the twin can
                    // never take over with older data after this node dies.
                    continue;
                }
                return Ok(());
            }
            crate::fs::blocking();
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Ok once `seq` satisfies `need` (or the link is gone); Err(EIO) if the
    /// node was fenced meanwhile.
    fn wait(&self, conn: u64, seq: u64, need: Need) -> Result<(), Errno> {
        let t0 = Instant::now();
        let mut deadline = t0 + self.peer_timeout;
        let mut flushed = false;
        let mut a = self.acks.lock();
        loop {
            if self.fenced.load(Ordering::SeqCst) {
                return Err(Errno::EIO);
            }
            if a.conn != conn || !a.connected {
                drop(a);
                // The peer went away before it made this durable.
                return self.without_peer(need);
            }
            let done = match need {
                Need::Applied => a.applied >= seq,
                Need::Received => a.received >= seq,
                Need::Lag(limit) => self.lag.lock().bytes() <= limit,
            };
            if done {
                if let Need::Applied | Need::Received = need {
                    let waited = t0.elapsed();
                    Tally::count(&self.tally.peer_waits, 1);
                    Tally::count(&self.tally.peer_wait_us, waited.as_micros() as u64);
                    if let Some(h) = self.latency.get() {
                        h.observe(waited.as_secs_f64());
                    }
                }
                return Ok(());
            }
            if let Some(outlet) = a.outlet.clone().filter(|_| !flushed) {
                // What is waited for may still be queued: out with it
                // before sleeping (once per wait; the lock is not held).
                flushed = true;
                drop(a);
                if let Err(e) = outlet.flush() {
                    self.detach(conn, &format!("sending to the peer: {e}"));
                    return self.without_peer(need);
                }
                a = self.acks.lock();
                continue;
            }
            crate::fs::blocking();
            let seen = a.version;
            let late = match a.outlet.clone() {
                Some(outlet) => {
                    drop(a);
                    self.await_reply(conn, &*outlet, deadline, seen);
                    a = self.acks.lock();
                    Instant::now() >= deadline
                }
                None => self.acked.wait_until(&mut a, deadline).timed_out(),
            };
            // An answer that came in meanwhile is looked at first: after this
            // node was frozen past the deadline, the peer's answer is waiting
            // in the socket, and the peer is not late for it.
            let timed_out = late && a.version == seen;
            if timed_out {
                if self.fenced.load(Ordering::SeqCst) {
                    return Err(Errno::EIO);
                }
                let alone_ok = self.alone_ok.lock().clone();
                if alone_ok.is_some_and(|ok| !ok()) {
                    // Without quorum: looked at again shortly.
                    deadline = Instant::now() + Duration::from_millis(20);
                    continue;
                }
                drop(a);
                self.detach(
                    conn,
                    &format!(
                        "peer did not acknowledge seq {seq} within {} ms",
                        self.peer_timeout.as_millis()
                    ),
                );
                return self.without_peer(need);
            }
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

    // ---- recording ----

    /// Appends a namespace record; once the peer is current, a record sent
    /// live may be cleared when the peer makes it durable.
    fn record_ns(&self, o: &mut Order, dir: u32, c: NsChange) -> crate::changelog::Result<()> {
        let seq = self.dirs[dir as usize].log.log_ns(c)?;
        if o.streaming() && o.resync_done.is_some() {
            o.open.add(Clear::NsUpto(dir, seq));
        }
        Ok(())
    }

    /// Records what `m` may change on the peer, before it is applied.
    /// Returns the file id of the bytes a write or fallocate changes.
    fn mark(
        &self,
        dir: u32,
        m: &Mutation<'_>,
        o: &mut Order,
    ) -> crate::changelog::Result<Option<FileId>> {
        let log = &self.dirs[dir as usize].log;
        let (p, off, len) = match m {
            Mutation::Write {
                path: Some(p),
                offset,
                data,
                ..
            } => (p, *offset, data.len() as u64),
            Mutation::Fallocate {
                path: Some(p),
                offset,
                length,
                ..
            } => (p, *offset, *length),
            _ => {
                self.mark_names(dir, m, o)?;
                return Ok(None);
            }
        };
        let id = self.file_id(o, dir, p)?;
        if o.streaming() {
            // Connected: the activity log's whole-extent marks cover it.
            let now = Instant::now();
            for ext in o.activity.cold(dir, id, off, len) {
                log.mark(id, ext * EXTENT, EXTENT)?;
                o.activity.heat(dir, id, ext, now);
            }
        } else if len > 0 {
            log.mark(id, off, len)?;
        }
        Ok(Some(id))
    }

    /// The records of a change to names or metadata, before it is applied.
    fn mark_names(
        &self,
        dir: u32,
        m: &Mutation<'_>,
        o: &mut Order,
    ) -> crate::changelog::Result<()> {
        let change = match m {
            Mutation::SetAttr {
                path: Some(p),
                change,
            } => {
                if let Some(size) = change.size {
                    let id = self.file_id(o, dir, p)?;
                    self.truncate(o, dir, id, size)?;
                    if o.streaming() {
                        o.open.add(Clear::Size(dir, id));
                    }
                }
                NsChange::SetAttr { path: p.clone() }
            }
            Mutation::SetXattr {
                path: Some(p),
                name,
                ..
            } => NsChange::SetXattr {
                path: p.clone(),
                name: bytes(name.as_ref()),
            },
            Mutation::RemoveXattr {
                path: Some(p),
                name,
            } => NsChange::RemoveXattr {
                path: p.clone(),
                name: bytes(name.as_ref()),
            },
            Mutation::Create { path, .. } => NsChange::Create { path: path.clone() },
            Mutation::Mkdir { path, .. } => NsChange::Mkdir { path: path.clone() },
            Mutation::Symlink { path, target, .. } => NsChange::Symlink {
                path: path.clone(),
                target: target.clone(),
            },
            Mutation::Unlink { path, .. } => NsChange::Unlink { path: path.clone() },
            Mutation::Rmdir { path } => NsChange::Rmdir { path: path.clone() },
            // Renames and links are recorded after they succeed (a rename or
            // link replayed by a resync must be one that happened); nothing
            // else changes names.
            _ => return Ok(()),
        };
        self.record_ns(o, dir, change)
    }

    fn file_id(&self, o: &mut Order, dir: u32, p: &Path) -> crate::changelog::Result<FileId> {
        let ids = &mut o.ids[dir as usize];
        if let Some(id) = ids.get(p) {
            return Ok(*id);
        }
        let id = self.dirs[dir as usize].log.ensure(p)?;
        if ids.len() > 65536 {
            ids.clear();
        }
        ids.insert(p.to_path_buf(), id);
        Ok(id)
    }

    /// Updates the name map after `m` succeeded locally.
    fn after(&self, dir: u32, m: &Mutation<'_>, o: &mut Order) -> crate::changelog::Result<()> {
        let log = &self.dirs[dir as usize].log;
        match m {
            Mutation::Unlink { path, survivor } => {
                o.ids[dir as usize].clear();
                o.names_gen += 1;
                self.hand_over(o, dir, path, survivor)?;
                log.remove(path)?;
            }
            Mutation::Rmdir { path } => {
                o.ids[dir as usize].clear();
                o.names_gen += 1;
                log.remove(path)?;
            }
            Mutation::Rename {
                from,
                to,
                flags,
                survivor,
            } => {
                o.ids[dir as usize].clear();
                o.names_gen += 1;
                self.hand_over(o, dir, to, survivor)?;
                let exchange = flags & libc::RENAME_EXCHANGE != 0;
                if exchange {
                    log.exchange(from, to)?;
                } else {
                    log.rename(from, to)?;
                }
                let c = NsChange::Rename {
                    from: from.clone(),
                    to: to.clone(),
                    exchange,
                };
                self.record_ns(o, dir, c)?;
            }
            Mutation::Link { existing, path } => {
                let c = NsChange::Link {
                    existing: existing.clone(),
                    path: path.clone(),
                };
                self.record_ns(o, dir, c)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Records that `id` was truncated to `size`. The change log drops the
    /// marks past it, but a hot extent must stay marked whole: later writes
    /// to it are not marked one by one.
    fn truncate(&self, o: &Order, dir: u32, id: FileId, size: u64) -> crate::changelog::Result<()> {
        let log = &self.dirs[dir as usize].log;
        log.truncate(id, size)?;
        for ext in o.activity.hot_from(dir, id, size) {
            log.mark(id, ext * EXTENT, EXTENT)?;
        }
        Ok(())
    }

    /// The name `gone` of a hard-linked file goes while the file lives on:
    /// what is recorded about the file (dirty ranges, a size change, hot
    /// extents) moves to the surviving name, or the peer's other names of it
    /// would never get those changes. Without a known name, the next resync
    /// compares the trees by content instead.
    fn hand_over(
        &self,
        o: &mut Order,
        dir: u32,
        gone: &Path,
        survivor: &Remains,
    ) -> crate::changelog::Result<()> {
        if *survivor == Remains::Nothing {
            return Ok(());
        }
        let log = &self.dirs[dir as usize].log;
        let Some(id) = log.resolve(gone)? else {
            return Ok(());
        };
        let mut ranges = log.dirty(id)?;
        let size = log.dirty_size(id)?;
        let hot = !o.activity.hot_from(dir, id, 0).is_empty();
        if ranges.is_empty() && size.is_none() && !hot {
            return Ok(());
        }
        let Remains::Name(survivor) = survivor else {
            if !log.compare_needed()? {
                tracing::warn!(
                    "{}: {} was changed and removed while the file lives on under \
                     names not seen here: the next resync compares the trees by content",
                    self.module,
                    gone.display()
                );
                log.set_compare_needed(true)?;
            }
            return Ok(());
        };
        let to = log.ensure(survivor)?;
        o.activity.rekey(dir, id, to);
        if let Some(size) = size {
            // The size change drops the survivor's own marks past `size`:
            // they are marked again below.
            ranges.extend(log.dirty(to)?);
            self.truncate(o, dir, to, size)?;
        }
        let marks: Vec<_> = ranges
            .into_iter()
            .map(|r| (to, r.start, r.end - r.start))
            .collect();
        log.mark_many(&marks)
    }

    /// The modification times the peer should end up with after `m`: the
    /// file written, and the directories whose entries changed.
    fn stamps(&self, dir: u32, m: &Mutation<'_>) -> Vec<(Vec<u8>, Time)> {
        let root = self.dirs[dir as usize].root.as_fd();
        let parent = |p: &Path| p.parent().unwrap_or(Path::new("")).to_path_buf();
        let mut paths: Vec<PathBuf> = match m {
            // Other writes and fallocates owe theirs (`owe`).
            Mutation::Write {
                path: Some(p),
                sync: true,
                ..
            }
            | Mutation::SetXattr { path: Some(p), .. }
            | Mutation::RemoveXattr { path: Some(p), .. } => vec![p.clone()],
            Mutation::SetAttr {
                path: Some(p),
                change,
            } if change.size.is_some() || change.mtime.is_none() => vec![p.clone()],
            Mutation::Create { path, .. }
            | Mutation::Mkdir { path, .. }
            | Mutation::Symlink { path, .. } => vec![path.clone(), parent(path)],
            Mutation::Link { path, .. }
            | Mutation::Unlink { path, .. }
            | Mutation::Rmdir { path } => {
                vec![parent(path)]
            }
            Mutation::Rename { from, to, .. } => vec![parent(from), parent(to)],
            _ => Vec::new(),
        };
        paths.dedup();
        paths.iter().filter_map(|p| stamp(root, p)).collect()
    }

    fn submit(&self, dir: u32, m: &Mutation<'_>, local: LocalApply<'_>) -> Result<(), Errno> {
        let unnamed = matches!(
            m,
            Mutation::Write { path: None, .. }
                | Mutation::Fallocate { path: None, .. }
                | Mutation::SetAttr { path: None, .. }
                | Mutation::SetXattr { path: None, .. }
                | Mutation::RemoveXattr { path: None, .. }
                | Mutation::Fsync { path: None, .. }
        );
        if self.fenced.load(Ordering::SeqCst) {
            return Err(Errno::EIO);
        }
        match self.scope(dir, m) {
            exclude::Scope::Replicated => {}
            scope => return self.submit_scoped(dir, m, scope, local),
        }
        let mut o = self.order.lock();
        let owes = match m {
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
            match sent {
                Some((conn, seq)) => self.wait(conn, seq, self.need(true))?,
                None => self.durable_unlinked(linked, unnamed, true)?,
            }
            return Ok(());
        }
        let marked = self.mark(dir, m, &mut o).and_then(|id| {
            if let Some(p) = owes {
                self.owe(&mut o, dir, p)?;
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
        if let Err(e) = self.after(dir, m, &mut o) {
            self.note_error(format!("change log: {e}"));
        }
        if !o.streaming() || unnamed {
            let linked = o.link.is_some();
            drop(o);
            let sync = matches!(m, Mutation::Write { sync: true, .. });
            return self.durable_unlinked(linked, unnamed, sync);
        }
        let times = self.stamps(dir, m);
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
        let Some((conn, seq)) = sent else {
            return Ok(());
        };
        drop(o);
        let sync = matches!(m, Mutation::Write { sync: true, .. });
        self.wait(conn, seq, self.need(sync))?;
        Ok(())
    }

    /// Records, once per stretch, that `p`'s modification time is owed to
    /// the peer: the record lets a resync ship it if the link or this node
    /// goes before it is sent.
    fn owe(&self, o: &mut Order, dir: u32, p: &Path) -> crate::changelog::Result<()> {
        if !o.streaming() || o.owed[dir as usize].contains_key(p) {
            return Ok(());
        }
        let seq = self.dirs[dir as usize].log.log_ns(NsChange::SetAttr {
            path: p.to_path_buf(),
        })?;
        o.owed[dir as usize].insert(p.to_path_buf(), seq);
        Ok(())
    }

    /// Sends the owed modification times (files gone meanwhile are skipped:
    /// their removal travels on its own).
    fn settle_owed_locked(&self, o: &mut Order) {
        for dir in 0..self.dirs.len() {
            if o.owed[dir].is_empty() {
                continue;
            }
            let owed = std::mem::take(&mut o.owed[dir]);
            let root = self.dirs[dir].root.as_fd();
            let times = owed.keys().filter_map(|p| stamp(root, p)).collect();
            let upto = owed.values().copied().max().unwrap_or(0);
            if self
                .send_locked(o, dir as u32, false, WireMutation::Times, times)
                .is_some()
                && o.resync_done.is_some()
            {
                // Forgotten once the peer has them durably.
                o.open.add(Clear::NsUpto(dir as u32, upto));
            }
        }
    }

    /// Sends the owed modification times: a written file was closed, or
    /// time passed (see `keep_times`).
    pub fn settle_owed(&self) {
        let mut o = self.order.lock();
        if o.streaming() && !self.fenced.load(Ordering::SeqCst) {
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
    /// generation and returns the mutation and the clears it earns. Returns false once the link is gone.
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
                o.open.add(match c {
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
                o.open.add(Clear::NsUpto(d as u32, *upto));
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
        let a = self.acks.lock();
        let (applied, durable) = (a.applied, a.durable);
        drop(a);
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
                        subtract(r, Some(&hot_here))
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

#[derive(Clone, Copy)]
enum Need {
    Applied,
    Received,
    /// Bytes sent but not applied at most this many.
    Lag(u64),
}

/// `p`'s modification time as the peer is to set it; `None` once `p` is gone.
fn stamp(root: std::os::fd::BorrowedFd<'_>, p: &Path) -> Option<(Vec<u8>, Time)> {
    let fd = entry::open_node(root, p).ok()?;
    let st = crate::fs::sys::stat_fd(fd.as_fd()).ok()?;
    Some((bytes(p.as_os_str()), Time::mtime_of(&st)))
}

fn bytes(s: &std::ffi::OsStr) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    s.as_bytes().to_vec()
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The messages sent, in a channel the test reads.
    impl Outlet for tokio::sync::mpsc::UnboundedSender<Message> {
        fn send(&self, m: &Outgoing<'_>, _now: bool) -> Result<(), String> {
            tokio::sync::mpsc::UnboundedSender::send(self, m.to_message())
                .map_err(|_| "closed".into())
        }
        fn flush(&self) -> Result<(), String> {
            Ok(())
        }
        fn close(&self, _graceful: bool) {}
    }
    use crate::changelog::{ChangeLog, MemChangeLog};
    use std::ops::Range;
    use std::sync::atomic::AtomicBool;

    fn replicator(peer_timeout_ms: u64) -> (Arc<Replicator>, tempfile::TempDir) {
        let root = tempfile::tempdir().unwrap();
        let dir = Dir {
            root: std::fs::File::open(root.path()).unwrap().into(),
            log: Arc::new(MemChangeLog::new(65536).unwrap()),
            cache: Mutex::new(Default::default()),
        };
        let rep = Replicator::new(
            "m",
            Ack::Durable,
            Duration::from_millis(peer_timeout_ms),
            0,
            vec![dir],
        );
        (rep, root)
    }

    #[test]
    fn a_link_whose_writer_stopped_is_unlinked_with_its_bookkeeping() {
        let (rep, _root) = replicator(1000);
        let generation = rep.dirs[0].log.generation().unwrap().current;
        let (_, rx) = current_link(&rep);
        drop(rx);
        let mut o = rep.order.lock();
        assert!(
            rep.send_locked(&mut o, 0, false, WireMutation::Sync, Vec::new())
                .is_none()
        );
        assert!(o.link.is_none() && o.resync_done.is_none() && !o.ready);
        drop(o);
        assert!(!rep.acks.lock().connected);
        assert_eq!(
            rep.dirs[0].log.generation().unwrap().current,
            generation,
            "nothing was acknowledged without the peer yet: same data, same generation"
        );
        assert_eq!(rep.status().peer, "alone");
        rep.alone().unwrap();
        let alone = rep.dirs[0].log.generation().unwrap().current;
        assert_ne!(
            alone, generation,
            "the peer that was current is behind once a durable call is kept without it"
        );
        rep.alone().unwrap();
        assert_eq!(rep.dirs[0].log.generation().unwrap().current, alone, "once");
    }

    /// A durable call made once the current peer's link is gone; asserts
    /// that it is still waiting a moment later (`why` if not).
    fn kept_alone(rep: &Arc<Replicator>, why: &str) -> std::thread::JoinHandle<Result<(), Errno>> {
        let (conn, _rx) = current_link(rep);
        rep.detach(conn, "the peer went away");
        let waiting = {
            let rep = rep.clone();
            std::thread::spawn(move || rep.alone())
        };
        std::thread::sleep(Duration::from_millis(100));
        assert!(!waiting.is_finished(), "{why}");
        waiting
    }

    #[test]
    fn a_node_that_may_not_go_on_alone_keeps_its_generation_until_fenced() {
        let (rep, _root) = replicator(1000);
        let generation = rep.dirs[0].log.generation().unwrap().current;
        rep.set_alone_check(Arc::new(|| false));
        let waiting = kept_alone(&rep, "acknowledged without the peer or quorum");
        rep.fence("lost the lease");
        assert_eq!(waiting.join().unwrap(), Err(Errno::EIO));
        assert_eq!(
            rep.dirs[0].log.generation().unwrap().current,
            generation,
            "a fenced node that kept nothing alone has the peer's generation"
        );
    }

    #[test]
    fn the_first_call_kept_alone_waits_until_the_quorum_knows_its_generation() {
        let (rep, _root) = replicator(1000);
        let log = rep.dirs[0].log.clone();
        let known = Arc::new(AtomicU64::new(log.generation().unwrap().current));
        let k = known.clone();
        rep.set_alone_check(Arc::new(move || {
            log.generation().unwrap().current == k.load(Ordering::SeqCst)
        }));
        let waiting = kept_alone(
            &rep,
            "acknowledged before the quorum knew the new generation",
        );
        let new = rep.dirs[0].log.generation().unwrap().current;
        assert_ne!(new, known.load(Ordering::SeqCst));
        known.store(new, Ordering::SeqCst);
        assert_eq!(waiting.join().unwrap(), Ok(()));
    }

    #[test]
    fn a_link_back_before_anything_was_kept_alone_owes_no_generation() {
        let (rep, _root) = replicator(1000);
        let generation = rep.dirs[0].log.generation().unwrap().current;
        let (conn, _rx) = current_link(&rep);
        rep.detach(conn, "the peer went away");
        let (_, _rx2) = current_link(&rep);
        rep.close_link("done");
        rep.alone().unwrap();
        assert_eq!(rep.dirs[0].log.generation().unwrap().current, generation);
    }

    /// Attaches a link whose peer is current (resync done, all durable).
    fn current_link(rep: &Replicator) -> (u64, tokio::sync::mpsc::UnboundedReceiver<Message>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let conn = rep.attach(Arc::new(tx));
        let mut o = rep.order.lock();
        o.ready = true;
        o.resync_done = Some(0);
        (conn, rx)
    }

    fn write(sink: &ReplicatingSink, offset: u64, data: &[u8]) {
        let m = Mutation::Write {
            path: Some(PathBuf::from("f")),
            offset,
            data,
            sync: false,
        };
        sink.apply(&m, &mut || Ok(())).unwrap();
    }

    #[test]
    fn a_write_whose_send_finds_the_writer_gone_stays_marked() {
        let (rep, _root) = replicator(1000);
        let (conn, rx) = current_link(&rep);
        let sink = rep.sink(0);
        // Seq 1 reaches the channel and the peer makes it durable, so the
        // extent is hot with nothing pending.
        write(&sink, 0, b"first");
        rep.on_ack(conn, 1, 1, 1);
        drop(rx);
        // The writer is gone: this write never leaves, and its bytes must
        // stay marked for the resync (the rest of the extent may go).
        write(&sink, 8192, b"second");
        assert_eq!(rep.status().peer, "alone");
        let id = rep.dirs[0].log.ensure(Path::new("f")).unwrap();
        assert_eq!(rep.dirs[0].log.dirty(id).unwrap(), vec![8192..8198]);
    }

    type Stamps = Vec<(Vec<u8>, Time)>;

    /// The mutations sent so far: what each is, and the times it carries.
    fn sent(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Message>) -> Vec<(String, Stamps)> {
        std::iter::from_fn(|| rx.try_recv().ok())
            .filter_map(|m| match m {
                Message::Mutate {
                    mutation, times, ..
                } => {
                    let kind = format!("{mutation:?}");
                    Some((
                        kind[..kind.find([' ', '{']).unwrap_or(kind.len())].to_string(),
                        times,
                    ))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn writes_owe_their_times_until_a_close_or_another_change() {
        let (rep, root) = replicator(1000);
        std::fs::write(root.path().join("f"), b"abc").unwrap();
        let mtime = || {
            let st = crate::fs::sys::stat_fd(
                std::fs::File::open(root.path().join("f")).unwrap().as_fd(),
            )
            .unwrap();
            vec![(b"f".to_vec(), Time::mtime_of(&st))]
        };
        let (_conn, mut rx) = current_link(&rep);
        let sink = rep.sink(0);
        write(&sink, 0, b"a");
        write(&sink, 1, b"b");
        let got = sent(&mut rx);
        assert_eq!(got.len(), 2);
        assert!(
            got.iter().all(|(k, t)| k == "Write" && t.is_empty()),
            "{got:?}"
        );
        // Closed: the time goes, once.
        sink.closed();
        assert_eq!(sent(&mut rx), vec![("Times".to_string(), mtime())]);
        sink.closed();
        assert_eq!(sent(&mut rx), vec![]);
        // Owed again, and sent before a change of another kind.
        write(&sink, 2, b"c");
        let mkdir = Mutation::Mkdir {
            path: PathBuf::from("d"),
            mode: 0o755,
            umask: 0,
            uid: 0,
            gid: 0,
        };
        sink.apply(&mkdir, &mut || Ok(())).unwrap();
        let kinds: Vec<String> = sent(&mut rx).into_iter().map(|(k, _)| k).collect();
        assert_eq!(kinds, ["Write", "Times", "Mkdir"]);
    }

    #[test]
    fn an_owed_time_is_recorded_until_the_peer_has_it_durably() {
        let (rep, root) = replicator(1000);
        std::fs::write(root.path().join("f"), b"abc").unwrap();
        let log = &rep.dirs[0].log;
        let set_attr = |log: &Arc<dyn ChangeLog>| {
            log.ns_since(0)
                .unwrap()
                .into_iter()
                .filter(|(_, c)| {
                    *c == NsChange::SetAttr {
                        path: PathBuf::from("f"),
                    }
                })
                .count()
        };
        // Sent and made durable: forgotten.
        let (conn, _rx) = current_link(&rep);
        let sink = rep.sink(0);
        write(&sink, 0, b"a");
        assert_eq!(set_attr(log), 1);
        write(&sink, 1, b"b");
        assert_eq!(set_attr(log), 1, "one record per stretch, not per write");
        sink.closed();
        rep.on_ack(conn, 3, 3, 3);
        assert_eq!(set_attr(log), 0);
        // The link goes before the time is sent: the record stays for the
        // resync, which ships the file's times.
        write(&sink, 2, b"c");
        rep.detach(conn, "gone");
        assert_eq!(set_attr(log), 1);
    }

    #[test]
    fn a_truncate_keeps_hot_extents_marked_whole() {
        let (rep, _root) = replicator(1000);
        let (conn, _rx) = current_link(&rep);
        let sink = rep.sink(0);
        write(&sink, 0, b"first");
        rep.on_ack(conn, 1, 1, 1);
        // An O_TRUNC open: the file is emptied, the extent stays hot.
        let truncate = Mutation::SetAttr {
            path: Some(PathBuf::from("f")),
            change: crate::fs::AttrChange {
                size: Some(0),
                ..Default::default()
            },
        };
        sink.apply(&truncate, &mut || Ok(())).unwrap();
        rep.on_ack(conn, 2, 2, 1);
        write(&sink, 0, b"second");
        rep.on_ack(conn, 2, 2, 2);
        // The link drops before the second write is durable: it must stay
        // marked for the resync.
        rep.detach(conn, "gone");
        let id = rep.dirs[0].log.ensure(Path::new("f")).unwrap();
        assert_eq!(rep.dirs[0].log.dirty(id).unwrap(), vec![0..6]);
    }

    #[test]
    fn a_removed_name_of_a_hard_linked_file_hands_its_records_to_the_survivor() {
        let (rep, _root) = replicator(1000);
        let (conn, _rx) = current_link(&rep);
        let sink = rep.sink(0);
        // Written under the name "f" (hot, not yet durable on the peer).
        write(&sink, 4096, b"data");
        let unlink = Mutation::Unlink {
            path: PathBuf::from("f"),
            survivor: Remains::Name(PathBuf::from("g")),
        };
        sink.apply(&unlink, &mut || Ok(())).unwrap();
        rep.detach(conn, "gone");
        let log = &rep.dirs[0].log;
        let g = log
            .resolve(Path::new("g"))
            .unwrap()
            .expect("g has the records");
        assert_eq!(log.dirty(g).unwrap(), vec![4096..4100]);
        assert_eq!(log.resolve(Path::new("f")).unwrap(), None);
    }

    #[test]
    fn a_removed_name_of_a_file_linked_under_unseen_names_asks_for_a_comparison() {
        let (rep, _root) = replicator(1000);
        let (_conn, _rx) = current_link(&rep);
        let sink = rep.sink(0);
        let log = &rep.dirs[0].log;
        // A name without records goes: nothing is owed.
        let unlink = |path: &str| Mutation::Unlink {
            path: PathBuf::from(path),
            survivor: Remains::Unseen,
        };
        sink.apply(&unlink("clean"), &mut || Ok(())).unwrap();
        assert!(!log.compare_needed().unwrap());
        write(&sink, 4096, b"data");
        sink.apply(&unlink("f"), &mut || Ok(())).unwrap();
        assert!(
            log.compare_needed().unwrap(),
            "the records had nowhere to go"
        );
        assert_eq!(log.resolve(Path::new("f")).unwrap(), None);
    }

    #[test]
    fn without_quorum_a_silent_peer_is_not_left_behind_and_a_fence_fails_the_call() {
        let (rep, _root) = replicator(100);
        let quorum = Arc::new(AtomicBool::new(false));
        let q = quorum.clone();
        rep.set_alone_check(Arc::new(move || q.load(Ordering::SeqCst)));
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let conn = rep.attach(Arc::new(tx));
        // The peer never acknowledges seq 1; without quorum the call keeps
        // waiting past peer_timeout rather than being acknowledged alone.
        let waiter = {
            let rep = rep.clone();
            std::thread::spawn(move || rep.wait(conn, 1, Need::Applied))
        };
        std::thread::sleep(Duration::from_millis(400));
        assert!(!waiter.is_finished(), "acknowledged alone without quorum");
        rep.fence("peer and quorum lost");
        assert_eq!(waiter.join().unwrap(), Err(Errno::EIO));

        // With quorum, the same silence leaves the peer behind after the
        // timeout and the call goes on.
        let (rep, _root) = replicator(100);
        let q = quorum.clone();
        rep.set_alone_check(Arc::new(move || q.load(Ordering::SeqCst)));
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let conn = rep.attach(Arc::new(tx));
        quorum.store(true, Ordering::SeqCst);
        let t = Instant::now();
        assert_eq!(rep.wait(conn, 1, Need::Applied), Ok(()));
        assert!(t.elapsed() >= Duration::from_millis(100));
        assert!(!rep.acks.lock().connected || rep.order.lock().link.is_none());

        // A link that went away before the call was made durable: the call
        // waits for quorum (or the fence) too; plain writes do not.
        let (rep, _root) = replicator(10_000);
        let q = quorum.clone();
        rep.set_alone_check(Arc::new(move || q.load(Ordering::SeqCst)));
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let conn = rep.attach(Arc::new(tx));
        quorum.store(false, Ordering::SeqCst);
        rep.detach(conn, "the session ended");
        assert_eq!(rep.wait(conn, 1, Need::Lag(WINDOW)), Ok(()));
        let waiter = {
            let rep = rep.clone();
            std::thread::spawn(move || rep.wait(conn, 1, Need::Applied))
        };
        std::thread::sleep(Duration::from_millis(200));
        assert!(!waiter.is_finished(), "made durable alone without quorum");
        quorum.store(true, Ordering::SeqCst);
        assert_eq!(waiter.join().unwrap(), Ok(()));
    }

    #[test]
    fn subtracting_ranges_keeps_only_what_was_not_marked_again() {
        assert_eq!(subtract(0..100, None), vec![0..100]);
        let one = |r: Range<u64>| vec![r];
        assert_eq!(subtract(0..100, Some(&one(10..20))), vec![0..10, 20..100]);
        assert_eq!(subtract(0..100, Some(&one(0..100))), vec![]);
        assert_eq!(subtract(0..100, Some(&vec![50..200, 0..10])), vec![10..50]);
        assert_eq!(subtract(10..20, Some(&vec![0..5, 30..40])), vec![10..20]);
    }
}
