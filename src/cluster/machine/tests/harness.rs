//! Two machines on an in-memory network with a witness: links are cut,
//! nodes isolated and killed, and at no moment do both run the application.

use super::super::*;

const TICK: u64 = 50;
const HB_TIMEOUT: u64 = 300;
const LEASE: u64 = 1_000;
const SYNC_TICKS: u32 = 4;
const TAKEOVER: u64 = 1_500;
/// Ticks a failing application runs before its checker gives up on it (it
/// restarts it a few times first): long enough for a peer to catch up.
const CHECK_TICKS: u32 = 2 * SYNC_TICKS;

struct Node {
    m: Option<Machine>,
    app: bool,
    /// Ticks the application has been running.
    app_ticks: u32,
    mounted: bool,
    data: Gen,
    /// Ticks connected to a serving peer while SECOND.
    syncing: Option<u32>,
    heard: u64,
    peer_known: bool,
    next_gen: u64,
    /// Paused (SIGSTOP, a VM stall): neither steps nor sends.
    frozen: bool,
    /// Woke from a pause and has not finished its first tick.
    thawing: bool,
    /// Changes this node's copies aside before following its peer.
    set_aside: u32,
    /// What fails here whenever it is tried: promoting, starting the
    /// application, or its checks once it runs.
    fails: Option<Failure>,
    /// Health checks on (`tandem checker MODULE off` suspends them).
    checks: bool,
    /// Its word on maintenance and its role, as kept on disk across
    /// restarts.
    maint: Maintenance,
    role: State,
}

struct Net {
    nodes: [Node; 2],
    link: bool,
    witness: [bool; 2],
    lease: Option<(usize, u64)>,
    now: u64,
    /// What is being tried, for the failure messages.
    label: String,
}

fn cfg(i: usize) -> Config {
    Config {
        preferred: None,
        listed_first: i == 0,
        boot_wait_ms: 500,
        settle_ms: 100,
        start_retries: 1,
        request_ms: 2_000,
        takeover_ms: TAKEOVER,
        module: "web".into(),
        lease: true,
    }
}

impl Net {
    fn new() -> Net {
        let g = Gen {
            current: 1,
            history: vec![],
            fresh: false,
        };
        let node = |i: usize, last| Node {
            m: Some(Machine::new(cfg(i), 0, Some(last), g.clone(), false)),
            app: false,
            app_ticks: 0,
            mounted: false,
            data: g.clone(),
            syncing: None,
            heard: 0,
            peer_known: false,
            next_gen: 100 * (i as u64 + 1),
            frozen: false,
            thawing: false,
            set_aside: 0,
            fails: None,
            checks: true,
            maint: Maintenance::default(),
            role: last,
        };
        let mut n = Net {
            nodes: [node(0, State::Prim), node(1, State::Second)],
            link: true,
            witness: [true, true],
            lease: None,
            now: 0,
            label: String::new(),
        };
        n.run(2_000);
        assert_eq!(n.states(), [Some(State::Prim), Some(State::Second)]);
        n
    }

    fn states(&self) -> [Option<State>; 2] {
        [0, 1].map(|i| self.nodes[i].m.as_ref().map(|m| m.state))
    }

