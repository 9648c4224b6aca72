//! What the primary's replication reports: its state, a resync's progress
//! and a verify's, as the control socket and the CLI show them.

use serde::{Deserialize, Serialize};

/// Live state of a resync, for status and `tandem resync`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ResyncProgress {
    pub running: bool,
    pub files_total: u64,
    pub files_done: u64,
    pub bytes_total: u64,
    pub bytes_done: u64,
    /// File contents actually sent (marked ranges past a file's end are not).
    #[serde(default)]
    pub bytes_sent: u64,
    /// Namespace records shipped.
    pub names: u64,
    /// The most it may ship a second (`replication.resync_max_rate`; 0: no cap).
    #[serde(default)]
    pub max_rate: u64,
    /// The most it keeps while the application writes
    /// (`replication.resync_min_rate`).
    #[serde(default)]
    pub min_rate: u64,
    /// Paused by an operator (`tandem resync M --pause`): nothing ships.
    /// Kept across restarts: the next resync starts paused.
    #[serde(default)]
    pub paused: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_since_unix_ms: Option<u64>,
    /// While running: "running", "yielding" (the application writes: held
    /// to `min_rate`) or "paused".
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub state: String,
    /// Bytes a second over the last two seconds, while running.
    #[serde(default)]
    pub rate: u64,
    /// Seconds left at that rate (none while paused or stalled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<u64>,
    pub started_unix_ms: u64,
    pub finished_unix_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReplicationStatus {
    pub role: String,
    /// connected | resyncing | alone
    pub peer: String,
    pub ack: String,
    pub sent: u64,
    pub applied: u64,
    pub durable: u64,
    pub dirty_bytes: u64,
    pub dirty_files: u64,
    pub bytes_replicated: u64,
    pub resync: ResyncProgress,
    pub last_error: Option<String>,
    #[serde(default)]
    pub verify: VerifyState,
    /// Extents of the activity log marked whole while the peer is current.
    #[serde(default)]
    pub hot_extents: u64,
    #[serde(default)]
    pub wire: WireCounts,
    /// The link's protocol version last agreed with the peer.
    #[serde(default)]
    pub protocol: Option<u8>,
    /// The peer's release, as its Hello said (`None`: a release that does
    /// not say, or no link yet).
    #[serde(default)]
    pub peer_version: Option<String>,
}

/// What the stream to the peer cost, since this process started: how the
/// sync path behaves, for `/metrics` and the benchmarks.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct WireCounts {
    /// Writes of queued frames to the socket.
    pub flushes: u64,
    /// Acknowledgements received (primary) or sent (secondary).
    pub acks: u64,
    /// Calls that waited for the peer to make them durable (or to receive
    /// them), and how long in all, from the end of their local part
    /// (the local fdatasync) to the peer's acknowledgement.
    pub peer_waits: u64,
    pub peer_wait_us: u64,
}

/// [`WireCounts`] as they are counted.
#[derive(Debug, Default)]
pub struct Tally {
    pub flushes: std::sync::atomic::AtomicU64,
    pub acks: std::sync::atomic::AtomicU64,
    pub peer_waits: std::sync::atomic::AtomicU64,
    pub peer_wait_us: std::sync::atomic::AtomicU64,
}

impl Tally {
    pub fn counts(&self) -> WireCounts {
        use std::sync::atomic::Ordering::Relaxed;
        WireCounts {
            flushes: self.flushes.load(Relaxed),
            acks: self.acks.load(Relaxed),
            peer_waits: self.peer_waits.load(Relaxed),
            peer_wait_us: self.peer_wait_us.load(Relaxed),
        }
    }

    pub fn count(n: &std::sync::atomic::AtomicU64, by: u64) {
        n.fetch_add(by, std::sync::atomic::Ordering::Relaxed);
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Difference {
    /// Index of the module directory.
    pub dir: u32,
    pub path: String,
    /// What differs: "only here", "only on the peer", "type", "mode",
    /// "owner", "size", "mtime", "xattrs", "content".
    pub what: Vec<String>,
    /// Byte ranges of this node's file whose chunks the peer lacks.
    pub ranges: Vec<(u64, u64)>,
    /// The path as the wire carries it.
    #[serde(skip)]
    pub(super) raw: Vec<u8>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct VerifyReport {
    pub files: u64,
    pub bytes: u64,
    pub bytes_hashed: u64,
    pub differences: Vec<Difference>,
    pub elapsed_ms: u64,
    /// Differences found by a first pass and shipped before this report.
    pub repaired: u64,
    /// The differences were checked again on both copies at one point of
    /// the stream (snapshots taken for the check, dropped after).
    #[serde(default)]
    pub at_cut: bool,
    /// Names that differed in the first pass and were checked again.
    #[serde(default)]
    pub rechecked: u64,
}

/// Live state of a verify, for status and `tandem verify`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct VerifyState {
    pub running: bool,
    pub phase: String,
    pub files: u64,
    pub bytes_hashed: u64,
    pub bytes_cached: u64,
    pub report: Option<VerifyReport>,
    pub error: Option<String>,
}

/// Bytes as a person reads them: `12.0 MiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
