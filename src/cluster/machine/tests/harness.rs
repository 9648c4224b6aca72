//! Two machines on an in-memory network with a witness: links are cut,
//! nodes isolated and killed, and at no moment do both run the application.

use super::super::*;

const TICK: u64 = 50;
const HB_TIMEOUT: u64 = 300;
const LEASE: u64 = 1_000;
const SYNC_TICKS: u32 = 4;

struct Node {
    m: Option<Machine>,
    app: bool,
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
}

struct Net {
    nodes: [Node; 2],
    link: bool,
    witness: [bool; 2],
    lease: Option<(usize, u64)>,
    now: u64,
}

fn cfg(i: usize) -> Config {
    Config {
        preferred: None,
        listed_first: i == 0,
        boot_wait_ms: 500,
        settle_ms: 100,
        start_retries: 1,
        request_ms: 2_000,
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
            mounted: false,
            data: g.clone(),
            syncing: None,
            heard: 0,
            peer_known: false,
            next_gen: 100 * (i as u64 + 1),
            frozen: false,
            thawing: false,
            set_aside: 0,
        };
        let mut n = Net {
            nodes: [node(0, State::Prim), node(1, State::Second)],
            link: true,
            witness: [true, true],
            lease: None,
            now: 0,
        };
        n.run(2_000);
        assert_eq!(n.states(), [Some(State::Prim), Some(State::Second)]);
        n
    }

    fn states(&self) -> [Option<State>; 2] {
        [0, 1].map(|i| self.nodes[i].m.as_ref().map(|m| m.state))
    }

    fn feed(&mut self, i: usize, ev: Event) {
        let now = self.now;
        let Some(m) = self.nodes[i].m.as_mut() else {
            return;
        };
        let out = m.step(now, ev);
        for a in out.actions {
            let n = &mut self.nodes[i];
            match a {
                Action::StartApp => {
                    assert!(n.mounted, "application started on an unmounted node");
                    n.app = true;
                }
                Action::StopApp => n.app = false,
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
                Action::SaveRole(_) | Action::KeepAside => {}
            }
        }
        self.check();
    }

    fn check(&self) {
        // A paused daemon's application still runs but can be acknowledged
        // nothing; it must be stopped within the tick its daemon wakes in.
        if self.nodes.iter().any(|n| n.frozen || n.thawing) {
            return;
        }
        assert!(
            !(self.nodes[0].app && self.nodes[1].app),
            "two nodes run the application at {} ms: {:?}",
            self.now,
            self.states()
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
        n.mounted = false;
        n.syncing = None;
    }

    fn restart(&mut self, i: usize, last: State) {
        let n = &mut self.nodes[i];
        n.m = Some(Machine::new(
            cfg(i),
            self.now,
            Some(last),
            n.data.clone(),
            false,
        ));
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
