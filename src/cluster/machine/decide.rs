//! What a module's machine decides from what it knows, by state: waiting,
//! following as SECOND, serving, and both nodes serving at once.

use super::*;

impl Machine {
    pub(super) fn decide(&mut self, actions: &mut Vec<Action>) {
        if self.take_back(actions) {
            return;
        }
        match self.state {
            State::Stop => {}
            State::Wait => self.decide_waiting(actions),
            State::Second => self.decide_second(actions),
            State::Prim | State::Alone => self.decide_serving(actions),
        }
    }

    /// A hand-over the peer does not carry out ends with this node serving
    /// again: its data is the newest, the peer never served. At once when the
    /// peer says it cannot serve (it then never carries that hand-over out,
    /// see `declined`), else once the peer had `takeover_ms` to serve (it no
    /// longer acts on the hand-over by then, see `honours_handover`).
    pub(super) fn take_back(&mut self, actions: &mut Vec<Action>) -> bool {
        if !self.handover
            || !matches!(self.state, State::Second | State::Wait)
            || self.blocked.is_some()
        {
            return false;
        }
        let Some(peer) = &self.peer else {
            return false;
        };
        if peer.state.is_some_and(State::serving) {
            return false;
        }
        let why = if peer.cannot_serve {
            "the peer cannot serve".to_string()
        } else if self.now.saturating_sub(self.handed_over_at) >= self.cfg.takeover_ms {
            format!("the peer did not serve within {} ms", self.cfg.takeover_ms)
        } else {
            return false;
        };
        self.serve(
            &format!("handed over, but {why}: taking the module back"),
            actions,
        );
        if self.state.serving() {
            self.peer_declined = true;
        }
        self.state.serving()
    }

    pub(super) fn decide_waiting(&mut self, actions: &mut Vec<Action>) {
        if self.boot_until.is_some() {
            return;
        }
        let Some(peer) = self.peer.clone() else {
            // Alone: serve only with data known to be the newest — the
            // witness says so, or else it served last, or it was a current
            // SECOND when the peer vanished.
            let newest = self.newest_alone();
            if self.quorum && newest && self.serves_by_itself() {
                self.serve("peer absent: serving alone", actions);
            } else if self.quorum && newest {
                self.why = "peer absent; maintenance: not serving by itself \
                            (`tandem prim` serves here)"
                    .into();
            } else if !self.quorum && newest {
                self.why = "peer absent and no quorum: not serving".into();
            } else if self.witness_newest != 0 {
                self.why = format!(
                    "peer absent and the witness knows newer data ({:016x}) than this \
                     node's: waiting for the peer",
                    self.witness_newest
                );
            } else {
                self.why = "peer absent and this copy may be stale: waiting for the peer".into();
            }
            return;
        };
        let order = compare(&self.generation, &peer.generation);
        match peer.state {
            Some(State::Prim | State::Alone) if self.cannot_follow => {}
            Some(State::Prim | State::Alone) => match order {
                Order::Same | Order::Behind if !self.split_brain => {
                    if std::mem::take(&mut self.unhanded) {
                        actions.push(Action::SetAside);
                    }
                    actions.push(Action::BecomeSecondary {
                        full: self.generation.fresh,
                    });
                    self.synced = false;
                    self.to(State::Second, "peer serves: following it", actions);
                }
                _ if peer.keeps => {
                    // The operator chose the peer's data (resolve run there).
                    self.split_brain = false;
                    actions.push(Action::KeepAside);
                    actions.push(Action::BecomeSecondary { full: true });
                    self.synced = false;
                    self.to(
                        State::Second,
                        "split brain resolved for the peer's data: full sync from it",
                        actions,
                    );
                }
                _ => {
                    self.split_brain = true;
                    self.why = format!(
                        "split brain: the peer serves data {} that is not this node's {}; \
                         waiting for `tandem resolve`",
                        peer.generation, self.generation
                    );
                }
            },
            Some(State::Stop) if !self.serves_by_itself() => {
                self.why = "the peer is stopped; maintenance: not serving by itself".into();
            }
            Some(State::Stop)
                if matches!(order, Order::Same | Order::Ahead) && self.peer_settled() =>
            {
                self.serve("peer stopped: serving alone", actions)
            }
            Some(State::Wait | State::Second) => self.decide_between_idle(order, &peer, actions),
            _ => {}
        }
    }

