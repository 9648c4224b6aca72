//! Two real daemons on loopback: what the primary's applications do through
//! the mount is on the secondary, and a secondary that was away gets exactly
//! what changed.

mod common;

use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use common::cpath;
use common::pair::Pair;
use common::tree::assert_same_tree;
use rand::{Rng, SeedableRng};

fn setxattr(p: &Path, name: &str, value: &[u8]) {
    let n = std::ffi::CString::new(name).unwrap();
    let c = cpath(p);
    // SAFETY: `c` and `n` are NUL-terminated, and `value` is a live slice passed with its length.
    let r = unsafe {
        libc::setxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(r, 0, "setxattr {}", p.display());
}

fn removexattr(p: &Path, name: &str) {
    let n = std::ffi::CString::new(name).unwrap();
    let c = cpath(p);
    // SAFETY: `c` and `n` are NUL-terminated for the call.
    assert_eq!(unsafe { libc::removexattr(c.as_ptr(), n.as_ptr()) }, 0);
}

fn rename2(a: &Path, b: &Path, flags: u32) -> i32 {
    let (ca, cb) = (cpath(a), cpath(b));
    // SAFETY: `ca` and `cb` are NUL-terminated paths living across the call.
    unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            flags,
        )
    }
}

#[test]
fn every_mutation_kind_replicates_and_the_trees_are_identical() {
    let mut pair = Pair::new();
    pair.start_both();
    let d = pair.dir(1);

    std::fs::create_dir_all(d.join("a/b")).unwrap();
    std::fs::write(d.join("a/b/file"), b"hello").unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(d.join("a/b/file"))
        .unwrap();
    f.write_all_at(b"WORLD", 3).unwrap();
    f.write_all_at(&vec![7u8; 300_000], 10_000).unwrap();
    f.sync_all().unwrap();
    f.set_len(200_000).unwrap();
    f.sync_data().unwrap();
    drop(f);
    // fallocate (keep size) and a hole punch.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(d.join("a/b/file"))
        .unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
    // SAFETY: fallocate takes no pointer; `fd` is open (`f` lives below).
    assert_eq!(unsafe { libc::fallocate(fd, 0, 0, 400_000) }, 0);
    // SAFETY: fallocate takes no pointer; `fd` is open (`f` lives below).
    assert_eq!(
        unsafe {
            libc::fallocate(
                fd,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                12_288,
                8192,
            )
        },
        0
    );
    drop(f);
    std::fs::set_permissions(d.join("a/b/file"), std::fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::lchown(d.join("a/b/file"), Some(1234), Some(5678)).unwrap();
    setxattr(&d.join("a/b/file"), "user.color", b"blue");
    setxattr(&d.join("a/b/file"), "user.gone", b"x");
    removexattr(&d.join("a/b/file"), "user.gone");
    std::os::unix::fs::symlink("b/file", d.join("a/link")).unwrap();
    std::fs::hard_link(d.join("a/b/file"), d.join("a/hard")).unwrap();
    let c = cpath(&d.join("fifo"));
    // SAFETY: `c` is a NUL-terminated path living across the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    std::fs::create_dir(d.join("empty")).unwrap();
    std::fs::remove_dir(d.join("empty")).unwrap();
    std::fs::write(d.join("x"), b"x").unwrap();
    std::fs::write(d.join("y"), b"yy").unwrap();
    assert_eq!(
        rename2(&d.join("x"), &d.join("y"), libc::RENAME_EXCHANGE),
        0
    );
    assert_eq!(
        rename2(&d.join("x"), &d.join("y"), libc::RENAME_NOREPLACE),
        -1
    );
    std::fs::rename(d.join("a/b"), d.join("a/c")).unwrap();
    std::fs::remove_file(d.join("a/hard")).unwrap();
    std::fs::write(d.join("times"), b"t").unwrap();
    let t = std::fs::File::options()
        .write(true)
        .open(d.join("times"))
        .unwrap();
    t.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000))
        .unwrap();
    drop(t);
    std::fs::create_dir(d.join("sticky")).unwrap();
    std::fs::set_permissions(d.join("sticky"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    // Unlinked while open: written, never visible anywhere.
    let mut ghost = std::fs::File::create(d.join("ghost")).unwrap();
    std::fs::remove_file(d.join("ghost")).unwrap();
    ghost.write_all(b"boo").unwrap();
    drop(ghost);

    pair.wait_caught_up();
    assert_same_tree(&pair.dir(1), &pair.dir(2));
    let st = pair.replication(1).unwrap();
    assert_eq!(st["dirty_bytes"], 0, "{st}");
    assert!(st["bytes_replicated"].as_u64().unwrap() >= 300_010, "{st}");
    // The secondary's bytes are the primary's, read without the mount.
    assert_eq!(std::fs::read(pair.dir(2).join("y")).unwrap(), b"x");
}

/// Writes do not carry the file's modification time (reading it after every
/// write would make each fdatasync write the inode too): it follows on close,
/// and for a file left open, within a second.
#[test]
fn the_times_of_written_files_reach_the_peer_when_closed_or_left_open() {
    let mut pair = Pair::new();
    pair.start_both();
    let (d1, d2) = (pair.dir(1), pair.dir(2));
    let mtime = |p: &Path| {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(p).unwrap();
        (m.mtime(), m.mtime_nsec())
    };
    // Written, fdatasync'd and kept open: the data is there at once.
    let open = std::fs::File::create(d1.join("open")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    open.write_all_at(b"still open", 0).unwrap();
    open.sync_data().unwrap();
    assert_eq!(std::fs::read(d2.join("open")).unwrap(), b"still open");
    let want = mtime(&d1.join("open"));
    assert!(
        common::wait_until(5, || mtime(&d2.join("open")) == want),
        "the peer's time of a file left open stays {:?}, not {want:?}",
        mtime(&d2.join("open"))
    );
    // Written and closed: the time goes with the close.
    for i in 0..20 {
        let name = format!("closed{i}");
        let mut f = std::fs::File::create(d1.join(&name)).unwrap();
        f.write_all(&vec![i as u8; 10_000]).unwrap();
        f.write_all(b"end").unwrap();
    }
    pair.wait_caught_up();
    for i in 0..20 {
        let name = format!("closed{i}");
        assert_eq!(mtime(&d2.join(&name)), mtime(&d1.join(&name)), "{name}");
    }
    drop(open);
    pair.wait_caught_up();
    assert_same_tree(&d1, &d2);
}

/// Each thread works in its own subdirectory, with renames across them.
fn random_worker(root: &Path, id: usize, ops: usize, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mine = root.join(format!("t{id}"));
    std::fs::create_dir_all(&mine).unwrap();
    for i in 0..ops {
        let name = mine.join(format!("f{}", rng.random_range(0..20)));
        match rng.random_range(0..11) {
            0..=3 => {
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(false)
                    .open(&name)
                    .unwrap();
                let off = rng.random_range(0..300_000u64);
                let len = rng.random_range(1..70_000usize);
                let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                f.seek(SeekFrom::Start(off)).unwrap();
                f.write_all(&data).unwrap();
                if i % 7 == 0 {
                    f.sync_data().unwrap();
                }
            }
            4 => {
                if let Ok(f) = std::fs::OpenOptions::new().write(true).open(&name) {
                    f.set_len(rng.random_range(0..200_000)).unwrap();
                }
            }
            5 => {
                let to = mine.join(format!("f{}", rng.random_range(0..20)));
                let _ = std::fs::rename(&name, &to);
            }
            6 => {
                let _ = std::fs::remove_file(&name);
            }
            7 => {
                let sub = mine.join(format!("d{}", rng.random_range(0..3)));
                let _ = std::fs::create_dir(&sub);
                let _ = std::fs::write(sub.join(format!("g{i}")), format!("{i}"));
            }
            8 => {
                if name.exists() {
                    let mode = 0o600 | rng.random_range(0..0o100u32);
                    std::fs::set_permissions(&name, std::fs::Permissions::from_mode(mode)).unwrap();
                }
            }
            9 => {
                if name.exists() {
                    setxattr(&name, "user.n", format!("{i}").as_bytes());
                }
            }
            _ => {
                // A second name: later writes, renames and removals reach
                // one file through either.
                let to = mine.join(format!("f{}", rng.random_range(0..20)));
                let _ = std::fs::hard_link(&name, &to);
            }
        }
    }
}

#[test]
fn a_random_multithreaded_workload_leaves_identical_trees() {
    let mut pair = Pair::new();
    pair.start_both();
    let root = pair.dir(1);
    std::thread::scope(|s| {
        for t in 0..4 {
            let root = root.clone();
            s.spawn(move || random_worker(&root, t, 400, 1000 + t as u64));
        }
    });
    pair.wait_caught_up();
    assert_same_tree(&pair.dir(1), &pair.dir(2));
}

#[test]
fn a_killed_secondary_gets_only_the_changed_bytes_back() {
    let mut pair = Pair::new();
    pair.start_both();
    let d = pair.dir(1);
    // A dataset: one 16 MiB file and 300 small ones.
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let big: Vec<u8> = (0..16 << 20).map(|_| rng.random()).collect();
    std::fs::write(d.join("big"), &big).unwrap();
    std::fs::create_dir(d.join("small")).unwrap();
    for i in 0..300 {
        std::fs::write(
            d.join(format!("small/{i}")),
            format!("file {i}\n").repeat(50),
        )
        .unwrap();
    }
    pair.wait_caught_up();

    pair.signal(2, libc::SIGKILL);
    // Counted once the primary knows the peer is gone: what it sent before
    // that went to a dead link and is not a resync's doing.
    assert!(
        common::wait_until(10, || pair.peer_state() != "connected"),
        "the primary did not notice the killed peer"
    );
    let before = pair.replication(1).unwrap()["bytes_replicated"]
        .as_u64()
        .unwrap();
    // Keep writing: random 4 KiB blocks, name changes; nothing may block.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(d.join("big"))
        .unwrap();
    let mut written = 0u64;
    let start = std::time::Instant::now();
    let mut blocks = std::collections::BTreeSet::new();
    while blocks.len() < 200 {
        blocks.insert(rng.random_range(0..(16u64 << 20) / 4096));
    }
    for b in blocks {
        let off = b * 4096;
        let block: Vec<u8> = (0..4096).map(|_| rng.random()).collect();
        f.write_all_at(&block, off).unwrap();
        written += 4096;
    }
    drop(f);
    for i in 0..20 {
        std::fs::write(d.join(format!("small/{i}")), b"changed").unwrap();
        written += 7;
    }
    for i in 20..30 {
        std::fs::remove_file(d.join(format!("small/{i}"))).unwrap();
    }
    for i in 30..40 {
        std::fs::rename(
            d.join(format!("small/{i}")),
            d.join(format!("small/renamed-{i}")),
        )
        .unwrap();
    }
    std::fs::create_dir(d.join("new")).unwrap();
    std::fs::write(d.join("new/file"), b"created while alone").unwrap();
    written += 19;
    assert!(
        start.elapsed() < std::time::Duration::from_secs(10),
        "writes blocked without the peer: {:?}",
        start.elapsed()
    );
    let alone = pair.replication(1).unwrap();
    assert_eq!(alone["peer"], "alone", "{alone}");
    let dirty = alone["dirty_bytes"].as_u64().unwrap();
    assert!(
        dirty >= 200 * 4096 && dirty <= written,
        "dirty {dirty}, written {written}"
    );

    pair.start(2);
    pair.wait_connected();
    pair.wait_caught_up();
    let after = pair.replication(1).unwrap();
    let shipped = after["resync"]["bytes_done"].as_u64().unwrap();
    assert!(
        shipped <= written + written / 10,
        "resync shipped {shipped} bytes for {written} written"
    );
    let total = after["bytes_replicated"].as_u64().unwrap() - before;
    assert!(
        total <= written + written / 10,
        "{total} bytes crossed the link for {written} written"
    );
    assert_eq!(after["dirty_bytes"], 0, "{after}");
    assert_same_tree(&pair.dir(1), &pair.dir(2));
}

/// A pair whose resyncs ship at most `rate` a second.
/// An application that writes 4 KiB to its log and syncs it every 2 ms,
/// timing each call, until stopped: then the longest call.
struct LogWriter {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<std::time::Duration>>,
}

impl LogWriter {
    fn start(path: std::path::PathBuf) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut f = std::fs::File::create(path).unwrap();
                let mut worst = std::time::Duration::ZERO;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let t = std::time::Instant::now();
                    f.write_all(&[7u8; 4096]).unwrap();
                    f.sync_data().unwrap();
                    worst = worst.max(t.elapsed());
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                worst
            })
        };
        Self {
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> std::time::Duration {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().expect("running").join().unwrap()
    }
}

