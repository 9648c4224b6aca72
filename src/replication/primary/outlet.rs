//! Where the primary's messages go (the link to the peer), and how a link
//! fails: the kinds the replicator tells apart.

use std::sync::Arc;
use std::time::Instant;

use crate::replication::wire::{Message, Outgoing};

/// Why the link to the peer cannot go on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The connection failed: a socket or TLS error, or a peer that took
    /// no data and said nothing for `peer_timeout`.
    #[error("{0}")]
    Broken(String),
    /// The peer ended the link itself.
    #[error("peer closed the link: {0}")]
    Closed(String),
    /// The peer sent something a secondary never sends.
    #[error("unexpected message from the peer: {0}")]
    Unexpected(&'static str),
    /// The connection is no longer the replicator's link.
    #[error("link dropped")]
    Dropped,
}

/// The link to the peer, as the replicator uses it.
pub trait Outlet: Send + Sync {
    /// Queues `m`; `now`: someone is about to wait for it, so it goes out
    /// at once, with everything queued before it.
    fn send(&self, m: &Outgoing<'_>, now: bool) -> Result<(), LinkError>;
    /// Writes whatever is queued.
    fn flush(&self) -> Result<(), LinkError>;
    /// Writes what goes out without waiting; the rest waits for a flush.
    fn nudge(&self) {}
    /// Ends the link; `graceful`: what was queued goes out first.
    fn close(&self, graceful: bool);
    /// A waiting call reads the peer's answers itself, until `until` at
    /// most; `None` when another thread is reading them.
    fn read(&self, until: Instant) -> Option<Result<Vec<Message>, LinkError>> {
        let _ = until;
        None
    }
}

pub type Outbound = Arc<dyn Outlet>;
