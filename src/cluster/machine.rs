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

impl std::fmt::Display for Gen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.current)?;
        if self.fresh {
            write!(f, " (fresh)")?;
        }
        Ok(())
    }
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

impl std::str::FromStr for State {
    type Err = String;

    fn from_str(s: &str) -> Result<State, String> {
        [
            State::Stop,
            State::Wait,
            State::Second,
            State::Prim,
            State::Alone,
        ]
        .into_iter()
        .find(|st| st.name() == s)
        .ok_or_else(|| format!("{s:?} is not a module state"))
    }
}

/// A data generation as the machine compares it (see `changelog::Generation`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gen {
    pub current: u64,
    pub history: Vec<u64>,
    /// Never served nor synchronised: its data counts for nothing.
    pub fresh: bool,
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
}

/// How two generations relate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    Same,
    /// The other side has everything this side has, and more.
    Behind,
    Ahead,
    /// Both changed on their own since they last agreed.
    Split,
}

pub fn compare(mine: &Gen, theirs: &Gen) -> Order {
    match (mine.fresh, theirs.fresh) {
        (true, true) => return Order::Same,
        (true, false) => return Order::Behind,
        (false, true) => return Order::Ahead,
        _ => {}
    }
    if mine.current == theirs.current {
        Order::Same
    } else if theirs.history.contains(&mine.current) {
        Order::Behind
    } else if mine.history.contains(&theirs.current) {
        Order::Ahead
    } else {
        Order::Split
    }
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
    /// Close the primary side; `flush`: wait until the peer has everything.
    Demote {
        flush: bool,
    },
    /// Remember the role across restarts.
    SaveRole(State),
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
}

/// Fixed settings of one module's machine.
#[derive(Clone, Debug)]
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

/// The answer to a command.
pub type Reply = Result<String, String>;

#[derive(Debug, Default, PartialEq)]
pub struct Outcome {
    pub actions: Vec<Action>,
    pub reply: Option<Reply>,
}

#[derive(Clone, Debug)]
pub struct Machine {
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
        }
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

    pub fn step(&mut self, now: u64, ev: Event) -> Outcome {
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
                self.peer = Some(v);
            }
            Event::PeerLost => {
                self.peer = None;
                self.peer_idle_since = None;
                self.handover_heard = None;
                self.declined = false;
                self.peer_declined = false;
            }
            Event::Quorum(q) => self.quorum = q,
            Event::WitnessNewest(g) => self.witness_newest = g,
            Event::Synced(s) => self.synced = s,
            Event::Generation(g) => self.generation = g,
            Event::Command(c) => {
                let reply = self.command(c, &mut out.actions);
                out.reply = Some(reply);
            }
            Event::Failed(f, msg) => self.failed(f, msg, &mut out.actions),
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
    /// never keep the node with the newest data from serving.
    pub fn wants_lease(&self) -> bool {
        self.state.serving()
            || (self.state != State::Stop
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

    fn decide(&mut self, actions: &mut Vec<Action>) {
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
    fn take_back(&mut self, actions: &mut Vec<Action>) -> bool {
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

    fn decide_waiting(&mut self, actions: &mut Vec<Action>) {
        if self.boot_until.is_some() {
            return;
        }
        let Some(peer) = self.peer.clone() else {
            // Alone: serve only with data known to be the newest — the
            // witness says so, or else it served last, or it was a current
            // SECOND when the peer vanished.
            let newest = self.newest_alone();
            if self.quorum && newest {
                self.serve("peer absent: serving alone", actions);
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
    fn decide_between_idle(&mut self, order: Order, peer: &PeerView, actions: &mut Vec<Action>) {
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
        if mine && !self.peer_settled() {
            self.why = "the peer does not serve: making sure it is not a past state".into();
        } else if mine {
            let why = format!("both idle, this node has the data to serve ({because})");
            self.serve(&why, actions);
        } else if !mine && self.state == State::Wait {
            self.why = "the peer has the data to serve: waiting for it".into();
        }
    }

    fn decide_second(&mut self, actions: &mut Vec<Action>) {
        let current = self.synced_now();
        let Some(peer) = self.peer.clone() else {
            if !current {
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
            Some(State::Stop) if current && self.quorum => {
                self.serve("peer stopped: serving alone", actions)
            }
            _ => {}
        }
    }

    fn decide_serving(&mut self, actions: &mut Vec<Action>) {
        let Some(peer) = self.peer.clone() else {
            if !self.quorum && !self.forced {
                self.step_down(
                    false,
                    State::Wait,
                    "lost the peer and quorum: stopped serving (self-fencing)",
                    actions,
                );
                // The peer may take over meanwhile: quorum coming back is not
                // enough to serve again — the peer, or the witness's word
                // that this data is still the newest, is.
                self.last_serving = false;
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
        let failback = self.cfg.preferred == Some(false) && !self.peer_declined;
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

    /// Both nodes say they serve: exactly one yields, the same one on both
    /// sides. A node that went on alone after the other (its generation
    /// descends from the other's) serves the newest data; a node that froze
    /// or was cut off and comes back still claiming to serve is a past
    /// state, not a split brain: it acknowledged nothing on its own (it
    /// would have started a generation of its own). Only when both went on
    /// alone is it a split brain: the lease holder, else the preferred or
    /// first-listed node, keeps serving.
    fn both_serve(&mut self, peer: &PeerView, actions: &mut Vec<Action>) {
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

    fn command(&mut self, c: Command, actions: &mut Vec<Action>) -> Reply {
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
    fn peer_blocked(&self, what: &str) -> String {
        format!(
            "the peer cannot serve (see its status; `tandem start {}` there clears the \
             block); {what} refused",
            self.cfg.module
        )
    }

    /// Why a command that would make this node serve is refused.
    fn cannot_serve_here(&self, why: &str) -> String {
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

    fn failed(&mut self, f: Failure, msg: String, actions: &mut Vec<Action>) {
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

#[cfg(test)]
mod tests;
