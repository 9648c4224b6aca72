//! Shared helpers for the tests that mount real FUSE file systems.
#![allow(dead_code)]

pub mod cluster;
pub mod pair;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

/// Waits until `cond` holds, up to `secs` seconds.
pub fn wait_until(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    cond()
}

/// A port free for the tests' servers on both loopback addresses and on
/// every address (TCP, and UDP with `udp`). Taken below the kernel's
/// ephemeral range (32768 and up by default), so that the outgoing
/// connections of tests running alongside cannot take it meanwhile; each
/// pick in a test binary is a new port.
pub fn free_port(udp: bool) -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(
        0,
        20_000 + (std::process::id() % 6_000) as u16,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    loop {
        let port = NEXT.fetch_add(1, Ordering::SeqCst);
        if port >= 32_000 {
            NEXT.store(20_000, Ordering::SeqCst);
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
            return port;
        }
    }
}
