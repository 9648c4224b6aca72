//! The manager's loop: input (heartbeats, commands, check failures, ticks)
//! goes to the machines, whose actions run before their new states are
//! announced.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::app::Budget;
use super::control::Shared;
use super::plan::Job;
use super::publish::publish;
use super::{Ask, Input, Managed, ThisNode};
use crate::cluster::heartbeat::Heartbeats;
use crate::cluster::machine::{Action, Command, Event, Failure, Hook, PeerView, State};
use crate::control::Response;
use crate::daemon::replicas::Replica;

pub(super) fn manage(
    node: ThisNode,
    mut modules: Vec<Managed>,
    hb: Arc<Heartbeats>,
    input: mpsc::Receiver<Input>,
    shared: &Shared,
) {
    let tick = (node.settings.heartbeat.interval / 2).max(Duration::from_millis(20));
    let timeout = node.settings.heartbeat.timeout;
    // Taken over from the previous daemon of this process (serving with
    // mounts already): the peer was heard until a moment ago.
    let mut alive = modules.iter().any(|m| !m.mounts.is_empty());
    let mut notifier = crate::daemon::notify::Notifier::from_env(timeout);
    for m in modules.iter_mut() {
        if m.machine.state != State::Stop && m.mounts.is_empty() {
            m.queue(&node, [Job::Act(Action::Run(Hook::StartBoth))]);
        }
    }
    // Inputs for a module with work under way wait for it, in order; an
    // answer is sent once the work it started is done.
    let mut held: VecDeque<Ask> = VecDeque::new();
    let mut answers: Vec<Answer> = Vec::new();
    publish(&node, &modules, &hb, shared, alive, Some(&mut notifier));
    let mut next_tick = Instant::now();
    loop {
        let views_before: Vec<PeerView> = modules.iter().map(Managed::view).collect();
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
            Ok(Input::Ran { module, result }) => {
                if let Some(m) = modules.iter_mut().find(|m| m.cfg.name == module) {
                    m.ran(&node, result);
                }
            }
            Ok(Input::Shutdown(done)) => {
                notifier.stopping();
                for a in held.drain(..) {
                    a.refuse("the daemon is stopping");
                }
                shutdown(&node, &mut modules, &hb, &input);
                for a in answers.drain(..) {
                    a.send(&mut modules);
                }
                publish(&node, &modules, &hb, shared, false, None);
                if let Some(g) = node.guard.lock().take() {
                    g.bye();
                }
                let _ = done.send(());
                return;
            }
            Ok(Input::Ask(a)) => held.push_back(a),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        take_held(&node, &mut modules, &mut held, &mut answers);
        let mut i = 0;
        while i < answers.len() {
            if answers[i].modules.iter().any(|&m| modules[m].busy()) {
                i += 1;
            } else {
                answers.swap_remove(i).send(&mut modules);
            }
        }
        if Instant::now() >= next_tick {
            next_tick = Instant::now() + tick;
            let silent = super::liveness::silent(&hb.heard.lock(), timeout, Instant::now());
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
            // timeout later (see `fence`); the machine steps down as it
            // would have, and serves again only as it decides.
            for m in modules.iter_mut() {
                if m.machine.state.serving() && m.fence.fenced.load(Ordering::SeqCst) && !m.busy() {
                    m.note("neither the peer nor the quorum answers: fenced".into());
                    m.feed(&node, Event::Fenced);
                }
            }
            for m in modules.iter_mut() {
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
                        if m.machine.witness_newest() != newest && !m.busy() {
                            m.feed(&node, Event::WitnessNewest(newest));
                        }
                        w.holds(&m.cfg.name)
                    }
                };
                // Facts of now, asked again at the next tick: not kept for
                // a module whose work is under way.
                if !m.busy() {
                    m.observe(&node);
                    m.feed(&node, Event::Quorum(q));
                    m.feed(&node, Event::Tick);
                }
            }
        }
        let changed = modules
            .iter()
            .zip(&views_before)
            .any(|(m, v)| m.view() != *v);
        publish(&node, &modules, &hb, shared, alive, Some(&mut notifier));
        if let Some(g) = node.guard.lock().as_mut() {
            g.update(modules.iter().filter_map(|m| m.duty(&node)).collect());
        }
        if changed {
            // The peer learns of a new state at once, not at the next interval.
            hb.now.notify_one();
        }
    }
}

