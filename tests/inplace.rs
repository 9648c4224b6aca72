//! In-place upgrades of the serving daemon (`tandem upgrade`): the mounts
//! pass to the new program in the same process while an application keeps
//! writing and reading through descriptors it holds open — no call fails,
//! every acknowledged write is on the peer, the longest stall is printed
//! beside the outage of a swap measured in the same run — and a kill -9 of
//! the new daemon right after a hand-over ends as a normal failover.

mod common;

use std::time::Instant;

use common::cluster::{Cluster, Options, script};
use common::wait_until;

/// The client: one descriptor appending and fsyncing numbered records,
/// another reading each back, a directory descriptor for `stat` — all held
/// open throughout. Each acknowledged record goes to `acks` with when it
/// ended (CLOCK_MONOTONIC) and how long it took; any failed call goes to
/// `errors` and ends the client.
const CLIENT: &str = r#"#!/usr/bin/env python3
import os, sys, time
d, side = sys.argv[1], sys.argv[2]
w = os.open(os.path.join(d, "journal"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
r = os.open(os.path.join(d, "journal"), os.O_RDONLY)
dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
acks = open(os.path.join(side, "journal.acks"), "a")
n, size = 0, 0
try:
    while not os.path.exists(os.path.join(side, "journal.stop")):
        n += 1
        t0 = time.monotonic()
        rec = b"%d\n" % n
        os.write(w, rec)
        os.fsync(w)
        got = os.pread(r, len(rec), size)
        if got != rec:
            raise RuntimeError("read back %r for record %d" % (got, n))
        size += len(rec)
        if os.stat("journal", dir_fd=dfd).st_size != size:
            raise RuntimeError("size after record %d" % n)
        t1 = time.monotonic()
        acks.write("%d %.6f %.6f\n" % (n, t1, t1 - t0))
        acks.flush()
        time.sleep(0.002)
except Exception as e:
    with open(os.path.join(side, "journal.errors"), "a") as f:
        f.write("record %d: %r\n" % (n, e))
"#;

fn monotonic() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec the call fills.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// (record, when it was acknowledged, how long its calls took).
fn acks(c: &Cluster) -> Vec<(u64, f64, f64)> {
    std::fs::read_to_string(c.path("side1/journal.acks"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut it = l.split(' ');
            Some((
                it.next()?.parse().ok()?,
                it.next()?.parse().ok()?,
                it.next()?.parse().ok()?,
            ))
        })
        .collect()
}

/// Two nodes on loopback (or in `net`), heartbeat 200 / 3000 ms as by
/// default, node1 serving, node2 following, the test application writing.
fn cluster(net: Option<&common::cluster::Net>, quorum: &str, peer_timeout_ms: u64) -> Cluster {
    let mut c = Cluster::build_opts(
        net,
        &Options {
            quorum,
            heartbeat: (200, 3000),
            peer_timeout_ms,
            ..Options::default()
        },
    );
    c.start_both(30);
    c.wait_app_writes(1);
    c
}

/// Starts the client in node1's directory and waits until it writes.
fn start_client(c: &Cluster) -> std::process::Child {
    script(&c.path("client.py"), CLIENT);
    let client = std::process::Command::new(c.path("client.py"))
        .arg(c.path("node1/app"))
        .arg(c.path("side1"))
        .spawn()
        .unwrap();
    assert!(
        wait_until(10, || acks(c).len() > 20),
        "the client does not write"
    );
    client
}

/// Checks that the client goes on, stops it, and that none of its calls failed.
fn stop_client(c: &Cluster, mut client: std::process::Child) {
    let n = acks(c).len();
    assert!(
        wait_until(10, || acks(c).len() > n + 20),
        "the client stopped"
    );
    std::fs::write(c.path("side1/journal.stop"), b"").unwrap();
    client.wait().unwrap();
    assert!(
        !c.path("side1/journal.errors").exists(),
        "a call failed: {}",
        std::fs::read_to_string(c.path("side1/journal.errors")).unwrap()
    );
}

/// Kills node1's daemon right after an upgrade: node2 takes over, with
/// every acknowledged write.
fn kill_after_upgrade_fails_over(c: &mut Cluster) {
    let said = c.ok(1, &["upgrade"]);
    assert!(said.contains("upgraded in place"), "{said}");
    c.signal(1, libc::SIGKILL);
    assert!(
        wait_until(30, || matches!(c.state(2).as_str(), "PRIM" | "ALONE")),
        "node2 did not take over\n{}",
        c.log_text(2)
    );
    c.wait_app_writes(2);
    c.assert_acks_kept(2);
    c.assert_never_both();
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[test]
fn twenty_upgrades_in_place_with_a_client_running_then_a_kill_fails_over() {
    let mut c = cluster(None, "none", 2000);
    let pid = c.pid(1);
    // Two program files: each upgrade execs the other one.
    let next = c.path("tandem-next");
    std::fs::copy(common::tandem_bin(), &next).unwrap();
    let programs = [next.clone(), std::path::PathBuf::from(common::tandem_bin())];
    let client = start_client(&c);

    let mut stalls = Vec::new();
    let mut took = Vec::new();
    for i in 0..20 {
        let program = &programs[i % 2];
        let before = acks(&c).len();
        let t0 = monotonic();
        let said = c.ok(
            1,
            &[
                "upgrade",
                "--program",
                program.to_str().unwrap(),
                "--timeout",
                "30",
            ],
        );
        let t1 = monotonic();
        assert!(said.contains("upgraded in place"), "{said}");
        took.push(t1 - t0);
        // The same process: the service manager and the guard see one daemon.
        let st = c.status(1).unwrap();
        assert_eq!(st["nodes"]["daemon"]["pid"], pid, "{st}");
        assert!(st["nodes"]["daemon"]["took_over_from"].is_string(), "{st}");
        assert_eq!(c.state(1), "PRIM", "upgrade {i}\n{}", c.log_text(1));
        // The client went on through the new daemon.
        assert!(
            wait_until(10, || acks(&c).len() > before + 20),
            "upgrade {i}: the client stopped\n{}",
            c.log_text(1)
        );
        let worst = acks(&c)
            .iter()
            .filter(|(_, at, _)| *at >= t0 && *at <= t1 + 1.0)
            .map(|(_, _, d)| *d)
            .fold(0.0, f64::max);
        stalls.push(worst);
        assert!(
            !c.path("side1/journal.errors").exists(),
            "upgrade {i}: {}",
            std::fs::read_to_string(c.path("side1/journal.errors")).unwrap()
        );
    }
    stop_client(&c, client);
    // The peer stayed an up-to-date SECOND throughout: its new link said
    // that the stream goes on.
    let log = c.log_text(1);
    assert!(!log.contains("Prim -> Alone"), "{log}");
    // Every acknowledged record is on the peer already (synchronous).
    let all = acks(&c);
    let peer = std::fs::read_to_string(c.path("node2/app/journal")).unwrap();
    let on_peer: Vec<u64> = peer.lines().map(|l| l.parse().unwrap()).collect();
    for (n, _, _) in &all {
        assert_eq!(
            on_peer.get(*n as usize - 1),
            Some(n),
            "record {n} not on the peer"
        );
    }
    let ms = |s: f64| s * 1000.0;
    let max = stalls.iter().cloned().fold(0.0, f64::max);
    eprintln!(
        "in-place upgrades: 20, client records {}; longest stall per upgrade: median {:.1} ms, \
         max {:.1} ms; `tandem upgrade` took median {:.0} ms",
        all.len(),
        ms(median(stalls.clone())),
        ms(max),
        ms(median(took.clone()))
    );

    // The anchor, in the same run: a swap's outage for the application
    // (from the command until the application writes on the twin).
    let mut outages = Vec::new();
    for (from, to) in [(1, 2), (2, 1)] {
        let before = c.acked(to);
        let t0 = Instant::now();
        c.ok(from, &["swap", "app"]);
        assert!(
            wait_until(30, || c.acked(to) > before),
            "the application does not write on node{to} after the swap"
        );
        outages.push(t0.elapsed().as_secs_f64());
        let (a, b) = if to == 1 {
            ("PRIM", "SECOND")
        } else {
            ("SECOND", "PRIM")
        };
        c.wait_states(a, b, 30);
    }
    eprintln!(
        "swap outage (anchor): median {:.0} ms over {} swaps; in-place upgrade stall / swap \
         outage = {:.3}",
        ms(median(outages.clone())),
        outages.len(),
        median(stalls.clone()) / median(outages)
    );

    // A kill -9 right after a hand-over: a normal failover, nothing lost.
    kill_after_upgrade_fails_over(&mut c);
}

/// A program that is not tandem is refused before anything stops; one that
/// answers as tandem but cannot start gives the sessions back to the
/// previous program. The client never sees an error either way.
#[test]
fn a_bad_program_is_refused_and_one_that_cannot_start_gives_the_sessions_back() {
    let c = cluster(None, "none", 2000);
    let client = start_client(&c);
    let since = |c: &Cluster| c.status(1).unwrap()["nodes"]["daemon"]["since_ms"].clone();
    let before = since(&c);

    let o = c.tandem(1, &["upgrade", "--program", "/bin/true"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("does not answer `tandem handover-check`"),
        "{err}"
    );
    assert_eq!(since(&c), before, "nothing was handed over");

    // Answers the check as tandem, then fails to start (an unknown node).
    let broken = c.path("broken-tandem");
    script(
        &broken,
        &format!(
            "#!/bin/sh\ncase \"$1\" in handover-check) exec {real} handover-check;; esac\n\
             n=$#; while [ $n -gt 0 ]; do a=$1; shift; [ \"$a\" = node1 ] && a=nosuchnode; \
             set -- \"$@\" \"$a\"; n=$((n-1)); done\nexec {real} \"$@\"\n",
            real = common::tandem_bin()
        ),
    );
    let o = c.tandem(1, &["upgrade", "--program", broken.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("took its sessions back") && err.contains("nosuchnode"),
        "{err}\n{}",
        c.log_text(1)
    );
    assert_eq!(c.state(1), "PRIM");
    stop_client(&c, client);
}

/// The SECOND frozen (SIGSTOP, 2 s) as the upgrade starts: the mounts wait
/// for its confirmation no longer than the peer timeout in all, the new
/// daemon serves without waiting for it again, nothing fails, and once it
/// runs on it resynchronises and follows.
#[test]
fn an_upgrade_while_the_second_is_frozen_waits_for_it_no_longer_than_the_peer_timeout() {
    let c = cluster(None, "none", 1000);
    let client = start_client(&c);
    let second = c.pid(2) as i32;
    // SAFETY: kill takes no pointer; `second` is node2's running daemon.
    unsafe { libc::kill(second, libc::SIGSTOP) };
    let thaw = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(2));
        // SAFETY: as above.
        unsafe { libc::kill(second, libc::SIGCONT) };
    });
    let t0 = monotonic();
    let said = c.ok(1, &["upgrade"]);
    assert!(said.contains("upgraded in place"), "{said}");
    thaw.join().unwrap();
    stop_client(&c, client);
    let worst = acks(&c)
        .iter()
        .filter(|(_, at, _)| *at >= t0)
        .map(|(_, _, d)| *d)
        .fold(0.0, f64::max);
    eprintln!(
        "upgrade with the SECOND frozen: longest call {:.0} ms",
        worst * 1000.0
    );
    // The peer timeout (1 s) once, the new program's start, the scheduler.
    assert!(worst < 1.8, "a call waited {worst:.3} s\n{}", c.log_text(1));
    c.wait_states("PRIM", "SECOND", 30);
    assert!(
        wait_until(30, || c.uptodate(2)),
        "node2 did not resync\n{}",
        c.log_text(2)
    );
}

/// With a witness (network namespaces): the new daemon takes the lease over
/// as the same node — five upgrades, one of them with the witness frozen
/// for 2 s — and nothing is fenced; then a kill -9 right after an upgrade
/// moves the module to the twin with nothing lost.
#[test]
fn upgrades_with_a_witness_keep_the_lease_even_with_the_witness_frozen() {
    let net = common::cluster::Net::pair();
    let mut c = cluster(Some(&net), "witness", 2000);
    c.wait_lease(1);
    let client = start_client(&c);
    let witness = c.witness.as_ref().unwrap().id() as i32;
    for i in 0..5 {
        let thaw = (i == 2).then(|| {
            // SAFETY: kill takes no pointer; `witness` is the test's witness.
            unsafe { libc::kill(witness, libc::SIGSTOP) };
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_secs(2));
                // SAFETY: as above.
                unsafe { libc::kill(witness, libc::SIGCONT) };
            })
        });
        let said = c.ok(1, &["upgrade"]);
        assert!(said.contains("upgraded in place"), "{said}");
        if let Some(t) = thaw {
            t.join().unwrap();
        }
        assert_eq!(c.state(1), "PRIM", "upgrade {i}\n{}", c.log_text(1));
        c.wait_lease(1);
    }
    stop_client(&c, client);
    let log = c.log_text(1);
    assert!(!log.contains("fenced"), "{log}");
    kill_after_upgrade_fails_over(&mut c);
}
