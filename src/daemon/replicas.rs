//! Wires each module's replication for the role this node has: the primary's
//! sink and its link to the peer, or the secondary's server and applier.
//! Until the cluster manager decides roles, the role comes from the command line.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::changelog::{ChangeLog, ChangeLogError, RocksChangeLog};
use crate::config::{Compression, Module, Node, Settings};
use crate::replication::dir::Dir;
use crate::replication::errors::SessionError;
use crate::replication::frame;
use crate::replication::primary::{AloneCheck, Replicator};
use crate::replication::secondary::{SecondaryModule, SecondaryServer};
use crate::replication::session::{PrimarySession, ResolveError, resolve, state_dir};
use crate::replication::snapshot::{SnapshotError, Snapshots};
use crate::replication::status::ReplicationStatus;
use crate::replication::tls::{Credentials, TlsError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Serve the modules and replicate to the peer.
    Prim,
    /// Receive the peer's changes.
    Second,
    /// No peer: mount the directories and count their mutations.
    Local,
}

#[derive(Clone)]
pub enum Replica {
    Primary(Arc<Replicator>, Arc<PrimarySession>),
    Secondary(Arc<SecondaryModule>),
}

impl Replica {
    pub fn status(&self) -> ReplicationStatus {
        match self {
            Replica::Primary(r, _) => r.status(),
            Replica::Secondary(s) => s.status(),
        }
    }

    pub fn primary(&self) -> Option<&Arc<Replicator>> {
        match self {
            Replica::Primary(r, _) => Some(r),
            Replica::Secondary(_) => None,
        }
    }
}

impl Replica {
    /// Starts `tandem verify` in the background; its progress and report
    /// show in the status.
    pub fn start_verify(&self, repair: bool) -> Result<String, ReplicaRefused> {
        let Replica::Primary(rep, link) = self else {
            return Err(ReplicaRefused::NotPrimary);
        };
        {
            let mut v = rep.verify.lock();
            if v.running {
                return Err(ReplicaRefused::VerifyRunning);
            }
            *v = crate::replication::status::VerifyState {
                running: true,
                phase: "connecting".into(),
                ..Default::default()
            };
        }
        let (rep, link2) = (rep.clone(), link.clone());
        link.stop.spawn("verify", async move {
            let link = link2;
            let outcome = verify_and_repair(&rep, &link, repair).await;
            let mut v = rep.verify.lock();
            v.running = false;
            v.phase = "done".into();
            match outcome {
                Ok(report) => v.report = Some(report),
                Err(e) => v.error = Some(e.to_string()),
            }
        });
        Ok(format!("module {}: verify started", self.name()))
    }

    /// Sets the running resync's cap, or pauses or resumes it. A pause
    /// outlives the daemon, so a resume is taken with no resync running.
    pub fn pace_resync(
        &self,
        rate: Option<u64>,
        paused: Option<bool>,
    ) -> Result<String, ReplicaRefused> {
        let Replica::Primary(rep, _) = self else {
            return Err(ReplicaRefused::NotPrimaryResync);
        };
        let resume_only = rate.is_none() && paused == Some(false) && rep.pace.paused();
        if !rep.progress().running && !resume_only {
            return Err(ReplicaRefused::NoResync);
        }
        if rate.is_none() && paused.is_none() {
            return Err(ReplicaRefused::NothingAsked);
        }
        let mut said = Vec::new();
        // The pause first: refused, it leaves the rate as it was too.
        if let Some(p) = paused {
            rep.pace
                .set_paused(p)
                .map_err(|e| ReplicaRefused::PauseNotKept(e.to_string()))?;
            said.push(if p { "paused" } else { "resumed" }.to_string());
        }
        if let Some(r) = rate {
            rep.pace.set_rate(r);
            said.push(match r {
                0 => "no cap".to_string(),
                r => format!("at most {}/s", crate::replication::status::human(r)),
            });
        }
        tracing::info!(module = %rep.module, "resync: {}", said.join(", "));
        Ok(format!("module {}: resync {}", rep.module, said.join(", ")))
    }

    pub fn request_full_sync(&self) -> Result<String, ReplicaRefused> {
        match self {
            Replica::Secondary(s) => {
                s.request_full_sync();
                Ok(format!(
                    "module {}: full sync requested; it starts when the primary (re)connects",
                    s.name
                ))
            }
            Replica::Primary(..) => Err(ReplicaRefused::NotSecondary),
        }
    }

