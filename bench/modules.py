#!/usr/bin/env python3
"""Many modules on one pair: two tandem cluster daemons on loopback (heartbeat
100 ms / timeout 500 ms, quorum none), N idle modules, each with its own
directory and a start script that notes when it ran.

  rest      memory (RSS), threads and CPU of both daemons at rest with N modules,
            against the same pair with 1 module (the anchor): what each extra
            served module costs. Targets: <= 4 MB RSS and no thread of its own per
            served module. The threads are listed by name.
  failover  the serving daemon killed with SIGKILL: the time until the last of the
            N modules runs its start script on the twin. Target <= 1 s.

Usage: sudo bench/modules.py [--modules 32] [--runs 3] [--rest-s 20]
"""
import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import failover  # noqa: E402
from failover import TANDEM, free_port, wait  # noqa: E402

START = """#!/bin/sh
date +%s.%N > "$SIDE/$TANDEM_MODULE.tmp" && mv "$SIDE/$TANDEM_MODULE.tmp" "$SIDE/$TANDEM_MODULE"
"""
STOP = """#!/bin/sh
rm -f "$SIDE/$TANDEM_MODULE"
"""


class Cluster(failover.Cluster):
    """failover.Cluster with N modules of its own configuration."""

    def __init__(self, modules):
        self.tmp = tempfile.mkdtemp(prefix="tandem-bench-modules-", dir="/var/tmp")
        self.modules = [f"m{i:02d}" for i in range(modules)]
        hb, rep = free_port(), free_port()
        for name, body in (("start.sh", START), ("stop.sh", STOP)):
            with open(f"{self.tmp}/{name}", "w") as f:
                f.write(body)
            os.chmod(f"{self.tmp}/{name}", 0o755)
        for n in (1, 2):
            os.makedirs(f"{self.tmp}/side{n}")
            text = f"""
[cluster]
name = "bench"
quorum = "none"
[[node]]
name = "node1"
address = "127.0.0.1"
[[node]]
name = "node2"
address = "127.0.0.2"
[heartbeat]
port = {hb}
interval_ms = 100
timeout_ms = 500
[replication]
port = {rep}
[daemon]
socket = "{self.tmp}/n{n}.sock"
state_dir = "{self.tmp}/state{n}"
tls_dir = "{self.tmp}/tls"
[api]
enabled = false
"""
            for m in self.modules:
                os.makedirs(f"{self.tmp}/node{n}/{m}")
                text += f"""
[[module]]
name = "{m}"
dirs = ["{self.tmp}/node{n}/{m}"]
failover = "lb"
lb_port = {free_port()}
[module.scripts]
start_prim = "{self.tmp}/start.sh"
stop_prim = "{self.tmp}/stop.sh"
"""
            with open(self.config(n), "w") as f:
                f.write(text)
        subprocess.run([TANDEM, "-c", self.config(1), "init"], check=True, capture_output=True)
        self.procs = {}

    def states(self, n):
        r = subprocess.run([TANDEM, "-c", self.config(n), "status", "--json"], capture_output=True, text=True)
        if r.returncode != 0:
            return {}
        return {m["name"]: (m["state"], m["cluster"]["uptodate"]) for m in json.loads(r.stdout)["modules"]}

    def settled(self, prim, sec):
        p, s = self.states(prim), self.states(sec)
        return (len(p) == len(self.modules) and all(v[0] == "PRIM" for v in p.values())
                and all(s.get(m) == ("SECOND", True) for m in self.modules)
                and all(os.path.exists(f"{self.tmp}/side{prim}/{m}") for m in self.modules))


def proc_facts(pid):
    """RSS in MiB, threads, CPU seconds, thread names counted."""
    with open(f"/proc/{pid}/status") as f:
        st = dict(line.split(":", 1) for line in f if ":" in line)
    rss = int(st["VmRSS"].split()[0]) / 1024
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    names = collections.Counter()
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{t}/comm") as f:
                names[f.read().strip()] += 1
        except FileNotFoundError:
            pass
    return rss, int(st["Threads"]), cpu, names