impl Drop for LogWriter {
    /// A test that fails before stopping it: the log is closed, so the
    /// mount can go.
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn capped_pair(rate: &str) -> Pair {
    let pair = Pair::new();
    for n in 1..=2 {
        let text = std::fs::read_to_string(pair.config(n)).unwrap();
        let text = text.replacen(
            "peer_timeout_ms = 2000",
            &format!("peer_timeout_ms = 2000\nresync_max_rate = \"{rate}\""),
            1,
        );
        std::fs::write(pair.config(n), text).unwrap();
    }
    pair
}

/// Node 2 killed, `mib` MiB written on node 1, node 2 started again: the
/// resync under way.
fn resync_of(pair: &mut Pair, mib: usize) {
    pair.signal(2, libc::SIGKILL);
    assert!(
        common::wait_until(10, || pair.peer_state() != "connected"),
        "the primary did not notice the killed peer"
    );
    let d = pair.dir(1);
    for i in 0..mib / 32 {
        std::fs::write(d.join(format!("f{i}")), common::noise(i as u64, 32 << 20)).unwrap();
    }
    pair.start(2);
    assert!(
        common::wait_until(30, || resync_sent(pair) > 0),
        "no resync started: {:?}",
        pair.replication(1)
    );
}

fn resync_sent(pair: &Pair) -> u64 {
    pair.replication(1)
        .and_then(|r| r["resync"]["bytes_sent"].as_u64())
        .unwrap_or(0)
}

fn resync_ended(pair: &Pair, secs: u64) {
    let ok = common::wait_until(secs, || {
        pair.replication(1).is_some_and(|s| {
            s["peer"] == "connected"
                && s["dirty_bytes"] == 0
                && s["durable"].as_u64() >= s["sent"].as_u64()
        })
    });
    assert!(ok, "the resync did not end: {:?}", pair.replication(1));
    assert_same_tree(&pair.dir(1), &pair.dir(2));
}

#[test]
fn a_resync_keeps_to_its_rate_cap_while_live_writes_go_on() {
    let cap: u64 = 8 << 20;
    let mut pair = capped_pair("8MiB");
    pair.start_both();
    pair.wait_caught_up();
    // 128 MiB: 16 s at the cap.
    resync_of(&mut pair, 128);
    // The first second holds at most a tenth of a second's burst: measure
    // over the ten after it.
    std::thread::sleep(std::time::Duration::from_secs(1));
    let b0 = resync_sent(&pair);
    let shown = pair.replication(1).unwrap()["resync"]["max_rate"].clone();
    assert_eq!(shown, cap, "status shows the cap");
    let t0 = std::time::Instant::now();
    // Live writes meanwhile are not held back by the cap.
    let live = std::time::Instant::now();
    std::fs::write(pair.dir(1).join("live"), common::noise(9, 4 << 20)).unwrap();
    assert!(
        live.elapsed() < std::time::Duration::from_secs(3),
        "a live 4 MiB write took {:?} during a capped resync",
        live.elapsed()
    );
    std::thread::sleep(std::time::Duration::from_secs(10).saturating_sub(t0.elapsed()));
    let rate = (resync_sent(&pair) - b0) as f64 / t0.elapsed().as_secs_f64();
    assert!(
        (rate - cap as f64).abs() <= cap as f64 / 10.0,
        "resync at {:.2} MiB/s, cap 8 MiB/s",
        rate / (1u64 << 20) as f64
    );
    resync_ended(&pair, 60);
}

#[test]
fn changes_made_while_the_peer_was_away_do_not_make_its_resync_yield() {
    // The cap makes the resync last long enough to watch: 32 MiB, 4 s.
    let mut pair = capped_pair("8MiB");
    pair.start_both();
    pair.wait_caught_up();
    pair.signal(2, libc::SIGKILL);
    assert!(common::wait_until(10, || pair.peer_state() != "connected"));
    std::fs::write(pair.dir(1).join("away"), common::noise(5, 32 << 20)).unwrap();
    // The application wrote a second before the resync, not during it.
    std::thread::sleep(std::time::Duration::from_secs(1));
    pair.start(2);
    assert!(common::wait_until(30, || resync_sent(&pair) > 0));
    let t0 = std::time::Instant::now();
    let mut seen = Vec::new();
    while t0.elapsed() < std::time::Duration::from_secs(1) {
        let r = pair.replication(1).unwrap();
        if r["resync"]["running"] == true {
            seen.push(r["resync"]["state"].as_str().unwrap_or("?").to_string());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        seen.len() >= 5,
        "the resync ended too soon to watch: {seen:?}"
    );
    assert!(
        seen.iter().all(|s| s == "running"),
        "a resync with no application writing said: {seen:?}"
    );
    resync_ended(&pair, 60);
}

#[test]
fn a_resync_yields_to_its_minimum_while_the_application_writes_and_takes_the_rest_after() {
    let min: u64 = 6 << 20;
    let mut pair = Pair::new();
    for n in 1..=2 {
        let text = std::fs::read_to_string(pair.config(n)).unwrap();
        let text = text.replacen(
            "peer_timeout_ms = 2000",
            "peer_timeout_ms = 2000\nresync_min_rate = \"6MiB\"",
            1,
        );
        std::fs::write(pair.config(n), text).unwrap();
    }
    pair.start_both();
    pair.wait_caught_up();
    // The application writes flat out from before the resync starts.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, path) = (stop.clone(), pair.dir(1).join("app.log"));
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::File::create(path).unwrap();
            let block = common::noise(3, 64 << 10);
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                f.write_all(&block).unwrap();
                n += 1;
                if n.is_multiple_of(16) {
                    f.sync_data().unwrap();
                }
                if n.is_multiple_of(1024) {
                    f.set_len(0).unwrap();
                    std::io::Seek::rewind(&mut f).unwrap();
                }
            }
        })
    };
    resync_of(&mut pair, 256);
    std::thread::sleep(std::time::Duration::from_secs(1));
    let (b0, t0) = (resync_sent(&pair), std::time::Instant::now());
    std::thread::sleep(std::time::Duration::from_secs(5));
    let r = pair.replication(1).unwrap();
    let busy = (resync_sent(&pair) - b0) as f64 / t0.elapsed().as_secs_f64();
    assert_eq!(r["resync"]["state"], "yielding", "{r}");
    assert_eq!(r["resync"]["min_rate"], min, "{r}");
    let mib = |b: f64| b / (1u64 << 20) as f64;
    assert!(
        busy >= min as f64 * 0.9 && busy <= min as f64 * 1.15,
        "while the application writes: {:.2} MiB/s, the minimum 6 MiB/s",
        mib(busy)
    );
    // The application stops: the resync takes the rest.
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let (b1, t1) = (resync_sent(&pair), std::time::Instant::now());
    std::thread::sleep(std::time::Duration::from_secs(1));
    let free = (resync_sent(&pair) - b1) as f64 / t1.elapsed().as_secs_f64();
    let left = pair.replication(1).unwrap()["dirty_bytes"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        free > 3.0 * min as f64 || left == 0,
        "once the application stopped: {:.2} MiB/s",
        mib(free)
    );
    resync_ended(&pair, 60);
}

