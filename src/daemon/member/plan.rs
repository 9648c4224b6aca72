//! A module's work in order: what each step of its machine decided, carried
//! out one piece after the other. The pieces that only touch this node
//! (mounts, replication, addresses) run on the manager's thread at once; a
//! script runs on a thread of its own and reports back, so the manager goes
//! on hearing its peer, answering the operator and serving other modules
//! while an application starts or stops.
//!
//! While a module has work under way, news for its machine waits and is
//! given to it, in order, once the work is done: the machine decides on
//! what its actions did, as when they ran in one go, and the peer is told a
//! new state only after its actions are done.

use std::collections::VecDeque;
use std::time::Duration;

use super::app::Script;
use super::{Input, Managed, ThisNode};
use crate::cluster::machine::{self, Action, Event, Failure, PeerView};
use crate::failover::scripts;

/// Failures fed back to the machine in a row, at most: each may lead to
/// another attempt that fails again, whatever the machine decides.
const MAX_FAILURES: u32 = 4;

/// News kept for a busy module, at most; past it the oldest is dropped (a
/// script that runs for minutes under a heartbeat every few milliseconds).
const MAX_DEFERRED: usize = 4096;

/// One piece of work.
#[derive(Debug)]
pub(super) enum Job {
    /// One of the machine's actions.
    Act(Action),
    /// Restarting the application where it runs (its checks failed, or the
    /// operator asked).
    Restart,
}

enum Queued {
    Job(Job),
    /// Where the work of one step of the machine ends: a failure skips the
    /// rest of its step's work, up to here.
    End,
}

/// What a piece of work led to.
pub(super) enum Flow {
    Done,
    /// A script runs; its answer continues the work (see `Next`).
    Waiting,
    /// Reported to the machine; `what` names the work in the log.
    Failed {
        what: String,
        failure: Failure,
        error: String,
    },
}

/// What to do once a script has answered.
#[derive(Clone, Copy, Debug)]
pub(super) enum Next {
    /// `prestart` before promoting.
    Promote { new_generation: bool },
    /// `start_prim` of `StartApp`.
    Started,
    /// `stop_prim` of `StopApp`.
    Stopped,
    /// `stop_prim` of a restart, then `start_prim`.
    Restarting,
    /// `start_prim` of a restart.
    Restarted,
    /// A script whose failure is logged only.
    Nothing,
}

#[derive(Default)]
pub(super) struct Plan {
    queue: VecDeque<Queued>,
    /// The script under way, and what its answer continues.
    running: Option<(Script, Next)>,
    /// Failures fed back since work last went through without one.
    failures: u32,
    failed_in_step: bool,
    /// News for the machine, kept while work is under way.
    deferred: VecDeque<Event>,
    /// What the peer was last told, kept while work is under way.
    announced: Option<PeerView>,
    /// How the last restart ended, for the operator who asked for it.
    pub restarted: Option<Result<(), scripts::ScriptError>>,
}

impl Plan {
    pub(super) fn busy(&self) -> bool {
        self.running.is_some() || !self.queue.is_empty()
    }
}

impl Managed {
    pub(super) fn busy(&self) -> bool {
        self.plan.busy()
    }

    /// What the peer is told of this module: while work is under way, what
    /// it was told before (the new state once the work is done).
    pub(super) fn view(&self) -> PeerView {
        self.plan
            .announced
            .clone()
            .unwrap_or_else(|| self.machine.view())
    }

    /// Gives news to the machine and starts what it decides; while work is
    /// under way, the news waits for it to end. A command's reply, when
    /// answered now.
    pub(super) fn feed(&mut self, node: &ThisNode, ev: Event) -> Option<machine::Reply> {
        if self.busy() {
            if self.plan.deferred.len() >= MAX_DEFERRED {
                self.plan.deferred.pop_front();
            }
            self.plan.deferred.push_back(ev);
            return None;
        }
        let reply = self.step(node, ev);
        self.drive(node);
        reply
    }

    /// Puts work of the daemon's own (not the machine's) in line, and starts
    /// it when nothing else is under way.
    pub(super) fn queue(&mut self, node: &ThisNode, jobs: impl IntoIterator<Item = Job>) {
        let was_idle = !self.busy();
        let view = self.machine.view();
        self.plan
            .queue
            .extend(jobs.into_iter().map(Queued::Job).chain([Queued::End]));
        if was_idle {
            self.plan.announced = Some(view);
            self.drive(node);
        }
    }

