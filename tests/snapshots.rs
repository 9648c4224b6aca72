//! Snapshots with two real daemons: taken on the serving node and on its
//! SECOND while the application writes, restored and compared from the CLI,
//! kept through a failover and a daemon restart, never deleted by the
//! peer; one taken by the SECOND before every resync; bad input refused.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::cluster::Cluster;
use common::{noise, wait_until};

/// A tree as the test compares it: kind, mode and contents per name.
fn tree(root: &Path) -> BTreeMap<PathBuf, (String, u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        for e in std::fs::read_dir(root.join(&rel)).unwrap() {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            let p = root.join(&r);
            let m = std::fs::symlink_metadata(&p).unwrap();
            let (kind, data) = if m.is_dir() {
                todo.push(r.clone());
                ("dir", Vec::new())
            } else if m.file_type().is_symlink() {
                (
                    "symlink",
                    std::fs::read_link(&p)
                        .unwrap()
                        .into_os_string()
                        .into_encoded_bytes(),
                )
            } else {
                ("file", std::fs::read(&p).unwrap())
            };
            out.insert(r, (kind.to_string(), m.mode() & 0o7777, data));
        }
    }
    out
}

/// `cp -a from to`: a tree kept as it is now.
fn copy(from: &Path, to: &Path) {
    let o = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn assert_same(what: &str, want: &Path, got: &Path) {
    let (a, b) = (tree(want), tree(got));
    let differ: Vec<String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| {
            let show = |v: Option<&(String, u32, Vec<u8>)>| {
                v.map(|(k, m, d)| format!("{k} {m:o} {} bytes", d.len()))
            };
            format!(
                "{}: {:?} vs {:?}",
                k.display(),
                show(a.get(k)),
                show(b.get(k))
            )
        })
        .collect();
    assert!(differ.is_empty(), "{what}: {}", differ.join("\n"));
}

/// Holds the application still (its loop waits on the `hold` file).
fn hold(c: &Cluster, on: bool) {
    let f = c.path("hold");
    if on {
        std::fs::write(&f, b"").unwrap();
        // A record being written finishes.
        std::thread::sleep(std::time::Duration::from_millis(300));
    } else {
        let _ = std::fs::remove_file(&f);
    }
}

/// With the application held, node2 caught up then stopped (what node1
/// changes meanwhile is resynchronised later): node2's copy, kept aside.
fn node2_away(c: &mut Cluster) -> PathBuf {
    hold(c, true);
    assert!(wait_until(30, || caught_up(c)), "node2 does not catch up");
    c.signal(2, libc::SIGTERM);
    assert!(
        wait_until(20, || c.state(1) == "ALONE"),
        "{}",
        c.log_text(1)
    );
    let before = c.path("node2-before");
    copy(&c.path("node2/app"), &before);
    before
}

