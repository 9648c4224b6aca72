//! The control socket: answered from what the manager published, commands
//! handed to the manager, and commands about the other node relayed to it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use parking_lot::Mutex;

use super::{Ask, Input};
use crate::cluster::machine::{Command, State};
use crate::control::{Dispatch, Request, Response, Status, Transition};
use crate::daemon::replicas::{Replica, ReplicaRefused};
use crate::replication::tls::Credentials;

/// What the control socket reads without waiting for the manager.
pub(super) struct Shared {
    pub(super) status: Mutex<Status>,
    /// Each module's whole log (the status carries only its end).
    pub(super) logs: Mutex<Vec<(String, Vec<String>)>>,
    /// Each module's changes of state, as recorded beside its log.
    pub(super) history: Mutex<Vec<(String, Vec<Transition>)>>,
    pub(super) replicas: Mutex<Vec<(String, Option<Replica>)>>,
    pub(super) input: Mutex<mpsc::Sender<Input>>,
    pub(super) relay: Relay,
    /// Each module's snapshots on this node.
    pub(super) snapped: Vec<super::snapshots::Snapped>,
}

/// How commands about the other node reach it.
pub(super) struct Relay {
    pub(super) me: String,
    pub(super) peer: String,
    pub(super) rt: tokio::runtime::Handle,
    pub(super) creds: Arc<Credentials>,
    pub(super) peer_addr: SocketAddr,
    pub(super) compression: crate::replication::frame::Compression,
    pub(super) timeout: Duration,
}

impl Shared {
    /// A command for `node`: carried out here, or sent to the peer.
    pub(super) fn on(&self, node: String, req: Request) -> Response {
        if matches!(req, Request::On { .. }) {
            return Response::error("a command relayed to a node cannot be relayed again");
        }
        let (me, peer) = (&self.relay.me, &self.relay.peer);
        if node == *me {
            return self.handle(req);
        }
        if node != *peer {
            return Response::error(format!(
                "--on {node:?}: not a node of this cluster ({me} or {peer})"
            ));
        }
        let r = &self.relay;
        let json = serde_json::to_string(&req).expect("requests serialise");
        let answer = r.rt.block_on(crate::replication::relay::ask(
            &r.creds,
            r.peer_addr,
            r.compression,
            json,
            r.timeout,
        ));
        match answer {
            Ok(text) => serde_json::from_str(&text).unwrap_or_else(|e| {
                Response::error(format!("{peer} answered something unreadable: {e}"))
            }),
            Err(e) => Response::error(format!("cannot relay the command to {peer}: {e}")),
        }
    }

    /// A command relayed by the peer, in its JSON form.
    pub(super) fn relayed(&self, json: String) -> String {
        let resp = match serde_json::from_str::<Request>(&json) {
            Ok(Request::On { .. }) => {
                Response::error("a command relayed to a node cannot be relayed again")
            }
            Ok(req) => self.handle(req),
            Err(e) => Response::error(format!("malformed relayed command: {e}")),
        };
        serde_json::to_string(&resp).expect("responses serialise")
    }
}

