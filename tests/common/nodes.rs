//! What two daemons of a test share: one directory holding each node's
//! configuration (`n{n}.toml`) and log (`daemon{n}.log`), and the daemons
//! themselves. [`super::pair::Pair`] and [`super::cluster::Cluster`] stand
//! on it.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};

use super::{tandem_bin, tempdir, wait_until};

/// Lets a harness with a `nodes: Nodes` field be used as its `Nodes`.
macro_rules! stands_on_nodes {
    ($harness:ty) => {
        impl std::ops::Deref for $harness {
            type Target = Nodes;
            fn deref(&self) -> &Nodes {
                &self.nodes
            }
        }

        impl std::ops::DerefMut for $harness {
            fn deref_mut(&mut self) -> &mut Nodes {
                &mut self.nodes
            }
        }
    };
}
pub(crate) use stands_on_nodes;

pub struct Nodes {
    pub tmp: tempfile::TempDir,
    pub daemons: [Option<Child>; 2],
    /// The tandem each node runs (and its command line speaks to it):
    /// this build unless a test says otherwise (an older release).
    pub bins: [PathBuf; 2],
}

impl Nodes {
    pub fn new() -> Nodes {
        Nodes {
            tmp: tempdir(),
            daemons: [None, None],
            bins: [tandem_bin().into(), tandem_bin().into()],
        }
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.tmp.path().join(p)
    }

    pub fn config(&self, n: usize) -> PathBuf {
        self.path(&format!("n{n}.toml"))
    }

    pub fn log(&self, n: usize) -> PathBuf {
        self.path(&format!("daemon{n}.log"))
    }

    pub fn log_text(&self, n: usize) -> String {
        std::fs::read_to_string(self.log(n)).unwrap_or_default()
    }

    /// `tandem -c CONFIG ARGS` with node `n`'s configuration.
    pub fn tandem(&self, n: usize, args: &[&str]) -> Output {
        Command::new(&self.bins[n - 1])
            .arg("-c")
            .arg(self.config(n))
            .args(args)
            .output()
            .unwrap()
    }

    /// Node `n`'s `status --json` (None while its daemon does not answer).
    pub fn status(&self, n: usize) -> Option<serde_json::Value> {
        let o = self.tandem(n, &["status", "--json"]);
        o.status
            .success()
            .then(|| serde_json::from_slice(&o.stdout).ok())
            .flatten()
    }

    /// Starts node `n`'s daemon with `cmd`, its output appended to its log,
    /// and waits until it answers on its control socket.
    pub fn spawn(&mut self, n: usize, mut cmd: Command) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log(n))
            .unwrap();
        let child = cmd.stdout(Stdio::null()).stderr(log).spawn().unwrap();
        self.daemons[n - 1] = Some(child);
        assert!(
            wait_until(20, || self.status(n).is_some()),
            "daemon {n} did not come up:\n{}",
            self.log_text(n)
        );
    }

    pub fn pid(&self, n: usize) -> u32 {
        self.daemons[n - 1].as_ref().expect("daemon running").id()
    }

    /// Sends `sig` to node `n`'s daemon, if it runs, and waits for its end.
    pub fn signal(&mut self, n: usize, sig: i32) {
        if let Some(mut c) = self.daemons[n - 1].take() {
            // SAFETY: kill takes no pointer; `c` is our child, not reaped until
            // the wait below, so its pid is still its.
            unsafe { libc::kill(c.id() as i32, sig) };
            c.wait().unwrap();
        }
    }
}
