#!/usr/bin/env python3
"""Big-tree resync benchmarks: two tandem daemons on loopback (node1 127.0.0.1
primary, node2 127.0.0.2 secondary), a tree of a few large files and many small
ones (default 3 GiB in 3 files + 100,000 files of 2-18 KiB: about 4 GiB), every
figure next to its anchor from the same run, caches dropped before each.

  fullsync  the tree to an empty peer (`tandem second app --fullsync`, until the
            peer reports it durable) against `cp -a` of the same tree on this disk
            followed by sync (the physical limit here: both copies share one disk)
            and `rsync -a` followed by sync. Targets: >= 0.8x cp -a, >= 2x rsync.
  resync    1% of the tree changed while the peer was away (random 4 KiB writes
            into the large files, small files changed, created, removed, renamed):
            the resync until durable, against rsync -a --delete --inplace
            --no-whole-file of the same change into a copy of the old tree, plus
            sync. Target >= 20x.
  app       a database log's writer (4 KiB writes, fdatasync after each)
            through the mount: fdatasync p50 and p99 while the whole tree
            resynchronises to an emptied peer (defaults: no cap, resync_min_rate
            12 MiB/s), against the same writer with the peer current: 5 s in the
            resync's names pass (100,000 files made on the peer), then 10 s in its
            data pass. Target p99 <= 2x. The resync's rate while the writer runs
            in the data pass (sampled every 0.2 s, over the spans in which it
            yields) is shown.
  cap       `tandem resync app --rate 50MiB` set on that resync: the rate shipped
            over 10 s against the cap. Target within 10%.

Usage: sudo bench/resync.py [--runs 3] [--big-mib 3072] [--big-files 3]
       [--small-files 100000] [--base /var/tmp]
"""
import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import fresh_caches  # noqa: E402
from replication import Pair, fio, wait  # noqa: E402


