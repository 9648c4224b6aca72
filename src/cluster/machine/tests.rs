use super::*;

const G1: u64 = 11;
const G2: u64 = 22;
const G3: u64 = 33;

fn gn(current: u64, history: &[u64]) -> Gen {
    Gen {
        current,
        history: history.to_vec(),
        fresh: false,
    }
}

fn cfg() -> Config {
    Config {
        preferred: None,
        listed_first: true,
        boot_wait_ms: 1000,
        settle_ms: 0,
        start_retries: 1,
        request_ms: 5000,
        takeover_ms: 20_000,
        module: "web".into(),
        lease: true,
    }
}

fn peer(state: State, uptodate: bool, g: Gen) -> PeerView {
    PeerView {
        state: Some(state),
        uptodate,
        generation: g,
        ..PeerView::default()
    }
}

/// A SECOND that followed a PRIM of generation G1 and is current.
fn current_second(quorum: bool) -> Machine {
    let mut m = Machine::new(cfg(), 0, Some(State::Second), gn(G1, &[]), quorum);
    let out = m.step(10, Event::Peer(peer(State::Prim, false, gn(G1, &[]))));
    assert_eq!(out.actions[0], Action::BecomeSecondary { full: false });
    assert_eq!(m.state, State::Second);
    m.step(20, Event::Synced(true));
    assert!(m.view().uptodate);
    m
}

/// A PRIM of generation G1 whose peer is a current SECOND.
fn prim(quorum: bool, c: Config) -> Machine {
    let mut m = Machine::new(c, 0, Some(State::Prim), gn(G1, &[]), quorum);
    m.step(10, Event::Peer(peer(State::Wait, false, gn(G1, &[]))));
    assert!(m.state.serving(), "{m:?}");
    m.step(20, Event::Peer(peer(State::Second, true, gn(G1, &[]))));
    assert_eq!(m.state, State::Prim);
    m
}

fn has(out: &Outcome, a: &Action) -> bool {
    out.actions.contains(a)
}

#[test]
fn generations_order_by_history_and_fresh_nodes_count_for_nothing() {
    assert_eq!(compare(&gn(G1, &[]), &gn(G1, &[])), Order::Same);
    assert_eq!(compare(&gn(G1, &[]), &gn(G2, &[G1])), Order::Behind);
    assert_eq!(compare(&gn(G2, &[G1]), &gn(G1, &[])), Order::Ahead);
    assert_eq!(compare(&gn(G2, &[G1]), &gn(G3, &[G1])), Order::Split);
    let fresh = Gen {
        fresh: true,
        ..gn(G3, &[])
    };
    assert_eq!(compare(&fresh, &gn(G1, &[])), Order::Behind);
    assert_eq!(compare(&gn(G1, &[]), &fresh), Order::Ahead);
}

#[test]
fn an_uptodate_second_takes_over_when_the_peer_is_lost_with_quorum() {
    let mut m = current_second(true);
    let out = m.step(100, Event::PeerLost);
    assert_eq!(m.state, State::Alone);
    assert_eq!(
        out.actions,
        vec![
            Action::LeaveSecondary,
            Action::Promote {
                new_generation: true
            },
            Action::StartApp,
            Action::SaveRole(State::Alone),
        ]
    );
}

#[test]
fn an_uptodate_second_without_quorum_waits_and_serves_once_quorum_returns() {
    let mut m = current_second(false);
    let out = m.step(100, Event::PeerLost);
    assert_eq!(m.state, State::Wait);
    assert!(!has(&out, &Action::StartApp));
    let out = m.step(200, Event::Tick);
    assert!(out.actions.is_empty());
    let out = m.step(300, Event::Quorum(true));
    assert_eq!(m.state, State::Alone);
    assert!(has(&out, &Action::StartApp));
}