impl Dispatch for Shared {
    fn handle(&self, req: Request) -> Response {
        let command = |module: Option<String>, cmd: Command| {
            self.ask(|reply| Input::Ask(Ask::Command { module, cmd, reply }))
        };
        match req {
            Request::Status {} => {
                let mut st = self.status.lock().clone();
                // Replication moves faster than the manager publishes (a
                // verify just started, say): read it live.
                let reps = self.replicas.lock().clone();
                for m in &mut st.modules {
                    if let Some((_, Some(r))) = reps.iter().find(|(n, _)| *n == m.name) {
                        m.replication = Some(r.status());
                    }
                    if let Some(s) = self.snapped.iter().find(|s| s.name == m.name) {
                        let mut sum = s.snaps.summary();
                        (sum.schedule_failed, sum.schedule_failures) = s.schedule.lock().clone();
                        m.snapshots = Some(sum);
                    }
                }
                Response {
                    ok: true,
                    status: Some(st),
                    ..Response::default()
                }
            }
            Request::Start { module } => command(module, Command::Start),
            Request::Stop { module } => command(module, Command::Stop),
            Request::Swap { module } => command(Some(module), Command::Swap),
            Request::Second { module } => {
                let st = self.status.lock();
                let serving = st
                    .modules
                    .iter()
                    .find(|m| m.name == module)
                    .map(|m| m.state.parse::<State>().is_ok_and(State::serving));
                drop(st);
                match serving {
                    None => Response::error(format!("no module named {module:?}")),
                    Some(true) => command(Some(module), Command::Swap),
                    Some(false) => Response::error(format!(
                        "module {module} does not serve on this node; `tandem second` hands \
                         a serving module over to the peer"
                    )),
                }
            }
            Request::Restart { module } => {
                self.ask(|reply| Input::Ask(Ask::Restart { module, reply }))
            }
            Request::Checker { module, on } => {
                self.ask(|reply| Input::Ask(Ask::Checker { module, on, reply }))
            }
            Request::Maintenance { module, on, asked } => self.maintenance(module, on, asked),
            Request::Upgrade { program } => {
                let program = match program {
                    Some(p) => std::path::PathBuf::from(p),
                    None => match super::upgrade::installed_program() {
                        Ok(p) => p,
                        Err(e) => return Response::error(e.to_string()),
                    },
                };
                if !program.is_absolute() {
                    return Response::error(format!(
                        "--program {}: give an absolute path",
                        program.display()
                    ));
                }
                self.ask(|reply| Input::Ask(Ask::Upgrade { program, reply }))
            }
            Request::Log { module } => match self.logs.lock().iter().find(|(n, _)| *n == module) {
                None => Response::error(format!("no module named {module:?}")),
                Some((_, lines)) => Response {
                    ok: true,
                    messages: lines.clone(),
                    ..Response::default()
                },
            },
            Request::History { module } => {
                match self.history.lock().iter().find(|(n, _)| *n == module) {
                    None => Response::error(format!("no module named {module:?}")),
                    Some((_, records)) => Response {
                        ok: true,
                        transitions: records.clone(),
                        ..Response::default()
                    },
                }
            }
            Request::Prim { module, force } => command(Some(module), Command::Prim { force }),
            Request::Resolve { module, keep } => {
                let st = self.status.lock();
                let nodes = st.nodes.as_ref().expect("cluster status names the nodes");
                let keep_mine = if keep == nodes.node {
                    true
                } else if keep == nodes.peer {
                    false
                } else {
                    return Response::error(format!(
                        "--keep {keep:?}: not a node of this cluster ({} or {})",
                        nodes.node, nodes.peer
                    ));
                };
                drop(st);
                command(Some(module), Command::Resolve { keep_mine })
            }
            Request::Verify { module, repair } => {
                self.with_replica(&module, |r| r.start_verify(repair))
            }
            Request::FullSync { module } => self.with_replica(&module, |r| r.request_full_sync()),
            Request::ResyncPace {
                module,
                rate,
                paused,
            } => self.with_replica(&module, |r| r.pace_resync(rate, paused)),
            Request::Snapshot { module, op } => self.snapshot(module, op),
            Request::On { node, request } => self.on(node, *request),
        }
    }
}

impl Shared {
    /// Hands a request to the manager thread and waits for its answer.
    pub(super) fn ask(&self, input: impl FnOnce(mpsc::Sender<Response>) -> Input) -> Response {
        let (tx, rx) = mpsc::channel();
        if self.input.lock().send(input(tx)).is_err() {
            return Response::error("the cluster manager has stopped");
        }
        rx.recv()
            .unwrap_or_else(|_| Response::error("the cluster manager has stopped"))
    }

    fn with_replica(
        &self,
        module: &str,
        f: impl FnOnce(&Replica) -> Result<String, ReplicaRefused>,
    ) -> Response {
        let reps = self.replicas.lock();
        let Some((_, r)) = reps.iter().find(|(n, _)| n == module) else {
            return Response::error(format!("no module named {module:?}"));
        };
        let Some(r) = r.clone() else {
            return Response::error(format!(
                "module {module} neither serves nor receives replication on this node now"
            ));
        };
        drop(reps);
        match f(&r) {
            Ok(m) => Response {
                ok: true,
                messages: vec![m],
                ..Response::default()
            },
            Err(e) => Response::error(e.to_string()),
        }
    }
}
