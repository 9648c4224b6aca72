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

fn fence_then_stop(out: &Outcome) -> bool {
    let f = out.actions.iter().position(|a| *a == Action::Fence);
    let s = out.actions.iter().position(|a| *a == Action::StopApp);
    matches!((f, s), (Some(f), Some(s)) if f + 1 == s)
}

#[test]
fn serving_that_ends_without_a_hand_over_is_fenced_before_the_application_stops() {
    // Lost the peer and the quorum: serving stops without a hand-over.
    let mut m = prim(true, cfg());
    m.step(30, Event::Quorum(false));
    let out = m.step(40, Event::PeerLost);
    assert!(fence_then_stop(&out), "{:?}", out.actions);
    // A swap hands over to a current SECOND: nothing to fence.
    let mut m = prim(true, cfg());
    let out = m.step(30, Event::Command(Command::Swap));
    assert!(has(&out, &Action::StopApp));
    assert!(!has(&out, &Action::Fence));
    // Stopped by the operator with no current peer: stopped, not fenced.
    let mut m = prim(true, cfg());
    m.step(30, Event::PeerLost);
    let out = m.step(40, Event::Command(Command::Stop));
    assert!(has(&out, &Action::StopApp));
    assert!(!has(&out, &Action::Fence));
    // A failed start retried in place: still serving, not fenced.
    let mut m = prim(true, cfg());
    let out = m.step(30, Event::Failed(Failure::StartApp, "exit 1".into()));
    assert_eq!(out.actions, vec![Action::StopApp, Action::StartApp]);
}

#[test]
fn the_fencer_steps_a_serving_node_down_as_if_peer_and_quorum_were_lost() {
    let mut m = prim(true, cfg());
    let out = m.step(30, Event::Fenced);
    assert_eq!(m.state, State::Wait, "{}", m.why);
    assert!(fence_then_stop(&out), "{:?}", out.actions);
    assert!(has(&out, &Action::Demote { flush: false }));
    assert!(m.peer().is_none());
    // Nothing to step down from: the news changes nothing.
    let mut s = current_second(true);
    let before = s.view();
    let out = s.step(30, Event::Fenced);
    assert!(out.actions.is_empty());
    assert_eq!(s.view(), before);
}

#[test]
fn the_fence_is_armed_while_serving_unless_the_peer_stepped_down_for_this_node() {
    let mut m = prim(true, cfg());
    assert!(m.fence_armed());
    // The peer stopped (operator): it cannot take over, nothing to fence.
    m.step(30, Event::Peer(peer(State::Stop, false, gn(G2, &[G1]))));
    assert!(m.state.serving());
    assert!(!m.fence_armed());
    m.step(40, Event::PeerLost);
    assert!(m.fence_armed());
    assert!(!current_second(true).fence_armed());
}

#[test]
fn leaving_and_entering_stop_run_the_module_scripts_after_everything_else() {
    let mut m = prim(true, cfg());
    let out = m.step(30, Event::Command(Command::Stop));
    let n = out.actions.len();
    assert_eq!(
        out.actions[n - 2..],
        [Action::Run(Hook::StopBoth), Action::Run(Hook::Poststop)]
    );
    assert!(has(&out, &Action::Demote { flush: true }));
    let out = m.step(40, Event::Command(Command::Start));
    assert_eq!(out.actions.last(), Some(&Action::Run(Hook::StartBoth)));
    // Already started: no script.
    let out = m.step(50, Event::Command(Command::Start));
    assert!(!has(&out, &Action::Run(Hook::StartBoth)));
}

#[test]
fn after_a_shutdown_a_node_comes_back_in_its_role_unless_it_handed_over() {
    // Handed over to a current SECOND: comes back following it.
    let mut m = prim(true, cfg());
    m.step(30, Event::Command(Command::Stop));
    assert_eq!(m.role_after_shutdown(State::Prim), State::Second);
    // Nobody to hand over to: serves again when it comes back.
    let mut m = prim(true, cfg());
    m.step(30, Event::PeerLost);
    m.step(40, Event::Command(Command::Stop));
    assert_eq!(m.role_after_shutdown(State::Alone), State::Alone);
    // Did not serve: follows.
    let mut s = current_second(true);
    s.step(30, Event::Command(Command::Stop));
    assert_eq!(s.role_after_shutdown(State::Second), State::Second);
}