/// An answer owed to whoever asked, once the work its request started on
/// these modules is done.
struct Answer {
    modules: Vec<usize>,
    reply: mpsc::Sender<Response>,
    /// `None`: a restart, answered with how it ended.
    response: Option<Response>,
}

impl Answer {
    fn send(self, modules: &mut [Managed]) {
        let r = match self.response {
            Some(r) => r,
            None => {
                let m = &mut modules[self.modules[0]];
                let name = &m.cfg.name;
                match m.plan.restarted.take() {
                    Some(Ok(())) => Response {
                        ok: true,
                        messages: vec![format!("module {name}: restarted")],
                        ..Response::default()
                    },
                    Some(Err(e)) => Response::error(format!("module {name}: {e}")),
                    None => Response::error(format!("module {name}: the restart did not end")),
                }
            }
        };
        let _ = self.reply.send(r);
    }
}

/// The modules whose work under way a request waits for.
fn targets(modules: &[Managed], a: &Ask) -> Vec<usize> {
    let index = |name: &str| modules.iter().position(|m| m.cfg.name == name);
    match a {
        Ask::Command { module: None, .. }
        | Ask::Maintenance { module: None, .. }
        | Ask::Upgrade { .. } => (0..modules.len()).collect(),
        Ask::Command {
            module: Some(n), ..
        }
        | Ask::Maintenance {
            module: Some(n), ..
        }
        | Ask::Restart { module: n, .. }
        | Ask::CheckFailed { module: n, .. } => index(n).into_iter().collect(),
        Ask::Checker { .. } | Ask::Note { .. } => Vec::new(),
    }
}

/// Handles the inputs held whose modules have no work under way, in the
/// order they came; one held for a module keeps later ones for it waiting.
fn take_held(
    node: &ThisNode,
    modules: &mut [Managed],
    held: &mut VecDeque<Ask>,
    answers: &mut Vec<Answer>,
) {
    let mut waiting: Vec<usize> = Vec::new();
    let mut kept = VecDeque::new();
    while let Some(a) = held.pop_front() {
        let on = targets(modules, &a);
        if on
            .iter()
            .any(|&m| modules[m].busy() || waiting.contains(&m))
        {
            waiting.extend(on);
            kept.push_back(a);
            continue;
        }
        handle(node, modules, a, on, answers);
    }
    *held = kept;
}