    fn name(&self) -> &str {
        match self {
            Replica::Primary(r, _) => &r.module,
            Replica::Secondary(s) => &s.name,
        }
    }
}

/// A command on a module's replication that this node's role for it does
/// not allow.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplicaRefused {
    #[error("this node is the secondary of the module; run verify on the primary")]
    NotPrimary,
    #[error("a verify of this module is already running")]
    VerifyRunning,
    #[error("this node is the primary of the module; changing roles needs the cluster manager")]
    NotSecondary,
    #[error("this node is the secondary of the module; a resync is steered on the primary")]
    NotPrimaryResync,
    #[error("no resync of this module is running")]
    NoResync,
    #[error("say what to change: a rate, pause or resume")]
    NothingAsked,
    /// The pause must outlive the daemon, so it is refused if it cannot be
    /// written down.
    #[error("cannot keep the pause in the state directory: {0}")]
    PauseNotKept(String),
}

/// Why a verify, or its repair, did not finish (the status shows it).
#[derive(Debug, thiserror::Error)]
enum VerifyError {
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The differences found could not be marked for the resync.
    #[error("change log: {0}")]
    Mark(#[source] ChangeLogError),
    #[error("the repair did not finish within an hour")]
    RepairTimeout,
}

async fn verify_and_repair(
    rep: &Replicator,
    link: &PrimarySession,
    repair: bool,
) -> Result<crate::replication::status::VerifyReport, VerifyError> {
    use crate::replication::verify;
    let first = verify::run(&link.connector(), &link.rep, &rep.verify).await?;
    if !repair || first.differences.is_empty() {
        return Ok(first);
    }
    rep.verify.lock().phase = format!("repairing {} differences", first.differences.len());
    verify::mark(rep, &first.differences).map_err(VerifyError::Mark)?;
    rep.force_resync("verify --repair: resynchronising the differences");
    // Wait for the resync to ship them, then look again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3600);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    loop {
        let st = rep.status();
        if st.peer == "connected" && st.durable >= st.sent {
            break;
        }
        if std::time::Instant::now() > deadline {
            return Err(VerifyError::RepairTimeout);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let mut second = verify::run(&link.connector(), &link.rep, &rep.verify).await?;
    second.repaired = first.differences.len() as u64;
    Ok(second)
}

/// Which configured node this one is cannot be told.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read this host's name; pass --node")]
    NoHostname,
    /// Named neither by `--node` nor by its host name: the nodes are listed.
    #[error(
        "this node is {name:?}, which is not one of the configured nodes ({}); pass --node",
        .known.join(", ")
    )]
    Unknown { name: String, known: Vec<String> },
}

/// This node and its peer: `--node`, or the node named like this host.
pub fn identity<'s>(
    settings: &'s Settings,
    node: Option<&str>,
) -> Result<(&'s Node, &'s Node), IdentityError> {
    let name = match node {
        Some(n) => n.to_string(),
        None => hostname().ok_or(IdentityError::NoHostname)?,
    };
    let i = settings
        .nodes
        .iter()
        .position(|n| n.name == name)
        .ok_or_else(|| IdentityError::Unknown {
            known: settings.nodes.iter().map(|n| n.name.clone()).collect(),
            name,
        })?;
    Ok((&settings.nodes[i], &settings.nodes[1 - i]))
}

fn hostname() -> Option<String> {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    Some(h.trim().to_string())
}

pub(super) fn compression(c: Compression) -> frame::Compression {
    match c {
        Compression::Off => frame::Compression::Off,
        Compression::Auto => frame::Compression::Auto { level: 1 },
        Compression::Zstd => frame::Compression::Zstd { level: 3 },
    }
}

/// Why a directory of a module cannot be replicated; each names the module.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    /// The directory cannot be mounted over (missing, inside a mount...).
    #[error("module {module}: {source}")]
    Prepare {
        module: String,
        #[source]
        source: crate::fs::MountError,
    },
    /// The directory, or its state directory, cannot be opened or made.
    #[error("module {module}: {path}: {source}")]
    Io {
        module: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("module {module}: snapshots in {path}: {source}")]
    Snapshots {
        module: String,
        path: PathBuf,
        #[source]
        source: SnapshotError,
    },
    #[error("module {module}: change log in {path}: {source}")]
    ChangeLog {
        module: String,
        path: PathBuf,
        #[source]
        source: ChangeLogError,
    },
}

