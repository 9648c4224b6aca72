//! The per-module state machine: who serves, decided from what this node
//! knows (its peer's heartbeats, quorum, its replication state, commands).
//!
//! [`Machine::step`] is pure: it takes an event at a logical time (ms) and
//! returns the actions the daemon must carry out, in order. The daemon runs
//! them, reports a failure back as [`Event::Failed`], and only then announces
//! the new state to the peer, so a peer never acts on a state this node has
//! not reached yet (the twin never starts before the old primary stopped).

use serde::{Deserialize, Serialize};

/// The vendor's module states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum State {
    /// Module stopped on this node.
    Stop,
    /// Running, not allowed to serve.
    Wait,
    /// Receiving replication.
    Second,
    /// Serving, the peer is an up-to-date SECOND.
    Prim,
    /// Serving, the peer absent or not in sync.
    Alone,
}

impl State {
    pub fn serving(self) -> bool {
        matches!(self, State::Prim | State::Alone)
    }

    /// The state as the status, the logs and the service manager show it.
    pub fn name(self) -> &'static str {
        match self {
            State::Stop => "STOP",
            State::Wait => "WAIT",
            State::Second => "SECOND",
            State::Prim => "PRIM",
            State::Alone => "ALONE",
        }
    }
}

/// A name that is not one of the module states (see [`State::name`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a module state")]
pub struct UnknownState(pub String);

impl std::str::FromStr for State {
    type Err = UnknownState;

    fn from_str(s: &str) -> Result<State, UnknownState> {
        [
            State::Stop,
            State::Wait,
            State::Second,
            State::Prim,
            State::Alone,
        ]
        .into_iter()
        .find(|st| st.name() == s)
        .ok_or_else(|| UnknownState(s.to_string()))
    }
}

/// What the peer's heartbeats say about this module.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerView {
    pub state: Option<State>,
    /// As SECOND: its copy is current.
    pub uptodate: bool,
    pub generation: Gen,
    /// It stepped down for this node: take over.
    pub handover: bool,
    /// As SECOND: it asks the primary to hand over (`swap` run there).
    pub wants_primary: bool,
    /// It was told to keep its data over this node's (split brain resolved).
    pub keeps: bool,
    /// Its last run ended serving the module.
    pub served_last: bool,
    /// It cannot serve now (blocked until an operator starts it): nothing
    /// is handed over to it. Heartbeats carry it after
    /// the first version's fields; a peer that does not say counts as able.
    #[serde(skip)]
    pub cannot_serve: bool,
    /// Its word on maintenance (see `maintenance`); carried after the
    /// fields above as well, a peer that says nothing is not in it.
    #[serde(skip)]
    pub maintenance: Maintenance,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Receive the peer's replication; `full`: by content, not by change log.
    BecomeSecondary {
        full: bool,
    },
    /// Stop receiving replication.
    LeaveSecondary,
    /// Copy what this node changed on its own aside before the peer's data
    /// replaces it (a split brain resolved for the peer).
    KeepAside,
    /// Copy aside what this node changed that the peer may lack before it
    /// follows the peer: it stopped serving without handing over, so some of
    /// those changes may never have been acknowledged (not a split brain).
    SetAside,
    /// Open the primary side (mount, link to the peer); `new_generation`
    /// when serving without an up-to-date peer.
    Promote {
        new_generation: bool,
    },
    StartApp,
    StopApp,
    /// Take the primary side out of service before the application stops
    /// without a hand-over (cut off, yielding to newer data, failing with no
    /// current peer to take over): nothing is acknowledged alone any more and
    /// calls blocked on the peer fail at once.
    Fence,
    /// Run one of the scripts of a module's start or stop on this node.
    Run(Hook),
    /// Close the primary side; `flush`: wait until the peer has everything.
    Demote {
        flush: bool,
    },
    /// Remember the role across restarts.
    SaveRole(State),
    /// Remember this node's word on maintenance across restarts.
    SaveMaintenance(Maintenance),
}

