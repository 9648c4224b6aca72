//! `tandem daemon`: without a role, a cluster member whose cluster manager
//! decides which node serves each module ([`cluster`]). With `--role
//! prim|second` every module has that fixed role; with `--role local` the
//! directories are mounted and their mutations only counted.

mod fence;
pub mod handover;
mod member;
mod notify;
mod replicas;
pub(crate) mod threads;

pub use replicas::Role;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::config::Settings;
use crate::control::{DirStatus, Dispatch, ModuleStatus, Request, Response, Status};
use crate::exit::{EXIT_FAILURE, EXIT_USAGE};
use crate::fs::{self, CountingSink, MountConfig, Mounted};
use crate::signals::StopSignals;
use crate::stop::Stop;
use std::time::Duration;

struct Dir {
    path: PathBuf,
    sink: Arc<CountingSink>,
    mount: Option<Mounted>,
}

struct Module {
    name: String,
    dirs: Vec<Dir>,
    replica: Option<replicas::Replica>,
}

/// What the command line fixes for this run of the daemon.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub node: Option<String>,
    pub role: Option<Role>,
    /// Go on from the image the previous daemon of this process left in
    /// this descriptor (`tandem upgrade`).
    pub handover: Option<std::os::fd::RawFd>,
}

impl Module {
    fn started(&self) -> bool {
        self.dirs.iter().any(|d| d.mount.is_some())
    }

    /// The secondary's directories belong to the applier: never mounted.
    fn mountable(&self) -> bool {
        !matches!(self.replica, Some(replicas::Replica::Secondary(_)))
    }

