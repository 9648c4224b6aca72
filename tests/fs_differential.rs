//! The same random sequence of operations applied to a bare directory and through
//! a tandem mount must give identical trees, contents and metadata, the same
//! error codes for failing calls, and the sink must have seen exactly the
//! mutating calls that succeeded.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::tree::{self, Entry, Holds};
use common::{TestMount, cpath, errno, tempdir};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const DIRS: [&str; 4] = ["", "d0", "d0/d1", "d2"];
const NAMES: [&str; 5] = ["a", "b", "c", "d0", "e"];
/// Explicit timestamps never produced by a clock during the test, so a file that
/// carries one got it from a utimens call and must carry it on both sides.
const EXPLICIT_BASE: i64 = 1_000_000_000;

#[derive(Clone, Debug)]
enum Op {
    CreateWrite {
        path: String,
        mode: u32,
        data: Vec<u8>,
        excl: bool,
    },
    WriteAt {
        path: String,
        offset: u64,
        data: Vec<u8>,
        sync: bool,
    },
    Truncate {
        path: String,
        size: u64,
    },
    Rename {
        from: String,
        to: String,
        flags: u32,
    },
    Unlink {
        path: String,
    },
    UnlinkWhileOpen {
        path: String,
        data: Vec<u8>,
    },
    Mkdir {
        path: String,
        mode: u32,
    },
    Rmdir {
        path: String,
    },
    Link {
        from: String,
        to: String,
    },
    Symlink {
        target: String,
        path: String,
    },
    Chmod {
        path: String,
        mode: u32,
    },
    Chown {
        path: String,
        uid: u32,
        gid: u32,
    },
    Utimens {
        path: String,
        secs: i64,
        nofollow: bool,
    },
    SetXattr {
        path: String,
        name: String,
        value: Vec<u8>,
    },
    RemoveXattr {
        path: String,
        name: String,
    },
    Mkfifo {
        path: String,
    },
    Fallocate {
        path: String,
        offset: u64,
        len: u64,
    },
}

fn random_path(rng: &mut StdRng) -> String {
    let d = DIRS[rng.random_range(0..DIRS.len())];
    let n = NAMES[rng.random_range(0..NAMES.len())];
    if d.is_empty() {
        n.to_string()
    } else {
        format!("{d}/{n}")
    }
}

fn random_data(rng: &mut StdRng) -> Vec<u8> {
    let len = match rng.random_range(0..10) {
        0 => 0,
        1..=6 => rng.random_range(1..5000),
        _ => rng.random_range(5000..200_000),
    };
    (0..len).map(|_| rng.random()).collect()
}

fn random_op(rng: &mut StdRng) -> Op {
    let path = random_path(rng);
    match rng.random_range(0..100) {
        0..=17 => Op::CreateWrite {
            path,
            mode: [0o644, 0o600, 0o755, 0o4755, 0o000][rng.random_range(0..5)],
            data: random_data(rng),
            excl: rng.random_bool(0.3),
        },
        18..=33 => Op::WriteAt {
            path,
            offset: rng.random_range(0..300_000),
            data: random_data(rng),
            sync: rng.random_bool(0.2),
        },
        34..=39 => Op::Truncate {
            path,
            size: rng.random_range(0..250_000),
        },
        40..=47 => Op::Rename {
            from: path,
            to: random_path(rng),
            flags: [0, 0, 0, libc::RENAME_NOREPLACE, libc::RENAME_EXCHANGE][rng.random_range(0..5)],
        },
        48..=52 => Op::Unlink { path },
        53..=55 => Op::UnlinkWhileOpen {
            path,
            data: random_data(rng),
        },
        56..=62 => Op::Mkdir {
            path,
            mode: [0o755, 0o700, 0o2775][rng.random_range(0..3)],
        },
        63..=65 => Op::Rmdir { path },
        66..=69 => Op::Link {
            from: path,
            to: random_path(rng),
        },
        70..=72 => Op::Symlink {
            target: random_path(rng),
            path,
        },
        73..=76 => Op::Chmod {
            path,
            mode: [0o640, 0o777, 0o1777, 0o2755, 0o400][rng.random_range(0..5)],
        },
        77..=79 => Op::Chown {
            path,
            uid: [0, 1000, 65534][rng.random_range(0..3)],
            gid: [0, 100, 65534][rng.random_range(0..3)],
        },
        80..=84 => Op::Utimens {
            path,
            secs: EXPLICIT_BASE + rng.random_range(0..1000),
            nofollow: rng.random_bool(0.3),
        },
        85..=90 => Op::SetXattr {
            path,
            name: ["user.a", "user.b", "user.tandem.test"][rng.random_range(0..3)].into(),
            value: (0..rng.random_range(0..300))
                .map(|_| rng.random())
                .collect(),
        },
        91..=93 => Op::RemoveXattr {
            path,
            name: ["user.a", "user.b"][rng.random_range(0..2)].into(),
        },
        94..=95 => Op::Mkfifo { path },
        _ => Op::Fallocate {
            path,
            offset: rng.random_range(0..100_000),
            len: rng.random_range(1..100_000),
        },
    }
}