/// The scripts that go with starting and stopping a module on a node,
/// whatever its role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// The module leaves STOP here.
    StartBoth,
    /// The module enters STOP here: `stop_both`, then `poststop`.
    StopBoth,
    Poststop,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    Start,
    Stop,
    Swap,
    Prim {
        force: bool,
    },
    /// Split brain: keep this node's data (`true`) or the peer's.
    Resolve {
        keep_mine: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    StartApp,
    /// A health check failed more often than its restarts allow.
    Check,
    Promote,
    Demote,
    Secondary,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Time passed.
    Tick,
    /// A heartbeat from the peer carrying this module's view.
    Peer(PeerView),
    /// No heartbeat on any path for the heartbeat timeout.
    PeerLost,
    Quorum(bool),
    /// The witness's newest generation for the module (0: it knows none).
    WitnessNewest(u64),
    /// Replication: as SECOND, this node's copy is (no longer) current.
    Synced(bool),
    /// This node's generation (it changes when the node serves alone or
    /// adopts the primary's after a resync).
    Generation(Gen),
    Command(Command),
    Failed(Failure, String),
    /// The fencer took this serving node out of service: neither its peer
    /// nor its quorum answered. It steps down as if both were lost.
    Fenced,
    /// The operator switched maintenance on or off here.
    Maintenance(Switch),
}

/// Fixed settings of one module's machine.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// `Some(true)`: this node is `preferred_primary`; `Some(false)`: the peer is.
    pub preferred: Option<bool>,
    /// Tie-break when nothing else decides: the node listed first serves.
    pub listed_first: bool,
    /// After start, how long to wait for the peer before deciding alone.
    pub boot_wait_ms: u64,
    /// How long the peer must have been seen not serving before this node
    /// serves because of it: heartbeats held up while a link was down
    /// arrive in a burst when it comes back, and describe the past.
    pub settle_ms: u64,
    /// Failed application starts retried here before handing over.
    pub start_retries: u32,
    /// How long a `swap` asked of the peer stays asked.
    pub request_ms: u64,
    /// How long a peer this node handed over to may take to serve (hear of
    /// it, mount, start the application) before this node takes the module
    /// back: past it, the peer no longer acts on that hand-over.
    pub takeover_ms: u64,
    /// The module's name, as replies name it.
    pub module: String,
    /// Quorum is a lease that one node holds at a time (witness, etcd): of
    /// two nodes that both claim to serve, the one without it is the past.
    pub lease: bool,
}

/// The answer to a command: what was done, or why nothing was.
pub type Reply = Result<String, Refused>;

#[derive(Debug, Default, PartialEq)]
pub struct Outcome {
    pub actions: Vec<Action>,
    pub reply: Option<Reply>,
    /// The state or its reason changed in this step: what the module's log
    /// and history record.
    pub change: Option<Change>,
}

/// A change of state, or of the reason for it, made by one step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub from: State,
    pub to: State,
    pub why: String,
}

/// Serialised whole when a serving daemon hands over to its next release
/// (`tandem upgrade`), except its settings, which come from the new
/// daemon's configuration (see [`Machine::resume`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Machine {
    #[serde(skip)]
    cfg: Config,
    pub state: State,
    /// Why the last transition happened.
    pub why: String,
    pub since: u64,
    now: u64,
    peer: Option<PeerView>,
    quorum: bool,
    synced: bool,
    generation: Gen,
    /// The role of the last run (serving or not), as persisted.
    last_serving: bool,
    boot_until: Option<u64>,
    pub split_brain: bool,
    /// This node stepped down for the peer: announced until the peer serves.
    pub handover: bool,
    /// When it last handed over.
    handed_over_at: u64,
    /// Since when the peer announces that it handed over to this node.
    handover_heard: Option<u64>,
    /// This node could not serve while that hand-over stood: it does not
    /// carry it out later, the peer takes the module back.
    declined: bool,
    /// The peer let a hand-over of this node lapse: it is not handed the
    /// module again by itself until it serves, is lost or asks anew.
    peer_declined: bool,
    /// `swap` asked of the peer until this time.
    pub wants_primary_until: Option<u64>,
    keeps: bool,
    /// The witness's newest generation (0: unknown).
    witness_newest: u64,
    /// Since when (logical ms) the peer has been seen not serving.
    peer_idle_since: Option<u64>,
    /// The generation the peer announced last (kept when it is lost).
    peer_generation: Option<Gen>,
    /// Becoming SECOND failed here: not retried until `tandem start`.
    cannot_follow: bool,
    /// Made primary with `--force`: serves without quorum until the peer is seen.
    forced: bool,
    /// Not allowed to serve until an operator starts the module again.
    pub blocked: Option<String>,
    start_failures: u32,
    /// Stopped serving without handing over (fenced, yielded, crashed): its
    /// changes the peer may lack are set aside before it follows the peer.
    unhanded: bool,
    /// This node's word on maintenance, and the peer's as last heard.
    maintenance: Maintenance,
    peer_maintenance: Maintenance,
}

