//! The operator's commands and the failures the daemon reports back: each
//! is refused up front when this node cannot carry it out, and changes
//! nothing then.

use super::*;

impl Machine {
    pub(super) fn command(&mut self, c: Command, actions: &mut Vec<Action>) -> Reply {
        match c {
            Command::Start => {
                if self.state != State::Stop && self.blocked.is_none() {
                    return Ok(format!("already started ({:?})", self.state));
                }
                self.blocked = None;
                self.cannot_follow = false;
                self.start_failures = 0;
                if self.state == State::Stop {
                    self.to(State::Wait, "started by the operator", actions);
                }
                Ok("started".into())
            }
            Command::Stop => {
                match self.state {
                    State::Stop => return Ok("already stopped".into()),
                    State::Prim | State::Alone => {
                        let current = self.peer_can_take_over();
                        self.hand_over(current);
                        self.step_down(current, State::Stop, "stopped by the operator", actions);
                        return Ok(if current {
                            "stopped; the peer takes over".into()
                        } else {
                            "stopped; nobody serves the module now".into()
                        });
                    }
                    State::Second => actions.push(Action::LeaveSecondary),
                    State::Wait => {}
                }
                self.to(State::Stop, "stopped by the operator", actions);
                Ok("stopped".into())
            }
            Command::Swap => match self.state {
                State::Prim if self.peer_can_take_over() => {
                    self.hand_over(true);
                    self.step_down(true, State::Second, "swap: handing over", actions);
                    Ok("swapped: the peer serves now".into())
                }
                State::Prim if self.peer_is_current_second() => Err(self.peer_blocked("swap")),
                State::Prim | State::Alone => {
                    Err("the peer is not an up-to-date SECOND; swap refused".into())
                }
                State::Second => {
                    let peer_prim = self
                        .peer
                        .as_ref()
                        .is_some_and(|p| p.state == Some(State::Prim));
                    if let Some(why) = self.unable() {
                        Err(self.cannot_serve_here(&why))
                    } else if !self.synced_now() {
                        Err("this node is still syncing; swap when it is up to date".into())
                    } else if !peer_prim {
                        Err("the peer is not PRIM; nothing to swap".into())
                    } else {
                        self.wants_primary_until = Some(self.now + self.cfg.request_ms);
                        Ok("swap asked of the peer; it hands over".into())
                    }
                }
                State::Wait | State::Stop => Err(format!(
                    "this node is {:?}; swap needs one PRIM and one up-to-date SECOND",
                    self.state
                )),
            },
            Command::Prim { force } => {
                let peer_serving = self
                    .peer
                    .as_ref()
                    .is_some_and(|p| p.state.is_some_and(State::serving));
                if self.state.serving() {
                    return Ok("already serving".into());
                }
                if peer_serving {
                    return Err("the peer serves the module; use `tandem swap`".into());
                }
                if self.state == State::Stop {
                    return Err("the module is stopped here; `tandem start` it first".into());
                }
                if !(force || self.state == State::Second && self.synced_now()) {
                    return Err("this copy is not known to be current; \
                                `tandem prim --force` serves it anyway"
                        .into());
                }
                self.blocked = None;
                self.split_brain = false;
                self.forced = force;
                self.serve("made primary by the operator", actions);
                Ok("serving".into())
            }
            Command::Resolve { keep_mine } => {
                if !self.split_brain {
                    return Err("no split brain to resolve".into());
                }
                if !keep_mine && self.peer.as_ref().is_some_and(|p| p.cannot_serve) {
                    return Err(self.peer_blocked("taking its data"));
                }
                if !keep_mine && self.state.serving() && self.peer.is_none() {
                    return Err("the peer is not heard: its data cannot be taken now; \
                                taking its data refused"
                        .into());
                }
                self.split_brain = false;
                if keep_mine {
                    self.keeps = true;
                    Ok("keeping this node's data; the peer resynchronises from it".into())
                } else {
                    self.keeps = false;
                    if self.state.serving() {
                        actions.push(Action::StopApp);
                        actions.push(Action::Demote { flush: false });
                    } else if self.state == State::Second {
                        actions.push(Action::LeaveSecondary);
                    }
                    actions.push(Action::KeepAside);
                    actions.push(Action::BecomeSecondary { full: true });
                    self.synced = false;
                    self.to(
                        State::Second,
                        "split brain resolved: taking the peer's data",
                        actions,
                    );
                    Ok("discarding this node's changes: full sync from the peer".into())
                }
            }
        }
    }

    /// Why a command that would make the peer serve is refused.
    pub(super) fn peer_blocked(&self, what: &str) -> String {
        format!(
            "the peer cannot serve (see its status; `tandem start {}` there clears the \
             block); {what} refused",
            self.cfg.module
        )
    }

    /// Why a command that would make this node serve is refused.
    pub(super) fn cannot_serve_here(&self, why: &str) -> String {
        if self.blocked.is_some() {
            format!(
                "this node cannot serve ({why}); `tandem start {}` on this node clears \
                 the block; swap refused",
                self.cfg.module
            )
        } else {
            format!("this node cannot serve ({why}); swap refused")
        }
    }

    pub(super) fn failed(&mut self, f: Failure, msg: String, actions: &mut Vec<Action>) {
        match f {
            Failure::StartApp if self.state.serving() => {
                self.start_failures += 1;
                if self.start_failures <= self.cfg.start_retries {
                    self.why = format!("application start failed ({msg}): retrying");
                    actions.push(Action::StopApp);
                    actions.push(Action::StartApp);
                } else {
                    self.blocked = Some(format!("application does not start here: {msg}"));
                    let current = self.peer_is_current_second();
                    self.hand_over(self.peer_can_take_over());
                    self.step_down(
                        current,
                        State::Wait,
                        &format!("application failed to start ({msg}): handing over"),
                        actions,
                    );
                }
            }
            Failure::Check if self.state.serving() => {
                self.blocked = Some(format!("the application fails its checks here: {msg}"));
                let current = self.peer_is_current_second();
                self.hand_over(self.peer_can_take_over());
                self.step_down(
                    current,
                    State::Wait,
                    &format!("{msg}: handing over"),
                    actions,
                );
            }
            Failure::Promote => {
                self.blocked = Some(format!("cannot serve here: {msg}"));
                actions.push(Action::StopApp);
                actions.push(Action::Demote { flush: false });
                self.to(State::Wait, format!("promotion failed: {msg}"), actions);
            }
            Failure::Secondary => {
                self.blocked = Some(format!("cannot receive replication: {msg}"));
                self.cannot_follow = true;
                self.to(State::Wait, format!("cannot become SECOND: {msg}"), actions);
            }
            Failure::StartApp | Failure::Check | Failure::Demote => {
                self.why = format!("{f:?} failed: {msg}");
            }
        }
    }
}
