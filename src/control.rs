//! The local control protocol between the `tandem` command and its daemon: one
//! JSON request per line on a root-only Unix socket, one JSON response per line.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cluster::machine::State;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Status {},
    /// Start one module, or every module.
    Start {
        module: Option<String>,
    },
    /// Stop one module, or every module (unmounting its directories).
    Stop {
        module: Option<String>,
    },
    /// Start comparing a module's trees on both nodes (the report shows in
    /// the status); `repair` ships what differs.
    Verify {
        module: String,
        #[serde(default)]
        repair: bool,
    },
    /// On the primary: the running resync's cap (bytes a second, 0: none),
    /// or a pause, or a resume.
    ResyncPace {
        module: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rate: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        paused: Option<bool>,
    },
    /// On the secondary: resynchronise by content from the primary.
    FullSync {
        module: String,
    },
    /// Hand the module over to the other node, in order.
    Swap {
        module: String,
    },
    /// Serve the module on this node.
    Prim {
        module: String,
        #[serde(default)]
        force: bool,
    },
    /// Split brain: keep the data of node `keep`.
    Resolve {
        module: String,
        keep: String,
    },
    /// Stop this node serving the module in favour of the peer.
    Second {
        module: String,
    },
    /// Restart the application where it runs (stop_prim, start_prim).
    Restart {
        module: String,
    },
    /// The module's log: transitions, script output.
    Log {
        module: String,
    },
    /// The module's changes of state, oldest first (in `transitions`).
    History {
        module: String,
    },
    /// Suspend (`on: false`) or resume the module's health checks.
    Checker {
        module: String,
        on: bool,
    },
    /// Maintenance on or off for one module, or every module: while on,
    /// nothing moves a module by itself; commands still work. Applied on
    /// this node and relayed to the peer.
    Maintenance {
        module: Option<String>,
        on: bool,
        /// Set by the node that relays it to its peer: where and when the
        /// operator asked. Applied there as it is, not relayed back.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        asked: Option<Asked>,
    },
    /// Hand this daemon's serving modules to `program` (default: the
    /// program it was started from, as it is on disk now) without stopping
    /// the application: an in-place upgrade.
    Upgrade {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        program: Option<String>,
    },
    /// This node's snapshots of a module (with `--on`, the peer's own:
    /// each node alone decides about the snapshots it holds).
    Snapshot {
        module: String,
        op: SnapshotOp,
    },
    /// `request`, carried out on `node` (relayed to the peer when it is not
    /// this node).
    On {
        node: String,
        request: Box<Request>,
    },
}

/// What to do with a module's snapshots.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verb", rename_all = "snake_case", deny_unknown_fields)]
pub enum SnapshotOp {
    Create {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    List {},
    /// Changes from snapshot `from` to snapshot `to` (or to now).
    Diff {
        from: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<String>,
    },
    /// The snapshot's tree written into the new directory `to`.
    Restore {
        name: String,
        to: String,
    },
    /// This node's copy back to the snapshot (not while it serves).
    Rollback {
        name: String,
    },
    Delete {
        name: String,
    },
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transitions: Vec<Transition>,
    /// What a command returns beside its messages (snapshots listed, a
    /// diff), as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

/// Where and when an operator switched maintenance (see
/// [`Request::Maintenance`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Asked {
    pub node: String,
    /// Milliseconds since the epoch, by that node's clock.
    pub at_ms: u64,
}

/// One change of a module's state, as the cluster manager recorded it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// When, as the module's log shows it (`2026-11-25T23:49:47.123Z`).
    pub at: String,
    pub from: State,
    pub to: State,
    pub why: String,
}

/// Carries out control requests: the one way in for the control socket,
/// the requests the peer relays and the API.
pub trait Dispatch: Send + Sync + 'static {
    fn handle(&self, req: Request) -> Response;
}

