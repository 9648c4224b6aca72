//! tandem as a system service: the notify protocol a `Type=notify` unit
//! relies on (spoken to a socket the test binds, as systemd would), the unit
//! file itself, and application scripts that misbehave.

mod common;

use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::{Cluster, Options};
use common::wait_until;

/// What the daemon told the service manager, with when it arrived and
/// whether node1's directory was mounted at that moment.
#[derive(Clone, Debug)]
struct Said {
    at: Instant,
    line: String,
    mounted: bool,
}

/// Binds the notify socket and records every line that arrives on it.
fn listen(path: std::path::PathBuf, dir: std::path::PathBuf) -> Arc<Mutex<Vec<Said>>> {
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let said = Arc::new(Mutex::new(Vec::new()));
    let out = said.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            let Ok(n) = sock.recv(&mut buf) else {
                if Arc::strong_count(&out) == 1 {
                    return;
                }
                continue;
            };
            let at = Instant::now();
            let mounted = common::is_tandem_mount(&dir);
            for line in String::from_utf8_lossy(&buf[..n]).lines() {
                out.lock().unwrap().push(Said {
                    at,
                    line: line.to_string(),
                    mounted,
                });
            }
        }
    });
    said
}

fn lines(said: &Arc<Mutex<Vec<Said>>>, prefix: &str) -> Vec<Said> {
    said.lock()
        .unwrap()
        .iter()
        .filter(|s| s.line.starts_with(prefix))
        .cloned()
        .collect()
}

/// The longest silence between consecutive watchdog pings in `pings`.
fn longest_gap(pings: &[Said]) -> Duration {
    pings
        .windows(2)
        .map(|w| w[1].at.duration_since(w[0].at))
        .max()
        .unwrap_or_default()
}

