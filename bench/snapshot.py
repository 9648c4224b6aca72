#!/usr/bin/env python3
"""Snapshot benchmarks: two tandem daemons on loopback (node1 127.0.0.1 serving,
node2 127.0.0.2 its SECOND, ack = "durable"), the workloads written through
node1's mount, each figure printed beside its reference measured in the same run.

Snapshots are taken with `tandem snapshot create` (on node2 with `--on node2`)
between rounds of a workload, so every round is the first overwrite of its
ranges since the newest snapshot (what a snapshot costs most). With N held, the
N-1 older ones are taken first, each followed by a few overwrites of a side file
so that each holds something; then before every measured round a new one is
taken and after it the oldest is deleted: N are held throughout every round.

  log      a database log writer: 4 KiB records appended to an existing file,
           fdatasync after each (fdatasync latency p50, p99)
  pages    a database page writer: random 8 KiB overwrites of an existing
           256 MiB file, fdatasync every 16 writes (MiB/s, fdatasync p50, p99)
  seq      1 MiB sequential writes overwriting an existing file, fdatasync at
           the end of each round (MiB/s)
           all three with 0 snapshots (twice: the second is the noise of the
           run), 1 and 24 held on the serving node, 1 and 24 held on the
           SECOND, the one the SECOND takes by itself before a resync (node2
           stopped and started again; nobody took any), and 0 again once all
           were deleted; the same workloads on the bare disk are the anchor
  bytes    bytes the held snapshots keep (`snapshot list --json`, summed)
           against the bytes first overwritten since each of them; the data
           is random, so compression does not flatter; the store's size on
           disk beside them
  restore  `tandem snapshot restore` of a 1 GiB tree (4 large files, 8192 of
           32 KiB; 1% overwritten after the snapshot) against `cp -a` of the
           same tree on the same disk, caches dropped before each: from a store
           nothing was ever deleted from (a module of its own), and right after
           deleting a snapshot that held many small captures
  lvm      where the kernel has dm-snapshot: the same workloads on ext4 on an
           LVM volume of a loop device, with 0, 1 and 24 classic LVM snapshots
           (lvm2 installed with apt-get if missing, and said so); skipped, with
           the reason, where it has not

Targets: 0 held: no measurable cost (0 again against the first 0: within the
run's own noise, the largest deviation of the two back-to-back 0 runs, at least
5%); 1 held: fdatasync p50 <= 1.3x and MiB/s >= 0.7x of the same run with 0;
bytes kept <= 1.1x the bytes first overwritten; restore at least as fast as
cp -a. Ratios are medians of the per-run ratios; values medians over runs.

On a virtual machine a halted vCPU can take milliseconds to wake for an I/O
completion (here ~4 ms against ~0.13 ms for an fdatasync); the benchmark
prints both and by default keeps the CPUs awake with SCHED_IDLE busy loops,
which run only when nothing else wants a CPU (--let-cpus-idle: without).

Usage: sudo TANDEM_BIN=.../tandem bench/snapshot.py [--runs 3] [--quick]
       [--base /var/tmp] [--verbose] [--let-cpus-idle]
Not part of CI; about 20 minutes with --runs 3 on two cores, --quick about 2.
Everything it creates (daemons, mounts, busy loops, loop devices, volume
groups, temporary directories) is removed at the end, on failure and on Ctrl-C.
"""
import argparse
import collections
import gzip
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import drop_caches  # noqa: E402

TANDEM = os.environ.get("TANDEM_BIN", "/var/tmp/tandem-target/release/tandem")
MIB = 1 << 20
PAGE = 8192
RECORD = 4096

# Random bytes the writes take their data from, at random offsets: nothing
# written or overwritten compresses.
POOL = b""


def pool(rnd, n):
    off = rnd.randrange(0, len(POOL) - n)
    return memoryview(POOL)[off:off + n]


def pct(xs, q):
    s = sorted(xs)
    return s[min(len(s) - 1, int(q / 100 * len(s)))]


# --- clean-up of everything the benchmark starts or creates -----------------

CLEANUP = []


def on_cleanup(f):
    CLEANUP.append(f)
    return f


def run_cleanup():
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while CLEANUP:
        f = CLEANUP.pop()
        try:
            f()
        except Exception as e:  # noqa: BLE001 — the rest must still run
            print(f"clean-up: {e}", file=sys.stderr)


def interrupted(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def mounts_under(path):
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].replace("\\040", " ")
            if mp == path or mp.startswith(path.rstrip("/") + "/"):
                out.append(mp)
    return out


def unmount_under(path):
    for mp in sorted(mounts_under(path), key=len, reverse=True):
        subprocess.run(["umount", "-l", mp], capture_output=True)


# "app" takes the workloads; "tree" holds the tree restored from a store
# that never had anything deleted.
MODULES = ("app", "tree")

START = """#!/bin/sh
exit 0
"""


def free_port():
    """A port free for TCP and UDP on both nodes' addresses."""
    while True:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.2", 0))
        port = s.getsockname()[1]
        s.close()
        ok = True
        for addr in ("127.0.0.1", "127.0.0.2"):
            for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                t = socket.socket(socket.AF_INET, kind)
                try:
                    t.bind((addr, port))
                except OSError:
                    ok = False
                t.close()
        if ok:
            return port


def wait(cond, what, timeout=120, step=0.02):
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return
        time.sleep(step)
    raise RuntimeError(f"timed out waiting for {what}")