impl Response {
    pub fn error(msg: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(msg.into()),
            ..Self::default()
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub cluster: String,
    pub pid: u32,
    pub modules: Vec<ModuleStatus>,
    /// With the cluster manager: this node, its peer and the heartbeats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<NodesStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodesStatus {
    pub node: String,
    pub peer: String,
    /// Heartbeats heard from the peer within the timeout on some path.
    pub peer_alive: bool,
    /// Per path: milliseconds since the peer was last heard there (None: never).
    pub paths: Vec<PathStatus>,
    pub heartbeats_sent: u64,
    pub heartbeats_received: u64,
    /// Dropped heartbeats: bad HMAC, replayed, malformed, from a stranger.
    pub dropped_bad_mac: u64,
    pub dropped_replayed: u64,
    pub dropped_malformed: u64,
    pub dropped_foreign: u64,
    /// This node's release of tandem.
    #[serde(default)]
    pub version: String,
    /// The peer's, as its heartbeats say (`None`: not heard, or a release
    /// that does not say).
    #[serde(default)]
    pub peer_version: Option<String>,
    /// The heartbeats' protocol versions each node speaks.
    #[serde(default)]
    pub heartbeat_protocol: String,
    #[serde(default)]
    pub peer_heartbeat_protocol: Option<String>,
    /// This node's daemon process (absent from an older node's status).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daemon: Option<DaemonStatus>,
}

/// The daemon process answering.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub pid: u32,
    /// When the running program started serving, in ms since the epoch
    /// (after `tandem upgrade`: when the new program took over).
    pub since_ms: u64,
    /// The release the running program took over from in this process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub took_over_from: Option<String>,
    /// Why the program it handed over to could not go on: this program took
    /// its sessions back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taken_back: Option<String>,
}

