//! The manager's loop: input (heartbeats, commands, check failures, ticks)
//! goes to the machines, whose actions run before their new states are
//! announced.

use super::app::Budget;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::app::Script;
use super::control::Shared;
use super::publish::publish;
use super::{Input, Managed, ThisNode};
use crate::cluster::heartbeat::Heartbeats;
use crate::cluster::machine::{Command, Event, Failure, PeerView, State};
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
    let mut alive = false;
    let mut notifier = crate::daemon::notify::Notifier::from_env(timeout);
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
    for m in modules.iter_mut() {
        if m.machine.state != State::Stop {
            let _ = m.script(&node, Script::StartBoth, "second");
        }
    }
    publish(&node, &modules, &hb, shared, alive, Some(&mut notifier));
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
            Ok(Input::Note { module, line }) => {
                for m in modules
                    .iter_mut()
                    .filter(|m| module.as_ref().is_none_or(|n| *n == m.cfg.name))
                {
                    m.note(line.clone());
                }
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
                node.metrics.check_failed(&module);
                if let Some(m) = modules.iter_mut().find(|m| m.cfg.name == module)
                    && m.machine.state.serving()
                    && m.app_running
                    && m.checks.on
                    && at > m.checks.from
                {
                    match super::app::budget(
                        &mut m.checks.failures,
                        Instant::now(),
                        restarts,
                        window,
                    ) {
                        Budget::Restart(n) => {
                            m.note(format!(
                                "{why}: restarting the application ({n} of {restarts})"
                            ));
                            let _ = m.restart_app(&node);
                        }
                        Budget::FailOver(n) => {
                            m.note(format!(
                                "{why}: {n} failures within {} s, more than {restarts} restarts",
                                window.as_secs()
                            ));
                            m.feed(&node, Event::Failed(Failure::Check, why));
                        }
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
                        m.checks.on = on;
                        m.checks.failures.clear();
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
                publish(&node, &modules, &hb, shared, false, None);
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

pub(super) fn command(
    node: &ThisNode,
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
                    let _ = m.script(node, Script::StartBoth, "second");
                }
                if was != State::Stop && m.machine.state == State::Stop {
                    let _ = m.script(node, Script::StopBoth, "second");
                    let _ = m.script(node, Script::Poststop, "second");
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
pub(super) fn shutdown(node: &ThisNode, modules: &mut [Managed], hb: &Heartbeats) {
    for m in modules.iter_mut() {
        let was = m.machine.state;
        if was == State::Stop {
            continue;
        }
        m.feed(node, Event::Command(Command::Stop));
        let _ = m.script(node, Script::StopBoth, "second");
        let _ = m.script(node, Script::Poststop, "second");
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
