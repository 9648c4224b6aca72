//! Two cluster daemons on loopback deciding by themselves who serves: a
//! small application (fsync'd numbered records in the replicated directory)
//! is started, failed over when its primary is killed, failed back, swapped,
//! and handed over on a clean stop — and never loses an acknowledged record.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{tandem_bin, tempdir, wait_until};

struct Cluster {
    tmp: tempfile::TempDir,
    daemons: [Option<Child>; 2],
    /// With a witness in network namespaces: the namespace of each node.
    netns: Option<[String; 2]>,
    witness: Option<Child>,
}

/// Three network namespaces made for one test (and removed after it): node1
/// and node2 joined by one link (10.77.0.1, .2), each joined to the witness
/// by a link of its own (10.78.1.1–.3, 10.78.2.2–.3), so the link between the
/// nodes can be cut while both still reach the witness, or a node isolated.
struct Net {
    names: [String; 3],
}

fn ip(args: &[&str]) {
    let o = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2) is installed");
    assert!(
        o.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

impl Net {
    fn new() -> Net {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let k = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = std::process::id();
        let names = ["n1", "n2", "w"].map(|n| format!("tdm{id}x{k}{n}"));
        let net = Net { names };
        for n in &net.names {
            ip(&["netns", "add", n]);
            ip(&["-n", n, "link", "set", "lo", "up"]);
        }
        let [a, b, w] = &net.names;
        let link = |x: &str, xi: &str, xa: &str, y: &str, yi: &str, ya: &str| {
            ip(&[
                "-n", x, "link", "add", xi, "type", "veth", "peer", "name", yi, "netns", y,
            ]);
            ip(&["-n", x, "addr", "add", xa, "dev", xi]);
            ip(&["-n", y, "addr", "add", ya, "dev", yi]);
            ip(&["-n", x, "link", "set", xi, "up"]);
            ip(&["-n", y, "link", "set", yi, "up"]);
        };
        link(a, "peer", "10.77.0.1/24", b, "peer", "10.77.0.2/24");
        link(a, "wit", "10.78.1.1/24", w, "n1", "10.78.1.3/24");
        link(b, "wit", "10.78.2.2/24", w, "n2", "10.78.2.3/24");
        net
    }

    /// Takes a link of node `n` ("peer" or "wit") down or up.
    fn set(&self, n: usize, link: &str, up: bool) {
        ip(&[
            "-n",
            &self.names[n - 1],
            "link",
            "set",
            link,
            if up { "up" } else { "down" },
        ]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

/// Free UDP and TCP ports on both loopback addresses.
fn free_ports() -> (u16, u16) {
    let free = |udp: bool| loop {
        let port = std::net::TcpListener::bind("127.0.0.2:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let ok = if udp {
            std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
                && std::net::UdpSocket::bind(("127.0.0.2", port)).is_ok()
        } else {
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
        };
        if ok {
            return port;
        }
    };
    (free(true), free(false))
}

const APP: &str = r#"#!/bin/sh
# The test application: numbered records, each appended and fsync'd, and the
# last acknowledged number written outside the replicated directory.
f="$TANDEM_DIRS/records"
n=$(wc -l < "$f" 2>/dev/null || echo 0)
while :; do
  n=$((n+1))
  echo "$n" | dd of="$f" oflag=append conv=notrunc,fsync status=none || exit 1
  echo "$n" > "$APP_SIDE/acked.tmp" && mv "$APP_SIDE/acked.tmp" "$APP_SIDE/acked"
done
"#;

const START: &str = r#"#!/bin/sh
echo "start $TANDEM_NODE" >> "$APP_SIDE/../events"
setsid "$APP_BIN" > /dev/null 2>&1 < /dev/null &
echo $! > "$APP_SIDE/app.pid"
"#;

const STOP: &str = r#"#!/bin/sh
echo "stop $TANDEM_NODE" >> "$APP_SIDE/../events"
pid=$(cat "$APP_SIDE/app.pid" 2>/dev/null) || exit 0
kill -TERM "-$pid" 2>/dev/null
# Until every process of its session is gone (zombies excepted).
while ps -o stat= -s "$pid" 2>/dev/null | grep -qv '^Z'; do sleep 0.01; done
rm -f "$APP_SIDE/app.pid"
"#;

fn script(path: &Path, body: &str) {
    std::fs::write(path, body).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

impl Cluster {
    fn new() -> Cluster {
        Cluster::build(None)
    }

    fn build(net: Option<&Net>) -> Cluster {
        Cluster::build_with(net, false)
    }

    fn build_with(net: Option<&Net>, checker: bool) -> Cluster {
        Cluster::build_full(net, "witness", checker)
    }

    fn build_full(net: Option<&Net>, kind: &str, checker: bool) -> Cluster {
        Cluster::build_extra(net, kind, checker, "", "")
    }

    /// In `net`, the quorum is `witness`, `etcd` (a real etcd in the witness
    /// namespace) or `ping` (each node pings the witness namespace's address
    /// on its own link). `checker`: a process
    /// check of the application's pid file, one local restart per minute.
    /// `app_extra`: more settings of the `app` module; `tail`: more modules
    /// (`{t}` and `{n}` stand for the test's directory and the node number).
    fn build_extra(
        net: Option<&Net>,
        kind: &str,
        checker: bool,
        app_extra: &str,
        tail: &str,
    ) -> Cluster {
        common::require_fuse();
        let tmp = tempdir();
        let t = tmp.path();
        let (hb, rep) = free_ports();
        // The health endpoints listen on every address: one port per node.
        let lb = [free_ports().1, free_ports().1];
        let (addr, quorum) = match net {
            None => (
                ["127.0.0.1", "127.0.0.2"],
                [
                    String::from("quorum = \"none\""),
                    "quorum = \"none\"".into(),
                ],
            ),
            Some(_) => (
                ["10.77.0.1", "10.77.0.2"],
                [1, 2].map(|n| match kind {
                    "ping" => format!("quorum = \"ping\"\nping = [\"10.78.{n}.3\"]"),
                    "etcd" => format!("quorum = \"etcd\"\netcd = [\"http://10.78.{n}.3:2379\"]"),
                    "none" => "quorum = \"none\"".into(),
                    _ => format!("quorum = \"witness\"\nwitness = \"10.78.{n}.3:17900\""),
                }),
            ),
        };
        script(&t.join("app.sh"), APP);
        script(&t.join("start.sh"), START);
        script(&t.join("stop.sh"), STOP);
        for n in 1..=2 {
            std::fs::create_dir_all(t.join(format!("node{n}/app"))).unwrap();
            std::fs::create_dir_all(t.join(format!("node{n}/db"))).unwrap();
            std::fs::create_dir_all(t.join(format!("side{n}"))).unwrap();
            std::fs::write(
                t.join(format!("n{n}.toml")),
                format!(
                    r#"
[cluster]
name = "ct"
{quorum}
[[node]]
name = "node1"
address = "{a1}"
[[node]]
name = "node2"
address = "{a2}"
[heartbeat]
port = {hb}
interval_ms = 100
timeout_ms = 500
[replication]
port = {rep}
peer_timeout_ms = 2000
[daemon]
socket = "{t}/n{n}.sock"
state_dir = "{t}/state{n}"
tls_dir = "{t}/tls"
[[module]]
name = "app"
dirs = ["{t}/node{n}/app"]
failover = "lb"
lb_port = {lbp}
{app_extra}
[module.scripts]
start_prim = "{t}/start.sh"
stop_prim = "{t}/stop.sh"
timeout_s = 20
{check}
{tail}"#,
                    t = t.display(),
                    lbp = lb[n - 1],
                    tail = tail
                        .replace("{t}", &t.display().to_string())
                        .replace("{n}", &n.to_string())
                        .replace("{lb}", &lb[n - 1].to_string()),
                    quorum = quorum[n - 1],
                    check = if checker {
                        format!(
                            "[[module.checker]]\nkind = \"process\"\npidfile = \"{}/side{n}/app.pid\"\n\
                             interval_ms = 100\ntimeout_ms = 100\nrestarts = 1\nwindow_s = 60\n",
                            t.display()
                        )
                    } else {
                        String::new()
                    },
                    a1 = addr[0],
                    a2 = addr[1],
                ),
            )
            .unwrap();
        }
        let o = Command::new(tandem_bin())
            .arg("-c")
            .arg(t.join("n1.toml"))
            .arg("init")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let mut c = Cluster {
            tmp,
            daemons: [None, None],
            netns: net.map(|n| [n.names[0].clone(), n.names[1].clone()]),
            witness: None,
        };
        if let Some(net) = net.filter(|_| kind == "etcd") {
            let log = std::fs::File::create(c.path("etcd.log")).unwrap();
            let local = "http://127.0.0.1:2380";
            c.witness = Some(
                Command::new("nsenter")
                    .arg(format!("--net=/run/netns/{}", net.names[2]))
                    .args(["--", "etcd", "--name", "w", "--data-dir"])
                    .arg(c.path("etcd"))
                    .args(["--listen-client-urls", "http://0.0.0.0:2379"])
                    .args(["--advertise-client-urls", "http://10.78.1.3:2379"])
                    .args(["--listen-peer-urls", local])
                    .args(["--initial-advertise-peer-urls", local])
                    .args(["--initial-cluster", &format!("w={local}")])
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .expect("etcd (Debian's etcd-server) is installed"),
            );
        }
        if let Some(net) = net.filter(|_| kind == "witness") {
            let log = std::fs::File::create(c.path("witness.log")).unwrap();
            c.witness = Some(
                Command::new("nsenter")
                    .arg(format!("--net=/run/netns/{}", net.names[2]))
                    .arg("--")
                    .arg(tandem_bin())
                    .arg("-c")
                    .arg(c.config(1))
                    .args(["witness", "--listen", "0.0.0.0:17900"])
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .unwrap(),
            );
        }
        c
    }

    fn path(&self, p: &str) -> PathBuf {
        self.tmp.path().join(p)
    }

    fn config(&self, n: usize) -> PathBuf {
        self.path(&format!("n{n}.toml"))
    }

    fn log_text(&self, n: usize) -> String {
        std::fs::read_to_string(self.path(&format!("daemon{n}.log"))).unwrap_or_default()
    }

    fn start(&mut self, n: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(&format!("daemon{n}.log")))
            .unwrap();
        // In a node's network namespace only: mounts and sockets stay shared.
        let mut cmd = match &self.netns {
            None => Command::new(tandem_bin()),
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{}", ns[n - 1]))
                    .arg("--")
                    .arg(tandem_bin());
                c
            }
        };
        let child = cmd
            .arg("-c")
            .arg(self.config(n))
            .args(["daemon", "--node", &format!("node{n}")])
            .env("APP_SIDE", self.path(&format!("side{n}")))
            .env("APP_BIN", self.path("app.sh"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.daemons[n - 1] = Some(child);
        assert!(
            wait_until(20, || self.status(n).is_some()),
            "daemon {n} did not come up:\n{}",
            self.log_text(n)
        );
    }

    fn signal(&mut self, n: usize, sig: i32) {
        if let Some(mut c) = self.daemons[n - 1].take() {
            unsafe { libc::kill(c.id() as i32, sig) };
            c.wait().unwrap();
        }
    }

    fn tandem(&self, n: usize, args: &[&str]) -> std::process::Output {
        Command::new(tandem_bin())
            .arg("-c")
            .arg(self.config(n))
            .args(args)
            .output()
            .unwrap()
    }

    fn status(&self, n: usize) -> Option<serde_json::Value> {
        let o = self.tandem(n, &["status", "--json"]);
        o.status
            .success()
            .then(|| serde_json::from_slice(&o.stdout).ok())
            .flatten()
    }

    /// The module's state on node `n` ("" while its daemon does not answer).
    fn state(&self, n: usize) -> String {
        self.status(n)
            .and_then(|s| s["modules"][0]["state"].as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// The state of module `m` (by position) on node `n`.
    fn state_of(&self, n: usize, m: usize) -> String {
        self.status(n)
            .and_then(|s| s["modules"][m]["state"].as_str().map(str::to_string))
            .unwrap_or_default()
    }

    fn uptodate(&self, n: usize) -> bool {
        self.status(n)
            .is_some_and(|s| s["modules"][0]["cluster"]["uptodate"] == true)
    }

    fn wait_states(&self, a: &str, b: &str, secs: u64) {
        let ok = wait_until(secs, || {
            self.state(1) == a
                && self.state(2) == b
                && (b != "SECOND" || self.uptodate(2))
                && (a != "SECOND" || self.uptodate(1))
        });
        assert!(
            ok,
            "expected {a}/{b}, got {}/{}\n--- node1\n{}\n--- node2\n{}",
            self.state(1),
            self.state(2),
            self.log_text(1),
            self.log_text(2)
        );
    }

    fn acked(&self, n: usize) -> u64 {
        std::fs::read_to_string(self.path(&format!("side{n}/acked")))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The application runs on node `n`: its acknowledged count grows.
    fn wait_app_writes(&self, n: usize) {
        let start = self.acked(n);
        assert!(
            wait_until(20, || self.acked(n) > start + 5),
            "the application does not write on node {n} (acked {start})\n{}",
            self.log_text(n)
        );
    }

    /// The records in node `n`'s directory: 1, 2, 3, … without a gap.
    fn records(&self, n: usize) -> u64 {
        let text = std::fs::read_to_string(self.path(&format!("node{n}/app/records"))).unwrap();
        let mut count = 0;
        for (i, line) in text.lines().enumerate() {
            assert_eq!(line, (i + 1).to_string(), "record {} on node {n}", i + 1);
            count += 1;
        }
        count
    }

    /// Whatever a failed test left running.
    fn clean_after_killed(&self, n: usize) {
        if let Ok(pid) = std::fs::read_to_string(self.path(&format!("side{n}/app.pid"))) {
            let pid: i32 = pid.trim().parse().unwrap();
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            // Dead from here on (a zombie writes nothing).
            use std::io::Write;
            let mut ev = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(self.path("events"))
                .unwrap();
            writeln!(ev, "stop node{n}").unwrap();
            let _ = std::fs::remove_file(self.path(&format!("side{n}/app.pid")));
        }
        let dir =
            std::ffi::CString::new(format!("{}/node{n}/app", self.tmp.path().display())).unwrap();
        unsafe { libc::umount2(dir.as_ptr(), libc::MNT_DETACH) };
    }

    fn events(&self) -> String {
        std::fs::read_to_string(self.path("events")).unwrap_or_default()
    }

    /// The application never ran on both nodes at once: the scripts log each
    /// start and stop, in order, to one file.
    fn assert_never_both(&self) {
        let mut running: Option<&str> = None;
        let events = self.events();
        for l in events.lines() {
            match l.split_once(' ') {
                Some(("start", n)) => {
                    assert!(
                        running.is_none(),
                        "started on {n} while running on {running:?}:\n{events}\n--- node1\n{}\n--- node2\n{}",
                        self.log_text(1),
                        self.log_text(2)
                    );
                    running = Some(n);
                }
                Some(("stop", n)) => {
                    if running == Some(n) {
                        running = None;
                    }
                }
                _ => panic!("bad event {l}"),
            }
        }
    }

    /// Polls both nodes' states until `stop`, and returns any moment both
    /// said they serve.
    fn watch(&self, stop: &std::sync::atomic::AtomicBool) -> Vec<String> {
        let mut seen = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let (a, b) = (self.state(1), self.state(2));
            let serving = |s: &str| s == "PRIM" || s == "ALONE";
            if serving(&a) && serving(&b) {
                seen.push(format!("{a}/{b}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        seen
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.signal(1, libc::SIGTERM);
        self.signal(2, libc::SIGTERM);
        if let Some(mut w) = self.witness.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        for n in 1..=2 {
            self.clean_after_killed(n);
        }
    }
}

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
    c.start(1);
    c.start(2);
    c.wait_states("PRIM", "SECOND", 30);
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
    c.start(1);
    c.start(2);
    c.wait_states("PRIM", "SECOND", 30);
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

/// The link between the nodes is cut, then the primary isolated, with the
/// quorum (`kind`) in a namespace of its own.
fn partition_never_yields_two_serving_nodes(kind: &str) {
    let net = Net::new();
    let mut c = Cluster::build_full(Some(&net), kind, false);
    c.start(1);
    c.start(2);
    c.wait_states("PRIM", "SECOND", 30);
    c.wait_app_writes(1);
    let holds = |n: usize| {
        c.status(n).is_some_and(|s| {
            s["modules"][0]["cluster"]["quorum"]
                .as_str()
                .is_some_and(|q| q.contains(&format!("held by node{n} (this node)")))
        })
    };
    assert!(
        wait_until(20, || holds(1)),
        "node1 serves without the lease"
    );
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
        assert!(
            wait_until(20, || c.state(1) == "ALONE" && c.state(2) == "WAIT"),
            "expected ALONE/WAIT, got {}/{}\n{}",
            c.state(1),
            c.state(2),
            c.log_text(2)
        );
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
        assert!(
            wait_until(20, || c.state(1) == "WAIT" && c.state(2) == "ALONE"),
            "expected WAIT/ALONE, got {}/{}\n--- node1\n{}\n--- node2\n{}",
            c.state(1),
            c.state(2),
            c.log_text(1),
            c.log_text(2)
        );
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
    c.start(1);
    c.start(2);
    c.wait_states("PRIM", "SECOND", 30);
    c.wait_app_writes(1);
    let kill_app = |c: &Cluster| {
        let pid: i32 = std::fs::read_to_string(c.path("side1/app.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
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
fn with_ping_quorum_an_isolated_primary_stops_and_the_twin_takes_over() {
    let net = Net::new();
    let mut c = Cluster::build_full(Some(&net), "ping", false);
    c.start(1);
    c.start(2);
    c.wait_states("PRIM", "SECOND", 30);
    c.wait_app_writes(1);
    let acked = c.acked(1);
    // node1 loses every link: no peer, and its ping address is gone too.
    net.set(1, "peer", false);
    net.set(1, "wit", false);
    assert!(
        wait_until(20, || c.state(1) == "WAIT" && c.state(2) == "ALONE"),
        "expected WAIT/ALONE, got {}/{}\n--- node1\n{}\n--- node2\n{}",
        c.state(1),
        c.state(2),
        c.log_text(1),
        c.log_text(2)
    );
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
    let net = Net::new();
    let mut c = Cluster::build_full(Some(&net), "none", false);
    c.start(1);
    c.start(2);
    c.wait_states("PRIM", "SECOND", 30);
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
    assert_eq!(kept.lines().last(), Some(lost.to_string().as_str()));
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