#[test]
fn a_syncing_second_never_takes_over() {
    let mut m = current_second(true);
    m.step(30, Event::Synced(false));
    let out = m.step(100, Event::PeerLost);
    assert_eq!(m.state, State::Wait);
    assert!(!has(&out, &Action::StartApp));
    for t in [200, 5_000, 60_000] {
        let out = m.step(t, Event::Quorum(true));
        assert_eq!(m.state, State::Wait);
        assert!(out.actions.is_empty());
    }
}

#[test]
fn a_second_overtaken_by_a_primary_that_went_on_alone_is_not_current() {
    let mut m = current_second(true);
    // The replication link broke, the primary went on alone (new generation).
    m.step(50, Event::Peer(peer(State::Alone, false, gn(G2, &[G1]))));
    assert!(!m.view().uptodate);
    let out = m.step(100, Event::PeerLost);
    assert_eq!(m.state, State::Wait);
    assert!(!has(&out, &Action::StartApp));
}

#[test]
fn a_primary_that_loses_its_peer_keeps_serving_with_quorum_and_fences_itself_without() {
    let mut m = prim(true, cfg());
    let out = m.step(100, Event::PeerLost);
    assert_eq!(m.state, State::Alone);
    assert!(!has(&out, &Action::StopApp));

    let mut m = prim(false, cfg());
    let out = m.step(100, Event::PeerLost);
    assert_eq!(m.state, State::Wait);
    assert_eq!(
        out.actions,
        vec![
            Action::Fence,
            Action::StopApp,
            Action::Demote { flush: false },
            Action::SaveRole(State::Wait)
        ]
    );
    // Quorum coming back is not enough: the peer may have taken over.
    let out = m.step(200, Event::Quorum(true));
    assert_eq!(m.state, State::Wait);
    assert!(out.actions.is_empty());
    // The witness's word that its data is still the newest is.
    let out = m.step(300, Event::WitnessNewest(G1));
    assert_eq!(m.state, State::Alone);
    assert!(has(&out, &Action::StartApp));
}

#[test]
fn the_returning_node_becomes_second_and_resyncs_while_the_other_serves() {
    // The old primary restarts; its peer served alone meanwhile (G2 after G1).
    let mut old = Machine::new(cfg(), 0, Some(State::Prim), gn(G1, &[]), true);
    let out = old.step(10, Event::Peer(peer(State::Alone, false, gn(G2, &[G1]))));
    assert_eq!(old.state, State::Second);
    assert!(has(&out, &Action::BecomeSecondary { full: false }));
    assert!(!has(&out, &Action::StartApp));
    // The serving node stays ALONE while the peer syncs, PRIM once it is current.
    let mut srv = Machine::new(cfg(), 0, Some(State::Alone), gn(G2, &[G1]), true);
    srv.step(10, Event::Peer(peer(State::Wait, false, gn(G1, &[]))));
    assert_eq!(srv.state, State::Alone);
    srv.step(20, Event::Peer(old.view()));
    assert_eq!(srv.state, State::Alone, "the peer is still syncing");
    old.step(30, Event::Generation(gn(G2, &[G1])));
    old.step(31, Event::Synced(true));
    let out = srv.step(40, Event::Peer(old.view()));
    assert_eq!(srv.state, State::Prim);
    assert_eq!(out.actions, vec![Action::SaveRole(State::Prim)]);
}

#[test]
fn swap_is_ordered_and_the_twin_starts_only_after_the_handover() {
    let mut a = prim(true, cfg());
    let mut b = current_second(true);
    let out = a.step(100, Event::Command(Command::Swap));
    assert!(out.reply.as_ref().unwrap().is_ok());
    assert_eq!(
        out.actions,
        vec![
            Action::StopApp,
            Action::Demote { flush: true },
            Action::BecomeSecondary { full: false },
            Action::SaveRole(State::Second),
        ]
    );
    assert!(a.view().handover && a.view().uptodate);
    // Until b hears of it, b does nothing.
    assert!(b.step(110, Event::Tick).actions.is_empty());
    let out = b.step(120, Event::Peer(a.view()));
    assert_eq!(b.state, State::Prim);
    assert_eq!(
        out.actions,
        vec![
            Action::LeaveSecondary,
            Action::Promote {
                new_generation: true
            },
            Action::StartApp,
            Action::SaveRole(State::Prim),
        ]
    );
    // a stops announcing the handover once b serves.
    a.step(130, Event::Peer(b.view()));
    assert!(!a.view().handover);
    assert_eq!(a.state, State::Second);
}

