#!/usr/bin/env python3
"""Replication benchmarks: two tandem daemons on loopback (node1 127.0.0.1 primary,
node2 127.0.0.2 secondary), each figure printed next to its anchor from the same run.

  sync      fio through the replicated mount, against three anchors from the same
            run: the bare directory, two bare writers at once (both copies of a
            replicated write share this one machine's disk and CPUs: the best two
            nodes here can do), and the mount alone (`tandem mount`).
            1 MiB sequential writes (MiB/s), target >= 0.9x two writers;
            4 KiB write+fdatasync (p50 us), target <= 1.45x two writers, with the
            write and the fdatasync apart (p50, p99); the CPU both daemons spend
            per GiB written, target <= 1.3 s; per daemon and operation: context
            switches (voluntary, that is wake-ups, and involuntary), read and
            write system calls (read(2)/write(2) family as /proc/PID/io counts
            them), CPU user and system; per fsync pair: flushes to the socket,
            acknowledgements, and the mean time from the end of the local
            fdatasync to the peer's acknowledgement
  lan       4 KiB write+fdatasync, the peer behind a relay that adds a round trip of
            0, 100 and 500 us (delay_relay.rs; this kernel has no netem)
  resync    a dataset (a big file + many small files), the secondary killed, 1% of it
            changed (random 4 KiB writes, small files changed/created/deleted/renamed),
            the secondary restarted: resync time vs
            rsync -a --delete --inplace --no-whole-file of the same change. target >= 10x
  manyfiles N files (default 1,000,000), 10 changed while the secondary was away:
            resync time. target <= 2 s, independent of N
  fullsync  the dataset to an empty secondary: `tandem second --fullsync` vs rsync -a
            target: not slower
  verify    identical trees, caches dropped before each run: tandem verify vs
            rsync -a -c -n; first verify >= 1.5x faster, repeat >= 10x faster

Usage: sudo bench/replication.py [--only sync,resync,...] [--runs 3] [--big-mib 1024]
       [--small-files 20000] [--many-files 1000000]
"""
import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import tempfile
import time

from benchlib import drop_caches, fresh_caches

TANDEM = os.environ.get("TANDEM_BIN", "/var/tmp/tandem-target/release/tandem")


def free_port():
    import socket
    while True:
        s = socket.socket()
        s.bind(("127.0.0.2", 0))
        port = s.getsockname()[1]
        s.close()
        t = socket.socket()
        try:
            t.bind(("127.0.0.1", port))
            t.close()
            return port
        except OSError:
            t.close()