/// The root descriptor (opened before anything is mounted over it) and the
/// change log of each directory of `module`.
pub(super) fn open_dirs(settings: &Settings, module: &Module) -> Result<Vec<Dir>, DirError> {
    open_dirs_over(settings, module, None)
}

/// As [`open_dirs`], over real directories already open (`roots`, one per
/// directory: handed over while mounted over, they cannot be opened by path).
pub(super) fn open_dirs_over(
    settings: &Settings,
    module: &Module,
    mut roots: Option<Vec<OwnedFd>>,
) -> Result<Vec<Dir>, DirError> {
    let io = |path: &std::path::Path| {
        let (module, path) = (module.name.clone(), path.to_path_buf());
        move |source| DirError::Io {
            module,
            path,
            source,
        }
    };
    let mut out = Vec::new();
    let at = settings
        .daemon
        .state_dir
        .join("modules")
        .join(&module.name)
        .join("snapshots");
    std::fs::create_dir_all(&at).map_err(io(&at))?;
    let snaps = Arc::new(
        Snapshots::open(&at, &module.name, module.dirs.clone()).map_err(|source| {
            DirError::Snapshots {
                module: module.name.clone(),
                path: at.clone(),
                source,
            }
        })?,
    );
    for (i, path) in module.dirs.iter().enumerate() {
        let given = roots
            .as_mut()
            .and_then(|r| (!r.is_empty()).then(|| r.remove(0)));
        let root: OwnedFd = match given {
            Some(fd) => fd,
            None => {
                let (path, report) =
                    crate::fs::prepare(path).map_err(|source| DirError::Prepare {
                        module: module.name.clone(),
                        source,
                    })?;
                if report.stale_removed > 0 {
                    tracing::warn!(module = %module.name, "removed a stale mount on {}", path.display());
                }
                std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
                    .open(&path)
                    .map_err(io(&path))?
                    .into()
            }
        };
        let at = state_dir(&settings.daemon.state_dir, &module.name, i);
        std::fs::create_dir_all(&at).map_err(io(&at))?;
        let log: Arc<dyn ChangeLog> = Arc::new(
            RocksChangeLog::open(&at, settings.replication.chunk_size as u64).map_err(
                |source| DirError::ChangeLog {
                    module: module.name.clone(),
                    path: at.clone(),
                    source,
                },
            )?,
        );
        let cache = crate::replication::manifest::Cache::in_dir(&at);
        out.push(Dir {
            root,
            log,
            cache: parking_lot::Mutex::new(cache),
            snaps: Some(snaps.clone()),
        });
    }
    Ok(out)
}