/// One request for modules `on`, none of which has work under way.
fn handle(
    node: &ThisNode,
    modules: &mut [Managed],
    a: Ask,
    on: Vec<usize>,
    answers: &mut Vec<Answer>,
) {
    match a {
        Ask::Command { module, cmd, reply } => {
            let response = command(node, modules, module, cmd);
            answers.push(Answer {
                modules: on,
                reply,
                response: Some(response),
            });
        }
        Ask::Maintenance {
            module,
            on: to,
            asked,
            reply,
        } => {
            let response = super::maintenance::switch(node, modules, module, to, asked);
            answers.push(Answer {
                modules: on,
                reply,
                response: Some(response),
            });
        }
        Ask::Upgrade { program, reply } => {
            // Returns only when nothing was handed over.
            let r = super::upgrade::upgrade(node, modules, &program, &reply);
            let _ = reply.send(r);
        }
        Ask::Note { module, line } => {
            for m in modules
                .iter_mut()
                .filter(|m| module.as_ref().is_none_or(|n| *n == m.cfg.name))
            {
                m.note(line.clone());
            }
        }
        Ask::Restart { module, reply } => match modules.iter().position(|m| m.cfg.name == module) {
            None => {
                let _ = reply.send(Response::error(format!("no module named {module:?}")));
            }
            Some(i) if !modules[i].machine.state.serving() => {
                let _ = reply.send(Response::error(format!(
                    "module {module} does not serve on this node ({:?}): nothing to restart",
                    modules[i].machine.state
                )));
            }
            Some(i) => {
                let m = &mut modules[i];
                m.note("restart asked by the operator".into());
                m.plan.restarted = None;
                m.queue(node, [Job::Restart]);
                answers.push(Answer {
                    modules: vec![i],
                    reply,
                    response: None,
                });
            }
        },
        Ask::CheckFailed {
            module,
            why,
            restarts,
            window,
            at,
        } => {
            node.metrics.check_failed(&module);
            if let Some(m) = modules.iter_mut().find(|m| m.cfg.name == module)
                && m.machine.maintenance()
            {
                m.check_failed_in_maintenance(why);
            } else if let Some(m) = modules.iter_mut().find(|m| m.cfg.name == module)
                && m.machine.state.serving()
                && m.app_running
                && m.checks.on
                && at > m.checks.from
            {
                match super::app::budget(&mut m.checks.failures, Instant::now(), restarts, window) {
                    Budget::Restart(n) => {
                        m.note(format!(
                            "{why}: restarting the application ({n} of {restarts})"
                        ));
                        m.queue(node, [Job::Restart]);
                    }
                    Budget::FailOver(n) => {
                        m.note(format!(
                            "{why}: {n} failures within {} s, more than {restarts} restarts",
                            window.as_secs()
                        ));
                        m.feed(node, Event::Failed(Failure::Check, why));
                    }
                }
            }
        }
        Ask::Checker {
            module,
            on: resume,
            reply,
        } => {
            let r = match modules.iter_mut().find(|m| m.cfg.name == module) {
                None => Response::error(format!("no module named {module:?}")),
                Some(m) if m.cfg.checkers.is_empty() => {
                    Response::error(format!("module {module} has no checkers"))
                }
                Some(m) => {
                    m.checks.on = resume;
                    m.checks.failures.clear();
                    let what = if resume { "resumed" } else { "suspended" };
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
    }
}

pub(super) fn command(
    node: &ThisNode,
    modules: &mut [Managed],
    module: Option<String>,
    cmd: Command,
) -> Response {
    let selected = match selected(modules, module.as_deref()) {
        Ok(s) => s,
        Err(refused) => return refused,
    };
    let mut messages = Vec::new();
    for i in selected {
        let m = &mut modules[i];
        match m.feed(node, Event::Command(cmd)) {
            Some(Ok(msg)) => {
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

/// The modules a request names (all with `None`), or its refusal naming
/// the modules there are.
pub(super) fn selected(modules: &[Managed], module: Option<&str>) -> Result<Vec<usize>, Response> {
    match module {
        None => Ok((0..modules.len()).collect()),
        Some(n) => modules
            .iter()
            .position(|m| m.cfg.name == n)
            .map(|i| vec![i])
            .ok_or_else(|| {
                let names: Vec<&str> = modules.iter().map(|m| m.cfg.name.as_str()).collect();
                Response::error(format!(
                    "no module named {n:?} (modules: {})",
                    names.join(", ")
                ))
            }),
    }
}

/// The daemon stops: a serving module hands over to an up-to-date peer at
/// once; the role recorded is the one to come back in.
pub(super) fn shutdown(
    node: &ThisNode,
    modules: &mut [Managed],
    hb: &Heartbeats,
    input: &mpsc::Receiver<Input>,
) {
    // Work under way ends first (a script ends within its timeout).
    let within = |modules: &[Managed]| {
        modules
            .iter()
            .map(|m| 3 * m.cfg.scripts.timeout)
            .max()
            .unwrap_or_default()
            + Duration::from_secs(5)
    };
    Managed::settle(node, modules, input, within(modules));
    let was: Vec<State> = modules.iter().map(|m| m.machine.state).collect();
    for m in modules
        .iter_mut()
        .filter(|m| m.machine.state != State::Stop)
    {
        m.feed(node, Event::Command(Command::Stop));
    }
    Managed::settle(node, modules, input, within(modules));
    for (m, was) in modules.iter_mut().zip(was) {
        if was == State::Stop {
            continue;
        }
        // Not an operator's stop: the next run starts the module again,
        // as SECOND if the peer took over, else in the role it had.
        let back = m.machine.role_after_shutdown(was);
        m.save_role(back);
        if let Some(Replica::Secondary(sm)) = m.replica.take() {
            node.server.modules.lock().remove(&m.cfg.name);
            sm.close();
        }
        for d in &m.base {
            let _ = d.log.flush();
        }
    }
    // Nothing kept for a snapshot is left unsynced: a clean stop never
    // counts as a power loss at the next boot.
    for m in modules.iter() {
        if let Some(s) = m.base.first().and_then(|d| d.snaps.as_ref()) {
            s.settle(true);
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
        .map(|m| (m.cfg.name.clone(), m.view()))
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