class Cluster:
    """Two cluster daemons on loopback (node1 127.0.0.1, node2 127.0.0.2),
    ack = "durable"; node1 serves. Stopped, unmounted and removed on any exit."""

    def __init__(self, base):
        self.tmp = tempfile.mkdtemp(prefix="tandem-bench-snap-", dir=base)
        self.closed = False
        self.procs = {}
        on_cleanup(self.close)
        hb, rep = free_port(), free_port()
        lb = {(n, m): free_port() for n in (1, 2) for m in MODULES}
        with open(f"{self.tmp}/start.sh", "w") as f:
            f.write(START)
        os.chmod(f"{self.tmp}/start.sh", 0o755)
        for n in (1, 2):
            modules = ""
            for m in MODULES:
                os.makedirs(f"{self.tmp}/node{n}/{m}")
                modules += f"""
[[module]]
name = "{m}"
dirs = ["{self.tmp}/node{n}/{m}"]
ack = "durable"
failover = "lb"
lb_port = {lb[(n, m)]}
[module.scripts]
start_prim = "{self.tmp}/start.sh"
stop_prim = "{self.tmp}/start.sh"
"""
            with open(self.config(n), "w") as f:
                f.write(f"""
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
[replication]
port = {rep}
[daemon]
socket = "{self.tmp}/n{n}.sock"
state_dir = "{self.tmp}/state{n}"
tls_dir = "{self.tmp}/tls"
[api]
enabled = false
{modules}""")
        subprocess.run([TANDEM, "-c", self.config(1), "init"], check=True, capture_output=True)

    def config(self, n):
        return f"{self.tmp}/n{n}.toml"

    def spawn(self, n):
        log = open(f"{self.tmp}/daemon{n}.log", "a")
        self.procs[n] = subprocess.Popen([TANDEM, "-c", self.config(n), "daemon", "--node", f"node{n}"],
                                         stdout=subprocess.DEVNULL, stderr=log)
        log.close()

    def status(self, n):
        r = subprocess.run([TANDEM, "-c", self.config(n), "status", "--json"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            return None
        mods = {m["name"]: m for m in json.loads(r.stdout).get("modules") or []}
        return mods if set(mods) == set(MODULES) else None

    def states(self, n):
        s = self.status(n)
        return {m["state"] for m in s.values()} if s else set()

    def start(self):
        self.spawn(1)
        self.spawn(2)
        try:
            wait(lambda: self.states(1) == {"PRIM"} and self.states(2) == {"SECOND"},
                 "node1 PRIM, node2 SECOND")
        except RuntimeError as e:
            raise RuntimeError(f"{e}\n{self.log_tail()}") from None
        self.caught_up()

    def restart_second(self, meanwhile):
        """node2 stopped, `meanwhile` run, node2 started again and resynchronised."""
        p = self.procs.pop(2)
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=60)
        wait(lambda: self.states(1) == {"ALONE"}, "node1 alone")
        meanwhile()
        self.spawn(2)
        try:
            wait(lambda: self.states(1) == {"PRIM"} and self.states(2) == {"SECOND"},
                 "node2 back as SECOND")
        except RuntimeError as e:
            raise RuntimeError(f"{e}\n{self.log_tail()}") from None
        self.caught_up()

    def in_step(self):
        s = self.status(1)
        if not s:
            return False
        return all(m["replication"]["peer"] == "connected"
                   and m["replication"]["durable"] >= m["replication"]["sent"] for m in s.values())

    def caught_up(self):
        wait(self.in_step, "node2 caught up", timeout=600)

    def dir(self, module="app"):
        return f"{self.tmp}/node1/{module}"

    def tandem(self, *args, on=None, node=1):
        a = (["--on", on] if on else []) + list(args)
        r = subprocess.run([TANDEM, "-c", self.config(node), *a], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"tandem {' '.join(a)}: {r.stderr.strip()}\n"
                               f"{self.log_tail()}")
        return r.stdout

    def log_tail(self):
        out = []
        for n in (1, 2):
            try:
                with open(f"{self.tmp}/daemon{n}.log") as f:
                    out.append(f"daemon{n}.log: " + "".join(f.readlines()[-5:]))
            except OSError:
                pass
        return "\n".join(out)

    def snapshots(self, node, module="app"):
        return json.loads(self.tandem("snapshot", "list", module, "--json", node=node) or "[]")

    def store_bytes(self, node, module="app"):
        """The snapshot store's size on disk (RocksDB files)."""
        d = f"{self.tmp}/state{node}/modules/{module}/snapshots"
        total = 0
        for root, _, files in os.walk(d):
            for f in files:
                try:
                    total += os.stat(os.path.join(root, f)).st_blocks * 512
                except FileNotFoundError:
                    pass
        return total

    def close(self):
        if self.closed:
            return
        self.closed = True
        # The SECOND first: the serving node then stops without waiting for it.
        for n in (2, 1):
            p = self.procs.pop(n, None)
            if p is None:
                continue
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        unmount_under(self.tmp)
        shutil.rmtree(self.tmp, ignore_errors=True)


def tmpdir(base, prefix):
    d = tempfile.mkdtemp(prefix=prefix, dir=base)
    on_cleanup(lambda: (unmount_under(d), shutil.rmtree(d, ignore_errors=True)))
    return d


class Awake:
    """One busy loop per CPU at SCHED_IDLE priority: it runs only when nothing
    else wants the CPU, so no CPU halts. On a virtual machine a halted vCPU can
    take milliseconds to wake for an I/O completion, which then dominates every
    fdatasync (see `probe`)."""

    def __init__(self):
        self.procs = []

    def start(self):
        for _ in range(os.cpu_count() or 1):
            self.procs.append(subprocess.Popen(["chrt", "-i", "0", "sh", "-c", "while :; do :; done"]))
        on_cleanup(self.stop)

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        self.procs = []


def probe(base):
    """fdatasync p50 of 4 KiB appends on the bare disk, in us."""
    d = tmpdir(base, "tandem-bench-probe-")
    fd = os.open(f"{d}/log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        return pct(log_round(fd, 200, random.Random(0)), 50)
    finally:
        os.close(fd)
        shutil.rmtree(d, ignore_errors=True)


# --- workloads ---------------------------------------------------------------

def fill(path, size, rnd):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        off = 0
        while off < size:
            n = min(MIB, size - off)
            os.pwrite(fd, pool(rnd, n), off)
            off += n
        os.fsync(fd)
    finally:
        os.close(fd)


class Files:
    """The files a set of rounds writes into, in directory `d`."""

    def __init__(self, d, sizes, rnd):
        self.d, self.sizes = d, sizes
        fill(f"{d}/pages.db", sizes.page, rnd)
        fill(f"{d}/seq.dat", sizes.seq, rnd)
        fill(f"{d}/side.dat", sizes.side, rnd)

    def open(self, name):
        return os.open(f"{self.d}/{name}", os.O_WRONLY)


def log_round(fd, n, rnd):
    """n records appended, each followed by fdatasync: its latencies in us."""
    lat = []
    for _ in range(n):
        os.write(fd, pool(rnd, RECORD))
        t = time.perf_counter_ns()
        os.fdatasync(fd)
        lat.append((time.perf_counter_ns() - t) / 1000)
    return lat


def page_round(fd, slots, rnd):
    """8 KiB overwrites at `slots`, fdatasync every 16: (seconds, fdatasync latencies)."""
    lat = []
    t0 = time.perf_counter()
    for i, s in enumerate(slots):
        os.pwrite(fd, pool(rnd, PAGE), s * PAGE)
        if i % 16 == 15:
            t = time.perf_counter_ns()
            os.fdatasync(fd)
            lat.append((time.perf_counter_ns() - t) / 1000)
    if len(slots) % 16:
        os.fdatasync(fd)
    return time.perf_counter() - t0, lat


def seq_round(fd, start, n, rnd):
    """n MiB overwritten from MiB `start`, then fdatasync: seconds."""
    t0 = time.perf_counter()
    for i in range(n):
        os.pwrite(fd, pool(rnd, MIB), (start + i) * MIB)
    os.fdatasync(fd)
    return time.perf_counter() - t0


class Held:
    """The snapshots held for one condition on one node, rotated between rounds."""

    def __init__(self, make, drop, kept_bytes=None):
        self.make, self.drop, self.kept_bytes = make, drop, kept_bytes
        self.names = collections.deque()
        self.first = {}  # name -> bytes first overwritten while it was the newest
        self.n = 0

    def take(self, tag):
        self.n += 1
        name = f"{tag}-{self.n}"
        self.make(name)
        self.names.append(name)
        self.first[name] = 0
        return name

    def overwrote(self, nbytes):
        if self.names:
            self.first[self.names[-1]] += nbytes

    def drop_oldest(self):
        self.drop(self.names.popleft())

    def clear(self):
        while self.names:
            self.drop_oldest()


def workloads(d, files, sizes, rnd, held, count, tag):
    """The three workloads, `sizes.rounds` rounds each, with `count` snapshots
    held (by `held`) during every round. Returns the figures."""
    r = sizes.rounds
    side = list(range(sizes.side // PAGE))
    rnd.shuffle(side)
    slots = list(range(sizes.page // PAGE))
    rnd.shuffle(slots)
    per_round = sizes.page_writes
    assert per_round * r <= len(slots)
    seq_mib = sizes.seq // MIB // r
    log = f"{d}/log-{tag}"
    with open(log, "wb") as f:
        f.write(pool(rnd, RECORD))
        os.fsync(f.fileno())
    fds = {"log": os.open(log, os.O_WRONLY | os.O_APPEND), "pages": files.open("pages.db"),
           "seq": files.open("seq.dat"), "side": files.open("side.dat")}
    try:
        # The older snapshots, each holding a few overwrites of the side file.
        for i in range(max(count - 1, 0)):
            held.take(tag)
            for s in side[i * 16:(i + 1) * 16]:
                os.pwrite(fds["side"], pool(rnd, PAGE), s * PAGE)
                held.overwrote(PAGE)
            os.fdatasync(fds["side"])

        def rounds(one):
            out = []
            for k in range(r):
                if count:
                    held.take(tag)
                out.append(one(k))
                if count and k < r - 1:
                    held.drop_oldest()
            return out

        log_lat = [x for lat in rounds(lambda k: log_round(fds["log"], sizes.records, rnd)) for x in lat]
        if count:
            held.drop_oldest()

        def pages(k):
            mine = slots[k * per_round:(k + 1) * per_round]
            res = page_round(fds["pages"], mine, rnd)
            held.overwrote(len(mine) * PAGE)
            return res

        page = rounds(pages)
        if count:
            held.drop_oldest()

        def seq(k):
            t = seq_round(fds["seq"], k * seq_mib, seq_mib, rnd)
            held.overwrote(seq_mib * MIB)
            return t

        seq_t = rounds(seq)
    finally:
        for fd in fds.values():
            os.close(fd)
    page_lat = [x for _, lat in page for x in lat]
    page_s = sum(t for t, _ in page)
    return {
        "log fdatasync p50 us": pct(log_lat, 50),
        "log fdatasync p99 us": pct(log_lat, 99),
        "pages MiB/s": per_round * r * PAGE / MIB / page_s,
        "pages fdatasync p50 us": pct(page_lat, 50),
        "pages fdatasync p99 us": pct(page_lat, 99),
        "seq MiB/s": seq_mib * r / sum(seq_t),
    }


# --- conditions on the cluster -------------------------------------------------

STARTED = "1 on the SECOND, its own"
CONDITIONS = [
    # name, node holding the snapshots, how many (rotated)
    ("0", None, 0),
    ("0, repeated", None, 0),
    ("1 on the serving node", 1, 1),
    ("24 on the serving node", 1, 24),
    ("1 on the SECOND", 2, 1),
    (STARTED, None, 0),
    ("24 on the SECOND", 2, 24),
    ("0 after all were deleted", None, 0),
]


def held_on(c, node):
    on = "node2" if node == 2 else None

    def make(name):
        c.tandem("snapshot", "create", "app", "--name", name, on=on)

    def drop(name):
        c.tandem("snapshot", "delete", "app", name, on=on)

    return Held(make, drop)


def clear_all(c, module="app"):
    """Deletes every snapshot of `module` on both nodes (the SECOND takes one
    before its first full sync); returns what was found."""
    found = []
    for node in (1, 2):
        for s in c.snapshots(node, module):
            name = s["name"]
            found.append((module, node, name, s.get("kind"), s.get("bytes", 0)))
            c.tandem("snapshot", "delete", module, name, node=node)
    return found


def bytes_check(c, held, node):
    """(bytes the held snapshots keep, bytes first overwritten since them, broken)."""
    listed = {s["name"]: s for s in c.snapshots(node)}
    kept = sum(listed[n]["bytes"] for n in held.names if n in listed)
    first = sum(held.first[n] for n in held.names)
    broken = [n for n in held.names if listed.get(n, {}).get("broken")]
    missing = [n for n in held.names if n not in listed]
    return kept, first, broken + [f"{m} (missing)" for m in missing]


def restore_tree(src, sizes, rnd):
    """A few large files and many small ones, `sizes.tree` bytes in all."""
    big_total = sizes.tree * 3 // 4
    for i in range(sizes.big_files):
        fill(f"{src}/big{i}.dat", big_total // sizes.big_files, rnd)
    small_total = sizes.tree - big_total
    n = small_total // sizes.small_size
    for i in range(n):
        d = f"{src}/d{i % 64:02d}"
        os.makedirs(d, exist_ok=True)
        with open(f"{d}/f{i}", "wb") as f:
            f.write(pool(rnd, sizes.small_size))
    return n


def change_one_percent(tree, sizes, rnd):
    """1% of the tree overwritten through the mount: 4 KiB writes into the
    large files, small files rewritten."""
    budget = sizes.tree // 100
    with open(f"{tree}/big0.dat", "r+b") as f:
        size = os.fstat(f.fileno()).st_size
        for _ in range(budget // 2 // 4096):
            f.seek(rnd.randrange(size // 4096) * 4096)
            f.write(pool(rnd, 4096))
    n = budget // 2 // sizes.small_size
    small = (sizes.tree - sizes.tree * 3 // 4) // sizes.small_size
    for i in rnd.sample(range(small), n):
        with open(f"{tree}/d{i % 64:02d}/f{i}", "r+b") as f:
            f.write(pool(rnd, sizes.small_size))


def same_tree(a, b):
    """Names, sizes and modes agree, and every byte (diff -r)."""
    def walk(root):
        out = {}
        for dp, dns, fns in os.walk(root):
            for n in dns + fns:
                p = os.path.join(dp, n)
                st = os.lstat(p)
                out[os.path.relpath(p, root)] = (st.st_mode, st.st_size if not os.path.isdir(p) else 0)
        return out
    wa, wb = walk(a), walk(b)
    if wa != wb:
        diff = sorted(set(wa.items()) ^ set(wb.items()))[:5]
        return f"trees differ: {diff}"
    r = subprocess.run(["diff", "-rq", "--no-dereference", a, b], capture_output=True, text=True)
    if r.returncode != 0:
        return f"contents differ: {(r.stdout + r.stderr).strip()[:300]}"
    return None


def restore_phase(c, module, src, sizes, run, base):
    """The tree copied into `module` through the mount, a snapshot, 1%
    overwritten, then the snapshot restored and `cp -a` of the same tree
    timed, caches dropped before each: (restore s, cp s, what the daemon said,
    or why the restore failed)."""
    rnd = random.Random(1000 + run)
    tree = f"{c.dir(module)}/tree"
    subprocess.run(["cp", "-a", src, tree], check=True)
    c.caught_up()
    c.tandem("snapshot", "create", module, "--name", "restore-base")
    change_one_percent(tree, sizes, rnd)
    c.caught_up()
    times, said = {}, ""
    out = tmpdir(base, "tandem-bench-restore-")
    for what in (["restore", "cp"] if run % 2 == 0 else ["cp", "restore"]):
        dest = f"{out}/{what}"
        drop_caches()
        t = time.perf_counter()
        if what == "restore":
            try:
                said = c.tandem("snapshot", "restore", module, "restore-base", "--to", dest).strip()
            except RuntimeError as e:
                said = str(e).splitlines()[0]
                times[what] = None
                continue
        else:
            subprocess.run(["cp", "-a", src, dest], check=True)
        times[what] = time.perf_counter() - t
    if times["restore"] is not None:
        # The snapshot's tree is the source tree (the 1% came after it).
        bad = same_tree(f"{out}/cp", f"{out}/restore/tree")
        if bad:
            raise RuntimeError(f"the restored tree is not the snapshot's: {bad}")
        c.tandem("snapshot", "delete", module, "restore-base")
    shutil.rmtree(out, ignore_errors=True)
    return times["restore"], times["cp"], said


def bench_cluster(args, sizes, run, src_tree):
    rnd = random.Random(run)
    res = {"figures": {}, "bytes": {}, "restore": {}, "found": []}
    c = Cluster(args.base)
    c.start()
    # Restore from a store that never had anything deleted.
    res["found"] += clear_all(c, "tree")
    res["restore"]["clean"] = restore_phase(c, "tree", src_tree, sizes, run, args.base)
    files = Files(c.dir(), sizes, rnd)
    c.caught_up()
    res["found"] += [("app", 2, s["name"], s["kind"], s["bytes"]) for s in c.snapshots(2)]
    for i, (name, node, count) in enumerate(CONDITIONS):
        if name == STARTED:
            # The SECOND away and back: before the resync it takes a snapshot
            # of its tree, and keeps it (no operator took any).
            clear_all(c)
            c.restart_second(lambda: open(f"{c.dir()}/while-away", "w").close())
            auto = [s["name"] for s in c.snapshots(2)]
            held = Held(None, None)
            held.names.extend(auto)
            held.first = {n: 0 for n in auto}
            res["auto"] = [(s["name"], s["kind"]) for s in c.snapshots(2)]
        else:
            clear_all(c)
            held = held_on(c, node) if node else Held(None, None)
        os.sync()
        time.sleep(1)
        res["figures"][name] = workloads(c.dir(), files, sizes, random.Random(run * 100 + i),
                                         held, count, f"c{i}")
        if held.names:
            c.caught_up()
            node = node or 2
            kept, first, broken = bytes_check(c, held, node)
            res["bytes"][name] = (kept, first, broken, c.store_bytes(node))
            if name != STARTED:
                held.clear()
        c.caught_up()
        if args.verbose:
            print(f"  run {run + 1} {name}: " + ", ".join(f"{k} {v:.1f}" for k, v in
                                                          res["figures"][name].items()), flush=True)
    # Restore right after a snapshot that held many small captures was
    # deleted (what it kept is then gone from the store, not yet compacted
    # away); the module holds only the tree (the workloads' files removed
    # through the mount).
    c.tandem("snapshot", "create", "app", "--name", "scratch")
    slots = list(range(sizes.page // PAGE))
    rnd.shuffle(slots)
    fd = files.open("pages.db")
    try:
        page_round(fd, slots[:sizes.page_writes * sizes.rounds], rnd)
    finally:
        os.close(fd)
    c.caught_up()
    c.tandem("snapshot", "delete", "app", "scratch")
    for name in os.listdir(c.dir()):
        os.unlink(f"{c.dir()}/{name}")
    res["restore"]["after"] = restore_phase(c, "app", src_tree, sizes, run, args.base)
    c.close()
    return res


def bench_bare(args, sizes, run):
    d = tmpdir(args.base, "tandem-bench-bare-")
    rnd = random.Random(run)
    files = Files(d, sizes, rnd)
    os.sync()
    fig = workloads(d, files, sizes, random.Random(run * 100 + 99), Held(None, None), 0, "bare")
    shutil.rmtree(d, ignore_errors=True)
    return fig


# --- LVM (dm-snapshot) comparison ----------------------------------------------

def kernel_config(opt):
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            for line in f:
                if line.startswith(opt + "=") or line.strip() == f"# {opt} is not set":
                    return line.strip()
    except OSError:
        pass
    return None


def dm_snapshot_missing():
    """None when dm-snapshot is usable, else why not."""
    def has_dm():
        # /dev/mapper/control may exist without a driver behind it.
        with open("/proc/misc") as f:
            return any(line.split()[1:] == ["device-mapper"] for line in f if line.strip())

    def has_snapshot_target():
        r = subprocess.run(["dmsetup", "targets"], capture_output=True, text=True)
        return r.returncode == 0 and any(l.split()[:1] == ["snapshot"] for l in r.stdout.splitlines())

    tried = []
    if shutil.which("modprobe"):
        for m in ("dm-mod", "dm-snapshot"):
            r = subprocess.run(["modprobe", m], capture_output=True, text=True)
            tried.append(f"modprobe {m}: " + ("ok" if r.returncode == 0 else r.stderr.strip() or "failed"))
    else:
        tried.append("no modprobe on this system")
    if not os.path.isdir(f"/lib/modules/{os.uname().release}"):
        tried.append(f"no /lib/modules/{os.uname().release}")
    if not has_dm():
        cfg = kernel_config("CONFIG_BLK_DEV_DM") or kernel_config("CONFIG_MD")
        return ("this kernel has no device-mapper (no device-mapper in /proc/misc"
                + (f"; /proc/config.gz: {cfg}" if cfg else "") + "; " + "; ".join(tried) + ")")
    if not shutil.which("dmsetup"):
        # lvm2 brings dmsetup; a missing snapshot target then fails the setup.
        return None
    if not has_snapshot_target():
        cfg = kernel_config("CONFIG_DM_SNAPSHOT")
        return ("device-mapper has no snapshot target (dmsetup targets"
                + (f"; /proc/config.gz: {cfg}" if cfg else "") + "; " + "; ".join(tried) + ")")
    return None


def lvm(*cmd):
    env = dict(os.environ, DM_DISABLE_UDEV="1", LVM_SUPPRESS_FD_WARNINGS="1")
    r = subprocess.run(list(cmd), capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")
    return r.stdout


def bench_lvm(args, sizes, run):
    """The page writer on ext4 on an LVM volume of a loop device, with 0, 1
    and 24 LVM snapshots held, rotated between rounds as tandem's are."""
    work = tmpdir(args.base, "tandem-bench-lvm-")
    vg = f"tbench{os.getpid()}r{run}"
    backing = f"{work}/disk.img"
    data_mib = (sizes.page + sizes.seq + sizes.side) // MIB + 256
    # A classic (dm-snapshot) snapshot receives a copy of every chunk first
    # written after it was taken, whichever snapshot is newer: each must hold
    # all that one condition overwrites.
    cow_mib = (sizes.page_writes * sizes.rounds * PAGE + sizes.seq + sizes.side) * 5 // 4 // MIB + 64
    with open(backing, "wb") as f:
        f.truncate((data_mib + 25 * cow_mib + 256) * MIB)
    loop = lvm("losetup", "-f", "--show", backing).strip()

    def teardown():
        unmount_under(work)
        subprocess.run(["vgchange", "-an", vg], capture_output=True,
                       env=dict(os.environ, DM_DISABLE_UDEV="1"))
        subprocess.run(["vgremove", "-f", "-y", vg], capture_output=True,
                       env=dict(os.environ, DM_DISABLE_UDEV="1"))
        subprocess.run(["pvremove", "-f", "-y", loop], capture_output=True,
                       env=dict(os.environ, DM_DISABLE_UDEV="1"))
        subprocess.run(["losetup", "-d", loop], capture_output=True)
    on_cleanup(teardown)
    lvm("pvcreate", "-y", "-ff", loop)
    lvm("vgcreate", "-y", vg, loop)
    lvm("lvcreate", "-y", "-Zn", "-L", f"{data_mib}M", "-n", "data", vg)
    dev = f"/dev/{vg}/data"
    if not os.path.exists(dev):
        lvm("vgmknodes", vg)
    lvm("mkfs.ext4", "-q", "-F", dev)
    mnt = f"{work}/mnt"
    os.makedirs(mnt)
    lvm("mount", dev, mnt)
    rnd = random.Random(run)
    files = Files(mnt, sizes, rnd)
    out = {}
    for i, count in enumerate((0, 1, 24)):
        def make(name):
            lvm("lvcreate", "-y", "-s", "-L", f"{cow_mib}M", "-n", name, f"{vg}/data")

        def drop(name):
            lvm("lvremove", "-f", "-y", f"{vg}/{name}")
        held = Held(make, drop)
        try:
            out[count] = workloads(mnt, files, sizes, random.Random(run * 100 + 50 + i), held, count, f"l{i}")
        finally:
            held.clear()
    unmount_under(work)
    return out


# --- report -----------------------------------------------------------------------

LOWER = {"log fdatasync p50 us", "log fdatasync p99 us", "pages fdatasync p50 us",
         "pages fdatasync p99 us"}
TARGET_1 = {"log fdatasync p50 us": 1.3, "pages fdatasync p50 us": 1.3,
            "pages MiB/s": 0.7, "seq MiB/s": 0.7}


def machine_user_cpu():
    """User CPU seconds of the whole machine so far (/proc/stat: user + nice)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    return (int(fields[1]) + int(fields[2])) / os.sysconf("SC_CLK_TCK")


def med(xs):
    return statistics.median(xs)


def main():
    global POOL
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="small sizes, for checking the script")
    ap.add_argument("--base", default="/var/tmp", help="where the clusters and trees go (one disk)")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--let-cpus-idle", action="store_true",
                    help="no SCHED_IDLE busy loops keeping the CPUs awake (see Awake)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the benchmark mounts file systems and drops caches")
    if not os.access(TANDEM, os.X_OK):
        raise SystemExit(f"no tandem binary at {TANDEM}: set TANDEM_BIN")
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupted)

    class Sizes:
        pass
    s = Sizes()
    q = args.quick
    s.page = (64 if q else 256) * MIB
    s.seq = (128 if q else 512) * MIB
    s.side = 4 * MIB
    s.rounds = 2 if q else 4
    s.page_writes = 512 if q else 2048   # per round: 4 MiB / 16 MiB
    s.records = 200 if q else 500        # log records per round
    s.tree = (256 if q else 1024) * MIB
    s.big_files = 4
    s.small_size = 32 << 10
    POOL = os.urandom(64 * MIB)

    t_start = time.time()
    user0 = machine_user_cpu()
    try:
        main_runs(args, s)
    except KeyboardInterrupt:
        print("\ninterrupted: cleaning up", file=sys.stderr)
        raise SystemExit(130)
    finally:
        run_cleanup()
    t = os.times()
    others = machine_user_cpu() - user0 - (t.user + t.children_user)
    wall = time.time() - t_start
    print(f"\nuser CPU time of processes other than this benchmark's during the run: {max(others, 0):.0f} s "
          f"({max(others, 0) / (wall * (os.cpu_count() or 1)):.0%} of the {os.cpu_count()} CPUs)")
    print(f"\n{args.runs} runs in {(time.time() - t_start) / 60:.1f} min; sizes: page file "
          f"{s.page // MIB} MiB ({s.page_writes} x 8 KiB per round), sequential file {s.seq // MIB} MiB "
          f"({s.seq // MIB // s.rounds} MiB per round), {s.records} log records per round, {s.rounds} rounds "
          f"per workload and condition; restore tree {s.tree // MIB} MiB; base {args.base}; "
          f"tandem {TANDEM}")


def main_runs(args, s):
    src = tmpdir(args.base, "tandem-bench-tree-")
    nsmall = restore_tree(src, s, random.Random(7))
    os.sync()
    idle = probe(args.base)
    awake = Awake()
    awake.start()
    woken = probe(args.base)
    if args.let_cpus_idle:
        awake.stop()
    print(f"bare disk, 4 KiB append + fdatasync p50: {idle:.0f} us with the CPUs idle, {woken:.0f} us with "
          f"them kept awake by SCHED_IDLE busy loops; this run: "
          f"{'CPUs left idle' if args.let_cpus_idle else 'CPUs kept awake throughout'}", flush=True)
    lvm_skip = dm_snapshot_missing()
    installed = None
    if lvm_skip is None and not shutil.which("lvcreate"):
        r = subprocess.run(["apt-get", "install", "-y", "-q", "lvm2"], capture_output=True, text=True)
        if r.returncode != 0:
            lvm_skip = f"lvm2 is missing and apt-get install lvm2 failed: {r.stderr.strip()[-200:]}"
        else:
            installed = "lvm2 was missing: installed it with apt-get for this comparison"
    bare, clusters, lvms = [], [], []
    for run in range(args.runs):
        t = time.time()
        bare.append(bench_bare(args, s, run))
        clusters.append(bench_cluster(args, s, run, src))
        if lvm_skip is None:
            try:
                lvms.append(bench_lvm(args, s, run))
            except (RuntimeError, OSError) as e:
                lvm_skip = f"the LVM setup failed: {e}"
        print(f"run {run + 1}/{args.runs} done in {time.time() - t:.0f} s", flush=True)
    report(args, s, bare, clusters, lvms, lvm_skip, installed, nsmall)


def report(args, s, bare, clusters, lvms, lvm_skip, installed, nsmall):
    rows = []
    found = clusters[0]["found"]
    if found:
        print("at start, before any was taken: " + "; ".join(
            f"node{n} held {name} of {mod} ({kind})" for mod, n, name, kind, _ in found)
            + " (deleted: 0 means none on either node)")
    if clusters[0].get("auto"):
        print(f"'{STARTED}': node2 stopped, a file created on node1, node2 started again: after its resync "
              f"node2 holds {clusters[0]['auto']} and nobody took any")
    metrics = list(clusters[0]["figures"]["0"].keys())
    ref = "0"
    held_conditions = [c for c in CONDITIONS if c[2] or (c[0] == STARTED and STARTED in clusters[0]["figures"])]

    def vals(cond, m):
        return [c["figures"][cond][m] for c in clusters]

    def ratios(cond, m, against=ref):
        return [c["figures"][cond][m] / c["figures"][against][m] for c in clusters]

    print("\n== bare disk (anchor) and 0 snapshots")
    for m in metrics:
        b = med([x[m] for x in bare])
        t0 = med(vals(ref, m))
        rb = med([c["figures"][ref][m] / x[m] for c, x in zip(clusters, bare)])
        print(f"{m:24} bare {b:9.1f}  tandem, 0 held {t0:9.1f}  ratio {rb:5.2f} (anchor)", flush=True)
        rows.append((m, "0 held", f"bare {b:.1f}", f"{t0:.1f}", f"{rb:.2f}", "anchor", ""))
    print("\n== 0 held: no measurable cost (0 after all were deleted, against 0 in the same run; "
          "noise = the two back-to-back 0 runs, at least 5%)")
    after = "0 after all were deleted"
    for m in metrics:
        aa = ratios("0, repeated", m)
        noise = max(0.05, max(abs(r - 1) for r in aa))
        r = med(ratios(after, m))
        worse = (r - 1) if m in LOWER else (1 - r)
        ok = "info" if "p99" in m else ("PASS" if worse <= noise else "FAIL")
        target = f"within noise {noise:.2f}"
        print(f"{m:24} 0 {med(vals(ref, m)):9.1f}  0 repeated {med(vals('0, repeated', m)):9.1f} "
              f"({med(aa):.2f})  0 after deleting {med(vals(after, m)):9.1f}  "
              f"ratio {r:5.2f}  ({target}) {ok}", flush=True)
        rows.append((m, after, f"0 {med(vals(ref, m)):.1f} (repeated: {med(aa):.2f})",
                     f"{med(vals(after, m)):.1f}", f"{r:.2f}", target, ok))
    print("\n== snapshots held (against 0 in the same run)")
    for name, node, count in held_conditions:
        for m in metrics:
            r = med(ratios(name, m))
            lim = TARGET_1.get(m) if count <= 1 else None
            if lim is None:
                target, ok = "—", "info"
            elif m in LOWER:
                target, ok = f"<= {lim}x", "PASS" if r <= lim else "FAIL"
            else:
                target, ok = f">= {lim}x", "PASS" if r >= lim else "FAIL"
            print(f"{m:24} {name:26} 0 held {med(vals(ref, m)):9.1f}  held {med(vals(name, m)):9.1f}  "
                  f"ratio {r:5.2f}  ({target}) {ok}", flush=True)
            rows.append((m, name, f"0 held {med(vals(ref, m)):.1f}", f"{med(vals(name, m)):.1f}",
                         f"{r:.2f}", target, ok))
    print("\n== bytes kept (snapshot list --json, summed) against bytes first overwritten since the "
          "snapshots (random data)")
    for name, node, count in held_conditions:
        kept = [c["bytes"][name][0] for c in clusters]
        first = [c["bytes"][name][1] for c in clusters]
        disk = [c["bytes"][name][3] for c in clusters]
        broken = [b for c in clusters for b in c["bytes"][name][2]]
        r = med([k / f for k, f in zip(kept, first)])
        ok = "PASS" if r <= 1.1 and not broken else "FAIL"
        print(f"bytes kept, {name:26} first overwritten {med(first) / MIB:8.1f} MiB  kept "
              f"{med(kept) / MIB:8.1f} MiB  ratio {r:5.3f}  (<= 1.1) {ok}; store on disk "
              f"{med(disk) / MIB:.1f} MiB" + (f"; BROKEN: {broken}" if broken else ""), flush=True)
        rows.append(("bytes kept / first overwritten", name, f"{med(first) / MIB:.1f} MiB",
                     f"{med(kept) / MIB:.1f} MiB (store on disk {med(disk) / MIB:.1f} MiB)", f"{r:.3f}",
                     "<= 1.1", ok))
    print(f"\n== restore of a {s.tree // MIB} MiB tree ({s.big_files} large files, {nsmall} of "
          f"{s.small_size >> 10} KiB; 1% overwritten after the snapshot) against cp -a of the same tree, "
          f"same disk, caches dropped before each")
    for key, what in (("clean", "from a store never deleted from"),
                      ("after", f"just after deleting one of {s.page_writes * s.rounds} captures")):
        rt = [c["restore"][key][0] for c in clusters]
        ct = [c["restore"][key][1] for c in clusters]
        if any(t is None for t in rt):
            said = [c["restore"][key][2] for c in clusters if c["restore"][key][0] is None][0]
            print(f"restore, {what}: cp -a {med(ct):7.2f} s  tandem snapshot restore FAILED: {said}  FAIL")
            rows.append((f"restore {s.tree // MIB} MiB tree", what, f"cp -a {med(ct):.2f} s", "failed",
                         "—", ">= 1.0", "FAIL"))
            continue
        r = med([c / t for t, c in zip(rt, ct)])
        ok = "PASS" if r >= 1.0 else "FAIL"
        print(f"restore, {what:40} cp -a {med(ct):7.2f} s  tandem snapshot restore {med(rt):7.2f} s  "
              f"speed ratio {r:5.2f}  (>= 1.0) {ok}", flush=True)
        print(f"  the daemon said: {clusters[-1]['restore'][key][2]}")
        rows.append((f"restore {s.tree // MIB} MiB tree", what, f"cp -a {med(ct):.2f} s", f"{med(rt):.2f} s",
                     f"{r:.2f}x as fast", ">= 1.0", ok))
    print("\n== LVM snapshot (dm-snapshot) of a loop device, the same workloads on ext4")
    if installed:
        print(installed)
    if lvm_skip or not lvms:
        print(f"skipped: {lvm_skip}")
        rows.append(("LVM snapshot comparison", "—", "—", "—", "—", "—", f"skipped: {lvm_skip}"))
    else:
        for count in (1, 24):
            for m in ("pages MiB/s", "pages fdatasync p50 us", "seq MiB/s"):
                v0 = med([x[0][m] for x in lvms])
                v = med([x[count][m] for x in lvms])
                rr = med([x[count][m] / x[0][m] for x in lvms])
                tr = med(ratios(f"{count} on the serving node", m))
                print(f"{m:24} LVM, {count:2} held: 0 {v0:9.1f}  held {v:9.1f}  ratio {rr:5.2f}   "
                      f"(tandem, {count} on the serving node: {tr:5.2f})", flush=True)
                rows.append((m, f"LVM, {count} held", f"LVM 0 held {v0:.1f}", f"{v:.1f}", f"{rr:.2f}",
                             f"tandem {tr:.2f}", "info"))
    print("\n| figure | condition | reference (median) | tandem (median) | ratio | target | result |\n"
          "|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    fails = [r for r in rows if r[-1] == "FAIL"]
    print(f"\n{len(fails)} targets missed" if fails else "\nall targets met")


if __name__ == "__main__":
    main()