def at_rest(modules, rest_s):
    """Both daemons' RSS, threads and CPU a second, at rest."""
    c = Cluster(modules)
    try:
        t0 = time.time()
        c.start(1)
        wait(lambda: len(c.states(1)) == modules, "node 1 up")
        c.start(2)
        wait(lambda: c.settled(1, 2), "every module served", timeout=120)
        up = time.time() - t0
        time.sleep(3)
        before = {n: proc_facts(c.procs[n].pid) for n in (1, 2)}
        time.sleep(rest_s)
        after = {n: proc_facts(c.procs[n].pid) for n in (1, 2)}
        out = {}
        for n in (1, 2):
            rss, threads, cpu, names = after[n]
            out[n] = (rss, threads, (cpu - before[n][2]) / rest_s, names)
        return up, out
    finally:
        c.close()


def failover(modules, runs):
    c = Cluster(modules)
    times = []
    try:
        c.start(1)
        wait(lambda: len(c.states(1)) == modules, "node 1 up")
        c.start(2)
        prim, sec = 1, 2
        for _ in range(runs):
            wait(lambda: c.settled(prim, sec), "PRIM/SECOND", timeout=120)
            t0 = time.time()
            c.kill(prim)
            side = f"{c.tmp}/side{sec}"
            wait(lambda: all(os.path.exists(f"{side}/{m}") for m in c.modules), "every module served",
                 timeout=60)
            last = max(float(open(f"{side}/{m}").read()) for m in c.modules)
            times.append(last - t0)
            for m in c.modules:
                # The killed node's notes are stale: it serves nothing now.
                try:
                    os.unlink(f"{c.tmp}/side{prim}/{m}")
                except FileNotFoundError:
                    pass
            c.start(prim)
            prim, sec = sec, prim
    finally:
        c.close()
    return times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--modules", type=int, default=32)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rest-s", type=int, default=20)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the daemons mount file systems")
    n = args.modules
    up1, one = at_rest(1, args.rest_s)
    upn, many = at_rest(n, args.rest_s)
    print(f"{n} modules served {upn:.1f} s after start (1 module: {up1:.1f} s)")
    rows = []
    for node, role in ((1, "serving"), (2, "following")):
        rss1, th1, cpu1, _ = one[node]
        rssn, thn, cpun, names = many[node]
        print(f"node{node} ({role}): 1 module {rss1:.1f} MiB, {th1} threads, {cpu1 * 100:.2f}% CPU; "
              f"{n} modules {rssn:.1f} MiB, {thn} threads, {cpun * 100:.2f}% CPU")
        print("  threads: " + ", ".join(f"{k} {v}" for k, v in names.most_common()))
        rows.append((f"RSS per extra module, {role} node", f"1 module {rss1:.1f} MiB",
                     f"{n} modules {rssn:.1f} MiB", f"{(rssn - rss1) / (n - 1):.2f} MiB/module",
                     "<= 4 MB" if role == "serving" else "info"))
        rows.append((f"threads per extra module, {role} node", f"1 module {th1}", f"{n} modules {thn}",
                     f"{(thn - th1) / (n - 1):.2f}/module", "0" if role == "serving" else "info"))
        rows.append((f"CPU at rest per extra module, {role} node", f"1 module {cpu1 * 100:.2f}%",
                     f"{n} modules {cpun * 100:.2f}%", f"{(cpun - cpu1) / (n - 1) * 100:.3f}%/module", "info"))
    times = failover(n, args.runs)
    med = statistics.median(times)
    print(f"failover of {n} modules after kill -9: last serving after {med:.2f} s median "
          f"(min {min(times):.2f}, max {max(times):.2f}, {len(times)} runs)")
    rows.append((f"failover of all {n} modules (kill -9, timeout 0.5 s)", "-", f"{med:.2f} s", "-", "<= 1 s"))
    print("\n| benchmark | anchor | tandem | per module / ratio | target |\n|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
