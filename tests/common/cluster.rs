//! Two cluster daemons and their application, on loopback or in network
//! namespaces made by the test: the harness of the cluster and client tests.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::nodes::{Nodes, stands_on_nodes};
use super::{free_port, tandem_bin, tandem_with, wait_until};

/// How [`Cluster::build_opts`] sets the cluster up.
pub struct Options<'a> {
    /// `none`, `witness`, `etcd` or `ping` (in namespaces only).
    pub quorum: &'a str,
    /// A process check of the application's pid file, one restart a minute.
    pub checker: bool,
    /// The `app` module's failover lines (`{n}`: the node number); default:
    /// a load balancer's health endpoint on a free port per node.
    pub failover: Option<String>,
    /// More settings of the `app` module.
    pub app_extra: &'a str,
    /// More modules (`{t}`: the test's directory, `{n}`: the node number,
    /// `{lb}`: the node's health port).
    pub tail: &'a str,
    /// Heartbeat interval and timeout in ms.
    pub heartbeat: (u64, u64),
    /// The application's service port (`APP_PORT`).
    pub service: Option<u16>,
    /// A port per node, for `{port}` in `failover`.
    pub ports: Option<[u16; 2]>,
    /// The scripts' `timeout_s`.
    pub script_timeout_s: u64,
    /// Serve the API (on a free port per node, each on its node's address).
    pub api: bool,
    /// `replication.peer_timeout_ms`.
    pub peer_timeout_ms: u64,
    /// More settings of `[cluster]`.
    pub cluster_extra: &'a str,
    /// More settings of `[replication]`.
    pub replication_extra: &'a str,
}

impl Default for Options<'_> {
    fn default() -> Self {
        Options {
            quorum: "witness",
            checker: false,
            failover: None,
            app_extra: "",
            tail: "",
            heartbeat: (100, 500),
            service: None,
            ports: None,
            script_timeout_s: 20,
            api: false,
            peer_timeout_ms: 2000,
            cluster_extra: "",
            replication_extra: "",
        }
    }
}

pub struct Cluster {
    pub nodes: Nodes,
    /// With a witness in network namespaces: the namespace of each node.
    pub netns: Option<[String; 2]>,
    pub witness: Option<Child>,
    /// The port of the application's service (`APP_PORT`), if it runs one.
    pub service: Option<u16>,
    /// More environment for each node's daemon.
    pub env: [Vec<(String, String)>; 2],
    /// With `Options::api`: each node's API port.
    pub api: Option<[u16; 2]>,
}

/// Network namespaces made for one test and removed after it, even when it
/// fails. The nodes are `nodes[0]` and `nodes[1]`; the witness (or etcd)
/// runs in `quorum_ns`, which node `n` reaches at `quorum_addr[n - 1]`.
pub struct Net {
    /// Every namespace made, deleted on drop.
    pub names: Vec<String>,
    pub nodes: [String; 2],
    pub addr: [String; 2],
    pub quorum_ns: String,
    pub quorum_addr: [String; 2],
    /// Where clients run, in the topologies that have one.
    pub client: Option<String>,
}

