//! Wires each module's replication for the role this node has: the primary's
//! sink and its link to the peer, or the secondary's server and applier.
//! Until the cluster manager decides roles, the role comes from the command line.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;

use crate::changelog::{ChangeLog, RocksChangeLog};
use crate::config::{Compression, Module, Node, Settings};
use crate::replication::applier::Applier;
use crate::replication::frame;
use crate::replication::primary::{Dir, ReplicationStatus, Replicator};
use crate::replication::secondary::{SecondaryModule, SecondaryServer};
use crate::replication::session::{PrimaryLink, resolve, state_dir};
use crate::replication::tls::Credentials;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Serve the modules and replicate to the peer.
    Prim,
    /// Receive the peer's changes.
    Second,
}

pub enum Replica {
    Primary(Arc<Replicator>),
    Secondary(Arc<SecondaryModule>),
}

impl Replica {
    pub fn status(&self) -> ReplicationStatus {
        match self {
            Replica::Primary(r) => r.status(),
            Replica::Secondary(s) => s.status(),
        }
    }

    pub fn primary(&self) -> Option<&Arc<Replicator>> {
        match self {
            Replica::Primary(r) => Some(r),
            Replica::Secondary(_) => None,
        }
    }
}

/// This node and its peer: `--node`, or the node named like this host.
pub fn identity<'s>(
    settings: &'s Settings,
    node: Option<&str>,
) -> Result<(&'s Node, &'s Node), String> {
    let name = match node {
        Some(n) => n.to_string(),
        None => hostname().ok_or("cannot read this host's name; pass --node")?,
    };
    let names: Vec<&str> = settings.nodes.iter().map(|n| n.name.as_str()).collect();
    let i = settings
        .nodes
        .iter()
        .position(|n| n.name == name)
        .ok_or_else(|| {
            format!(
                "this node is {name:?}, which is not one of the configured nodes ({}); pass --node",
                names.join(", ")
            )
        })?;
    Ok((&settings.nodes[i], &settings.nodes[1 - i]))
}

fn hostname() -> Option<String> {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    Some(h.trim().to_string())
}

fn compression(c: Compression) -> frame::Compression {
    match c {
        Compression::Off => frame::Compression::Off,
        Compression::Auto => frame::Compression::Zstd { level: 1 },
        Compression::Zstd => frame::Compression::Zstd { level: 3 },
    }
}

/// The root descriptor (opened before anything is mounted over it) and the
/// change log of each directory of `module`.
fn open_dirs(settings: &Settings, module: &Module) -> Result<Vec<Dir>, String> {
    let mut out = Vec::new();
    for (i, path) in module.dirs.iter().enumerate() {
        let (path, report) =
            crate::fs::prepare(path).map_err(|e| format!("module {}: {e}", module.name))?;
        if report.stale_removed > 0 {
            tracing::warn!(module = %module.name, "removed a stale mount on {}", path.display());
        }
        let root: OwnedFd = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(&path)
            .map_err(|e| format!("module {}: {}: {e}", module.name, path.display()))?
            .into();
        let at = state_dir(&settings.daemon.state_dir, &module.name, i);
        std::fs::create_dir_all(&at)
            .map_err(|e| format!("module {}: {}: {e}", module.name, at.display()))?;
        let log: Arc<dyn ChangeLog> = Arc::new(
            RocksChangeLog::open(&at, settings.replication.chunk_size as u64).map_err(|e| {
                format!(
                    "module {}: change log in {}: {e}",
                    module.name,
                    at.display()
                )
            })?,
        );
        out.push(Dir { root, log });
    }
    Ok(out)
}

/// Sets up every module's replication in `role` and starts the network side
/// on `rt`. Nothing is mounted here.
pub fn start(
    settings: &Settings,
    role: Role,
    me: &Node,
    peer: &Node,
    rt: &tokio::runtime::Runtime,
) -> Result<HashMap<String, Replica>, String> {
    let creds = Arc::new(
        Credentials::load(&settings.daemon.tls_dir, &me.name, &peer.name).map_err(|e| {
            format!(
                "TLS credentials in {}: {e} (create them with `tandem init`)",
                settings.daemon.tls_dir.display()
            )
        })?,
    );
    let port = settings.replication.port;
    let comp = compression(settings.replication.compression);
    let mut out = HashMap::new();
    match role {
        Role::Prim => {
            let peer_addr = rt.block_on(resolve(&peer.address, port))?;
            for m in &settings.modules {
                let rep = Replicator::new(
                    &m.name,
                    m.ack,
                    settings.replication.peer_timeout,
                    settings.replication.async_max_lag,
                    open_dirs(settings, m)?,
                );
                let link = PrimaryLink {
                    rep: rep.clone(),
                    creds: creds.clone(),
                    cluster: settings.cluster.name.clone(),
                    peer_addr,
                    compression: comp,
                };
                rt.spawn(link.run());
                out.insert(m.name.clone(), Replica::Primary(rep));
            }
        }
        Role::Second => {
            let mut modules = HashMap::new();
            for m in &settings.modules {
                let dirs = open_dirs(settings, m)?;
                let logs = dirs.iter().map(|d| d.log.clone()).collect();
                let roots = dirs.into_iter().map(|d| d.root).collect();
                let sm = SecondaryModule::new(&m.name, Applier::new(roots), logs);
                modules.insert(m.name.clone(), sm.clone());
                out.insert(m.name.clone(), Replica::Secondary(sm));
            }
            let addr = rt.block_on(resolve(&me.address, port))?;
            let listener = rt
                .block_on(tokio::net::TcpListener::bind(addr))
                .map_err(|e| format!("cannot listen for the peer on {addr}: {e}"))?;
            tracing::info!("waiting for {} on {addr}", peer.name);
            let server = Arc::new(SecondaryServer {
                creds,
                cluster: settings.cluster.name.clone(),
                modules,
                compression: comp,
            });
            rt.spawn(server.run(listener));
        }
    }
    Ok(out)
}