#[test]
fn the_service_manager_hears_ready_once_mounted_status_watchdog_pings_and_stopping() {
    let mut c = Cluster::new();
    let sock = c.path("notify.sock");
    let dir = c.path("node1/app");
    let said = listen(sock.clone(), dir);
    c.env[0] = vec![
        ("NOTIFY_SOCKET".into(), sock.display().to_string()),
        // Pings every 200 ms expected.
        ("WATCHDOG_USEC".into(), "400000".into()),
    ];
    c.start_both(30);
    assert!(
        wait_until(10, || lines(&said, "READY=1").len() == 1),
        "{:?}",
        said.lock().unwrap()
    );
    let ready = lines(&said, "READY=1");
    assert!(
        ready[0].mounted,
        "READY=1 came before node1's directory was mounted"
    );
    assert!(
        wait_until(5, || lines(&said, "STATUS=")
            .iter()
            .any(|s| s.line == "STATUS=app PRIM")),
        "{:?}",
        lines(&said, "STATUS=")
    );
    // The pings keep coming while the manager runs its loop…
    std::thread::sleep(Duration::from_millis(1500));
    let pings = lines(&said, "WATCHDOG=1");
    assert!(pings.len() >= 4, "{} pings", pings.len());
    // (Generous: other tests load the machine.)
    assert!(
        longest_gap(&pings) < Duration::from_millis(1000),
        "{:?}",
        longest_gap(&pings)
    );
    // …and go on while an application's script runs: scripts run off the
    // manager's loop (a restart whose start script takes 3 s), and the
    // restart answers once it is done.
    std::fs::write(c.path("slow_start"), "3").unwrap();
    let before = Instant::now();
    let o = c.tandem(1, &["restart", "app"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        before.elapsed() >= Duration::from_millis(3000),
        "the restart answered before its start script ended: {:?}",
        before.elapsed()
    );
    std::fs::remove_file(c.path("slow_start")).unwrap();
    let during: Vec<Said> = lines(&said, "WATCHDOG=1")
        .into_iter()
        .filter(|s| s.at >= before)
        .collect();
    assert!(
        during.len() >= 10,
        "{} pings during the restart",
        during.len()
    );
    assert!(
        longest_gap(&during) < Duration::from_millis(1000),
        "the manager's loop stood still while a script ran: longest gap {:?}",
        longest_gap(&during)
    );
    assert_eq!(lines(&said, "READY=1").len(), 1, "READY=1 said twice");
    assert!(lines(&said, "STOPPING=1").is_empty());
    // A clean stop says so first.
    c.signal(1, libc::SIGTERM);
    assert!(wait_until(2, || lines(&said, "STOPPING=1").len() == 1));
    // Node2 took over.
    assert!(wait_until(30, || c.state(2) == "PRIM" || c.state(2) == "ALONE"));
}

#[test]
fn a_daemon_without_its_peer_is_ready_once_it_has_decided_to_wait() {
    let mut c = Cluster::new();
    let sock = c.path("notify.sock");
    let said = listen(sock.clone(), c.path("node1/app"));
    c.env[0] = vec![("NOTIFY_SOCKET".into(), sock.display().to_string())];
    let started = Instant::now();
    c.start(1);
    // Alone and never started before, its copy may be stale: it waits for
    // its peer, and says it is ready once that is decided (the boot wait
    // and a heartbeat timeout, 500 ms each), not mounted.
    assert!(wait_until(10, || !lines(&said, "READY=1").is_empty()));
    let ready = lines(&said, "READY=1")[0].clone();
    assert!(ready.at.duration_since(started) >= Duration::from_millis(900));
    assert!(!ready.mounted);
    assert_eq!(c.state(1), "WAIT");
    assert!(
        lines(&said, "STATUS=")
            .iter()
            .any(|s| s.line == "STATUS=app WAIT")
    );
    // The peer comes: node1 serves, and says so.
    c.start(2);
    c.wait_states("PRIM", "SECOND", 30);
    assert!(wait_until(5, || lines(&said, "STATUS=")
        .last()
        .is_some_and(|s| s.line == "STATUS=app PRIM")));
    assert_eq!(lines(&said, "READY=1").len(), 1);
    // Without WATCHDOG_USEC there are no pings.
    assert!(lines(&said, "WATCHDOG=1").is_empty());
}

#[test]
fn the_unit_file_passes_systemd_analyze_verify() {
    let t = common::tempdir();
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/systemd/tandem.service"),
    )
    .unwrap();
    for key in [
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=",
        "KillMode=mixed",
        "Restart=on-failure",
    ] {
        assert!(unit.contains(key), "the unit lacks {key}");
    }
    let path = t.path().join("tandem.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/tandem", common::tandem_bin()),
    )
    .unwrap();
    let o = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian's systemd) is installed");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        !err.contains("tandem.service"),
        "systemd-analyze has remarks: {err}"
    );
}

#[test]
fn a_start_script_that_hangs_is_killed_and_the_module_moves_to_the_other_node() {
    let mut c = Cluster::build_opts(
        None,
        &Options {
            quorum: "none",
            script_timeout_s: 2,
            ..Options::default()
        },
    );
    c.start_both(30);
    c.wait_app_writes(1);
    // From now on node1's start hangs. A restart there is killed after 2 s
    // (twice: one retry), nothing of the module is left serving there, and
    // node2, up to date, takes over.
    std::fs::write(c.path("side1/hang"), "").unwrap();
    let starts = c.events().matches("start node1").count();
    let o = c.tandem(1, &["restart", "app"]);
    assert!(!o.status.success(), "a restart that hung was reported done");
    assert!(
        wait_until(30, || c.state(2) == "PRIM" || c.state(2) == "ALONE"),
        "node2 did not take over: {}/{}\n{}",
        c.state(1),
        c.state(2),
        c.log_text(1)
    );
    c.wait_app_writes(2);
    let log = String::from_utf8_lossy(&c.tandem(1, &["log", "app"]).stdout).into_owned();
    assert!(log.contains("killed after its timeout of 2 s"), "{log}");
    assert!(!c.state(1).is_empty() && c.state(1) != "PRIM" && c.state(1) != "ALONE");
    assert!(
        !common::is_tandem_mount(&c.path("node1/app")),
        "node1 kept its mount after a failed start"
    );
    assert_eq!(
        common::cluster::http_status(c.lb_port(1), "/primary/app"),
        Some(503)
    );
    assert_eq!(
        c.events().matches("start node1").count(),
        starts,
        "a start of node1 was counted: {}",
        c.events()
    );
    c.assert_never_both();
}
