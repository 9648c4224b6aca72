//! The `tandem` command line: parses arguments, then either runs a local action
//! (`mount`, `config check`, `daemon`) or asks the daemon over its control socket.
//!
//! Exit codes: 0 success, 1 failure, 2 bad input (arguments, configuration,
//! directories) or a request the daemon refuses.

mod commands;
mod generate;
mod maintenance;
mod mount;
mod progress;
mod resync;
mod snapshot;
mod status;
mod token;
mod upgrade;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use crate::exit::{EXIT_FAILURE, EXIT_USAGE};

/// `tandem daemon --role`: the command line's name for [`crate::daemon::Role`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RoleArg {
    /// Serve the modules and replicate to the peer.
    Prim,
    /// Receive the peer's changes.
    Second,
    /// No peer: mount the directories and count their mutations.
    Local,
}

impl From<RoleArg> for crate::daemon::Role {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::Prim => crate::daemon::Role::Prim,
            RoleArg::Second => crate::daemon::Role::Second,
            RoleArg::Local => crate::daemon::Role::Local,
        }
    }
}

/// Checks of the replicated directories on a node: they must exist, and the
/// mount layer tells a mount a killed daemon left from a broken directory.
pub fn on_disk() -> crate::config::DirChecks {
    crate::config::DirChecks::On {
        is_stale_mount: crate::fs::mounts::is_stale,
    }
}

/// Default configuration file.
pub const DEFAULT_CONFIG: &str = "/etc/tandem/tandem.toml";