#[test]
fn swap_asked_on_the_secondary_is_carried_out_by_the_primary() {
    let mut a = prim(true, cfg());
    let mut b = current_second(true);
    b.step(30, Event::Peer(a.view()));
    let out = b.step(40, Event::Command(Command::Swap));
    assert!(out.reply.unwrap().is_ok());
    assert!(out.actions.is_empty());
    let out = a.step(50, Event::Peer(b.view()));
    assert!(has(&out, &Action::Demote { flush: true }));
    let out = b.step(60, Event::Peer(a.view()));
    assert!(has(&out, &Action::StartApp));
    assert_eq!((a.state, b.state), (State::Second, State::Prim));
}

#[test]
fn conflicting_commands_are_refused_with_the_reason() {
    // swap while the peer resyncs
    let mut a = Machine::new(cfg(), 0, Some(State::Alone), gn(G2, &[G1]), true);
    a.step(10, Event::Peer(peer(State::Second, false, gn(G1, &[]))));
    let out = a.step(20, Event::Command(Command::Swap));
    let e = out.reply.unwrap().unwrap_err();
    assert_eq!(e, Refused::PeerNotCurrent);
    assert_eq!(
        e.to_string(),
        "the peer is not an up-to-date SECOND; swap refused"
    );
    assert!(out.actions.is_empty());
    // prim --force while the peer serves
    let mut b = current_second(true);
    let out = b.step(30, Event::Command(Command::Prim { force: true }));
    assert_eq!(out.reply.unwrap().unwrap_err(), Refused::PeerServes);
    assert!(out.actions.is_empty());
    // swap on a syncing secondary
    b.step(40, Event::Synced(false));
    let out = b.step(50, Event::Command(Command::Swap));
    assert_eq!(out.reply.unwrap().unwrap_err(), Refused::Syncing);
    // prim without --force on a copy not known to be current
    let mut w = Machine::new(cfg(), 0, Some(State::Second), gn(G1, &[]), false);
    let out = w.step(5_000, Event::Command(Command::Prim { force: false }));
    let e = out.reply.unwrap().unwrap_err();
    assert_eq!(e, Refused::NotCurrent);
    assert_eq!(
        e.to_string(),
        "this copy is not known to be current; `tandem prim --force` serves it anyway"
    );
    let out = w.step(5_001, Event::Command(Command::Prim { force: true }));
    assert!(out.reply.unwrap().is_ok());
    assert_eq!(w.state, State::Alone);
}

#[test]
fn a_clean_stop_of_the_primary_hands_over_at_once() {
    let mut a = prim(true, cfg());
    let mut b = current_second(true);
    let out = a.step(100, Event::Command(Command::Stop));
    assert_eq!(
        out.actions,
        vec![
            Action::StopApp,
            Action::Demote { flush: true },
            Action::SaveRole(State::Stop),
            Action::Run(Hook::StopBoth),
            Action::Run(Hook::Poststop),
        ]
    );
    // No heartbeat timeout: the next heartbeat says "stopped, take over".
    let out = b.step(101, Event::Peer(a.view()));
    assert_eq!(b.state, State::Alone);
    assert!(has(&out, &Action::StartApp));
    // A stop without an up-to-date peer leaves nobody serving, and says so.
    let mut c = Machine::new(cfg(), 0, Some(State::Alone), gn(G1, &[]), true);
    c.step(2_000, Event::Tick);
    let out = c.step(2_001, Event::Command(Command::Stop));
    assert!(out.reply.unwrap().unwrap().contains("nobody serves"));
    assert!(!c.view().handover);
}

