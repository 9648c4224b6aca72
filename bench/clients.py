#!/usr/bin/env python3
"""Client-side outage when the serving node is lost, measured from a client in
network namespaces built here (and removed at the end), for tandem and, as the
anchor, keepalived in the same namespaces.

VIP mode: node1, node2 and a client on one bridge. The client connects to the
virtual address every 10 ms; each connection is answered with the name of the
node that took it. The primary is lost whole (its link cut, then every process
on it killed); the outage is the gap between the last answer of the old node
and the first of the new one. tandem's application runs only where the module
is served, so its start time (start_prim to listening) is measured on the new
node and subtracted, and reported apart; keepalived's service runs on both
nodes all along.

  tandem    heartbeat 50 ms / timeout 300 ms (target median <= 0.5 s) and the
            defaults 200 ms / 3000 ms (target <= 3.5 s), quorum "none"
  keepalived VRRPv3, advert_int 0.1 and the default 1

Then a kill -9 of the daemon alone on the serving node: the answers the old
node still gives through the VIP over the next 3 s are counted (tandem: its
guard drops the VIP and stops the application; keepalived leaves the VIP).

LB mode: node1 and node2 in two subnets joined by a router, HAProxy
(cloud/haproxy/haproxy.cfg: inter 500 ms, fall 2, rise 1) in front; the client
goes through HAProxy; the primary is lost whole (target median <= 3 s, with
heartbeat 100 ms / 500 ms).

Usage: sudo bench/clients.py [--runs 10] [--only vip,kill,lb]
"""
import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TANDEM = os.environ.get("TANDEM_BIN", "/var/tmp/tandem-target/release/tandem")
VIP = "10.80.0.100"
PORT = 8080

SERVICE = r'''
import os, socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(64)
if len(sys.argv) > 3:
    with open(sys.argv[3] + ".tmp", "w") as f:
        f.write(repr(time.time()))
    os.rename(sys.argv[3] + ".tmp", sys.argv[3])
name = (sys.argv[2] + "\n").encode()
while True:
    c, _ = s.accept()
    try:
        c.sendall(name)
    finally:
        c.close()
'''

PROBER = r'''
import socket, sys, time
addr = (sys.argv[1], int(sys.argv[2]))
while True:
    t = time.time()
    who = "-"
    try:
        c = socket.create_connection(addr, timeout=0.1)
        c.settimeout(0.3)
        who = c.recv(64).decode().strip() or "-"
        c.close()
    except OSError:
        pass
    print(f"{t:.6f} {who}", flush=True)
    time.sleep(0.01)
'''

START = """#!/bin/sh
date +%s.%N > "$SIDE/started"
setsid python3 "$SIDE/../service.py" 8080 "$TANDEM_NODE" "$SIDE/ready" >/dev/null 2>&1 </dev/null &
echo $! > "$SIDE/app.pid"
"""
STOP = """#!/bin/sh
pid=$(cat "$SIDE/app.pid" 2>/dev/null) || exit 0
kill -KILL "-$pid" 2>/dev/null
rm -f "$SIDE/app.pid" "$SIDE/ready" "$SIDE/started"
"""