    /// Steps node `i`'s machine and carries out its actions as the daemon
    /// does: an action that fails is reported back and ends the list.
    fn feed(&mut self, i: usize, ev: Event) -> Option<Reply> {
        let now = self.now;
        let m = self.nodes[i].m.as_mut()?;
        let out = m.step(now, ev);
        for a in out.actions {
            let n = &mut self.nodes[i];
            let fails = match &a {
                Action::StartApp => n.fails == Some(Failure::StartApp),
                Action::Promote { .. } => n.fails == Some(Failure::Promote),
                _ => false,
            };
            if fails {
                let f = n.fails.unwrap();
                self.feed(i, Event::Failed(f, format!("{a:?} fails here")));
                break;
            }
            match a {
                Action::StartApp => {
                    assert!(n.mounted, "application started on an unmounted node");
                    n.app = true;
                }
                Action::StopApp => {
                    n.app = false;
                    n.app_ticks = 0;
                }
                Action::Promote { new_generation } => {
                    n.mounted = true;
                    n.syncing = None;
                    if new_generation {
                        n.next_gen += 1;
                        let mut h = vec![n.data.current];
                        h.extend(n.data.history.iter().copied());
                        n.data = Gen {
                            current: n.next_gen,
                            history: h,
                            fresh: false,
                        };
                        let g = n.data.clone();
                        self.feed(i, Event::Generation(g));
                    }
                }
                Action::Demote { .. } => n.mounted = false,
                Action::BecomeSecondary { .. } => n.syncing = Some(0),
                Action::LeaveSecondary => n.syncing = None,
                Action::SetAside => n.set_aside += 1,
                Action::SaveMaintenance(m) => n.maint = m,
                Action::SaveRole(s) => n.role = s,
                Action::KeepAside | Action::Fence | Action::Run(_) => {}
            }
        }
        self.check();
        out.reply
    }

    fn check(&self) {
        // A paused daemon's application still runs but can be acknowledged
        // nothing; it must be stopped within the tick its daemon wakes in.
        if self.nodes.iter().any(|n| n.frozen || n.thawing) {
            return;
        }
        assert!(
            !(self.nodes[0].app && self.nodes[1].app),
            "two nodes run the application at {} ms: {:?} {}",
            self.now,
            self.states(),
            self.label
        );
    }

    /// The witness grants one lease; a holder keeps it by renewing.
    fn quorum(&mut self, i: usize) -> bool {
        let Some(m) = self.nodes[i].m.as_ref() else {
            return false;
        };
        if !self.witness[i] {
            return false;
        }
        let wants = m.state.serving() || !self.nodes[i].peer_known;
        match self.lease {
            Some((h, until)) if h != i && until > self.now => false,
            _ if wants => {
                self.lease = Some((i, self.now + LEASE));
                true
            }
            Some((h, until)) => h == i && until > self.now,
            None => false,
        }
    }

    fn tick(&mut self) {
        self.now += TICK;
        let views: Vec<Option<PeerView>> = self
            .nodes
            .iter()
            .map(|n| n.m.as_ref().filter(|_| !n.frozen).map(|m| m.view()))
            .collect();
        for i in 0..2 {
            if self.nodes[i].frozen {
                continue;
            }
            let j = 1 - i;
            // Like the daemon: a heartbeat is met with the lease as it is now.
            let q = self.quorum(i);
            self.feed(i, Event::Quorum(q));
            if self.link
                && let Some(v) = views[j].clone()
            {
                self.nodes[i].heard = self.now;
                self.nodes[i].peer_known = true;
                // Replication: a SECOND following a serving peer catches up.
                if v.state.is_some_and(State::serving)
                    && let Some(t) = self.nodes[i].syncing.as_mut()
                {
                    *t += 1;
                    if *t == SYNC_TICKS {
                        let g = v.generation.clone();
                        self.nodes[i].data = g.clone();
                        self.feed(i, Event::Generation(g));
                        self.feed(i, Event::Synced(true));
                    }
                }
                self.feed(i, Event::Peer(v));
            } else if self.nodes[i].peer_known && self.now - self.nodes[i].heard >= HB_TIMEOUT {
                self.nodes[i].peer_known = false;
                self.feed(i, Event::PeerLost);
            }
            let q = self.quorum(i);
            self.feed(i, Event::Quorum(q));
            self.feed(i, Event::Tick);
            // The checker: a serving node whose application fails its checks.
            let n = &mut self.nodes[i];
            n.app_ticks += n.app as u32;
            if n.app_ticks >= CHECK_TICKS && n.fails == Some(Failure::Check) && n.checks {
                self.feed(i, Event::Failed(Failure::Check, "the check fails".into()));
            }
            self.nodes[i].thawing = false;
            self.check();
        }
    }