#[test]
fn the_preferred_primary_gets_the_role_back_once_it_is_up_to_date() {
    let mut a = Machine::new(
        Config {
            preferred: Some(false),
            ..cfg()
        },
        0,
        Some(State::Prim),
        gn(G1, &[]),
        true,
    );
    a.step(5, Event::Peer(peer(State::Wait, false, gn(G1, &[]))));
    assert!(a.state.serving());
    let mut b = Machine::new(
        Config {
            preferred: Some(true),
            listed_first: false,
            ..cfg()
        },
        0,
        Some(State::Second),
        gn(G1, &[]),
        true,
    );
    b.step(10, Event::Peer(a.view()));
    assert_eq!(b.state, State::Second);
    // Still syncing: no swap.
    let out = a.step(20, Event::Peer(b.view()));
    assert!(!has(&out, &Action::StopApp));
    b.step(30, Event::Synced(true));
    let out = a.step(40, Event::Peer(b.view()));
    assert!(has(&out, &Action::Demote { flush: true }));
    b.step(50, Event::Peer(a.view()));
    assert_eq!((a.state, b.state), (State::Second, State::Prim));
    // And it stays there.
    a.step(60, Event::Peer(b.view()));
    b.step(60, Event::Peer(a.view()));
    assert_eq!((a.state, b.state), (State::Second, State::Prim));
}

#[test]
fn a_node_that_boots_alone_serves_only_if_it_served_last_and_has_quorum() {
    let mut a = Machine::new(cfg(), 0, Some(State::Prim), gn(G1, &[]), true);
    assert!(
        a.step(500, Event::Tick).actions.is_empty(),
        "waits for the peer first"
    );
    let out = a.step(1_000, Event::Tick);
    assert_eq!(a.state, State::Alone);
    assert!(has(&out, &Action::StartApp));

    let mut b = Machine::new(cfg(), 0, Some(State::Second), gn(G1, &[]), true);
    for t in [1_000, 10_000, 100_000] {
        assert!(b.step(t, Event::Tick).actions.is_empty());
        assert_eq!(b.state, State::Wait, "never guessing");
    }
    let mut c = Machine::new(cfg(), 0, Some(State::Prim), gn(G1, &[]), false);
    c.step(5_000, Event::Tick);
    assert_eq!(c.state, State::Wait);
    // A stopped module stays stopped.
    let d = Machine::new(cfg(), 0, Some(State::Stop), gn(G1, &[]), true);
    assert_eq!(d.state, State::Stop);
}

#[test]
fn after_both_nodes_lost_power_they_return_to_their_former_roles() {
    let mut a = Machine::new(cfg(), 0, Some(State::Second), gn(G1, &[]), false);
    let mut b = Machine::new(
        Config {
            listed_first: false,
            ..cfg()
        },
        0,
        Some(State::Prim),
        gn(G1, &[]),
        false,
    );
    for t in 1..20 {
        let (va, vb) = (a.view(), b.view());
        a.step(t * 100, Event::Peer(vb));
        b.step(t * 100, Event::Peer(va));
    }
    assert_eq!((a.state, b.state), (State::Second, State::Alone));
    assert!(!a.split_brain && !b.split_brain);
}

