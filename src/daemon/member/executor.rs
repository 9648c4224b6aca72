//! Carries out what the machine decides, in order: becoming SECOND,
//! promoting (guard told, mounts, replication), starting and stopping the
//! application, demoting.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::app::Script;
use super::module::utc;
use super::plan::{Flow, Job, Next};
use super::{Managed, ThisNode};
use crate::cluster::machine::{Action, Failure, State};
use crate::daemon::replicas::{self, Replica};
use crate::failover::scripts::ScriptError;
use crate::fs::{self, CountingSink, MountConfig, Unmounted};
use crate::replication::aside::Keep;
use crate::replication::secondary::SecondaryModule;

/// Why the primary side could not be opened.
#[derive(Debug, thiserror::Error)]
pub(super) enum PromoteError {
    #[error("change log: {0}")]
    ChangeLog(#[source] crate::changelog::ChangeLogError),
    #[error("{0}")]
    Dirs(#[source] std::io::Error),
    #[error(transparent)]
    Replication(#[from] crate::daemon::replicas::ExcludeError),
    #[error("mounting {}: {source}", path.display())]
    Mount {
        path: std::path::PathBuf,
        source: crate::fs::MountError,
    },
}

/// How long a stopped link may take to end (it was closed first).
const LINK_STOP: Duration = Duration::from_secs(2);

impl Managed {
    /// Starts one piece of work: done at once, or waiting for a script.
    pub(super) fn begin(&mut self, node: &ThisNode, job: Job) -> Flow {
        match job {
            Job::Act(a) => match self.act(node, &a) {
                Ok(flow) => flow,
                Err((failure, error)) => Flow::Failed {
                    what: format!("{a:?}"),
                    failure,
                    error,
                },
            },
            Job::Restart => {
                // Checks resume for the new process only; clients wait.
                self.checks
                    .active
                    .store(false, std::sync::atomic::Ordering::Relaxed);
                node.health.set_serving(&self.cfg.name, false);
                self.app_running = false;
                self.run_script(node, Script::StopPrim, "prim", Next::Restarting)
            }
        }
    }

    /// Goes on with the work a script was part of, now that it answered.
    pub(super) fn resume(
        &mut self,
        node: &ThisNode,
        next: Next,
        ran: Result<(), ScriptError>,
    ) -> Flow {
        let failed = |what: &str, failure, error: &dyn std::fmt::Display| Flow::Failed {
            what: what.into(),
            failure,
            error: error.to_string(),
        };
        match (next, ran) {
            (Next::Promote { new_generation }, Ok(())) => {
                match self.promote(node, new_generation) {
                    Ok(()) => Flow::Done,
                    Err(e) => failed("Promote", Failure::Promote, &e),
                }
            }
            (Next::Promote { .. }, Err(e)) => failed("Promote", Failure::Promote, &e),
            (Next::Started, Ok(())) => {
                self.app_running = true;
                self.checks.from = Instant::now();
                // Clients are sent here only once it runs: the announcements
                // go out and the probe says 200 now.
                if let Some(v) = self.vips.as_mut()
                    && let Err(e) = v.announce(&node.stop)
                {
                    self.note(format!("announcing the virtual addresses: {e}"));
                }
                node.health.set_serving(&self.cfg.name, true);
                Flow::Done
            }
            (Next::Started, Err(e)) => {
                self.release_clients(node);
                failed("StartApp", Failure::StartApp, &e)
            }
            // A failing stop is logged; demoting goes on (the unmount tells
            // whether files are still in use).
            (Next::Stopped | Next::Nothing, _) => Flow::Done,
            (Next::Restarting, _) => {
                self.run_script(node, Script::StartPrim, "prim", Next::Restarted)
            }
            (Next::Restarted, Ok(())) => {
                self.app_running = true;
                node.health
                    .set_serving(&self.cfg.name, self.machine.state.serving());
                self.checks.from = Instant::now();
                self.plan.restarted = Some(Ok(()));
                Flow::Done
            }
            (Next::Restarted, Err(e)) => {
                // A failed start is the machine's to handle.
                let flow = failed("restart", Failure::StartApp, &e);
                self.plan.restarted = Some(Err(e));
                flow
            }
        }
    }

    fn act(&mut self, node: &ThisNode, a: &Action) -> Result<Flow, (Failure, String)> {
        match a {
            Action::BecomeSecondary { full } => {
                let sm = SecondaryModule::new(
                    &self.cfg.name,
                    self.dirs()
                        .map_err(|e| (Failure::Secondary, e.to_string()))?,
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
            Action::Promote { new_generation } => {
                // The guard knows before anything is mounted or started here.
                if let Some(g) = node.guard.lock().as_mut() {
                    g.include(self.guard_duty(node));
                }
                // Before the new generation: a node whose prestart refuses
                // has not served, and its data must not pass for changed on
                // its own.
                let next = Next::Promote {
                    new_generation: *new_generation,
                };
                return Ok(self.run_script(node, Script::Prestart, "prim", next));
            }
            Action::StartApp => {
                // The addresses first (an application may bind to them)…
                self.take_clients(node)
                    .map_err(|e| (Failure::StartApp, e.to_string()))?;
                return Ok(self.run_script(node, Script::StartPrim, "prim", Next::Started));
            }
            Action::Fence => {
                if let Some(Replica::Primary(rep, _)) = &self.replica {
                    rep.fence("this node stops serving without handing over");
                }
            }
            Action::StopApp => {
                self.release_clients(node);
                let running = std::mem::take(&mut self.app_running);
                if running || self.machine.state != State::Wait {
                    return Ok(self.run_script(node, Script::StopPrim, "prim", Next::Stopped));
                }
            }
            Action::Run(hook) => {
                return Ok(self.run_script(node, Script::from(*hook), "second", Next::Nothing));
            }
            Action::Demote { flush } => self.demote(*flush),
            Action::SaveRole(s) => self.save_role(*s),
            Action::SaveMaintenance(m) => self.save_maintenance(m),
        }
        Ok(Flow::Done)
    }

    /// Copies this node's changes that the peer may lack into
    /// `state_dir/modules/MODULE/{under}/TIME/` before the peer's data
    /// replaces them. Nothing is overwritten unless the copy is complete.
    pub(super) fn keep_aside(
        &mut self,
        node: &ThisNode,
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

    /// Opens the primary side once `prestart` agreed: the new generation,
    /// the replication, the mounts.
    fn promote(&mut self, node: &ThisNode, new_generation: bool) -> Result<(), PromoteError> {
        if new_generation {
            for d in &self.base {
                d.log.new_generation().map_err(PromoteError::ChangeLog)?;
            }
        }
        if self.fresh {
            self.fresh = false;
            self.save_role(self.machine.state);
        }
        let rep = self.open_primary(node, false)?;
        for (i, path) in self.cfg.dirs.clone().iter().enumerate() {
            let sink = Arc::new(CountingSink::wrapping(rep.sink(i as u32)));
            match fs::mount(path, sink.clone(), &MountConfig::default()) {
                Ok((m, _)) => {
                    self.mounts.push(m);
                    self.sinks.push(sink);
                }
                Err(source) => {
                    self.demote(false);
                    return Err(PromoteError::Mount {
                        path: path.clone(),
                        source,
                    });
                }
            }
        }
        self.note(format!(
            "serving: {} directories mounted",
            self.mounts.len()
        ));
        Ok(())
    }

    /// The primary side's replication (its link to the peer), and the
    /// fencer armed over it.
    pub(super) fn open_primary(
        &mut self,
        node: &ThisNode,
        resumes: bool,
    ) -> Result<Arc<crate::replication::primary::Replicator>, PromoteError> {
        let s = &node.settings;
        // With a quorum, a peer that stops acknowledging is left behind only
        // while this node may serve alone.
        // With a lease, also the third party's word that this node's
        // generation is the newest served: acknowledged alone, a change is
        // then never older than what the twin may serve.
        let alone_ok = node.quorum_ok.clone().map(|ok| {
            let (module, lease, log) = (
                self.cfg.name.clone(),
                node.quorum.clone(),
                self.base[0].log.clone(),
            );
            Arc::new(move || {
                ok(&module)
                    && lease.as_ref().is_none_or(|q| {
                        log.generation()
                            .is_ok_and(|g| q.newest(&module) == g.current)
                    })
            }) as crate::replication::primary::AloneCheck
        });
        let (rep, link) = replicas::primary(
            s,
            &self.cfg,
            replicas::Wiring {
                dirs: self.dirs().map_err(PromoteError::Dirs)?,
                creds: node.creds.clone(),
                peer_addr: node.peer_addr,
                stop: node.stop.child(),
                alone_ok,
                latency: Some(node.metrics.replication_latency(&self.cfg.name)),
                resumes,
            },
            &node.rt,
        )?;
        self.replica = Some(Replica::Primary(rep.clone(), link));
        *self.fence.rep.lock() = Some(rep.clone());
        self.fence.fenced.store(false, Ordering::SeqCst);
        // Disarmed in maintenance shared with the peer: it never takes over
        // (see `Machine::fence_armed`).
        self.fence
            .armed
            .store(!self.machine.maintenance_shared(), Ordering::SeqCst);
        Ok(rep)
    }

    pub(super) fn demote(&mut self, flush: bool) {
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
        let within = flush.then(|| self.flush_within());
        if self
            .close_primary(within, false, "this node stopped serving the module")
            .is_some()
        {
            self.note(format!(
                "stopped serving in {} ms{}",
                t0.elapsed().as_millis(),
                if flush {
                    ", changes flushed to the peer"
                } else {
                    ""
                }
            ));
        }
    }

    /// Ends the primary side's link to the peer (after every change is
    /// confirmed, with `flush`, as far as the peer answers within that
    /// time; `lost_ends`: not at all once the link is down) and flushes the
    /// change logs. With a link: whether the peer confirmed every change.
    pub(super) fn close_primary(
        &mut self,
        flush: Option<Duration>,
        lost_ends: bool,
        why: &str,
    ) -> Option<bool> {
        let Some(Replica::Primary(rep, link)) = self.replica.take() else {
            return None;
        };
        let mut confirmed = false;
        if let Some(within) = flush {
            let deadline = Instant::now() + within;
            loop {
                let st = rep.status();
                if st.peer == "connected" && st.durable >= st.sent {
                    confirmed = true;
                    break;
                }
                if Instant::now() > deadline || (lost_ends && st.peer == "alone") {
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
        rep.close_link(why);
        for d in rep.dirs() {
            let _ = d.log.flush();
        }
        // Closed above: the link ends at once.
        let joined = link.stop.join(LINK_STOP);
        if !joined.late.is_empty() {
            tracing::error!(
                module = %self.cfg.name,
                "still running {} ms after the link was stopped: {}",
                LINK_STOP.as_millis(),
                joined.late.join(", ")
            );
        }
        Some(confirmed)
    }

    /// How long a hand-over waits for the peer to confirm every change.
    fn flush_within(&self) -> Duration {
        match &self.replica {
            Some(Replica::Primary(rep, _)) => rep.peer_timeout.max(Duration::from_secs(2)),
            _ => Duration::ZERO,
        }
    }

    /// What the guard must undo if this daemon dies now.
    pub(super) fn duty(&self, node: &ThisNode) -> Option<crate::failover::guard::Duty> {
        (self.app_running || !self.mounts.is_empty()).then(|| self.guard_duty(node))
    }

    pub(super) fn guard_duty(&self, node: &ThisNode) -> crate::failover::guard::Duty {
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
}
