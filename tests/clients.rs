//! Moving the clients, in network namespaces built by the tests: the virtual
//! address on a LAN (a client probes it continuously and its ARP entry must
//! follow the serving node), and a real HAProxy in front of two nodes in two
//! subnets probing `/primary/{module}`.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::cluster::{Cluster, Net, Options, ip, spawn_in_netns};
use common::wait_until;
use parking_lot::Mutex;

const VIP: &str = "10.80.0.100";
const VIP6: &str = "fd80::100";
const SERVICE_PORT: u16 = 8080;

/// One connection to the service: the node that answered, if any.
fn ask(addr: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let name = out.trim().to_string();
    (!name.is_empty()).then_some(name)
}

/// When a probe started, and who answered it.
type Answers = Arc<Mutex<Vec<(Instant, Option<String>)>>>;

/// A client asking `addr` every 10 ms from namespace `ns`.
struct Prober {
    seen: Answers,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Prober {
    fn start(ns: &str, addr: SocketAddr) -> Prober {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        let thread = spawn_in_netns(ns, move || {
            while !st.load(Ordering::Relaxed) {
                let t = Instant::now();
                let who = ask(addr);
                s.lock().push((t, who));
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Prober {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn answered_by(&self, node: &str, after: Instant) -> bool {
        self.seen
            .lock()
            .iter()
            .any(|(t, w)| *t >= after && w.as_deref() == Some(node))
    }

    fn wait_for(&self, node: &str, after: Instant, secs: u64) -> bool {
        wait_until(secs, || self.answered_by(node, after))
    }

    /// Probes started after `after` that `node` answered.
    fn count(&self, node: &str, after: Instant) -> usize {
        self.seen
            .lock()
            .iter()
            .filter(|(t, w)| *t >= after && w.as_deref() == Some(node))
            .count()
    }

    /// From the last answer of `from` to the first of `to`, after `after`.
    fn outage(&self, from: &str, to: &str, after: Instant) -> Duration {
        let seen = self.seen.lock();
        let last = seen
            .iter()
            .filter(|(t, w)| *t < after && w.as_deref() == Some(from))
            .map(|(t, _)| *t)
            .max()
            .unwrap_or(after);
        let first = seen
            .iter()
            .find(|(t, w)| *t >= after && w.as_deref() == Some(to))
            .map(|(t, _)| *t)
            .expect("the new node answered");
        first.duration_since(last)
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn ip_out(args: &[&str]) -> String {
    let o = std::process::Command::new("ip")
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn holds(ns: &str, addr: &str) -> bool {
    ip_out(&["-n", ns, "-o", "addr", "show"]).contains(&format!(" {addr}/"))
}

fn mac(ns: &str, dev: &str) -> String {
    let out = ip_out(&["-n", ns, "-o", "link", "show", dev]);
    let after = out.split("link/ether ").nth(1).expect("an Ethernet device");
    after.split_whitespace().next().unwrap().to_string()
}

fn neighbour(ns: &str, addr: &str) -> Option<String> {
    let out = ip_out(&["-n", ns, "neigh", "show", addr]);
    out.split("lladdr ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .map(str::to_string)
}

/// Watches which nodes hold the VIP until stopped; returns the moments both did.
fn watch_vip(net: &Net, stop: &AtomicBool) -> Vec<Instant> {
    let mut both = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        if holds(&net.nodes[0], VIP) && holds(&net.nodes[1], VIP) {
            both.push(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    both
}

fn vip_cluster(net: &Net) -> Cluster {
    Cluster::build_opts(
        Some(net),
        &Options {
            quorum: "witness",
            failover: Some(format!(
                "vip = [\"{VIP}/24\", \"{VIP6}/64\"]\nvip_announce = 3\n\
                 vip_announce_interval_ms = 100"
            )),
            service: Some(SERVICE_PORT),
            ..Options::default()
        },
    )
}

/// The pid of the guard the daemon `daemon` started.
fn guard_of(daemon: u32) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
        let ppid: u32 = stat
            .rsplit(')')
            .next()?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        (ppid == daemon && cmd.split(|b| *b == 0).any(|a| a == b"guard")).then_some(pid)
    })
}

#[test]
fn the_vip_follows_the_serving_node_when_its_daemon_is_killed_and_back() {
    let net = Net::lan();
    let mut c = vip_cluster(&net);
    c.start_both(30);
    assert!(
        wait_until(10, || holds(&net.nodes[0], VIP)),
        "{}",
        c.log_text(1)
    );
    assert!(!holds(&net.nodes[1], VIP));
    assert!(holds(&net.nodes[0], VIP6) && !holds(&net.nodes[1], VIP6));
    let client = net.client.clone().unwrap();
    let addr: SocketAddr = format!("{VIP}:{SERVICE_PORT}").parse().unwrap();
    let probe = Prober::start(&client, addr);
    let probe6 = Prober::start(&client, format!("[{VIP6}]:{SERVICE_PORT}").parse().unwrap());
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let watcher = s.spawn(|| watch_vip(&net, &stop));
        let t0 = Instant::now();
        assert!(
            probe.wait_for("node1", t0, 10),
            "the client never reached node1"
        );
        assert!(probe6.wait_for("node1", t0, 10), "nor over IPv6");
        assert_eq!(neighbour(&client, VIP), Some(mac(&net.nodes[0], "eth0")));
        assert_eq!(neighbour(&client, VIP6), Some(mac(&net.nodes[0], "eth0")));

        // kill -9 of the daemon alone: its guard drops the VIP at once (node1
        // stops answering for it) and stops the application; node2 takes over
        // and announces the address.
        c.signal(1, libc::SIGKILL);
        let killed = Instant::now();
        assert!(
            wait_until(5, || !holds(&net.nodes[0], VIP)),
            "the guard left the VIP on node1"
        );
        assert!(probe.wait_for("node2", killed, 20), "{}", c.log_text(2));
        let outage = probe.outage("node1", "node2", killed);
        eprintln!(
            "VIP outage after kill -9 of the daemon: {} ms",
            outage.as_millis()
        );
        assert_eq!(
            probe.count("node1", killed + Duration::from_millis(100)),
            0,
            "node1 answered through the VIP after its daemon was killed"
        );
        assert_eq!(
            neighbour(&client, VIP),
            Some(mac(&net.nodes[1], "eth0")),
            "the client's ARP entry does not point at node2"
        );
        // IPv6: the unsolicited neighbour advertisement moved the entry too.
        assert!(
            probe6.wait_for("node2", killed, 10),
            "IPv6 clients did not follow"
        );
        assert_eq!(
            neighbour(&client, VIP6),
            Some(mac(&net.nodes[1], "eth0")),
            "the client's neighbour entry for {VIP6} does not point at node2"
        );
        assert_eq!(
            probe6.count("node1", killed + Duration::from_millis(100)),
            0
        );

        // Failback as SECOND, then swap: the VIP and the client come back.
        c.clean_after_killed(1);
        c.start(1);
        c.wait_states("SECOND", "PRIM", 30);
        let o = c.tandem(1, &["swap", "app"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let swapped = Instant::now();
        c.wait_states("PRIM", "SECOND", 30);
        assert!(probe.wait_for("node1", swapped, 20));
        assert!(holds(&net.nodes[0], VIP) && !holds(&net.nodes[1], VIP));
        assert_eq!(neighbour(&client, VIP), Some(mac(&net.nodes[0], "eth0")));
        let settled = Instant::now() + Duration::from_millis(200);
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(
            probe.count("node2", settled),
            0,
            "node2 answers after the swap"
        );

        stop.store(true, Ordering::Relaxed);
        let both = watcher.join().unwrap();
        assert!(
            both.is_empty(),
            "both nodes held the VIP {} times",
            both.len()
        );
    });
    let st = c.status(1).unwrap();
    let clients = st["modules"][0]["cluster"]["clients"].as_str().unwrap();
    assert!(
        clients.contains(&format!("holding {VIP}/24 on eth0")),
        "{clients}"
    );
    c.assert_never_both();
}

#[test]
fn the_vip_moves_when_the_whole_primary_is_lost() {
    let net = Net::lan();
    let mut c = vip_cluster(&net);
    c.start_both(30);
    assert!(wait_until(10, || holds(&net.nodes[0], VIP)));
    let client = net.client.clone().unwrap();
    let addr: SocketAddr = format!("{VIP}:{SERVICE_PORT}").parse().unwrap();
    let probe = Prober::start(&client, addr);
    assert!(probe.wait_for("node1", Instant::now(), 10));
    // The whole node is lost: its link goes, then every process on it (the
    // guard too, so nothing cleans up there).
    let daemon = c.daemons[0].as_ref().unwrap().id();
    let guard = guard_of(daemon).expect("the daemon's guard runs");
    net.set(1, "eth0", false);
    let lost = Instant::now();
    // SAFETY: kill takes no pointer; `guard` is the daemon's guard, found running just above.
    unsafe { libc::kill(guard, libc::SIGKILL) };
    c.signal(1, libc::SIGKILL);
    c.clean_after_killed(1);
    assert!(probe.wait_for("node2", lost, 20), "{}", c.log_text(2));
    let outage = probe.outage("node1", "node2", lost);
    eprintln!(
        "VIP outage after losing the whole node: {} ms",
        outage.as_millis()
    );
    assert_eq!(neighbour(&client, VIP), Some(mac(&net.nodes[1], "eth0")));
    // node1 "reboots": its address list is fresh, then the link returns.
    ip(&[
        "-n",
        &net.nodes[0],
        "addr",
        "del",
        &format!("{VIP}/24"),
        "dev",
        "eth0",
    ]);
    net.set(1, "eth0", true);
    c.start(1);
    c.wait_states("SECOND", "PRIM", 30);
    assert!(!holds(&net.nodes[0], VIP) && holds(&net.nodes[1], VIP));
    let back = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(probe.count("node1", back), 0);
    assert!(probe.answered_by("node2", back));
}

#[test]
fn an_isolated_primary_drops_the_vip_before_its_twin_takes_it() {
    let net = Net::lan();
    let mut c = vip_cluster(&net);
    c.start_both(30);
    assert!(wait_until(10, || holds(&net.nodes[0], VIP)));
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let watcher = s.spawn(|| watch_vip(&net, &stop));
        // node1 loses the LAN: no peer, no witness. It stops serving and
        // gives the VIP back; node2 gets the lease once it ran out.
        net.set(1, "eth0", false);
        c.wait_states("WAIT", "ALONE", 20);
        assert!(wait_until(5, || holds(&net.nodes[1], VIP)));
        assert!(!holds(&net.nodes[0], VIP));
        net.set(1, "eth0", true);
        c.wait_states("SECOND", "PRIM", 30);
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        let both = watcher.join().unwrap();
        assert!(
            both.is_empty(),
            "both nodes held the VIP {} times",
            both.len()
        );
    });
    c.assert_never_both();
}

/// HAProxy in namespace `ns`, configured from `cloud/haproxy/haproxy.cfg`
/// with the nodes' addresses, and a stats socket to read its view.
struct Haproxy {
    child: std::process::Child,
    socket: std::path::PathBuf,
}

impl Haproxy {
    fn start(ns: &str, dir: &std::path::Path, nodes: &[String; 2]) -> Haproxy {
        let template = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("cloud/haproxy/haproxy.cfg"),
        )
        .unwrap();
        let socket = dir.join("haproxy.sock");
        let cfg = template
            .replace("10.0.1.10", &nodes[0])
            .replace("10.0.2.10", &nodes[1])
            .replace(
                "global\n",
                &format!(
                    "global\n    stats socket {} level admin\n",
                    socket.display()
                ),
            );
        assert!(cfg.contains(&nodes[1]) && cfg.contains("stats socket"));
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, cfg).unwrap();
        let child = Net::exec(ns, "haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("haproxy.log")).unwrap())
            .spawn()
            .expect("haproxy (Debian's haproxy) must be installed: run scripts/install-deps.sh");
        let h = Haproxy { child, socket };
        assert!(
            wait_until(10, || h.servers().is_some()),
            "haproxy did not start"
        );
        h
    }

    /// The state HAProxy gives node1 and node2 ("UP", "DOWN", …).
    fn servers(&self) -> Option<(String, String)> {
        let mut s = std::os::unix::net::UnixStream::connect(&self.socket).ok()?;
        s.write_all(b"show stat\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let status = |name: &str| {
            out.lines()
                .map(|l| l.split(',').collect::<Vec<_>>())
                .find(|f| f.len() > 17 && f[0] == "tandem_app" && f[1] == name)
                .map(|f| f[17].to_string())
        };
        Some((status("node1")?, status("node2")?))
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls HAProxy until stopped: the longest stretch it held both nodes up.
fn watch_haproxy(h: &Haproxy, stop: &AtomicBool) -> Duration {
    let (mut since, mut longest) = (None::<Instant>, Duration::ZERO);
    while !stop.load(Ordering::Relaxed) {
        let both = h
            .servers()
            .is_some_and(|(a, b)| a.starts_with("UP") && b.starts_with("UP"));
        match (both, since) {
            (true, None) => since = Some(Instant::now()),
            (false, Some(t)) => {
                longest = longest.max(t.elapsed());
                since = None;
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Some(t) = since {
        longest = longest.max(t.elapsed());
    }
    longest
}

fn lb_cluster(net: &Net) -> Cluster {
    Cluster::build_opts(
        Some(net),
        &Options {
            quorum: "witness",
            // The default health port, as cloud/haproxy/haproxy.cfg probes it.
            failover: Some("failover = \"lb\"".into()),
            service: Some(SERVICE_PORT),
            ..Options::default()
        },
    )
}

#[test]
fn through_haproxy_clients_land_on_the_serving_node_across_kill_failback_and_swap() {
    let net = Net::routed();
    let mut c = lb_cluster(&net);
    let lb_ns = net.client.clone().unwrap();
    let h = Haproxy::start(&lb_ns, c.tmp.path(), &net.addr);
    c.start_both(30);
    let probe = Prober::start(&lb_ns, "127.0.0.1:80".parse().unwrap());
    assert!(
        probe.wait_for("node1", Instant::now(), 15),
        "{:?}",
        h.servers()
    );
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let watcher = s.spawn(|| watch_haproxy(&h, &stop));
        c.signal(1, libc::SIGKILL);
        let killed = Instant::now();
        assert!(probe.wait_for("node2", killed, 20), "{}", c.log_text(2));
        eprintln!(
            "through HAProxy: outage after kill -9 {} ms",
            probe.outage("node1", "node2", killed).as_millis()
        );
        assert_eq!(probe.count("node1", killed + Duration::from_millis(100)), 0);

        c.clean_after_killed(1);
        c.start(1);
        c.wait_states("SECOND", "PRIM", 30);
        let o = c.tandem(1, &["swap", "app"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let swapped = Instant::now();
        c.wait_states("PRIM", "SECOND", 30);
        assert!(probe.wait_for("node1", swapped, 20));
        std::thread::sleep(Duration::from_millis(1500));
        let settled = Instant::now();
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(
            probe.count("node2", settled),
            0,
            "clients still reach node2"
        );
        assert!(probe.answered_by("node1", settled));

        stop.store(true, Ordering::Relaxed);
        let both = watcher.join().unwrap();
        eprintln!(
            "HAProxy held both nodes up for at most {} ms",
            both.as_millis()
        );
        assert!(
            both <= Duration::from_millis(600),
            "HAProxy held both nodes up for {} ms",
            both.as_millis()
        );
    });
    c.assert_never_both();
}

/// From the load balancer's namespace: which nodes answer 200 on
/// `/primary/app` now.
fn primaries(addrs: &[String; 2]) -> [bool; 2] {
    let get = |a: &str| {
        let Ok(mut s) = TcpStream::connect_timeout(
            &format!("{a}:9453").parse().unwrap(),
            Duration::from_millis(200),
        ) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        if s.write_all(b"GET /primary/app HTTP/1.1\r\nHost: x\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.starts_with("HTTP/1.1 200")
    };
    [get(&addrs[0]), get(&addrs[1])]
}

#[test]
fn with_a_witness_a_cut_never_makes_both_nodes_answer_200() {
    let net = Net::routed();
    let mut c = lb_cluster(&net);
    c.start_both(30);
    // A primary cut off before it holds the lease (the witness grants none
    // for a term after it starts) stops serving, as it must: the cut below
    // is of a primary that holds it.
    c.wait_lease(1);
    let router = net.names[4].clone();
    let lb_ns = net.client.clone().unwrap();
    let addrs = net.addr.clone();
    assert!(
        spawn_in_netns(&lb_ns, move || wait_until(10, || primaries(&addrs)
            == [true, false]))
        .join()
        .unwrap()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (stop, addrs) = (stop.clone(), net.addr.clone());
        spawn_in_netns(&lb_ns, move || {
            let (mut both, mut polls) = (0, 0);
            while !stop.load(Ordering::Relaxed) {
                if primaries(&addrs) == [true, true] {
                    both += 1;
                }
                polls += 1;
            }
            (both, polls)
        })
    };
    let rule = |add: bool, from: &str, to: &str| {
        ip(&[
            "-n",
            &router,
            "rule",
            if add { "add" } else { "del" },
            "from",
            from,
            "to",
            to,
            "blackhole",
        ]);
    };
    // The nodes lose each other; both still reach the witness and the load
    // balancer: node1 keeps its lease and serves, node2 does not.
    rule(true, "10.81.1.0/24", "10.81.2.0/24");
    rule(true, "10.81.2.0/24", "10.81.1.0/24");
    c.wait_states("ALONE", "WAIT", 20);
    std::thread::sleep(Duration::from_secs(1));
    // node1 loses the witness too: it stops; node2 gets the lease.
    rule(true, "10.81.1.0/24", "10.81.5.0/24");
    c.wait_states("WAIT", "ALONE", 20);
    std::thread::sleep(Duration::from_secs(1));
    rule(false, "10.81.1.0/24", "10.81.5.0/24");
    rule(false, "10.81.1.0/24", "10.81.2.0/24");
    rule(false, "10.81.2.0/24", "10.81.1.0/24");
    c.wait_states("SECOND", "PRIM", 30);
    stop.store(true, Ordering::Relaxed);
    let (both, polls) = watcher.join().unwrap();
    assert!(polls > 20, "the watcher polled {polls} times");
    assert_eq!(
        both, 0,
        "both nodes answered 200 in {both} of {polls} polls"
    );
    c.assert_never_both();
}
