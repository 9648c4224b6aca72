//! The peer's acknowledgements on the current connection, and waiting for
//! them: mechanism only. What a wait that ends without the peer means is
//! decided by the caller (see `peer.rs`).
//!
//! A waiting call reads the peer's answer itself when no other thread does,
//! so the answer wakes one thread instead of two (the link's reader, then
//! the caller); calls that find another thread reading sleep on the
//! condition variable and are woken by it.
//!
//! Lock order: the stream's order lock may be held while this tracker's
//! lock is taken, never the other way round.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use prometheus_client::metrics::histogram::Histogram;

use super::outlet::{LinkError, Outbound};
use crate::replication::status::Tally;
use crate::replication::wire::Message;

/// What a call waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    Applied,
    Received,
    /// Bytes sent but not applied at most this many.
    Lag(u64),
}

/// How a wait ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Waited {
    Done,
    /// The connection went (or was never the link).
    PeerGone,
    /// The deadline passed with the need unmet; the link is still up.
    TimedOut,
    /// `halted` said so (the node was fenced).
    Halted,
    /// Sending what was queued failed: the caller drops the link.
    SendFailed(LinkError),
    /// Reading the peer's answers failed, or the peer ended the link.
    ReadFailed(LinkError),
}

/// How long a waiting call reads, or sleeps while another reads, before it
/// looks again (at the fence, its deadline).
const LEAD_SLICE: Duration = Duration::from_millis(20);
const FOLLOW_SLICE: Duration = Duration::from_millis(2);

#[derive(Default)]
struct State {
    /// What a waiter flushes before it sleeps, and reads from.
    outlet: Option<Outbound>,
    conn: u64,
    connected: bool,
    received: u64,
    applied: u64,
    durable: u64,
    /// Bytes sent but not yet applied by the peer, for the lag bounds of
    /// `async` and of resync: (seq, cumulative bytes up to it).
    unapplied: VecDeque<(u64, u64)>,
    sent_total: u64,
    applied_total: u64,
}

impl State {
    fn linked(&self, conn: u64) -> bool {
        self.conn == conn && self.connected
    }

    fn met(&self, seq: u64, need: Need) -> bool {
        match need {
            Need::Applied => self.applied >= seq,
            Need::Received => self.received >= seq,
            Need::Lag(limit) => self.sent_total - self.applied_total <= limit,
        }
    }
}

pub struct AckTracker {
    state: Mutex<State>,
    acked: Condvar,
    tally: std::sync::Arc<Tally>,
    /// How long calls that promise durability waited for the peer.
    latency: Option<Histogram>,
    /// Said before a call sleeps (the mount's other workers go on meanwhile).
    blocking: fn(),
}

impl AckTracker {
    pub fn new(tally: std::sync::Arc<Tally>, latency: Option<Histogram>, blocking: fn()) -> Self {
        Self {
            state: Mutex::default(),
            acked: Condvar::new(),
            tally,
            latency,
            blocking,
        }
    }

    /// Connection `conn` is the link from now on; `first` is the first
    /// sequence number it carries.
    pub fn attach(&self, conn: u64, outlet: Outbound, first: u64) {
        let mut s = self.state.lock();
        *s = State {
            outlet: Some(outlet),
            conn,
            connected: true,
            received: first - 1,
            applied: first - 1,
            durable: first - 1,
            ..State::default()
        };
    }

    /// Connection `conn` is gone: whoever waits on it wakes.
    pub fn detach(&self, conn: u64) {
        let mut s = self.state.lock();
        if s.conn == conn {
            s.connected = false;
            s.outlet = None;
        }
        self.acked.notify_all();
    }

    /// Wakes every waiter, to look at what changed (a fence).
    pub fn wake(&self) {
        let _s = self.state.lock();
        self.acked.notify_all();
    }

    pub fn still_linked(&self, conn: u64) -> bool {
        self.state.lock().linked(conn)
    }

    /// What the peer holds durably.
    pub fn durable(&self) -> u64 {
        self.state.lock().durable
    }

    /// (applied, durable).
    pub fn progress(&self) -> (u64, u64) {
        let s = self.state.lock();
        (s.applied, s.durable)
    }

    /// `seq` went out carrying `bytes` (for the lag bounds).
    pub fn sent(&self, seq: u64, bytes: u64) {
        let mut s = self.state.lock();
        s.sent_total += bytes;
        let total = s.sent_total;
        s.unapplied.push_back((seq, total));
    }