class Pair:
    def __init__(self, base, ack="durable", relay_us=None):
        """`relay_us`: the primary reaches the secondary through a relay that
        holds every chunk this long each way (see delay_relay.rs)."""
        self.tmp = tempfile.mkdtemp(prefix="tandem-bench-pair-", dir=base)
        self.port = free_port()
        self.procs = {}
        self.relay = None
        if relay_us is not None:
            self.relay = subprocess.Popen([relay_binary(), f"127.0.0.3:{self.port}",
                                           f"127.0.0.2:{self.port}", str(relay_us)])
        for n in (1, 2):
            # The primary knows the secondary by the relay's address.
            peer = "127.0.0.3" if self.relay and n == 1 else "127.0.0.2"
            os.makedirs(self.dir(n))
            with open(self.config(n), "w") as f:
                f.write(f"""
[cluster]
name = "bench"
[[node]]
name = "node1"
address = "127.0.0.1"
[[node]]
name = "node2"
address = "{peer}"
[replication]
port = {self.port}
[daemon]
socket = "{self.tmp}/n{n}.sock"
state_dir = "{self.tmp}/state{n}"
tls_dir = "{self.tmp}/tls"
[[module]]
name = "app"
dirs = ["{self.dir(n)}"]
ack = "{ack}"
failover = "lb"
""")
        subprocess.run([TANDEM, "init", "--out", f"{self.tmp}/tls", "--cluster", "bench",
                        "--node", "node1", "--node", "node2"], check=True, capture_output=True)

    def dir(self, n):
        return f"{self.tmp}/node{n}/app"

    def config(self, n):
        return f"{self.tmp}/n{n}.toml"

    def tandem(self, n, *args, check=True):
        return subprocess.run([TANDEM, "-c", self.config(n), *args], check=check,
                              capture_output=True, text=True)

    def status(self, n):
        """The module's replication status, read from the daemon's control
        socket as `tandem status --json` reads it: starting that command (a few
        milliseconds of CPU for the dynamic loader alone) every 50 ms took a
        tenth of a core from the daemons it measured."""
        import socket
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(5)
                s.connect(f"{self.tmp}/n{n}.sock")
                s.sendall(b'{"cmd":"status"}\n')
                buf = b""
                while not buf.endswith(b"\n"):
                    chunk = s.recv(1 << 16)
                    if not chunk:
                        break
                    buf += chunk
            st = json.loads(buf)["status"]
            return st["modules"][0]["replication"]
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            return None

    def start(self, n):
        role = "prim" if n == 1 else "second"
        log = open(f"{self.tmp}/daemon{n}.log", "a")
        self.procs[n] = subprocess.Popen(
            [TANDEM, "-c", self.config(n), "daemon", "--node", f"node{n}", "--role", role],
            stdout=subprocess.DEVNULL, stderr=log)
        wait(lambda: self.status(n) is not None, f"daemon {n} up")

    def kill(self, n):
        p = self.procs.pop(n, None)
        if p:
            p.kill()
            p.wait()

    def stop(self, n):
        p = self.procs.pop(n, None)
        if p:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=120)

    def caught_up(self):
        s = self.status(1)
        return s and s["peer"] == "connected" and s["durable"] >= s["sent"]

    def close(self):
        self.stop(1)
        self.kill(2)
        if self.relay:
            self.relay.kill()
            self.relay.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


def relay_binary():
    """bench/delay_relay.rs, built once next to tandem."""
    out = os.path.join(os.path.dirname(TANDEM), "delay-relay")
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "delay_relay.rs")
    if not os.path.exists(out) or os.path.getmtime(out) < os.path.getmtime(src):
        subprocess.run(["rustc", "-O", "--edition", "2024", "-o", out, src], check=True)
    return out


def wait(cond, what, timeout=3600, step=0.02):
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return
        time.sleep(step)
    raise SystemExit(f"timed out waiting for {what}")


def fio(d, name, args):
    return fio_jobs([d], name, args)[0]


def fio_jobs(dirs, name, args):
    """One fio job per directory, all running at once; their results."""
    cmd = ["fio", "--output-format=json", "--ioengine=psync", *args]
    for i, d in enumerate(dirs):
        cmd += [f"--name={name}{i}", f"--directory={d}"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out[out.index("{"):])["jobs"]


def report(name, anchor_name, anchor, ours, unit, target, better):
    ratio = (anchor / ours) if better == "lower-time" else (ours / anchor)
    print(f"{name:34} {anchor_name} {statistics.median(anchor_vals(anchor)):10.3f}  tandem "
          f"{statistics.median(anchor_vals(ours)):10.3f} {unit}  ratio {ratio:6.2f}  (target {target})", flush=True)
    return ratio


def anchor_vals(v):
    return v if isinstance(v, list) else [v]


def cpu_seconds(pid):
    """User plus system time of a process, its threads included (ended ones too)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def counters(pid):
    """What a process has done so far: CPU seconds (user, system), context
    switches of its live threads, and read and write system calls."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    vcs = ics = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{t}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches"):
                        vcs += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches"):
                        ics += int(line.split()[1])
        except FileNotFoundError:
            pass  # a thread that ended meanwhile
    io = {}
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            k, v = line.split(":")
            io[k] = int(v)
    return {"user": int(fields[11]) / tick, "sys": int(fields[12]) / tick, "vcs": vcs, "ics": ics,
            "syscr": io["syscr"], "syscw": io["syscw"]}