#[test]
fn a_paused_resync_ships_nothing_until_resumed() {
    let mut pair = capped_pair("4MiB");
    pair.start_both();
    pair.wait_caught_up();
    // Bad input changes nothing and says why.
    let refused = |pair: &Pair, args: &[&str], why: &str| {
        let o = pair.tandem(1, args);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(!o.status.success() && err.contains(why), "{args:?}: {err}");
    };
    refused(
        &pair,
        &["resync", "app", "--pause"],
        "no resync of this module is running",
    );
    refused(&pair, &["resync", "app", "--rate", "-1"], "--rate");
    refused(&pair, &["resync", "app", "--rate", "5XB"], "is not a rate");
    refused(
        &pair,
        &["resync", "app", "--pause", "--resume"],
        "cannot be used with",
    );
    refused(&pair, &["resync", "nope", "--pause"], "no module named");
    let o = pair.tandem(2, &["resync", "app", "--pause"]);
    assert!(!o.status.success(), "the secondary steers no resync");

    resync_of(&mut pair, 64);
    let o = pair.tandem(1, &["resync", "app", "--pause"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // What was on its way when paused lands; then nothing more.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let b0 = resync_sent(&pair);
    let r = pair.replication(1).unwrap();
    assert_eq!(r["resync"]["paused"], true, "{r}");
    let status = String::from_utf8_lossy(&pair.tandem(1, &["status"]).stdout).to_string();
    assert!(status.contains("PAUSED"), "{status}");
    // Live writes go on while it is paused.
    let live = std::time::Instant::now();
    std::fs::write(pair.dir(1).join("live"), common::noise(9, 1 << 20)).unwrap();
    assert!(live.elapsed() < std::time::Duration::from_secs(3));
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(resync_sent(&pair), b0, "sent while paused");

    // The pause outlives the primary's daemon, and says so.
    pair.signal(1, libc::SIGTERM);
    pair.start(1);
    assert!(
        common::wait_until(30, || pair
            .replication(1)
            .is_some_and(|r| r["resync"]["running"] == true)),
        "no resync after the restart: {:?}",
        pair.replication(1)
    );
    let r = pair.replication(1).unwrap();
    assert_eq!(r["resync"]["paused"], true, "{r}");
    assert!(
        r["resync"]["paused_since_unix_ms"].as_u64().unwrap() > 0,
        "{r}"
    );
    let log = std::fs::read_to_string(pair.log(1)).unwrap();
    assert!(
        log.contains("is PAUSED since"),
        "the restart does not say so"
    );
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(
        resync_sent(&pair),
        0,
        "a restarted resync sent while paused"
    );

    // The peer lost while the paused resync waits: the primary goes on
    // alone within the peer timeout, and the paused resync holds nothing.
    pair.signal(2, libc::SIGKILL);
    let lost = std::time::Instant::now();
    std::fs::write(pair.dir(1).join("alone"), common::noise(10, 1 << 20)).unwrap();
    assert!(
        lost.elapsed() < std::time::Duration::from_secs(4),
        "a write waited {:?} with the peer lost during a paused resync",
        lost.elapsed()
    );
    assert!(common::wait_until(10, || pair.peer_state() != "connected"));
    let status = String::from_utf8_lossy(&pair.tandem(1, &["status"]).stdout).to_string();
    assert!(status.contains("PAUSED since"), "{status}");
    pair.start(2);
    assert!(common::wait_until(30, || pair
        .replication(1)
        .is_some_and(|r| r["resync"]["running"] == true)));
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(resync_sent(&pair), 0, "sent while paused");

    // Resumed without the cap: it ends.
    let o = pair.tandem(1, &["resync", "app", "--resume", "--rate", "0"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    resync_ended(&pair, 60);
    let r = pair.replication(1).unwrap();
    assert_eq!(r["resync"]["paused"], false, "{r}");
    assert_eq!(r["resync"]["max_rate"], 0, "{r}");
}

/// A resync whose names pass (12,000 names) has its peer frozen for `frozen`
/// in the middle, while the application logs and syncs all along. Returns
/// how many links were made after the first, whether the primary had let
/// the peer go before it thawed, and the application's worst write+fdatasync.
fn names_pass_with_its_peer_frozen(
    frozen: std::time::Duration,
) -> (usize, bool, std::time::Duration) {
    let mut pair = Pair::new();
    pair.start_both();
    pair.wait_caught_up();
    pair.signal(2, libc::SIGKILL);
    assert!(
        common::wait_until(10, || pair.peer_state() != "connected"),
        "the primary did not notice the killed peer"
    );
    // 24,000 names for the resync's first pass: long enough to freeze the
    // peer in its middle on a busy machine.
    let d = pair.dir(1);
    for i in 0..24 {
        let sub = d.join(format!("d{i}"));
        std::fs::create_dir(&sub).unwrap();
        for j in 0..1000 {
            std::fs::File::create(sub.join(format!("f{j}"))).unwrap();
        }
    }
    // The application logs and syncs all along, and times each call.
    let writer = LogWriter::start(d.join("app.log"));
    let links = |pair: &Pair| pair.log_text(1).matches("connected to").count();
    let before = links(&pair);
    pair.start(2);
    let names = |pair: &Pair| {
        pair.replication(1)
            .and_then(|r| r["resync"]["names"].as_u64())
            .unwrap_or(0)
    };
    assert!(
        common::wait_until_every(30, std::time::Duration::from_millis(5), || names(&pair) > 0),
        "no names pass started: {:?}",
        pair.replication(1)
    );
    // The peer freezes in the middle of the pass.
    let dropped = |pair: &Pair| pair.log_text(1).matches("peer out of date").count();
    let dropped_before = dropped(&pair);
    let pid = pair.pid(2);
    freeze(pid);
    let at = names(&pair);
    assert!(
        at < 24_000,
        "the names pass ended before the freeze ({at} names)"
    );
    std::thread::sleep(frozen);
    let let_go = dropped(&pair) > dropped_before;
    // SAFETY: kill takes no pointer; `pid` is the stopped daemon's, which the pair holds as a child
    // not reaped.
    unsafe { libc::kill(pid as i32, libc::SIGCONT) };
    let ok = common::wait_until(120, || {
        pair.replication(1).is_some_and(|s| {
            s["peer"] == "connected"
                && s["dirty_bytes"] == 0
                && !s["resync"]["running"].as_bool().unwrap_or(true)
        })
    });
    let worst = writer.stop();
    assert!(ok, "the resync did not end: {:?}", pair.replication(1));
    pair.wait_caught_up();
    assert_same_tree(&pair.dir(1), &pair.dir(2));
    (links(&pair) - before, let_go, worst)
}

#[test]
fn a_long_names_pass_never_holds_the_application_even_with_its_peer_frozen_meanwhile() {
    // For most of the peer's timeout: it keeps its link.
    let (links, let_go, worst) =
        names_pass_with_its_peer_frozen(std::time::Duration::from_millis(1500));
    assert!(
        !let_go,
        "the peer was let go while frozen for less than its timeout"
    );
    assert_eq!(links, 1, "the link was lost and the resync started over");
    assert!(
        worst < std::time::Duration::from_millis(500),
        "a write and fdatasync of the application took {worst:?} during the names pass"
    );
}

#[test]
fn a_peer_frozen_past_its_timeout_in_the_names_pass_is_let_go_and_resynchronised_after() {
    // The names pass waits for a peer that works through its queue, not for
    // one that applies nothing: past the timeout (2 s) the link goes, and the
    // resync starts again once the peer is back.
    let (links, let_go, worst) =
        names_pass_with_its_peer_frozen(std::time::Duration::from_millis(3500));
    assert!(
        let_go,
        "the primary still held the link to a peer frozen for 3.5 s"
    );
    assert!(links >= 2, "no new link after the peer came back");
    assert!(
        worst < std::time::Duration::from_millis(500),
        "a write and fdatasync of the application took {worst:?} during the names pass"
    );
}

/// A full sync's compare talks to the peer before any link carries the
/// application's changes: the peer frozen in the middle of it (past its
/// timeout) holds no application call, and once it thaws the full sync ends
/// with the trees identical.
#[test]
fn a_peer_frozen_in_a_full_syncs_compare_holds_no_application_call() {
    let mut pair = Pair::new();
    pair.start_both();
    let d = pair.dir(1);
    for i in 0..20 {
        let sub = d.join(format!("d{i}"));
        std::fs::create_dir(&sub).unwrap();
        // Enough to hash that the compare outlasts the few ms to freeze the peer.
        for j in 0..100 {
            std::fs::write(sub.join(format!("f{j}")), format!("{i} {j} ").repeat(3000)).unwrap();
        }
    }
    pair.wait_caught_up();
    // Damage behind tandem's back on the peer, for the full sync to find.
    for i in 0..20 {
        std::fs::write(pair.dir(2).join(format!("d{i}/f7")), b"damaged").unwrap();
    }
    let writer = LogWriter::start(d.join("app.log"));
    let o = pair.tandem(2, &["second", "app", "--fullsync"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        common::wait_until_every(30, std::time::Duration::from_millis(5), || pair
            .log_text(1)
            .contains("full sync requested by")),
        "no full sync started: {}",
        pair.log_text(1)
    );
    let pid = pair.pid(2);
    freeze(pid);
    assert!(
        !pair.log_text(1).contains("full sync: "),
        "the compare ended before the freeze"
    );
    std::thread::sleep(std::time::Duration::from_millis(3000));
    // SAFETY: kill takes no pointer; `pid` is the stopped daemon's, which the pair holds as a child
    // not reaped.
    unsafe { libc::kill(pid as i32, libc::SIGCONT) };
    let synced = common::wait_until(120, || {
        pair.log_text(1).contains("full sync: ")
            && std::fs::read(pair.dir(2).join("d19/f7")).ok()
                == std::fs::read(d.join("d19/f7")).ok()
    });
    let worst = writer.stop();
    assert!(synced, "the full sync did not end: {}", pair.log_text(1));
    pair.wait_caught_up();
    assert_same_tree(&pair.dir(1), &pair.dir(2));
    assert!(
        worst < std::time::Duration::from_millis(500),
        "a write+fdatasync took {worst:?} with the peer frozen in the compare"
    );
}

#[test]
fn hard_linked_files_changed_while_the_peer_was_away_come_back_under_their_remaining_names() {
    let mut pair = Pair::new();
    pair.start_both();
    let d = pair.dir(1);
    for sub in ["tmp", "new", "cur"] {
        std::fs::create_dir(d.join(sub)).unwrap();
    }
    std::fs::write(d.join("old"), b"linked before the outage").unwrap();
    std::fs::hard_link(d.join("old"), d.join("old.link")).unwrap();
    std::fs::write(d.join("cur/target"), b"to be replaced").unwrap();
    std::fs::hard_link(d.join("cur/target"), d.join("cur/target.link")).unwrap();
    pair.wait_caught_up();

    pair.signal(2, libc::SIGKILL);
    // Mail delivery: written under tmp/, linked into new/, the first name removed.
    for i in 0..5 {
        let tmp = d.join(format!("tmp/m{i}"));
        std::fs::write(&tmp, format!("message {i}\n").repeat(200)).unwrap();
        std::fs::hard_link(&tmp, d.join(format!("new/m{i}"))).unwrap();
        std::fs::remove_file(&tmp).unwrap();
    }
    // Written through one name of an older link, then that name removed.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(d.join("old"))
        .unwrap();
    f.write_all_at(b"CHANGED", 0).unwrap();
    drop(f);
    std::fs::remove_file(d.join("old")).unwrap();
    // Written through one name, then another file renamed over that name.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(d.join("cur/target"))
        .unwrap();
    f.write_all_at(b"REWRITTEN", 3).unwrap();
    drop(f);
    std::fs::write(d.join("cur/other"), b"other").unwrap();
    std::fs::rename(d.join("cur/other"), d.join("cur/target")).unwrap();

    pair.start(2);
    pair.wait_connected();
    pair.wait_caught_up();
    assert_same_tree(&pair.dir(1), &pair.dir(2));
    assert_eq!(
        std::fs::read(pair.dir(2).join("old.link")).unwrap(),
        b"CHANGEDbefore the outage"
    );
}

#[test]
fn a_hard_linked_file_changed_under_a_name_since_removed_comes_back_under_names_never_seen() {
    let mut pair = Pair::new();
    pair.start_both();
    let d = pair.dir(1);
    std::fs::create_dir(d.join("backup")).unwrap();
    std::fs::write(d.join("data"), b"linked long ago").unwrap();
    std::fs::hard_link(d.join("data"), d.join("backup/data")).unwrap();
    pair.wait_caught_up();
    // A restarted primary knows no names until they are looked up.
    pair.signal(1, libc::SIGTERM);
    pair.start(1);
    pair.wait_connected();
    pair.wait_caught_up();

    pair.signal(2, libc::SIGKILL);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(d.join("data"))
        .unwrap();
    f.write_all_at(b"CHANGED", 0).unwrap();
    drop(f);
    std::fs::remove_file(d.join("data")).unwrap();

    pair.start(2);
    pair.wait_connected();
    pair.wait_caught_up();
    assert_eq!(
        std::fs::read(pair.dir(2).join("backup/data")).unwrap(),
        b"CHANGEDlong ago"
    );
    assert_same_tree(&pair.dir(1), &pair.dir(2));
    assert!(
        pair.log_text(1).contains("comparing with node2 by content"),
        "{}",
        pair.log_text(1)
    );
}

#[test]
fn fsynced_writes_survive_a_killed_primary() {
    let mut pair = Pair::new();
    pair.start_both();
    let d = pair.dir(1);
    let mut expected = Vec::new();
    for i in 0..40 {
        let name = format!("rec{i}");
        let body = format!("record {i} ").repeat(100 + i);
        let mut f = std::fs::File::create(d.join(&name)).unwrap();
        f.write_all(body.as_bytes()).unwrap();
        f.sync_all().unwrap();
        expected.push((name, body));
    }
    // O_SYNC writes are durable when they return, too.
    let mut s = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .custom_flags(libc::O_SYNC)
        .open(d.join("osync"))
        .unwrap();
    s.write_all(b"synchronous").unwrap();
    pair.signal(1, libc::SIGKILL);
    drop(s);
    for (name, body) in &expected {
        let got = std::fs::read(pair.dir(2).join(name)).unwrap();
        assert_eq!(got, body.as_bytes(), "{name}");
    }
    assert_eq!(
        std::fs::read(pair.dir(2).join("osync")).unwrap(),
        b"synchronous"
    );
    // The killed primary's mount is stale; the restarted daemon cleans it up.
    pair.start(1);
    pair.wait_connected();
    pair.wait_caught_up();
    assert_same_tree(&pair.dir(1), &pair.dir(2));
}

/// Stops a process and returns once every thread of it has stopped: a stop
/// signal reaches one thread first, and the others keep running (acknowledging,
/// say) until that thread is scheduled and passes the stop on.
fn freeze(pid: u32) {
    // SAFETY: kill takes no pointer; `pid` is the running daemon's, which the pair holds as a child
    // not reaped.
    unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
    let stopped = || {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .all(|t| {
                let stat =
                    std::fs::read_to_string(t.unwrap().path().join("stat")).unwrap_or_default();
                // The state follows the command name in parentheses.
                stat.rsplit_once(") ")
                    .is_some_and(|(_, rest)| rest.starts_with('T'))
            })
    };
    assert!(
        common::wait_until_every(10, std::time::Duration::from_millis(1), stopped),
        "process {pid} did not stop"
    );
}

/// User and system time of process `pid`, all its threads included.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .unwrap()
        .unwrap() as f64;
    (fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap()) / tick
}

/// A pair whose secondary caught up and was then frozen: its socket stays
/// open but nothing is read or acknowledged. Returns its pid too.
fn frozen_secondary() -> (Pair, u32) {
    let mut pair = Pair::new();
    pair.start_both();
    std::fs::write(pair.dir(1).join("before"), b"1").unwrap();
    pair.wait_caught_up();
    let pid = pair.pid(2);
    freeze(pid);
    (pair, pid)
}

#[test]
fn a_peer_that_stops_answering_never_blocks_the_application_past_the_timeout() {
    let (pair, pid) = frozen_secondary();
    let d = pair.dir(1);
    let t = std::time::Instant::now();
    let cpu = cpu_seconds(pair.pid(1));
    // fsync waits for the peer: at most peer_timeout, then the primary goes on alone.
    let mut f = std::fs::File::create(d.join("during")).unwrap();
    f.write_all(b"2").unwrap();
    f.sync_all().unwrap();
    drop(f);
    let took = t.elapsed();
    let cpu = cpu_seconds(pair.pid(1)) - cpu;
    assert_eq!(pair.peer_state(), "alone");
    // Waiting costs nothing: no thread asks the silent socket again and
    // again (the link's reader once spun while a waiting call read).
    assert!(
        cpu < took.as_secs_f64() * 0.2,
        "the primary used {cpu:.2} s of CPU in a wait of {took:?}"
    );
    // SAFETY: kill takes no pointer; `pid` is the stopped daemon's, which the pair holds as a child
    // not reaped.
    unsafe { libc::kill(pid as i32, libc::SIGCONT) };
    assert!(
        took < std::time::Duration::from_millis(2000 + 1500),
        "a write waited {took:?} for a frozen peer (peer_timeout 2000 ms)"
    );
    pair.wait_connected();
    pair.wait_caught_up();
    assert_same_tree(&pair.dir(1), &pair.dir(2));
}

#[test]
fn a_frozen_peer_whose_socket_fills_never_blocks_writers_past_the_timeout() {
    let (pair, pid) = frozen_secondary();
    let d = pair.dir(1);
    // Plain writes go out on the writer's own thread: far more than the
    // socket holds, so a write finds no room, and must give up on the peer
    // after peer_timeout instead of blocking the application. The data does
    // not compress (a slow link compresses live changes).
    let mut f = std::fs::File::create(d.join("big")).unwrap();
    let chunk = common::noise(1, 1 << 20);
    let mut worst = std::time::Duration::ZERO;
    for _ in 0..64 {
        let t = std::time::Instant::now();
        f.write_all(&chunk).unwrap();
        worst = worst.max(t.elapsed());
    }
    f.sync_data().unwrap();
    drop(f);
    let state = pair.peer_state();
    // SAFETY: kill takes no pointer; `pid` is the stopped daemon's, which the pair holds as a child
    // not reaped.
    unsafe { libc::kill(pid as i32, libc::SIGCONT) };
    assert_eq!(state, "alone");
    assert!(
        worst < std::time::Duration::from_millis(2000 + 1500),
        "a write waited {worst:?} for a frozen peer (peer_timeout 2000 ms)"
    );
    assert!(
        pair.log_text(1).contains("took no data"),
        "the reason names the stuck socket: {}",
        pair.log_text(1)
    );
    pair.wait_connected();
    pair.wait_caught_up();
    assert_same_tree(&pair.dir(1), &pair.dir(2));
}

#[test]
fn a_primary_frozen_past_peer_timeout_while_waiting_keeps_its_peer() {
    let mut pair = Pair::new();
    pair.start_both();
    pair.wait_caught_up();
    let d = pair.dir(1);
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut f = std::fs::File::create(d.join("f")).unwrap();
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                f.write_all(&n.to_le_bytes()).unwrap();
                f.sync_data().unwrap();
                n += 1;
            }
            n
        });
        std::thread::sleep(std::time::Duration::from_millis(300));
        // Frozen longer than peer_timeout (2000 ms) with fsyncs waiting for
        // the peer's answer, which arrives meanwhile: on waking, the answer
        // is read, and the peer, which was never late, stays current.
        let pid = pair.pid(1);
        freeze(pid);
        std::thread::sleep(std::time::Duration::from_millis(2500));
        // SAFETY: kill takes no pointer; `pid` is the stopped daemon's, which the pair holds as a
        // child not reaped.
        unsafe { libc::kill(pid as i32, libc::SIGCONT) };
        std::thread::sleep(std::time::Duration::from_millis(500));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(writer.join().unwrap() > 10, "the writer made progress");
    });
    assert_eq!(pair.peer_state(), "connected");
    assert!(
        !pair.log_text(1).contains("peer out of date"),
        "the link was dropped: {}",
        pair.log_text(1)
    );
    pair.wait_caught_up();
    assert_same_tree(&pair.dir(1), &pair.dir(2));
}