impl NodesStatus {
    /// The two nodes run different releases (as during a rolling upgrade).
    pub fn mixed_versions(&self) -> bool {
        self.peer_version
            .as_ref()
            .is_some_and(|v| *v != self.version)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathStatus {
    pub local: String,
    pub remote: String,
    pub last_heard_ms: Option<u64>,
    /// The heartbeats' round trip on this path, as last timed.
    #[serde(default)]
    pub rtt_us: Option<u64>,
    /// The peer's heartbeats this path lost (gaps in their numbers).
    #[serde(default)]
    pub lost: u64,
}

/// A module as the cluster manager sees it on this node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterModuleStatus {
    /// STOP, WAIT, SECOND, PRIM or ALONE.
    pub state: String,
    /// Why the last transition happened.
    pub why: String,
    pub since_ms: u64,
    /// The peer's state for this module, if it is heard.
    pub peer_state: Option<String>,
    pub peer_uptodate: bool,
    /// As SECOND: this node's copy is current.
    pub uptodate: bool,
    /// This node's data generation (hex).
    pub generation: String,
    pub peer_generation: Option<String>,
    pub split_brain: bool,
    /// Why this node may not serve until `tandem start`, if so.
    pub blocked: Option<String>,
    pub app_running: bool,
    /// Health checks: "on", "off" (suspended by the operator) or "none".
    #[serde(default)]
    pub checks: String,
    /// How this node may serve without its peer: "none", or the witness lease.
    #[serde(default)]
    pub quorum: String,
    /// How clients reach the module here: the virtual addresses held, or
    /// what the load balancer's probe answers.
    #[serde(default)]
    pub clients: String,
    /// The last lines of the module's log (transitions and script output).
    pub log: Vec<String>,
    /// Maintenance on this node (absent from an older node's status).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<MaintenanceStatus>,
}

/// A module's maintenance as a node holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceStatus {
    /// Nothing moves the module by itself while on.
    pub on: bool,
    /// When it was last switched (on, or off), `2026-11-25T23:49:47.123Z`;
    /// empty if never.
    pub since: String,
    /// The same in milliseconds since the epoch (0: never).
    pub since_ms: u64,
    /// The node it was switched on (empty if never).
    pub by: String,
    /// While on: for how long, in seconds.
    pub seconds: u64,
    /// While on: longer than `cluster.maintenance_alert_after_s`.
    pub overdue: bool,
    /// `cluster.maintenance_alert_after_s`.
    pub alert_after_s: u64,
    /// While on: the peer said it is in maintenance too when last heard.
    /// Until it does, it may take over, and this node still fences itself.
    pub peer_agrees: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleStatus {
    pub name: String,
    /// "started" while its directories are mounted, "stopped" otherwise,
    /// "secondary" where the peer's changes are applied.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<crate::replication::status::ReplicationStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterModuleStatus>,
    pub dirs: Vec<DirStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<SnapshotSummary>,
}

/// This node's snapshots of a module, in the status.
pub use crate::replication::snapshot::Summary as SnapshotSummary;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirStatus {
    pub path: String,
    pub mounted: bool,
    pub mutations: u64,
    pub bytes_written: u64,
    pub by_kind: Vec<(String, u64)>,
}

/// How long the command waits for the daemon (stopping may unmount many dirs).
const TIMEOUT: Duration = Duration::from_secs(120);

/// Sends one request to the daemon listening on `socket` and returns its answer.
pub fn call(socket: &Path, req: &Request) -> anyhow::Result<Response> {
    let mut stream = UnixStream::connect(socket).map_err(|e| {
        anyhow::anyhow!(
            "cannot reach the tandem daemon at {}: {e} (is `tandem daemon` running?)",
            socket.display()
        )
    })?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    let mut line = serde_json::to_string(req)?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer)?;
    if answer.is_empty() {
        anyhow::bail!(
            "the tandem daemon at {} closed the connection without answering",
            socket.display()
        );
    }
    Ok(serde_json::from_str(&answer)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_unknown_commands_are_rejected() {
        let r = Request::Stop {
            module: Some("app".into()),
        };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(s, r#"{"cmd":"stop","module":"app"}"#);
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), r);
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"format_disk"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"status","extra":1}"#).is_err());
    }

    #[test]
    fn maintenance_requests_say_the_relay_only_when_relayed() {
        let r = Request::Maintenance {
            module: None,
            on: true,
            asked: None,
        };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(s, r#"{"cmd":"maintenance","module":null,"on":true}"#);
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), r);
        let from_cli = r#"{"cmd":"maintenance","on":false,"module":"app"}"#;
        assert!(matches!(
            serde_json::from_str::<Request>(from_cli).unwrap(),
            Request::Maintenance {
                on: false,
                asked: None,
                ..
            }
        ));
        let relayed = Request::Maintenance {
            module: Some("app".into()),
            on: true,
            asked: Some(Asked {
                node: "node1".into(),
                at_ms: 7,
            }),
        };
        let s = serde_json::to_string(&relayed).unwrap();
        assert!(s.contains(r#""asked":{"node":"node1","at_ms":7}"#), "{s}");
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), relayed);
        let bad = r#"{"cmd":"maintenance","on":true,"asked":{"node":"n","at_ms":1,"x":2}}"#;
        assert!(serde_json::from_str::<Request>(bad).is_err());
    }

    #[test]
    fn history_travels_as_records_and_other_answers_do_not_change() {
        let r = Request::History {
            module: "app".into(),
        };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(s, r#"{"cmd":"history","module":"app"}"#);
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), r);
        let a = Response {
            ok: true,
            transitions: vec![Transition {
                at: "2026-12-05T17:00:00.123Z".into(),
                from: State::Second,
                to: State::Prim,
                why: "the peer is gone".into(),
            }],
            ..Response::default()
        };
        let s = serde_json::to_string(&a).unwrap();
        assert!(s.contains(r#""from":"SECOND","to":"PRIM""#), "{s}");
        assert_eq!(serde_json::from_str::<Response>(&s).unwrap(), a);
        // Answers without records read as before, both ways.
        let plain = Response {
            ok: true,
            messages: vec!["started".into()],
            ..Response::default()
        };
        let s = serde_json::to_string(&plain).unwrap();
        assert_eq!(s, r#"{"ok":true,"messages":["started"]}"#);
        assert_eq!(serde_json::from_str::<Response>(&s).unwrap(), plain);
    }
}