#[test]
fn a_primary_that_froze_yields_to_the_twin_that_went_on_alone_and_follows_it() {
    // node1 froze as PRIM of G1; node2 took over with the lease (G2 after G1).
    let mut a = prim(true, cfg());
    let twin = peer(State::Alone, false, gn(G2, &[G1]));
    // Its quorum not looked at yet since it woke: the generations decide.
    let out = a.step(5_000, Event::Peer(twin.clone()));
    assert_eq!(
        out.actions[..3],
        [
            Action::Fence,
            Action::StopApp,
            Action::Demote { flush: false }
        ]
    );
    assert_eq!(a.state, State::Wait);
    assert!(!a.split_brain, "{}", a.why);
    let out = a.step(5_050, Event::Peer(twin));
    assert_eq!(
        out.actions[..2],
        [Action::SetAside, Action::BecomeSecondary { full: false }],
        "what it changed that the twin may lack is set aside, then it follows"
    );
    assert_eq!(a.state, State::Second);
    assert!(!a.view().served_last);

    // The twin, for its part, serves on: a PRIM of an older generation is
    // a past state, not a split brain.
    let mut b = Machine::new(
        Config {
            listed_first: false,
            ..cfg()
        },
        0,
        Some(State::Alone),
        gn(G2, &[G1]),
        true,
    );
    b.step(2_000, Event::Tick);
    assert_eq!(b.state, State::Alone);
    let out = b.step(2_010, Event::Peer(peer(State::Prim, false, gn(G1, &[]))));
    assert!(out.actions.is_empty(), "{out:?}");
    assert_eq!(b.state, State::Alone);
    assert!(!b.split_brain, "{}", b.why);
}

#[test]
fn of_two_nodes_serving_the_same_data_the_lease_holder_keeps_serving() {
    let second = Config {
        listed_first: false,
        ..cfg()
    };
    let mut b = Machine::new(second.clone(), 0, Some(State::Alone), gn(G1, &[]), true);
    b.step(2_000, Event::Tick);
    let out = b.step(2_010, Event::Peer(peer(State::Prim, false, gn(G1, &[]))));
    assert!(
        out.actions.is_empty() && b.state == State::Alone,
        "{}",
        b.why
    );
    let mut a = prim(true, cfg());
    a.step(3_000, Event::Quorum(false));
    let out = a.step(3_010, Event::Peer(b.view()));
    assert!(
        has(&out, &Action::StopApp),
        "the node without the lease yields"
    );
    assert!(!a.split_brain);
    // Without a lease the node listed first keeps serving.
    let mut b = Machine::new(
        Config {
            lease: false,
            ..second
        },
        0,
        Some(State::Alone),
        gn(G1, &[]),
        true,
    );
    b.step(2_000, Event::Tick);
    let out = b.step(2_010, Event::Peer(peer(State::Prim, false, gn(G1, &[]))));
    assert!(has(&out, &Action::StopApp) && b.state == State::Wait);
    assert!(!b.split_brain);
}

#[test]
fn in_a_split_brain_the_lease_holder_keeps_serving_whichever_node_it_is() {
    let second = Config {
        listed_first: false,
        ..cfg()
    };
    let mut b = Machine::new(second, 0, Some(State::Alone), gn(G3, &[G1]), true);
    b.step(2_000, Event::Tick);
    let out = b.step(2_010, Event::Peer(peer(State::Alone, false, gn(G2, &[G1]))));
    assert!(out.actions.is_empty(), "the lease holder serves on");
    assert!(b.split_brain && b.state == State::Alone);
    let mut a = Machine::new(cfg(), 0, Some(State::Alone), gn(G2, &[G1]), true);
    a.step(2_000, Event::Tick);
    assert_eq!(a.state, State::Alone);
    // Its lease looked stale-held a moment; once it knows, it yields.
    let out = a.step(2_010, Event::Peer(b.view()));
    assert!(out.actions.is_empty());
    let out = a.step(2_020, Event::Quorum(false));
    assert!(has(&out, &Action::StopApp));
    assert!(a.split_brain && a.state == State::Wait);
    let out = a.step(2_100, Event::Peer(b.view()));
    assert!(out.actions.is_empty(), "no silent resync");
}