impl Machine {
    /// A machine at `now` for a node whose last run ended `last` (None: never
    /// ran) with data generation `generation`.
    pub fn new(cfg: Config, now: u64, last: Option<State>, generation: Gen, quorum: bool) -> Self {
        let stopped = last == Some(State::Stop);
        Machine {
            boot_until: Some(now + cfg.boot_wait_ms),
            cfg,
            state: if stopped { State::Stop } else { State::Wait },
            why: if stopped {
                "stopped before the daemon restarted".into()
            } else {
                "starting: waiting for the peer".into()
            },
            since: now,
            now,
            peer: None,
            quorum,
            synced: false,
            generation,
            last_serving: last.is_some_and(State::serving),
            split_brain: false,
            handover: false,
            handed_over_at: 0,
            handover_heard: None,
            declined: false,
            peer_declined: false,
            wants_primary_until: None,
            keeps: false,
            forced: false,
            cannot_follow: false,
            peer_idle_since: None,
            witness_newest: 0,
            peer_generation: None,
            blocked: None,
            start_failures: 0,
            unhanded: last.is_some_and(State::serving),
            maintenance: Maintenance::default(),
            peer_maintenance: Maintenance::default(),
        }
    }

    /// A machine handed over by the previous daemon, under this daemon's
    /// settings; its times are the previous daemon's logical clock, which
    /// this daemon continues.
    pub fn resume(cfg: Config, mut was: Machine) -> Machine {
        was.cfg = cfg;
        was
    }

    /// What this node announces to its peer.
    /// Still in the wait after a start during which it decides nothing
    /// without news of its peer.
    pub fn booting(&self) -> bool {
        self.boot_until.is_some()
    }

    pub fn view(&self) -> PeerView {
        PeerView {
            state: Some(self.state),
            uptodate: self.state == State::Second && self.synced_now(),
            generation: self.generation.clone(),
            handover: self.handover,
            wants_primary: self.wants_primary_until.is_some_and(|t| self.now < t),
            keeps: self.keeps,
            served_last: self.last_serving || self.state.serving(),
            cannot_serve: self.blocked.is_some(),
            maintenance: self.maintenance.clone(),
        }
    }

    /// Why this node cannot serve now (its peer hears whether it is blocked).
    fn unable(&self) -> Option<String> {
        if let Some(b) = &self.blocked {
            return Some(b.clone());
        }
        self.split_brain
            .then(|| "split brain: waiting for `tandem resolve`".into())
    }

    pub fn peer(&self) -> Option<&PeerView> {
        self.peer.as_ref()
    }

    /// The facts fed to the machine as it holds them now: the daemon feeds
    /// only what differs.
    pub fn generation(&self) -> &Gen {
        &self.generation
    }

    pub fn synced(&self) -> bool {
        self.synced
    }

    pub fn witness_newest(&self) -> u64 {
        self.witness_newest
    }

    pub fn step(&mut self, now: u64, ev: Event) -> Outcome {
        let before = (self.state, self.why.clone());
        let mut out = self.step_inner(now, ev);
        self.completed(before.0, &mut out.actions);
        if (self.state, &self.why) != (before.0, &before.1) {
            out.change = Some(Change {
                from: before.0,
                to: self.state,
                why: self.why.clone(),
            });
        }
        out
    }

    /// What a step's decisions imply, added once the step has decided: the
    /// fence before an application stops without a hand-over, and the
    /// scripts of leaving or entering STOP after everything else.
    fn completed(&self, before: State, actions: &mut Vec<Action>) {
        if self.state == State::Wait
            && !self.handover
            && let Some(i) = actions.iter().position(|a| *a == Action::StopApp)
        {
            actions.insert(i, Action::Fence);
        }
        if before == State::Stop && self.state != State::Stop {
            actions.push(Action::Run(Hook::StartBoth));
        }
        if before != State::Stop && self.state == State::Stop {
            actions.push(Action::Run(Hook::StopBoth));
            actions.push(Action::Run(Hook::Poststop));
        }
    }

