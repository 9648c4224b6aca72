//! The pair in maintenance: whatever happens to it, nothing starts or stops
//! the application by itself while both nodes hold maintenance, and
//! switching it off decides again as if it had never been on.

use super::*;

/// What happens to a pair in maintenance: nodes killed and restarted, links
/// and witness lost, a failing check, the primary stopped.
fn disruptions() -> Vec<Vec<Op>> {
    use Op::*;
    vec![
        vec![Kill(0)],
        vec![Kill(1)],
        vec![Kill(0), Run(LEASE + 1_000), Revive(0)],
        vec![Kill(1), Run(LEASE + 1_000), Revive(1)],
        vec![Link(false)],
        vec![Link(false), Witness(0, false)],
        vec![Link(false), Witness(1, false)],
        vec![Witness(0, false), Witness(1, false)],
        vec![Link(false), Witness(0, false), Witness(1, false)],
        vec![Fails(0, Failure::Check)],
        vec![Fails(1, Failure::Check)],
        vec![Cmd(0, Command::Stop)],
        vec![Cmd(1, Command::Stop)],
    ]
}

#[test]
fn in_maintenance_nothing_moves_by_itself_and_switching_it_off_decides_again() {
    let (mut runs, mut shared) = (0, 0);
    for setup in setups() {
        for on in [0, 1] {
            for d in disruptions() {
                let mut n = Net::new();
                n.label = format!("maintenance on node{on} after {setup:?}, then {d:?}");
                for &op in &setup {
                    n.apply(op);
                }
                n.run(TAKEOVER + 3_000);
                if n.nodes[on].m.is_none() {
                    continue;
                }
                n.apply(Op::Maintenance(on, true));
                n.run(500);
                // Both nodes know, each heard the other say so (a peer cut
                // off or dead before it heard may still take over, and the
                // fence stays: only the safety check holds then).
                let known = n
                    .nodes
                    .iter()
                    .all(|x| x.m.as_ref().is_some_and(Machine::maintenance_shared));
                let before = [n.nodes[0].app, n.nodes[1].app];
                // The nodes an operator or a crash touches.
                let touched: Vec<usize> = d
                    .iter()
                    .filter_map(|op| match op {
                        Op::Kill(i) | Op::Cmd(i, _) => Some(*i),
                        _ => None,
                    })
                    .collect();
                for &op in &d {
                    n.apply(op);
                }
                let end = n.now + TAKEOVER + 4_000;
                while n.now < end {
                    n.tick();
                    for i in (0..2).filter(|_| known) {
                        assert!(
                            !n.nodes[i].app || before[i],
                            "{}: node{i} started the application by itself: {:?} {:?}",
                            n.label,
                            n.states(),
                            n.nodes[i].m.as_ref().map(|m| m.why.clone())
                        );
                        let alive = n.nodes[i].m.is_some();
                        assert!(
                            n.nodes[i].app || !before[i] || !alive || touched.contains(&i),
                            "{}: node{i} stopped the application by itself: {:?} {:?}",
                            n.label,
                            n.states(),
                            n.nodes[i].m.as_ref().map(|m| m.why.clone())
                        );
                    }
                }
                runs += 1;
                shared += known as u32;
                // Healed and switched off: decided again from what is true.
                n.link = true;
                n.witness = [true, true];
                n.run(1_000);
                let Some(off) = [on, 1 - on].into_iter().find(|&i| n.nodes[i].m.is_some()) else {
                    continue;
                };
                n.apply(Op::Maintenance(off, false));
                n.run(TAKEOVER + 4_000);
                for x in n.nodes.iter().filter_map(|x| x.m.as_ref()) {
                    assert!(!x.maintenance(), "{}: still in maintenance", n.label);
                }
                // An operator's stop leaves the module stopped, as it said;
                // a node that did not know of maintenance acted as always,
                // and what it did (serving newer data, say) still holds.
                // A split brain waits for `resolve`, as always.
                let stopped = d.iter().any(|op| matches!(op, Op::Cmd(_, Command::Stop)));
                let split = n
                    .nodes
                    .iter()
                    .any(|x| x.m.as_ref().is_some_and(|m| m.split_brain));
                if known && before.contains(&true) && !stopped && !split && !n.nobody_can_serve() {
                    assert!(
                        n.serving(),
                        "{}: nobody serves once maintenance is off: {:?} {:?}",
                        n.label,
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
    assert!(
        runs > 300 && shared > 200,
        "{runs} runs, {shared} with both in maintenance"
    );
}
