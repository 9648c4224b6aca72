//! Maintenance as the operator switches it: on this node's modules (their
//! machines decide what it suppresses), then on the peer through the relay;
//! what the module's log and status say of it.

use std::time::{Duration, Instant};

use super::control::Shared;
use super::module::utc;
use super::{Ask, Input, Managed, ThisNode};
use crate::cluster::heartbeat::now_ms;
use crate::cluster::machine::{Event, Switch};
use crate::control::{Asked, MaintenanceStatus, Request, Response};

/// How often a check that keeps failing in maintenance goes to the log.
const NOTE_EVERY: Duration = Duration::from_secs(60);

/// Switches maintenance on the module named, or on every module; an unknown
/// module is refused by name and nothing changes.
pub(super) fn switch(
    node: &ThisNode,
    modules: &mut [Managed],
    module: Option<String>,
    on: bool,
    asked: Asked,
) -> Response {
    let selected = match super::manager::selected(modules, module.as_deref()) {
        Ok(s) => s,
        Err(refused) => return refused,
    };
    let mut messages = Vec::new();
    for i in selected {
        let m = &mut modules[i];
        let s = Switch {
            on,
            by: asked.node.clone(),
            at_ms: asked.at_ms,
        };
        // The request waited for the module's work under way: the machine
        // answers now.
        match m.feed(node, Event::Maintenance(s)) {
            Some(Ok(msg)) => messages.push(format!("module {}: {msg}", m.cfg.name)),
            Some(Err(e)) => return Response::error(format!("module {}: {e}", m.cfg.name)),
            None => {}
        }
    }
    Response {
        ok: true,
        messages,
        ..Response::default()
    }
}

impl Shared {
    /// `tandem maintenance`: applied here, then told to the peer. A peer
    /// that is not heard, or cannot be told, takes it from this node's
    /// heartbeats once it hears them (the newer word wins on both nodes);
    /// the answer says so.
    pub(super) fn maintenance(
        &self,
        module: Option<String>,
        on: bool,
        asked: Option<Asked>,
    ) -> Response {
        // Relayed by the peer: applied here as asked there, and no further.
        let relay = asked.is_none();
        let asked = asked.unwrap_or_else(|| Asked {
            node: self.relay.me.clone(),
            at_ms: now_ms(),
        });
        let mut r = self.ask(|reply| {
            Input::Ask(Ask::Maintenance {
                module: module.clone(),
                on,
                asked: asked.clone(),
                reply,
            })
        });
        if !r.ok || !relay {
            return r;
        }
        let peer = self.relay.peer.clone();
        let heard = self
            .status
            .lock()
            .nodes
            .as_ref()
            .is_some_and(|n| n.peer_alive);
        if !heard {
            r.messages.push(format!(
                "{peer} is not heard: applied on this node only; {peer} takes it from this \
                 node's heartbeats when it is back"
            ));
            // This node may take over now, while a peer that is only cut
            // off still holds maintenance and so does not fence itself.
            if !on {
                r.messages.push(format!(
                    "WARNING: if {peer} still runs, cut off, it is still in maintenance and \
                     keeps serving what it serves: make sure it is down"
                ));
            }
            return r;
        }
        let request = Request::Maintenance {
            module,
            on,
            asked: Some(asked),
        };
        let there = self.on(peer.clone(), request);
        if there.ok {
            r.messages
                .extend(there.messages.into_iter().map(|m| format!("{peer}: {m}")));
        } else {
            r.messages.push(format!(
                "{peer} could not be told ({}): applied on this node; {peer} takes it from \
                 this node's heartbeats",
                there.error.unwrap_or_default()
            ));
        }
        r
    }
}

impl Managed {
    /// The module's maintenance as the status shows it.
    pub(super) fn maintenance_status(&self, node: &ThisNode) -> MaintenanceStatus {
        let m = self.machine.maintenance_record();
        let seconds = if m.on {
            now_ms().saturating_sub(m.since_ms) / 1000
        } else {
            0
        };
        let alert_after_s = node.settings.cluster.maintenance_alert_after.as_secs();
        MaintenanceStatus {
            on: m.on,
            since: if m.since_ms == 0 {
                String::new()
            } else {
                utc(m.since_ms)
            },
            since_ms: m.since_ms,
            by: m.by.clone(),
            seconds,
            overdue: m.on && seconds >= alert_after_s,
            alert_after_s,
            peer_agrees: self.machine.maintenance_shared(),
        }
    }

    /// Maintenance was switched on or off here (`asked`), or taken from
    /// the peer's word: the log says which.
    pub(super) fn noted_maintenance(&mut self, asked: bool) {
        let m = self.machine.maintenance_record();
        let how = if asked {
            format!("asked on {}", m.by)
        } else {
            format!("asked on {}, heard from the peer", m.by)
        };
        let line = if m.on {
            format!(
                "maintenance on ({how}): nothing moves the module by itself; commands still work"
            )
        } else {
            format!("maintenance off ({how}): the module fails over by itself again")
        };
        self.note(line);
    }

    /// A health check failed in maintenance: counted (by the caller) and
    /// logged, at most a line a minute, but not acted on.
    pub(super) fn check_failed_in_maintenance(&mut self, why: String) {
        let now = Instant::now();
        match &mut self.checks.noted {
            Some((at, more)) if now.duration_since(*at) < NOTE_EVERY => *more += 1,
            noted => {
                let more = noted.map_or(0, |(_, n)| n);
                *noted = Some((now, 0));
                let since = if more > 0 {
                    format!(" ({more} more failures since the last line)")
                } else {
                    String::new()
                };
                self.note(format!(
                    "{why}; maintenance: neither restarted nor handed over{since}"
                ));
            }
        }
    }
}