pub fn ip(args: &[&str]) {
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

/// A veth pair: `xi` in namespace `x` with `xa`, `yi` in `y` with `ya`
/// (either address may be empty), both up.
fn veth(x: &str, xi: &str, xa: &str, y: &str, yi: &str, ya: &str) {
    ip(&[
        "-n", x, "link", "add", xi, "type", "veth", "peer", "name", yi, "netns", y,
    ]);
    for (ns, dev, addr) in [(x, xi, xa), (y, yi, ya)] {
        if !addr.is_empty() {
            ip(&["-n", ns, "addr", "add", addr, "dev", dev]);
        }
        ip(&["-n", ns, "link", "set", dev, "up"]);
    }
}

impl Net {
    /// Namespaces named after this process and `tags`, loopback up.
    pub fn make(tags: &[&str]) -> Vec<String> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let k = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = std::process::id();
        tags.iter()
            .map(|t| {
                let n = format!("tdm{id}x{k}{t}");
                ip(&["netns", "add", &n]);
                ip(&["-n", &n, "link", "set", "lo", "up"]);
                n
            })
            .collect()
    }

    /// node1 and node2 joined by one link (10.77.0.1, .2), each joined to
    /// the witness by a link of its own (10.78.1.1–.3, 10.78.2.2–.3), so the
    /// link between the nodes can be cut while both still reach the witness,
    /// or a node isolated ("peer" and "wit" links).
    pub fn pair() -> Net {
        let names = Net::make(&["n1", "n2", "w"]);
        let (a, b, w) = (&names[0], &names[1], &names[2]);
        veth(a, "peer", "10.77.0.1/24", b, "peer", "10.77.0.2/24");
        veth(a, "wit", "10.78.1.1/24", w, "n1", "10.78.1.3/24");
        veth(b, "wit", "10.78.2.2/24", w, "n2", "10.78.2.3/24");
        Net {
            nodes: [a.clone(), b.clone()],
            addr: ["10.77.0.1".into(), "10.77.0.2".into()],
            quorum_ns: w.clone(),
            quorum_addr: ["10.78.1.3".into(), "10.78.2.3".into()],
            client: None,
            names,
        }
    }

    /// One LAN: node1 (10.80.0.1, fd80::1), node2 (.2), the witness (.3) and
    /// a client (.9) on a bridge that lives in a namespace of its own; each has
    /// an "eth0". A node's "eth0" down is that node lost to the network.
    pub fn lan() -> Net {
        let names = Net::make(&["n1", "n2", "w", "cl", "sw"]);
        let sw = &names[4];
        ip(&["-n", sw, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", sw, "link", "set", "br0", "up"]);
        for (i, last) in [(0, 1), (1, 2), (2, 3), (3, 9)] {
            let port = format!("p{i}");
            veth(
                &names[i],
                "eth0",
                &format!("10.80.0.{last}/24"),
                sw,
                &port,
                "",
            );
            ip(&["-n", sw, "link", "set", &port, "master", "br0"]);
            let v6 = format!("fd80::{last}/64");
            ip(&["-n", &names[i], "addr", "add", &v6, "dev", "eth0", "nodad"]);
        }
        Net {
            nodes: [names[0].clone(), names[1].clone()],
            addr: ["10.80.0.1".into(), "10.80.0.2".into()],
            quorum_ns: names[2].clone(),
            quorum_addr: ["10.80.0.3".into(), "10.80.0.3".into()],
            client: Some(names[3].clone()),
            names,
        }
    }

    /// Two subnets joined by a router: node1 10.81.1.1/24, node2
    /// 10.81.2.1/24, a load balancer's namespace 10.81.3.1/24 (its clients
    /// run there too), the witness 10.81.5.1/24; each reaches the others
    /// through the router (.254 of each subnet) on its "eth0".
    pub fn routed() -> Net {
        let names = Net::make(&["n1", "n2", "lb", "w", "r"]);
        let r = &names[4];
        for (i, subnet) in [(0, 1), (1, 2), (2, 3), (3, 5)] {
            veth(
                &names[i],
                "eth0",
                &format!("10.81.{subnet}.1/24"),
                r,
                &format!("s{subnet}"),
                &format!("10.81.{subnet}.254/24"),
            );
            ip(&[
                "-n",
                &names[i],
                "route",
                "add",
                "default",
                "via",
                &format!("10.81.{subnet}.254"),
            ]);
        }
        let o = Command::new("ip")
            .args(["netns", "exec", r, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        Net {
            nodes: [names[0].clone(), names[1].clone()],
            addr: ["10.81.1.1".into(), "10.81.2.1".into()],
            quorum_ns: names[3].clone(),
            quorum_addr: ["10.81.5.1".into(), "10.81.5.1".into()],
            client: Some(names[2].clone()),
            names,
        }
    }

    /// Takes a link of node `n` down or up.
    pub fn set(&self, n: usize, link: &str, up: bool) {
        ip(&[
            "-n",
            &self.nodes[n - 1],
            "link",
            "set",
            link,
            if up { "up" } else { "down" },
        ]);
    }

    /// A command run in namespace `ns`.
    pub fn exec(ns: &str, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{ns}"))
            .arg("--")
            .arg(program);
        c
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

/// Moves the calling thread into network namespace `ns`.
fn enter_netns(ns: &str) {
    use std::os::fd::AsRawFd;
    let fd = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
    // SAFETY: setns takes no pointer; `fd` keeps the namespace file open
    // across the call, and only the calling thread enters the namespace.
    assert_eq!(
        unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) },
        0,
        "setns {ns}"
    );
}

/// Runs `f` on a thread inside network namespace `ns`.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter_netns(ns);
            f()
        })
        .join()
        .unwrap()
    })
}