#[test]
fn each_ack_mode_is_answered_by_the_acknowledgements_it_waits_for() {
    for ack in ["durable", "received", "async"] {
        let mut pair = Pair::with_ack(ack);
        pair.start_both();
        pair.wait_caught_up();
        let before = pair.replication(1).unwrap()["wire"]["acks"]
            .as_u64()
            .unwrap();
        let d = pair.dir(1);
        let t = std::time::Instant::now();
        let mut f = std::fs::File::create(d.join("f")).unwrap();
        for i in 0..100u8 {
            f.write_all(&[i; 4096]).unwrap();
            f.sync_data().unwrap();
        }
        let took = t.elapsed();
        drop(f);
        // A call waiting for an acknowledgement the peer does not send is
        // answered by its keepalive, twice a second: 100 would take 50 s.
        assert!(
            took < std::time::Duration::from_secs(15),
            "{ack}: 100 fsyncs took {took:?}"
        );
        // Plain writes past the peer's 4 MiB acknowledgement step, then
        // everything durable there.
        std::fs::write(d.join("big"), vec![7u8; 9 << 20]).unwrap();
        pair.wait_caught_up();
        assert_same_tree(&pair.dir(1), &pair.dir(2));
        let st = pair.replication(1).unwrap();
        let acks = st["wire"]["acks"].as_u64().unwrap() - before;
        if ack != "async" {
            // One per fsync, a few for the big file, syncfs and keepalives:
            // not one per change sent.
            let secs = t.elapsed().as_secs();
            assert!(
                (100..=100 + 10 + 4 * secs).contains(&acks),
                "{ack}: {acks} acknowledgements for 100 fsyncs in {secs} s: {st}"
            );
        }
        let waits = st["wire"]["peer_waits"].as_u64().unwrap();
        match ack {
            "async" => assert_eq!(waits, 0, "async waits for nothing: {st}"),
            _ => assert!(waits >= 100, "{ack}: {waits} waits counted: {st}"),
        }
    }
}

