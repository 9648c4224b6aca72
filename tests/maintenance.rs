//! Maintenance mode with two real daemons: while it is on, the SECOND does
//! not take over a primary killed with -9, a failing check moves nothing,
//! a daemon stopped hands nothing over and comes back in its role, and the
//! operator's swap still works; switched off, the SECOND takes over. It is
//! kept across restarts and shown in the status.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{Cluster, Net};
use common::wait_until;

/// The module's maintenance in node `n`'s `status --json`.
fn maintenance(c: &Cluster, n: usize) -> serde_json::Value {
    c.status(n)
        .map(|s| s["modules"][0]["cluster"]["maintenance"].clone())
        .unwrap_or_default()
}

/// Both nodes hold maintenance and each heard the other say so.
fn wait_held(c: &Cluster) {
    assert!(
        wait_until(10, || (1..=2).all(
            |n| maintenance(c, n)["on"] == true && maintenance(c, n)["peer_agrees"] == true
        )),
        "maintenance is not held by both nodes: {} / {}",
        maintenance(c, 1),
        maintenance(c, 2)
    );
}

/// For `d`, node `n` stays in one of `states` (checked every 50 ms).
fn stays(c: &Cluster, n: usize, states: &[&str], d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        let now = c.state(n);
        assert!(
            states.contains(&now.as_str()),
            "node{n} went {now} in maintenance\n--- node1\n{}\n--- node2\n{}",
            c.log_text(1),
            c.log_text(2)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// With a witness in network namespaces: maintenance asked on the SECOND
/// (relayed to the primary), the primary's daemon killed with -9: the
/// SECOND stays SECOND for six heartbeat timeouts (and well past the
/// lease), says why; switched off, it takes over with nothing lost.
#[test]
fn in_maintenance_the_second_does_not_take_over_a_killed_primary_until_it_ends() {
    let net = Net::pair();
    let mut c = Cluster::build_full(Some(&net), "witness", false);
    c.start_both(30);
    c.wait_app_writes(1);
    c.wait_lease(1);

    let said = c.ok(2, &["maintenance", "on"]);
    assert!(said.contains("module app: maintenance on"), "{said}");
    // node1 was told, or had heard it in node2's heartbeat already.
    assert!(
        said.contains("node1: module app: maintenance on")
            || said.contains("node1: module app: already in maintenance (set on node2)"),
        "{said}"
    );
    wait_held(&c);
    assert_eq!(maintenance(&c, 1)["by"], "node2");
    let text = c.ok(1, &["status"]);
    assert!(
        text.contains("MAINTENANCE: automatic failover off for every module since"),
        "{text}"
    );
    assert!(text.contains("(set on node2)"), "{text}");

    c.signal(1, libc::SIGKILL);
    let killed = Instant::now();
    assert!(
        wait_until(10, || !c.path("side1/app.pid").exists()),
        "the guard did not stop the application:\n{}",
        c.log_text(1)
    );
    let acked = c.acked(1);
    // Heartbeat timeout 500 ms, the witness's lease 700 ms.
    stays(&c, 2, &["SECOND"], Duration::from_millis(3_000));
    let st = c.status(2).unwrap();
    let m = &st["modules"][0]["cluster"];
    assert_eq!(m["maintenance"]["on"], true, "{st}");
    assert!(m["why"].as_str().unwrap().contains("maintenance"), "{st}");
    assert_eq!(st["nodes"]["peer_alive"], false, "{st}");
    let text = c.ok(2, &["status"]);
    assert!(text.contains("MAINTENANCE"), "{text}");
    assert!(
        c.events().lines().last() == Some("stop node1"),
        "{}",
        c.events()
    );

    let said = c.ok(2, &["maintenance", "off"]);
    assert!(said.contains("maintenance off"), "{said}");
    assert!(said.contains("node1 is not heard"), "{said}");
    assert!(said.contains("WARNING: if node1 still runs"), "{said}");
    let off = Instant::now();
    assert!(
        wait_until(20, || c.state(2) == "ALONE"),
        "node2 did not take over once maintenance was off: {}\n{}",
        c.state(2),
        c.log_text(2)
    );
    eprintln!(
        "killed at 0; SECOND still SECOND at {} ms; maintenance off, ALONE {} ms later",
        off.duration_since(killed).as_millis(),
        off.elapsed().as_millis()
    );
    c.wait_app_writes(2);
    assert!(c.records(2) >= acked);
    // The killed node comes back following, as always, out of maintenance.
    c.start(1);
    c.wait_states("SECOND", "PRIM", 30);
    assert_eq!(maintenance(&c, 1)["on"], false);
    c.assert_acks_kept(2);
    c.assert_never_both();
}

/// On loopback with a process check (one restart a minute): a failing
/// check moves nothing in maintenance, a restart and a swap asked by the
/// operator work, the daemons stopped one after the other hand nothing
/// over and come back in their roles still in maintenance, and an unknown
/// module is refused by name.
#[test]
fn maintenance_survives_restarts_and_keeps_checks_and_stops_from_moving_the_module() {
    let mut c = Cluster::build_with(None, true);
    c.start_both(30);
    c.wait_app_writes(1);

    // Bad input first: refused by name, nothing switched.
    let o = c.tandem(1, &["maintenance", "on", "nope"]);
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("no module named \"nope\""), "{e}");
    assert_eq!(maintenance(&c, 1)["on"], false);
    assert_eq!(maintenance(&c, 2)["on"], false);

    c.ok(1, &["maintenance", "on", "app"]);
    wait_held(&c);

    // The application dies: its check fails, nothing is restarted or moved.
    let pid: i32 = std::fs::read_to_string(c.path("side1/app.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: kill takes no pointer; -pid names the process group the
    // application leads (its pid from app.pid).
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    stays(&c, 1, &["PRIM"], Duration::from_millis(1_500));
    assert_eq!(c.state(2), "SECOND");
    assert_eq!(
        c.events().matches("start node1").count(),
        1,
        "{}",
        c.events()
    );
    let log = c.ok(1, &["log", "app"]);
    assert!(
        log.contains("maintenance: neither restarted nor handed over"),
        "{log}"
    );
    // The operator restarts it.
    c.ok(1, &["restart", "app"]);
    c.wait_app_writes(1);

    // swap works in maintenance.
    c.ok(1, &["swap", "app"]);
    c.wait_states("SECOND", "PRIM", 30);
    c.wait_app_writes(2);

    // The SECOND's daemon is upgraded: stopped and started, nothing moves,
    // and it is back in maintenance from its state directory.
    c.signal(1, libc::SIGTERM);
    stays(&c, 2, &["PRIM", "ALONE"], Duration::from_millis(1_000));
    c.start(1);
    c.wait_states("SECOND", "PRIM", 30);
    assert_eq!(maintenance(&c, 1)["on"], true);
    assert!(c.ok(1, &["status"]).contains("MAINTENANCE"));

    // The serving daemon restarts: nothing is handed over (its application
    // stops meanwhile), the SECOND does not take over, and it comes back
    // serving.
    let acked = c.acked(2);
    c.signal(2, libc::SIGTERM);
    assert_eq!(
        c.events().lines().last(),
        Some("stop node2"),
        "{}",
        c.events()
    );
    stays(&c, 1, &["SECOND"], Duration::from_millis(2_000));
    c.start(2);
    assert!(
        wait_until(30, || c.state(2) == "PRIM" && c.uptodate(1)),
        "node2 did not come back serving: {}/{}\n{}",
        c.state(1),
        c.state(2),
        c.log_text(2)
    );
    c.wait_app_writes(2);
    assert!(c.records(2) >= acked);
    assert_eq!(maintenance(&c, 2)["on"], true);

    // Switched off from node1 for node2: both end it.
    c.ok(1, &["--on", "node2", "maintenance", "off"]);
    assert!(wait_until(10, || maintenance(&c, 1)["on"] == false
        && maintenance(&c, 2)["on"] == false));
    assert!(!c.ok(1, &["status"]).contains("MAINTENANCE"));
    c.assert_acks_kept(2);
    c.assert_never_both();
}
