//! `tandem daemon` as a cluster member: heartbeats with the peer, one state
//! machine per module, and the execution of what the machines decide —
//! receiving replication, mounting and replicating, running the
//! application's scripts.
//!
//! One thread owns every module and runs actions in order; a machine's new
//! state is announced to the peer only after its actions are done.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::replicas::{self, Replica};
use crate::cluster::LeaseQuorum;
use crate::cluster::heartbeat::{Heard, Heartbeats, Key, NetPath};
use crate::cluster::machine::{
    self, Action, Command, Event, Failure, Gen, Machine, PeerView, State,
};
use crate::config::{Module as ModuleConfig, Node, Quorum, Settings};
use crate::control::{
    ClusterModuleStatus, DirStatus, ModuleStatus, NodesStatus, PathStatus, Request, Response,
    Status,
};
use crate::failover::scripts;
use crate::fs::{self, CountingSink, MountConfig, Mounted, Unmounted};
use crate::replication::aside::Keep;
use crate::replication::dir::Dir;
use crate::replication::primary::Replicator;
use crate::replication::secondary::{SecondaryModule, SecondaryServer};
use crate::replication::session::{PrimaryLink, resolve, state_dir};
use crate::replication::tls::{Credentials, heartbeat_key_path};

/// Lines of each module's log kept for `status` and `tandem log`.
const LOG_LINES: usize = 200;

/// Everything a module needs from the node, shared by all modules.
struct Node2 {
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
    /// What the load balancers' probes are told.
    health: Arc<lb_health::Health>,
}

impl Node2 {
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
    caches: Vec<PathBuf>,
    machine: Machine,
    replica: Option<Replica>,
    link_task: Option<tokio::task::JoinHandle<()>>,
    mounts: Vec<Mounted>,
    sinks: Vec<Arc<CountingSink>>,
    role_file: PathBuf,
    fresh: bool,
    app_running: bool,
    synced: Option<bool>,
    generation: Option<Gen>,
    log: VecDeque<String>,
    /// Health checks not suspended by `tandem checker MODULE off`.
    checks_on: bool,
    /// Read by the checker threads: check now (served here, application up).
    checks_active: Arc<std::sync::atomic::AtomicBool>,
    /// Recent check failures, for the restart budget.
    check_failures: VecDeque<Instant>,
    /// The application (re)started then: earlier failures are about the
    /// process that was replaced.
    checks_from: Instant,
    /// The newest generation the witness told of (0: none).
    witness_newest: u64,
    /// Depth of failure handling under way (bounded).
    failing: u32,
    /// `failover = "vip"`: the virtual addresses.
    vips: Option<crate::failover::vip::Vips>,
    /// What the fencer stops if this node is cut off while the manager is
    /// busy.
    fence: Arc<super::fence::Fence>,
}

impl Managed {
    fn note(&mut self, line: String) {
        tracing::info!(module = %self.cfg.name, "{line}");
        if self.log.len() == LOG_LINES {
            self.log.pop_front();
        }
        let ts = utc(crate::cluster::heartbeat::now_ms());
        self.log.push_back(format!("{ts} {line}"));
    }

    fn context(&self, node: &Node2, role: &'static str) -> scripts::Context {
        scripts::Context::new(
            &self.cfg.name,
            role,
            &node.me.name,
            &node.peer.name,
            &self.cfg.dirs,
        )
    }

    fn script(&mut self, node: &Node2, what: &str, role: &'static str) -> Result<(), String> {
        let s = &self.cfg.scripts;
        let path = match what {
            "prestart" => &s.prestart,
            "start_prim" => &s.start_prim,
            "stop_prim" => &s.stop_prim,
            "start_both" => &s.start_both,
            "stop_both" => &s.stop_both,
            "poststop" => &s.poststop,
            _ => unreachable!("known script names only"),
        };
        let Some(path) = path.clone() else {
            return Ok(());
        };
        // The main loop waits for the script, at most its timeout: not hung.
        node.health.busy(s.timeout + Duration::from_secs(1));
        let r = scripts::run(what, &path, &self.context(node, role), s.timeout);
        match r {
            Ok(ran) => {
                self.note(format!("{what} done in {} ms", ran.took.as_millis()));
                for l in ran.output.lines().filter(|l| !l.trim().is_empty()) {
                    self.note(format!("{what}: {l}"));
                }
                Ok(())
            }
            Err(e) => {
                self.note(e.clone());
                Err(e)
            }
        }
    }

    /// Fresh descriptors and caches over the same change logs, for a role.
    fn dirs(&self) -> Result<Vec<Dir>, String> {
        self.base
            .iter()
            .zip(&self.caches)
            .map(|(d, c)| {
                Ok(Dir {
                    root: d.root.try_clone().map_err(|e| e.to_string())?,
                    log: d.log.clone(),
                    cache: Mutex::new(crate::replication::manifest::Cache::load(c)),
                })
            })
            .collect()
    }

    fn read_generation(&self) -> Option<Gen> {
        let g = self.base[0].log.generation().ok()?;
        Some(Gen {
            current: g.current,
            history: g.history,
            fresh: self.fresh,
        })
    }

    fn save_role(&mut self, state: State) {
        let text = serde_json::to_string(&RoleFile {
            state,
            fresh: self.fresh,
        })
        .expect("serialisable");
        let tmp = self.role_file.with_extension("tmp");
        let r = std::fs::write(&tmp, text)
            .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
            .and_then(|()| std::fs::rename(&tmp, &self.role_file));
        if let Err(e) = r {
            self.note(format!(
                "cannot record the role in {}: {e}",
                self.role_file.display()
            ));
        }
    }

    /// Feeds one event and carries out what the machine decides.
    fn feed(&mut self, node: &Node2, ev: Event) -> Option<machine::Reply> {
        let before = (self.machine.state, self.machine.why.clone());
        let out = self.machine.step(node.now(), ev);
        if (self.machine.state, &self.machine.why) != (before.0, &before.1) {
            let line = format!(
                "{:?} -> {:?}: {}",
                before.0, self.machine.state, self.machine.why
            );
            self.note(line);
        }
        for a in out.actions {
            if let Err((f, e)) = self.act(node, &a) {
                self.note(format!("{a:?} failed: {e}"));
                // A failure may lead to another attempt that fails again:
                // the chain is bounded, whatever the machine decides.
                if self.failing < 4 {
                    self.failing += 1;
                    self.feed(node, Event::Failed(f, e));
                    self.failing -= 1;
                } else {
                    self.note("too many failures in a row: waiting for the operator".into());
                }
                break;
            }
        }
        out.reply
    }

