#!/usr/bin/env python3
"""Memory of a full sync to an empty peer: the first sync of a tree of many small
files (one directory per 1,000 files of 100 bytes) from node 1 to an emptied node 2,
with both daemons' highest RSS (VmHWM) and their RSS once it ended, and the time it
took. The anchor is the same run of another tandem binary (`--anchor`, e.g. the
previous release), each on a tree of its own. The time depends on the disk's state
(ext4 makes files slowly right after the previous run removed 600,000): swap the
two to see it; the memory does not.

Usage: sudo bench/fullsync_memory.py [--files 300000] [--anchor /path/to/tandem]
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import replication  # noqa: E402
from replication import Pair, wait  # noqa: E402
from resync import until_durable  # noqa: E402


def kib(pair, n, key):
    for line in open(f"/proc/{pair.procs[n].pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} of node {n} not found")


def run(binary, files):
    replication.TANDEM = binary
    pair = Pair("/var/tmp")
    try:
        src = pair.dir(1)
        for i in range(files):
            if i % 1000 == 0:
                d = f"{src}/d{i // 1000:05d}"
                os.mkdir(d)
            with open(f"{d}/f{i}", "wb") as f:
                f.write(b"x" * 100)
        pair.start(2)
        pair.start(1)
        wait(pair.caught_up, "connected")
        t = time.time()
        pair.tandem(2, "second", "app", "--fullsync")
        took = until_durable(pair, t)
        time.sleep(2)
        return {
            "seconds": took,
            "peak": (kib(pair, 1, "VmHWM"), kib(pair, 2, "VmHWM")),
            "after": (kib(pair, 1, "VmRSS"), kib(pair, 2, "VmRSS")),
        }
    finally:
        pair.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=300_000)
    ap.add_argument("--anchor", help="another tandem binary, measured in the same run")
    args = ap.parse_args()
    runs = [("tandem", replication.TANDEM)]
    if args.anchor:
        runs.insert(0, ("anchor", args.anchor))
    print(f"full sync of {args.files:,} files of 100 bytes to an empty peer")
    print("| binary | time | highest RSS, node 1 / node 2 | RSS after, node 1 / node 2 |")
    print("|---|---|---|---|")
    for i, (name, binary) in enumerate(runs):
        if i:
            os.sync()
            time.sleep(10)
        r = run(binary, args.files)
        print(f"| {name} | {r['seconds']:.1f} s | {r['peak'][0] >> 10} / {r['peak'][1] >> 10} MiB "
              f"| {r['after'][0] >> 10} / {r['after'][1] >> 10} MiB |", flush=True)


if __name__ == "__main__":
    main()
