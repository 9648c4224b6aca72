//! A module around its state machine: its log, scripts, role file and
//! change logs, and feeding the machine.

use std::path::PathBuf;
use std::time::Duration;

use parking_lot::Mutex;

use super::{Managed, RoleFile, ThisNode};
use crate::cluster::machine::{self, Gen, Machine, Maintenance, State};
use crate::config::{Module as ModuleConfig, Node, Quorum, Settings};
use crate::control::Transition;
use crate::daemon::replicas::{self};
use crate::failover::scripts;
use crate::replication::dir::Dir;
use crate::replication::session::state_dir;

impl Managed {
    pub(super) fn note(&mut self, line: String) {
        self.note_at(utc(crate::cluster::heartbeat::now_ms()), line);
    }

    fn note_at(&mut self, ts: String, line: String) {
        tracing::info!(module = %self.cfg.name, "{line}");
        self.log.push(format!("{ts} {line}"));
    }

    pub(super) fn context(&self, node: &ThisNode, role: &'static str) -> scripts::Context {
        scripts::Context::new(
            &self.cfg.name,
            role,
            &node.me.name,
            &node.peer.name,
            &self.cfg.dirs,
        )
    }

    /// Fresh descriptors and caches over the same change logs, for a role.
    pub(super) fn dirs(&self) -> std::io::Result<Vec<Dir>> {
        self.base
            .iter()
            .zip(&self.caches)
            .map(|(d, c)| {
                Ok(Dir {
                    root: d.root.try_clone()?,
                    log: d.log.clone(),
                    cache: Mutex::new(crate::replication::manifest::Cache::in_dir(c)),
                    snaps: d.snaps.clone(),
                })
            })
            .collect()
    }

    pub(super) fn read_generation(&self) -> Option<Gen> {
        let g = self.base[0].log.generation().ok()?;
        Some(Gen {
            current: g.current,
            history: g.history,
            fresh: self.fresh,
        })
    }

    pub(super) fn save_role(&mut self, state: State) {
        let text = serde_json::to_string(&RoleFile {
            state,
            fresh: self.fresh,
        })
        .expect("serialisable");
        if let Err(e) = write_atomically(&self.role_file, text.as_bytes()) {
            self.note(format!(
                "cannot record the role in {}: {e}",
                self.role_file.display()
            ));
        }
    }

    /// Where this node's word on maintenance is kept, beside the role.
    fn maintenance_file(&self) -> PathBuf {
        self.role_file.with_file_name("maintenance")
    }

    pub(super) fn save_maintenance(&mut self, m: &Maintenance) {
        let text = serde_json::to_string(m).expect("serialisable");
        let path = self.maintenance_file();
        if let Err(e) = write_atomically(&path, text.as_bytes()) {
            tracing::error!(module = %self.cfg.name, "maintenance file {}: {e}", path.display());
            self.note(format!(
                "cannot record maintenance in {}: {e} (the peer keeps it too)",
                path.display()
            ));
        }
    }

    /// This node's word on maintenance as its last run left it: none when
    /// never switched. One that cannot be read counts as none, said in the
    /// log; the peer's word, if newer, is taken at its first heartbeat.
    fn load_maintenance(&mut self) {
        let path = self.maintenance_file();
        let m = match std::fs::read(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => Err(e.to_string()),
            Ok(b) => serde_json::from_slice::<Maintenance>(&b).map_err(|e| e.to_string()),
        };
        match m {
            Ok(m) => {
                if m.on {
                    self.note(format!(
                        "in maintenance since {} (set on {}): nothing moves the module by itself",
                        utc(m.since_ms),
                        m.by
                    ));
                }
                self.machine.restore_maintenance(m);
            }
            Err(e) => {
                tracing::error!(module = %self.cfg.name, "maintenance file {}: {e}", path.display());
                self.note(format!(
                    "cannot read {}: {e}; not in maintenance unless the peer says so",
                    path.display()
                ));
            }
        }
    }