    fn act(&mut self, node: &Node2, a: &Action) -> Result<(), (Failure, String)> {
        match a {
            Action::BecomeSecondary { full } => {
                let sm = SecondaryModule::new(
                    &self.cfg.name,
                    self.dirs().map_err(|e| (Failure::Secondary, e))?,
                )
                .map_err(|e| (Failure::Secondary, e.to_string()))?;
                if *full {
                    sm.request_full_sync();
                    self.note("receiving a full sync from the peer".into());
                }
                node.server
                    .modules
                    .lock()
                    .insert(self.cfg.name.clone(), sm.clone());
                self.replica = Some(Replica::Secondary(sm));
                self.synced = None;
                // The peer serves: an address a dead daemon left here would
                // answer ARP for it and draw its clients away.
                for line in self
                    .vips
                    .as_ref()
                    .map(|v| v.remove_strays())
                    .unwrap_or_default()
                {
                    self.note(format!("virtual address left by an earlier run: {line}"));
                }
            }
            Action::KeepAside => self.keep_aside(node, "split-brain", Keep::Whole)?,
            Action::SetAside => self.keep_aside(node, "set-aside", Keep::Ranges)?,
            Action::LeaveSecondary => {
                node.server.modules.lock().remove(&self.cfg.name);
                if let Some(Replica::Secondary(sm)) = self.replica.take() {
                    sm.close();
                }
            }
            Action::Promote { new_generation } => self
                .promote(node, *new_generation)
                .map_err(|e| (Failure::Promote, e))?,
            Action::StartApp => {
                // The addresses first (an application may bind to them)…
                self.take_clients(node)
                    .map_err(|e| (Failure::StartApp, e))?;
                if let Err(e) = self.script(node, "start_prim", "prim") {
                    self.release_clients(node);
                    return Err((Failure::StartApp, e));
                }
                self.app_running = true;
                self.checks_from = Instant::now();
                // …but clients are sent here only once it runs: the
                // announcements go out and the probe says 200 now.
                if let Some(v) = self.vips.as_mut()
                    && let Err(e) = v.announce()
                {
                    self.note(format!("announcing the virtual addresses: {e}"));
                }
                node.health.set_serving(&self.cfg.name, true);
            }
            Action::StopApp => {
                if self.machine.state == State::Wait
                    && !self.machine.handover
                    && let Some(Replica::Primary(rep, _)) = &self.replica
                {
                    // Serving stops without handing over (cut off, or the
                    // peer serves newer data): nothing may be acknowledged
                    // alone from now on, and calls blocked on the peer fail
                    // at once so the application can stop.
                    rep.fence("this node stops serving without handing over");
                }
                self.release_clients(node);
                if self.app_running || self.machine.state != State::Wait {
                    // A failing stop is logged; demoting goes on (the
                    // unmount below tells whether files are still in use).
                    let _ = self.script(node, "stop_prim", "prim");
                }
                self.app_running = false;
            }
            Action::Demote { flush } => self.demote(*flush),
            Action::SaveRole(s) => self.save_role(*s),
        }
        Ok(())
    }

    /// Copies this node's changes that the peer may lack into
    /// `state_dir/modules/MODULE/{under}/TIME/` before the peer's data
    /// replaces them. Nothing is overwritten unless the copy is complete.
    fn keep_aside(
        &mut self,
        node: &Node2,
        under: &str,
        keep: Keep,
    ) -> Result<(), (Failure, String)> {
        let at = self
            .role_file
            .with_file_name(under)
            .join(utc(crate::cluster::heartbeat::now_ms()).replace(':', ""));
        // Copying is the main loop's work, not a hang.
        let done =
            crate::replication::aside::keep_aside(&self.base, &at, keep, &|| node.health.beat())
                .map_err(|e| (Failure::Secondary, format!("keeping changes aside: {e}")))?;
        self.note(format!(
            "this node's own changes ({} files, {} bytes) kept aside in {}",
            done.files,
            done.bytes,
            at.display()
        ));
        Ok(())
    }

    fn promote(&mut self, node: &Node2, new_generation: bool) -> Result<(), String> {
        // The guard knows before anything is mounted or started here.
        if let Some(g) = node.guard.lock().as_mut() {
            g.include(self.guard_duty(node));
        }
        if new_generation {
            for d in &self.base {
                d.log
                    .new_generation()
                    .map_err(|e| format!("change log: {e}"))?;
            }
        }
        if self.fresh {
            self.fresh = false;
            self.save_role(self.machine.state);
        }
        self.script(node, "prestart", "prim")?;
        let s = &node.settings;
        let rep = Replicator::new(
            &self.cfg.name,
            self.cfg.ack,
            s.replication.peer_timeout,
            s.replication.async_max_lag,
            self.dirs()?,
        );
        rep.set_exclude(replicas::exclude_of(&self.cfg)?);
        // With a quorum, a peer that stops acknowledging is left behind only
        // while this node may serve alone.
        // With a lease, also the third party's word that this node's
        // generation is the newest served: acknowledged alone, a change is
        // then never older than what the twin may serve.
        if let Some(ok) = node.quorum_ok.clone() {
            let (module, lease, log) = (
                self.cfg.name.clone(),
                node.quorum.clone(),
                self.base[0].log.clone(),
            );
            rep.set_alone_check(Arc::new(move || {
                ok(&module)
                    && lease.as_ref().is_none_or(|q| {
                        log.generation()
                            .is_ok_and(|g| q.newest(&module) == g.current)
                    })
            }));
        }
        let link = Arc::new(PrimaryLink {
            rep: rep.clone(),
            creds: node.creds.clone(),
            cluster: s.cluster.name.clone(),
            peer_addr: node.peer_addr,
            compression: replicas::compression(s.replication.compression),
        });
        self.link_task = Some(node.rt.spawn(link.clone().run()));
        self.replica = Some(Replica::Primary(rep.clone(), link));
        *self.fence.rep.lock() = Some(rep.clone());
        self.fence.fenced.store(false, Ordering::SeqCst);
        self.fence.armed.store(true, Ordering::SeqCst);
        for (i, path) in self.cfg.dirs.clone().iter().enumerate() {
            let sink = Arc::new(CountingSink::wrapping(rep.sink(i as u32)));
            match fs::mount(path, sink.clone(), &MountConfig::default()) {
                Ok((m, _)) => {
                    self.mounts.push(m);
                    self.sinks.push(sink);
                }
                Err(e) => {
                    self.demote(false);
                    return Err(format!("mounting {}: {e}", path.display()));
                }
            }
        }
        self.note(format!(
            "serving: {} directories mounted",
            self.mounts.len()
        ));
        Ok(())
    }

