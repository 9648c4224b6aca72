//! What this node reports: each module's status, and everything the manager
//! publishes after each turn of its loop.

use std::sync::atomic::Ordering;

use super::control::Shared;
use super::{Managed, ThisNode};
use crate::cluster::heartbeat::Heartbeats;
use crate::cluster::machine::State;
use crate::control::{
    ClusterModuleStatus, DirStatus, ModuleStatus, NodesStatus, PathStatus, Status,
};

impl Managed {
    pub(super) fn status(&self, node: &ThisNode) -> ModuleStatus {
        let m = &self.machine;
        let peer = m.peer();
        ModuleStatus {
            snapshots: None,
            name: self.cfg.name.clone(),
            state: m.state.name().to_string(),
            replication: self.replica.as_ref().map(|r| r.status()),
            cluster: Some(ClusterModuleStatus {
                state: m.state.name().to_string(),
                why: m.why.clone(),
                since_ms: node.now().saturating_sub(m.since),
                peer_state: peer.and_then(|p| p.state).map(|s| s.name().to_string()),
                peer_uptodate: peer.is_some_and(|p| p.uptodate),
                uptodate: m.view().uptodate,
                generation: format!("{:016x}", m.view().generation.current),
                peer_generation: peer.map(|p| format!("{:016x}", p.generation.current)),
                split_brain: m.split_brain,
                blocked: m.blocked.clone(),
                app_running: self.app_running,
                checks: if self.cfg.checkers.is_empty() {
                    "none".into()
                } else if self.checks.on {
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
                        "{}{}: {}{}",
                        w.kind(),
                        w.release()
                            .map(|r| format!(" (tandem {r})"))
                            .unwrap_or_default(),
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
                maintenance: Some(self.maintenance_status(node)),
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

/// Tells everyone who reads this node's state what the manager just decided:
/// the health endpoint, the checkers, the fencer, the heartbeats, the control
/// socket's status and logs, and the service manager (when given).
pub(super) fn publish(
    node: &ThisNode,
    modules: &[Managed],
    hb: &Heartbeats,
    shared: &Shared,
    alive: bool,
    notifier: Option<&mut crate::daemon::notify::Notifier>,
) {
    let heard = hb.heard.lock().clone();
    node.health.beat();
    for m in modules {
        let mut h = m.health();
        // As SECOND: how far behind, as the serving peer last said.
        if h.state == State::Second.name() && m.machine.peer().is_some() {
            h.lag = hb
                .peer_dirty
                .lock()
                .iter()
                .find(|(n, _)| *n == m.cfg.name)
                .map(|(_, d)| *d);
        }
        node.health.set(&m.cfg.name, h);
    }
    for m in modules {
        m.checks.active.store(
            m.checks.on && m.app_running && m.machine.state.serving(),
            std::sync::atomic::Ordering::Relaxed,
        );
        // The machine's standing decision, once its work is done (promoting
        // arms the fence, demoting disarms it, as they happen).
        if !m.busy() {
            m.fence
                .armed
                .store(m.machine.fence_armed(), Ordering::SeqCst);
        }
    }
    *hb.views.lock() = modules
        .iter()
        .map(|m| (m.cfg.name.clone(), m.view()))
        .collect();
    // Counting dirty bytes reads the change log: once per turn, for both.
    let statuses: Vec<ModuleStatus> = modules.iter().map(|m| m.status(node)).collect();
    *hb.dirty.lock() = statuses
        .iter()
        .filter_map(|s| {
            let r = s.replication.as_ref().filter(|r| r.role == "primary")?;
            Some((s.name.clone(), r.dirty_bytes))
        })
        .collect();
    *shared.logs.lock() = modules
        .iter()
        .map(|m| (m.cfg.name.clone(), m.log.iter().cloned().collect()))
        .collect();
    *shared.history.lock() = modules
        .iter()
        .map(|m| (m.cfg.name.clone(), m.log.transitions().cloned().collect()))
        .collect();
    *shared.replicas.lock() = modules
        .iter()
        .map(|m| (m.cfg.name.clone(), m.replica.clone()))
        .collect();
    let peer_speaks = hb.peer_speaks.lock().clone();
    let c = &hb.counters;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    *shared.status.lock() = Status {
        cluster: node.settings.cluster.name.clone(),
        pid: std::process::id(),
        modules: statuses,
        nodes: Some(NodesStatus {
            node: node.me.name.clone(),
            peer: node.peer.name.clone(),
            peer_alive: alive,
            paths: hb
                .paths
                .iter()
                .zip(&heard)
                .zip(hb.rtt.lock().iter())
                .zip(hb.lost.lock().iter())
                .map(|(((p, h), rtt), lost)| PathStatus {
                    local: p.local.to_string(),
                    remote: p.remote.to_string(),
                    last_heard_ms: h.map(|t| t.elapsed().as_millis() as u64),
                    rtt_us: rtt.map(|d| d.as_micros() as u64),
                    lost: *lost,
                })
                .collect(),
            heartbeats_sent: load(&c.sent),
            heartbeats_received: load(&c.received),
            dropped_bad_mac: load(&c.bad_mac),
            dropped_replayed: load(&c.replayed),
            dropped_malformed: load(&c.malformed),
            dropped_foreign: load(&c.foreign),
            version: crate::versions::SOFTWARE.into(),
            peer_version: peer_speaks.as_ref().map(|s| s.software.clone()),
            heartbeat_protocol: crate::cluster::heartbeat::PROTOCOL.to_string(),
            peer_heartbeat_protocol: peer_speaks.as_ref().map(|s| s.range.to_string()),
            daemon: Some(crate::control::DaemonStatus {
                pid: std::process::id(),
                since_ms: node.since_ms,
                took_over_from: node.took_over_from.clone(),
                taken_back: node.taken_back.clone(),
            }),
        }),
    };
    if let Some(n) = notifier {
        n.turn(
            &modules
                .iter()
                .map(|m| (m.cfg.name.clone(), m.machine.state, m.machine.booting()))
                .collect::<Vec<_>>(),
        );
    }
}