/// Runs `f` on a thread of its own inside network namespace `ns`.
pub fn spawn_in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter_netns(&ns);
        f()
    })
}

/// The status of `GET path` on 127.0.0.1:`port` (None: no answer within 500 ms).
pub fn http_status(port: u16, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: probe\r\n\r\n").ok()?;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_whitespace().nth(1)?.parse().ok()
}

pub const APP: &str = r#"#!/bin/sh
# The test application: numbered records tagged with the node that wrote
# them, each appended and fsync'd; outside the replicated directory, the
# last acknowledged number and every acknowledgement.
f="$TANDEM_DIRS/records"
n=$(wc -l < "$f" 2>/dev/null || echo 0)
while :; do
  # Held by the test (to compare the trees at rest).
  while [ -f "$APP_SIDE/../hold" ]; do sleep 0.05; done
  n=$((n+1))
  echo "$n $TANDEM_NODE" | dd of="$f" oflag=append conv=notrunc,fsync status=none || exit 1
  echo "$n" >> "$APP_SIDE/acks"
  echo "$n" > "$APP_SIDE/acked.tmp" && mv "$APP_SIDE/acked.tmp" "$APP_SIDE/acked"
done
"#;

/// Starts the application and, with `APP_PORT`, its service, in one
/// session (stopped together).
/// A `hang` file beside the node's files makes it hang (a start that never
/// returns); a `slow_start` file above them holds seconds to take first.
pub const START: &str = r#"#!/bin/sh
[ -f "$APP_SIDE/hang" ] && sleep 3600
[ -f "$APP_SIDE/../slow_start" ] && sleep "$(cat "$APP_SIDE/../slow_start")"
echo "start $TANDEM_NODE" >> "$APP_SIDE/../events"
setsid sh -c '"$APP_BIN" & if [ -n "$APP_PORT" ]; then python3 "$APP_SERVICE" & fi; wait' \
  > /dev/null 2>&1 < /dev/null &
echo $! > "$APP_SIDE/app.pid"
"#;

/// The application's network service: answers every connection on
/// `APP_PORT` with the node's name.
pub const SERVICE: &str = r#"#!/usr/bin/env python3
import os, socket
s = socket.socket(socket.AF_INET6 if socket.has_ipv6 else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", int(os.environ["APP_PORT"])))
except OSError:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(os.environ["APP_PORT"])))
s.listen(64)
name = (os.environ["TANDEM_NODE"] + "\n").encode()
while True:
    c, _ = s.accept()
    try:
        c.sendall(name)
    finally:
        c.close()
"#;

pub const STOP: &str = r#"#!/bin/sh
echo "stop $TANDEM_NODE" >> "$APP_SIDE/../events"
pid=$(cat "$APP_SIDE/app.pid" 2>/dev/null) || exit 0
kill -TERM "-$pid" 2>/dev/null
# Until every process of its session is gone (zombies excepted).
while ps -o stat= -s "$pid" 2>/dev/null | grep -qv '^Z'; do sleep 0.01; done
rm -f "$APP_SIDE/app.pid"
"#;