    fn run(&mut self, ms: u64) {
        let end = self.now + ms;
        while self.now < end {
            self.tick();
        }
    }

    fn kill(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        // The guard stops the application when the daemon dies.
        n.m = None;
        n.app = false;
        n.app_ticks = 0;
        n.mounted = false;
        n.syncing = None;
    }

    fn restart(&mut self, i: usize, last: State) {
        let n = &mut self.nodes[i];
        let mut m = Machine::new(cfg(i), self.now, Some(last), n.data.clone(), false);
        m.restore_maintenance(n.maint.clone());
        n.m = Some(m);
        n.peer_known = false;
    }
}

#[test]
fn a_primary_paused_past_the_timeout_comes_back_as_second_by_itself() {
    for pause in [HB_TIMEOUT / 2, HB_TIMEOUT, LEASE + 300, 3 * LEASE] {
        let mut n = Net::new();
        n.nodes[0].frozen = true;
        n.run(pause);
        n.nodes[0].frozen = false;
        n.nodes[0].thawing = true;
        n.run(3_000);
        // Past the lease the twin took over; the old primary follows it.
        let took_over = pause > LEASE;
        let expected = if took_over {
            [Some(State::Second), Some(State::Prim)]
        } else {
            [Some(State::Prim), Some(State::Second)]
        };
        assert_eq!(n.states(), expected, "paused {pause} ms");
        for node in &n.nodes {
            let m = node.m.as_ref().unwrap();
            assert!(!m.split_brain, "paused {pause} ms: {}", m.why);
        }
        assert_eq!(n.nodes[0].set_aside, took_over as u32, "paused {pause} ms");
    }
}

#[test]
fn a_cut_between_the_nodes_keeps_the_primary_and_never_makes_two() {
    let mut n = Net::new();
    n.link = false;
    n.run(3_000);
    assert_eq!(n.states(), [Some(State::Alone), Some(State::Wait)]);
    assert!(n.nodes[0].app && !n.nodes[1].app);
    n.link = true;
    n.run(2_000);
    assert_eq!(n.states(), [Some(State::Prim), Some(State::Second)]);
}

#[test]
fn an_isolated_primary_fences_itself_and_the_twin_takes_over() {
    let mut n = Net::new();
    n.link = false;
    n.witness[0] = false;
    n.run(3_000);
    assert_eq!(n.states(), [Some(State::Wait), Some(State::Alone)]);
    assert!(!n.nodes[0].app && n.nodes[1].app);
    // Healed: the old primary follows as SECOND and catches up.
    n.link = true;
    n.witness[0] = true;
    n.run(2_000);
    assert_eq!(n.states(), [Some(State::Second), Some(State::Prim)]);
}

#[test]
fn a_killed_primary_is_replaced_and_returns_as_second() {
    let mut n = Net::new();
    n.kill(0);
    n.run(LEASE + 1_000);
    assert_eq!(n.states()[1], Some(State::Alone));
    assert!(n.nodes[1].app);
    n.restart(0, State::Prim);
    n.run(2_000);
    assert_eq!(n.states(), [Some(State::Second), Some(State::Prim)]);
}

#[test]
fn flapping_links_and_witness_never_yield_two_serving_nodes() {
    let mut n = Net::new();
    // A fixed pseudo-random schedule of cuts, heals and witness outages.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..300 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        match x % 7 {
            0 => n.link = !n.link,
            1 => n.witness[0] = !n.witness[0],
            2 => n.witness[1] = !n.witness[1],
            _ => {}
        }
        n.run(TICK * (1 + x % 10));
    }
    n.link = true;
    n.witness = [true, true];
    n.run(5_000);
    let s = n.states();
    assert!(
        s.contains(&Some(State::Prim)) && s.contains(&Some(State::Second)),
        "{s:?}"
    );
}

