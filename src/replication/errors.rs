//! Why a replication connection, an introduction or a session fails: the
//! kinds the link's callers tell apart (retry, drop the peer, report). Kept
//! apart from the code that raises them, which uses them on both sides of
//! the link.

use std::net::SocketAddr;

use super::frame::FrameError;
use super::primary::LinkError;
use super::tls::TlsError;
use crate::changelog::ChangeLogError;

/// Why a replication connection cannot be used (any more): kinds that tell
/// a peer that went away from one that failed or stopped answering.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// Closed on this side.
    #[error("the connection was closed")]
    Closed,
    /// The peer ended the connection cleanly.
    #[error("connection closed by the peer")]
    PeerClosed,
    /// The connection ended in the middle of a frame.
    #[error("connection lost")]
    Lost,
    #[error("TLS: {0}")]
    Tls(String),
    /// A socket call failed: `op` says which.
    #[error("{op}: {why}")]
    Io { op: &'static str, why: String },
    /// The peer took nothing and said nothing for `patience_ms`.
    #[error("the peer took no data and said nothing for {patience_ms} ms")]
    Stuck { patience_ms: u128 },
    /// What came in, or was to go out, is not a frame: the stream cannot
    /// be trusted.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The connection could not be handed to the channel.
    #[error("taking over the connection: {0}")]
    TakeOver(String),
}

impl ChannelError {
    pub(crate) fn io(op: &'static str, e: impl std::fmt::Display) -> Self {
        ChannelError::Io {
            op,
            why: e.to_string(),
        }
    }

    /// The peer ended the connection, cleanly or between frames: nothing
    /// failed on the way.
    pub fn is_end(&self) -> bool {
        matches!(self, ChannelError::PeerClosed | ChannelError::Lost)
    }
}

/// Every failure of the channel breaks the link; what the peer says
/// (closing it, or a message out of place) the replicator tells apart itself.
impl From<ChannelError> for LinkError {
    fn from(e: ChannelError) -> Self {
        LinkError::Broken(e.to_string())
    }
}

/// Why a peer's introduction is refused: it is not the peer this node
/// expects, or does not replicate the same thing. Said back to the peer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    #[error("expected Hello as the first message")]
    NotHello,
    #[error("peer belongs to cluster {theirs:?}, this node to {ours:?}")]
    Cluster { theirs: String, ours: String },
    #[error("peer says it is {said:?}, expected {expected:?}")]
    Node { said: String, expected: String },
    #[error("expected one module per connection, got {0}")]
    Modules(usize),
    #[error("peer answered for module {got:?}, expected {want:?}")]
    Module { got: String, want: String },
    #[error("module {0:?} is not replicated to this node as secondary")]
    NotSecondary(String),
    #[error("module {module}: peer replicates {theirs} directories, this node {ours}")]
    Dirs {
        module: String,
        theirs: u32,
        ours: usize,
    },
    /// The two releases are too far apart; names the node to upgrade.
    #[error(
        "no protocol version in common: {me} speaks {}, {peer} speaks {}; upgrade {}",
        ranges.ours,
        ranges.theirs,
        if ranges.theirs.highest < ranges.ours.lowest { peer } else { me }
    )]
    Versions {
        me: String,
        peer: String,
        ranges: crate::versions::NoShared,
    },
}

/// Why a replication session could not start, or why it ended, on either
/// side: what the link's retries report, and what a secondary says back.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// No answer in time; says to what.
    #[error("{0}")]
    Timeout(&'static str),
    #[error("connect: {0}")]
    Connect(std::io::Error),
    /// This node's credentials cannot be used.
    #[error(transparent)]
    Credentials(#[from] TlsError),
    #[error("TLS handshake: {0}")]
    Handshake(std::io::Error),
    #[error("refused at the TLS handshake: {0}")]
    HandshakeRefused(std::io::Error),
    /// The other end is not the configured peer (named).
    #[error("the server did not present {0}'s certificate")]
    ServerNotPeer(String),
    #[error("refused: the client did not present {0}'s certificate")]
    ClientNotPeer(String),
    /// The peer's introduction does not match this node's.
    #[error(transparent)]
    Hello(#[from] HelloError),
    /// The peer refused this node's introduction.
    #[error("refused by the peer: {0}")]
    Refused(String),
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// The peer sent what the protocol does not allow.
    #[error("{0}")]
    Protocol(String),
    #[error("change log: {0}")]
    ChangeLog(#[from] ChangeLogError),
    /// The replicator ended the link (the peer closed it, or it was dropped).
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("peer silent for {ms} ms")]
    Silent { ms: u128 },
    /// This node ends the session; says where it was.
    #[error("{0}")]
    Stopped(&'static str),
    /// A task of the session failed.
    #[error("{what}: {why}")]
    Task { what: &'static str, why: String },
    /// A newer session of the module took over; says why.
    #[error("{0}")]
    Replaced(&'static str),
    #[error("primary closed the link: {0}")]
    PrimaryClosed(String),
    /// The secondary cannot apply a change, or make it durable.
    #[error("cannot apply seq {seq}: {why}")]
    Apply { seq: u64, why: String },
    #[error("cannot open the directories to sync them: {0}")]
    SyncHandles(std::io::Error),
    #[error("cannot make applied changes durable (syncfs failed)")]
    SyncFailed,
    /// This node answers no relayed command.
    #[error("this node takes no relayed commands (it runs with fixed roles)")]
    NoRelay,
    /// The peer refused a relayed command.
    #[error("refused: {0}")]
    RelayRefused(String),
    #[error("connect to {addr}: {why}")]
    ConnectTo {
        addr: SocketAddr,
        why: std::io::Error,
    },
    /// The manifest of a directory here could not be made.
    #[error("manifest: {0}")]
    Manifest(std::io::Error),
    /// A task of the session panicked or was cancelled.
    #[error("{0}")]
    Join(#[from] tokio::task::JoinError),
}

/// What the peer sent that the protocol does not allow.
pub fn protocol(why: impl std::fmt::Display) -> SessionError {
    SessionError::Protocol(why.to_string())
}