#[derive(Parser, Debug)]
#[command(
    name = "tandem",
    version,
    about = "Two-node high availability: synchronous replication and failover"
)]
pub struct Cli {
    /// Configuration file.
    #[arg(long, short = 'c', global = true, env = "TANDEM_CONFIG", default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Control socket of the daemon (default: `daemon.socket` from the configuration).
    #[arg(long, global = true, env = "TANDEM_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Carry the command out on this node: the local daemon relays it to the
    /// other node over their authenticated link (status, start, stop,
    /// restart, swap, prim, second, resolve, checker, maintenance, snapshot, log).
    #[arg(long, global = true, value_name = "NODE")]
    pub on: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon: replicate every module in this node's role and serve
    /// the control socket.
    Daemon {
        /// This node's name in the configuration (default: the host name).
        #[arg(long)]
        node: Option<String>,
        /// A fixed role for every module instead of the cluster manager's
        /// decisions: `prim` mounts and replicates to the peer, `second`
        /// applies its changes, `local` mounts and only counts changes.
        #[arg(long, value_enum)]
        role: Option<RoleArg>,
        /// Set by `tandem upgrade`: go on from the previous daemon's image.
        #[arg(long = "handover-fd", hide = true)]
        handover_fd: Option<i32>,
    },
    /// Show the state of every module.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Start a module (all modules without a name).
    Start { module: Option<String> },
    /// Stop a module (all modules without a name); its directories are unmounted.
    Stop { module: Option<String> },
    /// Restart a module.
    Restart { module: String },
    /// Move the application to the other node, in order and without losing a write.
    Swap { module: String },
    /// Make this node primary for a module.
    Prim {
        module: String,
        /// Serve even though the peer cannot confirm this node's data is the newest.
        #[arg(long)]
        force: bool,
    },
    /// Make this node secondary for a module.
    Second {
        module: String,
        /// Resynchronise every file by content instead of only the changed ranges.
        #[arg(long)]
        fullsync: bool,
    },
    /// Show the resync of a module's changed ranges to the peer until it is
    /// current; or, on the primary, cap, pause or resume the running one.
    Resync {
        module: String,
        /// Seconds to wait for a peer that is not connected yet.
        #[arg(long, default_value_t = 10)]
        wait: u64,
        /// One JSON object per sample (the last one with the peer connected).
        #[arg(long)]
        json: bool,
        /// The most the running resync ships a second ("50MiB", "1GB", bytes;
        /// "0": no cap), until the daemon restarts.
        #[arg(long, value_parser = resync::rate, allow_hyphen_values = true)]
        rate: Option<u64>,
        /// Ship nothing until --resume (live changes go on; failover is not held).
        #[arg(long, conflicts_with = "resume")]
        pause: bool,
        #[arg(long)]
        resume: bool,
    },
    /// Compare a module's trees on both nodes.
    Verify {
        module: String,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        repair: bool,
    },
    /// Resolve a split brain by keeping one node's data.
    Resolve {
        module: String,
        #[arg(long)]
        keep: String,
    },
    /// Suspend (`off`) or resume (`on`) a module's health checks, for maintenance.
    Checker {
        module: String,
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// Maintenance on or off, for one module or every module (Pacemaker's
    /// maintenance-mode, Patroni's pause): nothing moves a module by itself
    /// — no failover, failback, fencing, nor restart or hand-over for a
    /// failing check — and commands still work. Applied on this node and
    /// on its peer; kept across restarts.
    Maintenance {
        #[arg(value_parser = ["on", "off"])]
        state: String,
        /// One module (default: every module).
        module: Option<String>,
    },
    /// Replace this node's daemon with a new program (default: the one
    /// installed where it was started from) without stopping the
    /// application: the mounts pass to the new program, which reconnects to
    /// the peer. Returns once the new daemon serves again.
    Upgrade {
        /// The new tandem program.
        #[arg(long)]
        program: Option<PathBuf>,
        /// Give up waiting for the new daemon after this many seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Point-in-time snapshots of a module on this node: create, list,
    /// diff, restore, rollback, delete. Each node keeps and deletes its own.
    Snapshot {
        #[command(subcommand)]
        action: snapshot::SnapshotAction,
    },
    /// Show a module's log.
    Log {
        module: String,
        #[arg(short = 'f', long)]
        follow: bool,
        /// One JSON object per line: {"node", "module", "line"}.
        #[arg(long)]
        json: bool,
    },
    /// The API's bearer tokens (kept hashed in `daemon.state_dir` of this node).
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Create the cluster's CA, a certificate per node and the heartbeat key, in a
    /// directory to copy to both nodes (cluster and node names come from the
    /// configuration unless given).
    Init {
        /// Where to write them (default: `daemon.tls_dir` from the configuration).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Cluster name.
        #[arg(long)]
        cluster: Option<String>,
        /// A node name; give it twice.
        #[arg(long = "node")]
        nodes: Vec<String>,
        /// Replace existing credentials (a node that keeps the old ones is locked out).
        #[arg(long)]
        force: bool,
    },
    /// Mount the intercepting file system over DIR in the foreground (Ctrl-C unmounts).
    Mount(mount::MountArgs),
    /// Serve module leases to the two nodes (`cluster.quorum = "witness"`),
    /// on a third machine with a copy of the configuration and credentials.
    Witness {
        /// Address to listen on (default: `cluster.witness`).
        #[arg(long)]
        listen: Option<String>,
        /// Where the newest generation of each module is kept (default:
        /// `witness.json` in `daemon.state_dir`).
        #[arg(long)]
        state: Option<std::path::PathBuf>,
    },
    /// Started by the daemon: cleans up after it if it dies.
    #[command(hide = true)]
    Guard,
    /// Asked by a daemon about to hand over to this program: which
    /// hand-over versions it reads.
    #[command(hide = true)]
    HandoverCheck,
    /// Manual pages and shell completions, for packaging.
    #[command(hide = true)]
    Generate {
        #[command(subcommand)]
        action: generate::GenerateAction,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenAction {
    /// Make a token and print it (once: only its hash is kept).
    Create {
        name: String,
        /// `monitor` reads everything and changes nothing; `admin` also commands.
        #[arg(long, value_parser = ["monitor", "admin"])]
        role: String,
    },
    /// List the tokens (names, roles, creation times; never the tokens).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token: it stops working at once.
    Revoke { name: String },
}

#[derive(Subcommand, Debug)]
pub enum ConfigAction {
    /// Validate a configuration file: prints OK and a summary, or every error.
    Check {
        file: PathBuf,
        /// Skip the checks that directories exist (to validate a file for another machine).
        #[arg(long)]
        skip_dir_checks: bool,
    },
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { 0 });
        }
    };
    init_logging();
    commands::run(cli)
}

fn init_logging() {
    use std::io::IsTerminal;
    // The FUSE library warns when its own unmount finds the mount already gone,
    // which is how tandem always unmounts; keep its errors only.
    let filter = tracing_subscriber::EnvFilter::try_from_env("TANDEM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