def wire(pair, n):
    """The node's counts of what crossed the link (`status --json`)."""
    w = pair.status(n)["wire"]
    return {"flushes": w["flushes"], "acks": w["acks"], "waits": w["peer_waits"],
            "wait_us": w["peer_wait_us"]}


def since(before, after):
    return {k: after[k] - before[k] for k in before}


def in_step(dirs, seconds):
    """Two bare writers in step: each writes 4 KiB at a random place of its
    own 64 MiB file and fdatasyncs, and neither starts its next write before
    the other finished. A replicated fdatasync is this on one machine: both
    nodes flush the one disk at the same moment, where fio's two free-running
    writers often flush at different moments. Returns the p50 of write +
    fdatasync, in us."""
    import threading
    files = []
    for d in dirs:
        fd = os.open(f"{d}/in-step", os.O_RDWR | os.O_CREAT, 0o600)
        os.pwrite(fd, os.urandom(1 << 20) * 64, 0)
        os.fsync(fd)
        files.append(fd)
    step = threading.Barrier(len(files))
    end = time.time() + seconds
    times = [[] for _ in files]
    stop = threading.Event()

    def writer(i):
        rnd, buf = random.Random(i), os.urandom(4096)
        while True:
            try:
                step.wait()
            except threading.BrokenBarrierError:
                return
            if time.time() > end:
                step.abort()
                return
            t = time.perf_counter_ns()
            os.pwrite(files[i], buf, rnd.randrange(16384) * 4096)
            os.fdatasync(files[i])
            times[i].append((time.perf_counter_ns() - t) / 1000)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(len(files))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for fd in files:
        os.close(fd)
    return statistics.median(x for ts in times for x in ts)


class MountOnly:
    """`tandem mount DIR`: the intercepting mount with nothing replicated,
    the anchor for what the mount alone costs."""

    def __init__(self, base):
        self.dir = tempfile.mkdtemp(prefix="tandem-bench-mount-", dir=base)
        self.proc = subprocess.Popen([TANDEM, "mount", self.dir], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait(lambda: any(f" {self.dir} " in l for l in open("/proc/self/mountinfo")), "mounted")

    def close(self):
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)


