//! What a step hands the daemon besides actions (the change it made, what
//! stopping the application means) and how states read back.

use super::*;

#[test]
fn a_second_that_adopted_its_peers_new_generation_does_not_take_it_for_newer_data() {
    // node1 (listed first) was promoting: its stream brought G2 to node2,
    // its heartbeat still says WAIT with G1.
    let mut b = Machine::new(
        Config {
            listed_first: false,
            ..cfg()
        },
        0,
        Some(State::Second),
        gn(G1, &[]),
        false,
    );
    b.step(10, Event::Peer(peer(State::Prim, false, gn(G1, &[]))));
    b.step(20, Event::Synced(true));
    b.step(30, Event::Generation(gn(G2, &[G1])));
    for t in [100, 200, 2_000] {
        let out = b.step(t, Event::Peer(peer(State::Wait, false, gn(G1, &[]))));
        assert!(out.actions.is_empty(), "{}", b.why);
        assert_eq!(b.state, State::Second, "{}", b.why);
    }
}

#[test]
fn state_names_are_what_status_shows_and_read_back() {
    for s in [
        State::Stop,
        State::Wait,
        State::Second,
        State::Prim,
        State::Alone,
    ] {
        assert_eq!(s.name(), format!("{s:?}").to_uppercase());
        assert_eq!(s.name().parse::<State>(), Ok(s));
    }
    let e = "prim".parse::<State>().unwrap_err();
    assert_eq!(e, UnknownState("prim".into()));
    assert_eq!(e.to_string(), "\"prim\" is not a module state");
    assert!("".parse::<State>().is_err());
}

#[test]
fn a_step_returns_the_change_it_made_and_nothing_when_it_made_none() {
    let mut m = prim(true, cfg());
    let out = m.step(30, Event::Tick);
    assert_eq!(out.change, None, "nothing changed");
    let out = m.step(40, Event::PeerLost);
    let c = out.change.expect("PRIM -> ALONE");
    assert_eq!((c.from, c.to), (State::Prim, State::Alone));
    assert_eq!(c.why, m.why);
}

#[test]
fn the_machine_says_when_stopping_the_application_fences() {
    // Lost the peer and the quorum: serving stops without a hand-over.
    let mut m = prim(true, cfg());
    m.step(30, Event::Quorum(false));
    let out = m.step(40, Event::PeerLost);
    assert!(has(&out, &Action::StopApp));
    assert!(m.fences_when_stopping());
    // A swap hands over to a current SECOND: nothing to fence.
    let mut m = prim(true, cfg());
    let out = m.step(30, Event::Command(Command::Swap));
    assert!(has(&out, &Action::StopApp));
    assert!(!m.fences_when_stopping());
    // Stopped by the operator with no current peer: stopped, not fenced.
    let mut m = prim(true, cfg());
    m.step(30, Event::PeerLost);
    m.step(40, Event::Command(Command::Stop));
    assert!(!m.fences_when_stopping());
}
