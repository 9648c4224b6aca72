//! A daemon's stop: every thread and task it started ends within the
//! deadline, and no thread it did not join is left, whatever ran when the
//! stop came (the link, a verify, checkers, the quorum's client, the
//! fencer, the announcer of a virtual address, health endpoints).

mod common;

use std::time::{Duration, Instant};

use common::cluster::{Cluster, Net, Options};
use common::wait_until;

/// The daemon's line after its join: how many ended, and in how many ms.
fn joined(log: &str) -> Option<(usize, u64)> {
    let line = log.lines().rev().find(|l| l.contains("stopped: "))?;
    let rest = &line[line.find("stopped: ")? + "stopped: ".len()..];
    let mut words = rest.split_whitespace();
    let ended = words.next()?.parse().ok()?;
    let ms = rest
        .split(" ended in ")
        .nth(1)?
        .split(' ')
        .next()?
        .parse()
        .ok()?;
    Some((ended, ms))
}

/// Stops node `n` with SIGTERM and checks its log: everything joined well
/// within the deadline, nothing left over. Returns what it joined.
fn stop_and_check(c: &mut Cluster, n: usize) -> usize {
    let t0 = Instant::now();
    c.signal(n, libc::SIGTERM);
    let took = t0.elapsed();
    let log = c.log_text(n);
    assert!(
        !log.contains("still running") && !log.contains("threads left running"),
        "node{n} left something running:\n{log}"
    );
    let Some((ended, ms)) = joined(&log) else {
        panic!("node{n} did not report its join:\n{log}");
    };
    eprintln!(
        "node{n}: {ended} threads and tasks joined in {ms} ms, stopped in {} ms",
        took.as_millis()
    );
    assert!(ms < 2_000, "node{n} took {ms} ms to join:\n{log}");
    assert!(
        took < Duration::from_secs(20),
        "node{n} took {took:?} to stop"
    );
    ended
}

/// Both nodes serve in turn and are stopped with everything running.
fn run(net: &Net, opts: &Options) {
    let mut c = Cluster::build_opts(Some(net), opts);
    c.start_both(30);
    c.wait_app_writes(1);
    // A verify runs too (its session is one more task to join); the
    // application is held still meanwhile, as a file written throughout a
    // verify may be read at different moments on the two nodes.
    std::fs::write(c.path("hold"), b"").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let o = c.tandem(1, &["verify", "app"]);
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    std::fs::remove_file(c.path("hold")).unwrap();
    // The serving node hands over on its stop; the other serves and is
    // stopped in turn, alone.
    let first = stop_and_check(&mut c, 1);
    assert!(
        wait_until(20, || matches!(c.state(2).as_str(), "PRIM" | "ALONE")),
        "node2 did not take over:\n{}",
        c.log_text(2)
    );
    c.wait_app_writes(2);
    let second = stop_and_check(&mut c, 2);
    // Heartbeats, checkers, the quorum's client and the servers at least.
    assert!(first >= 6 && second >= 6, "{first} and {second} joined");
}

#[test]
fn every_thread_and_task_ends_after_a_stop_with_a_witness_and_virtual_addresses() {
    let net = Net::lan();
    let failover = "vip = [\"10.80.0.100/24\"]\nvip_announce = 2\nvip_refresh_s = 1".to_string();
    run(
        &net,
        &Options {
            quorum: "witness",
            checker: true,
            failover: Some(failover),
            ..Options::default()
        },
    );
}

#[test]
fn every_thread_and_task_ends_after_a_stop_with_etcd_and_health_endpoints() {
    let net = Net::pair();
    run(
        &net,
        &Options {
            quorum: "etcd",
            checker: true,
            app_extra: "lb_tls = true",
            ..Options::default()
        },
    );
}

#[test]
fn every_thread_and_task_ends_after_a_stop_with_ping() {
    let net = Net::pair();
    run(
        &net,
        &Options {
            quorum: "ping",
            checker: true,
            ..Options::default()
        },
    );
}