    /// One step of the machine, its work put in line.
    fn step(&mut self, node: &ThisNode, ev: Event) -> Option<machine::Reply> {
        let view = self.machine.view();
        let (asked, was) = (
            matches!(ev, Event::Maintenance(_)),
            self.machine.maintenance(),
        );
        let out = self.machine.step(node.now(), ev);
        if self.machine.maintenance() != was {
            self.noted_maintenance(asked);
        }
        if let Some(c) = out.change {
            self.record(node, c);
        }
        if !out.actions.is_empty() {
            if !self.busy() {
                self.plan.announced = Some(view);
            }
            self.plan.queue.extend(
                out.actions
                    .into_iter()
                    .map(|a| Queued::Job(Job::Act(a)))
                    .chain([Queued::End]),
            );
        }
        out.reply
    }

    /// Carries out the work in line until a script runs or nothing is left;
    /// then gives the machine the news that waited.
    fn drive(&mut self, node: &ThisNode) {
        loop {
            if self.plan.running.is_some() {
                return;
            }
            match self.plan.queue.pop_front() {
                Some(Queued::End) => {
                    if !std::mem::take(&mut self.plan.failed_in_step) {
                        self.plan.failures = 0;
                    }
                }
                Some(Queued::Job(job)) => {
                    let flow = self.begin(node, job);
                    self.then(node, flow);
                }
                None => {
                    self.plan.announced = None;
                    let Some(ev) = self.plan.deferred.pop_front() else {
                        return;
                    };
                    self.step(node, ev);
                }
            }
        }
    }

    fn then(&mut self, node: &ThisNode, flow: Flow) {
        let Flow::Failed {
            what,
            failure,
            error,
        } = flow
        else {
            return;
        };
        self.note(format!("{what} failed: {error}"));
        // The rest of that step's work was decided on this one succeeding.
        while let Some(Queued::Job(_)) = self.plan.queue.front() {
            self.plan.queue.pop_front();
        }
        self.plan.failed_in_step = true;
        if self.plan.failures < MAX_FAILURES {
            self.plan.failures += 1;
            self.step(node, Event::Failed(failure, error));
        } else {
            self.note("too many failures in a row: waiting for the operator".into());
        }
    }

    /// Runs `script` off the manager's thread; its answer comes back as
    /// `Input::Ran` and goes on with `next`. A script not configured
    /// succeeds at once.
    pub(super) fn run_script(
        &mut self,
        node: &ThisNode,
        script: Script,
        role: &'static str,
        next: Next,
    ) -> Flow {
        let Some(path) = script.path(&self.cfg.scripts).clone() else {
            return self.resume(node, next, Ok(()));
        };
        let shown = path.clone();
        let ctx = self.context(node, role);
        let timeout = self.cfg.scripts.timeout;
        let (module, inputs) = (self.cfg.name.clone(), node.inputs.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("script {}", script.name()))
            .spawn(move || {
                let result = scripts::run(script.name(), &path, &ctx, timeout);
                // The manager gone, the daemon is ending: nobody waits.
                let _ = inputs.send(Input::Ran { module, result });
            });
        match spawned {
            Ok(_) => {
                self.plan.running = Some((script, next));
                Flow::Waiting
            }
            Err(source) => {
                let e = scripts::ScriptError::CannotRun {
                    what: script.name().into(),
                    path: shown,
                    source,
                };
                self.note(e.to_string());
                self.resume(node, next, Err(e))
            }
        }
    }

    /// A script answered: its work goes on, then whatever is in line.
    pub(super) fn ran(
        &mut self,
        node: &ThisNode,
        result: Result<scripts::Ran, scripts::ScriptError>,
    ) {
        let Some((script, next)) = self.plan.running.take() else {
            return;
        };
        let what = script.name();
        let result = match result {
            Ok(ran) => {
                node.metrics
                    .script_ran(&self.cfg.name, what, ran.took.as_secs_f64());
                self.note(format!("{what} done in {} ms", ran.took.as_millis()));
                for l in ran.output.lines().filter(|l| !l.trim().is_empty()) {
                    self.note(format!("{what}: {l}"));
                }
                Ok(())
            }
            Err(e) => {
                self.note(e.to_string());
                Err(e)
            }
        };
        let flow = self.resume(node, next, result);
        self.then(node, flow);
        self.drive(node);
    }

    /// Waits for the work under way to end, at most `within` (the daemon is
    /// stopping: the scripts' answers are the only input that still counts).
    pub(super) fn settle(
        node: &ThisNode,
        modules: &mut [Managed],
        input: &std::sync::mpsc::Receiver<Input>,
        within: Duration,
    ) {
        let until = std::time::Instant::now() + within;
        while modules.iter().any(Managed::busy) {
            let left = until.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return;
            }
            node.health.beat();
            match input.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(Input::Ran { module, result }) => {
                    if let Some(m) = modules.iter_mut().find(|m| m.cfg.name == module) {
                        m.ran(node, result);
                    }
                }
                Ok(Input::Ask(a)) => a.refuse("the daemon is stopping"),
                Ok(Input::Heard(_)) => {}
                Ok(Input::Shutdown(done)) => {
                    let _ = done.send(());
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
    }
}
