//! The resync's entry points into the stream: items built under the order
//! lock (so they read the local tree consistently with the stream), the
//! stream held to itself while the namespace ships, and the end of a resync.

use std::ops::Range;
use std::time::{Duration, Instant};

use parking_lot::MutexGuard;

use super::acks::Need;
use super::clears::Clear;
use super::order::Order;
use super::stream::Stream;
use crate::changelog::FileId;
use crate::replication::dir::Dir;
use crate::replication::wire::{Message, Outgoing, Time, WireMutation};

/// What a resync item lets the change log forget once durable on the peer.
pub enum ResyncClear {
    Range(FileId, Range<u64>),
    Size(FileId),
}

/// A resync item: the mutation, the times it carries, what it earns.
pub type Item = (WireMutation, Vec<(Vec<u8>, Time)>, Vec<ResyncClear>);

/// Ships one item built by `build` (given the names generation): how long
/// it waited for room in the resync's window (so live writes never queue
/// behind a whole resync), or None once the link is gone.
pub fn ship(
    s: &Stream,
    conn: u64,
    dir: u32,
    window: u64,
    build: impl FnOnce(&Dir, u64) -> Option<Item>,
) -> Option<Duration> {
    let seq = {
        let mut o = s.lock();
        if !o.linked(conn) {
            return None;
        }
        let Some((m, times, clears)) = build(&s.dirs[dir as usize], o.names_gen) else {
            return Some(Duration::ZERO);
        };
        let (_, seq) = s.send(&mut o, dir, true, m, times)?;
        for c in clears {
            o.clears.add(match c {
                ResyncClear::Range(id, r) => Clear::Range(dir, id, r),
                ResyncClear::Size(id) => Clear::Size(dir, id),
            });
        }
        seq
    };
    let started = Instant::now();
    s.wait(conn, seq, Need::Lag(window)).ok()?;
    s.lock().linked(conn).then(|| started.elapsed())
}

/// Waits until what was sent on `conn` is within `window` of what the peer
/// applied, as long as the peer works through it (see
/// [`Stream::wait_working`]); false once the link is gone.
pub fn settle(s: &Stream, conn: u64, window: u64) -> bool {
    s.wait_working(conn, window).is_ok() && s.lock().linked(conn)
}

/// The stream held by a resync: no live mutation is applied or sent
/// meanwhile.
pub struct Exclusive<'r> {
    pub(super) stream: &'r Stream,
    pub(super) o: MutexGuard<'r, Order>,
}

impl Exclusive<'_> {
    pub fn dir(&self, dir: u32) -> &Dir {
        &self.stream.dirs[dir as usize]
    }

    /// Sends one item; false once the link is gone.
    pub fn ship(&mut self, dir: u32, m: WireMutation) -> bool {
        self.stream
            .send(&mut self.o, dir, true, m, Vec::new())
            .is_some()
    }

    /// The peer has every name: live mutations flow from now on.
    pub fn ready(&mut self) {
        self.o.ready = true;
    }
}

/// The resync has shipped everything: namespace records up to `ns_upto`
/// (per dir) may go once durable, and from now on live records clear too.
pub fn finish(
    s: &Stream,
    conn: u64,
    ns_upto: &[u64],
    generation: crate::changelog::Generation,
) -> bool {
    let mut o = s.lock();
    if !o.linked(conn) {
        return false;
    }
    // One sync makes every directory durable on the peer.
    if s.send(&mut o, 0, true, WireMutation::Sync, Vec::new())
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
            s.unlink_locked(&mut o, conn, &format!("sending to the peer: {e}"), true);
            false
        }
    }
}