def bench_sync(args):
    rows = []
    # CPU time both daemons spend per GiB of sequential writes: with both
    # nodes on one machine they share its CPUs, which caps the throughput.
    cpu_per_gib = []
    work = {
        "seqwrite MiB/s": (["--rw=write", "--bs=1M", f"--size={args.seq_mib}M", "--end_fsync=1"],
                           lambda j: j["write"]["bw_bytes"] / 2**20, ">= 0.9x two writers"),
        # Written in full first, as in fs_overhead.py: the first write to a
        # block of a new file costs an extent conversion on every node.
        "write+fdatasync p50 us": (["--rw=randwrite", "--bs=4k", "--size=64M", "--fdatasync=1",
                                    "--overwrite=1", f"--runtime={args.runtime}", "--time_based"],
                                   lambda j: (j["write"]["clat_ns"]["percentile"]["50.000000"]
                                              + j["sync"]["lat_ns"]["percentile"]["50.000000"]) / 1000,
                                   "<= 1.45x two writers"),
    }

    def apart(j):
        """The write and the fdatasync of a pair, p50 and p99, in us."""
        w, f = j["write"]["clat_ns"]["percentile"], j["sync"]["lat_ns"]["percentile"]
        return {"write p50": w["50.000000"] / 1000, "write p99": w["99.000000"] / 1000,
                "fdatasync p50": f["50.000000"] / 1000, "fdatasync p99": f["99.000000"] / 1000}
    # Page cache the largest case fills: two copies of the sequential file.
    warm = 2 * args.seq_mib + 64
    for name, (fargs, metric, target) in work.items():
        bare, pair_floor, mounted, rep, stepped = [], [], [], [], []
        # Per daemon (primary, secondary): what one operation cost it.
        per_op = {"primary": [], "secondary": [], "mount only": []}
        # The write and the fdatasync apart, per setup.
        parts = {"bare": [], "two bare writers": [], "mount only": [], "replicated": []}
        fsyncs = "fdatasync" in name
        for _ in range(args.runs):
            d = tempfile.mkdtemp(prefix="tandem-bench-bare-", dir=args.base)
            fresh_caches(warm)
            job = fio(d, "bare", fargs)
            bare.append(metric(job))
            if fsyncs:
                parts["bare"].append(apart(job))
            shutil.rmtree(d)
            # Two bare writers at once, one per directory: both copies of a
            # replicated write on this one machine share its disk and CPUs,
            # so this is the best any replication between two nodes here can do.
            d1 = tempfile.mkdtemp(prefix="tandem-bench-bare-", dir=args.base)
            d2 = tempfile.mkdtemp(prefix="tandem-bench-bare-", dir=args.base)
            fresh_caches(warm)
            jobs = fio_jobs([d1, d2], "bare", fargs)
            pair_floor.append(statistics.mean(metric(j) for j in jobs))
            if fsyncs:
                parts["two bare writers"].append(
                    {k: statistics.mean(apart(j)[k] for j in jobs) for k in apart(jobs[0])})
                stepped.append(in_step([d1, d2], args.runtime))
            shutil.rmtree(d1)
            shutil.rmtree(d2)
            m = MountOnly(args.base)
            try:
                fresh_caches(warm)
                m0 = counters(m.proc.pid)
                job = fio(m.dir, "mount", fargs)
                mounted.append(metric(job))
                ops = job["write"]["total_ios"] if fsyncs else args.seq_mib
                d = since(m0, counters(m.proc.pid))
                per_op["mount only"].append({k: v / ops for k, v in d.items()})
                if fsyncs:
                    parts["mount only"].append(apart(job))
            finally:
                m.close()
            pair = Pair(args.base)
            try:
                pair.start(2)
                pair.start(1)
                wait(pair.caught_up, "connected")
                fresh_caches(warm)
                pids = [p.pid for p in pair.procs.values()]
                before = sum(cpu_seconds(p) for p in pids)
                roles = {"primary": pair.procs[1].pid, "secondary": pair.procs[2].pid}
                nodes = {"primary": 1, "secondary": 2}
                start = {r: counters(p) | wire(pair, nodes[r]) for r, p in roles.items()}
                job = fio(pair.dir(1), "tandem", fargs)
                rep.append(metric(job))
                if fsyncs:
                    parts["replicated"].append(apart(job))
                # What ran after the job (a last syncfs) counts too.
                wait(pair.caught_up, "caught up")
                # Operations: fsync pairs, or MiB written.
                ops = job["write"]["total_ios"] if fsyncs else args.seq_mib
                for r, p in roles.items():
                    d = since(start[r], counters(p) | wire(pair, nodes[r]))
                    per = {k: v / ops for k, v in d.items()}
                    per["wait_us"] = d["wait_us"] / max(d["waits"], 1)
                    per_op[r].append(per)
                if name.startswith("seqwrite"):
                    used = sum(cpu_seconds(p) for p in pids) - before
                    cpu_per_gib.append(used / (args.seq_mib / 1024))
            finally:
                pair.close()
        b, t = statistics.median(bare), statistics.median(rep)
        f, mo = statistics.median(pair_floor), statistics.median(mounted)
        print(f"sync {name:28} bare {b:10.1f}  two bare writers at once {f:10.1f} ({f / b:4.2f} of bare)  "
              f"mount only {mo:10.1f} ({mo / b:4.2f})  replicated {t:10.1f}  ratio {t / b:5.2f}  "
              f"vs two writers {t / f:5.2f}  (target {target})", flush=True)
        if stepped:
            st = statistics.median(stepped)
            print(f"sync   {'two bare writers in step':28} {st:10.1f} ({st / b:4.2f} of bare): "
                  f"replicated {t / st:4.2f} of it", flush=True)
        for setup, samples in parts.items():
            if samples:
                med = {k: statistics.median(s[k] for s in samples) for k in samples[0]}
                print(f"sync   {setup:18} " + "  ".join(f"{k} {v:8.1f}" for k, v in med.items()),
                      flush=True)
        unit = "fsync pair" if fsyncs else "MiB"
        for r, samples in per_op.items():
            med = {k: statistics.median(s[k] for s in samples) for k in samples[0]}
            scale = 1 if unit == "fsync pair" else 1024  # CPU per GiB for throughput
            line = (f"sync   {r} daemon per {unit}: "
                    f"{med['vcs']:.2f} wake-ups (voluntary switches), {med['ics']:.2f} involuntary, "
                    f"{med['syscr']:.2f} reads, {med['syscw']:.2f} writes, "
                    f"CPU user {med['user'] * scale * (1e6 if unit == 'fsync pair' else 1):.1f}"
                    f"{' us' if unit == 'fsync pair' else ' s/GiB'}, "
                    f"sys {med['sys'] * scale * (1e6 if unit == 'fsync pair' else 1):.1f}"
                    f"{' us' if unit == 'fsync pair' else ' s/GiB'}")
            if "flushes" in med:
                line += f", {med['flushes']:.2f} flushes, {med['acks']:.2f} acks"
            if r == "primary" and fsyncs:
                line += f"; local fdatasync end to peer ack {med['wait_us']:.1f} us (mean)"
            print(line, flush=True)
        anchors = f"bare {b:.1f}; two bare writers at once {f:.1f} ({f / b:.2f})"
        if stepped:
            anchors += f"; in step {statistics.median(stepped):.1f}"
        rows.append((f"sync: {name}", anchors, f"{t:.1f}", f"{t / f:.2f} of two writers", target))
        if cpu_per_gib:
            c = statistics.median(cpu_per_gib)
            cap = os.cpu_count() / c * 1024
            print(f"sync {'daemons CPU-s per GiB':28} {c:.2f} (both nodes): {os.cpu_count()} CPUs allow "
                  f"at most {cap:.0f} MiB/s, {cap / b:.2f} of bare", flush=True)
            rows.append(("sync: daemons' CPU per GiB written", f"{os.cpu_count()} CPUs: at most {cap:.0f} MiB/s "
                         f"({cap / b:.2f} of bare)", f"{c:.2f} CPU-s", "—", "<= 1.3 CPU-s"))
            cpu_per_gib.clear()
    return rows


