//! `tandem daemon` as a cluster member: heartbeats with the peer, one state
//! machine per module, and the execution of what the machines decide —
//! receiving replication, mounting and replicating, running the
//! application's scripts.
//!
//! One thread owns every module and runs actions in order (the scripts on
//! threads of their own, reporting back); a machine's new state is announced
//! to the peer only after its actions are done.
//!
//! The files, one concern each:
//! - [`boot`]: starts the node, step by step;
//! - [`services`]: what it starts once (the quorum's client, the server the
//!   peer replicates to, checkers, health endpoints, the fencer);
//! - [`manager`]: the loop (input, machine, executor);
//! - [`module`]: a module around its machine (log, scripts, role file);
//! - [`plan`]: a module's work in order, its scripts off the manager's thread;
//! - [`executor`]: carries out the machine's actions (promote, demote);
//! - [`journal`]: a module's log and the records of its changes of state,
//!   kept on disk across restarts;
//! - [`clients`]: moves the clients (virtual addresses, health endpoint);
//! - [`app`]: the application's scripts and the checkers' restart budget;
//! - [`liveness`]: when the peer counts as gone;
//! - [`publish`]: what the node reports;
//! - [`control`]: the control socket, and commands relayed to the peer;
//! - [`maintenance`]: maintenance switched by the operator, here and on
//!   the peer.

mod app;
mod boot;
mod clients;
mod control;
mod executor;
mod journal;
mod liveness;
mod maintenance;
mod manager;
mod module;
mod plan;
mod publish;
mod services;
mod snapshots;
mod upgrade;

pub use boot::run;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::replicas::Replica;
use crate::cluster::LeaseQuorum;
use crate::cluster::heartbeat::Heard;
use crate::cluster::machine::{Command, Machine, State};
use crate::config::{Module as ModuleConfig, Node, Settings};
use crate::control::Response;
use crate::fs::{CountingSink, Mounted};
use crate::replication::dir::Dir;
use crate::replication::secondary::SecondaryServer;
use crate::replication::tls::Credentials;
use crate::stop::Stop;

/// Everything a module needs from the node, shared by all modules.
struct ThisNode {
    settings: Settings,
    /// With `quorum = "witness"` or `"etcd"`: the leases this node holds.
    quorum: Option<Arc<dyn LeaseQuorum>>,
    /// With `quorum = "ping"`: whether an address answers.
    ping: Option<Arc<crate::cluster::ping::Pinger>>,
    /// Whether this node may serve a module without its peer now (holds its
    /// lease, an address answers); `None` without a quorum.
    quorum_ok: Option<super::fence::QuorumOk>,
    /// Cleans up if this daemon dies (taken at a clean end).
    guard: Mutex<Option<crate::failover::guard::Guard>>,
    me: Node,
    peer: Node,
    creds: Arc<Credentials>,
    peer_addr: SocketAddr,
    server: Arc<SecondaryServer>,
    rt: tokio::runtime::Handle,
    started: Instant,
    /// When this program started serving (ms since the epoch).
    since_ms: u64,
    /// The release this program took over from in this process (`tandem
    /// upgrade`), if it did.
    took_over_from: Option<String>,
    /// Why the program this one handed over to gave the sessions back.
    taken_back: Option<String>,
    /// What the load balancers' probes are told.
    health: Arc<lb_health::Health>,
    /// Ends every thread and task of the node.
    stop: Stop,
    metrics: Arc<crate::metrics::Metrics>,
    /// The manager's input: scripts running off its thread answer here.
    inputs: mpsc::Sender<Input>,
}

impl ThisNode {
    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct RoleFile {
    state: State,
    /// Never served nor completed a sync: its data counts for nothing.
    fresh: bool,
}

struct Managed {
    cfg: ModuleConfig,
    /// Root descriptors (opened before any mount) and change logs, for the
    /// node's whole run whatever its role.
    base: Vec<Dir>,
    /// The state dir of each directory, where its chunk cache is kept.
    caches: Vec<PathBuf>,
    machine: Machine,
    replica: Option<Replica>,
    mounts: Vec<Mounted>,
    sinks: Vec<Arc<CountingSink>>,
    role_file: PathBuf,
    fresh: bool,
    app_running: bool,
    /// Handed over (or taken over) with every change confirmed by the peer.
    flushed: bool,
    /// What happened to the module here, kept across restarts.
    log: journal::Journal,
    checks: app::Checks,
    /// The work its machine decided, under way in order.
    plan: plan::Plan,
    /// `failover = "vip"`: the virtual addresses.
    vips: Option<crate::failover::vip::Vips>,
    /// What the fencer stops if this node is cut off while the manager is
    /// busy.
    fence: Arc<super::fence::Fence>,
}

/// What the manager's loop hears.
enum Input {
    Heard(Heard),
    /// A request for modules: waits while work is under way on them.
    Ask(Ask),
    /// A module's script answered.
    Ran {
        module: String,
        result: Result<crate::failover::scripts::Ran, crate::failover::scripts::ScriptError>,
    },
    Shutdown(mpsc::Sender<()>),
}

/// A request for the modules, from the operator or a checker.
enum Ask {
    Command {
        module: Option<String>,
        cmd: Command,
        reply: mpsc::Sender<Response>,
    },
    Restart {
        module: String,
        reply: mpsc::Sender<Response>,
    },
    CheckFailed {
        module: String,
        why: String,
        restarts: u32,
        window: Duration,
        at: Instant,
    },
    Checker {
        module: String,
        on: bool,
        reply: mpsc::Sender<Response>,
    },
    /// Maintenance switched, for one module or every module.
    Maintenance {
        module: Option<String>,
        on: bool,
        asked: crate::control::Asked,
        reply: mpsc::Sender<Response>,
    },
    /// Hand every served module to `program` in this process (`tandem
    /// upgrade`), once no module has work under way.
    Upgrade {
        program: PathBuf,
        reply: mpsc::Sender<Response>,
    },
    /// A line for a module's log (every module's with `None`): who asked
    /// for a command through the API.
    Note {
        module: Option<String>,
        line: String,
    },
}

impl Ask {
    /// Answers a request that will not be carried out, if someone waits.
    fn refuse(self, why: &str) {
        match self {
            Ask::Command { reply, .. }
            | Ask::Restart { reply, .. }
            | Ask::Checker { reply, .. }
            | Ask::Maintenance { reply, .. }
            | Ask::Upgrade { reply, .. } => {
                let _ = reply.send(Response::error(why));
            }
            Ask::CheckFailed { .. } | Ask::Note { .. } => {}
        }
    }
}