/// What one operation returned: Ok with whatever it read, or the errno.
type Outcome = Result<Vec<u8>, i32>;

fn check(rc: i64) -> Result<(), i32> {
    if rc < 0 { Err(errno()) } else { Ok(()) }
}

/// The name a data mutation through `fd` must carry: any name of a hard-linked
/// file is as good as another, so the expectation is then only the kind.
fn data_path(fd: i32, path: &str) -> String {
    // SAFETY: libc::stat is plain data (integers): all-zero bytes are a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a live libc::stat for the kernel to fill in.
    unsafe { libc::fstat(fd, &mut st) };
    if st.st_nlink > 1 {
        "?".into()
    } else {
        path.into()
    }
}

/// The path the file system sees for `rel`: the directory part resolved through
/// symlinks (as the kernel walks it), the last component as given.
fn seen_as(root: &Path, rel: &str) -> String {
    let p = Path::new(rel);
    let (Some(parent), Some(name)) = (p.parent(), p.file_name()) else {
        return rel.into();
    };
    match std::fs::canonicalize(root.join(parent)) {
        Ok(dir) => match dir.strip_prefix(std::fs::canonicalize(root).unwrap()) {
            Ok(d) => d.join(name).display().to_string(),
            Err(_) => rel.into(),
        },
        Err(_) => rel.into(),
    }
}