/// A step that brings the pair into a state before a command.
#[derive(Clone, Copy, Debug)]
enum Op {
    Link(bool),
    Witness(usize, bool),
    Kill(usize),
    Restart(usize, State),
    Run(u64),
    Cmd(usize, Command),
    Checks(usize, bool),
    /// The operator switches maintenance on or off on a node.
    Maintenance(usize, bool),
    /// What fails on a node from now on.
    Fails(usize, Failure),
    /// A killed node starts again in the role it recorded.
    Revive(usize),
}

/// The states the pair is brought into: roles either way, the link cut,
/// quorum lost on either node or both, a node dead or stopped, a split
/// brain, maintenance.
fn setups() -> Vec<Vec<Op>> {
    use Op::*;
    vec![
        vec![],
        vec![Cmd(0, Command::Swap)],
        vec![Link(false)],
        vec![Link(false), Witness(0, false)],
        vec![Witness(0, false)],
        vec![Witness(1, false)],
        vec![Witness(0, false), Witness(1, false)],
        vec![Link(false), Witness(0, false), Witness(1, false)],
        vec![Kill(0)],
        vec![Kill(1)],
        vec![Cmd(0, Command::Stop)],
        vec![Cmd(1, Command::Stop)],
        vec![Cmd(0, Command::Swap), Link(false), Witness(1, false)],
        vec![Checks(0, false)],
        vec![Checks(1, false), Cmd(0, Command::Swap)],
        // In maintenance: commands work, nothing else moves the module.
        vec![Maintenance(0, true)],
        vec![Maintenance(1, true), Cmd(0, Command::Swap)],
        vec![Maintenance(0, true), Kill(0)],
        vec![Maintenance(1, true), Link(false), Witness(0, false)],
        // Both served alone, one after the other, each restarted while the
        // link was down.
        vec![
            Link(false),
            Kill(0),
            Run(LEASE + 1_000),
            Restart(0, State::Prim),
            Kill(1),
            Run(LEASE + 1_000),
            Restart(1, State::Alone),
            Link(true),
        ],
    ]
}

/// What an operator asks a node, as the daemon hands it to the machine.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Ask {
    Machine(Command),
    /// `tandem second`: a swap asked of the serving node, refused elsewhere.
    Second,
    /// `tandem checker MODULE on|off`.
    Checks(bool),
}

const COMMANDS: [Ask; 10] = [
    Ask::Machine(Command::Swap),
    Ask::Machine(Command::Stop),
    Ask::Machine(Command::Start),
    Ask::Machine(Command::Prim { force: false }),
    Ask::Machine(Command::Prim { force: true }),
    Ask::Machine(Command::Resolve { keep_mine: true }),
    Ask::Machine(Command::Resolve { keep_mine: false }),
    Ask::Second,
    Ask::Checks(false),
    Ask::Checks(true),
];

impl Net {
    fn apply(&mut self, op: Op) {
        match op {
            Op::Link(up) => self.link = up,
            Op::Witness(i, up) => self.witness[i] = up,
            Op::Kill(i) => self.kill(i),
            Op::Restart(i, last) => self.restart(i, last),
            Op::Run(ms) => self.run(ms),
            Op::Cmd(i, c) => {
                self.feed(i, Event::Command(c));
            }
            Op::Checks(i, on) => self.nodes[i].checks = on,
            Op::Maintenance(i, on) => {
                let by = format!("node{}", i + 1);
                let at_ms = self.now;
                self.feed(i, Event::Maintenance(Switch { on, by, at_ms }));
            }
            Op::Fails(i, f) => self.nodes[i].fails = Some(f),
            Op::Revive(i) => self.restart(i, self.nodes[i].role),
        }
    }

    fn serving(&self) -> bool {
        self.nodes.iter().any(|n| n.app)
    }