def make_tree(root, big_mib, big_files, small_files, seed=1):
    rnd = random.Random(seed)
    block = 1 << 20
    for b in range(big_files):
        with open(f"{root}/big{b}", "wb") as f:
            for _ in range(big_mib // big_files):
                f.write(os.urandom(block))
    for i in range(small_files):
        d = f"{root}/s{i % 1000:03d}"
        if i < 1000:
            os.makedirs(d, exist_ok=True)
        with open(f"{d}/f{i}", "wb") as f:
            f.write(os.urandom(rnd.randint(2048, 18432)))


def tree_bytes(root):
    total = 0
    for dirpath, _, files in os.walk(root):
        for n in files:
            total += os.lstat(os.path.join(dirpath, n)).st_size
    return total


def change_one_percent(root, total, big_files, small_files, seed):
    """Random 4 KiB writes into the large files (80% of the change) and small-file
    changes, creations, removals and renames; returns the bytes written."""
    rnd = random.Random(seed)
    budget = total // 100
    written = 0
    per_big = int(budget * 0.8) // big_files // 4096
    for b in range(big_files):
        path = f"{root}/big{b}"
        blocks = os.path.getsize(path) // 4096
        with open(path, "r+b") as f:
            for blk in rnd.sample(range(blocks), per_big):
                f.seek(blk * 4096)
                f.write(os.urandom(4096))
                written += 4096
    n = small_files // 100
    for i in rnd.sample(range(small_files), n):
        p = f"{root}/s{i % 1000:03d}/f{i}"
        if os.path.exists(p):
            with open(p, "r+b") as f:
                f.write(os.urandom(1024))
                written += 1024
    for i in range(n):
        with open(f"{root}/s{i % 1000:03d}/new{i}", "wb") as f:
            f.write(os.urandom(10_000))
            written += 10_000
    for k, i in enumerate(rnd.sample(range(small_files), n)):
        p = f"{root}/s{i % 1000:03d}/f{i}"
        if not os.path.exists(p):
            continue
        if k % 2:
            os.unlink(p)
        else:
            os.rename(p, p + ".moved")
    return written


def timed(cmd):
    t = time.time()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.time() - t


def until_durable(pair, since):
    """Seconds from `since` until a resync started after it has ended: the
    primary connected with nothing dirty and everything durable on the peer."""
    wait(lambda: (s := pair.status(1)) and s["peer"] == "connected" and s["dirty_bytes"] == 0
         and s["durable"] >= s["sent"] and not s["resync"]["running"]
         and s["resync"]["started_unix_ms"] / 1000 >= since - 0.01, "resync", step=0.05)
    return time.time() - since


def log_writer(d, seconds):
    """4 KiB writes into a preallocated log, fdatasync after each (a database's
    write-ahead log): fdatasync p50, p99 in us."""
    log = f"{d}/dblog0.0.0"
    if not os.path.exists(log):
        with open(log, "wb") as f:
            for _ in range(256):
                f.write(b"\0" * (1 << 20))
            f.flush()
            os.fdatasync(f.fileno())
    j = fio(d, "dblog", ["--rw=write", "--bs=4k", "--size=256M", "--fdatasync=1",
                         f"--runtime={seconds}", "--time_based"])
    p = j["sync"]["lat_ns"]["percentile"]
    return p["50.000000"] / 1000, p["99.000000"] / 1000


def sent(pair):
    """Bytes the resync shipped so far; a status that cannot be read is read
    again (it once counted as 0, and a rate came out negative)."""
    for _ in range(50):
        s = pair.status(1)
        if s:
            return s["resync"]["bytes_sent"]
        time.sleep(0.1)
    raise SystemExit("node 1 gives no status")


def empty_peer(pair, total):
    """Node 2 stopped, its copy emptied, started again and asked for a full sync:
    the whole tree (`total` bytes) resynchronises; returns once it began."""
    pair.kill(2)
    # Moved aside, not removed: ext4 skips the inodes it freed in the last
    # seconds when it makes new ones, reading each of them, so 100,000 files
    # created just after 100,000 were removed take seconds each thousand
    # (the SECOND's applier then reads nothing from the link for 5 s).
    os.rename(pair.dir(2), f"{pair.tmp}/node2-old")
    os.mkdir(pair.dir(2))
    pair.start(2)
    wait(pair.caught_up, "node 2 back")
    pair.tandem(2, "second", "app", "--fullsync")
    # The full sync's own resync (node 2 back with its old state first
    # resyncs what it missed).
    wait(lambda: (s := pair.status(1)) and s["resync"]["running"] and s["resync"]["bytes_total"] >= total // 2,
         "the full sync started", timeout=600)


def writer_during(pair, src, seconds, total):
    """The log writer for `seconds` while node 1 resyncs the whole tree, its
    status sampled every 0.2 s: fdatasync p50, p99 (us), the rate the resync
    shipped over the spans in which it yielded (MiB/s), and the samples."""
    t0 = time.time()
    yielding, trace = [], []

    def watch(until):
        last = None
        while time.time() < until:
            s, at = pair.status(1), time.time()
            r = s["resync"] if s else {}
            state = r.get("state", "-") if s else "?"
            if s:
                trace.append(f"{at - t0:.1f}:{r['bytes_sent'] >> 20}M/{r['files_done']}f/{state[:1]}")
            now = (at, r["bytes_sent"]) if state == "yielding" and r["bytes_total"] >= total // 2 else None
            if last and now:
                yielding.append((now[0] - last[0], now[1] - last[1]))
            last = now
            time.sleep(0.2)
    watcher = threading.Thread(target=watch, args=(t0 + seconds,))
    watcher.start()
    p50, p99 = log_writer(src, seconds)
    watcher.join()
    secs = sum(d for d, _ in yielding)
    return p50, p99, sum(b for _, b in yielding) / max(secs, 0.001) / (1 << 20), " ".join(trace)


def one_run(args, run, fig):
    pair = Pair(args.base)
    try:
        src = pair.dir(1)
        make_tree(src, args.big_mib, args.big_files, args.small_files, seed=run + 1)
        total = tree_bytes(src)
        cache_mib = (2 * total >> 20) + 512
        old = f"{pair.tmp}/old"
        # Anchors: cp -a (kept: the old tree for the resync's anchor), rsync -a.
        fresh_caches(cache_mib)
        t0 = time.time()
        subprocess.run(["cp", "-a", src, old], check=True)
        subprocess.run(["sync", "-f", old], check=True)
        fig["cp -a"].append(time.time() - t0)
        target = f"{pair.tmp}/rsync-target"
        fresh_caches(cache_mib)
        t0 = time.time()
        subprocess.run(["rsync", "-a", src + "/", target + "/"], check=True)
        subprocess.run(["sync", "-f", target], check=True)
        fig["rsync -a"].append(time.time() - t0)
        shutil.rmtree(target)

        pair.start(2)
        pair.start(1)
        wait(pair.caught_up, "connected")
        # The writer's baseline: the peer current, nothing else going on.
        p50, p99 = log_writer(src, args.writer_s)
        fig["writer p50 alone"].append(p50)
        fig["writer p99 alone"].append(p99)

        fresh_caches(cache_mib)
        t0 = time.time()
        pair.tandem(2, "second", "app", "--fullsync")
        fig["full sync"].append(until_durable(pair, t0))
        print(f"  run {run + 1}: {total / (1 << 30):.2f} GiB; cp -a {fig['cp -a'][-1]:.1f} s, "
              f"rsync -a {fig['rsync -a'][-1]:.1f} s, full sync {fig['full sync'][-1]:.1f} s", flush=True)

        pair.kill(2)
        written = change_one_percent(src, total, args.big_files, args.small_files, seed=run + 7)
        fresh_caches(cache_mib)
        pair.start(2)
        wait(lambda: (s := pair.status(1)) and s["resync"]["running"] or pair.caught_up(), "resync",
             step=0.005)
        st = pair.status(1)["resync"]
        fig["resync 1%"].append(until_durable(pair, st["started_unix_ms"] / 1000))
        fresh_caches(cache_mib)
        pair.stop(1)
        t0 = time.time()
        subprocess.run(["rsync", "-a", "--delete", "--inplace", "--no-whole-file", src + "/", old + "/"],
                       check=True, capture_output=True)
        subprocess.run(["sync", "-f", old], check=True)
        fig["rsync 1%"].append(time.time() - t0)
        shutil.rmtree(old)
        print(f"  run {run + 1}: 1% ({written >> 20} MiB written): resync {fig['resync 1%'][-1]:.2f} s, "
              f"rsync {fig['rsync 1%'][-1]:.2f} s", flush=True)
        pair.start(1)
        wait(pair.caught_up, "connected again")

        # The writer while the whole tree resynchronises to an emptied peer:
        # in its names pass (100,000 names made on the peer, no bytes), then
        # in its data pass.
        empty_peer(pair, total)
        p50, p99, _, trace = writer_during(pair, src, min(5, args.writer_s), total)
        fig["writer p50 names pass"].append(p50)
        fig["writer p99 names pass"].append(p99)
        if args.verbose:
            print(f"  names pass: seconds:MiB shipped/files done/state: {trace}", flush=True)
        if pair.status(1)["resync"]["bytes_sent"] > 0:
            print(f"  run {run + 1}: the names pass ended before the writer did", flush=True)
        wait(lambda: (s := pair.status(1)) and s["resync"]["bytes_sent"] > 0, "the data pass", timeout=600)
        b0 = sent(pair)
        p50, p99, rate, trace = writer_during(pair, src, args.writer_s, total)
        if args.verbose:
            print(f"  data pass: seconds:MiB shipped/files done/state: {trace}", flush=True)
        shipped_w = sent(pair) - b0
        fig["resync rate while writing"].append(rate)
        fig["writer p50 during resync"].append(p50)
        fig["writer p99 during resync"].append(p99)
        if not pair.status(1)["resync"]["running"]:
            # Too small a tree: the writer's figures are of a resync that ended.
            print(f"  run {run + 1}: the resync ended before the writer did: its figures are left "
                  "out (use a bigger tree)", flush=True)
            if args.verbose:
                with open(f"{pair.tmp}/daemon1.log") as f:
                    print("".join(l for l in f.readlines()[-12:]), flush=True)
            for k in ("resync rate while writing", "writer p50 during resync", "writer p99 during resync"):
                fig[k].pop()
        # The cap, set on the running resync.
        cap = 50 << 20
        pair.tandem(1, "resync", "app", "--rate", "50MiB", check=False)
        time.sleep(1)
        b0, t0 = sent(pair), time.time()
        time.sleep(10)
        running = pair.status(1)["resync"]["running"]
        if running:
            fig["capped rate / cap"].append((sent(pair) - b0) / (time.time() - t0) / cap)
            pair.tandem(1, "resync", "app", "--rate", "0", check=False)
        else:
            print(f"  run {run + 1}: the resync ended within the capped 10 s: left out", flush=True)
        until_durable(pair, 0)
        print(f"  run {run + 1}: writer p99 {fig['writer p99 alone'][-1]:.0f} us alone, "
              f"{p99:.0f} us during the resync ({shipped_w >> 20} MiB shipped meanwhile)", flush=True)
        return total
    finally:
        pair.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--base", default="/var/tmp")
    ap.add_argument("--big-mib", type=int, default=3072)
    ap.add_argument("--big-files", type=int, default=3)
    ap.add_argument("--small-files", type=int, default=100_000)
    ap.add_argument("--writer-s", type=int, default=10)
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the benchmark mounts file systems and drops caches")
    for tool in ("fio", "rsync"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: run scripts/install-deps.sh")
    fig = {k: [] for k in ["cp -a", "rsync -a", "full sync", "resync 1%", "rsync 1%",
                           "writer p50 alone", "writer p99 alone", "writer p50 during resync",
                           "writer p99 during resync", "resync rate while writing", "capped rate / cap",
                           "writer p50 names pass", "writer p99 names pass"]}
    started = time.time()
    total = 0
    for run in range(args.runs):
        total = one_run(args, run, fig)
    nan = float("nan")
    med = {k: statistics.median(v) if v else nan for k, v in fig.items()}

    def ratios(a, b):
        r = [x / y for x, y in zip(fig[a], fig[b])]
        return statistics.median(r) if r else nan

    size = f"{total / (1 << 30):.1f} GiB"
    rows = [
        (f"full sync of {size} to an empty peer", f"cp -a + sync {med['cp -a']:.1f} s",
         f"{med['full sync']:.1f} s", f"{ratios('cp -a', 'full sync'):.2f}x cp -a", ">= 0.8x"),
        ("", f"rsync -a + sync {med['rsync -a']:.1f} s", "",
         f"{ratios('rsync -a', 'full sync'):.2f}x rsync", ">= 2x"),
        (f"resync of 1% of {size}", f"rsync + sync {med['rsync 1%']:.2f} s", f"{med['resync 1%']:.2f} s",
         f"{ratios('rsync 1%', 'resync 1%'):.1f}x faster", ">= 20x"),
        ("log writer's fdatasync p50 in a full sync's names pass", f"peer current {med['writer p50 alone']:.0f} us",
         f"{med['writer p50 names pass']:.0f} us",
         f"{ratios('writer p50 names pass', 'writer p50 alone'):.2f}", "info"),
        ("log writer's fdatasync p99 in a full sync's names pass", f"peer current {med['writer p99 alone']:.0f} us",
         f"{med['writer p99 names pass']:.0f} us",
         f"{ratios('writer p99 names pass', 'writer p99 alone'):.2f}", "<= 2x"),
        ("log writer's fdatasync p50 in its data pass", f"peer current {med['writer p50 alone']:.0f} us",
         f"{med['writer p50 during resync']:.0f} us",
         f"{ratios('writer p50 during resync', 'writer p50 alone'):.2f}", "info"),
        ("log writer's fdatasync p99 in its data pass", f"peer current {med['writer p99 alone']:.0f} us",
         f"{med['writer p99 during resync']:.0f} us",
         f"{ratios('writer p99 during resync', 'writer p99 alone'):.2f}", "<= 2x"),
        ("resync rate while the writer runs (data pass)", "-", f"{med['resync rate while writing']:.1f} MiB/s", "-",
         ">= 12 MiB/s (resync_min_rate)"),
        ("resync rate capped at 50 MiB/s", "50 MiB/s", f"{50 * med['capped rate / cap']:.1f} MiB/s",
         f"{med['capped rate / cap']:.3f}", "0.9 - 1.1"),
    ]
    print(f"\n{args.runs} runs, medians of per-run ratios, {(time.time() - started) / 60:.1f} min\n")
    print("| benchmark | anchor (median) | tandem (median) | ratio | target |\n|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
