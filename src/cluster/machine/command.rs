//! The operator's commands and the failures the daemon reports back: each
//! is refused up front when this node cannot carry it out, and changes
//! nothing then.

use super::*;

/// Why a command is refused: it changed nothing. Said to the operator as it
/// reads here.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// It would make the peer serve, which it cannot until started there.
    #[error(
        "the peer cannot serve (see its status; `tandem start {module}` there clears the \
         block); {what} refused"
    )]
    PeerBlocked { module: String, what: &'static str },
    /// A swap would make this node serve, which it cannot (split brain).
    #[error("this node cannot serve ({why}); swap refused")]
    CannotServe { why: String },
    /// As [`Refused::CannotServe`], blocked until started here again.
    #[error(
        "this node cannot serve ({why}); `tandem start {module}` on this node clears \
         the block; swap refused"
    )]
    Blocked { why: String, module: String },
    #[error("the peer is not an up-to-date SECOND; swap refused")]
    PeerNotCurrent,
    #[error("this node is still syncing; swap when it is up to date")]
    Syncing,
    #[error("the peer is not PRIM; nothing to swap")]
    PeerNotPrim,
    /// A swap asked of a node neither serving nor following (its state).
    #[error("this node is {0:?}; swap needs one PRIM and one up-to-date SECOND")]
    NoPair(State),
    #[error("the peer serves the module; use `tandem swap`")]
    PeerServes,
    #[error("the module is stopped here; `tandem start` it first")]
    Stopped,
    #[error("this copy is not known to be current; `tandem prim --force` serves it anyway")]
    NotCurrent,
    #[error("no split brain to resolve")]
    NoSplitBrain,
    /// Taking the peer's data on the serving node needs the peer heard.
    #[error("the peer is not heard: its data cannot be taken now; taking its data refused")]
    PeerNotHeard,
}

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
                        // In maintenance the peer takes nothing over: only
                        // `swap` moves the module.
                        let hand = current && !self.maintenance();
                        self.hand_over(hand);
                        self.step_down(current, State::Stop, "stopped by the operator", actions);
                        return Ok(if hand {
                            "stopped; the peer takes over".into()
                        } else if self.maintenance() {
                            "stopped; maintenance: not handed over, nobody serves the module \
                             now (`tandem start` here or `tandem prim` on the peer serves it)"
                                .into()
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
                State::Prim | State::Alone => Err(Refused::PeerNotCurrent),
                State::Second => {
                    let peer_prim = self
                        .peer
                        .as_ref()
                        .is_some_and(|p| p.state == Some(State::Prim));
                    if let Some(why) = self.unable() {
                        Err(self.cannot_serve_here(why))
                    } else if !self.synced_now() {
                        Err(Refused::Syncing)
                    } else if !peer_prim {
                        Err(Refused::PeerNotPrim)
                    } else {
                        self.wants_primary_until = Some(self.now + self.cfg.request_ms);
                        Ok("swap asked of the peer; it hands over".into())
                    }
                }
                State::Wait | State::Stop => Err(Refused::NoPair(self.state)),
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
                    return Err(Refused::PeerServes);
                }
                if self.state == State::Stop {
                    return Err(Refused::Stopped);
                }
                if !(force || self.state == State::Second && self.synced_now()) {
                    return Err(Refused::NotCurrent);
                }
                self.blocked = None;
                self.split_brain = false;
                self.forced = force;
                self.serve("made primary by the operator", actions);
                Ok("serving".into())
            }
            Command::Resolve { keep_mine } => {
                if !self.split_brain {
                    return Err(Refused::NoSplitBrain);
                }
                if !keep_mine && self.peer.as_ref().is_some_and(|p| p.cannot_serve) {
                    return Err(self.peer_blocked("taking its data"));
                }
                if !keep_mine && self.state.serving() && self.peer.is_none() {
                    return Err(Refused::PeerNotHeard);
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
    pub(super) fn peer_blocked(&self, what: &'static str) -> Refused {
        Refused::PeerBlocked {
            module: self.cfg.module.clone(),
            what,
        }
    }

    /// Why a command that would make this node serve is refused.
    pub(super) fn cannot_serve_here(&self, why: String) -> Refused {
        if self.blocked.is_some() {
            Refused::Blocked {
                why,
                module: self.cfg.module.clone(),
            }
        } else {
            Refused::CannotServe { why }
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
                    let why = if self.maintenance() {
                        format!("application failed to start ({msg}); maintenance: not handed over")
                    } else {
                        format!("application failed to start ({msg}): handing over")
                    };
                    self.hand_over(self.peer_can_take_over() && !self.maintenance());
                    self.step_down(current, State::Wait, &why, actions);
                }
            }
            // Counted and logged by the daemon, not acted on.
            Failure::Check if self.maintenance() => {
                self.why = format!("{msg}; maintenance: not acted on");
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