    /// An acknowledgement on `conn`; false once `conn` is not the link.
    pub fn record(&self, conn: u64, received: u64, applied: u64, durable: u64) -> bool {
        let mut s = self.state.lock();
        if !s.linked(conn) {
            return false;
        }
        Tally::count(&self.tally.acks, 1);
        s.received = s.received.max(received);
        s.applied = s.applied.max(applied);
        s.durable = s.durable.max(durable);
        while let Some(&(seq, total)) = s.unapplied.front() {
            if seq > s.applied {
                break;
            }
            s.applied_total = total;
            s.unapplied.pop_front();
        }
        self.acked.notify_all();
        true
    }

    /// Takes what the peer sent on `conn`; why the link ends, if it does.
    pub fn take(&self, conn: u64, msgs: Vec<Message>) -> Result<(), LinkError> {
        for m in msgs {
            match m {
                Message::Ack {
                    received,
                    applied,
                    durable,
                } => {
                    if !self.record(conn, received, applied, durable) {
                        return Err(LinkError::Dropped);
                    }
                }
                Message::Close { reason } => return Err(LinkError::Closed(reason)),
                other => return Err(LinkError::Unexpected(other.kind())),
            }
        }
        Ok(())
    }

    /// Waits until `seq` meets `need` on `conn`, or `deadline`, or
    /// `halted()`. Before it sleeps it flushes what is queued (what it
    /// waits for may be there). At the deadline it takes one last look at
    /// what the peer sent: after this node was frozen past the deadline,
    /// the peer's answer may be waiting in the socket, and the peer is not
    /// late for it. Whatever the path, it returns by the deadline (plus one
    /// read slice at most).
    pub fn wait(
        &self,
        conn: u64,
        seq: u64,
        need: Need,
        deadline: Instant,
        halted: &dyn Fn() -> bool,
    ) -> Waited {
        let t0 = Instant::now();
        let mut flushed = false;
        let mut last_look = false;
        loop {
            if halted() {
                return Waited::Halted;
            }
            let s = self.state.lock();
            if !s.linked(conn) {
                return Waited::PeerGone;
            }
            if s.met(seq, need) {
                drop(s);
                self.count_wait(need, t0.elapsed());
                return Waited::Done;
            }
            let Some(outlet) = s.outlet.clone() else {
                return Waited::PeerGone;
            };
            if !flushed {
                flushed = true;
                drop(s);
                if let Err(e) = outlet.flush() {
                    return Waited::SendFailed(e);
                }
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                if last_look {
                    return Waited::TimedOut;
                }
                last_look = true;
            }
            // Not under the lock: the mount's other worker may take the
            // next request meanwhile, and the reader may need the lock.
            drop(s);
            (self.blocking)();
            let until = deadline.max(now).min(now + LEAD_SLICE);
            if let Err(e) = self.await_reply(conn, &*outlet, until) {
                return Waited::ReadFailed(e);
            }
        }
    }

    /// Reads the peer's answers until `until`, or, while another thread
    /// reads them, sleeps until it wakes this one (or a short slice: it may
    /// leave without a word, and this thread then takes over).
    fn await_reply(
        &self,
        conn: u64,
        outlet: &dyn super::outlet::Outlet,
        until: Instant,
    ) -> Result<(), LinkError> {
        match outlet.read(until) {
            Some(read) => {
                let r = read.and_then(|msgs| self.take(conn, msgs));
                // Calls that waited while this one read take over the reading.
                let _s = self.state.lock();
                self.acked.notify_all();
                r
            }
            None => {
                // Never past the caller's deadline by more than a slice,
                // and never without a short sleep (no busy loop).
                let s = &mut self.state.lock();
                if s.linked(conn) {
                    self.acked.wait_until(s, Instant::now() + FOLLOW_SLICE);
                }
                Ok(())
            }
        }
    }

    fn count_wait(&self, need: Need, waited: Duration) {
        if let Need::Applied | Need::Received = need {
            Tally::count(&self.tally.peer_waits, 1);
            Tally::count(&self.tally.peer_wait_us, waited.as_micros() as u64);
            if let Some(h) = &self.latency {
                h.observe(waited.as_secs_f64());
            }
        }
    }
}
