//! Hand-overs the peer cannot or does not carry out, and commands refused
//! because their target cannot serve.

use super::*;

/// node2 serves; node1's application failed its checks while it served, so
/// it follows as a blocked SECOND (as `scripts/demo.sh --keep` leaves it).
fn blocked_second_and_its_primary() -> (Machine, Machine) {
    let mut a = current_second(true);
    a.blocked = Some("the application fails its checks here: exit 1".into());
    let mut b = prim(
        true,
        Config {
            listed_first: false,
            ..cfg()
        },
    );
    b.step(25, Event::Peer(a.view()));
    a.step(25, Event::Peer(b.view()));
    assert_eq!((a.state, b.state), (State::Second, State::Prim));
    (a, b)
}

#[test]
fn swap_asked_on_a_blocked_second_is_refused_and_changes_nothing() {
    let (mut a, mut b) = blocked_second_and_its_primary();
    let before = format!("{a:?}");
    let out = a.step(25, Event::Command(Command::Swap));
    let e = out.reply.unwrap().unwrap_err();
    assert!(
        matches!(&e, Refused::Blocked { module, .. } if module == "web"),
        "{e}"
    );
    let text = e.to_string();
    assert!(text.contains("fails its checks here"), "{e}");
    assert!(
        text.ends_with("`tandem start web` on this node clears the block; swap refused"),
        "{e}"
    );
    assert!(out.actions.is_empty());
    assert_eq!(format!("{a:?}"), before);
    assert!(!a.view().wants_primary);
    // The primary hears nothing to act on.
    let out = b.step(30, Event::Peer(a.view()));
    assert!(out.actions.is_empty());
    assert_eq!(b.state, State::Prim);
    // Started again, the swap is carried out.
    a.step(40, Event::Command(Command::Start));
    assert!(
        a.step(50, Event::Command(Command::Swap))
            .reply
            .unwrap()
            .is_ok()
    );
    b.step(60, Event::Peer(a.view()));
    a.step(70, Event::Peer(b.view()));
    assert_eq!((a.state, b.state), (State::Prim, State::Second));
}

#[test]
fn the_primary_hands_nothing_over_to_a_peer_that_cannot_serve() {
    let (a, mut b) = blocked_second_and_its_primary();
    assert!(a.view().cannot_serve && a.view().uptodate);
    // swap asked on the primary
    let out = b.step(30, Event::Command(Command::Swap));
    let e = out.reply.unwrap().unwrap_err();
    assert_eq!(
        e.to_string(),
        "the peer cannot serve (see its status; `tandem start web` there clears the block); \
         swap refused"
    );
    assert!(
        matches!(e, Refused::PeerBlocked { what: "swap", .. }),
        "{e}"
    );
    assert!(out.actions.is_empty());
    // a swap the peer asked for (an older peer that asks even so)
    let asking = PeerView {
        wants_primary: true,
        ..a.view()
    };
    assert!(b.step(40, Event::Peer(asking)).actions.is_empty());
    assert_eq!(b.state, State::Prim);
    // failback to a preferred primary that cannot serve
    let mut c = serving(Config {
        preferred: Some(false),
        ..cfg()
    });
    let out = c.step(40, Event::Peer(a.view()));
    assert_eq!(out.actions, vec![Action::SaveRole(State::Prim)]);
    assert_eq!(c.state, State::Prim);
    // a stop says that nobody serves, and hands nothing over
    let out = b.step(50, Event::Command(Command::Stop));
    assert!(has(&out, &Action::Demote { flush: false }));
    assert!(out.reply.unwrap().unwrap().contains("nobody serves"));
    assert!(!b.view().handover);
}

#[test]
fn a_peer_that_says_nothing_of_serving_counts_as_able() {
    // An older peer's heartbeat carries no word on it.
    let mut b = prim(true, cfg());
    let out = b.step(
        30,
        Event::Peer(PeerView {
            wants_primary: true,
            ..peer(State::Second, true, gn(G1, &[]))
        }),
    );
    assert!(has(&out, &Action::Demote { flush: true }));
    assert!(b.view().handover);
}