    /// Mounts every directory, or none: a failure unmounts what this call mounted.
    fn start(&mut self) -> Result<(), NotMounted> {
        if !self.mountable() {
            return Ok(());
        }
        for i in 0..self.dirs.len() {
            if self.dirs[i].mount.is_some() {
                continue;
            }
            let sink = match self.replica.as_ref().and_then(|r| r.primary()) {
                Some(rep) => CountingSink::wrapping(rep.sink(i as u32)),
                None => CountingSink::new(false),
            };
            let d = &mut self.dirs[i];
            d.sink = Arc::new(sink);
            match fs::mount(&d.path, d.sink.clone(), &MountConfig::default()) {
                Ok((m, report)) => {
                    if report.stale_removed > 0 {
                        tracing::warn!(module = %self.name, "removed a stale mount on {}", d.path.display());
                    }
                    tracing::info!(module = %self.name, "mounted {}", d.path.display());
                    d.mount = Some(m);
                }
                Err(source) => {
                    self.stop();
                    return Err(NotMounted {
                        module: self.name.clone(),
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    fn stop(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for d in &mut self.dirs {
            if let Some(m) = d.mount.take() {
                match m.unmount() {
                    Ok(_) => out.push(format!(
                        "module {}: unmounted {}",
                        self.name,
                        d.path.display()
                    )),
                    Err(e) => out.push(format!(
                        "module {}: unmounting {}: {e}",
                        self.name,
                        d.path.display()
                    )),
                }
                tracing::info!(module = %self.name, "{}; {}", out.last().expect("just pushed"), d.sink.summary());
            }
        }
        out
    }

    fn status(&self) -> ModuleStatus {
        ModuleStatus {
            snapshots: None,
            name: self.name.clone(),
            state: if !self.mountable() {
                "secondary"
            } else if self.started() {
                "started"
            } else {
                "stopped"
            }
            .into(),
            replication: self.replica.as_ref().map(|r| r.status()),
            cluster: None,
            dirs: self
                .dirs
                .iter()
                .map(|d| DirStatus {
                    path: d.path.display().to_string(),
                    mounted: d.mount.is_some(),
                    mutations: d.sink.total(),
                    bytes_written: d.sink.bytes_written(),
                    by_kind: d
                        .sink
                        .counts()
                        .into_iter()
                        .map(|(k, c)| (k.to_string(), c))
                        .collect(),
                })
                .collect(),
        }
    }
}

/// A module's directories could not all be mounted (none stays mounted).
#[derive(Debug, thiserror::Error)]
#[error("module {module}: {source}")]
struct NotMounted {
    module: String,
    source: fs::MountError,
}

#[derive(Debug, thiserror::Error)]
#[error("no module named {name:?} (modules: {})", known.join(", "))]
struct NoSuchModule {
    name: String,
    known: Vec<String>,
}

struct State {
    cluster: String,
    modules: Vec<Module>,
}

impl State {
    fn select(&mut self, name: Option<&str>) -> Result<Vec<&mut Module>, NoSuchModule> {
        match name {
            None => Ok(self.modules.iter_mut().collect()),
            Some(n) => {
                let known: Vec<String> = self.modules.iter().map(|m| m.name.clone()).collect();
                match self.modules.iter_mut().find(|m| m.name == n) {
                    Some(m) => Ok(vec![m]),
                    None => Err(NoSuchModule {
                        name: n.to_string(),
                        known,
                    }),
                }
            }
        }
    }

    fn with_replica(
        &mut self,
        module: &str,
        f: impl FnOnce(&replicas::Replica) -> Result<String, replicas::ReplicaRefused>,
    ) -> Response {
        let m = match self.select(Some(module)) {
            Ok(mut m) => m.remove(0),
            Err(e) => return Response::error(e.to_string()),
        };
        let Some(r) = &m.replica else {
            return Response::error(format!(
                "module {module} is not replicated by this daemon (started without --role)"
            ));
        };
        match f(r) {
            Ok(msg) => Response {
                ok: true,
                messages: vec![msg],
                ..Response::default()
            },
            Err(e) => Response::error(e.to_string()),
        }
    }

    fn handle(&mut self, req: Request) -> Response {
        match req {
            Request::Status {} => Response {
                ok: true,
                status: Some(Status {
                    cluster: self.cluster.clone(),
                    pid: std::process::id(),
                    modules: self.modules.iter().map(Module::status).collect(),
                    nodes: None,
                }),
                ..Response::default()
            },
            Request::Stop { module } => match self.select(module.as_deref()) {
                Err(e) => Response::error(e.to_string()),
                Ok(mods) => {
                    let mut messages = Vec::new();
                    for m in mods {
                        if !m.mountable() {
                            messages.push(format!(
                                "module {}: secondary here, nothing mounted",
                                m.name
                            ));
                        } else if m.started() {
                            messages.extend(m.stop());
                        } else {
                            messages.push(format!("module {}: already stopped", m.name));
                        }
                    }
                    Response {
                        ok: true,
                        messages,
                        ..Response::default()
                    }
                }
            },
            Request::Verify { module, repair } => {
                self.with_replica(&module, |r| r.start_verify(repair))
            }
            Request::FullSync { module } => self.with_replica(&module, |r| r.request_full_sync()),
            Request::ResyncPace {
                module,
                rate,
                paused,
            } => self.with_replica(&module, |r| r.pace_resync(rate, paused)),
            Request::Swap { .. }
            | Request::Prim { .. }
            | Request::Resolve { .. }
            | Request::Second { .. }
            | Request::Restart { .. }
            | Request::Log { .. }
            | Request::History { .. }
            | Request::Checker { .. }
            | Request::Maintenance { .. }
            | Request::Upgrade { .. }
            | Request::Snapshot { .. }
            | Request::On { .. } => Response::error(
                "this daemon runs with a fixed --role: roles are changed by the cluster \
                     manager (run `tandem daemon` without --role)",
            ),
            Request::Start { module } => match self.select(module.as_deref()) {
                Err(e) => Response::error(e.to_string()),
                Ok(mods) => {
                    let mut messages = Vec::new();
                    for m in mods {
                        if !m.mountable() {
                            messages.push(format!(
                                "module {}: secondary here, nothing to mount",
                                m.name
                            ));
                            continue;
                        }
                        if m.started() {
                            messages.push(format!("module {}: already started", m.name));
                            continue;
                        }
                        if let Err(e) = m.start() {
                            return Response {
                                ok: false,
                                error: Some(e.to_string()),
                                messages,
                                ..Response::default()
                            };
                        }
                        messages.push(format!("module {}: started", m.name));
                    }
                    Response {
                        ok: true,
                        messages,
                        ..Response::default()
                    }
                }
            },
        }
    }
}

pub fn run(settings: Settings, opts: Options) -> ExitCode {
    let socket = settings.daemon.socket.clone();
    if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        eprintln!("tandem: a daemon is already serving {}", socket.display());
        return ExitCode::from(EXIT_USAGE);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(threads::RUNTIME)
        .enable_all()
        .build();
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tandem: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    // Handlers before any mount: a SIGTERM during start-up must unmount.
    let signals = match rt.block_on(async { StopSignals::install() }) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tandem: cannot handle signals: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let Some(role) = opts.role else {
        return match member::run(settings, &opts, &rt, signals) {
            Ok(()) => ExitCode::SUCCESS,
            Err((code, e)) => {
                eprintln!("tandem: {e}");
                ExitCode::from(code)
            }
        };
    };
    let stop = Stop::new();
    let mut state = State {
        cluster: settings.cluster.name.clone(),
        modules: settings
            .modules
            .iter()
            .map(|m| Module {
                name: m.name.clone(),
                dirs: m
                    .dirs
                    .iter()
                    .map(|p| Dir {
                        path: p.clone(),
                        sink: Arc::new(CountingSink::new(false)),
                        mount: None,
                    })
                    .collect(),
                replica: None,
            })
            .collect(),
    };
    if role != Role::Local {
        let setup = replicas::identity(&settings, opts.node.as_deref())
            .map_err(replicas::StartError::from)
            .and_then(|(me, peer)| {
                tracing::info!("node {} ({role:?}), peer {}", me.name, peer.name);
                replicas::start(&settings, role, me, peer, &rt, &stop)
            });
        match setup {
            Ok(mut reps) => {
                for m in &mut state.modules {
                    m.replica = reps.remove(&m.name);
                }
            }
            Err(e) => {
                eprintln!("tandem: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        }
    }
    for i in 0..state.modules.len() {
        if let Err(e) = state.modules[i].start() {
            eprintln!("tandem: {e}");
            for m in &mut state.modules {
                m.stop();
            }
            return ExitCode::from(EXIT_USAGE);
        }
    }
    let state = Arc::new(Mutex::new(state));
    let served = rt.block_on(serve(&socket, signals, state.clone(), &stop));
    // Whatever ended the loop, leave no directory mounted behind.
    for line in state.lock().handle(Request::Stop { module: None }).messages {
        tracing::info!("{line}");
    }
    let late = stop.join(Duration::from_secs(5)).late;
    if !late.is_empty() {
        tracing::error!("still running 5 s after the stop: {}", late.join(", "));
    }
    let _ = std::fs::remove_file(&socket);
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tandem: {e:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn bind(socket: &Path) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if let Some(dir) = socket.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    // Only a socket nobody answers on is removed: a live daemon was refused above.
    if socket.exists() {
        std::fs::remove_file(socket)?;
    }
    let listener = UnixListener::bind(socket)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

impl Dispatch for Mutex<State> {
    fn handle(&self, req: Request) -> Response {
        self.lock().handle(req)
    }
}

async fn serve<H: Dispatch>(
    socket: &Path,
    mut signals: StopSignals,
    state: Arc<H>,
    stop: &Stop,
) -> anyhow::Result<()> {
    let listener = bind(socket)?;
    tracing::info!("control socket {}", socket.display());
    loop {
        tokio::select! {
            why = signals.recv() => { tracing::info!("{why}: stopping every module"); return Ok(()) }
            conn = listener.accept() => {
                let (stream, _) = conn?;
                stop.spawn("control-client", client(stream, state.clone()));
            }
        }
    }
}

/// Longest request line accepted; anything longer is refused unread.
const MAX_REQUEST: u64 = 64 * 1024;

async fn client<H: Dispatch>(stream: UnixStream, state: Arc<H>) {
    let (rd, mut wr) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(tokio::io::AsyncReadExt::take(rd, MAX_REQUEST));
    let resp = match reader.read_line(&mut line).await {
        Ok(_) if !line.ends_with('\n') => Response::error("bad request: not one line under 64 KiB"),
        Ok(_) => match serde_json::from_str::<Request>(&line) {
            Err(e) => Response::error(format!("bad request: {e}")),
            Ok(req) => {
                if req == (Request::Status {}) {
                    tracing::debug!("control request: {req:?}");
                } else {
                    tracing::info!("control request: {req:?}");
                }
                let st = state.clone();
                tokio::task::spawn_blocking(move || st.handle(req))
                    .await
                    .unwrap_or_else(|e| Response::error(format!("internal error: {e}")))
            }
        },
        Err(e) => Response::error(format!("bad request: {e}")),
    };
    let mut out = serde_json::to_string(&resp).expect("responses serialise");
    out.push('\n');
    let _ = wr.write_all(out.as_bytes()).await;
}