/// Applies `op` under `root` with raw system calls (so errors are exact), and
/// returns the outcome plus the mutations a correct sink must report.
fn apply(root: &Path, op: &Op) -> (Outcome, Vec<String>) {
    let p = |s: &str| cpath(&root.join(s));
    let n = |s: &str| seen_as(root, s);
    let mut muts = Vec::new();
    // SAFETY: the calls below take C strings from `p` and cpath, each living until the end of its
    // statement; buffers passed with their own lengths; descriptors opened here and closed once;
    // and libc::stat, plain data that may be zeroed.
    let out: Outcome = unsafe {
        match op {
            Op::CreateWrite {
                path,
                mode,
                data,
                excl,
            } => {
                let existed = libc::access(p(path).as_ptr(), libc::F_OK) == 0
                    || std::fs::symlink_metadata(root.join(path)).is_ok();
                // O_NONBLOCK: opening a FIFO for writing would otherwise wait for a reader.
                let flags = libc::O_CREAT
                    | libc::O_WRONLY
                    | libc::O_NOFOLLOW
                    | libc::O_NONBLOCK
                    | if *excl { libc::O_EXCL } else { 0 };
                let fd = libc::open(p(path).as_ptr(), flags, *mode);
                if fd < 0 {
                    Err(errno())
                } else {
                    if !existed {
                        muts.push(format!("create {}", n(path)));
                    }
                    let rc = libc::write(fd, data.as_ptr().cast(), data.len());
                    let r = if rc < 0 { Err(errno()) } else { Ok(()) };
                    if rc > 0 {
                        muts.push(format!("write {}", data_path(fd, &n(path))));
                    }
                    libc::close(fd);
                    r.map(|_| Vec::new())
                }
            }
            Op::WriteAt {
                path,
                offset,
                data,
                sync,
            } => {
                let fd = libc::open(
                    p(path).as_ptr(),
                    libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK,
                );
                if fd < 0 {
                    Err(errno())
                } else {
                    let rc = libc::pwrite(fd, data.as_ptr().cast(), data.len(), *offset as i64);
                    let mut r = if rc < 0 { Err(errno()) } else { Ok(Vec::new()) };
                    if rc > 0 {
                        muts.push(format!("write {}", data_path(fd, &n(path))));
                    }
                    if *sync && r.is_ok() {
                        r = check(libc::fdatasync(fd) as i64).map(|_| Vec::new());
                        muts.push(format!("fsync {}", data_path(fd, &n(path))));
                    }
                    libc::close(fd);
                    r
                }
            }
            Op::Truncate { path, size } => {
                let r = check(libc::truncate(p(path).as_ptr(), *size as i64) as i64);
                if r.is_ok() {
                    muts.push("setattr ?".into());
                }
                r.map(|_| Vec::new())
            }
            Op::Rename { from, to, flags } => {
                // Resolved before the rename, which may move a symlink on the way.
                let seen = format!("rename {} {}", n(from), n(to));
                let ino = |s: &str| {
                    std::fs::symlink_metadata(root.join(s))
                        .map(|m| m.ino())
                        .ok()
                };
                // Hard links of one inode: rename(2) succeeds without doing anything.
                let same_inode = ino(from).is_some() && ino(from) == ino(to);
                let r = check(libc::renameat2(
                    libc::AT_FDCWD,
                    p(from).as_ptr(),
                    libc::AT_FDCWD,
                    p(to).as_ptr(),
                    *flags,
                ) as i64);
                // Renaming a name onto itself succeeds without reaching the file system.
                if r.is_ok() && from != to && !same_inode {
                    muts.push(seen);
                }
                r.map(|_| Vec::new())
            }
            Op::Unlink { path } => {
                let r = check(libc::unlink(p(path).as_ptr()) as i64);
                if r.is_ok() {
                    muts.push(format!("unlink {}", n(path)));
                }
                r.map(|_| Vec::new())
            }
            Op::UnlinkWhileOpen { path, data } => {
                let fd = libc::open(
                    p(path).as_ptr(),
                    libc::O_RDWR | libc::O_NOFOLLOW | libc::O_NONBLOCK,
                );
                if fd < 0 {
                    Err(errno())
                } else {
                    let mut r = check(libc::unlink(p(path).as_ptr()) as i64).map(|_| Vec::new());
                    if r.is_ok() {
                        muts.push(format!("unlink {}", n(path)));
                        let rc = libc::pwrite(fd, data.as_ptr().cast(), data.len(), 7);
                        if rc > 0 {
                            // Still linked elsewhere (a hard link) or gone: the sink
                            // must say which, so compute it the same way on both sides.
                            let mut st: libc::stat = std::mem::zeroed();
                            libc::fstat(fd, &mut st);
                            muts.push(if st.st_nlink == 0 {
                                "write <unlinked>".into()
                            } else {
                                "write ?".into()
                            });
                        }
                        let mut back = vec![0u8; data.len() + 16];
                        let n = libc::pread(fd, back.as_mut_ptr().cast(), back.len(), 0);
                        r = if n < 0 {
                            Err(errno())
                        } else {
                            back.truncate(n as usize);
                            Ok(back)
                        };
                    }
                    libc::close(fd);
                    r
                }
            }
            Op::Mkdir { path, mode } => {
                let r = check(libc::mkdir(p(path).as_ptr(), *mode) as i64);
                if r.is_ok() {
                    muts.push(format!("mkdir {}", n(path)));
                }
                r.map(|_| Vec::new())
            }
            Op::Rmdir { path } => {
                let r = check(libc::rmdir(p(path).as_ptr()) as i64);
                if r.is_ok() {
                    muts.push(format!("rmdir {}", n(path)));
                }
                r.map(|_| Vec::new())
            }
            Op::Link { from, to } => {
                let r = check(libc::link(p(from).as_ptr(), p(to).as_ptr()) as i64);
                if r.is_ok() {
                    muts.push(format!("link ? {}", n(to)));
                }
                r.map(|_| Vec::new())
            }
            Op::Symlink { target, path } => {
                let r = check(
                    libc::symlink(cpath(Path::new(target)).as_ptr(), p(path).as_ptr()) as i64,
                );
                if r.is_ok() {
                    muts.push(format!("symlink {}", n(path)));
                }
                r.map(|_| Vec::new())
            }
            Op::Chmod { path, mode } => {
                let r = check(libc::chmod(p(path).as_ptr(), *mode) as i64);
                if r.is_ok() {
                    muts.push("setattr ?".into());
                }
                r.map(|_| Vec::new())
            }
            Op::Chown { path, uid, gid } => {
                let r = check(libc::lchown(p(path).as_ptr(), *uid, *gid) as i64);
                if r.is_ok() {
                    muts.push("setattr ?".into());
                }
                r.map(|_| Vec::new())
            }
            Op::Utimens {
                path,
                secs,
                nofollow,
            } => {
                let ts = [
                    libc::timespec {
                        tv_sec: *secs,
                        tv_nsec: 5,
                    },
                    libc::timespec {
                        tv_sec: *secs + 1,
                        tv_nsec: 7,
                    },
                ];
                let flags = if *nofollow {
                    libc::AT_SYMLINK_NOFOLLOW
                } else {
                    0
                };
                let r = check(
                    libc::utimensat(libc::AT_FDCWD, p(path).as_ptr(), ts.as_ptr(), flags) as i64,
                );
                if r.is_ok() {
                    muts.push("setattr ?".into());
                }
                r.map(|_| Vec::new())
            }
            Op::SetXattr { path, name, value } => {
                let n = cpath(Path::new(name));
                let r = check(libc::lsetxattr(
                    p(path).as_ptr(),
                    n.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    0,
                ) as i64);
                if r.is_ok() {
                    muts.push("setxattr ?".into());
                }
                r.map(|_| Vec::new())
            }
            Op::RemoveXattr { path, name } => {
                let n = cpath(Path::new(name));
                let r = check(libc::lremovexattr(p(path).as_ptr(), n.as_ptr()) as i64);
                if r.is_ok() {
                    muts.push("removexattr ?".into());
                }
                r.map(|_| Vec::new())
            }
            Op::Mkfifo { path } => {
                let r = check(libc::mkfifo(p(path).as_ptr(), 0o640) as i64);
                if r.is_ok() {
                    muts.push(format!("create {}", n(path)));
                }
                r.map(|_| Vec::new())
            }
            Op::Fallocate { path, offset, len } => {
                let fd = libc::open(
                    p(path).as_ptr(),
                    libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK,
                );
                if fd < 0 {
                    Err(errno())
                } else {
                    let r = check(libc::fallocate(fd, 0, *offset as i64, *len as i64) as i64);
                    if r.is_ok() {
                        muts.push(format!("fallocate {}", data_path(fd, &n(path))));
                    }
                    libc::close(fd);
                    r.map(|_| Vec::new())
                }
            }
        }
    };
    (out, muts)
}