fn list_all(c: &Cluster, n: usize) -> Vec<serde_json::Value> {
    let out = c.ok(n, &["snapshot", "list", "app", "--json"]);
    serde_json::from_str::<serde_json::Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// The snapshots of one kind.
fn list_kind(c: &Cluster, n: usize, kind: &str) -> Vec<serde_json::Value> {
    list_all(c, n)
        .into_iter()
        .filter(|s| s["kind"] == kind)
        .collect()
}

/// The operator's snapshots (the SECOND also took one before its first
/// full sync).
fn list(c: &Cluster, n: usize) -> Vec<serde_json::Value> {
    list_kind(c, n, "manual")
}

/// Every change node 1 sent is durable on node 2.
fn caught_up(c: &Cluster) -> bool {
    c.status(1).is_some_and(|s| {
        let r = &s["modules"][0]["replication"];
        r["durable"].as_u64().is_some() && r["durable"] == r["sent"]
    }) && c.uptodate(2)
}

#[test]
fn snapshots_on_both_nodes_restore_what_was_and_are_each_nodes_own() {
    let mut c = Cluster::new();
    c.start_both(30);
    c.wait_app_writes(1);
    let live1 = c.path("node1/app");
    // A tree through the mount: a file to overwrite, one to delete, a
    // directory, a symlink.
    std::fs::write(live1.join("data.bin"), vec![7u8; 3 << 20]).unwrap();
    std::fs::write(live1.join("keep.txt"), b"the first words").unwrap();
    std::fs::create_dir(live1.join("sub")).unwrap();
    std::fs::write(live1.join("sub/a"), b"a").unwrap();
    std::os::unix::fs::symlink("sub/a", live1.join("link")).unwrap();

    hold(&c, true);
    assert!(wait_until(20, || caught_up(&c)), "node2 does not catch up");
    let expected = c.path("expected");
    copy(&live1, &expected);
    let said1 = c.ok(1, &["snapshot", "create", "app", "--name", "before"]);
    assert!(
        said1.contains("snapshot before (stream position"),
        "{said1}"
    );
    // The peer's own, asked through this node.
    let said2 = c.ok(
        1,
        &[
            "--on", "node2", "snapshot", "create", "app", "--name", "before",
        ],
    );
    assert!(said2.contains("taken on node2 (secondary"), "{said2}");
    let (l1, l2) = (list(&c, 1), list(&c, 2));
    assert_eq!((l1.len(), l2.len()), (1, 1), "{l1:?} {l2:?}");
    assert_eq!(l1[0]["role"], "primary");
    assert_eq!(l2[0]["role"], "secondary");
    assert_eq!(l1[0]["consistent"], true);
    // Both at the same point of the stream: a consistent cut.
    assert_eq!(l1[0]["position"], l2[0]["position"], "{l1:?} {l2:?}");
    hold(&c, false);

    // Changes after it, on the serving node; replicated to node2, where the
    // applier keeps what they destroy for node2's snapshot.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(live1.join("data.bin"))
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&mut f, &[9u8; 100_000], 1 << 20).unwrap();
    f.sync_all().unwrap();
    drop(f);
    std::fs::remove_file(live1.join("keep.txt")).unwrap();
    std::fs::rename(live1.join("sub"), live1.join("moved")).unwrap();
    std::fs::set_permissions(
        live1.join("moved/a"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::write(live1.join("new.txt"), b"after").unwrap();
    c.wait_app_writes(1);

    let diff = c.ok(1, &["snapshot", "diff", "app", "before", "--json"]);
    let diff: Vec<serde_json::Value> = serde_json::from_str(&diff).unwrap();
    let find = |p: &str| diff.iter().find(|d| d["path"] == p).cloned();
    assert_eq!(find("keep.txt").unwrap()["change"], "removed", "{diff:?}");
    assert_eq!(find("new.txt").unwrap()["change"], "added", "{diff:?}");
    assert_eq!(find("moved").unwrap()["change"], "added", "{diff:?}");
    let data = find("data.bin").unwrap();
    assert_eq!(data["change"], "changed", "{diff:?}");
    let r = &data["ranges"][0];
    assert!(
        r[0].as_u64().unwrap() <= 1 << 20 && r[1].as_u64().unwrap() >= (1 << 20) + 100_000,
        "{data}"
    );
    assert!(
        find("records").is_some(),
        "the application's appends: {diff:?}"
    );

    // Restored on each node while the application writes.
    for n in 1..=2 {
        let to = c.path(&format!("restored{n}"));
        let said = c.ok(
            n,
            &[
                "snapshot",
                "restore",
                "app",
                "before",
                "--to",
                to.to_str().unwrap(),
            ],
        );
        assert!(said.contains("restored into"), "{said}");
        assert_same(&format!("node{n}'s snapshot"), &expected, &to);
    }

    // Bad input: a clear error, nothing changed.
    let busy = c.path("restored1");
    for (args, says) in [
        (
            vec![
                "snapshot",
                "restore",
                "app",
                "before",
                "--to",
                busy.to_str().unwrap(),
            ],
            "is not empty",
        ),
        (
            vec!["snapshot", "restore", "app", "nope", "--to", "/tmp/x-never"],
            "no snapshot \"nope\"",
        ),
        (vec!["snapshot", "create", "nomodule"], "no module named"),
        (
            vec!["snapshot", "create", "app", "--name", "a/b"],
            "must not contain",
        ),
        (
            vec!["snapshot", "create", "app", "--name", "before"],
            "already has",
        ),
        (vec!["snapshot", "delete", "app", "nope"], "no snapshot"),
    ] {
        let o = c.tandem(1, &args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    assert_same("a refused restore", &expected, &busy);
    assert_eq!(list(&c, 1).len(), 1);
    // A target on a file system too small for it (1 MiB for 3 MiB): the
    // error names why, and nothing is left there.
    let small = c.path("small");
    std::fs::create_dir(&small).unwrap();
    let o = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&small)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _small = Unmount(small.clone());
    let full = small.join("out");
    let o = c.tandem(
        1,
        &[
            "snapshot",
            "restore",
            "app",
            "before",
            "--to",
            full.to_str().unwrap(),
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("No space left"), "{err}");
    assert_eq!(
        std::fs::read_dir(&small).unwrap().count(),
        0,
        "left on a full disk"
    );

    // Deleting on node1 leaves node2's.
    c.ok(1, &["snapshot", "delete", "app", "before"]);
    assert!(list(&c, 1).is_empty());
    assert_eq!(list(&c, 2).len(), 1);

    // node1 killed: node2 serves, and its snapshot outlives that and a
    // restart of its daemon.
    c.signal(1, libc::SIGKILL);
    c.clean_after_killed(1);
    assert!(
        wait_until(20, || c.state(2) == "ALONE"),
        "{}",
        c.log_text(2)
    );
    c.signal(2, libc::SIGTERM);
    c.start(2);
    assert!(
        wait_until(30, || c.state(2) == "ALONE"),
        "{}",
        c.log_text(2)
    );
    let l2 = list(&c, 2);
    assert_eq!(l2.len(), 1, "{l2:?}");
    let to = c.path("restored-after");
    c.ok(
        2,
        &[
            "snapshot",
            "restore",
            "app",
            "before",
            "--to",
            to.to_str().unwrap(),
        ],
    );
    assert_same(
        "node2's snapshot after a failover and a restart",
        &expected,
        &to,
    );
}

/// The SECOND takes a snapshot before a resync writes into its copy; the
/// copy is marked inconsistent meanwhile; the snapshot restores the tree the
/// SECOND had.
#[test]
fn the_second_takes_a_snapshot_before_every_resync() {
    let mut c = Cluster::new();
    c.start_both(30);
    c.wait_app_writes(1);
    std::fs::write(c.path("node1/app/file"), vec![1u8; 1 << 20]).unwrap();
    let before = node2_away(&mut c);
    hold(&c, false);
    c.wait_app_writes(1);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(c.path("node1/app/file"))
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&mut f, &[2u8; 300_000], 4096).unwrap();
    // Ranges apart, unaligned: the resync ships them as writes in a row,
    // and what each overwrites on the peer is kept whole, block-aligned.
    for i in 0..40u64 {
        let at = 320_000 + i * 17_000 + 100;
        std::os::unix::fs::FileExt::write_all_at(&mut f, &[3 + i as u8; 3000], at).unwrap();
    }
    drop(f);
    std::fs::write(c.path("node1/app/other"), b"written while node2 was away").unwrap();

    c.start(2);
    c.wait_states("PRIM", "SECOND", 30);
    // One before the first full sync, one before this resync.
    let auto = list_kind(&c, 2, "before-resync");
    assert_eq!(auto.len(), 2, "{auto:?}\n{}", c.log_text(2));
    let auto = &auto[1..];
    assert_eq!(auto[0]["consistent"], true);
    assert!(
        c.log_text(2).contains("taken before the resync"),
        "{}",
        c.log_text(2)
    );
    let to = c.path("restored");
    let name = auto[0]["name"].as_str().unwrap();
    c.ok(
        2,
        &[
            "snapshot",
            "restore",
            "app",
            name,
            "--to",
            to.to_str().unwrap(),
        ],
    );
    assert_same("the before-resync snapshot", &before, &to);
    // The resync ended: node2's copy is consistent again.
    let st = c.status(2).unwrap();
    assert!(
        st["modules"][0]["snapshots"]["inconsistent_since_ms"].is_null(),
        "{}",
        st["modules"][0]
    );
}

/// The SECOND frozen (SIGSTOP, 2 s) as the resync's writes reach it in runs
/// whose before-images it keeps at once (4,000 random blocks of a file that
/// does not compress): thawed, it finishes the resync with the serving
/// node's bytes, and the snapshot it took before the resync still restores
/// the tree it had.
#[test]
fn a_second_frozen_while_it_keeps_a_resyncs_writes_ahead_keeps_every_block() {
    use std::os::unix::fs::FileExt;
    let mut c = Cluster::new();
    c.start_both(30);
    c.wait_app_writes(1);
    let mut x = 7u64;
    let mut next = move || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        x >> 33
    };
    let big: Vec<u8> = (0..32 << 20).map(|_| next() as u8).collect();
    std::fs::write(c.path("node1/app/big"), &big).unwrap();
    let before = node2_away(&mut c);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(c.path("node1/app/big"))
        .unwrap();
    for _ in 0..4000 {
        let block: Vec<u8> = (0..4096).map(|_| next() as u8).collect();
        f.write_all_at(&block, (next() % 8192) * 4096).unwrap();
    }
    drop(f);
    hold(&c, false);

    c.start(2);
    let resyncing = || {
        c.status(2)
            .is_some_and(|s| s["modules"][0]["snapshots"]["inconsistent_since_ms"].is_u64())
    };
    assert!(
        common::wait_until_every(30, std::time::Duration::from_millis(5), resyncing),
        "node2's resync did not begin\n{}",
        c.log_text(2)
    );
    let pid = c.pid(2) as i32;
    // SAFETY: kill takes no pointer; node 2's daemon is our child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    std::thread::sleep(std::time::Duration::from_secs(2));
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    hold(&c, true);
    assert!(
        wait_until(60, || caught_up(&c)),
        "node2 does not catch up\n{}",
        c.log_text(2)
    );
    assert!(
        std::fs::read(c.path("node2/app/big")).unwrap()
            == std::fs::read(c.path("node1/app/big")).unwrap(),
        "node2's copy differs after the resync"
    );
    let auto = list_kind(&c, 2, "before-resync");
    let name = auto.last().unwrap()["name"].as_str().unwrap().to_string();
    let to = c.path("restored");
    c.ok(
        2,
        &[
            "snapshot",
            "restore",
            "app",
            &name,
            "--to",
            to.to_str().unwrap(),
        ],
    );
    assert_same("the before-resync snapshot", &before, &to);
}

/// The serving node killed in the middle of a resync: the SECOND does not
/// serve its half-synced copy, says it is inconsistent and which snapshot
/// is the last consistent one; rolled back to it, the copy is the tree it
/// had before the resync, and it can be served from there.
#[test]
fn a_resync_cut_short_rolls_back_to_the_snapshot_before_it() {
    let mut c = Cluster::new();
    c.start_both(30);
    c.wait_app_writes(1);
    for i in 0..4 {
        std::fs::write(c.path(&format!("node1/app/big{i}")), vec![i as u8; 8 << 20]).unwrap();
    }
    let before = node2_away(&mut c);
    // Much to resynchronise: every byte of the big files rewritten, new ones.
    for i in 0..4 {
        std::fs::write(
            c.path(&format!("node1/app/big{i}")),
            vec![100 + i as u8; 8 << 20],
        )
        .unwrap();
    }
    for i in 0..40 {
        std::fs::write(c.path(&format!("node1/app/new{i}")), vec![i as u8; 4 << 20]).unwrap();
    }
    std::fs::remove_file(c.path("node1/app/big3")).unwrap();

    // node1 dies as soon as node2's resync has begun.
    c.start(2);
    let inconsistent = || {
        c.status(2)
            .is_some_and(|s| s["modules"][0]["snapshots"]["inconsistent_since_ms"].is_u64())
    };
    assert!(
        common::wait_until_every(30, std::time::Duration::from_millis(5), inconsistent),
        "node2's resync did not begin\n{}",
        c.log_text(2)
    );
    c.signal(1, libc::SIGKILL);
    c.clean_after_killed(1);
    assert!(
        wait_until(20, || c.state(2) == "WAIT"),
        "node2 is {}\n{}",
        c.state(2),
        c.log_text(2)
    );
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(c.state(2), "WAIT", "node2 serves a half-synced copy");
    let st = c.status(2).unwrap();
    let snaps = &st["modules"][0]["snapshots"];
    assert!(snaps["inconsistent_since_ms"].is_u64(), "{snaps}");
    let last = snaps["last_consistent"].as_str().unwrap().to_string();
    assert!(last.starts_with("before-resync-"), "{snaps}");
    // Refused while the module runs here.
    let o = c.tandem(2, &["snapshot", "rollback", "app", &last]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("tandem stop app"));

    c.ok(2, &["stop", "app"]);
    assert!(wait_until(20, || c.state(2) == "STOP"), "{}", c.log_text(2));
    let said = c.ok(2, &["snapshot", "rollback", "app", &last]);
    assert!(said.contains("rolled back to snapshot"), "{said}");
    assert_same("node2 rolled back", &before, &c.path("node2/app"));
    let st = c.status(2).unwrap();
    assert!(
        st["modules"][0]["snapshots"]["inconsistent_since_ms"].is_null(),
        "{}",
        st["modules"][0]["snapshots"]
    );
    // Served from the consistent copy.
    c.ok(2, &["start", "app"]);
    assert!(wait_until(20, || c.state(2) == "WAIT"), "{}", c.log_text(2));
    c.ok(2, &["prim", "--force", "app"]);
    assert!(
        wait_until(20, || c.state(2) == "ALONE"),
        "{}",
        c.log_text(2)
    );
    assert_eq!(
        std::fs::read(c.path("node2/app/big0")).unwrap(),
        vec![0u8; 8 << 20],
        "the copy served is the one before the resync"
    );
}

/// `verify` while a writer appends and fsyncs a record every 2 ms through
/// the whole check of a 1 GiB tree: what differs in the first pass is
/// checked again on both copies at one point of the stream, so the busy file
/// is never reported; 20 times in a row. A byte changed behind tandem's back
/// on the SECOND is still found.
#[test]
fn verify_compares_a_busy_tree_at_a_consistent_cut() {
    let mut c = Cluster::new();
    c.start_both(30);
    c.wait_app_writes(1);
    // The test's own writer instead of the application's.
    hold(&c, true);
    let live = c.path("node1/app");
    for i in 0..4 {
        let mut data = vec![0u8; 256 << 20];
        for (k, b) in data.iter_mut().enumerate().step_by(4096) {
            *b = (k / 4096 + i) as u8;
        }
        std::fs::write(live.join(format!("big{i}")), &data).unwrap();
    }
    let writer = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import os,sys,time\n\
             f=os.open(sys.argv[1],os.O_WRONLY|os.O_CREAT|os.O_APPEND,0o644)\n\
             n=0\n\
             while True:\n\
             \x20   n+=1\n\
             \x20   os.write(f,('record %d ' % n).ljust(100,'x').encode()+b'\\n')\n\
             \x20   os.fsync(f)\n\
             \x20   time.sleep(0.002)\n",
        )
        .arg(live.join("busy.log"))
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _writer = Kill(writer);
    assert!(wait_until(60, || caught_up(&c) || c.uptodate(2)));
    let size = || std::fs::metadata(live.join("busy.log")).map_or(0, |m| m.len());
    let mut rechecked = 0;
    for round in 0..20 {
        let grew_from = size();
        let o = c.tandem(1, &["verify", "app", "--json"]);
        let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| {
            panic!(
                "round {round}: {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        });
        assert_eq!(
            o.status.code(),
            Some(0),
            "round {round}: differences reported: {report}"
        );
        assert!(
            size() > grew_from,
            "round {round}: the writer did not write throughout"
        );
        assert!(report["files"].as_u64().unwrap() >= 5, "{report}");
        rechecked += report["rechecked"].as_u64().unwrap();
    }
    // The busy file differed in first passes: the cut is what cleared it.
    assert!(rechecked > 0, "the writer never showed in a first pass");
    // A byte changed behind tandem's back on node2 (not through tandem).
    let behind = c.path("node2/app/big2");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&behind)
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"\xff", 100 << 20).unwrap();
    drop(f);
    let o = c.tandem(1, &["verify", "app", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(o.status.code(), Some(1), "{report}");
    let diffs = report["differences"].as_array().unwrap();
    assert_eq!(diffs.len(), 1, "{report}");
    assert_eq!(diffs[0]["path"], "big2", "{report}");
    assert_eq!(report["at_cut"], true, "{report}");
    // The verify's snapshots are gone on both nodes.
    for n in 1..=2 {
        assert!(
            list_kind(&c, n, "verify").is_empty(),
            "node{n}: {:?}",
            list_all(&c, n)
        );
    }
}

/// A schedule of one a second, keeping only the newest of this hour: taken
/// on both nodes, between the scripts on the serving one only, expired by
/// each node; past the byte budget the scheduled ones go and the
/// operator's stays; a failing pre_snapshot script is an alert until the
/// next scheduled snapshot is taken.
#[test]
fn schedules_retention_budget_and_scripts() {
    let tail = r#"
[module.snapshots]
every = "1s"
keep_hourly = 1
keep_daily = 0
keep_weekly = 0
budget = "2MiB"
keep_before_resync_for = "2s"
pre_snapshot = "{t}/pre.sh"
post_snapshot = "{t}/post.sh"
"#;
    let mut c = Cluster::build_opts(
        None,
        &common::cluster::Options {
            quorum: "none",
            tail,
            ..Default::default()
        },
    );
    for (name, word) in [("pre.sh", "pre"), ("post.sh", "post")] {
        common::cluster::script(
            &c.path(name),
            &format!(
                "#!/bin/sh\n[ -f \"$APP_SIDE/../fail-{word}\" ] && exit 3\n\
                 echo \"{word} $TANDEM_NODE $TANDEM_MODULE\" >> \"$APP_SIDE/../snap-events\"\n"
            ),
        );
    }
    // Incompressible: the budget counts the bytes stored.
    std::fs::write(c.path("node1/app/base"), noise(1, 6 << 20)).unwrap();
    c.start_both(30);
    c.wait_app_writes(1);
    c.ok(1, &["snapshot", "create", "app", "--name", "mine"]);
    let taken = |n: usize| {
        c.log_text(n)
            .matches("scheduled snapshot scheduled-")
            .count()
    };
    assert!(
        wait_until(20, || taken(1) >= 3 && taken(2) >= 3),
        "{}",
        c.log_text(1)
    );
    for n in 1..=2 {
        let sched = list_kind(&c, n, "scheduled");
        assert!((1..=2).contains(&sched.len()), "node{n}: {sched:?}");
        assert!(c.log_text(n).contains("expired"), "{}", c.log_text(n));
    }
    // node2's snapshot before its first full sync goes 2 s after that sync.
    assert!(
        wait_until(20, || c
            .log_text(2)
            .contains("expired (2 s after its resync ended)")),
        "{}",
        c.log_text(2)
    );
    assert!(list_kind(&c, 2, "before-resync").is_empty());
    let events = std::fs::read_to_string(c.path("snap-events")).unwrap();
    assert!(
        events.contains("pre node1 app") && events.contains("post node1 app"),
        "{events}"
    );
    assert!(
        !events.contains("node2"),
        "scripts ran on the SECOND: {events}"
    );

    // 6 MiB overwritten: far past the budget of 2 MiB.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(c.path("node1/app/base"))
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &vec![6u8; 6 << 20], 0).unwrap();
    drop(f);
    assert!(
        wait_until(20, || c.log_text(1).contains("over the budget")),
        "{}",
        c.log_text(1)
    );
    assert_eq!(list(&c, 1).len(), 1, "the operator's snapshot stays");

    // A failing pre_snapshot: an alert, then cleared by the next success.
    std::fs::write(c.path("fail-pre"), b"").unwrap();
    let failed = || {
        c.status(1).is_some_and(|s| {
            s["modules"][0]["snapshots"]["schedule_failures"].as_u64() >= Some(1)
                && s["modules"][0]["snapshots"]["schedule_failed"].is_string()
        })
    };
    assert!(wait_until(20, failed), "{}", c.log_text(1));
    assert!(c.log_text(1).contains("ALERT: scheduled snapshot failed"));
    std::fs::remove_file(c.path("fail-pre")).unwrap();
    assert!(
        wait_until(20, || c.status(1).is_some_and(|s| {
            s["modules"][0]["snapshots"]["schedule_failed"].is_null()
        })),
        "{}",
        c.log_text(1)
    );
    // A bad period is refused, naming the field.
    let bad = c.path("bad.toml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(c.config(1))
            .unwrap()
            .replace("every = \"1s\"", "every = \"1 hour\""),
    )
    .unwrap();
    let o = common::tandem(&[
        "config",
        "check",
        bad.to_str().unwrap(),
        "--skip-dir-checks",
    ]);
    let err = String::from_utf8_lossy(&o.stderr).to_string() + &String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success());
    assert!(err.contains("module[0].snapshots.every"), "{err}");
}

/// kill -9 of the daemon while it keeps what a stream of overwrites
/// destroys, while it restores, while it takes snapshots and while it rolls
/// back: afterwards each snapshot is whole or absent, a restore target is
/// whole or absent, and a rollback run again finishes.
#[test]
fn a_snapshot_is_whole_or_absent_after_kill_9() {
    let mut c = Cluster::new();
    c.start_both(30);
    c.wait_app_writes(1);
    hold(&c, true);
    for i in 0..4u64 {
        std::fs::write(c.path(&format!("node1/app/big{i}")), noise(i + 1, 32 << 20)).unwrap();
    }
    assert!(wait_until(30, || caught_up(&c)), "node2 does not catch up");
    let expected = c.path("expected");
    copy(&c.path("node1/app"), &expected);
    c.ok(1, &["snapshot", "create", "app", "--name", "s1"]);

    // Killed in the middle of overwrites that each keep their old bytes first.
    let live = c.path("node1/app");
    let writer = std::thread::spawn(move || {
        for i in 0..4u64 {
            let Ok(f) = std::fs::OpenOptions::new()
                .write(true)
                .open(live.join(format!("big{i}")))
            else {
                return;
            };
            for k in 0..32u64 {
                if std::os::unix::fs::FileExt::write_all_at(&f, &noise(100 + k, 1 << 20), k << 20)
                    .is_err()
                {
                    return;
                }
            }
        }
    });
    std::thread::sleep(std::time::Duration::from_millis(150));
    c.signal(1, libc::SIGKILL);
    c.clean_after_killed(1);
    let _ = writer.join();
    assert!(
        wait_until(20, || c.state(2) == "ALONE"),
        "{}",
        c.log_text(2)
    );
    c.start(1);
    assert!(
        wait_until(60, || c.state(1) == "SECOND" && c.uptodate(1)),
        "{}",
        c.log_text(1)
    );
    let restored = c.path("r1");
    c.ok(
        1,
        &[
            "snapshot",
            "restore",
            "app",
            "s1",
            "--to",
            restored.to_str().unwrap(),
        ],
    );
    assert_same("s1 after a kill -9 during overwrites", &expected, &restored);

    // Killed in the middle of a restore: no target, or a whole one; the
    // next restore into it works.
    let target = c.path("r2");
    let mut restore = std::process::Command::new(common::tandem_bin())
        .arg("-c")
        .arg(c.config(1))
        .args([
            "snapshot",
            "restore",
            "app",
            "s1",
            "--to",
            target.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(60));
    c.signal(1, libc::SIGKILL);
    let _ = restore.wait();
    if target.exists() {
        assert_same("a restore finished before the kill", &expected, &target);
        std::fs::remove_dir_all(&target).unwrap();
    }
    c.start(1);
    assert!(
        wait_until(60, || c.state(1) == "SECOND"),
        "{}",
        c.log_text(1)
    );
    c.ok(
        1,
        &[
            "snapshot",
            "restore",
            "app",
            "s1",
            "--to",
            target.to_str().unwrap(),
        ],
    );
    assert_same("a restore after one cut short", &expected, &target);
    let left: Vec<_> = std::fs::read_dir(c.path(""))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("tandem-restore"))
        .collect();
    assert!(left.is_empty(), "staging left behind: {left:?}");

    // Killed while taking snapshots: each is listed whole or not at all.
    for k in 0..4 {
        let mut create = std::process::Command::new(common::tandem_bin())
            .arg("-c")
            .arg(c.config(1))
            .args(["snapshot", "create", "app", "--name", &format!("c{k}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(3 * k));
        c.signal(1, libc::SIGKILL);
        let _ = create.wait();
        c.start(1);
        assert!(
            wait_until(60, || c.state(1) == "SECOND"),
            "{}",
            c.log_text(1)
        );
        for s in list_all(&c, 1) {
            assert!(s["broken"].is_null(), "{s}");
        }
    }

    // Killed in the middle of a rollback (the module stopped here): the
    // status says so, and the rollback run again finishes it.
    c.ok(1, &["stop", "app"]);
    assert!(wait_until(20, || c.state(1) == "STOP"), "{}", c.log_text(1));
    let mut roll = std::process::Command::new(common::tandem_bin())
        .arg("-c")
        .arg(c.config(1))
        .args(["snapshot", "rollback", "app", "s1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(80));
    c.signal(1, libc::SIGKILL);
    let _ = roll.wait();
    c.start(1);
    assert!(wait_until(30, || c.state(1) == "STOP"), "{}", c.log_text(1));
    let st = c.status(1).unwrap();
    let rolling = st["modules"][0]["snapshots"]["rolling_back"].clone();
    assert!(rolling.is_null() || rolling == "s1", "{rolling}");
    c.ok(1, &["snapshot", "rollback", "app", "s1"]);
    assert_same("a rollback run again", &expected, &c.path("node1/app"));
    let st = c.status(1).unwrap();
    assert!(st["modules"][0]["snapshots"]["rolling_back"].is_null());
}
