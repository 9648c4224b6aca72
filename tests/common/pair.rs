//! Two tandem daemons on loopback (node1 on 127.0.0.1 as primary, node2 on
//! 127.0.0.2 as secondary), each with its own directory, state and socket,
//! sharing credentials made by `tandem init`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{tandem_bin, tempdir, wait_until};

pub struct Pair {
    pub tmp: tempfile::TempDir,
    pub port: u16,
    pub ack: &'static str,
    /// More settings of the module.
    pub extra: String,
    daemons: [Option<Child>; 2],
}

/// A replication port free on both loopback addresses.
fn free_port() -> u16 {
    super::free_port(false)
}

impl Pair {
    pub fn new() -> Self {
        Self::with_ack("durable")
    }

    pub fn with_ack(ack: &'static str) -> Self {
        Self::with_module(ack, "")
    }

    /// With `extra` lines in the module's section.
    pub fn with_module(ack: &'static str, extra: &str) -> Self {
        super::require_fuse();
        let tmp = tempdir();
        let port = free_port();
        let p = Pair {
            tmp,
            port,
            ack,
            extra: extra.to_string(),
            daemons: [None, None],
        };
        for n in 1..=2 {
            std::fs::create_dir_all(p.dir(n)).unwrap();
            std::fs::write(p.config(n), p.config_text(n)).unwrap();
        }
        let o = Command::new(tandem_bin())
            .args(["init", "--out"])
            .arg(p.tmp.path().join("tls"))
            .args(["--cluster", "pair", "--node", "node1", "--node", "node2"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        p
    }

    fn config_text(&self, n: usize) -> String {
        let t = self.tmp.path();
        format!(
            r#"
[cluster]
name = "pair"

[[node]]
name = "node1"
address = "127.0.0.1"

[[node]]
name = "node2"
address = "127.0.0.2"

[replication]
port = {port}
peer_timeout_ms = 2000

[daemon]
socket = "{sock}"
state_dir = "{state}"
tls_dir = "{tls}"

[[module]]
name = "app"
dirs = ["{dir}"]
ack = "{ack}"
failover = "lb"
{extra}
"#,
            port = self.port,
            sock = t.join(format!("n{n}.sock")).display(),
            state = t.join(format!("state{n}")).display(),
            tls = t.join("tls").display(),
            dir = self.dir(n).display(),
            ack = self.ack,
            extra = self.extra,
        )
    }

    /// The replicated directory of node `n` (1 or 2).
    pub fn dir(&self, n: usize) -> PathBuf {
        self.tmp.path().join(format!("node{n}")).join("app")
    }

    pub fn config(&self, n: usize) -> PathBuf {
        self.tmp.path().join(format!("n{n}.toml"))
    }

    pub fn log(&self, n: usize) -> PathBuf {
        self.tmp.path().join(format!("daemon{n}.log"))
    }

    pub fn log_text(&self, n: usize) -> String {
        std::fs::read_to_string(self.log(n)).unwrap_or_default()
    }

    /// Starts node `n`'s daemon (node1 primary, node2 secondary) and waits
    /// for its control socket.
    pub fn start(&mut self, n: usize) {
        let role = if n == 1 { "prim" } else { "second" };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log(n))
            .unwrap();
        let child = Command::new(tandem_bin())
            .arg("-c")
            .arg(self.config(n))
            .args(["daemon", "--node", &format!("node{n}"), "--role", role])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.daemons[n - 1] = Some(child);
        assert!(
            wait_until(20, || self.status(n).is_some()),
            "daemon {n} did not come up:\n{}",
            self.log_text(n)
        );
    }

    /// Both nodes up and the primary connected and up to date.
    pub fn start_both(&mut self) {
        self.start(2);
        self.start(1);
        self.wait_connected();
    }

    pub fn pid(&self, n: usize) -> u32 {
        self.daemons[n - 1].as_ref().expect("daemon running").id()
    }

    pub fn kill(&mut self, n: usize) {
        if let Some(mut c) = self.daemons[n - 1].take() {
            // SAFETY: kill takes no pointer; `c` is our child, not reaped until the wait below, so
            // its pid is still its.
            unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
            c.wait().unwrap();
        }
    }

    pub fn stop(&mut self, n: usize) {
        if let Some(mut c) = self.daemons[n - 1].take() {
            // SAFETY: kill takes no pointer; `c` is our child, not reaped until the wait below, so
            // its pid is still its.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            c.wait().unwrap();
        }
    }

    /// The module's replication status on node `n`, as JSON.
    pub fn status(&self, n: usize) -> Option<serde_json::Value> {
        let o = Command::new(tandem_bin())
            .arg("-c")
            .arg(self.config(n))
            .args(["status", "--json"])
            .output()
            .ok()?;
        if !o.status.success() {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
        Some(v["modules"][0]["replication"].clone())
    }

    pub fn peer_state(&self) -> String {
        self.status(1)
            .and_then(|s| s["peer"].as_str().map(str::to_string))
            .unwrap_or_default()
    }

    pub fn wait_connected(&self) {
        assert!(
            wait_until(30, || self.peer_state() == "connected"),
            "primary never became connected: {:?}\n--- node1\n{}\n--- node2\n{}",
            self.status(1),
            self.log_text(1),
            self.log_text(2)
        );
    }

    /// Waits until the secondary has made everything sent so far durable.
    pub fn wait_caught_up(&self) {
        let ok = wait_until(30, || {
            let Some(s) = self.status(1) else {
                return false;
            };
            s["peer"] == "connected" && s["durable"].as_u64() >= s["sent"].as_u64()
        });
        assert!(ok, "secondary did not catch up: {:?}", self.status(1));
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        self.stop(1);
        self.kill(2);
        let d = self.dir(1);
        if super::is_tandem_mount(&d) {
            let c = super::cpath(&d);
            // SAFETY: `c` is a NUL-terminated path living across the call.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        if std::thread::panicking() {
            eprintln!("--- node1 log\n{}", self.log_text(1));
            eprintln!("--- node2 log\n{}", self.log_text(2));
        }
    }
}

/// Everything a replica must agree on for one name.
#[derive(Debug, PartialEq, Eq)]
pub struct Node {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: (i64, i64),
    content: Vec<u8>,
    target: Option<PathBuf>,
    xattrs: Vec<(String, Vec<u8>)>,
    /// Other names of the same inode (hard links), relative.
    links: Vec<PathBuf>,
}

fn xattrs(p: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = xattr_list(p)
        .into_iter()
        .map(|n| {
            let val = xattr_get(p, &n);
            (n, val)
        })
        .collect();
    v.sort();
    v
}

fn xattr_list(p: &Path) -> Vec<String> {
    let c = super::cpath(p);
    let mut buf = vec![0u8; 65536];
    // SAFETY: `c` is a NUL-terminated path, and `buf` a live Vec passed with its length.
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n <= 0 {
        return Vec::new();
    }
    buf[..n as usize]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

fn xattr_get(p: &Path, name: &str) -> Vec<u8> {
    let c = super::cpath(p);
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 65536];
    // SAFETY: `c` and `n` are NUL-terminated, and `buf` is a live Vec passed with its length.
    let len =
        unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    buf.truncate(len.max(0) as usize);
    buf
}

/// The tree below `root` as the comparison sees it.
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, Vec<PathBuf>> = BTreeMap::new();
    walk(root, Path::new(""), &mut out, &mut inodes);
    for names in inodes.values() {
        if names.len() > 1 {
            for n in names {
                let others = names.iter().filter(|o| *o != n).cloned().collect();
                out.get_mut(n).unwrap().links = others;
            }
        }
    }
    out
}

fn walk(
    root: &Path,
    rel: &Path,
    out: &mut BTreeMap<PathBuf, Node>,
    inodes: &mut BTreeMap<u64, Vec<PathBuf>>,
) {
    let full = root.join(rel);
    let md = std::fs::symlink_metadata(&full).unwrap();
    let ft = md.file_type();
    let kind = if ft.is_dir() {
        "dir"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_file() {
        "file"
    } else {
        "other"
    };
    let node = Node {
        kind,
        mode: md.mode(),
        uid: md.uid(),
        gid: md.gid(),
        size: if ft.is_dir() { 0 } else { md.size() },
        mtime: (md.mtime(), md.mtime_nsec()),
        content: if ft.is_file() {
            std::fs::read(&full).unwrap()
        } else {
            Vec::new()
        },
        target: ft.is_symlink().then(|| std::fs::read_link(&full).unwrap()),
        xattrs: if ft.is_symlink() {
            Vec::new()
        } else {
            xattrs(&full)
        },
        links: Vec::new(),
    };
    if ft.is_file() && md.nlink() > 1 {
        inodes.entry(md.ino()).or_default().push(rel.to_path_buf());
    }
    out.insert(rel.to_path_buf(), node);
    if ft.is_dir() {
        let mut names: Vec<_> = std::fs::read_dir(&full)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for n in names {
            walk(root, &rel.join(n), out, inodes);
        }
    }
}

/// Asserts that two trees are identical, naming the first difference.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let (sa, sb) = (snapshot(a), snapshot(b));
    let names_a: Vec<_> = sa.keys().collect();
    let names_b: Vec<_> = sb.keys().collect();
    assert_eq!(names_a, names_b, "the trees hold different names");
    for (name, na) in &sa {
        let nb = &sb[name];
        if na != nb {
            let short = |n: &Node| {
                format!(
                    "{} mode {:o} uid {} gid {} size {} mtime {:?} target {:?} xattrs {:?} links {:?} content-len {}",
                    n.kind,
                    n.mode,
                    n.uid,
                    n.gid,
                    n.size,
                    n.mtime,
                    n.target,
                    n.xattrs,
                    n.links,
                    n.content.len()
                )
            };
            let first_diff = na.content.iter().zip(&nb.content).position(|(x, y)| x != y);
            let head = |n: &Node| {
                String::from_utf8_lossy(&n.content[..n.content.len().min(24)]).into_owned()
            };
            panic!(
                "{} differs:\n  primary:   {} {:?}\n  secondary: {} {:?}\n  first differing byte: {first_diff:?}",
                name.display(),
                short(na),
                head(na),
                short(nb),
                head(nb)
            );
        }
    }
}

pub fn settle() {
    std::thread::sleep(Duration::from_millis(50));
}