    /// Every node still running the module would fail to serve it.
    fn nobody_can_serve(&self) -> bool {
        self.nodes
            .iter()
            .filter(|n| n.m.as_ref().is_some_and(|m| m.state != State::Stop))
            .all(|n| n.fails.is_some())
    }

    /// Carries out what the operator asked of node `i`, as the daemon does.
    fn ask(&mut self, i: usize, a: Ask) -> Reply {
        match a {
            Ask::Machine(c) => self.feed(i, Event::Command(c)).expect("a reply"),
            Ask::Second if self.nodes[i].m.as_ref().is_some_and(|m| m.state.serving()) => self
                .feed(i, Event::Command(Command::Swap))
                .expect("a reply"),
            // The daemon refuses it before the machine hears of it.
            Ask::Second => Err(Refused::NoPair(
                self.nodes[i].m.as_ref().map_or(State::Stop, |m| m.state),
            )),
            Ask::Checks(on) => {
                self.nodes[i].checks = on;
                Ok(format!("checks {on}"))
            }
        }
    }

    /// What a refused command must leave as it was.
    fn snapshot(&self, i: usize) -> String {
        let n = &self.nodes[i];
        format!(
            "{:?} app={} mounted={} syncing={:?}",
            n.m, n.app, n.mounted, n.syncing
        )
    }
}

#[test]
fn no_accepted_command_leaves_a_served_module_without_a_server() {
    let failures = [
        None,
        Some(Failure::Check),
        Some(Failure::StartApp),
        Some(Failure::Promote),
    ];
    let mut runs = 0;
    for setup in setups() {
        for fails in failures {
            for failing in [0, 1] {
                for on in [0, 1] {
                    for c in COMMANDS {
                        let mut n = Net::new();
                        n.label = format!(
                            "{c:?} on node{on} after {setup:?}, {fails:?} on node{failing}"
                        );
                        n.nodes[failing].fails = fails;
                        for &op in &setup {
                            n.apply(op);
                        }
                        n.run(TAKEOVER + 3_000);
                        let peer_alive = n.nodes[1 - on].m.is_some();
                        // Forced while it cannot hear a peer that serves: the
                        // operator made two servers on purpose.
                        if n.nodes[on].m.is_none()
                            || c == Ask::Machine(Command::Prim { force: true })
                                && !n.link
                                && peer_alive
                        {
                            continue;
                        }
                        let what = format!(
                            "{c:?} on node{on} after {setup:?}, {fails:?} on node{failing}, \
                             states {:?}",
                            n.states()
                        );
                        let served = n.serving();
                        let before = n.snapshot(on);
                        let reply = n.ask(on, c);
                        runs += 1;
                        match &reply {
                            Err(e) => {
                                assert_eq!(
                                    n.snapshot(on),
                                    before,
                                    "{what}: refused ({e}) but changed"
                                );
                            }
                            Ok(_) => {}
                        }
                        n.run(TAKEOVER + 4_000);
                        // By design: a stop that says so, and the operator
                        // taking the peer's data when the peer cannot run the
                        // application (this side gave its own data up).
                        let nobody_by_design = matches!(&reply, Ok(r) if r.contains("nobody serves"))
                            || c == Ask::Machine(Command::Resolve { keep_mine: false })
                                && n.nodes[1 - on].fails.is_some();
                        if served && reply.is_ok() && !nobody_by_design && !n.nobody_can_serve() {
                            assert!(
                                n.serving(),
                                "{what}: {reply:?}, then nobody serves: {:?} {:?}",
                                n.states(),
                                n.nodes
                                    .iter()
                                    .map(|x| x.m.as_ref().map(|m| m.why.clone()))
                                    .collect::<Vec<_>>()
                            );
                        }
                    }
                }
            }
        }
    }
    assert!(runs > 1_500, "{runs} commands tried");
}

mod maintenance;