    /// A change of state, in the log for people and in the history.
    pub(super) fn record(&mut self, node: &ThisNode, c: machine::Change) {
        if c.from != c.to {
            node.metrics.state_changed(&self.cfg.name);
        }
        let line = format!("{:?} -> {:?}: {}", c.from, c.to, c.why);
        // The line for people, the record for the history: same time.
        let at = utc(crate::cluster::heartbeat::now_ms());
        self.note_at(at.clone(), line);
        self.log.record(Transition {
            at,
            from: c.from,
            to: c.to,
            why: c.why,
        });
    }
}

pub(super) fn machine_cfg(s: &Settings, module: &ModuleConfig, me: &Node) -> machine::Config {
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
        takeover_ms: takeover_ms(s, module),
        module: module.name.clone(),
        lease: matches!(s.cluster.quorum, Quorum::Witness(_) | Quorum::Etcd(_)),
    }
}

/// How long a peer handed the module may take to serve before this node
/// takes it back. The peer hears of the hand-over within a heartbeat timeout
/// and acts on it within two settle times (it no longer does after); its
/// prestart and start_prim, and a retried start (stop_prim, start_prim), each
/// run up to the scripts' timeout before it announces that it serves, and the
/// announcement takes up to a heartbeat timeout. A heartbeat timeout more
/// covers mounting and linking to this node.
fn takeover_ms(s: &Settings, module: &ModuleConfig) -> u64 {
    let ms = |d: Duration| d.as_millis() as u64;
    3 * ms(s.heartbeat.timeout) + 4 * ms(s.heartbeat.interval) + 4 * ms(module.scripts.timeout)
}

impl Managed {
    /// Opens module `m` as this daemon starts: its change logs and the role
    /// its last run ended in; serving or following is the machine's to decide.
    pub(super) fn open(
        settings: &Settings,
        m: &ModuleConfig,
        me: &Node,
        no_quorum: bool,
        resumed: Option<&crate::daemon::handover::ModuleImage>,
    ) -> Result<Managed, (u8, String)> {
        let usage = |e: String| (crate::exit::EXIT_USAGE, e);
        let roots = match resumed {
            Some(r) => Some(super::upgrade::roots(r).map_err(|e| {
                (
                    crate::exit::EXIT_FAILURE,
                    format!("module {}: the handed-over directories: {e}", m.name),
                )
            })?),
            None => None,
        };
        let base =
            replicas::open_dirs_over(settings, m, roots).map_err(|e| usage(e.to_string()))?;
        let at = settings.daemon.state_dir.join("modules").join(&m.name);
        let role_file = at.join("role.json");
        let saved: Option<RoleFile> = std::fs::read(&role_file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let fresh = saved.as_ref().is_none_or(|r| r.fresh);
        let last = saved.as_ref().map(|r| r.state);
        let caches = (0..m.dirs.len())
            .map(|i| state_dir(&settings.daemon.state_dir, &m.name, i))
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
            machine: match resumed {
                Some(r) => Machine::resume(machine_cfg(settings, m, me), r.machine.clone()),
                None => Machine::new(machine_cfg(settings, m, me), 0, last, g, no_quorum),
            },
            replica: None,
            mounts: Vec::new(),
            sinks: Vec::new(),
            role_file,
            fresh,
            app_running: resumed.is_some_and(|r| r.app_running),
            flushed: resumed.is_some_and(|r| r.flushed),
            log: super::journal::Journal::open(at.join("log")),
            checks: super::app::Checks::default(),
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
            plan: super::plan::Plan::default(),
            fence: crate::daemon::fence::Fence::new(&m.name),
        };
        *managed.fence.vips.lock() = managed.vips.as_ref().map(|v| v.fence());
        if resumed.is_some() {
            // Its maintenance is in the machine handed over.
            managed.note(format!(
                "{:?}, taken over from the previous daemon in this process",
                managed.machine.state
            ));
            return Ok(managed);
        }
        managed.load_maintenance();
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
        Ok(managed)
    }
}

pub(super) use crate::clock::utc;

use crate::durable::write_atomically;
