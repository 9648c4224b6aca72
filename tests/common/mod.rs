//! Shared helpers for the tests that mount real FUSE file systems.
#![allow(dead_code)]

pub mod cluster;
pub mod nodes;
pub mod older;
pub mod pair;
pub mod tree;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tandem::fs::{self, LocalApply, MountConfig, Mounted, Mutation, MutationSink};

/// These tests need root and /dev/fuse; CI has both. Missing them is a failure.
pub fn require_fuse() {
    assert_eq!(
        nix::unistd::geteuid().as_raw(),
        0,
        "these tests mount FUSE file systems and must run as root"
    );
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: the fuse kernel module is required"
    );
}

/// Records every mutation that succeeded locally as "kind path…" lines.
#[derive(Default)]
pub struct RecordingSink {
    pub seen: Mutex<Vec<String>>,
    pub failed: Mutex<usize>,
}

pub fn describe(m: &Mutation<'_>) -> String {
    fn rel(p: &Option<PathBuf>) -> String {
        p.as_ref()
            .map_or("<unlinked>".into(), |p| p.display().to_string())
    }
    match m {
        Mutation::Create { path, .. }
        | Mutation::Mkdir { path, .. }
        | Mutation::Symlink { path, .. }
        | Mutation::Unlink { path, .. }
        | Mutation::Rmdir { path } => format!("{} {}", m.kind(), path.display()),
        Mutation::Link { existing, path } => {
            format!("link {} {}", existing.display(), path.display())
        }
        Mutation::Rename { from, to, .. } => format!("rename {} {}", from.display(), to.display()),
        Mutation::Write {
            path, sync: true, ..
        } => format!("write {} (sync)", rel(path)),
        Mutation::Write { path, .. }
        | Mutation::Fallocate { path, .. }
        | Mutation::SetAttr { path, .. }
        | Mutation::SetXattr { path, .. }
        | Mutation::RemoveXattr { path, .. }
        | Mutation::Fsync { path, .. } => format!("{} {}", m.kind(), rel(path)),
    }
}

impl MutationSink for RecordingSink {
    fn apply(&self, m: &Mutation<'_>, local: LocalApply<'_>) -> Result<(), tandem::fs::Errno> {
        let r = local();
        match r {
            Ok(()) => self.seen.lock().push(describe(m)),
            Err(_) => *self.failed.lock() += 1,
        }
        r
    }
}

pub struct TestMount {
    pub dir: PathBuf,
    pub sink: Arc<RecordingSink>,
    pub mounted: Option<Mounted>,
}

impl TestMount {
    pub fn new(dir: &Path) -> Self {
        require_fuse();
        let sink = Arc::new(RecordingSink::default());
        let (mounted, _) = fs::mount(dir, sink.clone(), &MountConfig::default()).expect("mount");
        Self {
            dir: mounted.dir().to_path_buf(),
            sink,
            mounted: Some(mounted),
        }
    }

    pub fn unmount(&mut self) {
        if let Some(m) = self.mounted.take() {
            m.unmount().expect("unmount");
        }
    }

    pub fn take_seen(&self) -> Vec<String> {
        std::mem::take(&mut *self.sink.seen.lock())
    }
}

impl Drop for TestMount {
    fn drop(&mut self) {
        if let Some(m) = self.mounted.take() {
            let _ = m.unmount();
        }
    }
}

pub fn is_tandem_mount(dir: &Path) -> bool {
    let all = fs::mounts::mounts().unwrap();
    fs::mounts::tandem_mounts_at(&all, dir) > 0
}

pub fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

pub fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// A temp dir on the real disk (not tmpfs) with a canonical path.
pub fn tempdir() -> tempfile::TempDir {
    let base = Path::new("/var/tmp/tandem-tests");
    std::fs::create_dir_all(base).unwrap();
    tempfile::tempdir_in(base).unwrap()
}

pub fn tandem_bin() -> &'static str {
    env!("CARGO_BIN_EXE_tandem")
}

/// `tandem ARGS`, run to its end.
pub fn tandem(args: &[&str]) -> Output {
    Command::new(tandem_bin()).args(args).output().unwrap()
}

/// `tandem -c CONFIG ARGS`, run to its end.
pub fn tandem_with(config: &Path, args: &[&str]) -> Output {
    Command::new(tandem_bin())
        .arg("-c")
        .arg(config)
        .args(args)
        .output()
        .unwrap()
}