    fn demote(&mut self, flush: bool) {
        let t0 = Instant::now();
        self.fence.armed.store(false, Ordering::SeqCst);
        *self.fence.rep.lock() = None;
        // Unmount first: whatever the kernel still held goes through the
        // sink and is replicated before the link closes.
        for m in self.mounts.drain(..) {
            match m.unmount() {
                Ok(Unmounted::Clean) => {}
                Ok(Unmounted::Detached) => tracing::error!(
                    module = %self.cfg.name,
                    "files were still open after stop_prim: the application did not stop"
                ),
                Err(e) => tracing::error!(module = %self.cfg.name, "unmount: {e}"),
            }
        }
        self.sinks.clear();
        if let Some(Replica::Primary(rep, _)) = self.replica.take() {
            if flush {
                let deadline = Instant::now() + rep.peer_timeout.max(Duration::from_secs(2));
                loop {
                    let st = rep.status();
                    if st.peer == "connected" && st.durable >= st.sent {
                        break;
                    }
                    if Instant::now() > deadline {
                        self.note(format!(
                            "the peer did not confirm every change before the handover \
                             (peer {}, durable {} of {})",
                            st.peer, st.durable, st.sent
                        ));
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            rep.close_link("this node stopped serving the module");
            self.note(format!(
                "stopped serving in {} ms{}",
                t0.elapsed().as_millis(),
                if flush {
                    ", changes flushed to the peer"
                } else {
                    ""
                }
            ));
            for d in &rep.dirs {
                let _ = d.log.flush();
            }
        }
        if let Some(t) = self.link_task.take() {
            t.abort();
        }
    }

    /// What the guard must undo if this daemon dies now.
    fn duty(&self, node: &Node2) -> Option<crate::failover::guard::Duty> {
        (self.app_running || !self.mounts.is_empty()).then(|| self.guard_duty(node))
    }

    fn guard_duty(&self, node: &Node2) -> crate::failover::guard::Duty {
        crate::failover::guard::Duty {
            module: self.cfg.name.clone(),
            stop_prim: self.cfg.scripts.stop_prim.clone(),
            node: node.me.name.clone(),
            peer: node.peer.name.clone(),
            dirs: self.cfg.dirs.clone(),
            timeout_ms: self.cfg.scripts.timeout.as_millis() as u64,
            vips: self.vips.as_ref().map(|v| v.taken()).unwrap_or_default(),
        }
    }

    /// What the load balancer's probes are told about this module.
    fn health(&self) -> lb_health::ModuleHealth {
        let view = self.machine.view();
        lb_health::ModuleHealth {
            state: format!("{:?}", self.machine.state).to_uppercase(),
            generation: view.generation.current,
            serving: self.machine.state.serving()
                && self.app_running
                && !self.fence.fenced.load(Ordering::SeqCst),
            uptodate: self.machine.state == State::Second && view.uptodate,
        }
    }

    /// How clients reach the module here, for the status.
    fn clients(&self, node: &Node2) -> String {
        match (&self.vips, &self.cfg.failover) {
            (Some(v), _) if v.taken().is_empty() => "virtual addresses not held here".into(),
            (Some(v), _) => format!(
                "holding {}",
                v.taken()
                    .iter()
                    .map(|t| t.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            (None, crate::config::Failover::Lb { port, tls }) => format!(
                "{}://*:{port}/primary/{} answers {}",
                if *tls { "https" } else { "http" },
                self.cfg.name,
                if node.health.serving(&self.cfg.name) {
                    200
                } else {
                    503
                }
            ),
            (None, _) => String::new(),
        }
    }

    /// Clients reach this node from now on: the virtual addresses are taken
    /// (the guard told first, so a crash right after gives them back).
    fn take_clients(&mut self, node: &Node2) -> Result<(), String> {
        let Some(v) = &self.vips else {
            return Ok(());
        };
        let plan = v.plan()?;
        if let Some(g) = node.guard.lock().as_mut() {
            let mut duty = self.guard_duty(node);
            duty.vips = plan.clone();
            g.include(duty);
        }
        let v = self.vips.as_mut().expect("checked above");
        v.take(plan)?;
        let held: Vec<String> = v.taken().iter().map(|t| t.to_string()).collect();
        self.note(format!("virtual addresses taken: {}", held.join(", ")));
        Ok(())
    }

    /// Clients stop reaching this node: the probe says 503 and the virtual
    /// addresses go, before the application is stopped.
    fn release_clients(&mut self, node: &Node2) {
        node.health.set_serving(&self.cfg.name, false);
        if let Some(v) = self.vips.as_mut()
            && !v.taken().is_empty()
        {
            let errors = v.release();
            self.note(if errors.is_empty() {
                "virtual addresses released".into()
            } else {
                format!("releasing virtual addresses: {}", errors.join("; "))
            });
        }
    }

    /// Restarts the application where it runs (stop_prim, start_prim);
    /// checks resume for the new process only. A failed start is the
    /// machine's to handle.
    fn restart_app(&mut self, node: &Node2) -> Result<(), String> {
        self.checks_active
            .store(false, std::sync::atomic::Ordering::Relaxed);
        node.health.set_serving(&self.cfg.name, false);
        let _ = self.script(node, "stop_prim", "prim");
        self.app_running = false;
        match self.script(node, "start_prim", "prim") {
            Ok(()) => {
                self.app_running = true;
                node.health
                    .set_serving(&self.cfg.name, self.machine.state.serving());
                self.checks_from = Instant::now();
                Ok(())
            }
            Err(e) => {
                self.feed(node, Event::Failed(Failure::StartApp, e.clone()));
                Err(e)
            }
        }
    }

    /// Replication facts the machine decides on, fed when they change.
    fn observe(&mut self, node: &Node2) -> bool {
        let mut changed = false;
        let up = match &self.replica {
            Some(Replica::Secondary(sm)) => Some(sm.uptodate()),
            _ => None,
        };
        if up == Some(true) && self.fresh {
            // The first completed sync: this copy now counts.
            self.fresh = false;
            self.save_role(self.machine.state);
        }
        if let Some(g) = self.read_generation()
            && self.generation.as_ref() != Some(&g)
        {
            self.generation = Some(g.clone());
            self.feed(node, Event::Generation(g));
            changed = true;
        }
        if let Some(up) = up
            && self.synced != Some(up)
        {
            self.synced = Some(up);
            self.feed(node, Event::Synced(up));
            changed = true;
        }
        changed
    }

    fn status(&self, node: &Node2) -> ModuleStatus {
        let m = &self.machine;
        let peer = m.peer();
        ModuleStatus {
            name: self.cfg.name.clone(),
            state: format!("{:?}", m.state).to_uppercase(),
            replication: self.replica.as_ref().map(|r| r.status()),
            cluster: Some(ClusterModuleStatus {
                state: format!("{:?}", m.state).to_uppercase(),
                why: m.why.clone(),
                since_ms: node.now().saturating_sub(m.since),
                peer_state: peer
                    .and_then(|p| p.state)
                    .map(|s| format!("{s:?}").to_uppercase()),
                peer_uptodate: peer.is_some_and(|p| p.uptodate),
                uptodate: m.view().uptodate,
                generation: format!("{:016x}", m.view().generation.current),
                peer_generation: peer.map(|p| format!("{:016x}", p.generation.current)),
                split_brain: m.split_brain,
                blocked: m.blocked.clone(),
                app_running: self.app_running,
                checks: if self.cfg.checkers.is_empty() {
                    "none".into()
                } else if self.checks_on {
                    "on".into()
                } else {
                    "off".into()
                },
                quorum: match &node.quorum {
                    None => match &node.ping {
                        None => "none".into(),
                        Some(p) => format!(
                            "ping: {}",
                            if p.ok() {
                                "an address answers"
                            } else {
                                "no address answers"
                            }
                        ),
                    },
                    Some(w) => format!(
                        "{}: {}{}",
                        w.kind(),
                        w.holder(&self.cfg.name)
                            .map_or("lease free".to_string(), |h| format!("lease held by {h}")),
                        if w.holds(&self.cfg.name) {
                            " (this node)"
                        } else {
                            ""
                        }
                    ),
                },
                clients: self.clients(node),
                log: self.log.iter().rev().take(20).rev().cloned().collect(),
            }),
            dirs: self
                .cfg
                .dirs
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let sink = self.sinks.get(i);
                    DirStatus {
                        path: p.display().to_string(),
                        mounted: sink.is_some(),
                        mutations: sink.map_or(0, |s| s.total()),
                        bytes_written: sink.map_or(0, |s| s.bytes_written()),
                        by_kind: Vec::new(),
                    }
                })
                .collect(),
        }
    }
}

enum Input {
    Heard(Heard),
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
    Shutdown(mpsc::Sender<()>),
}

/// What the control socket reads without waiting for the manager.
struct Shared {
    status: Mutex<Status>,
    /// Each module's whole log (the status carries only its end).
    logs: Mutex<Vec<(String, Vec<String>)>>,
    replicas: Mutex<Vec<(String, Option<Replica>)>>,
    input: Mutex<mpsc::Sender<Input>>,
    relay: Relay,
}

/// How commands about the other node reach it.
struct Relay {
    me: String,
    peer: String,
    rt: tokio::runtime::Handle,
    creds: Arc<Credentials>,
    peer_addr: SocketAddr,
    compression: crate::replication::frame::Compression,
    timeout: Duration,
}

impl Shared {
    /// A command for `node`: carried out here, or sent to the peer.
    fn on(&self, node: String, req: Request) -> Response {
        if matches!(req, Request::On { .. }) {
            return Response::error("a command relayed to a node cannot be relayed again");
        }
        let (me, peer) = (&self.relay.me, &self.relay.peer);
        if node == *me {
            return super::Handler::handle(self, req);
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
    fn relayed(&self, json: String) -> String {
        let resp = match serde_json::from_str::<Request>(&json) {
            Ok(Request::On { .. }) => {
                Response::error("a command relayed to a node cannot be relayed again")
            }
            Ok(req) => super::Handler::handle(self, req),
            Err(e) => Response::error(format!("malformed relayed command: {e}")),
        };
        serde_json::to_string(&resp).expect("responses serialise")
    }
}

impl super::Handler for Shared {
    fn handle(&self, req: Request) -> Response {
        let command = |module: Option<String>, cmd: Command| {
            self.ask(|reply| Input::Command { module, cmd, reply })
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
                    .map(|m| m.state == "PRIM" || m.state == "ALONE");
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
            Request::Restart { module } => self.ask(|reply| Input::Restart { module, reply }),
            Request::Checker { module, on } => {
                self.ask(|reply| Input::Checker { module, on, reply })
            }
            Request::Log { module } => match self.logs.lock().iter().find(|(n, _)| *n == module) {
                None => Response::error(format!("no module named {module:?}")),
                Some((_, lines)) => Response {
                    ok: true,
                    messages: lines.clone(),
                    ..Response::default()
                },
            },
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
            Request::On { node, request } => self.on(node, *request),
        }
    }
}

impl Shared {
    /// Hands a request to the manager thread and waits for its answer.
    fn ask(&self, input: impl FnOnce(mpsc::Sender<Response>) -> Input) -> Response {
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
        f: impl FnOnce(&Replica) -> Result<String, String>,
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
            Err(e) => Response::error(e),
        }
    }
}

/// `2026-11-25T23:49:47.123Z` for milliseconds since the epoch.
fn utc(ms: u64) -> String {
    let (days, rem) = ((ms / 86_400_000) as i64, ms % 86_400_000);
    // Days to a civil date (proleptic Gregorian), after Howard Hinnant.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000
    )
}

/// A listener on every address, IPv6 and IPv4 whatever `bindv6only` says
/// (or IPv4 alone where IPv6 is off).
async fn listen_any(port: u16) -> std::io::Result<tokio::net::TcpListener> {
    let dual = || -> std::io::Result<std::net::TcpListener> {
        use crate::sock;
        use std::os::fd::AsRawFd;
        let sock = sock::socket(libc::AF_INET6, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0)?;
        let set = |level, opt, v: libc::c_int| sock::set(&sock, level, opt, &v);
        set(libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 0)?;
        set(libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
        let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
        sa.sin6_port = port.to_be();
        let len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        if unsafe {
            libc::bind(
                sock.as_raw_fd(),
                (&sa as *const libc::sockaddr_in6).cast(),
                len,
            )
        } < 0
            || unsafe { libc::listen(sock.as_raw_fd(), 128) } < 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(std::net::TcpListener::from(sock))
    };
    match dual() {
        Ok(l) => tokio::net::TcpListener::from_std(l),
        Err(_) => tokio::net::TcpListener::bind(("0.0.0.0", port)).await,
    }
}

/// The heartbeat paths: the configured networks, or the node addresses.
fn paths(s: &Settings, me: &Node, peer: &Node) -> Result<Vec<NetPath>, String> {
    let port = s.heartbeat.port;
    let ip = |h: &crate::config::Host, who: &str| {
        h.ip()
            .ok_or_else(|| format!("node {who}: heartbeats need IP addresses (set node.heartbeat)"))
    };
    let (mine, theirs) = if me.heartbeat.is_empty() {
        (vec![me.address.clone()], vec![peer.address.clone()])
    } else {
        (me.heartbeat.clone(), peer.heartbeat.clone())
    };
    mine.iter()
        .zip(&theirs)
        .map(|(a, b)| {
            Ok(NetPath {
                local: SocketAddr::new(ip(a, &me.name)?, port),
                remote: SocketAddr::new(ip(b, &peer.name)?, port),
            })
        })
        .collect()
}

pub fn run(
    settings: Settings,
    opts: &super::Options,
    rt: &tokio::runtime::Runtime,
    signals: crate::signals::StopSignals,
) -> Result<(), (u8, String)> {
    use crate::exit::{EXIT_FAILURE, EXIT_USAGE};
    let usage = |e: String| (EXIT_USAGE, e);
    let (me, peer) = replicas::identity(&settings, opts.node.as_deref()).map_err(usage)?;
    let (me, peer) = (me.clone(), peer.clone());
    let mut witness = None;
    let mut ping = None;
    let mut etcd = None;
    match &settings.cluster.quorum {
        Quorum::None => {}
        Quorum::Witness(hp) => {
            witness = Some(
                rt.block_on(resolve(&hp.host, hp.port))
                    .map_err(|e| usage(format!("cluster.witness: {e}")))?,
            )
        }
        Quorum::Ping(addrs) => {
            ping = Some(
                // An answer counts for two intervals: one lost echo is not
                // a lost network, and a cut-off node notices within two.
                crate::cluster::ping::Pinger::spawn(
                    addrs.clone(),
                    settings.heartbeat.interval,
                    2 * settings.heartbeat.interval,
                )
                .map_err(|e| (EXIT_FAILURE, format!("cannot start pinging: {e}")))?,
            )
        }
        Quorum::Etcd(urls) => {
            // Like the witness's: the lease outlives its last renewal by the
            // heartbeat timeout plus two intervals; relied on for two.
            let hb = &settings.heartbeat;
            let c = crate::cluster::etcd::Client::new(
                urls.clone(),
                &settings.cluster.name,
                &me.name,
                hb.timeout + 2 * hb.interval,
                2 * hb.interval,
                hb.interval,
            )
            .map_err(usage)?;
            c.clone()
                .spawn()
                .map_err(|e| (EXIT_FAILURE, format!("cannot start the etcd client: {e}")))?;
            etcd = Some(c);
        }
    }
    for m in &settings.modules {
        for c in &m.checkers {
            if let crate::config::Check::Http { url, .. } = &c.check
                && url.https
            {
                return Err(usage(format!(
                    "module {}: http checker of an https:// URL: not available in this \
                     version (check the plain http port, or use a script checker)",
                    m.name
                )));
            }
        }
    }
    let creds = Arc::new(
        Credentials::load(&settings.daemon.tls_dir, &me.name, &peer.name).map_err(|e| {
            usage(format!(
                "TLS credentials in {}: {e} (create them with `tandem init`)",
                settings.daemon.tls_dir.display()
            ))
        })?,
    );
    let key = Key::load(&heartbeat_key_path(&settings.daemon.tls_dir)).map_err(usage)?;
    let quorum: Option<Arc<dyn LeaseQuorum>> = match (witness, etcd) {
        (Some(addr), _) => {
            // Relied on for two heartbeat intervals after each ask: renewed
            // every interval, so one lost answer does not drop it.
            let c = crate::cluster::witness::Client::new(
                key.clone(),
                &settings.cluster.name,
                &me.name,
                addr,
                2 * settings.heartbeat.interval,
                settings.heartbeat.interval,
            );
            rt.spawn(c.clone().run());
            Some(c)
        }
        (None, Some(e)) => Some(e),
        (None, None) => None,
    };
    let port = settings.replication.port;
    let peer_addr = rt.block_on(resolve(&peer.address, port)).map_err(usage)?;
    let my_addr = rt.block_on(resolve(&me.address, port)).map_err(usage)?;
    let paths = paths(&settings, &me, &peer).map_err(usage)?;

    let mut modules = Vec::new();
    for m in &settings.modules {
        let base = replicas::open_dirs(&settings, m).map_err(usage)?;
        let at = settings.daemon.state_dir.join("modules").join(&m.name);
        let role_file = at.join("role.json");
        let saved: Option<RoleFile> = std::fs::read(&role_file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let fresh = saved.as_ref().is_none_or(|r| r.fresh);
        let last = saved.as_ref().map(|r| r.state);
        let caches = (0..m.dirs.len())
            .map(|i| state_dir(&settings.daemon.state_dir, &m.name, i).join("manifest.cache"))
            .collect();
        let g = base[0]
            .log
            .generation()
            .map_err(|e| usage(format!("module {}: change log: {e}", m.name)))?;
        let g = Gen {
            current: g.current,
            history: g.history,
            fresh,
        };
        let mut managed = Managed {
            cfg: m.clone(),
            base,
            caches,
            machine: Machine::new(
                machine_cfg(&settings, m, &me),
                0,
                last,
                g,
                quorum.is_none() && ping.is_none(),
            ),
            replica: None,
            link_task: None,
            mounts: Vec::new(),
            sinks: Vec::new(),
            role_file,
            fresh,
            app_running: false,
            synced: None,
            generation: None,
            log: VecDeque::new(),
            checks_on: true,
            checks_active: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            check_failures: VecDeque::new(),
            checks_from: Instant::now(),
            witness_newest: 0,
            vips: match &m.failover {
                crate::config::Failover::Vip {
                    addresses,
                    interface,
                    announce,
                } => Some(crate::failover::vip::Vips::new(
                    &m.name,
                    addresses.clone(),
                    interface.clone(),
                    *announce,
                )),
                crate::config::Failover::Lb { .. } => None,
            },
            failing: 0,
            fence: super::fence::Fence::new(&m.name),
        };
        *managed.fence.vips.lock() = managed.vips.as_ref().map(|v| v.fence());
        managed.note(format!(
            "starting as {:?} (last run: {})",
            managed.machine.state,
            last.map_or("none".into(), |s| format!("{s:?}"))
        ));
        // Reported now; a node that serves later manages (and removes) it.
        for p in managed
            .vips
            .as_ref()
            .map(|v| v.present())
            .unwrap_or_default()
        {
            tracing::error!(module = %m.name, "{p} before this daemon took it");
            managed.note(format!(
                "{p} before this daemon took it: check who else holds it"
            ));
        }
        // An address with no interface to go to is said now, not at failover.
        if let Some(Err(e)) = managed.vips.as_ref().map(|v| v.plan()) {
            tracing::error!(module = %m.name, "{e}");
            managed.note(format!("{e}: this node cannot serve the module"));
        }
        modules.push(managed);
    }

    let listener = rt
        .block_on(tokio::net::TcpListener::bind(my_addr))
        .map_err(|e| usage(format!("cannot listen for the peer on {my_addr}: {e}")))?;
    let server = Arc::new(SecondaryServer {
        creds: creds.clone(),
        cluster: settings.cluster.name.clone(),
        modules: Mutex::new(Default::default()),
        compression: replicas::compression(settings.replication.compression),
        control: Default::default(),
    });
    rt.spawn(server.clone().run(listener));

    let hb = Heartbeats::new(
        key,
        &settings.cluster.name,
        &me.name,
        &peer.name,
        paths,
        settings.heartbeat.interval,
    );
    let (input_tx, input_rx) = mpsc::channel::<Input>();
    let (heard_tx, mut heard_rx) = tokio::sync::mpsc::unbounded_channel();
    rt.block_on(hb.start(heard_tx)).map_err(usage)?;
    for m in &modules {
        for c in &m.cfg.checkers {
            let (tx, module) = (input_tx.clone(), m.cfg.name.clone());
            let (restarts, window) = (c.restarts, c.window);
            let witness_ok: Arc<dyn Fn() -> bool + Send + Sync> = match &quorum {
                Some(w) => {
                    let w = w.clone();
                    Arc::new(move || w.answering())
                }
                None => Arc::new(|| false),
            };
            crate::failover::checkers::spawn(
                module.clone(),
                c.clone(),
                scripts::Context::new(&module, "prim", &me.name, &peer.name, &m.cfg.dirs),
                m.checks_active.clone(),
                witness_ok,
                move |why| {
                    let _ = tx.send(Input::CheckFailed {
                        module: module.clone(),
                        why,
                        restarts,
                        window,
                        at: Instant::now(),
                    });
                },
            )
            .map_err(|e| (EXIT_FAILURE, format!("cannot start a checker: {e}")))?;
        }
    }
    let fwd = input_tx.clone();
    rt.spawn(async move {
        while let Some(h) = heard_rx.recv().await {
            if fwd.send(Input::Heard(h)).is_err() {
                return;
            }
        }
    });
    tracing::info!(
        "node {} in cluster {}, peer {} ({peer_addr})",
        me.name,
        settings.cluster.name,
        peer.name
    );
    let shared = Arc::new(Shared {
        status: Mutex::new(Status::default()),
        logs: Mutex::new(Vec::new()),
        replicas: Mutex::new(Vec::new()),
        input: Mutex::new(input_tx),
        relay: Relay {
            me: me.name.clone(),
            peer: peer.name.clone(),
            rt: rt.handle().clone(),
            creds: creds.clone(),
            peer_addr,
            compression: replicas::compression(settings.replication.compression),
            timeout: Duration::from_secs(30),
        },
    });
    {
        let s = shared.clone();
        let _ = server.control.set(Arc::new(move |json| s.relayed(json)));
    }
    // The load balancers' probes, answered from the manager's last word; a
    // manager that stops beating for a heartbeat timeout is a hung daemon.
    let health = lb_health::Health::new(&me.name, settings.heartbeat.timeout);
    for m in &modules {
        health.set(&m.cfg.name, m.health());
    }
    let mut lb_ports: Vec<(u16, bool)> = settings
        .modules
        .iter()
        .filter_map(|m| match m.failover {
            crate::config::Failover::Lb { port, tls } => Some((port, tls)),
            crate::config::Failover::Vip { .. } => None,
        })
        .collect();
    lb_ports.sort();
    lb_ports.dedup();
    for (port, tls) in lb_ports {
        let listener = rt
            .block_on(listen_any(port))
            .map_err(|e| usage(format!("lb_port {port}: cannot listen: {e}")))?;
        if tls {
            let config = creds
                .server_config_anonymous()
                .map_err(|e| usage(format!("lb_tls: {e}")))?;
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            rt.spawn(lb_health::serve(listener, health.clone(), move |tcp| {
                let a = acceptor.clone();
                async move { a.accept(tcp).await }
            }));
        } else {
            rt.spawn(lb_health::serve(listener, health.clone(), lb_health::plain));
        }
        tracing::info!(
            "health endpoints on {}://*:{port}",
            if tls { "https" } else { "http" }
        );
    }
    let guard = crate::failover::guard::Guard::spawn().map_err(|e| {
        (
            EXIT_FAILURE,
            format!("cannot start the guard process (it cleans up if this daemon dies): {e}"),
        )
    })?;
    // Fences a cut-off node even while the manager waits for a script.
    let fencer_stop = Arc::new(AtomicBool::new(false));
    let quorum_ok: Option<super::fence::QuorumOk> = match (&quorum, &ping) {
        (Some(q), _) => {
            let q = q.clone();
            Some(Arc::new(move |m: &str| q.holds(m)))
        }
        (None, Some(p)) => {
            let p = p.clone();
            Some(Arc::new(move |_: &str| p.ok()))
        }
        (None, None) => None,
    };
    let fencer = match quorum_ok.clone() {
        None => None,
        Some(ok) => {
            let (heard, two) = (hb.clone(), 2 * settings.heartbeat.interval);
            let quiet = Arc::new(move || {
                heard
                    .heard
                    .lock()
                    .iter()
                    .all(|h| h.is_none_or(|t| t.elapsed() >= two))
            });
            Some(
                super::fence::spawn(
                    modules.iter().map(|m| m.fence.clone()).collect(),
                    ok,
                    quiet,
                    health.clone(),
                    settings.heartbeat.interval,
                    fencer_stop.clone(),
                )
                .map_err(|e| (EXIT_FAILURE, format!("cannot start the fencer: {e}")))?,
            )
        }
    };
    let node = Node2 {
        quorum,
        quorum_ok,
        guard: Mutex::new(Some(guard)),
        ping,
        me,
        peer,
        creds,
        peer_addr,
        server,
        rt: rt.handle().clone(),
        started: Instant::now(),
        health,
        settings,
    };
    let socket = node.settings.daemon.socket.clone();
    let mgr_shared = shared.clone();
    let hb2 = hb.clone();
    let manager = std::thread::Builder::new()
        .name("cluster".into())
        .spawn(move || manage(node, modules, hb2, input_rx, &mgr_shared))
        .map_err(|e| {
            (
                EXIT_FAILURE,
                format!("cannot start the cluster manager: {e}"),
            )
        })?;

    let served = rt.block_on(super::serve(&socket, signals, shared.clone()));
    let (tx, rx) = mpsc::channel();
    if shared.input.lock().send(Input::Shutdown(tx)).is_ok() {
        let _ = rx.recv();
    }
    let _ = manager.join();
    fencer_stop.store(true, Ordering::SeqCst);
    if let Some(f) = fencer {
        let _ = f.join();
    }
    let _ = std::fs::remove_file(&socket);
    served.map_err(|e| (EXIT_FAILURE, format!("{e:#}")))
}

fn machine_cfg(s: &Settings, module: &ModuleConfig, me: &Node) -> machine::Config {
    let preferred = module
        .preferred_primary
        .as_ref()
        .or(s.cluster.preferred_primary.as_ref());
    machine::Config {
        preferred: preferred.map(|p| *p == me.name),
        listed_first: s.nodes[0].name == me.name,
        // Long enough to hear a peer that is up; a peer that is down is not
        // waited for longer than its failure would be.
        boot_wait_ms: s.heartbeat.timeout.as_millis() as u64,
        settle_ms: 2 * s.heartbeat.interval.as_millis() as u64,
        start_retries: 1,
        request_ms: 10_000,
        lease: matches!(s.cluster.quorum, Quorum::Witness(_) | Quorum::Etcd(_)),
    }
}

fn manage(
    node: Node2,
    mut modules: Vec<Managed>,
    hb: Arc<Heartbeats>,
    input: mpsc::Receiver<Input>,
    shared: &Shared,
) {
    let tick = (node.settings.heartbeat.interval / 2).max(Duration::from_millis(20));
    let timeout = node.settings.heartbeat.timeout;
    let mut alive = false;
    let mut notifier = super::notify::Notifier::from_env(timeout);
    if let Some(w) = notifier.watchdog() {
        // Scripts run on this loop: one slower than the watchdog gets the
        // daemon restarted.
        for m in modules.iter_mut().filter(|m| m.cfg.scripts.timeout >= w) {
            tracing::error!(module = %m.cfg.name, "watchdog shorter than the scripts' timeout");
            m.note(format!(
                "the service manager's watchdog ({} s) is not longer than the scripts' timeout_s ({} s): \
                 a slow script would get the daemon restarted; raise WatchdogSec",
                w.as_secs(),
                m.cfg.scripts.timeout.as_secs()
            ));
        }
    }
    let states = |modules: &[Managed]| -> Vec<(String, State, bool)> {
        modules
            .iter()
            .map(|m| (m.cfg.name.clone(), m.machine.state, m.machine.booting()))
            .collect()
    };
    for m in modules.iter_mut() {
        if m.machine.state != State::Stop {
            let _ = m.script(&node, "start_both", "second");
        }
    }
    let publish = |modules: &[Managed], heard: &[Option<Instant>], alive: bool| {
        node.health.beat();
        for m in modules {
            node.health.set(&m.cfg.name, m.health());
        }
        for m in modules {
            m.checks_active.store(
                m.checks_on && m.app_running && m.machine.state.serving(),
                std::sync::atomic::Ordering::Relaxed,
            );
            // A peer that stepped down for this node cannot take over.
            let handed = m
                .machine
                .peer()
                .is_some_and(|p| p.state == Some(State::Stop));
            m.fence
                .armed
                .store(m.machine.state.serving() && !handed, Ordering::SeqCst);
        }
        *hb.views.lock() = modules
            .iter()
            .map(|m| (m.cfg.name.clone(), m.machine.view()))
            .collect();
        *shared.logs.lock() = modules
            .iter()
            .map(|m| (m.cfg.name.clone(), m.log.iter().cloned().collect()))
            .collect();
        *shared.replicas.lock() = modules
            .iter()
            .map(|m| (m.cfg.name.clone(), m.replica.clone()))
            .collect();
        let c = &hb.counters;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        *shared.status.lock() = Status {
            cluster: node.settings.cluster.name.clone(),
            pid: std::process::id(),
            modules: modules.iter().map(|m| m.status(&node)).collect(),
            nodes: Some(NodesStatus {
                node: node.me.name.clone(),
                peer: node.peer.name.clone(),
                peer_alive: alive,
                paths: hb
                    .paths
                    .iter()
                    .zip(heard)
                    .map(|(p, h)| PathStatus {
                        local: p.local.to_string(),
                        remote: p.remote.to_string(),
                        last_heard_ms: h.map(|t| t.elapsed().as_millis() as u64),
                    })
                    .collect(),
                heartbeats_sent: load(&c.sent),
                heartbeats_received: load(&c.received),
                dropped_bad_mac: load(&c.bad_mac),
                dropped_replayed: load(&c.replayed),
                dropped_malformed: load(&c.malformed),
                dropped_foreign: load(&c.foreign),
            }),
        };
    };
    publish(&modules, &hb.heard.lock().clone(), alive);
    notifier.turn(&states(&modules));
    let mut next_tick = Instant::now();
    loop {
        let views_before: Vec<PeerView> = modules.iter().map(|m| m.machine.view()).collect();
        let wait = next_tick.saturating_duration_since(Instant::now());
        match input.recv_timeout(wait) {
            Ok(Input::Heard(h)) => {
                alive = true;
                for m in modules.iter_mut() {
                    // A node that froze meets its peer's news with its lease
                    // as it is now, not as it was before the freeze.
                    if let Some(w) = &node.quorum {
                        let q = w.holds(&m.cfg.name);
                        m.feed(&node, Event::Quorum(q));
                    }
                    let view = h
                        .beat
                        .modules
                        .iter()
                        .find(|(n, _)| *n == m.cfg.name)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default();
                    m.feed(&node, Event::Peer(view));
                }
            }
            Ok(Input::Command { module, cmd, reply }) => {
                let _ = reply.send(command(&node, &mut modules, module, cmd));
            }
            Ok(Input::Restart { module, reply }) => {
                let r = match modules.iter_mut().find(|m| m.cfg.name == module) {
                    None => Response::error(format!("no module named {module:?}")),
                    Some(m) if !m.machine.state.serving() => Response::error(format!(
                        "module {module} does not serve on this node ({:?}): nothing to restart",
                        m.machine.state
                    )),
                    Some(m) => {
                        m.note("restart asked by the operator".into());
                        match m.restart_app(&node) {
                            Ok(()) => Response {
                                ok: true,
                                messages: vec![format!("module {module}: restarted")],
                                ..Response::default()
                            },
                            Err(e) => Response::error(format!("module {module}: {e}")),
                        }
                    }
                };
                let _ = reply.send(r);
            }
            Ok(Input::CheckFailed {
                module,
                why,
                restarts,
                window,
                at,
            }) => {
                if let Some(m) = modules.iter_mut().find(|m| m.cfg.name == module)
                    && m.machine.state.serving()
                    && m.app_running
                    && m.checks_on
                    && at > m.checks_from
                {
                    let now = Instant::now();
                    m.check_failures.retain(|t| now.duration_since(*t) < window);
                    m.check_failures.push_back(now);
                    let n = m.check_failures.len() as u32;
                    if n <= restarts {
                        m.note(format!(
                            "{why}: restarting the application ({n} of {restarts})"
                        ));
                        let _ = m.restart_app(&node);
                    } else {
                        m.note(format!(
                            "{why}: {n} failures within {} s, more than {restarts} restarts",
                            window.as_secs()
                        ));
                        m.check_failures.clear();
                        m.feed(&node, Event::Failed(Failure::Check, why));
                    }
                }
            }
            Ok(Input::Checker { module, on, reply }) => {
                let r = match modules.iter_mut().find(|m| m.cfg.name == module) {
                    None => Response::error(format!("no module named {module:?}")),
                    Some(m) if m.cfg.checkers.is_empty() => {
                        Response::error(format!("module {module} has no checkers"))
                    }
                    Some(m) => {
                        m.checks_on = on;
                        m.check_failures.clear();
                        let what = if on { "resumed" } else { "suspended" };
                        m.note(format!("health checks {what} by the operator"));
                        Response {
                            ok: true,
                            messages: vec![format!("module {module}: health checks {what}")],
                            ..Response::default()
                        }
                    }
                };
                let _ = reply.send(r);
            }
            Ok(Input::Shutdown(done)) => {
                notifier.stopping();
                shutdown(&node, &mut modules, &hb);
                publish(&modules, &hb.heard.lock().clone(), false);
                if let Some(g) = node.guard.lock().take() {
                    g.bye();
                }
                let _ = done.send(());
                return;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        if Instant::now() >= next_tick {
            next_tick = Instant::now() + tick;
            let silent = hb
                .heard
                .lock()
                .iter()
                .all(|h| h.is_none_or(|t| t.elapsed() >= timeout));
            if alive && silent {
                alive = false;
                for m in modules.iter_mut() {
                    m.note(format!(
                        "peer {} lost: no heartbeat on any path for {} ms",
                        node.peer.name,
                        timeout.as_millis()
                    ));
                    m.feed(&node, Event::PeerLost);
                }
            }
            // A serving node that has neither quorum (its lease, an address
            // answering) nor news of its peer is most likely cut off: the
            // fencer took it out of service at once, not a whole heartbeat
            // timeout later (see `fence`); here it steps down as it would
            // have, and serves again only as the machine decides.
            for m in modules.iter_mut() {
                if m.machine.state.serving() && m.fence.fenced.load(Ordering::SeqCst) {
                    m.note("neither the peer nor the quorum answers: fenced".into());
                    m.feed(&node, Event::Quorum(false));
                    m.feed(&node, Event::PeerLost);
                }
            }
            for m in modules.iter_mut() {
                m.observe(&node);
                let q = match &node.quorum {
                    None => node.ping.as_ref().is_none_or(|p| p.ok()),
                    Some(w) => {
                        // The serving node keeps its lease; when the peer is
                        // gone, whoever may serve asks for it.
                        let view = m.machine.view();
                        // Asks without wanting still bring the witness's
                        // newest generation.
                        w.want(
                            &m.cfg.name,
                            m.machine.state.serving() || (!alive && m.machine.wants_lease()),
                            view.generation.current,
                            m.machine.state.serving(),
                        );
                        let newest = w.newest(&m.cfg.name);
                        if m.witness_newest != newest {
                            m.witness_newest = newest;
                            m.feed(&node, Event::WitnessNewest(newest));
                        }
                        w.holds(&m.cfg.name)
                    }
                };
                m.feed(&node, Event::Quorum(q));
                m.feed(&node, Event::Tick);
            }
        }
        let changed = modules
            .iter()
            .zip(&views_before)
            .any(|(m, v)| m.machine.view() != *v);
        publish(&modules, &hb.heard.lock().clone(), alive);
        notifier.turn(&states(&modules));
        if let Some(g) = node.guard.lock().as_mut() {
            g.update(modules.iter().filter_map(|m| m.duty(&node)).collect());
        }
        if changed {
            // The peer learns of a new state at once, not at the next interval.
            hb.now.notify_one();
        }
    }
}

fn command(
    node: &Node2,
    modules: &mut [Managed],
    module: Option<String>,
    cmd: Command,
) -> Response {
    let names: Vec<String> = modules.iter().map(|m| m.cfg.name.clone()).collect();
    let selected: Vec<usize> = match &module {
        None => (0..modules.len()).collect(),
        Some(n) => match names.iter().position(|x| x == n) {
            Some(i) => vec![i],
            None => {
                return Response::error(format!(
                    "no module named {n:?} (modules: {})",
                    names.join(", ")
                ));
            }
        },
    };
    let mut messages = Vec::new();
    for i in selected {
        let m = &mut modules[i];
        let was = m.machine.state;
        match m.feed(node, Event::Command(cmd)) {
            Some(Ok(msg)) => {
                if was == State::Stop && m.machine.state != State::Stop {
                    let _ = m.script(node, "start_both", "second");
                }
                if was != State::Stop && m.machine.state == State::Stop {
                    let _ = m.script(node, "stop_both", "second");
                    let _ = m.script(node, "poststop", "second");
                }
                messages.push(format!("module {}: {msg}", m.cfg.name));
            }
            Some(Err(e)) => {
                return Response {
                    ok: false,
                    error: Some(format!("module {}: {e}", m.cfg.name)),
                    messages,
                    ..Response::default()
                };
            }
            None => {}
        }
    }
    Response {
        ok: true,
        messages,
        ..Response::default()
    }
}

/// The daemon stops: a serving module hands over to an up-to-date peer at
/// once; the role recorded is the one to come back in.
fn shutdown(node: &Node2, modules: &mut [Managed], hb: &Heartbeats) {
    for m in modules.iter_mut() {
        let was = m.machine.state;
        if was == State::Stop {
            continue;
        }
        m.feed(node, Event::Command(Command::Stop));
        let _ = m.script(node, "stop_both", "second");
        let _ = m.script(node, "poststop", "second");
        // Not an operator's stop: the next run starts the module again,
        // as SECOND if the peer took over, else in the role it had.
        let back = if m.machine.handover || !was.serving() {
            State::Second
        } else {
            was
        };
        m.save_role(back);
        if let Some(Replica::Secondary(sm)) = m.replica.take() {
            node.server.modules.lock().remove(&m.cfg.name);
            sm.close();
        }
        for d in &m.base {
            let _ = d.log.flush();
        }
    }
    if let Some(w) = &node.quorum {
        // Leases go back at once, so the node taking over gets one now
        // instead of when they would have run out.
        for m in modules.iter() {
            w.want(
                &m.cfg.name,
                false,
                m.machine.view().generation.current,
                false,
            );
        }
    }
    *hb.views.lock() = modules
        .iter()
        .map(|m| (m.cfg.name.clone(), m.machine.view()))
        .collect();
    // Say it a few times: heartbeats are datagrams.
    for _ in 0..3 {
        hb.now.notify_one();
        std::thread::sleep(Duration::from_millis(20));
    }
    if node.quorum.is_some() {
        // The give-back goes out with the next asks.
        std::thread::sleep(2 * node.settings.heartbeat.interval);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn log_times_are_utc_dates() {
        assert_eq!(super::utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(super::utc(1_795_654_315_250), "2026-11-26T00:51:55.250Z");
        assert_eq!(super::utc(951_782_400_001), "2000-02-29T00:00:00.001Z");
    }
}