    /// Whether the fencer may take this node out of service when it finds it
    /// cut off from both its peer and its quorum: it serves, and its peer
    /// did not step down for it (a peer that did cannot take over), nor is
    /// it in maintenance with this node (then it never takes over).
    pub fn fence_armed(&self) -> bool {
        self.state.serving()
            && !self.maintenance_shared()
            && !self
                .peer
                .as_ref()
                .is_some_and(|p| p.state == Some(State::Stop))
    }

    /// The role to record when the daemon stops (not an operator's stop,
    /// which this machine has just carried out from `was`): the next run
    /// comes back as SECOND if the peer took over or the node did not serve,
    /// else in the role it had.
    pub fn role_after_shutdown(&self, was: State) -> State {
        if self.handover || !was.serving() {
            State::Second
        } else {
            was
        }
    }

    fn step_inner(&mut self, now: u64, ev: Event) -> Outcome {
        self.now = now.max(self.now);
        let mut out = Outcome::default();
        match ev {
            Event::Tick => {}
            Event::Peer(v) => {
                if v.state.is_some_and(State::serving) && self.handover {
                    self.handover = false;
                    self.why = "handed over: the peer serves, this node follows it".into();
                }
                // A peer that does not run this module says nothing of its data.
                if v.state.is_some() {
                    self.peer_generation = Some(v.generation.clone());
                }
                self.forced = false;
                if v.state.is_some_and(State::serving) {
                    self.peer_idle_since = None;
                } else if self.peer_idle_since.is_none() {
                    self.peer_idle_since = Some(self.now);
                }
                self.heard_handover(&v);
                self.heard_maintenance(&v, &mut out.actions);
                self.peer = Some(v);
            }
            Event::PeerLost => self.peer_lost(),
            Event::Quorum(q) => self.quorum = q,
            Event::WitnessNewest(g) => self.witness_newest = g,
            Event::Synced(s) => self.synced = s,
            Event::Generation(g) => self.generation = g,
            Event::Command(c) => {
                let reply = self.command(c, &mut out.actions);
                out.reply = Some(reply);
            }
            Event::Failed(f, msg) => self.failed(f, msg, &mut out.actions),
            // A node that no longer serves has nothing left to fence.
            Event::Fenced if self.state.serving() => {
                self.quorum = false;
                self.peer_lost();
                // In maintenance `decide` keeps serving without peer and
                // quorum; a fence that happened anyway is carried through.
                if self.maintenance_shared() && !self.forced {
                    self.fence_self(&mut out.actions);
                }
            }
            Event::Fenced => {}
            Event::Maintenance(s) => out.reply = Some(self.switch_maintenance(s, &mut out.actions)),
        }
        if self
            .boot_until
            .is_some_and(|t| self.peer.is_some() || self.now >= t)
        {
            self.boot_until = None;
        }
        if self.wants_primary_until.is_some_and(|t| self.now >= t) {
            self.wants_primary_until = None;
        }
        self.decide(&mut out.actions);
        // A hand-over standing while this node could not serve is not carried
        // out later: the peer takes the module back as soon as it hears so.
        if self.handover_heard.is_some() && !self.state.serving() && self.blocked.is_some() {
            self.declined = true;
        }
        out
    }

    fn peer_lost(&mut self) {
        self.peer = None;
        self.peer_idle_since = None;
        self.handover_heard = None;
        self.declined = false;
        self.peer_declined = false;
    }

    /// Keeps track of the peer's hand-over to this node and of its asks.
    fn heard_handover(&mut self, v: &PeerView) {
        if !v.handover {
            self.handover_heard = None;
            self.declined = false;
        } else if self.handover_heard.is_none() {
            self.handover_heard = Some(self.now);
            self.declined = false;
        }
        let asked_anew = v.wants_primary && !self.peer.as_ref().is_some_and(|p| p.wants_primary);
        if asked_anew || v.state.is_some_and(State::serving) {
            self.peer_declined = false;
        }
    }

    /// Whether to carry out the peer's hand-over: only while it is new (it
    /// is acted on when heard; a node in WAIT first lets the peer's state
    /// settle), and only if this node could serve all along. Past that, the
    /// peer takes the module back (see `take_back`): acting on it then could
    /// make two servers. A stopped peer takes nothing back.
    fn honours_handover(&self, peer: &PeerView) -> bool {
        peer.state == Some(State::Stop)
            || (!self.declined
                && self
                    .handover_heard
                    .is_some_and(|t| self.now.saturating_sub(t) <= 2 * self.cfg.settle_ms))
    }