/// `a` PRIM handed over to `b`, a current SECOND, which heard of it.
fn handed_over() -> (Machine, Machine) {
    let mut a = prim(true, cfg());
    let mut b = current_second(true);
    b.step(25, Event::Peer(a.view()));
    a.step(25, Event::Peer(b.view()));
    assert!(
        a.step(30, Event::Command(Command::Swap))
            .reply
            .unwrap()
            .is_ok()
    );
    assert!(a.handover);
    (a, b)
}

#[test]
fn a_hand_over_the_peer_cannot_carry_out_is_taken_back_at_once() {
    let (mut a, mut b) = handed_over();
    // b accepts, and its promotion fails: it is blocked.
    let out = b.step(40, Event::Peer(a.view()));
    assert!(has(&out, &Action::StartApp));
    b.step(
        41,
        Event::Failed(Failure::Promote, "prestart: exit 1".into()),
    );
    assert_eq!(b.state, State::Wait);
    assert!(b.view().cannot_serve);
    let out = a.step(50, Event::Peer(b.view()));
    assert!(has(&out, &Action::StartApp), "{}", a.why);
    assert!(a.state.serving() && !a.handover);
    assert!(a.why.contains("the peer cannot serve"), "{}", a.why);
    // Started again while a's hand-over still stood in its view, b does not
    // act on it: a took the module back.
    b.step(60, Event::Command(Command::Start));
    let out = b.step(
        61,
        Event::Peer(PeerView {
            handover: true,
            ..peer(State::Second, true, gn(G1, &[]))
        }),
    );
    assert!(!has(&out, &Action::StartApp), "{}", b.why);
    // It follows a once it hears a serve.
    let out = b.step(70, Event::Peer(a.view()));
    assert!(has(&out, &Action::BecomeSecondary { full: false }));
}

#[test]
fn a_hand_over_the_peer_does_not_carry_out_is_taken_back_after_the_takeover_time() {
    let (mut a, _) = handed_over();
    // An older peer, blocked without saying so, stays SECOND.
    let silent = peer(State::Second, true, gn(G1, &[]));
    for t in [100, 5_000, 20_029] {
        let out = a.step(t, Event::Peer(silent.clone()));
        assert!(out.actions.is_empty(), "at {t}: {}", a.why);
        assert_eq!(a.state, State::Second);
    }
    let out = a.step(20_030, Event::Peer(silent.clone()));
    assert!(has(&out, &Action::StartApp), "{}", a.why);
    assert_eq!(a.state, State::Prim);
    assert!(a.why.contains("did not serve within 20000 ms"), "{}", a.why);
    // The peer is not handed the module again by itself…
    let c = Config {
        preferred: Some(false),
        ..cfg()
    };
    let mut p = handed_over_with(c);
    for t in [100, 20_030, 20_100, 40_000] {
        p.step(t, Event::Peer(silent.clone()));
    }
    assert!(p.state.serving(), "{}", p.why);
    // …unless it asks anew.
    let out = p.step(
        40_100,
        Event::Peer(PeerView {
            wants_primary: true,
            ..silent
        }),
    );
    assert!(has(&out, &Action::Demote { flush: true }));
}

/// A node of generation G1 serving alone, its peer waiting.
fn serving(c: Config) -> Machine {
    let mut a = Machine::new(c, 0, Some(State::Prim), gn(G1, &[]), true);
    a.step(10, Event::Peer(peer(State::Wait, false, gn(G1, &[]))));
    assert_eq!(a.state, State::Alone);
    a
}

fn handed_over_with(c: Config) -> Machine {
    let mut a = serving(c);
    a.step(25, Event::Peer(peer(State::Second, true, gn(G1, &[]))));
    assert!(a.handover, "the preferred primary gets it back: {}", a.why);
    a
}

