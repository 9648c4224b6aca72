//! Two cluster daemons on loopback deciding by themselves who serves: a
//! small application (fsync'd numbered records in the replicated directory)
//! is started, failed over when its primary is killed, failed back, swapped,
//! and handed over on a clean stop — and never loses an acknowledged record.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{Cluster, Net};
use common::wait_until;

#[test]
fn failover_failback_swap_and_handover_keep_every_acknowledged_record() {
    let mut c = Cluster::new();
    c.start(1);
    c.start(2);
    // Fresh nodes: the node listed first serves, the other follows by full sync.
    c.wait_states("PRIM", "SECOND", 30);
    c.wait_app_writes(1);

    // kill -9 of the primary's daemon: its guard stops the application and
    // takes the dead mount away; the twin takes over.
    c.signal(1, libc::SIGKILL);
    let killed = Instant::now();
    assert!(
        wait_until(10, || !c.path("side1/app.pid").exists()
            && !common::is_tandem_mount(&c.path("node1/app"))),
        "the guard did not clean up after the dead daemon:\n{}",
        c.log_text(1)
    );
    let acked = c.acked(1);
    assert!(
        wait_until(20, || c.state(2) == "ALONE"),
        "node2 did not take over: {}\n{}",
        c.state(2),
        c.log_text(2)
    );
    let took = killed.elapsed();
    c.wait_app_writes(2);
    assert!(
        c.records(2) >= acked,
        "node2 has {} records, {acked} were acknowledged on node1",
        c.records(2)
    );
    eprintln!(
        "takeover {} ms after kill -9 (heartbeat timeout 500 ms)",
        took.as_millis()
    );

    // The old primary returns as SECOND and catches up while the app writes.
    c.start(1);
    c.wait_states("SECOND", "PRIM", 30);
    let during = c.acked(2);
    c.wait_app_writes(2);
    assert!(c.acked(2) > during);

    // swap, asked on the secondary: ordered, nothing lost.
    let o = c.tandem(1, &["swap", "app"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    c.wait_states("PRIM", "SECOND", 30);
    let before = c.acked(2);
    c.wait_app_writes(1);
    assert!(
        c.records(1) >= before,
        "node1 has {} records after the swap, node2 acknowledged {before}\n--- node1\n{}\n--- node2\n{}",
        c.records(1),
        c.log_text(1),
        c.log_text(2)
    );
    let ev = c.events();
    let tail: Vec<&str> = ev.lines().rev().take(2).collect();
    assert_eq!(tail, vec!["start node1", "stop node2"], "{ev}");

    // prim --force while the peer serves is refused and changes nothing.
    let o = c.tandem(2, &["prim", "app", "--force"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("peer serves"));
    assert_eq!(c.state(2), "SECOND");

    // A clean stop of the primary hands over at once, without a timeout.
    let acked1 = {
        let stopped = Instant::now();
        c.signal(1, libc::SIGTERM);
        assert!(
            wait_until(10, || c.state(2) == "ALONE"),
            "node2 is {}\n--- node1\n{}\n--- node2\n{}",
            c.state(2),
            c.log_text(1),
            c.log_text(2)
        );
        eprintln!(
            "handover {} ms after SIGTERM",
            stopped.elapsed().as_millis()
        );
        c.acked(1)
    };
    c.wait_app_writes(2);
    assert!(c.records(2) >= acked1);
    assert!(!common::is_tandem_mount(&c.path("node1/app")));

    c.assert_never_both();
}

#[test]
fn forged_and_garbage_heartbeats_are_dropped_counted_and_change_nothing() {
    let mut c = Cluster::new();
    c.start_both(30);
    let st = c.status(2).unwrap();
    let port = st["nodes"]["paths"][0]["local"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse::<u16>()
        .unwrap();
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..20 {
        // Garbage, and a well-formed datagram under another key claiming
        // that node1 handed over.
        s.send_to(b"not a heartbeat at all", ("127.0.0.2", port))
            .unwrap();
        let mut forged = b"TB\x01".to_vec();
        forged.extend_from_slice(&[0u8; 64]);
        s.send_to(&forged, ("127.0.0.2", port)).unwrap();
    }
    assert!(wait_until(5, || {
        let n = &c.status(2).unwrap()["nodes"];
        n["dropped_malformed"].as_u64() >= Some(20) && n["dropped_bad_mac"].as_u64() >= Some(20)
    }));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!((c.state(1), c.state(2)), ("PRIM".into(), "SECOND".into()));
    // verify runs on the serving node of a cluster and reports (the
    // application still writes, so identical or not is not asserted here).
    let o = c.tandem(1, &["verify", "app", "--json"]);
    assert!(
        matches!(o.status.code(), Some(0 | 1)),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(report["files"].as_u64().unwrap() >= 1, "{report}");
}

#[test]
fn restart_log_and_second_from_the_command_line() {
    let mut c = Cluster::new();
    c.start_both(30);
    c.wait_app_writes(1);
    // restart: the application only, where it runs; the roles stay.
    let o = c.tandem(1, &["restart", "app"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ev = c.events();
    let tail: Vec<&str> = ev.lines().rev().take(2).collect();
    assert_eq!(tail, vec!["start node1", "stop node1"], "{ev}");
    c.wait_app_writes(1);
    let o = c.tandem(2, &["restart", "app"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("does not serve on this node"));
    // log: the transitions and the scripts' runs, oldest first.
    let o = c.tandem(1, &["log", "app"]);
    assert!(o.status.success());
    let log = String::from_utf8_lossy(&o.stdout);
    let serving = log.find("Wait -> Alone").expect("the promotion is logged");
    let restart = log
        .find("restart asked by the operator")
        .expect("the restart is logged");
    assert!(serving < restart, "{log}");
    assert!(log.contains("start_prim done"), "{log}");

    // Commands about the other node, given on this one, travel over the
    // nodes' authenticated link.
    let o = c.tandem(2, &["--on", "node1", "log", "app"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        log,
        "node1's log, read on node2"
    );
    let o = c.tandem(2, &["--on", "node1", "status", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(st["nodes"]["node"], "node1", "{st}");
    assert_eq!(st["modules"][0]["state"], "PRIM", "{st}");
    let o = c.tandem(2, &["restart", "app", "--on", "node1"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ev = c.events();
    let tail: Vec<&str> = ev.lines().rev().take(2).collect();
    assert_eq!(tail, vec!["start node1", "stop node1"], "{ev}");
    // A refusal on the other node comes back as it is.
    let o = c.tandem(1, &["restart", "app", "--on", "node2"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("does not serve on this node"));
    let o = c.tandem(1, &["--on", "node9", "stop", "app"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a node of this cluster"));
    let o = c.tandem(1, &["--on", "node2", "verify", "app"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--on is for commands to a daemon"));
    assert_eq!(c.state(1), "PRIM");

    // second, asked on node2 about node1: the serving node steps down.
    let o = c.tandem(2, &["second", "app", "--on", "node1"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    c.wait_states("SECOND", "PRIM", 30);
    c.wait_app_writes(2);
    assert!(c.records(2) >= c.acked(1));
}

#[test]
fn with_a_witness_a_cut_or_an_isolated_primary_never_yields_two_serving_nodes() {
    partition_never_yields_two_serving_nodes("witness");
}

#[test]
fn with_an_etcd_lease_a_cut_or_an_isolated_primary_never_yields_two_serving_nodes() {
    partition_never_yields_two_serving_nodes("etcd");
}

/// The serving daemon is frozen (SIGSTOP) for less than, about and more
/// than the heartbeat timeout (500 ms; the witness's lease lasts 700 ms):
/// the cluster is back to PRIM and an up-to-date SECOND by itself every
/// time, with no split brain and every record acknowledged on either node
/// on the serving node, written by the node that acknowledged it.
#[test]
fn a_paused_primary_never_stops_the_service_nor_makes_a_split_brain() {
    let net = Net::pair();
    let mut c = Cluster::build_full(Some(&net), "witness", false);
    c.start_both(30);
    c.wait_app_writes(1);
    let mut took_over = 0;
    {
        for pause in [250, 500, 2_000, 3_000] {
            let p = c.settled(30).expect("one PRIM and an up-to-date SECOND");
            c.pause(p, Duration::from_millis(pause));
            let now = c.settled(40);
            assert!(
                now.is_some(),
                "after a pause of {pause} ms of node{p}: {}/{}\n--- node1\n{}\n--- node2\n{}",
                c.state(1),
                c.state(2),
                c.log_text(1),
                c.log_text(2)
            );
            let now = now.unwrap();
            took_over += (now != p) as u32;
            let acked = c.acked(1).max(c.acked(2));
            let start = c.acked(now);
            assert!(
                wait_until(20, || c.acked(now) > start + 5),
                "the application does not write on node{now} after a pause of {pause} ms of \
                 node{p}: {}/{}\n--- node1\n{}\n--- node2\n{}",
                c.state(1),
                c.state(2),
                c.log_text(1),
                c.log_text(2)
            );
            assert!(
                c.records(now) >= acked,
                "node{now} has {} records, {acked} were acknowledged",
                c.records(now)
            );
            c.assert_acks_kept(now);
            eprintln!("paused node{p} {pause} ms: node{now} serves");
        }
    }
    assert!(took_over >= 2, "the long pauses made the twin take over");
    for n in 1..=2 {
        let log = c.log_text(n);
        assert!(!log.contains("split brain"), "node{n}:\n{log}");
    }
    let aside = c.path("state1/modules/app/set-aside");
    assert!(
        aside.exists() || c.path("state2/modules/app/set-aside").exists(),
        "a node that stopped serving without handing over set its changes aside"
    );
}

/// node1's cluster manager waits for a slow script of another module when
/// node1 is cut off from its peer and the witness: the fencer, not the
/// manager, takes it out of service — its health endpoint says 503 and its
/// application is acknowledged nothing more — before node2 takes over.
#[test]
fn a_cut_off_node_is_fenced_while_its_manager_waits_for_a_slow_script() {
    let net = Net::pair();
    let mut c = Cluster::build_extra(
        Some(&net),
        "witness",
        false,
        "",
        "[[module]]\nname = \"db\"\ndirs = [\"{t}/node{n}/db\"]\nfailover = \"lb\"\n\
         lb_port = {lb}\n[module.scripts]\nstart_prim = \"{t}/slow.sh\"\ntimeout_s = 30\n",
    );
    common::cluster::script(
        &c.path("slow.sh"),
        "#!/bin/sh\n[ \"$TANDEM_NODE\" = node1 ] && [ -f \"$APP_SIDE/../slow\" ] && sleep 8\nexit 0\n",
    );
    c.start_both(30);
    assert!(wait_until(30, || c.state_of(1, 1) == "PRIM"));
    c.wait_app_writes(1);
    let (ns1, port1) = (net.nodes[0].clone(), c.lb_port(1));
    let probe =
        || common::cluster::in_netns(&ns1, || common::cluster::http_status(port1, "/primary/app"));
    assert_eq!(probe(), Some(200));
    std::fs::write(c.path("slow"), b"").unwrap();
    std::thread::scope(|s| {
        let restart = s.spawn(|| c.tandem(1, &["restart", "db"]));
        // The manager is in the slow start now.
        std::thread::sleep(Duration::from_millis(800));
        net.set(1, "peer", false);
        net.set(1, "wit", false);
        let cut = Instant::now();
        let mut first_503 = None;
        let took_over = wait_until(20, || {
            if first_503.is_none() && probe() != Some(200) {
                first_503 = Some(cut.elapsed());
            }
            c.state(2) == "ALONE"
        });
        let took_over_after = cut.elapsed();
        assert!(took_over, "node2 did not take over:\n{}", c.log_text(2));
        assert_ne!(probe(), Some(200), "node1 still says it serves");
        let fenced = first_503.expect("node1's endpoint never stopped saying 200");
        assert!(
            fenced < took_over_after,
            "node1 said 200 until {fenced:?}, node2 served from {took_over_after:?}"
        );
        c.wait_app_writes(2);
        c.assert_acks_kept(2);
        eprintln!(
            "cut at 0: node1 out of service after {fenced:?}, node2 served after {took_over_after:?}"
        );
        std::fs::remove_file(c.path("slow")).unwrap();
        let _ = restart.join();
        assert!(c.log_text(1).contains("fenced"), "{}", c.log_text(1));
    });
    net.set(1, "peer", true);
    net.set(1, "wit", true);
    c.wait_states("SECOND", "PRIM", 30);
}

/// The link between the nodes is cut, then the primary isolated, with the
/// quorum (`kind`) in a namespace of its own.
fn partition_never_yields_two_serving_nodes(kind: &str) {
    let net = Net::pair();
    let mut c = Cluster::build_full(Some(&net), kind, false);
    c.start_both(30);
    c.wait_app_writes(1);
    c.wait_lease(1);
    let stop = std::sync::atomic::AtomicBool::new(false);
    // Stops the watcher however the scope ends (a failed assertion too).
    struct Stop<'a>(&'a std::sync::atomic::AtomicBool);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    std::thread::scope(|s| {
        let watcher = s.spawn(|| c.watch(&stop));
        let stopper = Stop(&stop);

        // The link between the nodes is cut; both still reach the witness:
        // the primary keeps its lease and serves, the other cannot get it.
        net.set(1, "peer", false);
        c.wait_states("ALONE", "WAIT", 20);
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!((c.state(1), c.state(2)), ("ALONE".into(), "WAIT".into()));
        c.wait_app_writes(1);
        net.set(1, "peer", true);
        c.wait_states("PRIM", "SECOND", 30);

        // node1 isolated from everything: it cannot renew its lease and stops
        // serving; node2 gets the lease once it ran out and takes over.
        let acked = c.acked(1);
        net.set(1, "peer", false);
        net.set(1, "wit", false);
        c.wait_states("WAIT", "ALONE", 20);
        c.wait_app_writes(2);
        assert!(c.records(2) >= acked);
        net.set(1, "peer", true);
        net.set(1, "wit", true);
        c.wait_states("SECOND", "PRIM", 30);

        drop(stopper);
        let both = watcher.join().unwrap();
        assert!(both.is_empty(), "both nodes said they serve: {both:?}");
    });
    c.assert_never_both();
}

#[test]
fn a_failing_check_restarts_the_application_then_hands_the_module_over() {
    let mut c = Cluster::build_with(None, true);
    c.start_both(30);
    c.wait_app_writes(1);
    let kill_app = |c: &Cluster| {
        let pid: i32 = std::fs::read_to_string(c.path("side1/app.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // SAFETY: kill takes no pointer; -pid names the process group the application leads (its
        // pid from app.pid).
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    };
    // Suspended for maintenance: a dead application is left alone.
    let o = c.tandem(1, &["checker", "app", "off"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    kill_app(&c);
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(c.state(1), "PRIM");
    let starts = c.events().matches("start node1").count();
    assert_eq!(starts, 1, "{}", c.events());
    // Resumed: the dead application is restarted where it was (one restart
    // allowed), and on the next failure the module goes to node2.
    let o = c.tandem(1, &["checker", "app", "on"]);
    assert!(o.status.success());
    assert!(
        wait_until(10, || c.events().matches("start node1").count() == 2),
        "not restarted: {}\n{}",
        c.events(),
        c.log_text(1)
    );
    c.wait_app_writes(1);
    assert_eq!(c.state(1), "PRIM");
    kill_app(&c);
    assert!(
        wait_until(20, || c.state(2) == "PRIM" || c.state(2) == "ALONE"),
        "no failover after the second failure: {}\n{}",
        c.state(2),
        c.log_text(1)
    );
    c.wait_app_writes(2);
    assert_eq!(c.state(1), "SECOND");
    let log = String::from_utf8_lossy(&c.tandem(1, &["log", "app"]).stdout).into_owned();
    assert!(log.contains("process check"), "{log}");
    // Not taken back until the operator starts it again.
    let st = c.status(1).unwrap();
    assert!(st["modules"][0]["cluster"]["blocked"].is_string(), "{st}");
    c.assert_never_both();
}

#[test]
fn swap_to_a_node_that_cannot_serve_is_refused_and_a_declined_hand_over_is_taken_back() {
    let mut c = Cluster::build_with(None, true);
    // A prestart that fails while its node's `prestart_fails` file exists.
    common::cluster::script(
        &c.path("prestart.sh"),
        "#!/bin/sh\n[ -f \"$APP_SIDE/prestart_fails\" ] && { echo refused; exit 1; }\nexit 0\n",
    );
    for n in 1..=2 {
        let p = c.config(n);
        let text = std::fs::read_to_string(&p).unwrap().replacen(
            "start_prim = ",
            &format!(
                "prestart = \"{}\"\nstart_prim = ",
                c.path("prestart.sh").display()
            ),
            1,
        );
        std::fs::write(&p, text).unwrap();
    }
    c.start(1);
    c.start(2);
    c.wait_states("PRIM", "SECOND", 30);
    c.wait_app_writes(1);
    // node1's application fails its checks until the module goes to node2
    // (one restart allowed, then the failover): node1 follows, blocked.
    let kill_app = |c: &Cluster| {
        let pid: i32 = std::fs::read_to_string(c.path("side1/app.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // SAFETY: kill takes no pointer; the group is the application's own,
        // started by the test's script.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    };
    kill_app(&c);
    assert!(
        wait_until(10, || c.events().matches("start node1").count() == 2),
        "not restarted: {}\n{}",
        c.events(),
        c.log_text(1)
    );
    c.wait_app_writes(1);
    kill_app(&c);
    c.wait_states("SECOND", "PRIM", 20);
    c.wait_app_writes(2);
    let blocked =
        |c: &Cluster| c.status(1).unwrap()["modules"][0]["cluster"]["blocked"].is_string();
    assert!(blocked(&c));

    // swap asked of the blocked node: refused, with the reason and the way out.
    let o = c.tandem(1, &["swap", "app"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("fails its checks here"), "{err}");
    assert!(err.contains("`tandem start app` on this node"), "{err}");
    std::thread::sleep(Duration::from_millis(1_500));
    assert_eq!((c.state(1), c.state(2)), ("SECOND".into(), "PRIM".into()));
    c.wait_app_writes(2);

    // Started again, node1 is handed the module, and cannot mount it (its
    // prestart fails): node2 serves again by itself, at once.
    std::fs::write(c.path("side1/prestart_fails"), "").unwrap();
    let o = c.tandem(1, &["start", "app"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(wait_until(5, || !blocked(&c)));
    let o = c.tandem(1, &["swap", "app"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let asked = Instant::now();
    assert!(
        wait_until(20, || c.log_text(1).contains("): refused")),
        "node1 was not handed the module:\n{}\n--- node2\n{}",
        c.log_text(1),
        c.log_text(2)
    );
    assert!(
        wait_until(10, || matches!(c.state(2).as_str(), "PRIM" | "ALONE")
            && c.events().ends_with("start node2\n")),
        "node2 did not take the module back: {}\n--- node1\n{}\n--- node2\n{}",
        c.state(2),
        c.log_text(1),
        c.log_text(2)
    );
    eprintln!(
        "served again {} ms after the swap was asked",
        asked.elapsed().as_millis()
    );
    c.wait_app_writes(2);
    assert!(
        c.log_text(2)
            .contains("the peer cannot serve: taking the module back")
    );
    assert!(blocked(&c));
    c.assert_never_both();
}

#[test]
fn with_ping_quorum_an_isolated_primary_stops_and_the_twin_takes_over() {
    let net = Net::pair();
    let mut c = Cluster::build_full(Some(&net), "ping", false);
    c.start_both(30);
    c.wait_app_writes(1);
    let acked = c.acked(1);
    // node1 loses every link: no peer, and its ping address is gone too.
    net.set(1, "peer", false);
    net.set(1, "wit", false);
    c.wait_states("WAIT", "ALONE", 20);
    c.wait_app_writes(2);
    assert!(c.records(2) >= acked);
    let st = c.status(1).unwrap();
    let q = st["modules"][0]["cluster"]["quorum"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(q.contains("no address answers"), "{q}");
    net.set(1, "peer", true);
    net.set(1, "wit", true);
    c.wait_states("SECOND", "PRIM", 30);
    c.assert_never_both();
}

#[test]
fn a_split_brain_is_resolved_by_the_operator_and_the_losing_side_is_kept_aside() {
    let net = Net::pair();
    let mut c = Cluster::build_full(Some(&net), "none", false);
    c.start_both(30);
    c.wait_app_writes(1);
    // Without quorum a cut makes two writers: node1 goes on alone, node2
    // takes over.
    net.set(1, "peer", false);
    c.wait_states("ALONE", "ALONE", 20);
    c.wait_app_writes(1);
    c.wait_app_writes(2);
    // The link returns: the split is seen, one side stops, nothing is merged
    // or overwritten on its own.
    net.set(1, "peer", true);
    let split = |n: usize| {
        c.status(n)
            .is_some_and(|s| s["modules"][0]["cluster"]["split_brain"] == true)
    };
    assert!(
        wait_until(20, || split(1) && split(2)),
        "split brain not reported\n--- node1\n{}\n--- node2\n{}",
        c.log_text(1),
        c.log_text(2)
    );
    let serving = |n: usize| matches!(c.state(n).as_str(), "ALONE" | "PRIM");
    assert!(
        wait_until(10, || serving(1) != serving(2)),
        "{} {}",
        c.state(1),
        c.state(2)
    );
    let (keep, lose) = if serving(1) { (1, 2) } else { (2, 1) };
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        split(1) && split(2) && !serving(lose),
        "resolved on its own"
    );
    let lost = c.records(lose);
    let winner = c.records(keep);
    let o = c.tandem(keep, &["resolve", "app", "--keep", &format!("node{keep}")]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // The losing node keeps its own records aside, then follows by full sync.
    assert!(
        wait_until(30, || c.uptodate(lose)),
        "node{lose} did not catch up\n{}",
        c.log_text(lose)
    );
    let aside = c.path(&format!("state{lose}/modules/app/split-brain"));
    let runs: Vec<_> = std::fs::read_dir(&aside)
        .unwrap_or_else(|e| panic!("{}: {e}", aside.display()))
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let kept = std::fs::read_to_string(runs[0].join("0/records")).unwrap();
    assert_eq!(
        kept.lines().count() as u64,
        lost,
        "the losing side's records, all of them"
    );
    assert_eq!(
        kept.lines().last().and_then(|l| l.split(' ').next()),
        Some(lost.to_string().as_str())
    );
    let manifest = std::fs::read_to_string(runs[0].join("MANIFEST")).unwrap();
    assert!(manifest.contains("file 0 records"), "{manifest}");
    assert!(c.log_text(lose).contains("kept aside"));
    // The kept side's data is now on both.
    c.wait_app_writes(keep);
    assert!(c.records(lose) >= winner, "{} < {winner}", c.records(lose));
    let st = c.status(keep).unwrap();
    assert_eq!(st["modules"][0]["cluster"]["split_brain"], false, "{st}");
}

#[test]
fn modules_serve_on_either_node_swap_back_to_their_preferred_node_and_survive_a_total_power_loss() {
    let mut c = Cluster::build_extra(
        None,
        "none",
        false,
        "preferred_primary = \"node1\"",
        "[[module]]\nname = \"db\"\ndirs = [\"{t}/node{n}/db\"]\nfailover = \"lb\"\nlb_port = {lb}\n\
         preferred_primary = \"node2\"\n",
    );
    c.start(1);
    c.start(2);
    fn states(c: &Cluster, m: usize) -> (String, String) {
        (c.state_of(1, m), c.state_of(2, m))
    }
    fn both_settled(c: &Cluster, app: (&str, &str), db: (&str, &str)) -> bool {
        let pair = |(a, b): (&str, &str)| (a.to_string(), b.to_string());
        wait_until(30, || states(c, 0) == pair(app) && states(c, 1) == pair(db))
    }
    // Active/active: each module serves on its preferred node.
    assert!(
        both_settled(&c, ("PRIM", "SECOND"), ("SECOND", "PRIM")),
        "app {:?}, db {:?}\n--- node1\n{}\n--- node2\n{}",
        states(&c, 0),
        states(&c, 1),
        c.log_text(1),
        c.log_text(2)
    );
    c.wait_app_writes(1);
    std::fs::write(c.path("node2/db/table"), b"row 1\n").unwrap();
    assert!(
        wait_until(10, || std::fs::read(c.path("node1/db/table"))
            .ok()
            .as_deref()
            == Some(b"row 1\n".as_slice())),
        "db written on node2 did not reach node1"
    );

    // node1 dies: app fails over to node2, db goes on there.
    c.signal(1, libc::SIGKILL);
    assert!(wait_until(20, || states(&c, 0).1 == "ALONE"
        && states(&c, 1).1 == "ALONE"));
    c.wait_app_writes(2);
    std::fs::write(c.path("node2/db/table"), b"row 1\nrow 2\n").unwrap();

    // node1 returns: it catches up as SECOND, then takes app back by itself
    // (its preferred node) while db stays on node2.
    c.start(1);
    assert!(
        both_settled(&c, ("PRIM", "SECOND"), ("SECOND", "PRIM")),
        "app {:?}, db {:?}\n--- node1\n{}\n--- node2\n{}",
        states(&c, 0),
        states(&c, 1),
        c.log_text(1),
        c.log_text(2)
    );
    assert!(
        c.log_text(1)
            .contains("the preferred primary is up to date")
            || c.log_text(2)
                .contains("the preferred primary is up to date"),
        "app did not swap back by itself"
    );
    c.wait_app_writes(1);
    assert_eq!(
        std::fs::read(c.path("node1/db/table")).unwrap(),
        b"row 1\nrow 2\n"
    );
    let acked = c.acked(1);

    // Both nodes lose power at once (no handover, no clean stop). They come
    // back in their former roles, from their change logs, without a full sync.
    c.signal(1, libc::SIGKILL);
    c.signal(2, libc::SIGKILL);
    for n in 1..=2 {
        assert!(wait_until(10, || !common::is_tandem_mount(
            &c.path(&format!("node{n}/app"))
        ) && !common::is_tandem_mount(
            &c.path(&format!("node{n}/db"))
        )));
    }
    let logged = [c.log_text(1).len(), c.log_text(2).len()];
    c.start(2);
    c.start(1);
    assert!(
        both_settled(&c, ("PRIM", "SECOND"), ("SECOND", "PRIM")),
        "app {:?}, db {:?}\n--- node1\n{}\n--- node2\n{}",
        states(&c, 0),
        states(&c, 1),
        c.log_text(1),
        c.log_text(2)
    );
    c.wait_app_writes(1);
    assert!(c.records(1) >= acked);
    for n in 1..=2 {
        let after = &c.log_text(n)[logged[n - 1]..];
        assert!(
            !after.contains("full sync"),
            "node{n} needed a full sync:\n{after}"
        );
    }
    c.assert_never_both();
}

/// The status line of `GET path` on the node's health port over TLS (any
/// certificate accepted, as load balancers' checks do).
fn https_status(port: u16, path: &str) -> String {
    let script = format!(
        "import ssl, socket\n\
         c = ssl.create_default_context()\n\
         c.check_hostname = False\n\
         c.verify_mode = ssl.CERT_NONE\n\
         s = c.wrap_socket(socket.create_connection(('127.0.0.1', {port}), timeout=5))\n\
         s.sendall(b'GET {path} HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')\n\
         print(s.recv(200).decode().split('\\r\\n')[0])\n"
    );
    let o = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3 is installed");
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[test]
fn health_endpoints_speak_https_with_lb_tls() {
    let (p1, p2) = (common::free_port(false), common::free_port(false));
    let mut c = Cluster::build_opts(
        None,
        &common::cluster::Options {
            quorum: "none",
            failover: Some("failover = \"lb\"\nlb_tls = true\nlb_port = {port}".into()),
            ports: Some([p1, p2]),
            ..Default::default()
        },
    );
    c.start_both(30);
    assert!(
        wait_until(5, || https_status(p1, "/primary/app") == "HTTP/1.1 200 OK"),
        "{}",
        https_status(p1, "/primary/app")
    );
    assert_eq!(
        https_status(p2, "/primary/app"),
        "HTTP/1.1 503 Service Unavailable"
    );
    assert_eq!(https_status(p2, "/secondary/app"), "HTTP/1.1 200 OK");
    assert_eq!(
        https_status(p1, "/var/modules/app/ready.txt"),
        "HTTP/1.1 200 OK"
    );
    assert_eq!(
        https_status(p2, "/var/modules/app/ready.txt"),
        "HTTP/1.1 404 Not Found"
    );
    // Plain HTTP on the TLS port gets no answer.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", p1)).unwrap();
    use std::io::{Read, Write};
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /primary/app HTTP/1.1\r\n\r\n").unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    assert!(!String::from_utf8_lossy(&out).contains("200 OK"));
    // A swap flips both.
    let o = c.tandem(1, &["swap", "app"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    c.wait_states("SECOND", "PRIM", 30);
    assert_eq!(
        https_status(p1, "/primary/app"),
        "HTTP/1.1 503 Service Unavailable"
    );
    assert_eq!(https_status(p2, "/primary/app"), "HTTP/1.1 200 OK");
}

/// The SECOND is frozen (SIGSTOP) for 1, 2 and 6 s while the serving node's
/// application appends 64-byte records and fdatasyncs each: no call waits
/// longer than `peer_timeout` (plus scheduling slack), whatever path it
/// waits on, and every record acknowledged reaches the twin once it is back.
/// `TANDEM_PAUSE_ROUNDS=50` is the long form.
#[test]
fn no_call_waits_past_peer_timeout_while_the_second_is_frozen() {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};

    const PEER_TIMEOUT_MS: u64 = 1_000;
    const SLACK_MS: u64 = 300;
    let rounds: usize = std::env::var("TANDEM_PAUSE_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let net = Net::pair();
    let mut c = Cluster::build_opts(
        Some(&net),
        &common::cluster::Options {
            heartbeat: (100, 600),
            peer_timeout_ms: PEER_TIMEOUT_MS,
            ..Default::default()
        },
    );
    c.start_both(30);
    let p = c.settled(30).expect("one PRIM and an up-to-date SECOND");
    let second = 3 - p;

    // The writer: its longest call since the last look, its failures, and
    // how many records were acknowledged.
    let (stop, longest_us, failures, acked) = (
        AtomicBool::new(false),
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
    );
    let path = c.path(&format!("node{p}/app/records-64"));
    let mut stalls = Vec::new();
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o644)
                .open(&path)
                .unwrap();
            while !stop.load(SeqCst) {
                let n = acked.load(SeqCst) + 1;
                let record = format!("{n:063}\n");
                let t = Instant::now();
                let r = f.write_all(record.as_bytes()).and_then(|()| f.sync_data());
                longest_us.fetch_max(t.elapsed().as_micros() as u64, SeqCst);
                match r {
                    Ok(()) => {
                        acked.store(n, SeqCst);
                    }
                    Err(e) => {
                        eprintln!("record {n}: {e}");
                        failures.fetch_add(1, SeqCst);
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            }
        });
        for round in 0..rounds {
            for pause in [1_000, 2_000, 6_000] {
                assert_eq!(
                    c.settled(60),
                    Some(p),
                    "round {round}, before a pause of {pause} ms: {}/{}\n--- node{p}\n{}",
                    c.state(1),
                    c.state(2),
                    c.log_text(p)
                );
                let before = acked.load(SeqCst);
                longest_us.store(0, SeqCst);
                c.pause(second, Duration::from_millis(pause));
                std::thread::sleep(Duration::from_millis(500));
                let longest = Duration::from_micros(longest_us.load(SeqCst));
                let why = c.log_text(p);
                let why = why.lines().rev().find(|l| l.contains("peer out of date"));
                eprintln!(
                    "round {round}: SECOND paused {pause} ms: longest call {longest:?} ({})",
                    why.unwrap_or("the link held")
                );
                stalls.push((pause, longest));
                assert!(
                    longest <= Duration::from_millis(PEER_TIMEOUT_MS + SLACK_MS),
                    "round {round}: with the SECOND paused {pause} ms a call waited {longest:?} \
                     (peer_timeout {PEER_TIMEOUT_MS} ms)\n--- node{p}\n{}",
                    c.log_text(p)
                );
                assert!(
                    acked.load(SeqCst) > before,
                    "no record was acknowledged across the pause"
                );
            }
        }
        stop.store(true, SeqCst);
    });
    assert_eq!(failures.load(SeqCst), 0, "calls failed:\n{}", c.log_text(p));
    // Every acknowledged record is on the twin once it is current again.
    assert_eq!(c.settled(60), Some(p));
    let want = acked.load(SeqCst) * 64;
    let twin = c.path(&format!("node{second}/app/records-64"));
    assert!(
        wait_until(20, || std::fs::metadata(&twin)
            .is_ok_and(|m| m.len() >= want)),
        "node{second} has {:?} bytes of the records, {want} were acknowledged",
        std::fs::metadata(&twin).map(|m| m.len())
    );
    let worst = stalls.iter().map(|s| s.1).max().unwrap();
    eprintln!("longest call over {} pauses: {worst:?}", stalls.len());
}
