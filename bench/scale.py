#!/usr/bin/env python3
"""A tree of many files (default 10,000,000), a run of its own (not in CI).

Two tandem daemons on loopback (node1 primary, node2 secondary). The same tree is
made on both nodes before the daemons start: one directory per 1,000 files, each
file a few bytes, the same times on both. Then:

  create    files made per second (on the bare file system, both nodes)
  resync    node 2 killed, 100 files changed on node 1, node 2 restarted: the
            resync until durable. Target <= 0.2 s, flat from 1M to 10M files
  verify    `tandem verify` of the whole tree (identical on both nodes)
  fullsync  `tandem second app --fullsync` of the identical tree: the compare by
            content until the resync after it ends (nothing differs)
  memory    both daemons' RSS after the resync, the verify and the full sync,
            and the highest it reached (flat in the tree's size)
  log       the change log's size on disk, both nodes

Both copies need 2 x N inodes: the trees go on an ext4 image of their own
(inline data: a file of a few bytes takes no block), made under --base and
removed at the end.

Usage: sudo bench/scale.py [--files 10000000] [--base /var/tmp]
"""
import argparse
import os
import random
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import drop_caches  # noqa: E402
from replication import Pair, wait  # noqa: E402

STAMP = 1_700_000_000


def make_tree(root, n):
    for i in range(n):
        if i % 1000 == 0:
            d = f"{root}/d{i // 1000:05d}"
            os.mkdir(d)
        p = f"{d}/f{i}"
        fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o644)
        os.write(fd, b"x%d\n" % i)
        os.close(fd)
        os.utime(p, (STAMP, STAMP))
    for i in range(0, n, 1000):
        os.utime(f"{root}/d{i // 1000:05d}", (STAMP, STAMP))
    os.utime(root, (STAMP, STAMP))


def rss_mib(pid, field="VmRSS"):
    """The resident set now (VmRSS), or at its highest so far (VmHWM)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def du_mib(path):
    out = subprocess.run(["du", "-sk", path], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0]) / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=10_000_000)
    ap.add_argument("--base", default="/var/tmp")
    ap.add_argument("--image-gib", type=int, default=0, help="default: sized to the tree")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the benchmark mounts file systems and drops caches")
    n = args.files
    img = f"{args.base}/tandem-scale.img"
    mnt = f"{args.base}/tandem-scale"
    gib = args.image_gib or max(8, (2 * n * 600) >> 30)
    subprocess.run(["truncate", "-s", f"{gib}G", img], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-O", "inline_data", "-I", "256", "-N", str(2 * n + 100_000),
                    img], check=True)
    os.makedirs(mnt, exist_ok=True)
    # Direct I/O, as a disk is read: a buffered loop device caches every block
    # twice and serves one read at a time.
    dev = subprocess.run(["losetup", "--direct-io=on", "--find", "--show", img], check=True,
                         capture_output=True, text=True).stdout.strip()
    subprocess.run(["mount", dev, mnt], check=True)
    pair = None
    try:
        pair = Pair(mnt)
        t0 = time.time()
        for node in (1, 2):
            make_tree(pair.dir(node), n)
        made = time.time() - t0
        print(f"create: {2 * n} files in {made:.0f} s ({2 * n / made:,.0f} files/s)", flush=True)
        pair.start(2)
        pair.start(1)
        wait(pair.caught_up, "connected", timeout=3600)
        pair.kill(2)
        for i in random.Random(5).sample(range(n), 100):
            with open(f"{pair.dir(1)}/d{i // 1000:05d}/f{i}", "ab") as f:
                f.write(b"changed\n")
        drop_caches()
        pair.start(2)
        wait(lambda: (s := pair.status(1)) and s["peer"] == "connected" and s["dirty_bytes"] == 0
             and s["durable"] >= s["sent"] and not s["resync"]["running"]
             and s["resync"]["started_unix_ms"] > 0, "resync", step=0.005, timeout=3600)
        st = pair.status(1)["resync"]
        resync = (st["finished_unix_ms"] - st["started_unix_ms"]) / 1000
        print(f"resync of 100 changed files among {n}: {resync:.3f} s (target <= 0.2 s); "
              f"shipped {st['bytes_done']} bytes", flush=True)
        rss = [rss_mib(pair.procs[k].pid) for k in (1, 2)]
        print(f"RSS after the resync: node1 {rss[0]:.0f} MiB, node2 {rss[1]:.0f} MiB", flush=True)
        drop_caches()
        t = time.time()
        r = pair.tandem(1, "verify", "app", check=False)
        took = time.time() - t
        print(f"verify of {n} files: {took:.0f} s ({n / took:,.0f} files/s); exit {r.returncode}: "
              f"{r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr.strip()}", flush=True)
        rss = [rss_mib(pair.procs[k].pid) for k in (1, 2)]
        peak = [rss_mib(pair.procs[k].pid, "VmHWM") for k in (1, 2)]
        print(f"RSS after the verify: node1 {rss[0]:.0f} MiB, node2 {rss[1]:.0f} MiB; "
              f"highest since the start: node1 {peak[0]:.0f} MiB, node2 {peak[1]:.0f} MiB", flush=True)
        # A full sync of the identical tree: both trees compared by content as
        # they stream past (the chunk lists cached by the verify), nothing to ship.
        log_at = os.path.getsize(f"{pair.tmp}/daemon1.log")
        t = time.time()
        pair.tandem(2, "second", "app", "--fullsync")
        wait(lambda: (s := pair.status(1)) and s["peer"] == "connected" and s["dirty_bytes"] == 0
             and not s["resync"]["running"] and s["resync"]["started_unix_ms"] / 1000 >= t,
             "full sync", step=0.05, timeout=7200)
        took = time.time() - t
        with open(f"{pair.tmp}/daemon1.log") as f:
            f.seek(log_at)
            found = [ln.split("full sync: ", 1)[1].strip() for ln in f if "full sync: " in ln]
        rss = [rss_mib(pair.procs[k].pid) for k in (1, 2)]
        peak = [rss_mib(pair.procs[k].pid, "VmHWM") for k in (1, 2)]
        print(f"full sync of the {n} identical files: {took:.0f} s ({found[-1] if found else 'no report'}); "
              f"RSS after it: node1 {rss[0]:.0f} MiB, node2 {rss[1]:.0f} MiB; "
              f"highest since the start: node1 {peak[0]:.0f} MiB, node2 {peak[1]:.0f} MiB", flush=True)
        logs = [du_mib(f"{pair.tmp}/state{k}") for k in (1, 2)]
        print(f"change log and state on disk: node1 {logs[0]:.1f} MiB, node2 {logs[1]:.1f} MiB", flush=True)
    finally:
        if pair:
            # The trees go with the image: no need to remove them file by file.
            pair.stop(1)
            pair.kill(2)
        subprocess.run(["umount", mnt], check=False)
        subprocess.run(["losetup", "-d", dev], check=False)
        os.unlink(img)


if __name__ == "__main__":
    main()