#[test]
fn a_node_handed_the_module_acts_at_once_or_not_at_all() {
    // Still syncing when it heard of the hand-over, b lets it lapse: the
    // peer takes the module back after a while, and both would serve.
    let (a, mut b) = handed_over();
    b.step(35, Event::Synced(false));
    let out = b.step(40, Event::Peer(a.view()));
    assert!(!has(&out, &Action::StartApp));
    b.step(50, Event::Synced(true));
    let out = b.step(1_000, Event::Peer(a.view()));
    assert!(!has(&out, &Action::StartApp), "{}", b.why);
    assert_eq!(b.state, State::Second);
    // A stopped peer takes nothing back: its hand-over stands.
    let mut a = prim(true, cfg());
    let mut b = current_second(true);
    b.step(25, Event::Peer(a.view()));
    a.step(25, Event::Peer(b.view()));
    a.step(30, Event::Command(Command::Stop));
    b.step(35, Event::Synced(false));
    b.step(40, Event::Peer(a.view()));
    assert!(!b.state.serving());
    let out = b.step(1_000, Event::Synced(true));
    assert!(has(&out, &Action::StartApp), "{}", b.why);
}

/// A split brain: `a` serves alone, `b` waits with data of its own.
fn split() -> (Machine, Machine) {
    let c = Config {
        lease: false,
        ..cfg()
    };
    let mut a = Machine::new(c.clone(), 0, Some(State::Alone), gn(G2, &[G1]), true);
    a.step(2_000, Event::Tick);
    let mut b = Machine::new(
        Config {
            listed_first: false,
            ..c
        },
        0,
        Some(State::Alone),
        gn(G3, &[G1]),
        true,
    );
    b.step(2_000, Event::Tick);
    b.step(2_010, Event::Peer(a.view()));
    a.step(2_010, Event::Peer(b.view()));
    assert!(a.split_brain && b.split_brain);
    assert_eq!((a.state, b.state), (State::Alone, State::Wait));
    (a, b)
}

#[test]
fn taking_the_peers_data_on_the_serving_node_makes_the_peer_serve() {
    let (mut a, mut b) = split();
    let out = a.step(3_000, Event::Command(Command::Resolve { keep_mine: false }));
    assert!(out.reply.unwrap().is_ok());
    assert_eq!(a.state, State::Second);
    // b hears that a follows across the split: it took b's data.
    let out = b.step(3_010, Event::Peer(a.view()));
    assert!(has(&out, &Action::StartApp), "{}", b.why);
    assert!(!b.split_brain);
    // a does not take it for a split brain again meanwhile.
    a.step(3_010, Event::Tick);
    assert!(!a.split_brain, "{}", a.why);
    let out = a.step(3_020, Event::Peer(b.view()));
    assert!(out.actions.is_empty());
    assert!(!a.split_brain, "{}", a.why);
    let out = b.step(3_020, Event::Peer(a.view()));
    assert!(out.actions.is_empty() && !b.split_brain, "{}", b.why);
}

#[test]
fn taking_the_peers_data_is_refused_when_the_peer_cannot_serve() {
    let (mut a, mut b) = split();
    b.blocked = Some("cannot serve here: prestart: exit 1".into());
    a.step(3_000, Event::Peer(b.view()));
    let before = format!("{a:?}");
    let out = a.step(3_000, Event::Command(Command::Resolve { keep_mine: false }));
    let e = out.reply.unwrap().unwrap_err();
    assert!(
        matches!(
            e,
            Refused::PeerBlocked {
                what: "taking its data",
                ..
            }
        ),
        "{e}"
    );
    assert!(out.actions.is_empty());
    assert_eq!(format!("{a:?}"), before);
    // Nor without news of the peer, on the serving node.
    a.step(3_100, Event::PeerLost);
    let out = a.step(3_100, Event::Command(Command::Resolve { keep_mine: false }));
    assert_eq!(out.reply.unwrap().unwrap_err(), Refused::PeerNotHeard);
    assert!(a.state.serving());
}