/// Why the replication of the modules cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Which node this is (found before starting, by [`identity`]).
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("TLS credentials in {dir}: {source} (create them with `tandem init`)")]
    Credentials {
        dir: PathBuf,
        #[source]
        source: TlsError,
    },
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error(transparent)]
    Dir(#[from] DirError),
    #[error(transparent)]
    Exclude(#[from] ExcludeError),
    /// The secondary side of a module cannot be made.
    #[error("module {module}: {source}")]
    Secondary {
        module: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen for the peer on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Sets up every module's replication in `role` and starts the network side
/// on `rt`. Nothing is mounted here.
pub fn start(
    settings: &Settings,
    role: Role,
    me: &Node,
    peer: &Node,
    rt: &tokio::runtime::Runtime,
    stop: &crate::stop::Stop,
) -> Result<HashMap<String, Replica>, StartError> {
    let creds = Arc::new(
        Credentials::load(&settings.daemon.tls_dir, &me.name, &peer.name).map_err(|source| {
            StartError::Credentials {
                dir: settings.daemon.tls_dir.clone(),
                source,
            }
        })?,
    );
    let port = settings.replication.port;
    let comp = compression(settings.replication.compression);
    let mut out = HashMap::new();
    match role {
        Role::Prim => {
            let peer_addr = rt.block_on(resolve(&peer.address, port))?;
            for m in &settings.modules {
                let (rep, link) = primary(
                    settings,
                    m,
                    Wiring {
                        dirs: open_dirs(settings, m)?,
                        creds: creds.clone(),
                        peer_addr,
                        stop: stop.child(),
                        alone_ok: None,
                        latency: None,
                        resumes: false,
                    },
                    rt.handle(),
                )?;
                out.insert(m.name.clone(), Replica::Primary(rep, link));
            }
        }
        Role::Local => {}
        Role::Second => {
            let mut modules = HashMap::new();
            for m in &settings.modules {
                let dirs = open_dirs(settings, m)?;
                let sm = SecondaryModule::new(&m.name, dirs).map_err(|source| {
                    StartError::Secondary {
                        module: m.name.clone(),
                        source,
                    }
                })?;
                modules.insert(m.name.clone(), sm.clone());
                out.insert(m.name.clone(), Replica::Secondary(sm));
            }
            let addr = rt.block_on(resolve(&me.address, port))?;
            let listener = rt
                .block_on(tokio::net::TcpListener::bind(addr))
                .map_err(|source| StartError::Listen { addr, source })?;
            tracing::info!("waiting for {} on {addr}", peer.name);
            let server = Arc::new(SecondaryServer {
                creds,
                cluster: settings.cluster.name.clone(),
                modules: parking_lot::Mutex::new(modules),
                compression: comp,
                control: Default::default(),
            });
            stop.task(
                rt.handle(),
                "replication-server",
                server.run(listener, stop.clone()),
            );
        }
    }
    Ok(out)
}

/// What a module's primary side is built from besides the configuration.
pub struct Wiring {
    pub dirs: Vec<Dir>,
    pub creds: Arc<Credentials>,
    pub peer_addr: std::net::SocketAddr,
    /// Ends the link and what runs for it.
    pub stop: crate::stop::Stop,
    /// With a quorum: whether this node may go on without its peer.
    pub alone_ok: Option<AloneCheck>,
    /// Where the waits for the peer's acknowledgement are counted.
    pub latency: Option<prometheus_client::metrics::histogram::Histogram>,
    /// The stream goes on from the previous daemon's (see `Replicator::resumes`).
    pub resumes: bool,
}

/// The one place a module's primary side is built, for both daemons: the
/// replicator and its link to the peer, started on `rt`. Nothing is mounted.
pub fn primary(
    settings: &Settings,
    m: &Module,
    w: Wiring,
    rt: &tokio::runtime::Handle,
) -> Result<(Arc<Replicator>, Arc<PrimarySession>), ExcludeError> {
    let rep = Replicator::new(crate::replication::primary::Settings {
        module: m.name.clone(),
        ack: m.ack,
        peer_timeout: settings.replication.peer_timeout,
        async_max_lag: settings.replication.async_max_lag,
        resync_max_rate: settings.replication.resync_max_rate,
        resync_min_rate: settings.replication.resync_min_rate,
        pause_file: Some(
            settings
                .daemon
                .state_dir
                .join("modules")
                .join(&m.name)
                .join("resync-paused"),
        ),
        dirs: w.dirs,
        exclude: exclude_of(m)?,
        alone_ok: w.alone_ok,
        latency: w.latency,
        blocking: crate::fs::blocking,
    });
    rep.resumes
        .store(w.resumes, std::sync::atomic::Ordering::SeqCst);
    if let Some(since) = rep.pace.paused_since() {
        tracing::warn!(
            module = %m.name,
            "the resync to the peer is PAUSED since {} by an operator: nothing is resynchronised \
             until `tandem resync {} --resume`",
            crate::clock::utc(since),
            m.name
        );
    }
    let link = Arc::new(PrimarySession {
        rep: rep.clone(),
        creds: w.creds,
        cluster: settings.cluster.name.clone(),
        peer_addr: w.peer_addr,
        compression: compression(settings.replication.compression),
        stop: w.stop,
    });
    link.start(rt);
    Ok((rep, link))
}

/// A module's `exclude` patterns do not compile (the configuration's check
/// refuses them first: this is for a configuration changed under the daemon).
#[derive(Debug, thiserror::Error)]
#[error("module {module}: exclude {why}")]
pub struct ExcludeError {
    module: String,
    why: crate::config::exclude::BadPatterns,
}

/// The module's compiled `exclude` patterns (validated with the config).
pub fn exclude_of(m: &crate::config::Module) -> Result<crate::config::Exclude, ExcludeError> {
    crate::config::Exclude::new(&m.exclude).map_err(|why| ExcludeError {
        module: m.name.clone(),
        why,
    })
}