/// What the trees are compared on beyond names, kinds, modes, owners, sizes,
/// contents, targets, xattrs and hard links: link counts, and modification
/// times where utimens set them. Access times move with every read the
/// comparison itself makes, so fs_behaviour checks them separately; the root
/// is the test's own.
const COMPARED: Holds = Holds {
    root: false,
    nlink: true,
    mtime: |secs| (EXPLICIT_BASE..EXPLICIT_BASE + 2000).contains(&secs),
};

fn snapshot(root: &Path) -> BTreeMap<PathBuf, Entry> {
    tree::snapshot(root, COMPARED)
}

/// Expected sink lines use "?" where the exact path is not predictable from the
/// operation alone (a hard link or symlink resolution may name another path).
fn matches(expected: &str, seen: &str) -> bool {
    match expected.split_once(' ') {
        Some((kind, "?")) => seen.split_once(' ').is_some_and(|(k, _)| k == kind),
        Some(("link", rest)) if rest.starts_with("? ") => {
            seen.starts_with("link ") && seen.ends_with(&format!(" {}", &rest[2..]))
        }
        _ => expected == seen,
    }
}

fn run(seed: u64, steps: usize) {
    let bare = tempdir();
    let covered = tempdir();
    let mut mount = TestMount::new(covered.path());
    let mut rng = StdRng::seed_from_u64(seed);
    for d in ["d0", "d0/d1", "d2"] {
        std::fs::create_dir(bare.path().join(d)).unwrap();
        std::fs::create_dir(covered.path().join(d)).unwrap();
    }
    mount.take_seen();
    for step in 0..steps {
        let op = random_op(&mut rng);
        let (a, expected) = apply(bare.path(), &op);
        let (b, _) = apply(covered.path(), &op);
        if std::env::var_os("TANDEM_TRACE").is_some() {
            eprintln!("   -> {:?}", a.as_ref().map(|v| v.len()));
        }
        assert_eq!(a, b, "seed {seed} step {step}: outcome differs for {op:?}");
        let mut seen = mount.take_seen();
        // The kernel may split one large write(2) into several requests.
        seen.dedup_by(|b, a| a == b && a.starts_with("write "));
        assert_eq!(
            expected.len(),
            seen.len(),
            "seed {seed} step {step}: sink saw {seen:?}, expected {expected:?} for {op:?}"
        );
        for (e, s) in expected.iter().zip(&seen) {
            assert!(
                matches(e, s),
                "seed {seed} step {step}: sink saw {s:?}, expected {e:?} for {op:?}"
            );
        }
    }
    let through_mount = snapshot(covered.path());
    let reference = snapshot(bare.path());
    assert_eq!(
        reference.keys().collect::<Vec<_>>(),
        through_mount.keys().collect::<Vec<_>>(),
        "seed {seed}: names differ"
    );
    for (k, v) in &reference {
        assert_eq!(v, &through_mount[k], "seed {seed}: {} differs", k.display());
    }
    // Unmounting must leave the bare directory exactly as the mount showed it.
    mount.unmount();
    let after = snapshot(covered.path());
    for (k, v) in &reference {
        assert_eq!(
            v,
            &after[k],
            "seed {seed}: {} differs after unmount",
            k.display()
        );
    }
    assert!(
        reference.len() > 3,
        "the sequence should leave a non-trivial tree"
    );
}

#[test]
fn random_operations_match_the_bare_directory() {
    let seed = std::env::var("TANDEM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x7a9d_2026);
    for s in 0..8 {
        run(seed + s, 1500);
    }
}
