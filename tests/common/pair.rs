//! Two tandem daemons on loopback (node1 on 127.0.0.1 as primary, node2 on
//! 127.0.0.2 as secondary), each with its own directory, state and socket,
//! sharing credentials made by `tandem init`.

use std::path::PathBuf;
use std::process::Command;

use super::nodes::{Nodes, stands_on_nodes};
use super::{LOOPBACK_NODES, free_port, tandem_bin, tandem_init, wait_until};

pub struct Pair {
    pub nodes: Nodes,
    /// The replication port, free on both loopback addresses.
    pub port: u16,
    pub ack: &'static str,
    /// More settings of the module.
    pub extra: String,
}

stands_on_nodes!(Pair);

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
        let p = Pair {
            nodes: Nodes::new(),
            port: free_port(false),
            ack,
            extra: extra.to_string(),
        };
        for n in 1..=2 {
            std::fs::create_dir_all(p.dir(n)).unwrap();
            std::fs::write(p.config(n), p.config_text(n)).unwrap();
        }
        let o = tandem_init(&p.path("tls"), "pair", &[]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        p
    }

    fn config_text(&self, n: usize) -> String {
        let t = self.tmp.path();
        format!(
            r#"
[cluster]
name = "pair"

{nodes}
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
            nodes = LOOPBACK_NODES,
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

    /// Starts node `n`'s daemon (node1 primary, node2 secondary) and waits
    /// for its control socket.
    pub fn start(&mut self, n: usize) {
        let role = if n == 1 { "prim" } else { "second" };
        let mut cmd = Command::new(tandem_bin());
        cmd.arg("-c")
            .arg(self.config(n))
            .args(["daemon", "--node", &format!("node{n}"), "--role", role])
            .env("RUST_LOG", "info");
        self.spawn(n, cmd);
    }

    /// Both nodes up and the primary connected and up to date.
    pub fn start_both(&mut self) {
        self.start(2);
        self.start(1);
        self.wait_connected();
    }

    /// The module's replication status on node `n`, as JSON.
    pub fn replication(&self, n: usize) -> Option<serde_json::Value> {
        self.status(n)
            .map(|v| v["modules"][0]["replication"].clone())
    }

    pub fn peer_state(&self) -> String {
        self.replication(1)
            .and_then(|s| s["peer"].as_str().map(str::to_string))
            .unwrap_or_default()
    }

    pub fn wait_connected(&self) {
        assert!(
            wait_until(30, || self.peer_state() == "connected"),
            "primary never became connected: {:?}\n--- node1\n{}\n--- node2\n{}",
            self.replication(1),
            self.log_text(1),
            self.log_text(2)
        );
    }

    /// Waits until the secondary has made everything sent so far durable.
    pub fn wait_caught_up(&self) {
        let ok = wait_until(30, || {
            let Some(s) = self.replication(1) else {
                return false;
            };
            s["peer"] == "connected" && s["durable"].as_u64() >= s["sent"].as_u64()
        });
        assert!(ok, "secondary did not catch up: {:?}", self.replication(1));
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        self.signal(1, libc::SIGTERM);
        self.signal(2, libc::SIGKILL);
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
