//! Maintenance mode: each automatic action it suppresses, each command that
//! still works, the word passed between the nodes, and switching it off
//! deciding again from what is true then.

use super::*;

fn switch(m: &mut Machine, t: u64, on: bool) -> Outcome {
    m.step(
        t,
        Event::Maintenance(Switch {
            on,
            by: "node1".into(),
            at_ms: 1_700_000_000_000 + t,
        }),
    )
}

/// `a` PRIM and `b` its current SECOND, both in maintenance: switched on
/// `a`, `b` heard it, and `a` heard that `b` holds it too.
fn pair_in_maintenance(quorum: bool) -> (Machine, Machine) {
    let mut a = prim(quorum, cfg());
    let mut b = current_second(quorum);
    let out = switch(&mut a, 30, true);
    assert!(out.reply.unwrap().is_ok());
    assert_eq!(
        out.actions,
        vec![Action::SaveMaintenance(a.maintenance_record().clone())]
    );
    assert!(a.maintenance() && !a.maintenance_shared());
    let out = b.step(31, Event::Peer(a.view()));
    assert!(b.maintenance());
    assert_eq!(
        out.actions,
        vec![Action::SaveMaintenance(a.maintenance_record().clone())]
    );
    a.step(32, Event::Peer(b.view()));
    assert!(a.maintenance_shared() && b.maintenance_shared());
    assert_eq!((a.state, b.state), (State::Prim, State::Second));
    (a, b)
}

