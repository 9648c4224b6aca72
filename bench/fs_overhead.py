#!/usr/bin/env python3
"""fio through a tandem mount vs the same kind of directory bare, in one run.

Three workloads, each run --runs times alternating bare / mounted, medians reported:
  seqwrite   1 MiB sequential writes, buffered, fsync at the end   -> MiB/s
  randread   4 KiB random reads (buffered and O_DIRECT)             -> IOPS
  syncwrite  4 KiB writes each followed by fdatasync, overwriting a file
             written in full first                                  -> p50 latency

Targets for the intercepting mount: seqwrite >= 70% of bare, randread >= 50% of bare,
syncwrite p50 <= 1.5x bare. Usage: sudo bench/fs_overhead.py [--runs 5] [--size-mib 1024]
"""
import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import fresh_caches

TANDEM = os.environ.get("TANDEM_BIN", "/var/tmp/tandem-target/release/tandem")


def is_mounted(d):
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == d and " - fuse tandem " in line for line in f)


def mount(d, extra):
    p = subprocess.Popen([TANDEM, "mount", *extra, d], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    for _ in range(200):
        if is_mounted(d):
            return p
        time.sleep(0.05)
    p.kill()
    raise SystemExit(f"tandem mount {d} did not come up: {p.stderr.read().decode()}")


def unmount(p):
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=60)


def fio(d, name, args):
    out = subprocess.run(
        ["fio", "--output-format=json", f"--name={name}", f"--directory={d}", "--ioengine=psync", *args],
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out[out.index("{"):])["jobs"][0]


def workloads(size_mib, runtime):
    size = f"--size={size_mib}M"
    rr = f"--size={min(size_mib, 512)}M"
    return {
        "seqwrite MiB/s": (
            ["--rw=write", "--bs=1M", size, "--end_fsync=1"],
            lambda j: j["write"]["bw_bytes"] / 2**20, "higher"),
        # fio drops the file's cached pages first; through the mount that drops only
        # the mount's cache, so this compares a cold bare read with a warm real file.
        "randread buffered IOPS": (
            ["--rw=randread", "--bs=4k", rr, f"--runtime={runtime}", "--time_based"],
            lambda j: j["read"]["iops"], "higher"),
        # Both sides fully cached: what the mount costs a read served from memory.
        "randread warm IOPS": (
            ["--rw=randread", "--bs=4k", rr, f"--runtime={runtime}", "--time_based",
             "--invalidate=0", "--pre_read=1"],
            lambda j: j["read"]["iops"], "higher"),
        "randread O_DIRECT IOPS": (
            ["--rw=randread", "--bs=4k", rr, f"--runtime={runtime}", "--time_based", "--direct=1"],
            lambda j: j["read"]["iops"], "higher"),
        # The file is written in full first (--overwrite=1, not timed): the first
        # write to a block of a new file also converts its extent, which makes
        # that fdatasync about twice as slow, and in a timed run the slower side
        # would spend a larger share of its run on such writes, so its median
        # could land in the slow mode for that reason alone.
        "write+fdatasync p50 us": (
            ["--rw=randwrite", "--bs=4k", "--size=64M", "--fdatasync=1", "--overwrite=1",
             f"--runtime={runtime}", "--time_based"],
            lambda j: (j["write"]["clat_ns"]["percentile"]["50.000000"] + j["sync"]["lat_ns"]["percentile"]["50.000000"]) / 1000,
            "lower"),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runtime", type=int, default=8)
    ap.add_argument("--base", default="/var/tmp")
    ap.add_argument("--cached-writes", action="store_true", help="mount with --cached-writes")
    ap.add_argument("--only", help="run only the workloads whose name contains this")
    ap.add_argument("--mount-arg", action="append", default=[], help="extra argument for tandem mount")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the benchmark mounts a file system and drops caches")
    if not shutil.which("fio"):
        raise SystemExit("fio is missing: run scripts/install-deps.sh")
    extra = (["--cached-writes"] if args.cached_writes else []) + args.mount_arg
    results = {}
    for name, (fargs, metric, better) in workloads(args.size_mib, args.runtime).items():
        if args.only and args.only not in name:
            continue
        bare_v, tandem_v = [], []
        for r in range(args.runs):
            for kind in ("bare", "tandem"):
                d = tempfile.mkdtemp(prefix=f"tandem-bench-{kind}-", dir=args.base)
                p = mount(d, extra) if kind == "tandem" else None
                try:
                    fresh_caches(args.size_mib + 64)
                    job = fio(d, name.split()[0], fargs)
                    (bare_v if kind == "bare" else tandem_v).append(metric(job))
                finally:
                    if p:
                        unmount(p)
                    shutil.rmtree(d)
        b, t = statistics.median(bare_v), statistics.median(tandem_v)
        ratio = t / b
        results[name] = (b, t, ratio, better, bare_v, tandem_v)
        print(f"{name:26} bare {b:12.1f}  tandem {t:12.1f}  ratio {ratio:5.2f}", flush=True)
    print()
    print("| workload | bare (median) | tandem (median) | tandem / bare | target |")
    print("|---|---|---|---|---|")
    targets = {"seqwrite MiB/s": ">= 0.70", "randread buffered IOPS": ">= 0.50",
               "randread warm IOPS": ">= 0.50",
               "randread O_DIRECT IOPS": ">= 0.50", "write+fdatasync p50 us": "<= 1.50"}
    for name, (b, t, ratio, _, _, _) in results.items():
        print(f"| {name} | {b:.1f} | {t:.1f} | {ratio:.2f} | {targets[name]} |")
    print(f"\n{args.runs} runs each, alternating bare and tandem; size {args.size_mib} MiB; "
          f"writes {'cached' if args.cached_writes else 'uncached (default)'}")


if __name__ == "__main__":
    main()