#[test]
fn split_brain_is_detected_and_never_resolved_silently() {
    let cfg = || Config {
        lease: false,
        ..cfg()
    };
    let mut a = Machine::new(cfg(), 0, Some(State::Alone), gn(G2, &[G1]), true);
    a.step(2_000, Event::Tick);
    assert_eq!(a.state, State::Alone);
    let out = a.step(2_010, Event::Peer(peer(State::Alone, false, gn(G3, &[G1]))));
    assert!(a.split_brain);
    assert!(a.state.serving(), "the node listed first keeps serving");
    assert!(out.actions.is_empty());

    let mut b = Machine::new(
        Config {
            listed_first: false,
            ..cfg()
        },
        0,
        Some(State::Alone),
        gn(G3, &[G1]),
        true,
    );
    b.step(2_000, Event::Tick);
    assert_eq!(b.state, State::Alone);
    let out = b.step(2_010, Event::Peer(a.view()));
    assert_eq!(b.state, State::Wait, "the other node stops serving");
    assert!(has(&out, &Action::StopApp));
    for t in [100, 10_000] {
        let out = b.step(t, Event::Peer(a.view()));
        assert!(out.actions.is_empty(), "no silent resync");
        assert!(b.split_brain);
    }
    // resolve on the serving node, keeping its data: the other full-syncs from it.
    let out = a.step(20_000, Event::Command(Command::Resolve { keep_mine: true }));
    assert!(out.reply.unwrap().is_ok());
    let out = b.step(20_001, Event::Peer(a.view()));
    assert_eq!(
        out.actions[..2],
        [Action::KeepAside, Action::BecomeSecondary { full: true }],
        "the losing node's own changes are kept aside before the full sync"
    );
    assert_eq!(b.state, State::Second);
    assert!(!b.split_brain);
}

#[test]
fn a_node_that_boots_into_a_split_waits() {
    let mut b = Machine::new(cfg(), 0, Some(State::Prim), gn(G3, &[G1]), true);
    let out = b.step(10, Event::Peer(peer(State::Alone, false, gn(G2, &[G1]))));
    assert!(out.actions.is_empty());
    assert!(b.split_brain && b.state == State::Wait);
    let out = b.step(20, Event::Command(Command::Resolve { keep_mine: false }));
    assert_eq!(
        out.actions[..2],
        [Action::KeepAside, Action::BecomeSecondary { full: true }]
    );
}

#[test]
fn a_failing_application_start_is_retried_then_handed_over() {
    let mut a = prim(true, cfg());
    let out = a.step(100, Event::Failed(Failure::StartApp, "exit 1".into()));
    assert_eq!(out.actions, vec![Action::StopApp, Action::StartApp]);
    let out = a.step(200, Event::Failed(Failure::StartApp, "exit 1".into()));
    assert_eq!(a.state, State::Wait);
    assert!(has(&out, &Action::Demote { flush: true }));
    assert!(a.view().handover);
    // It does not take the role back by itself, even alone with quorum.
    a.step(300, Event::PeerLost);
    assert_eq!(a.state, State::Wait);
    assert!(a.blocked.is_some());
    // Until the operator starts it again.
    a.step(400, Event::Command(Command::Start));
    a.step(401, Event::Tick);
    assert_eq!(a.state, State::Alone);
}

#[test]
fn heartbeats_held_up_by_a_dead_link_do_not_make_a_node_serve() {
    // node1 fenced itself while cut off; node2 took over. When the link comes
    // back, node2's heartbeats from while it still waited arrive first, in a
    // burst, then the current one.
    let c = Config {
        settle_ms: 200,
        ..cfg()
    };
    let mut a = Machine::new(c.clone(), 0, Some(State::Prim), gn(G1, &[]), false);
    a.step(5_000, Event::Tick);
    assert_eq!(a.state, State::Wait);
    for t in 0..5 {
        let out = a.step(
            6_000 + t,
            Event::Peer(peer(State::Wait, false, gn(G1, &[]))),
        );
        assert!(!has(&out, &Action::StartApp), "acted on a past state");
    }
    let out = a.step(6_050, Event::Peer(peer(State::Alone, false, gn(G2, &[G1]))));
    assert!(has(&out, &Action::BecomeSecondary { full: false }));
    assert_eq!(a.state, State::Second);
    assert!(!a.split_brain);
    // A peer that really does not serve is believed once it stayed so.
    let mut b = Machine::new(c, 0, Some(State::Prim), gn(G1, &[]), false);
    b.step(10, Event::Peer(peer(State::Wait, false, gn(G1, &[]))));
    assert_eq!(b.state, State::Wait);
    b.step(300, Event::Peer(peer(State::Wait, false, gn(G1, &[]))));
    assert!(b.state.serving());
}