#[test]
fn a_second_in_maintenance_does_not_take_over_a_lost_peer_until_it_ends() {
    let (_, mut b) = pair_in_maintenance(true);
    let out = b.step(100, Event::PeerLost);
    assert!(out.actions.is_empty(), "{:?}", out.actions);
    assert_eq!(b.state, State::Second);
    assert!(b.why.contains("maintenance"), "{}", b.why);
    for t in [200, 5_000, 60_000] {
        assert!(b.step(t, Event::Tick).actions.is_empty());
        assert!(b.step(t + 1, Event::Quorum(true)).actions.is_empty());
    }
    assert!(!b.wants_lease(), "it would not serve with it");
    // Off: decided again from what is true now — the peer is gone, this copy
    // is current and the quorum is there.
    let out = switch(&mut b, 70_000, false);
    assert_eq!(
        out.reply,
        Some(Ok(
            "maintenance off: the module fails over by itself again".into()
        ))
    );
    assert_eq!(b.state, State::Alone);
    assert_eq!(
        out.actions,
        vec![
            Action::SaveMaintenance(b.maintenance_record().clone()),
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
fn a_second_in_maintenance_does_not_serve_for_a_stopped_peer() {
    let (mut a, mut b) = pair_in_maintenance(true);
    // The daemon's shutdown on the primary: stopped, nothing handed over.
    let out = a.step(100, Event::Command(Command::Stop));
    assert!(has(&out, &Action::Demote { flush: true }));
    assert!(!a.view().handover);
    assert!(out.reply.unwrap().unwrap().contains("not handed over"));
    assert_eq!(a.role_after_shutdown(State::Prim), State::Prim);
    let out = b.step(110, Event::Peer(a.view()));
    assert!(out.actions.is_empty(), "{}", b.why);
    assert_eq!(b.state, State::Second);
    b.step(120, Event::PeerLost);
    assert_eq!(b.state, State::Second);
    // The primary comes back in its role, the SECOND follows it again.
    let mut a2 = Machine::new(cfg(), 0, Some(State::Prim), gn(G1, &[]), true);
    a2.restore_maintenance(a.maintenance_record().clone());
    assert!(
        a2.step(10, Event::Peer(b.view()))
            .actions
            .contains(&Action::StartApp)
    );
    assert!(a2.state.serving());
    assert!(b.step(130, Event::Peer(a2.view())).actions.is_empty());
    assert_eq!(b.state, State::Second);
}

#[test]
fn the_second_takes_over_a_stopped_peer_once_maintenance_ends() {
    let (mut a, mut b) = pair_in_maintenance(true);
    a.step(100, Event::Command(Command::Stop));
    b.step(110, Event::Peer(a.view()));
    assert_eq!(b.state, State::Second);
    let out = switch(&mut b, 120, false);
    assert!(has(&out, &Action::StartApp));
    assert_eq!(b.state, State::Alone);
}

#[test]
fn no_failback_to_the_preferred_primary_in_maintenance() {
    let pref = |me: bool| Config {
        preferred: Some(me),
        listed_first: !me,
        ..cfg()
    };
    let mut a = Machine::new(pref(false), 0, Some(State::Prim), gn(G1, &[]), true);
    a.step(5, Event::Peer(peer(State::Wait, false, gn(G1, &[]))));
    let mut b = Machine::new(pref(true), 0, Some(State::Second), gn(G1, &[]), true);
    b.step(10, Event::Peer(a.view()));
    switch(&mut a, 15, true);
    b.step(16, Event::Peer(a.view()));
    b.step(30, Event::Synced(true));
    let out = a.step(40, Event::Peer(b.view()));
    assert!(!has(&out, &Action::StopApp), "{:?}", out.actions);
    assert_eq!(a.state, State::Prim);
    // Off: the preferred primary gets the role back.
    let out = switch(&mut a, 50, false);
    assert!(has(&out, &Action::Demote { flush: true }));
    assert!(a.view().handover);
}

#[test]
fn a_primary_in_maintenance_with_its_peer_does_not_fence_itself_when_both_peer_and_quorum_go() {
    let (mut a, _) = pair_in_maintenance(false);
    assert!(
        !a.fence_armed(),
        "the peer never takes over: nothing to fence"
    );
    let out = a.step(100, Event::PeerLost);
    assert!(!has(&out, &Action::StopApp), "{:?}", out.actions);
    assert_eq!(a.state, State::Alone);
    assert!(a.why.contains("maintenance"), "{}", a.why);
    assert!(!a.fence_armed());
    // A fence that happened anyway (it was armed a moment before) is
    // carried through.
    let mut f = a.clone();
    let out = f.step(110, Event::Fenced);
    assert!(has(&out, &Action::StopApp));
    assert_eq!(f.state, State::Wait);
    // Off: it fences itself as it would have.
    let out = switch(&mut a, 200, false);
    assert!(has(&out, &Action::Fence) && has(&out, &Action::StopApp));
    assert_eq!(a.state, State::Wait);
}

#[test]
fn a_primary_whose_peer_never_said_maintenance_still_fences_itself() {
    // Switched on while the peer was away, or an older peer: it may take over.
    let mut a = prim(false, cfg());
    switch(&mut a, 30, true);
    assert!(a.maintenance() && !a.maintenance_shared());
    assert!(a.fence_armed());
    let out = a.step(100, Event::PeerLost);
    assert!(has(&out, &Action::Fence) && has(&out, &Action::StopApp));
    assert_eq!(a.state, State::Wait);
}

#[test]
fn failing_checks_are_not_acted_on_in_maintenance() {
    let (mut a, _) = pair_in_maintenance(true);
    let out = a.step(
        100,
        Event::Failed(Failure::Check, "process check: no such process".into()),
    );
    assert!(out.actions.is_empty());
    assert_eq!(a.state, State::Prim);
    assert!(a.blocked.is_none() && !a.view().handover);
    assert!(a.why.contains("not acted on"), "{}", a.why);
}

#[test]
fn an_application_that_does_not_start_in_maintenance_is_not_handed_over() {
    let (mut a, mut b) = pair_in_maintenance(true);
    // It is restarted once, as always, then gives up without a hand-over.
    let out = a.step(100, Event::Failed(Failure::StartApp, "exit 1".into()));
    assert!(has(&out, &Action::StartApp));
    let out = a.step(110, Event::Failed(Failure::StartApp, "exit 1".into()));
    assert!(has(&out, &Action::StopApp));
    assert_eq!(a.state, State::Wait);
    assert!(a.blocked.is_some() && !a.view().handover);
    let out = b.step(120, Event::Peer(a.view()));
    assert!(out.actions.is_empty(), "{}", b.why);
    assert_eq!(b.state, State::Second);
}

#[test]
fn swap_prim_stop_and_start_still_work_in_maintenance() {
    // swap on the primary: handed over, and the twin takes it.
    let (mut a, mut b) = pair_in_maintenance(true);
    assert!(
        a.step(100, Event::Command(Command::Swap))
            .reply
            .unwrap()
            .is_ok()
    );
    assert!(has(&b.step(110, Event::Peer(a.view())), &Action::StartApp));
    a.step(120, Event::Peer(b.view()));
    assert_eq!((a.state, b.state), (State::Second, State::Prim));
    // swap asked on the SECOND: the primary hands over.
    assert!(
        a.step(130, Event::Command(Command::Swap))
            .reply
            .unwrap()
            .is_ok()
    );
    assert!(has(
        &b.step(140, Event::Peer(a.view())),
        &Action::Demote { flush: true }
    ));
    assert!(has(&a.step(150, Event::Peer(b.view())), &Action::StartApp));
    assert_eq!((a.state, b.state), (State::Prim, State::Second));
    // prim on the SECOND once its peer is gone.
    let (_, mut b) = pair_in_maintenance(true);
    b.step(100, Event::PeerLost);
    let out = b.step(110, Event::Command(Command::Prim { force: false }));
    assert!(out.reply.unwrap().is_ok());
    assert_eq!(b.state, State::Alone);
    // stop then start on the primary: it serves again, in its role.
    let (mut a, _) = pair_in_maintenance(true);
    a.step(100, Event::Command(Command::Stop));
    assert_eq!(a.state, State::Stop);
    let out = a.step(110, Event::Command(Command::Start));
    assert!(has(&out, &Action::StartApp), "{}", a.why);
    assert!(a.state.serving());
}

#[test]
fn a_node_restarted_in_maintenance_comes_back_in_its_role_and_no_other() {
    let on = Maintenance {
        on: true,
        since_ms: 1,
        by: "node2".into(),
        version: 1,
    };
    // A former SECOND alone, with the witness's word that its data is the
    // newest: it would serve; in maintenance it waits.
    let mut s = Machine::new(cfg(), 0, Some(State::Second), gn(G1, &[]), true);
    s.restore_maintenance(on.clone());
    s.step(10, Event::WitnessNewest(G1));
    let out = s.step(2_000, Event::Tick);
    assert!(out.actions.is_empty(), "{}", s.why);
    assert_eq!(s.state, State::Wait);
    assert!(!s.wants_lease());
    // A former primary alone, with quorum: it serves again.
    let mut p = Machine::new(cfg(), 0, Some(State::Prim), gn(G1, &[]), true);
    p.restore_maintenance(on);
    assert!(p.wants_lease());
    let out = p.step(2_000, Event::Tick);
    assert!(has(&out, &Action::StartApp));
}

#[test]
fn two_idle_nodes_in_maintenance_wait_for_the_operator() {
    // Listed first, same data, neither served last: it would serve.
    let mut m = Machine::new(cfg(), 0, Some(State::Second), gn(G1, &[]), true);
    switch(&mut m, 5, true);
    let out = m.step(10, Event::Peer(peer(State::Wait, false, gn(G1, &[]))));
    assert!(out.actions.is_empty(), "{}", m.why);
    assert!(m.why.contains("maintenance"), "{}", m.why);
    let out = switch(&mut m, 20, false);
    assert!(has(&out, &Action::StartApp), "{}", m.why);
}

#[test]
fn the_newer_word_on_maintenance_wins_on_both_nodes() {
    let (mut a, mut b) = pair_in_maintenance(true);
    assert_eq!(a.maintenance_record(), b.maintenance_record());
    assert_eq!(a.maintenance_record().by, "node1");
    // Switched again on the same side: nothing changes.
    let out = switch(&mut b, 40, true);
    assert!(
        out.reply
            .unwrap()
            .unwrap()
            .contains("already in maintenance")
    );
    assert!(out.actions.is_empty());
    // Off on b, while a does not hear it: a is still in maintenance, b's
    // word is the newer one and a takes it.
    switch(&mut b, 50, false);
    assert!(!b.maintenance());
    assert!(a.maintenance());
    let out = a.step(60, Event::Peer(b.view()));
    assert!(!a.maintenance());
    assert!(has(
        &out,
        &Action::SaveMaintenance(b.maintenance_record().clone())
    ));
    // An older word is not taken back from the peer.
    let stale = PeerView {
        maintenance: Maintenance {
            on: true,
            version: 1,
            ..Maintenance::default()
        },
        ..b.view()
    };
    a.step(70, Event::Peer(stale));
    assert!(!a.maintenance());
    // Not in maintenance: switching it off changes nothing.
    let mut y = current_second(true);
    let out = switch(&mut y, 90, false);
    assert_eq!(out.reply, Some(Ok("not in maintenance".into())));
    assert!(out.actions.is_empty());
    // Each side switched its own way as often (they could not talk): on wins.
    let mut z = current_second(true);
    switch(&mut z, 91, true);
    let word = |on: bool, of: &Machine| PeerView {
        maintenance: Maintenance {
            on,
            ..of.maintenance_record().clone()
        },
        ..a.view()
    };
    z.step(92, Event::Peer(word(false, &z)));
    assert!(z.maintenance(), "kept on against an off of the same count");
    switch(&mut z, 93, false);
    z.step(94, Event::Peer(word(true, &z)));
    assert!(z.maintenance(), "an on of the same count is taken");
}