#[test]
fn a_secondary_killed_and_restarted_mid_workload_ends_identical() {
    let mut pair = Pair::new();
    pair.start_both();
    let root = pair.dir(1);
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..3)
            .map(|t| {
                let root = root.clone();
                s.spawn(move || random_worker(&root, t, 3000, 77 + t as u64))
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(300));
        pair.signal(2, libc::SIGKILL);
        std::thread::sleep(std::time::Duration::from_millis(500));
        // Back while the workload still runs: resync and live writes overlap.
        pair.start(2);
        assert!(
            workers.iter().any(|w| !w.is_finished()),
            "the workload ended before the secondary came back"
        );
        for w in workers {
            w.join().unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    assert!(done.load(std::sync::atomic::Ordering::Relaxed));
    pair.wait_connected();
    pair.wait_caught_up();
    assert_same_tree(&pair.dir(1), &pair.dir(2));
    let st = pair.replication(1).unwrap();
    assert_eq!(st["dirty_bytes"], 0, "{st}");
}

#[test]
fn verify_of_a_tree_of_many_parts_finds_each_difference_in_order() {
    let mut pair = Pair::new();
    pair.start_both();
    // 6,000 names in nested directories: the manifests travel in several
    // parts, compared as they arrive.
    let d = pair.dir(1);
    for a in 0..6 {
        for b in 0..10 {
            let sub = d.join(format!("a{a}/b{b}"));
            std::fs::create_dir_all(&sub).unwrap();
            for i in 0..100 {
                std::fs::write(sub.join(format!("f{i}")), format!("{a}.{b}.{i}")).unwrap();
            }
        }
    }
    // Names sorting around the directories' ('.' and '-' come before '/').
    std::fs::write(d.join("a3.x"), b"dot").unwrap();
    std::fs::write(d.join("a3-x"), b"dash").unwrap();
    pair.wait_caught_up();
    let peer = pair.dir(2);
    // Behind tandem's back on the secondary: early, middle and late in the
    // walk, and on either side of the sibling names.
    std::fs::remove_file(peer.join("a0/b0/f0")).unwrap();
    std::fs::write(peer.join("a3/b5/f50"), b"changed").unwrap();
    std::fs::write(peer.join("a3/b9/zz"), b"only on the peer").unwrap();
    std::fs::remove_file(peer.join("a3.x")).unwrap();
    std::fs::remove_dir_all(peer.join("a5/b9")).unwrap();
    let report = verify_report(&pair, 1);
    let got: Vec<(String, String)> = report["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["path"].as_str().unwrap().to_string(),
                d["what"][0].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut want: Vec<(String, String)> = vec![
        ("a0/b0/f0".into(), "only here".into()),
        ("a3/b5/f50".into(), "size".into()),
        ("a3/b9/zz".into(), "only on the peer".into()),
        ("a3.x".into(), "only here".into()),
        ("a5/b9".into(), "only here".into()),
    ];
    want.extend((0..100).map(|i| (format!("a5/b9/f{i}"), "only here".to_string())));
    want.sort();
    let mut sorted = got.clone();
    sorted.sort();
    // The directories the changes touched differ in their times too.
    let only: Vec<_> = sorted
        .into_iter()
        .filter(|(p, _)| ![".", "a0/b0", "a3/b5", "a3/b9", "a5"].contains(&p.as_str()))
        .collect();
    assert_eq!(only, want, "{report}");
    assert_eq!(report["files"], 6_000 + 60 + 6 + 2 + 1, "{report}");
    let o = pair.tandem(1, &["verify", "app", "--repair"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert_same_tree(&pair.dir(1), &pair.dir(2));
}

#[test]
fn verify_finds_differences_repair_and_full_sync_remove_them() {
    let mut pair = Pair::new();
    // The secondary starts with stale and foreign data of its own.
    std::fs::write(pair.dir(2).join("stale"), b"old contents here").unwrap();
    std::fs::write(pair.dir(2).join("foreign"), b"only on node2").unwrap();
    pair.start_both();
    let d = pair.dir(1);
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let big: Vec<u8> = (0..3 << 20).map(|_| rng.random()).collect();
    std::fs::write(d.join("big"), &big).unwrap();
    std::fs::write(d.join("stale"), b"new contents here").unwrap();
    pair.wait_caught_up();

    // Verify sees what replication alone cannot know about.
    let report = verify_report(&pair, 1);
    let diffs = report["differences"].as_array().unwrap();
    let paths: Vec<&str> = diffs.iter().map(|d| d["path"].as_str().unwrap()).collect();
    assert!(paths.contains(&"foreign"), "{report}");
    assert!(!paths.contains(&"big"), "{report}");

    // A change made behind tandem's back on the secondary: found to the range.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(pair.dir(2).join("big"))
        .unwrap();
    f.write_all_at(b"corrupted!", 2_000_000).unwrap();
    drop(f);
    let report = verify_report(&pair, 1);
    let big_diff = report["differences"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["path"] == "big")
        .unwrap_or_else(|| panic!("big not reported: {report}"))
        .clone();
    let ranges = big_diff["ranges"].as_array().unwrap();
    assert!(!ranges.is_empty());
    for r in ranges {
        let (s, e) = (r[0].as_u64().unwrap(), r[1].as_u64().unwrap());
        assert!(s <= 2_000_000 && e >= 2_000_010 && e - s <= 600_000, "{r}");
    }

    // --repair ships the differences and verifies again.
    let o = pair.tandem(1, &["verify", "app", "--repair"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("repaired"));
    assert_same_tree(&pair.dir(1), &pair.dir(2));
    assert!(!pair.dir(2).join("foreign").exists());

    // Full sync on request of the secondary, after more damage there.
    std::fs::write(pair.dir(2).join("stale"), b"damaged again").unwrap();
    std::fs::remove_file(pair.dir(2).join("big")).unwrap();
    let before = pair.replication(1).unwrap()["bytes_replicated"]
        .as_u64()
        .unwrap();
    let o = pair.tandem(2, &["second", "app", "--fullsync"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(common::wait_until(30, || {
        pair.replication(2).is_some_and(|s| s["peer"] == "uptodate")
            && std::fs::read(pair.dir(2).join("stale")).ok().as_deref()
                == Some(&b"new contents here"[..])
    }));
    pair.wait_caught_up();
    assert_same_tree(&pair.dir(1), &pair.dir(2));
    let shipped = pair.replication(1).unwrap()["bytes_replicated"]
        .as_u64()
        .unwrap()
        - before;
    assert!(
        shipped <= (3 << 20) + 4096,
        "full sync shipped {shipped} bytes"
    );

    // And an identical pair verifies clean, from the cache the second time.
    verify_report(&pair, 0);
    let report = verify_report(&pair, 0);
    assert_eq!(report["bytes_hashed"], 0, "{report}");
    // Verify is the primary's: the secondary says so.
    let o = pair.tandem(2, &["verify", "app"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("primary"));
}

/// A full sync compares the two trees as they stream past and records what
/// differs a batch at a time: thousands of names of each kind of difference,
/// several batches of each, end identical, and files already equal are not
/// shipped.
#[test]
fn a_full_sync_of_thousands_of_names_ships_what_differs_and_nothing_else() {
    let mut pair = Pair::new();
    let (one, two) = (pair.dir(1), pair.dir(2));
    let at = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
    let put = |root: &Path, name: &str, data: &[u8]| {
        let p = root.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(at)
            .unwrap();
    };
    let body = |tag: &str, i: usize| format!("{tag} {i} ").repeat(200).into_bytes();
    // Equal on both nodes (contents and times): more than one hashing batch.
    for i in 0..1500 {
        let b = body("same", i);
        put(&one, &format!("d{}/same{i}", i % 20), &b);
        put(&two, &format!("d{}/same{i}", i % 20), &b);
    }
    // The same names, other contents of the same size and times.
    for i in 0..700 {
        put(&one, &format!("d{}/changed{i}", i % 20), &body("new", i));
        put(&two, &format!("d{}/changed{i}", i % 20), &body("old", i));
    }
    // Only here (more than one batch of records), only on the peer, and one
    // name of another type there.
    for i in 0..5000 {
        put(
            &one,
            &format!("d{}/here{i}", i % 20),
            format!("{i}").as_bytes(),
        );
    }
    for i in 0..300 {
        put(&two, &format!("d{}/there{i}", i % 20), b"the peer's own");
    }
    put(&one, "kind", b"a file here");
    std::fs::create_dir_all(two.join("kind/below")).unwrap();
    pair.start_both();
    pair.wait_caught_up();
    let before = pair.replication(1).unwrap()["bytes_replicated"]
        .as_u64()
        .unwrap();

    let o = pair.tandem(2, &["second", "app", "--fullsync"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        common::wait_until(60, || pair.log_text(1).contains("full sync: ")),
        "{}",
        pair.log_text(1)
    );
    assert!(common::wait_until(60, || {
        pair.replication(2).is_some_and(|s| s["peer"] == "uptodate")
            && !two.join("kind").is_dir()
            && two.join("d19/here4999").exists()
    }));
    pair.wait_caught_up();
    assert_same_tree(&one, &two);
    assert_eq!(
        std::fs::read(two.join("d3/changed3")).unwrap(),
        body("new", 3)
    );
    // What differed and nothing else: 700 changed files, 5,000 only here,
    // 300 only there, one of another type (and the directories' times).
    let log = pair.log_text(1);
    let found: u64 = log
        .split("full sync: ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {log}"));
    assert!(
        (6001..=6001 + 22).contains(&found),
        "{found} differences: {log}"
    );
    let shipped = pair.replication(1).unwrap()["bytes_replicated"]
        .as_u64()
        .unwrap()
        - before;
    let differing: u64 = (0..700).map(|i| body("new", i).len() as u64).sum::<u64>()
        + (0..5000).map(|i| format!("{i}").len() as u64).sum::<u64>()
        + 11;
    assert!(
        shipped >= differing && shipped <= differing + (1 << 20),
        "shipped {shipped} bytes for {differing} differing"
    );
}

#[test]
fn a_full_disk_on_the_secondary_leaves_the_primary_serving_alone() {
    let mut pair = Pair::new();
    // The secondary's directory is a tiny file system of its own.
    let small = pair.dir(2);
    let c = cpath(&small);
    let opts = std::ffi::CString::new("size=2m").unwrap();
    // SAFETY: the four strings are NUL-terminated and live across the call (`opts` is the option
    // string tmpfs reads as data).
    let r = unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            c.as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            opts.as_ptr().cast(),
        )
    };
    assert_eq!(r, 0, "mounting a tmpfs on {}", small.display());
    struct Unmount(std::ffi::CString);
    impl Drop for Unmount {
        fn drop(&mut self) {
            // SAFETY: `self.0` is a NUL-terminated path living across the call.
            unsafe { libc::umount2(self.0.as_ptr(), libc::MNT_DETACH) };
        }
    }
    let _guard = Unmount(c.clone());
    pair.start_both();
    let d = pair.dir(1);
    let data: Vec<u8> = (0..6u32 << 20).map(|i| (i % 251) as u8).collect();
    let mut f = std::fs::File::create(d.join("big")).unwrap();
    f.write_all(&data).unwrap();
    // The fsync returns: the data is durable here, and the peer could not take it.
    f.sync_all().unwrap();
    drop(f);
    assert!(
        common::wait_until(10, || pair.peer_state() != "connected"),
        "{:?}",
        pair.replication(1)
    );
    assert_eq!(std::fs::read(d.join("big")).unwrap(), data);
    let st = pair.replication(1).unwrap();
    assert!(st["dirty_bytes"].as_u64().unwrap() > 0, "{st}");
    assert!(
        pair.log_text(2).contains("No space left on device"),
        "{}",
        pair.log_text(2)
    );
    // The primary keeps serving: more writes, with fsync, do not block.
    let t = std::time::Instant::now();
    let mut g = std::fs::File::create(d.join("after")).unwrap();
    g.write_all(b"still serving").unwrap();
    g.sync_all().unwrap();
    assert!(
        t.elapsed() < std::time::Duration::from_secs(4),
        "{:?}",
        t.elapsed()
    );
}

/// `exclude`: what matches stays on its node — live, across renames in
/// both directions, in a resync, a verify and a full sync — and what the
/// peer keeps under excluded names is never removed.
#[test]
fn excluded_paths_stay_on_their_node_live_in_resync_verify_and_full_sync() {
    let mut pair = Pair::with_module("durable", r#"exclude = ["*.tmp", "cache/"]"#);
    let (d1, d2) = (pair.dir(1), pair.dir(2));
    // node2's own excluded files, there before it ever follows node1.
    std::fs::write(d2.join("mine.tmp"), b"node2's scratch").unwrap();
    std::fs::create_dir(d2.join("cache")).unwrap();
    std::fs::write(d2.join("cache/own"), b"node2's cache").unwrap();
    pair.start_both();
    let holds = |p: &str, want: &[u8]| {
        assert_eq!(std::fs::read(d2.join(p)).unwrap(), want, "{p} on the peer");
    };
    let lacks = |paths: &[&str]| {
        for p in paths {
            assert!(!d2.join(p).exists(), "{p} reached the peer");
        }
    };
    let uptodate = |pair: &Pair| {
        assert!(common::wait_until(30, || pair
            .replication(2)
            .is_some_and(|s| s["peer"] == "uptodate")));
    };

    std::fs::write(d1.join("keep.txt"), b"replicated").unwrap();
    std::fs::write(d1.join("scratch.tmp"), b"local only").unwrap();
    std::fs::create_dir_all(d1.join("sub")).unwrap();
    std::fs::write(d1.join("sub/deep.tmp"), b"local only").unwrap();
    std::fs::create_dir(d1.join("cache")).unwrap();
    std::fs::write(d1.join("cache/blob"), vec![7u8; 200_000]).unwrap();
    std::fs::create_dir(d1.join("cache/tree")).unwrap();
    std::fs::write(d1.join("cache/tree/leaf"), b"leaf").unwrap();
    // A file called like an excluded directory is replicated.
    std::fs::create_dir(d1.join("sub/cachedir")).unwrap();
    std::fs::write(d1.join("sub/cache"), b"a file, not a directory").unwrap();
    // Saved the usual way: written under a temporary name, renamed into place.
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(d1.join("doc.txt.tmp"), &body).unwrap();
    std::fs::rename(d1.join("doc.txt.tmp"), d1.join("doc.txt")).unwrap();
    // A directory leaves the cache for a replicated name, one file the other way.
    std::fs::rename(d1.join("cache/tree"), d1.join("tree")).unwrap();
    std::fs::write(d1.join("gone.txt"), b"soon excluded").unwrap();
    pair.wait_caught_up();
    assert!(d2.join("gone.txt").exists());
    std::fs::rename(d1.join("gone.txt"), d1.join("gone.tmp")).unwrap();
    pair.wait_caught_up();

    holds("keep.txt", b"replicated");
    holds("doc.txt", &body);
    holds("tree/leaf", b"leaf");
    holds("sub/cache", b"a file, not a directory");
    lacks(&[
        "scratch.tmp",
        "sub/deep.tmp",
        "cache/blob",
        "doc.txt.tmp",
        "gone.txt",
        "gone.tmp",
    ]);
    let own = |pair: &Pair| {
        assert_eq!(
            std::fs::read(pair.dir(2).join("mine.tmp")).unwrap(),
            b"node2's scratch"
        );
        assert_eq!(
            std::fs::read(pair.dir(2).join("cache/own")).unwrap(),
            b"node2's cache"
        );
    };
    own(&pair);

    // verify compares what is replicated only; a repair removes nothing
    // of node2's own.
    verified(&pair, &["verify", "app", "--repair"]);
    verified(&pair, &["verify", "app", "--json"]);
    own(&pair);

    // A resync after node2 was away: excluded changes stay here.
    pair.signal(2, libc::SIGKILL);
    std::fs::write(d1.join("later.tmp"), b"local only").unwrap();
    std::fs::write(d1.join("later.txt"), b"replicated later").unwrap();
    std::fs::write(d1.join("cache/more"), b"local only").unwrap();
    std::fs::write(d1.join("saved.tmp"), b"saved while away").unwrap();
    std::fs::rename(d1.join("saved.tmp"), d1.join("saved.txt")).unwrap();
    std::fs::rename(d1.join("keep.txt"), d1.join("keep.tmp")).unwrap();
    pair.start(2);
    pair.wait_connected();
    pair.wait_caught_up();
    uptodate(&pair);
    holds("later.txt", b"replicated later");
    holds("saved.txt", b"saved while away");
    lacks(&[
        "later.tmp",
        "cache/more",
        "saved.tmp",
        "keep.txt",
        "keep.tmp",
    ]);
    own(&pair);

    // A full sync neither ships nor removes excluded files.
    let o = pair.tandem(2, &["second", "app", "--fullsync"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    uptodate(&pair);
    pair.wait_caught_up();
    own(&pair);
    lacks(&["scratch.tmp", "cache/blob"]);
    verified(&pair, &["verify", "app", "--json"]);
}

/// `tandem ARGS` on the primary reports identical trees (exit 0).
/// `tandem verify app --json` on node 1, which must exit with `code`: its report.
fn verify_report(pair: &Pair, code: i32) -> serde_json::Value {
    let o = pair.tandem(1, &["verify", "app", "--json"]);
    assert_eq!(
        o.status.code(),
        Some(code),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

fn verified(pair: &Pair, args: &[&str]) {
    let o = pair.tandem(1, args);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}

#[test]
fn a_resync_after_ten_thousand_names_made_while_connected_starts_at_once_and_holds_no_call() {
    let mut pair = Pair::new();
    pair.start_both();
    let d = pair.dir(1);
    // Made through the mount while the peer is connected: every name is a
    // record of the names log, cleared as the peer acknowledges it.
    for i in 0..100 {
        let sub = d.join(format!("d{i}"));
        std::fs::create_dir(&sub).unwrap();
        for j in 0..100 {
            std::fs::write(sub.join(format!("f{j}")), format!("{i} {j}")).unwrap();
        }
    }
    pair.wait_caught_up();
    for i in 0..100 {
        std::fs::write(pair.dir(2).join(format!("d{i}/f7")), b"damaged").unwrap();
    }
    let writer = LogWriter::start(d.join("app.log"));
    let o = pair.tandem(2, &["second", "app", "--fullsync"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let after = |what: &str| {
        let log = pair.log_text(1);
        log.split("full sync requested by")
            .nth(1)
            .is_some_and(|rest| rest.contains(what))
    };
    let five_ms = std::time::Duration::from_millis(5);
    let compared = common::wait_until_every(60, five_ms, || after("full sync: "));
    let at = std::time::Instant::now();
    let started = compared && common::wait_until_every(60, five_ms, || after("resync starts"));
    let waited = at.elapsed();
    let shipped = started && common::wait_until(60, || after("resync shipped"));
    // The writer stops before anything is asserted: a file left open
    // would hold the unmount.
    let worst = writer.stop();
    assert!(
        compared,
        "the full sync's compare did not end: {}",
        pair.log_text(1)
    );
    assert!(
        started,
        "no resync after the full sync: {}",
        pair.log_text(1)
    );
    // Reading the names log once took seconds per read here (a pile of
    // overlapping deletions), under the order lock.
    assert!(
        waited < std::time::Duration::from_secs(2),
        "the resync started {waited:?} after the compare ended"
    );
    assert!(shipped, "the resync did not end: {}", pair.log_text(1));
    pair.wait_caught_up();
    assert_same_tree(&pair.dir(1), &pair.dir(2));
    assert!(
        worst < std::time::Duration::from_secs(1),
        "a write+fdatasync took {worst:?} while the resync began"
    );
}

/// Threads of process `pid` named `name`.
fn threads_named(pid: u32, name: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter(|t| {
            std::fs::read_to_string(t.as_ref().unwrap().path().join("comm"))
                .is_ok_and(|c| c.trim_end() == name)
        })
        .count()
}

/// A following module at rest holds no thread for its syncfs: the first
/// durability point after a rest starts one. The peer frozen 1 s (less than
/// peer_timeout) as an fsync waits for it: thawed, it applies, syncs on a
/// thread started then, and acknowledges in time, so the fsync returns
/// without the primary giving up on it; the thread ends again at rest.
#[test]
fn a_following_module_at_rest_starts_its_syncfs_thread_for_the_next_fsync() {
    let mut pair = Pair::new();
    pair.start_both();
    let d = pair.dir(1);
    std::fs::write(d.join("first"), b"1").unwrap();
    pair.wait_caught_up();
    let secondary = pair.pid(2);
    let syncers = || threads_named(secondary, "tandem-syncfs");
    assert!(
        common::wait_until(10, || syncers() == 0),
        "the syncfs thread of a module at rest did not end"
    );
    freeze(secondary);
    let t = std::time::Instant::now();
    let thaw = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(1000));
        // SAFETY: kill takes no pointer; `secondary` is the stopped daemon's, which the pair holds
        // as a child not reaped.
        unsafe { libc::kill(secondary as i32, libc::SIGCONT) };
    });
    let mut f = std::fs::File::create(d.join("after-rest")).unwrap();
    f.write_all(b"2").unwrap();
    f.sync_all().unwrap();
    drop(f);
    let took = t.elapsed();
    thaw.join().unwrap();
    assert!(
        took >= std::time::Duration::from_millis(900)
            && took < std::time::Duration::from_millis(2000),
        "the fsync waited {took:?} for a peer frozen 1 s (peer_timeout 2000 ms)"
    );
    assert_eq!(pair.peer_state(), "connected", "the peer was not let go");
    assert_eq!(syncers(), 1, "a thread made the fsync durable");
    assert!(
        common::wait_until(10, || syncers() == 0),
        "the syncfs thread did not end at rest"
    );
    pair.wait_caught_up();
    assert_same_tree(&pair.dir(1), &pair.dir(2));
}

/// A module at rest has no mount worker and its link's reader holds no
/// thread: what comes then must still be seen. The serving daemon frozen
/// 2.5 s at rest serves the next write and fsync at once when thawed (the
/// idle mounts' watcher starts a worker); the peer frozen at rest is noticed
/// with no application call to notice it (the reader's ticks on the runtime
/// find it silent), and it catches up once thawed.
#[test]
fn a_module_at_rest_wakes_for_its_next_call_and_notices_a_frozen_peer() {
    let mut pair = Pair::new();
    pair.start_both();
    let d = pair.dir(1);
    std::fs::write(d.join("first"), b"1").unwrap();
    pair.wait_caught_up();
    // At rest: the mount's workers end after 2-3 s.
    std::thread::sleep(std::time::Duration::from_millis(3500));
    let primary = pair.pid(1);
    freeze(primary);
    std::thread::sleep(std::time::Duration::from_millis(2500));
    // SAFETY: kill takes no pointer; `primary` is the stopped daemon's, which the pair holds as a
    // child not reaped.
    unsafe { libc::kill(primary as i32, libc::SIGCONT) };
    let t = std::time::Instant::now();
    let mut f = std::fs::File::create(d.join("after-freeze")).unwrap();
    f.write_all(b"2").unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert!(
        t.elapsed() < std::time::Duration::from_millis(2000 + 1500),
        "the first call after the freeze took {:?}",
        t.elapsed()
    );
    pair.wait_connected();
    pair.wait_caught_up();
    // The peer freezes while nothing is written.
    std::thread::sleep(std::time::Duration::from_millis(3500));
    let secondary = pair.pid(2);
    freeze(secondary);
    let noticed = common::wait_until(10, || pair.peer_state() != "connected");
    // SAFETY: as above, for the secondary.
    unsafe { libc::kill(secondary as i32, libc::SIGCONT) };
    assert!(noticed, "a peer frozen 10 s at rest was not noticed");
    pair.wait_connected();
    std::fs::write(d.join("last"), b"3").unwrap();
    pair.wait_caught_up();
    assert_same_tree(&pair.dir(1), &pair.dir(2));
}
