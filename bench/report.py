#!/usr/bin/env python3
"""Runs every benchmark in one sitting, sized to take about 35 minutes on two
cores, plus the fault suite, and writes bench/REPORT.md: the machine and the
versions at the top, then each benchmark's own table — tandem's figure, the
anchor's from the same run (bare disk, rsync, keepalived, HAProxy) and the
ratio — and the fault suite's counts.

Usage: sudo bench/report.py [--out bench/REPORT.md] [--quick]
  --quick   fewer runs and smaller data (a few minutes; for checking the script)
"""

import argparse
import datetime
import os
import platform
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def version(cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        text = (out.stdout or out.stderr).strip().splitlines()
        return text[0] if text else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"


def machine():
    mem = "?"
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) // (1 << 20)} GiB"
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = version(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"])
    rows = [
        ("date", datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")),
        ("tandem", f"commit {commit}"),
        ("kernel", platform.release()),
        ("CPUs", f"{os.cpu_count()} x {cpu}"),
        ("memory", mem),
        ("rustc", version(["rustc", "--version"])),
        ("fio", version(["fio", "--version"])),
        ("rsync", version(["rsync", "--version"])),
        ("keepalived", version(["keepalived", "--version"])),
        ("HAProxy", version(["haproxy", "-v"])),
        ("etcd", version(["etcd", "--version"])),
    ]
    out = ["| | |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(out)


def run(title, cmd, env=None):
    """Runs one benchmark; returns its section of the report."""
    print(f"== {title}: {' '.join(cmd)}", flush=True)
    t0 = time.monotonic()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, **(env or {})})
    took = time.monotonic() - t0
    sys.stdout.write(p.stdout)
    status = "" if p.returncode == 0 else f" — exited {p.returncode} (a target missed, or an error: see below)"
    body = p.stdout.strip()
    if p.returncode != 0:
        body += "\n\n" + "\n".join(p.stderr.strip().splitlines()[-15:])
    return (f"## {title}\n\n`{' '.join(cmd)}` — {took / 60:.1f} min{status}\n\n"
            f"{fenced(body)}\n")


def fenced(text):
    """Markdown tables stay tables; the rest goes in a code block."""
    out, block = [], []
    for line in text.splitlines():
        if line.startswith("|"):
            if block:
                out.append("```\n" + "\n".join(block) + "\n```")
                block = []
            out.append(line)
        else:
            block.append(line)
    if block and any(b.strip() for b in block):
        out.append("```\n" + "\n".join(block) + "\n```")
    return "\n".join(out)


def faults(quick):
    title = "Fault suite"
    cmd = ["cargo", "test", "--release", "--test", "faults", "--", "--nocapture", "--test-threads=3"]
    env = {"TANDEM_FAULT_ROUNDS": "12" if quick else "20"}
    print(f"== {title}", flush=True)
    t0 = time.monotonic()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, **env})
    took = time.monotonic() - t0
    lines = [l for l in (p.stdout + p.stderr).splitlines() if l.startswith("fault suite [")]
    result = "passed" if p.returncode == 0 else f"FAILED (exit {p.returncode})"
    rows = ["| quorum | rounds | faults (kind: rounds) | records | acknowledged | lost | "
            "acknowledged by two writers | rounds needing an operator | verify |",
            "|---|---|---|---|---|---|---|---|---|"]
    pat = re.compile(r"fault suite \[(\w+)\]: (\d+) rounds in \d+ s \{(.*)\}; (\d+) records, "
                     r"(\d+) acknowledged: (\d+) lost, (\d+) acknowledged by two writers, "
                     r"(\d+) rounds needing an operator, verify (\w+)")
    for l in lines:
        m = pat.search(l)
        if m:
            kinds = m.group(3).replace('"', "")
            rows.append(f"| {m.group(1)} | {m.group(2)} | {kinds} | {m.group(4)} | {m.group(5)} | "
                        f"{m.group(6)} | {m.group(7)} | {m.group(8)} | {m.group(9)} |")
    return (f"## {title}\n\n`TANDEM_FAULT_ROUNDS={env['TANDEM_FAULT_ROUNDS']} {' '.join(cmd)}` — "
            f"{took / 60:.1f} min, {result}\n\n" + "\n".join(rows) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(HERE, "REPORT.md"))
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("error: the benchmarks mount file systems and build namespaces: run as root")
    q = args.quick
    py = sys.executable
    t0 = time.monotonic()
    sections = [
        run("Intercepting mount vs the bare directory (fio)",
            [py, "bench/fs_overhead.py", "--runs", "2" if q else "3",
             "--size-mib", "256" if q else "512", "--runtime", "3" if q else "5"]),
        run("Replication: synchronous writes, resync, full sync, verify",
            [py, "bench/replication.py", "--runs", "1" if q else "2",
             "--seq-mib", "256" if q else "512", "--big-mib", "256" if q else "512",
             "--small-files", "2000" if q else "10000",
             "--many-files", "20000" if q else "200000", "--runtime", "3" if q else "5"]),
        run("Failover on loopback (kill -9 of the serving daemon)",
            [py, "bench/failover.py", "--runs", "3" if q else "6"]),
        run("Clients: VIP and load balancer, against keepalived and HAProxy",
            [py, "bench/clients.py", "--runs", "2" if q else "4"]),
        run("Snapshots: write-path cost, bytes kept, restore",
            [py, "bench/snapshot.py", "--runs", "1" if q else "3"] + (["--quick"] if q else [])),
        run("Big trees: full sync, 1% resync, a log writer during a resync, the cap",
            [py, "bench/resync.py", "--runs", "1", "--big-mib", "512" if q else "2048",
             "--small-files", "5000" if q else "50000", "--writer-s", "3" if q else "10"]),
        run("Many modules on one pair: at rest and in failover",
            [py, "bench/modules.py", "--modules", "8" if q else "32", "--runs", "1" if q else "3",
             "--rest-s", "5" if q else "20"]),
        faults(q),
    ]
    total = time.monotonic() - t0
    text = (
        "# tandem benchmark report\n\n"
        "Generated by `bench/report.py` in one sitting; every figure beside its anchor "
        "measured in the same run. These machines are shared and noisy: medians and "
        "ratios, not single times.\n\n"
        f"{machine()}\n\nTotal: {total / 60:.1f} min.\n\n" + "\n".join(sections)
    )
    with open(args.out, "w") as f:
        f.write(text)
    print(f"wrote {args.out} in {total / 60:.1f} min")


if __name__ == "__main__":
    main()