    /// Neither node serves: the newer data serves, then the last primary,
    /// the preferred node, the node listed first.
    pub(super) fn decide_between_idle(
        &mut self,
        order: Order,
        peer: &PeerView,
        actions: &mut Vec<Action>,
    ) {
        if self.handover {
            self.why = "handed over: waiting for the peer to serve".into();
            return;
        }
        if peer.handover && !self.honours_handover(peer) {
            self.why = "the peer handed over, but this node did not take over: \
                        the peer takes the module back"
                .into();
            return;
        }
        // A node that follows as SECOND across the split took the other's
        // data (`resolve` run there): it is resolved.
        let took_mine = peer.state == Some(State::Second) && self.state != State::Second;
        let took_theirs = self.state == State::Second && peer.state != Some(State::Second);
        let (mine, because) = match order {
            Order::Ahead => (true, "newer data here"),
            Order::Behind => (false, "newer data there"),
            Order::Split if self.keeps || peer.keeps || took_mine || took_theirs => {
                self.split_brain = false;
                (self.keeps || took_mine && !peer.keeps, "the operator chose")
            }
            Order::Split => {
                self.split_brain = true;
                self.why = format!(
                    "split brain: this node's data {} and the peer's {} both changed on \
                     their own; waiting for `tandem resolve`",
                    self.generation, peer.generation
                );
                return;
            }
            Order::Same => {
                // A SECOND still syncing has no consistent copy to serve.
                let consistent = self.state != State::Second || self.synced_now();
                if peer.handover && consistent {
                    (true, "the peer handed over")
                } else if peer.handover {
                    self.why = "the peer handed over, but this copy is still syncing".into();
                    return;
                } else if self.last_serving != peer.served_last {
                    (self.last_serving, "the last to serve")
                } else if let Some(p) = self.cfg.preferred {
                    (p, "the preferred primary")
                } else {
                    (self.cfg.listed_first, "the node listed first")
                }
            }
        };
        // In maintenance only the operator moves the module: a hand-over
        // (`swap`), a split brain resolved.
        let asked = peer.handover || order == Order::Split;
        if mine && !asked && !self.serves_by_itself() {
            self.why = format!(
                "both idle, this node has the data to serve ({because}); maintenance: \
                 not serving by itself"
            );
        } else if mine && !self.peer_settled() {
            self.why = "the peer does not serve: making sure it is not a past state".into();
        } else if mine {
            let why = format!("both idle, this node has the data to serve ({because})");
            self.serve(&why, actions);
        } else if !mine && self.state == State::Wait {
            self.why = "the peer has the data to serve: waiting for it".into();
        }
    }

    pub(super) fn decide_second(&mut self, actions: &mut Vec<Action>) {
        let current = self.synced_now();
        let Some(peer) = self.peer.clone() else {
            if self.maintenance() {
                // Still SECOND: it follows the peer again when it is back.
                self.why =
                    "peer lost; maintenance: not taking over (`tandem prim` serves here)".into();
            } else if !current {
                self.why = "peer lost while this copy was not current: waiting".into();
                actions.push(Action::LeaveSecondary);
                self.to(
                    State::Wait,
                    "peer lost while syncing: this copy is inconsistent",
                    actions,
                );
            } else if self.witness_newest != 0 && self.witness_newest != self.generation.current {
                actions.push(Action::LeaveSecondary);
                self.to(
                    State::Wait,
                    "peer lost, and the witness knows newer data than this copy: waiting",
                    actions,
                );
            } else if self.quorum {
                self.serve("peer lost: taking over", actions);
            } else {
                actions.push(Action::LeaveSecondary);
                self.to(
                    State::Wait,
                    "peer lost and no quorum: not taking over",
                    actions,
                );
            }
            return;
        };
        match peer.state {
            Some(State::Second | State::Stop | State::Wait)
                if peer.handover && current && self.honours_handover(&peer) =>
            {
                self.serve("the peer handed over", actions)
            }
            Some(State::Wait | State::Second) => {
                let mut order = compare(&self.generation, &peer.generation);
                // A SECOND's data is never newer than its peer's: a newer
                // generation is one it adopted from the peer's stream, which
                // runs ahead of the peer's heartbeat (a state is announced only
                // once its actions are done). Taken for newer, both nodes
                // would serve at once.
                if order == Order::Ahead && !peer.generation.fresh {
                    order = Order::Same;
                }
                self.decide_between_idle(order, &peer, actions)
            }
            Some(State::Stop) if current && self.quorum && self.maintenance() => {
                self.why = "the peer is stopped; maintenance: not taking over".into();
            }
            Some(State::Stop) if current && self.quorum => {
                self.serve("peer stopped: serving alone", actions)
            }
            _ => {}
        }
    }