    fn hand_over(&mut self, yes: bool) {
        self.handover = yes;
        if yes {
            self.handed_over_at = self.now;
        }
    }

    /// The peer is an up-to-date SECOND that says it can serve.
    fn peer_can_take_over(&self) -> bool {
        self.peer_is_current_second() && !self.peer.as_ref().is_some_and(|p| p.cannot_serve)
    }

    fn to(&mut self, s: State, why: impl Into<String>, actions: &mut Vec<Action>) {
        self.why = why.into();
        if s.serving() {
            self.last_serving = true;
        } else if s == State::Second {
            self.last_serving = false;
        }
        if s != self.state {
            self.state = s;
            self.since = self.now;
            actions.push(Action::SaveRole(s));
        }
    }

    /// Whether this node's data may be served without the peer: the witness
    /// says it is the newest (or descends from it), or, without a word from
    /// the witness, it served last or was a current SECOND.
    pub fn newest_alone(&self) -> bool {
        match self.witness_newest {
            0 => self.last_serving || self.synced_now(),
            n => n == self.generation.current || self.generation.history.contains(&n),
        }
    }

    /// Worth asking the witness for the lease: serving, or able to serve
    /// without the peer. A node with stale data never holds it, so it can
    /// never keep the node with the newest data from serving; nor does a
    /// node that maintenance keeps from serving by itself.
    pub fn wants_lease(&self) -> bool {
        self.state.serving()
            || (self.state != State::Stop
                && self.serves_by_itself()
                && self.blocked.is_none()
                && !self.split_brain
                && self.newest_alone())
    }

    /// The peer has been seen not serving for `settle_ms`.
    fn peer_settled(&self) -> bool {
        self.peer_idle_since
            .is_some_and(|t| self.now.saturating_sub(t) >= self.cfg.settle_ms)
    }

    /// As SECOND: current, and not overtaken by a primary that went on
    /// alone (a new generation) since — even if that peer is gone now.
    fn synced_now(&self) -> bool {
        self.synced
            && self
                .peer_generation
                .as_ref()
                .is_none_or(|g| compare(&self.generation, g) == Order::Same)
    }

    /// Starts serving, always under a new generation: until the peer is
    /// streaming again, what this node acknowledges exists here only, and a
    /// peer that still carries the old generation must never pass for as new
    /// as this node.
    fn serve(&mut self, why: &str, actions: &mut Vec<Action>) {
        if let Some(b) = &self.blocked {
            self.why = format!("would serve ({why}), but {b}");
            return;
        }
        if self.split_brain {
            self.why = "split brain: waiting for `tandem resolve`".into();
            return;
        }
        if self.state == State::Second {
            actions.push(Action::LeaveSecondary);
        }
        actions.push(Action::Promote {
            new_generation: true,
        });
        actions.push(Action::StartApp);
        self.handover = false;
        self.wants_primary_until = None;
        self.start_failures = 0;
        self.synced = false;
        // Its data is the one served now, local changes included.
        self.unhanded = false;
        let s = if self.peer_is_current_second() {
            State::Prim
        } else {
            State::Alone
        };
        self.to(s, why, actions);
    }

    /// Stops serving; `then` is the state to go to.
    fn step_down(&mut self, flush: bool, then: State, why: &str, actions: &mut Vec<Action>) {
        actions.push(Action::StopApp);
        actions.push(Action::Demote { flush });
        self.unhanded = !flush;
        if then == State::Second {
            actions.push(Action::BecomeSecondary { full: false });
            // The peer had everything: this copy is the same data.
            self.synced = flush;
        }
        self.to(then, why, actions);
    }

    fn peer_is_current_second(&self) -> bool {
        self.peer.as_ref().is_some_and(|p| {
            p.state == Some(State::Second)
                && p.uptodate
                && compare(&self.generation, &p.generation) == Order::Same
        })
    }
}

mod command;
pub use command::Refused;
mod generation;
pub use generation::{Gen, Order, compare};
mod maintenance;
pub use maintenance::{Maintenance, Switch};
mod decide;

#[cfg(test)]
mod tests;