/// `tandem init` of credentials for node1 and node2 of `cluster` into `out`,
/// with `extra` arguments.
pub fn tandem_init(out: &Path, cluster: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "init",
        "--out",
        out.to_str().unwrap(),
        "--cluster",
        cluster,
        "--node",
        "node1",
        "--node",
        "node2",
    ];
    args.extend_from_slice(extra);
    tandem(&args)
}

/// `cmd` (etcd, Debian's etcd-server) as a cluster of one: its data in
/// `data`, serving clients on `listen` and sending them to `advertise`,
/// talking to its peers (none) on `peer`.
pub fn etcd_args<'a>(
    cmd: &'a mut Command,
    data: &Path,
    listen: &str,
    advertise: &str,
    peer: &str,
) -> &'a mut Command {
    cmd.args(["--name", "etcd", "--data-dir"])
        .arg(data)
        .args(["--listen-client-urls", listen])
        .args(["--advertise-client-urls", advertise])
        .args(["--listen-peer-urls", peer])
        .args(["--initial-advertise-peer-urls", peer])
        .args(["--initial-cluster", &format!("etcd={peer}")])
}

/// The two loopback nodes of the tests' configurations: node1 on 127.0.0.1,
/// node2 on 127.0.0.2.
pub const LOOPBACK_NODES: &str = r#"[[node]]
name = "node1"
address = "127.0.0.1"

[[node]]
name = "node2"
address = "127.0.0.2"
"#;

/// Waits until `cond` holds, up to `secs` seconds, looking every 50 ms.
pub fn wait_until(secs: u64, cond: impl FnMut() -> bool) -> bool {
    wait_until_every(secs, Duration::from_millis(50), cond)
}

/// Waits until `cond` holds, up to `secs` seconds, looking every `step`.
pub fn wait_until_every(secs: u64, step: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(step);
    }
    cond()
}

/// A port free for the tests' servers on both loopback addresses and on
/// every address (TCP, and UDP with `udp`), handed out once among the tests
/// of this binary and those of every test binary running at once.
///
/// Binding port 0 and handing out the number once the socket is closed is
/// racy: nothing holds the port between that close and the server's bind,
/// and the kernel gives the same number to whoever asks next, another test
/// of this binary or of another. Here instead:
/// - within the process, a counter hands out each port once;
/// - across processes, a port is claimed by an exclusive lock on a file
///   named after it (`/var/tmp/tandem-tests/ports/N`), kept open until the
///   process exits (the kernel drops the lock then, however it ends), so a
///   binary running alongside passes over it; each process starts its
///   counter at a place of its own (from its pid), so they seldom meet;
/// - a bind on every address passes over a port that anything else holds;
/// - the ports lie below the kernel's ephemeral range (32768 and up by
///   default), so the outgoing connections of tests running alongside
///   cannot take one meanwhile.
pub fn free_port(udp: bool) -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    const FIRST: u16 = 20_000;
    const END: u16 = 32_000;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    static CLAIMED: Mutex<Vec<std::fs::File>> = Mutex::new(Vec::new());
    let locks = Path::new("/var/tmp/tandem-tests/ports");
    std::fs::create_dir_all(locks).unwrap();
    let _ = NEXT.compare_exchange(
        0,
        FIRST + (std::process::id() % u32::from(END - FIRST)) as u16,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..2 * (END - FIRST) {
        let port = NEXT.fetch_add(1, Ordering::SeqCst);
        if port >= END {
            let _ = NEXT.compare_exchange(port + 1, FIRST, Ordering::SeqCst, Ordering::SeqCst);
            continue;
        }
        let claim = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(locks.join(port.to_string()))
            .unwrap();
        // SAFETY: flock takes no pointer; `claim` keeps the fd open across
        // the call (and for the life of the process, which holds the lock).
        let locked = unsafe {
            use std::os::fd::AsRawFd;
            libc::flock(claim.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0
        };
        if !locked {
            continue;
        }
        let tcp = ["0.0.0.0", "127.0.0.1", "127.0.0.2"]
            .iter()
            .all(|a| std::net::TcpListener::bind((*a, port)).is_ok());
        let udp_ok = !udp
            || ["127.0.0.1", "127.0.0.2"]
                .iter()
                .all(|a| std::net::UdpSocket::bind((*a, port)).is_ok());
        if tcp && udp_ok {
            CLAIMED.lock().push(claim);
            return port;
        }
    }
    panic!("no free port from {FIRST} to {END}");
}

/// Pseudo-random bytes from `seed` (xorshift): incompressible, cheap to
/// make, the same for the same seed.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
