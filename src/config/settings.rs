//! The validated configuration. Everything here has been checked: ranges, references
//! between sections and, unless disabled, the replicated directories on disk.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::net::{Host, HostPort, HttpUrl, IpPrefix};

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub cluster: Cluster,
    pub nodes: [Node; 2],
    pub heartbeat: Heartbeat,
    pub replication: Replication,
    pub daemon: Daemon,
    pub api: Api,
    pub modules: Vec<Module>,
}

/// The operators' HTTPS interface: the API, the web console, `/metrics`.
#[derive(Debug, Clone, PartialEq)]
pub struct Api {
    pub enabled: bool,
    /// Where it listens: this address (default: the node's own).
    pub address: Option<Host>,
    pub port: u16,
    /// The certificate and key it presents (default: the node's, from
    /// `tandem init`, which names the node's address).
    pub cert: Option<(PathBuf, PathBuf)>,
}

impl Settings {
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub fn module(&self, name: &str) -> Option<&Module> {
        self.modules.iter().find(|m| m.name == name)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    pub name: String,
    pub quorum: Quorum,
    /// Node that takes the primary role back once it is up to date.
    pub preferred_primary: Option<String>,
    /// Maintenance left on longer than this is reported as overdue
    /// (status, `/metrics`, the alert rules).
    pub maintenance_alert_after: Duration,
}

/// How a node that lost its peer decides whether it may serve.
#[derive(Debug, Clone, PartialEq)]
pub enum Quorum {
    /// Two-node behaviour: serve alone. Unsafe when the nodes are isolated from each other.
    None,
    /// Serve alone only while one of these addresses answers.
    Ping(Vec<IpAddr>),
    /// Serve alone only while holding the lease of a `tandem witness`.
    Witness(HostPort),
    /// Serve alone only while holding a lease in this etcd cluster.
    Etcd(Etcd),
}

/// How to reach the etcd cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct Etcd {
    /// Client URLs, all `http://` or all `https://`.
    pub urls: Vec<HttpUrl>,
    /// With `https://`: the CA that signed the servers' certificates.
    pub ca: Option<PathBuf>,
    /// A client certificate and its key (etcd's `--client-cert-auth`).
    pub cert: Option<(PathBuf, PathBuf)>,
    /// etcd's authentication: the user, and the file holding its password.
    pub user: Option<(String, PathBuf)>,
}

