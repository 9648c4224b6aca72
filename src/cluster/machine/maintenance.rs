//! Maintenance mode (Pacemaker's `maintenance-mode`, Patroni's `pause`):
//! while it is on for a module, nothing moves the module by itself — no
//! failover, no failback, no hand-over or restart for a failing check, no
//! self-fencing — and the operator's commands still work. Heartbeats,
//! replication, resync and verify go on. What ends an operator's command is
//! not suppressed: a hand-over (`swap`) is carried out, and taken back if
//! the peer cannot serve; two nodes found serving at once still settle
//! which one yields.
//!
//! Each node keeps its word on the matter (a [`Maintenance`] record, kept on
//! disk by the daemon) and announces it in its heartbeats; a node takes its
//! peer's word when it is newer, so both hold the same whichever node the
//! operator asked, even one that could not reach the other at the time. A
//! module is in maintenance on a node when that word says so.

use serde::{Deserialize, Serialize};

use super::{Action, Machine, PeerView, Reply, State};

/// One node's word on maintenance, as it keeps and announces it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Maintenance {
    pub on: bool,
    /// When it was switched (ms since the epoch, by the asked node's clock).
    pub since_ms: u64,
    /// The node the operator asked.
    pub by: String,
    /// Switches counted across both nodes: the higher count is the newer
    /// word, whatever the nodes' clocks say.
    pub version: u64,
}

impl Maintenance {
    /// Whether this word replaces `other`: a later switch, or as many
    /// switches with this one on (each node switched it its own way while
    /// they could not talk: on is the side that moves nothing).
    pub fn newer_than(&self, other: &Maintenance) -> bool {
        self.version > other.version || (self.version == other.version && self.on && !other.on)
    }
}

/// The operator switches maintenance on or off, on node `by` at `at_ms`
/// (ms since the epoch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Switch {
    pub on: bool,
    pub by: String,
    pub at_ms: u64,
}

impl Machine {
    /// Maintenance is on for this module here.
    pub fn maintenance(&self) -> bool {
        self.maintenance.on
    }

    /// This node's word on maintenance (when, by whom).
    pub fn maintenance_record(&self) -> &Maintenance {
        &self.maintenance
    }

    /// Maintenance is on, and the peer said so too when last heard: it
    /// does not take over by itself, so a serving node has nothing to fence
    /// itself against. A peer that has not heard of it yet, or an older one
    /// that knows nothing of maintenance, still may take over: with such a
    /// peer the fence and the self-fencing stay.
    pub fn maintenance_shared(&self) -> bool {
        self.maintenance.on && self.peer_maintenance.on
    }

    /// The word kept on disk, given back as the daemon starts.
    pub fn restore_maintenance(&mut self, m: Maintenance) {
        self.maintenance = m;
    }

    pub(super) fn switch_maintenance(&mut self, s: Switch, actions: &mut Vec<Action>) -> Reply {
        let was = &self.maintenance;
        if was.on == s.on {
            return Ok(if s.on {
                format!("already in maintenance (set on {})", was.by)
            } else {
                "not in maintenance".into()
            });
        }
        self.maintenance = Maintenance {
            on: s.on,
            since_ms: s.at_ms,
            by: s.by,
            version: was.version.max(self.peer_maintenance.version) + 1,
        };
        actions.push(Action::SaveMaintenance(self.maintenance.clone()));
        Ok(if s.on {
            "maintenance on: nothing moves the module by itself (no failover, failback, \
             fencing, nor restart or hand-over for a failing check); commands still work"
                .into()
        } else {
            "maintenance off: the module fails over by itself again".into()
        })
    }

    /// The peer's word, taken when it is newer than this node's.
    pub(super) fn heard_maintenance(&mut self, v: &PeerView, actions: &mut Vec<Action>) {
        // A peer that does not run the module says nothing of it.
        if v.state.is_none() {
            return;
        }
        self.peer_maintenance = v.maintenance.clone();
        if v.maintenance.newer_than(&self.maintenance) {
            self.maintenance = v.maintenance.clone();
            actions.push(Action::SaveMaintenance(self.maintenance.clone()));
        }
    }

    /// Whether this node may start serving on a decision of its own: in
    /// maintenance only to come back in the role it had (it served last,
    /// as its role file says), never to take the module from its peer.
    pub(super) fn serves_by_itself(&self) -> bool {
        !self.maintenance.on || (self.state == State::Wait && self.last_serving)
    }
}