def bench_lan(args):
    """4 KiB write+fdatasync with the peer behind a relay that adds a round
    trip of 0 (the relay alone), 100 and 500 us: on a LAN the round trip,
    not the shared disk, is what a synchronous write waits for."""
    fargs = ["--rw=randwrite", "--bs=4k", "--size=64M", "--fdatasync=1", "--overwrite=1",
             f"--runtime={args.runtime}", "--time_based"]
    rows, base = [], None
    for rtt in (0, 100, 500):
        p50, waits = [], []
        for _ in range(args.runs):
            pair = Pair(args.base, relay_us=rtt // 2)
            try:
                pair.start(2)
                pair.start(1)
                wait(pair.caught_up, "connected")
                fresh_caches(128)
                w0 = wire(pair, 1)
                job = fio(pair.dir(1), "tandem", fargs)
                w1 = wire(pair, 1)
                p50.append((job["write"]["clat_ns"]["percentile"]["50.000000"]
                            + job["sync"]["lat_ns"]["percentile"]["50.000000"]) / 1000)
                waits.append((w1["wait_us"] - w0["wait_us"]) / max(w1["waits"] - w0["waits"], 1))
            finally:
                pair.close()
        t, w = statistics.median(p50), statistics.median(waits)
        base = base if base is not None else t
        print(f"lan  round trip +{rtt:3} us: write+fdatasync p50 {t:8.1f} us (+{t - base:6.1f} over the "
              f"relay alone), local fdatasync end to peer ack {w:7.1f} us (mean)", flush=True)
        rows.append((f"lan: write+fdatasync p50 us, round trip +{rtt} us",
                     "relay alone" if rtt == 0 else f"relay alone {base:.1f}",
                     f"{t:.1f}", "—" if rtt == 0 else f"+{t - base:.1f} us", "—"))
    return rows


def make_dataset(root, big_mib, small_files, seed=1):
    rnd = random.Random(seed)
    with open(f"{root}/big", "wb") as f:
        for _ in range(big_mib):
            f.write(os.urandom(1 << 20))
    for i in range(small_files):
        d = f"{root}/s{i % 100:02d}"
        os.makedirs(d, exist_ok=True)
        with open(f"{d}/f{i}", "wb") as f:
            f.write(os.urandom(rnd.randint(20_000, 80_000)))


def change_one_percent(root, big_mib, small_files, seed=2):
    """Random 4 KiB writes into the big file plus small-file changes: ~1% of the data."""
    rnd = random.Random(seed)
    total = big_mib << 20
    small_total = small_files * 50_000
    budget = (total + small_total) // 100
    written = 0
    with open(f"{root}/big", "r+b") as f:
        blocks = rnd.sample(range(total // 4096), int(budget * 0.8) // 4096)
        for b in blocks:
            f.seek(b * 4096)
            f.write(os.urandom(4096))
            written += 4096
    n = max(small_files // 100, 4)
    for i in rnd.sample(range(small_files), n):
        p = f"{root}/s{i % 100:02d}/f{i}"
        with open(p, "r+b") as f:
            f.write(os.urandom(4096))
            written += 4096
    for i in range(n // 2):
        with open(f"{root}/s{i % 100:02d}/new{i}", "wb") as f:
            f.write(os.urandom(30_000))
            written += 30_000
    victims = rnd.sample(range(small_files), n)
    for i in victims[: n // 2]:
        try:
            os.unlink(f"{root}/s{i % 100:02d}/f{i}")
        except FileNotFoundError:
            pass
    for i in victims[n // 2:]:
        try:
            os.rename(f"{root}/s{i % 100:02d}/f{i}", f"{root}/s{i % 100:02d}/renamed{i}")
        except FileNotFoundError:
            pass
    return written


def timed(cmd):
    t = time.time()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.time() - t


def resync_time(pair):
    """From the moment the returning secondary is connected (the resync starts) to
    the primary caught up with nothing dirty; the daemon's own start-up is left out,
    as rsync's anchor has none."""
    pair.start(2)
    wait(lambda: (s := pair.status(1)) and s["peer"] == "connected" and s["durable"] >= s["sent"]
         and s["dirty_bytes"] == 0, "resync", step=0.005)
    done = time.time()
    st = pair.status(1)
    return done - st["resync"]["started_unix_ms"] / 1000, st


def bench_resync(args):
    tandem_t, rsync_t, rsync_only, shipped = [], [], [], []
    for run in range(args.runs):
        pair = Pair(args.base)
        try:
            # The same starting data on both nodes, made before the daemons start.
            make_dataset(pair.dir(1), args.big_mib, args.small_files)
            subprocess.run(["cp", "-a", pair.dir(1) + "/.", pair.dir(2)], check=True)
            old = f"{pair.tmp}/rsync-target"
            subprocess.run(["cp", "-a", pair.dir(2), old], check=True)
            pair.start(2)
            pair.start(1)
            wait(pair.caught_up, "connected")
            pair.kill(2)
            written = change_one_percent(pair.dir(1), args.big_mib, args.small_files, seed=run + 2)
            drop_caches()
            t, st = resync_time(pair)
            tandem_t.append(t)
            shipped.append((st["resync"]["bytes_done"], written))
            with open(f"{pair.tmp}/daemon1.log") as f:
                lines = [l.strip() for l in f if "resync shipped" in l]
            if args.verbose and lines:
                print("  " + lines[-1].split("resync: ")[-1] if "resync: " in lines[-1] else lines[-1])
            # The anchor: the same change by rsync, from the new tree to the old one.
            pair.stop(1)
            drop_caches()
            # tandem's resync ends when the change is durable on the peer: the anchor
            # is rsync followed by sync of the target's file system.
            t0 = time.time()
            subprocess.run(["rsync", "-a", "--delete", "--inplace", "--no-whole-file",
                            pair.dir(1) + "/", old + "/"], check=True, capture_output=True)
            rsync_only.append(time.time() - t0)
            subprocess.run(["sync", "-f", old], check=True)
            rsync_t.append(time.time() - t0)
        finally:
            pair.close()
    t, r = statistics.median(tandem_t), statistics.median(rsync_t)
    ro = statistics.median(rsync_only)
    print(f"resync 1% of {args.big_mib} MiB + {args.small_files} files: rsync+sync {r:.2f} s "
          f"(rsync alone {ro:.2f} s)  tandem {t:.2f} s  speedup {r / t:.1f}x (target >= 10x); "
          f"shipped/written {shipped}", flush=True)
    return [("resync after 1% change (durable)", f"rsync+sync {r:.2f} s (rsync alone {ro:.2f} s)",
             f"{t:.2f} s", f"{r / t:.1f}x faster ({ro / t:.1f}x vs rsync alone)", ">= 10x")]


def bench_manyfiles(args):
    pair = Pair(args.base)
    try:
        n = args.many_files
        t0 = time.time()
        for node in (1, 2):
            root = pair.dir(node)
            for i in range(n):
                if i % 1000 == 0:
                    os.makedirs(f"{root}/d{i // 1000}", exist_ok=True)
                fd = os.open(f"{root}/d{i // 1000}/f{i}", os.O_CREAT | os.O_WRONLY, 0o644)
                os.write(fd, b"x")
                os.close(fd)
        # Same times on both sides.
        subprocess.run(["rsync", "-a", "--delete", pair.dir(1) + "/", pair.dir(2) + "/"], check=True)
        print(f"manyfiles: {n} files made on both nodes in {time.time() - t0:.0f} s", flush=True)
        pair.start(2)
        pair.start(1)
        wait(pair.caught_up, "connected")
        pair.kill(2)
        for i in random.Random(5).sample(range(n), 10):
            with open(f"{pair.dir(1)}/d{i // 1000}/f{i}", "ab") as f:
                f.write(b"changed")
        drop_caches()
        t, st = resync_time(pair)
        print(f"manyfiles: resync of 10 changed files among {n}: {t:.2f} s (target <= 2 s); "
              f"shipped {st['resync']['bytes_done']} bytes", flush=True)
        return [(f"resync 10 of {n} files", "-", f"{t:.2f} s", "-", "<= 2 s")]
    finally:
        pair.close()


def bench_fullsync_verify(args, do_full, do_verify):
    rows = []
    full_t, rsync_t, rsync_only, v1, v2, c1, c2 = [], [], [], [], [], [], []
    for _ in range(args.runs):
        pair = Pair(args.base)
        try:
            make_dataset(pair.dir(1), args.big_mib, args.small_files)
            empty = f"{pair.tmp}/rsync-empty"
            os.makedirs(empty)
            if do_full:
                # tandem's full sync ends when the data is durable on the peer: the
                # anchor is rsync followed by sync of the target's file system.
                drop_caches()
                t0 = time.time()
                subprocess.run(["rsync", "-a", pair.dir(1) + "/", empty + "/"], check=True)
                rsync_only.append(time.time() - t0)
                subprocess.run(["sync", "-f", empty], check=True)
                rsync_t.append(time.time() - t0)
                shutil.rmtree(empty)
            pair.start(2)
            pair.start(1)
            wait(pair.caught_up, "connected")
            if do_full:
                drop_caches()
                t = time.time()
                pair.tandem(2, "second", "app", "--fullsync")
                time.sleep(0.05)
                wait(lambda: (s := pair.status(2)) and s["peer"] == "uptodate", "full sync")
                wait(pair.caught_up, "full sync durable")
                full_t.append(time.time() - t)
            else:
                pair.stop(1)
                pair.kill(2)
                subprocess.run(["cp", "-a", pair.dir(1) + "/.", pair.dir(2)], check=True)
                pair.start(2)
                pair.start(1)
                wait(pair.caught_up, "connected")
            if do_verify:
                for dest in (v1, v2):
                    drop_caches()
                    t = time.time()
                    r = pair.tandem(1, "verify", "app", check=False)
                    if r.returncode != 0:
                        raise SystemExit(f"verify of identical trees said: {r.stdout}{r.stderr}")
                    dest.append(time.time() - t)
                # The anchor compares the bare directories, daemons stopped.
                pair.stop(1)
                pair.kill(2)
                for dest in (c1, c2):
                    drop_caches()
                    dest.append(timed(["rsync", "-a", "-c", "-n", pair.dir(1) + "/", pair.dir(2) + "/"]))
        finally:
            pair.close()
    if do_full:
        t, r = statistics.median(full_t), statistics.median(rsync_t)
        ro = statistics.median(rsync_only)
        print(f"fullsync to an empty peer: rsync -a + sync {r:.2f} s (rsync alone {ro:.2f} s)  tandem {t:.2f} s  "
              f"ratio {r / t:.2f} (target >= 1.0)", flush=True)
        rows.append(("full sync to an empty peer (durable)", f"rsync -a + sync {r:.2f} s (alone {ro:.2f} s)",
                     f"{t:.2f} s", f"{r / t:.2f}", ">= 1.0"))
    if do_verify:
        a1, a2 = statistics.median(c1), statistics.median(c2)
        t1, t2 = statistics.median(v1), statistics.median(v2)
        print(f"verify first: rsync -c -n {a1:.2f} s  tandem {t1:.2f} s  speedup {a1 / t1:.1f}x (>= 1.5x)")
        print(f"verify again: rsync -c -n {a2:.2f} s  tandem {t2:.2f} s  speedup {a2 / t2:.1f}x (>= 10x)",
              flush=True)
        rows.append(("verify, first", f"rsync -c -n {a1:.2f} s", f"{t1:.2f} s", f"{a1 / t1:.1f}x faster", ">= 1.5x"))
        rows.append(("verify, repeated", f"rsync -c -n {a2:.2f} s", f"{t2:.2f} s", f"{a2 / t2:.1f}x faster",
                     ">= 10x"))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="sync,resync,manyfiles,fullsync,verify")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--base", default="/var/tmp")
    ap.add_argument("--runtime", type=int, default=8)
    ap.add_argument("--seq-mib", type=int, default=1024)
    ap.add_argument("--big-mib", type=int, default=1024)
    ap.add_argument("--small-files", type=int, default=20000)
    ap.add_argument("--many-files", type=int, default=1_000_000)
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the benchmark mounts file systems and drops caches")
    for tool in ("fio", "rsync"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: run scripts/install-deps.sh")
    only = set(args.only.split(","))
    rows = []
    if "sync" in only:
        rows += bench_sync(args)
    if "lan" in only:
        rows += bench_lan(args)
    if "resync" in only:
        rows += bench_resync(args)
    if "manyfiles" in only:
        rows += bench_manyfiles(args)
    if "fullsync" in only or "verify" in only:
        rows += bench_fullsync_verify(args, "fullsync" in only, "verify" in only)
    print("\n| benchmark | anchor (median) | tandem (median) | ratio | target |\n|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print(f"\n{args.runs} runs; big file {args.big_mib} MiB, {args.small_files} small files")


if __name__ == "__main__":
    main()