impl Quorum {
    pub fn kind(&self) -> &'static str {
        match self {
            Quorum::None => "none",
            Quorum::Ping(_) => "ping",
            Quorum::Witness(_) => "witness",
            Quorum::Etcd(_) => "etcd",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub name: String,
    /// Replication and control address; the port is `replication.port`.
    pub address: Host,
    /// Heartbeat paths, paired by position with the peer's list.
    pub heartbeat: Vec<Host>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Heartbeat {
    pub port: u16,
    pub interval: Duration,
    /// The peer is lost when every path has been silent this long.
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Replication {
    pub port: u16,
    pub peer_timeout: Duration,
    pub compression: Compression,
    /// Unit of change tracking and resync, in bytes (a power of two).
    pub chunk_size: u32,
    /// How far an `async` module may fall behind, in bytes.
    pub async_max_lag: u64,
    /// Bytes a second a resync may ship at most (0: no cap).
    pub resync_max_rate: u64,
    /// Bytes a second a resync keeps while the application writes (0: it
    /// waits for the application to pause).
    pub resync_min_rate: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Compress only when it pays off (slow links, compressible data).
    Auto,
    Zstd,
    Off,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Daemon {
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub tls_dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Module {
    pub name: String,
    pub dirs: Vec<PathBuf>,
    pub exclude: Vec<String>,
    pub ack: Ack,
    pub failover: Failover,
    pub scripts: Scripts,
    pub checkers: Vec<Checker>,
    /// This module's preferred primary, over `cluster.preferred_primary`:
    /// modules preferring different nodes serve on both (active/active).
    pub preferred_primary: Option<String>,
    /// This node's snapshot schedule and retention for the module.
    pub snapshots: SnapshotPolicy,
}

/// `[module.snapshots]`: decided by each node for the snapshots it holds
/// (the two nodes' files may differ).
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotPolicy {
    /// Take a scheduled snapshot this often (`None`: no schedule).
    pub every: Option<std::time::Duration>,
    /// Scheduled snapshots kept: the newest of each of the last N hours,
    /// days and weeks (and always the newest one).
    pub keep_hourly: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    /// Automatic snapshots taken before resyncs that are kept.
    pub keep_before_resync: u32,
    /// How long one is kept after its resync ended: while held, every
    /// first overwrite on this node keeps the old bytes first.
    pub keep_before_resync_for: std::time::Duration,
    /// Bytes all snapshots of the module may hold here; past it the oldest
    /// scheduled ones go first.
    pub budget: Option<u64>,
    /// Sync every capture before its change (`capture_sync =
    /// "before-change"`): snapshots survive a power loss, every first
    /// overwrite waits for a disk flush. Default: synced in the background.
    pub sync_before_change: bool,
    /// Run on the serving node before and after an operator's or a
    /// scheduled snapshot: an application-consistent point.
    pub pre_snapshot: Option<PathBuf>,
    pub post_snapshot: Option<PathBuf>,
}

impl Default for SnapshotPolicy {
    fn default() -> Self {
        SnapshotPolicy {
            every: None,
            keep_hourly: 24,
            keep_daily: 7,
            keep_weekly: 4,
            keep_before_resync: 3,
            keep_before_resync_for: std::time::Duration::from_secs(600),
            budget: None,
            sync_before_change: false,
            pre_snapshot: None,
            post_snapshot: None,
        }
    }
}

/// When a write is acknowledged to the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// After the peer has written it to stable storage.
    Durable,
    /// After the peer has received it.
    Received,
    /// At once; the peer may lag by up to `replication.async_max_lag`.
    Async,
}

/// How clients are moved to the serving node.
#[derive(Debug, Clone, PartialEq)]
pub enum Failover {
    /// Virtual addresses moved between the nodes on one LAN.
    Vip {
        addresses: Vec<IpPrefix>,
        /// Interface to add them to; `None` picks the one whose subnet matches.
        interface: Option<String>,
        announce: Announce,
    },
    /// Health endpoint that a load balancer probes, on this port.
    Lb {
        port: u16,
        /// HTTPS with the node's cluster certificate instead of plain HTTP.
        tls: bool,
    },
}

/// How a node that takes the virtual addresses tells the LAN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Announce {
    /// Gratuitous ARPs / neighbour advertisements sent at once…
    pub count: u32,
    /// …this far apart…
    pub interval: Duration,
    /// …then one every `refresh` while the addresses are held (`None`: never).
    pub refresh: Option<Duration>,
}

impl Failover {
    pub fn kind(&self) -> &'static str {
        match self {
            Failover::Vip { .. } => "vip",
            Failover::Lb { .. } => "lb",
        }
    }
}

/// Application control scripts, named after the roles they run in.
#[derive(Debug, Clone, PartialEq)]
pub struct Scripts {
    pub prestart: Option<PathBuf>,
    pub start_prim: Option<PathBuf>,
    pub stop_prim: Option<PathBuf>,
    pub start_both: Option<PathBuf>,
    pub stop_both: Option<PathBuf>,
    pub poststop: Option<PathBuf>,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Checker {
    pub check: Check,
    pub interval: Duration,
    pub timeout: Duration,
    /// Local restarts allowed within `window` before failing over.
    pub restarts: u32,
    pub window: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    Process(ProcessMatch),
    Tcp(HostPort),
    /// With an https:// URL, the server's certificate is checked against
    /// `ca`, or the system's CAs.
    Http {
        url: HttpUrl,
        expect_status: u16,
        ca: Option<PathBuf>,
    },
    Script(PathBuf),
    Interface(String),
    Witness,
}

impl Check {
    pub fn kind(&self) -> &'static str {
        match self {
            Check::Process(_) => "process",
            Check::Tcp(_) => "tcp",
            Check::Http { .. } => "http",
            Check::Script(_) => "script",
            Check::Interface(_) => "interface",
            Check::Witness => "witness",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ProcessMatch {
    Pidfile(PathBuf),
    Name(String),
}

macro_rules! display_as {
    ($ty:ty { $($variant:ident => $text:literal),* $(,)? }) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(match self { $(Self::$variant => $text),* })
            }
        }
    };
}

display_as!(Compression { Auto => "auto", Zstd => "zstd", Off => "off" });
display_as!(Ack { Durable => "durable", Received => "received", Async => "async" });
