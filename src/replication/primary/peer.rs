//! What losing the peer means for the write path, decided in one place: a
//! link that fails or is closed, a wait that times out, a call that
//! promises durability with no peer to make it durable, a fence.
//!
//! - A link that *fails* while the peer was current leaves the peer behind:
//!   a new generation says so. In `async` mode it starts at once (changes
//!   were acknowledged without the peer already); otherwise it is *owed*
//!   and started just before the first durable call is acknowledged alone,
//!   so a node that froze, was cut off or lost its lease and acknowledged
//!   nothing alone keeps its peer's generation and comes back as its
//!   SECOND instead of as a split brain.
//! - A link *closed* on purpose (the peer got everything) owes nothing.
//! - With a quorum, a call whose peer stopped acknowledging goes on alone
//!   only while this node may serve alone (it holds the lease, an address
//!   answers); otherwise it waits for the peer or for the fence.
//! - Fenced, every call that would wait for the peer fails with EIO.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use crate::config::Ack;
use crate::fs::Errno;

pub type AloneCheck = Arc<dyn Fn() -> bool + Send + Sync>;

/// What follows from a link that ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unlinked {
    /// Start a new generation now.
    pub new_generation: bool,
    /// Start one before the first durable call acknowledged alone.
    pub owe_generation: bool,
    /// What was queued still goes out.
    pub graceful: bool,
}

/// The link ended; `failed`: not closed on purpose; `was_current`: the
/// peer held everything up to the end of its resync.
pub fn unlinked(ack: Ack, failed: bool, was_current: bool) -> Unlinked {
    let behind = failed && was_current;
    Unlinked {
        new_generation: behind && ack == Ack::Async,
        owe_generation: behind && ack != Ack::Async,
        graceful: !failed,
    }
}

/// What a call does when the peer did not answer within `peer_timeout`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnTimeout {
    /// Fail the call: this node is fenced.
    Fail,
    /// Look again shortly: no quorum to go on alone, the fence may come.
    KeepWaiting,
    /// Leave the peer behind and go on.
    DropPeer,
}

pub fn on_timeout(fenced: bool, may_go_alone: bool) -> OnTimeout {
    match (fenced, may_go_alone) {
        (true, _) => OnTimeout::Fail,
        (false, false) => OnTimeout::KeepWaiting,
        (false, true) => OnTimeout::DropPeer,
    }
}

/// The state behind those decisions.
pub struct PeerLoss {
    ack: Ack,
    fenced: AtomicBool,
    /// With a quorum: whether this node may go on without its peer.
    alone_ok: Option<AloneCheck>,
    /// A new generation is owed (see the module's comment).
    owe_generation: Mutex<bool>,
    /// Said before a call sleeps.
    blocking: fn(),
}

impl PeerLoss {
    pub fn new(ack: Ack, alone_ok: Option<AloneCheck>, blocking: fn()) -> Self {
        Self {
            ack,
            fenced: AtomicBool::new(false),
            alone_ok,
            owe_generation: Mutex::new(false),
            blocking,
        }
    }

    pub fn fenced(&self) -> bool {
        self.fenced.load(Ordering::SeqCst)
    }

    pub fn fence(&self) {
        self.fenced.store(true, Ordering::SeqCst);
    }

    /// Whether this node may go on without its peer now.
    pub fn may_go_alone(&self) -> bool {
        self.alone_ok.as_ref().is_none_or(|ok| ok())
    }

    /// A link is up: the peer resynchronises from the change log and then
    /// shares this node's generation.
    pub fn attached(&self) {
        *self.owe_generation.lock() = false;
    }

    /// The link ended: what follows (a generation owed is remembered here).
    pub fn unlinked(&self, failed: bool, was_current: bool) -> Unlinked {
        let u = unlinked(self.ack, failed, was_current);
        if u.owe_generation {
            *self.owe_generation.lock() = true;
        }
        u
    }

    pub fn on_timeout(&self) -> OnTimeout {
        on_timeout(self.fenced(), self.may_go_alone())
    }

    /// Whether a call that promises durability (`durable_call`) waits for
    /// the peer in this ack mode, rather than only for room in the stream.
    pub fn waits_for_peer(&self, durable_call: bool) -> bool {
        durable_call && self.ack != Ack::Async
    }

    /// A call that promises durability finds no peer to make it durable:
    /// it returns once this node may serve alone, or once a link is back
    /// (`linked`: the peer then resynchronises and is behind until it is
    /// done, so it cannot take over meanwhile), or with EIO once fenced.
    /// The owed generation is started first (`new_generation`) and the
    /// quorum looked at again, so a quorum that keeps the newest generation
    /// (witness, etcd) learns of it before anything is acknowledged under it.
    pub fn alone(&self, linked: &dyn Fn() -> bool, new_generation: &dyn Fn()) -> Result<(), Errno> {
        loop {
            if self.fenced() {
                return Err(Errno::EIO);
            }
            if linked() {
                return Ok(());
            }
            if self.may_go_alone() {
                let mut owe = self.owe_generation.lock();
                if std::mem::take(&mut *owe) {
                    new_generation();
                    continue;
                }
                return Ok(());
            }
            (self.blocking)();
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_link_to_a_current_peer_starts_or_owes_a_generation() {
        for ack in [Ack::Durable, Ack::Received, Ack::Async] {
            let u = unlinked(ack, true, true);
            assert_eq!(u.new_generation, ack == Ack::Async, "{ack}");
            assert_eq!(u.owe_generation, ack != Ack::Async, "{ack}");
            assert!(!u.graceful);
            for (failed, current) in [(true, false), (false, true), (false, false)] {
                let u = unlinked(ack, failed, current);
                assert!(
                    !u.new_generation && !u.owe_generation,
                    "{ack} {failed} {current}"
                );
                assert_eq!(u.graceful, !failed);
            }
        }
    }

    #[test]
    fn a_timed_out_call_goes_on_alone_only_with_quorum_and_fails_once_fenced() {
        assert_eq!(on_timeout(true, true), OnTimeout::Fail);
        assert_eq!(on_timeout(true, false), OnTimeout::Fail);
        assert_eq!(on_timeout(false, false), OnTimeout::KeepWaiting);
        assert_eq!(on_timeout(false, true), OnTimeout::DropPeer);
    }

    #[test]
    fn an_owed_generation_is_started_once_before_going_on_alone() {
        let p = PeerLoss::new(Ack::Durable, None, || {});
        p.unlinked(true, true);
        let started = std::sync::atomic::AtomicU32::new(0);
        let new = || {
            started.fetch_add(1, Ordering::SeqCst);
        };
        assert_eq!(p.alone(&|| false, &new), Ok(()));
        assert_eq!(p.alone(&|| false, &new), Ok(()));
        assert_eq!(started.load(Ordering::SeqCst), 1);
        p.unlinked(true, true);
        p.attached();
        assert_eq!(p.alone(&|| false, &new), Ok(()));
        assert_eq!(
            started.load(Ordering::SeqCst),
            1,
            "a link came back: nothing owed"
        );
        p.fence();
        assert_eq!(p.alone(&|| true, &new), Err(Errno::EIO));
    }
}