def sh(*args, check=True):
    r = subprocess.run(args, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise SystemExit(f"{' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


def in_ns(ns, *args):
    return ["ip", "netns", "exec", ns, *args]


class Net:
    """Namespaces named after this process, deleted by close()."""

    def __init__(self, kind):
        tag = f"tdb{os.getpid()}{kind[0]}"
        self.names = []

        def ns(n):
            name = f"{tag}{n}"
            sh("ip", "netns", "add", name)
            sh("ip", "-n", name, "link", "set", "lo", "up")
            self.names.append(name)
            return name

        def veth(x, xa, y, yi, ya):
            sh("ip", "-n", x, "link", "add", "eth0", "type", "veth", "peer", "name", yi, "netns", y)
            sh("ip", "-n", x, "addr", "add", xa, "dev", "eth0")
            sh("ip", "-n", x, "link", "set", "eth0", "up")
            if ya:
                sh("ip", "-n", y, "addr", "add", ya, "dev", yi)
            sh("ip", "-n", y, "link", "set", yi, "up")

        if kind == "lan":
            self.n1, self.n2, self.client, sw = ns("n1"), ns("n2"), ns("cl"), ns("sw")
            sh("ip", "-n", sw, "link", "add", "br0", "type", "bridge")
            sh("ip", "-n", sw, "link", "set", "br0", "up")
            for i, (n, last) in enumerate([(self.n1, 1), (self.n2, 2), (self.client, 9)]):
                veth(n, f"10.80.0.{last}/24", sw, f"p{i}", None)
                sh("ip", "-n", sw, "link", "set", f"p{i}", "master", "br0")
            self.addr = ["10.80.0.1", "10.80.0.2"]
        else:
            self.n1, self.n2, self.client, r = ns("n1"), ns("n2"), ns("lb"), ns("r")
            for n, sub in [(self.n1, 1), (self.n2, 2), (self.client, 3)]:
                veth(n, f"10.81.{sub}.1/24", r, f"s{sub}", f"10.81.{sub}.254/24")
                sh("ip", "-n", n, "route", "add", "default", "via", f"10.81.{sub}.254")
            sh(*in_ns(r, "sysctl", "-qw", "net.ipv4.ip_forward=1"))
            self.addr = ["10.81.1.1", "10.81.2.1"]
        self.kind = kind
        self.nodes = [self.n1, self.n2]

    def link(self, n, up):
        ns = self.nodes[n - 1]
        sh("ip", "-n", ns, "link", "set", "eth0", "up" if up else "down")
        if up and self.kind != "lan":
            # The default route went with the link.
            sh("ip", "-n", ns, "route", "replace", "default", "via", f"10.81.{n}.254")

    def close(self):
        for n in self.names:
            # Whatever still runs in the namespace goes with it.
            pids = sh("ip", "netns", "pids", n, check=False).split()
            for p in pids:
                try:
                    os.kill(int(p), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            sh("ip", "netns", "del", n, check=False)


class Prober:
    def __init__(self, ns, addr, port, path):
        self.path = path
        self.out = open(path, "w")
        self.proc = subprocess.Popen(in_ns(ns, "python3", "-u", "-c", PROBER, addr, str(port)),
                                     stdout=self.out, stderr=subprocess.DEVNULL)

    def answers(self):
        out = []
        with open(self.path) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2:
                    out.append((float(parts[0]), parts[1]))
        return out

    def wait_for(self, who, after, timeout=30):
        end = time.time() + timeout
        while time.time() < end:
            if any(t >= after and w == who for t, w in self.answers()):
                return True
            time.sleep(0.02)
        return False

    def outage(self, old, new, at):
        a = self.answers()
        last = max((t for t, w in a if t < at and w == old), default=at)
        first = min(t for t, w in a if t >= at and w == new)
        return first - last

    def count(self, who, after, until):
        return sum(1 for t, w in self.answers() if after <= t < until and w == who)

    def close(self):
        self.proc.kill()
        self.proc.wait()
        self.out.close()


def wait(cond, what, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return
        time.sleep(0.02)
    raise SystemExit(f"timed out waiting for {what}")


def holds(ns, addr):
    return f" {addr}/" in sh("ip", "-n", ns, "-o", "addr", "show")


class Tandem:
    def __init__(self, net, tmp, interval, timeout, failover):
        self.net, self.tmp = net, tmp
        self.procs = {}
        with open(f"{tmp}/service.py", "w") as f:
            f.write(SERVICE)
        for name, body in (("start.sh", START), ("stop.sh", STOP)):
            with open(f"{tmp}/{name}", "w") as f:
                f.write(body)
            os.chmod(f"{tmp}/{name}", 0o755)
        for n in (1, 2):
            os.makedirs(f"{tmp}/node{n}/app")
            os.makedirs(f"{tmp}/side{n}")
            with open(self.config(n), "w") as f:
                f.write(f"""
[cluster]
name = "bench"
quorum = "none"
[[node]]
name = "node1"
address = "{net.addr[0]}"
[[node]]
name = "node2"
address = "{net.addr[1]}"
[heartbeat]
interval_ms = {interval}
timeout_ms = {timeout}
[daemon]
socket = "{tmp}/n{n}.sock"
state_dir = "{tmp}/state{n}"
tls_dir = "{tmp}/tls"
[[module]]
name = "app"
dirs = ["{tmp}/node{n}/app"]
{failover}
[module.scripts]
start_prim = "{tmp}/start.sh"
stop_prim = "{tmp}/stop.sh"
""")
        sh(TANDEM, "-c", self.config(1), "init")

    def config(self, n):
        return f"{self.tmp}/n{n}.toml"

    def start(self, n):
        log = open(f"{self.tmp}/daemon{n}.log", "a")
        env = dict(os.environ, SIDE=f"{self.tmp}/side{n}")
        self.procs[n] = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{self.net.nodes[n - 1]}", "--",
             TANDEM, "-c", self.config(n), "daemon", "--node", f"node{n}"],
            stdout=subprocess.DEVNULL, stderr=log, env=env)

    def state(self, n):
        r = subprocess.run([TANDEM, "-c", self.config(n), "status", "--json"], capture_output=True, text=True)
        if r.returncode != 0:
            return None
        import json
        modules = json.loads(r.stdout)["modules"]
        if not modules:
            return None
        m = modules[0]
        return m["state"], m["cluster"]["uptodate"]

    def settled(self, prim):
        sec = 3 - prim
        return self.state(prim) == ("PRIM", False) and self.state(sec) == ("SECOND", True)

    def guard(self, n):
        daemon = self.procs[n].pid
        for p in os.listdir("/proc"):
            if not p.isdigit():
                continue
            try:
                stat = open(f"/proc/{p}/stat").read()
                cmd = open(f"/proc/{p}/cmdline", "rb").read().split(b"\0")
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == daemon and b"guard" in cmd:
                return int(p)
        return None

    def lose(self, n):
        """The whole node: link cut, then the guard, the daemon and the
        application killed (nothing cleans up)."""
        self.net.link(n, False)
        g = self.guard(n)
        if g:
            os.kill(g, signal.SIGKILL)
        self.kill(n)
        self.kill_app(n)

    def kill(self, n):
        p = self.procs.pop(n)
        p.send_signal(signal.SIGKILL)
        p.wait()

    def kill_app(self, n):
        try:
            pid = int(open(f"{self.tmp}/side{n}/app.pid").read())
            os.killpg(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass

    def reboot(self, n):
        """The lost node comes back: fresh addresses, no stale mount."""
        ns = self.net.nodes[n - 1]
        if holds(ns, VIP):
            sh("ip", "-n", ns, "addr", "del", f"{VIP}/24", "dev", "eth0")
        subprocess.run(["umount", "-l", f"{self.tmp}/node{n}/app"], capture_output=True)
        for f in ("app.pid", "ready", "started"):
            try:
                os.remove(f"{self.tmp}/side{n}/{f}")
            except FileNotFoundError:
                pass
        self.net.link(n, True)
        self.start(n)

    def app_start(self, n):
        side = f"{self.tmp}/side{n}"
        wait(lambda: os.path.exists(f"{side}/ready"), "the application's start")
        return float(open(f"{side}/ready").read()) - float(open(f"{side}/started").read())

    def close(self):
        for n in list(self.procs):
            self.procs[n].send_signal(signal.SIGTERM)
            try:
                self.procs[n].wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.procs[n].kill()
        for n in (1, 2):
            subprocess.run(["umount", "-l", f"{self.tmp}/node{n}/app"], capture_output=True)


def tandem_vip(runs, interval, timeout):
    tmp = tempfile.mkdtemp(prefix="tandem-bench-clients-", dir="/var/tmp")
    net = Net("lan")
    t = Tandem(net, tmp, interval, timeout, f'vip = ["{VIP}/24"]')
    p = None
    outages, apps = [], []
    try:
        t.start(1)
        t.start(2)
        p = Prober(net.client, VIP, PORT, f"{tmp}/probe")
        prim = 1
        for _ in range(runs):
            wait(lambda: t.settled(prim), "PRIM/SECOND")
            wait(lambda: p.wait_for(f"node{prim}", time.time() - 0.5, 1), f"node{prim} answering")
            new = 3 - prim
            at = time.time()
            t.lose(prim)
            if not p.wait_for(f"node{new}", at, 60):
                raise SystemExit(f"node{new} never answered")
            app = t.app_start(new)
            outages.append(p.outage(f"node{prim}", f"node{new}", at) - app)
            apps.append(app)
            t.reboot(prim)
            prim = new
    finally:
        if p:
            p.close()
        t.close()
        net.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return outages, apps


KEEPALIVED = """
global_defs {{
    vrrp_version 3
    script_user root
    enable_script_security
}}
vrrp_instance app {{
    state BACKUP
    interface eth0
    virtual_router_id 51
    priority {priority}
    advert_int {advert}
    virtual_ipaddress {{
        {vip}/24 dev eth0
    }}
}}
"""


class Keepalived:
    def __init__(self, net, tmp, advert):
        self.net, self.tmp, self.procs, self.svc = net, tmp, {}, {}
        with open(f"{tmp}/service.py", "w") as f:
            f.write(SERVICE)
        for n in (1, 2):
            with open(f"{tmp}/k{n}.conf", "w") as f:
                f.write(KEEPALIVED.format(priority=200 - n * 50, advert=advert, vip=VIP))
            self.service(n)

    def service(self, n):
        self.svc[n] = subprocess.Popen(in_ns(self.net.nodes[n - 1], "python3", f"{self.tmp}/service.py",
                                             str(PORT), f"node{n}"),
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start(self, n):
        # A killed instance leaves its pid files (and maybe a zombie behind them).
        for f in (f"{self.tmp}/k{n}.pid", f"{self.tmp}/k{n}.vrrp.pid"):
            try:
                os.remove(f)
            except FileNotFoundError:
                pass
        self.procs[n] = subprocess.Popen(
            in_ns(self.net.nodes[n - 1], "keepalived", "--dont-fork", "--vrrp", "--log-console",
                  f"--use-file={self.tmp}/k{n}.conf", f"--pid={self.tmp}/k{n}.pid",
                  f"--vrrp_pid={self.tmp}/k{n}.vrrp.pid"),
            stdout=subprocess.DEVNULL, stderr=open(f"{self.tmp}/k{n}.log", "a"))

    def kill(self, n):
        """kill -9 of keepalived alone (its VRRP child too)."""
        for f in (f"{self.tmp}/k{n}.vrrp.pid", f"{self.tmp}/k{n}.pid"):
            try:
                os.kill(int(open(f).read()), signal.SIGKILL)
            except (OSError, ValueError):
                pass
        p = self.procs.pop(n)
        p.kill()
        p.wait()

    def lose(self, n):
        self.net.link(n, False)
        self.kill(n)
        self.svc.pop(n).kill()

    def reboot(self, n):
        ns = self.net.nodes[n - 1]
        if holds(ns, VIP):
            sh("ip", "-n", ns, "addr", "del", f"{VIP}/24", "dev", "eth0")
        self.net.link(n, True)
        self.service(n)
        self.start(n)

    def close(self):
        for n in list(self.procs):
            self.kill(n)
        for s in self.svc.values():
            s.kill()


def keepalived_vip(runs, advert):
    tmp = tempfile.mkdtemp(prefix="tandem-bench-keepalived-", dir="/var/tmp")
    net = Net("lan")
    k = Keepalived(net, tmp, advert)
    p = None
    outages = []
    try:
        k.start(1)
        k.start(2)
        p = Prober(net.client, VIP, PORT, f"{tmp}/probe")
        for _ in range(runs):
            # node1 has the higher priority and takes the address back.
            wait(lambda: holds(net.n1, VIP) and not holds(net.n2, VIP), "node1 MASTER")
            wait(lambda: p.wait_for("node1", time.time() - 0.3, 1), "node1 answering")
            time.sleep(3 * advert + 0.5)
            at = time.time()
            k.lose(1)
            if not p.wait_for("node2", at, 60):
                raise SystemExit("keepalived: node2 never answered")
            outages.append(p.outage("node1", "node2", at))
            k.reboot(1)
    finally:
        if p:
            p.close()
        k.close()
        net.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return outages


def kill_daemon_only():
    """Answers from the old node through the VIP in the 3 s after a kill -9 of
    the daemon alone (tandem with the fast settings, keepalived 0.1 s)."""
    counts = {}
    tmp = tempfile.mkdtemp(prefix="tandem-bench-kill-", dir="/var/tmp")
    net = Net("lan")
    t = Tandem(net, tmp, 50, 300, f'vip = ["{VIP}/24"]')
    p = None
    try:
        t.start(1)
        t.start(2)
        p = Prober(net.client, VIP, PORT, f"{tmp}/probe")
        wait(lambda: t.settled(1), "PRIM/SECOND")
        wait(lambda: p.wait_for("node1", time.time() - 0.5, 1), "node1 answering")
        at = time.time()
        t.kill(1)
        p.wait_for("node2", at, 30)
        time.sleep(3)
        counts["tandem"] = p.count("node1", at, at + 3)
    finally:
        if p:
            p.close()
        t.close()
        net.close()
        shutil.rmtree(tmp, ignore_errors=True)
    tmp = tempfile.mkdtemp(prefix="tandem-bench-kill-", dir="/var/tmp")
    net = Net("lan")
    k = Keepalived(net, tmp, 0.1)
    p = None
    try:
        k.start(1)
        k.start(2)
        p = Prober(net.client, VIP, PORT, f"{tmp}/probe")
        wait(lambda: holds(net.n1, VIP), "node1 MASTER")
        wait(lambda: p.wait_for("node1", time.time() - 0.3, 1), "node1 answering")
        time.sleep(1)
        at = time.time()
        k.kill(1)
        time.sleep(3)
        counts["keepalived"] = p.count("node1", at, at + 3)
        counts["keepalived_vip_left"] = holds(net.n1, VIP)
    finally:
        if p:
            p.close()
        k.close()
        net.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return counts


def tandem_lb(runs, interval, timeout):
    tmp = tempfile.mkdtemp(prefix="tandem-bench-lb-", dir="/var/tmp")
    net = Net("routed")
    t = Tandem(net, tmp, interval, timeout, 'failover = "lb"')
    cfg = open(os.path.join(ROOT, "cloud/haproxy/haproxy.cfg")).read()
    cfg = cfg.replace("10.0.1.10", net.addr[0]).replace("10.0.2.10", net.addr[1])
    with open(f"{tmp}/haproxy.cfg", "w") as f:
        f.write(cfg)
    h = subprocess.Popen(in_ns(net.client, "haproxy", "-db", "-f", f"{tmp}/haproxy.cfg"),
                         stdout=subprocess.DEVNULL, stderr=open(f"{tmp}/haproxy.log", "w"))
    p = None
    outages, apps = [], []
    try:
        t.start(1)
        t.start(2)
        p = Prober(net.client, "127.0.0.1", 80, f"{tmp}/probe")
        prim = 1
        for _ in range(runs):
            wait(lambda: t.settled(prim), "PRIM/SECOND")
            wait(lambda: p.wait_for(f"node{prim}", time.time() - 0.5, 1), f"node{prim} answering")
            # HAProxy has marked the returning node down again by now.
            time.sleep(1.5)
            new = 3 - prim
            at = time.time()
            t.lose(prim)
            if not p.wait_for(f"node{new}", at, 60):
                raise SystemExit(f"node{new} never answered through HAProxy")
            app = t.app_start(new)
            outages.append(p.outage(f"node{prim}", f"node{new}", at) - app)
            apps.append(app)
            t.reboot(prim)
            prim = new
    finally:
        if p:
            p.close()
        h.kill()
        h.wait()
        t.close()
        net.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return outages, apps


def med(xs):
    return statistics.median(xs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--only", default="vip,kill,lb")
    args = ap.parse_args()
    only = args.only.split(",")
    ok = True
    if "vip" in only:
        for (interval, timeout, target), advert in (((50, 300, 0.5), 0.1), ((200, 3000, 3.5), 1)):
            out, app = tandem_vip(args.runs, interval, timeout)
            anchor = keepalived_vip(args.runs, advert)
            print(f"VIP, whole node lost: tandem heartbeat {interval}/{timeout} ms median outage "
                  f"{med(out):.3f} s (min {min(out):.3f}, max {max(out):.3f}, {len(out)} runs, "
                  f"target <= {target} s), application start {med(app):.3f} s apart; keepalived "
                  f"advert_int {advert} median {med(anchor):.3f} s (min {min(anchor):.3f}, max "
                  f"{max(anchor):.3f}); ratio tandem/keepalived {med(out) / med(anchor):.2f}", flush=True)
            ok &= med(out) <= target
    if "kill" in only:
        c = kill_daemon_only()
        print(f"kill -9 of the daemon alone, answers from the old node in the next 3 s: tandem "
              f"{c['tandem']}, keepalived {c['keepalived']} (VIP left on the old node: "
              f"{c['keepalived_vip_left']})", flush=True)
        ok &= c["tandem"] == 0
    if "lb" in only:
        out, app = tandem_lb(args.runs, 100, 500)
        print(f"LB through HAProxy (inter 500 ms, fall 2, rise 1), whole node lost, heartbeat "
              f"100/500 ms: median outage {med(out):.3f} s (min {min(out):.3f}, max {max(out):.3f}, "
              f"{len(out)} runs, target <= 3 s), application start {med(app):.3f} s apart", flush=True)
        ok &= med(out) <= 3
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