#[test]
fn the_witness_tells_a_node_alone_whether_its_data_is_the_newest() {
    // The old primary boots alone: it served last, but the witness knows
    // that the other node served newer data since.
    let mut a = Machine::new(cfg(), 0, Some(State::Prim), gn(G1, &[]), true);
    a.step(10, Event::WitnessNewest(G2));
    let out = a.step(5_000, Event::Tick);
    assert_eq!(a.state, State::Wait);
    assert!(!has(&out, &Action::StartApp));
    assert!(a.why.contains("newer data"), "{}", a.why);
    // A former SECOND whose data is the newest the witness knows may serve.
    let mut b = Machine::new(cfg(), 0, Some(State::Second), gn(G2, &[G1]), true);
    b.step(10, Event::WitnessNewest(G2));
    assert!(
        b.step(5_000, Event::Tick)
            .actions
            .contains(&Action::StartApp)
    );
    // An up-to-date SECOND does not take over when the primary served newer
    // data the SECOND never saw.
    let mut c = current_second(true);
    c.step(30, Event::WitnessNewest(G2));
    let out = c.step(100, Event::PeerLost);
    assert_eq!(c.state, State::Wait);
    assert!(!has(&out, &Action::StartApp));
}

#[test]
fn only_a_node_that_could_serve_asks_for_the_lease() {
    // Stale: a syncing SECOND, and a node the witness knows older data of.
    let mut s = current_second(true);
    s.step(30, Event::Synced(false));
    s.step(100, Event::PeerLost);
    assert!(!s.wants_lease());
    let mut old = Machine::new(cfg(), 0, Some(State::Prim), gn(G1, &[]), false);
    old.step(10, Event::WitnessNewest(G2));
    assert!(!old.wants_lease());
    // Current: an up-to-date SECOND, and data that descends from the newest.
    assert!(current_second(false).wants_lease());
    let mut new = Machine::new(cfg(), 0, Some(State::Second), gn(G3, &[G2]), false);
    new.step(10, Event::WitnessNewest(G2));
    assert!(new.wants_lease());
}

#[test]
fn a_peer_without_this_module_is_no_split_brain() {
    let mut a = prim(true, cfg());
    let out = a.step(100, Event::Peer(PeerView::default()));
    assert!(!a.split_brain);
    assert_eq!(
        a.state,
        State::Alone,
        "the peer does not follow this module"
    );
    assert!(!has(&out, &Action::StopApp));
}

#[test]
fn a_fresh_node_joins_by_full_sync() {
    let fresh = Gen {
        fresh: true,
        ..gn(G3, &[])
    };
    let mut n = Machine::new(cfg(), 0, None, fresh.clone(), true);
    let out = n.step(10, Event::Peer(peer(State::Alone, false, gn(G1, &[]))));
    assert_eq!(out.actions[0], Action::BecomeSecondary { full: true });
    // Two fresh nodes: the one listed first serves, the other follows.
    let mut a = Machine::new(cfg(), 0, None, fresh.clone(), true);
    let mut b = Machine::new(
        Config {
            listed_first: false,
            ..cfg()
        },
        0,
        None,
        Gen {
            current: G2,
            ..fresh
        },
        true,
    );
    for t in 1..5 {
        let (va, vb) = (a.view(), b.view());
        a.step(t * 100, Event::Peer(vb));
        b.step(t * 100, Event::Peer(va));
        if let Some(g) = a.state.serving().then(|| gn(G3 + 1, &[G3])) {
            a.step(t * 100, Event::Generation(g));
        }
    }
    assert_eq!((a.state, b.state), (State::Alone, State::Second));
}

mod handover;
mod harness;
mod maintenance;
mod outputs;