    pub(super) fn decide_serving(&mut self, actions: &mut Vec<Action>) {
        let Some(peer) = self.peer.clone() else {
            let cut_off = !self.quorum && !self.forced;
            if cut_off && !self.maintenance_shared() {
                self.fence_self(actions);
            } else if self.state == State::Prim && cut_off {
                self.to(
                    State::Alone,
                    "peer and quorum lost; maintenance: serving on (the peer does not take over)",
                    actions,
                );
            } else if self.state == State::Prim {
                self.to(State::Alone, "peer lost: serving alone", actions);
            }
            return;
        };
        if peer.state.is_some_and(State::serving) {
            self.both_serve(&peer, actions);
            return;
        }
        if peer.state == Some(State::Second)
            && compare(&self.generation, &peer.generation) == Order::Split
        {
            // It follows across the split: it took this node's data
            // (`resolve` run there).
            self.split_brain = false;
        } else if peer.state.is_some()
            && compare(&self.generation, &peer.generation) == Order::Split
            && !peer.keeps
            && !self.keeps
        {
            self.split_brain = true;
            self.why = format!(
                "split brain: this node's data {} and the peer's {} both changed on their own",
                self.generation, peer.generation
            );
        }
        let current = self.peer_is_current_second();
        if current {
            self.keeps = false;
        }
        let label = if current { State::Prim } else { State::Alone };
        if label != self.state {
            let why = if current {
                "peer is an up-to-date SECOND"
            } else {
                "peer not in sync: serving alone"
            };
            self.to(label, why, actions);
        }
        let failback =
            self.cfg.preferred == Some(false) && !self.peer_declined && !self.maintenance();
        if self.peer_can_take_over() && (peer.wants_primary || failback) {
            let why = if peer.wants_primary {
                "swap asked on the peer: handing over"
            } else {
                "the preferred primary is up to date: handing back"
            };
            self.hand_over(true);
            self.step_down(true, State::Second, why, actions);
        }
    }

    /// Stops serving for want of both peer and quorum: the peer may take
    /// over meanwhile.
    pub(super) fn fence_self(&mut self, actions: &mut Vec<Action>) {
        self.step_down(
            false,
            State::Wait,
            "lost the peer and quorum: stopped serving (self-fencing)",
            actions,
        );
        // Quorum coming back is not enough to serve again — the peer, or
        // the witness's word that this data is still the newest, is.
        self.last_serving = false;
    }

    /// Both nodes say they serve: exactly one yields, the same one on both
    /// sides. A node that went on alone after the other (its generation
    /// descends from the other's) serves the newest data; a node that froze
    /// or was cut off and comes back still claiming to serve is a past
    /// state, not a split brain: it acknowledged nothing on its own (it
    /// would have started a generation of its own). Only when both went on
    /// alone is it a split brain: the lease holder, else the preferred or
    /// first-listed node, keeps serving.
    pub(super) fn both_serve(&mut self, peer: &PeerView, actions: &mut Vec<Action>) {
        let order = compare(&self.generation, &peer.generation);
        let keep = match order {
            Order::Ahead => true,
            Order::Behind => false,
            // The lease decides; both still seeing it held is a moment's
            // stale view, settled once the quorum is looked at again.
            _ if self.cfg.lease && self.quorum => true,
            _ if self.cfg.lease => false,
            _ => self.cfg.preferred.unwrap_or(self.cfg.listed_first),
        };
        if order == Order::Split {
            self.split_brain = true;
            self.why = format!(
                "split brain: both nodes serve (data {} here, {} there)",
                self.generation, peer.generation
            );
            if !keep {
                self.step_down(
                    false,
                    State::Wait,
                    "split brain: both nodes served; the other node keeps serving",
                    actions,
                );
            }
        } else if keep && order == Order::Ahead {
            self.why = format!(
                "the peer still claims to serve data {}, older than this node's {}: \
                 it is a past state; serving on",
                peer.generation, self.generation
            );
        } else if keep {
            self.why = "the peer also claims to serve the same data; this node keeps serving \
                        (it holds the lease, or is the one to keep it)"
                .into();
        } else {
            let why = if order == Order::Behind {
                format!(
                    "the peer serves newer data ({}) than this node's ({}): stopped serving \
                     to follow it",
                    peer.generation, self.generation
                )
            } else if self.cfg.lease {
                "the peer serves with the lease, this node without it: stopped serving \
                 to follow it"
                    .into()
            } else {
                "both nodes serve the same data; the other node keeps serving: stopped \
                 serving to follow it"
                    .into()
            };
            self.step_down(false, State::Wait, &why, actions);
            // Coming back as its SECOND, not as the last primary.
            self.last_serving = false;
        }
    }
}