pub fn script(path: &Path, body: &str) {
    std::fs::write(path, body).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

stands_on_nodes!(Cluster);

impl Cluster {
    pub fn new() -> Cluster {
        Cluster::build(None)
    }

    pub fn build(net: Option<&Net>) -> Cluster {
        Cluster::build_with(net, false)
    }

    pub fn build_with(net: Option<&Net>, checker: bool) -> Cluster {
        Cluster::build_full(net, "witness", checker)
    }

    pub fn build_full(net: Option<&Net>, kind: &str, checker: bool) -> Cluster {
        Cluster::build_extra(net, kind, checker, "", "")
    }

    pub fn build_extra(
        net: Option<&Net>,
        kind: &str,
        checker: bool,
        app_extra: &str,
        tail: &str,
    ) -> Cluster {
        Cluster::build_opts(
            net,
            &Options {
                quorum: kind,
                checker,
                app_extra,
                tail,
                ..Options::default()
            },
        )
    }

    /// In `net`, the quorum is `witness`, `etcd` (a real etcd in the quorum
    /// namespace), `ping` (each node pings the quorum namespace's address)
    /// or `none`; on loopback it is `none`.
    pub fn build_opts(net: Option<&Net>, opts: &Options) -> Cluster {
        let (kind, checker, app_extra, tail) =
            (opts.quorum, opts.checker, opts.app_extra, opts.tail);
        super::require_fuse();
        let nodes = Nodes::new();
        let t = nodes.tmp.path();
        // Heartbeats over UDP, replication over TCP.
        let (hb, rep) = (free_port(true), free_port(false));
        // The health endpoints listen on every address: one port per node.
        let lb = [free_port(false), free_port(false)];
        let api = opts.api.then(|| [free_port(false), free_port(false)]);
        let (addr, quorum) = match net {
            None => (
                ["127.0.0.1".to_string(), "127.0.0.2".to_string()],
                [
                    String::from("quorum = \"none\""),
                    "quorum = \"none\"".into(),
                ],
            ),
            Some(net) => (
                net.addr.clone(),
                [0, 1].map(|i| {
                    let q = &net.quorum_addr[i];
                    match kind {
                        "ping" => format!("quorum = \"ping\"\nping = [\"{q}\"]"),
                        "etcd" => format!("quorum = \"etcd\"\netcd = [\"http://{q}:2379\"]"),
                        "none" => "quorum = \"none\"".into(),
                        _ => format!("quorum = \"witness\"\nwitness = \"{q}:17900\""),
                    }
                }),
            ),
        };
        script(&t.join("app.sh"), APP);
        script(&t.join("start.sh"), START);
        script(&t.join("stop.sh"), STOP);
        script(&t.join("service.py"), SERVICE);
        for n in 1..=2 {
            std::fs::create_dir_all(t.join(format!("node{n}/app"))).unwrap();
            std::fs::create_dir_all(t.join(format!("node{n}/db"))).unwrap();
            std::fs::create_dir_all(t.join(format!("side{n}"))).unwrap();
            std::fs::write(
                nodes.config(n),
                format!(
                    r#"
[cluster]
name = "ct"
{quorum}
{cluster_extra}
[[node]]
name = "node1"
address = "{a1}"
[[node]]
name = "node2"
address = "{a2}"
[heartbeat]
port = {hb}
interval_ms = {interval}
timeout_ms = {timeout}
[replication]
port = {rep}
peer_timeout_ms = {peer_timeout}
{replication_extra}
[daemon]
socket = "{t}/n{n}.sock"
state_dir = "{t}/state{n}"
tls_dir = "{t}/tls"
{api}
[[module]]
name = "app"
dirs = ["{t}/node{n}/app"]
{failover}
{app_extra}
[module.scripts]
start_prim = "{t}/start.sh"
stop_prim = "{t}/stop.sh"
timeout_s = {script_timeout}
{check}
{tail}"#,
                    t = t.display(),
                    failover = opts.failover.as_ref().map(|f| {
                        f.replace("{n}", &n.to_string()).replace(
                            "{port}",
                            &opts.ports.map_or(String::new(), |p| p[n - 1].to_string()),
                        )
                    }).unwrap_or_else(|| format!(
                        "failover = \"lb\"\nlb_port = {}",
                        lb[n - 1]
                    )),
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
                    script_timeout = opts.script_timeout_s,
                    api = match api {
                        Some(p) => format!("[api]\nport = {}", p[n - 1]),
                        None => "[api]\nenabled = false".into(),
                    },
                    interval = opts.heartbeat.0,
                    timeout = opts.heartbeat.1,
                    peer_timeout = opts.peer_timeout_ms,
                    cluster_extra = opts.cluster_extra,
                    replication_extra = opts.replication_extra,
                ),
            )
            .unwrap();
        }
        let o = tandem_with(&nodes.config(1), &["init"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let mut c = Cluster {
            nodes,
            netns: net.map(|n| n.nodes.clone()),
            witness: None,
            service: opts.service,
            env: Default::default(),
            api,
        };
        if let Some(net) = net.filter(|_| kind == "etcd") {
            let log = std::fs::File::create(c.path("etcd.log")).unwrap();
            let mut etcd = Net::exec(&net.quorum_ns, "etcd");
            super::etcd_args(
                &mut etcd,
                &c.path("etcd"),
                "http://0.0.0.0:2379",
                &format!("http://{}:2379", net.quorum_addr[0]),
                "http://127.0.0.1:2380",
            );
            c.witness = Some(
                etcd.stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .expect("etcd (Debian's etcd-server) is installed"),
            );
        }
        if let Some(net) = net.filter(|_| kind == "witness") {
            let log = std::fs::File::create(c.path("witness.log")).unwrap();
            c.witness = Some(
                Net::exec(&net.quorum_ns, tandem_bin())
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

    /// `tandem ARGS` on node `n`, which must succeed; its standard output.
    pub fn ok(&self, n: usize, args: &[&str]) -> String {
        let o = self.tandem(n, args);
        assert!(
            o.status.success(),
            "tandem {args:?} on node{n}: {}{}\n--- node1\n{}\n--- node2\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            self.log_text(1),
            self.log_text(2)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Node `n`'s health endpoint port (its first `lb_port`).
    pub fn lb_port(&self, n: usize) -> u16 {
        let text = std::fs::read_to_string(self.config(n)).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("lb_port = "))
            .and_then(|p| p.trim().parse().ok())
            .expect("an lb_port")
    }

    pub fn start(&mut self, n: usize) {
        // In a node's network namespace only: mounts and sockets stay shared.
        let bin = self.bins[n - 1].clone();
        let mut cmd = match &self.netns {
            None => Command::new(&bin),
            Some(ns) => Net::exec(&ns[n - 1], bin.to_str().expect("a UTF-8 path")),
        };
        cmd.arg("-c")
            .arg(self.config(n))
            .args(["daemon", "--node", &format!("node{n}")])
            .env("APP_SIDE", self.path(&format!("side{n}")))
            .env("APP_BIN", self.path("app.sh"))
            .env("APP_SERVICE", self.path("service.py"))
            .env(
                "APP_PORT",
                self.service.map(|p| p.to_string()).unwrap_or_default(),
            )
            .envs(self.env[n - 1].iter().cloned());
        self.spawn(n, cmd);
    }

    /// Starts node1, then node2, and waits up to `secs` for node1 serving
    /// with node2 up to date.
    pub fn start_both(&mut self, secs: u64) {
        self.start(1);
        self.start(2);
        self.wait_states("PRIM", "SECOND", secs);
    }

    /// Freezes node `n`'s daemon for `d` (SIGSTOP, as a VM stall or a swap
    /// storm does), then lets it run on. Its application is not frozen.
    pub fn pause(&self, n: usize, d: Duration) {
        let pid = self.pid(n) as i32;
        // SAFETY: kill takes no pointer; `pid` is the running daemon's, which
        // is our child and not reaped.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        std::thread::sleep(d);
        // SAFETY: kill takes no pointer; `pid` is the stopped daemon's, which is our child and not
        // reaped.
        unsafe { libc::kill(pid, libc::SIGCONT) };
    }

    /// The module's state on node `n` ("" while its daemon does not answer).
    pub fn state(&self, n: usize) -> String {
        self.status(n)
            .and_then(|s| s["modules"][0]["state"].as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// The state of module `m` (by position) on node `n`.
    pub fn state_of(&self, n: usize, m: usize) -> String {
        self.status(n)
            .and_then(|s| s["modules"][m]["state"].as_str().map(str::to_string))
            .unwrap_or_default()
    }

    pub fn uptodate(&self, n: usize) -> bool {
        self.status(n)
            .is_some_and(|s| s["modules"][0]["cluster"]["uptodate"] == true)
    }

    pub fn wait_states(&self, a: &str, b: &str, secs: u64) {
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

    /// Node `n` holds the module's lease (witness or etcd), within 20 s.
    pub fn wait_lease(&self, n: usize) {
        let holds = || {
            self.status(n).is_some_and(|s| {
                s["modules"][0]["cluster"]["quorum"]
                    .as_str()
                    .is_some_and(|q| q.contains(&format!("held by node{n} (this node)")))
            })
        };
        assert!(
            wait_until(20, holds),
            "node{n} serves without the lease\n{}",
            self.log_text(n)
        );
    }

    /// The node serving with an up-to-date twin, the same when looked at
    /// again 300 ms later (not a moment of a change of roles), within `secs`.
    pub fn settled(&self, secs: u64) -> Option<usize> {
        let once = || {
            (1..=2).find(|&n| {
                self.state(n) == "PRIM" && self.state(3 - n) == "SECOND" && self.uptodate(3 - n)
            })
        };
        let mut found = None;
        wait_until(secs, || {
            found = once().filter(|&a| {
                std::thread::sleep(Duration::from_millis(300));
                once() == Some(a)
            });
            found.is_some()
        });
        found
    }

    pub fn acked(&self, n: usize) -> u64 {
        std::fs::read_to_string(self.path(&format!("side{n}/acked")))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The application runs on node `n`: its acknowledged count grows.
    pub fn wait_app_writes(&self, n: usize) {
        let start = self.acked(n);
        assert!(
            wait_until(20, || self.acked(n) > start + 5),
            "the application does not write on node {n} (acked {start})\n{}",
            self.log_text(n)
        );
    }

    /// The records in node `n`'s directory: 1, 2, 3, … without a gap.
    pub fn records(&self, n: usize) -> u64 {
        self.writers(n).len() as u64
    }

    /// Who wrote each record in node `n`'s directory, in order (1, 2, 3, …
    /// without a gap).
    pub fn writers(&self, n: usize) -> Vec<String> {
        let text = std::fs::read_to_string(self.path(&format!("node{n}/app/records"))).unwrap();
        text.lines()
            .enumerate()
            .map(|(i, line)| {
                let (num, who) = line.split_once(' ').unwrap_or((line, ""));
                assert_eq!(num, (i + 1).to_string(), "record {} on node {n}", i + 1);
                who.to_string()
            })
            .collect()
    }

    /// Every record acknowledged to the application on either node is in
    /// node `n`'s directory, written by the node that acknowledged it: no
    /// acknowledged write was lost, and no two writers acknowledged the
    /// same record (one of them would be missing).
    pub fn assert_acks_kept(&self, n: usize) {
        // The acknowledgements first: each was in the file before it was
        // logged, and the file read after them holds them all.
        let acks: Vec<String> = (1..=2)
            .map(|by| {
                std::fs::read_to_string(self.path(&format!("side{by}/acks"))).unwrap_or_default()
            })
            .collect();
        let writers = self.writers(n);
        for by in 1..=2 {
            for a in acks[by - 1].lines() {
                let k: usize = a.trim().parse().unwrap();
                let who = writers.get(k - 1).map_or("(missing)", String::as_str);
                assert_eq!(
                    who,
                    format!("node{by}"),
                    "record {k} was acknowledged on node{by}; node{n} has it from {who}\n\
                     --- node1\n{}\n--- node2\n{}",
                    self.log_text(1),
                    self.log_text(2)
                );
            }
        }
    }

    /// Whatever a failed test left running.
    pub fn clean_after_killed(&self, n: usize) {
        if let Ok(pid) = std::fs::read_to_string(self.path(&format!("side{n}/app.pid"))) {
            let pid: i32 = pid.trim().parse().unwrap();
            // SAFETY: kill takes no pointer; -pid names the process group the application leads
            // (its pid from app.pid).
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
        // SAFETY: `dir` is a NUL-terminated path living across the call.
        unsafe { libc::umount2(dir.as_ptr(), libc::MNT_DETACH) };
    }

    pub fn events(&self) -> String {
        std::fs::read_to_string(self.path("events")).unwrap_or_default()
    }

    /// The application never ran on both nodes at once: the scripts log each
    /// start and stop, in order, to one file.
    pub fn assert_never_both(&self) {
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
    pub fn watch(&self, stop: &std::sync::atomic::AtomicBool) -> Vec<String> {
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
