//! Starting the node: quorum, credentials, every module, the secondary
//! server, heartbeats, checkers, health endpoints, the guard, then the
//! manager's thread.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::control::{Relay, Shared};
use super::manager::manage;
use super::services::{
    start_api, start_checkers, start_fencer, start_health_endpoints, start_quorum,
    start_secondary_server,
};
use super::{Input, Managed, ThisNode};
use crate::cluster::LeaseQuorum;
use crate::cluster::heartbeat::{Heartbeats, Key, NetPath};
use crate::config::{Node, Settings};
use crate::control::Status;
use crate::daemon::replicas::{self};
use crate::replication::session::resolve;
use crate::replication::snapshot::CaptureSync;
use crate::replication::tls::{Credentials, heartbeat_key_path};
use crate::stop::Stop;

/// A node's heartbeat address is a host name: heartbeats go to addresses.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("node {node}: heartbeats need IP addresses (set node.heartbeat)")]
pub(super) struct NotAnIp {
    pub(super) node: String,
}

/// The heartbeat paths: the configured networks, or the node addresses.
pub(super) fn paths(s: &Settings, me: &Node, peer: &Node) -> Result<Vec<NetPath>, NotAnIp> {
    let port = s.heartbeat.port;
    let ip = |h: &crate::config::Host, who: &str| {
        h.ip().ok_or_else(|| NotAnIp {
            node: who.to_string(),
        })
    };
    let (mine, theirs) = if me.heartbeat.is_empty() {
        (vec![me.address.clone()], vec![peer.address.clone()])
    } else {
        (me.heartbeat.clone(), peer.heartbeat.clone())
    };
    mine.iter()
        .zip(&theirs)
        .map(|(a, b)| {
            Ok(NetPath {
                local: SocketAddr::new(ip(a, &me.name)?, port),
                remote: SocketAddr::new(ip(b, &peer.name)?, port),
            })
        })
        .collect()
}

/// Runs the node until a stop signal, then joins everything it started.
pub fn run(
    settings: Settings,
    opts: &crate::daemon::Options,
    rt: &tokio::runtime::Runtime,
    signals: crate::signals::StopSignals,
) -> Result<(), (u8, String)> {
    let stop = Stop::new();
    let within = join_within(&settings);
    let image = match opts.handover.map(crate::daemon::handover::read) {
        None => None,
        Some(Ok(i)) => Some(i),
        Some(Err(e)) => {
            return Err((
                crate::exit::EXIT_FAILURE,
                format!("going on from the previous daemon: {e}"),
            ));
        }
    };
    let mut taking = false;
    let served = start_and_serve(
        settings,
        opts,
        rt,
        signals,
        &stop,
        image.as_ref(),
        &mut taking,
    );
    if let (Err((_, why)), Some(image)) = (&served, &image)
        && !taking
    {
        // Nothing of the sessions was taken yet: the previous program goes on.
        let fd = opts.handover.expect("an image was read from it");
        let e = crate::daemon::handover::fall_back(image, fd, why);
        tracing::error!("{e}");
    }
    let t0 = Instant::now();
    let joined = stop.join(within);
    if joined.late.is_empty() {
        tracing::info!(
            "stopped: {} threads and tasks ended in {} ms",
            joined.ended,
            t0.elapsed().as_millis()
        );
    } else {
        tracing::error!(
            "still running {} s after the stop: {}",
            within.as_secs(),
            joined.late.join(", ")
        );
    }
    crate::replication::warm::end_all();
    crate::replication::steps::end_all();
    crate::replication::release::end();
    crate::fs::end_watcher();
    let others = crate::daemon::threads::others();
    if !others.is_empty() {
        tracing::error!("threads left running: {}", others.join(", "));
    }
    served
}

/// The longest a thread may need to see the stop: a checker's probe under
/// way ends first.
fn join_within(settings: &Settings) -> Duration {
    let probe = settings
        .modules
        .iter()
        .flat_map(|m| &m.checkers)
        .map(|c| c.timeout)
        .max()
        .unwrap_or_default();
    (probe + Duration::from_secs(1)).max(Duration::from_secs(5))
}

fn start_and_serve(
    settings: Settings,
    opts: &crate::daemon::Options,
    rt: &tokio::runtime::Runtime,
    signals: crate::signals::StopSignals,
    stop: &Stop,
    image: Option<&crate::daemon::handover::Image>,
    taking: &mut bool,
) -> Result<(), (u8, String)> {
    use crate::exit::{EXIT_FAILURE, EXIT_USAGE};
    // What the operator must fix: exit code 2 and the reason.
    fn usage(e: impl std::fmt::Display) -> (u8, String) {
        (EXIT_USAGE, e.to_string())
    }
    let (me, peer) = replicas::identity(&settings, opts.node.as_deref()).map_err(usage)?;
    let (me, peer) = (me.clone(), peer.clone());
    let (witness, ping, etcd) = start_quorum(&settings, &me, rt, stop)?;
    let creds = Arc::new(
        Credentials::load(&settings.daemon.tls_dir, &me.name, &peer.name).map_err(|e| {
            usage(format!(
                "TLS credentials in {}: {e} (create them with `tandem init`)",
                settings.daemon.tls_dir.display()
            ))
        })?,
    );
    let key = Key::load(&heartbeat_key_path(&settings.daemon.tls_dir)).map_err(usage)?;
    let quorum: Option<Arc<dyn LeaseQuorum>> = match (witness, etcd) {
        (Some(addr), _) => {
            // Relied on for two heartbeat intervals after each ask: renewed
            // every interval, so one lost answer does not drop it.
            let c = crate::cluster::witness::Client::new(
                key.clone(),
                &settings.cluster.name,
                &me.name,
                addr,
                2 * settings.heartbeat.interval,
                settings.heartbeat.interval,
            );
            let (c2, s) = (c.clone(), stop.clone());
            stop.task(rt.handle(), "witness", async move {
                if let Err(e) = c2.run(s).await {
                    tracing::error!("{e}");
                }
            });
            Some(c)
        }
        (None, Some(e)) => Some(e),
        (None, None) => None,
    };
    let port = settings.replication.port;
    let peer_addr = rt.block_on(resolve(&peer.address, port)).map_err(usage)?;
    let my_addr = rt.block_on(resolve(&me.address, port)).map_err(usage)?;
    let paths = paths(&settings, &me, &peer).map_err(usage)?;

    let no_quorum = quorum.is_none() && ping.is_none();
    let modules = settings
        .modules
        .iter()
        .map(|m| {
            let resumed = image.and_then(|i| i.modules.iter().find(|r| r.name == m.name));
            Managed::open(&settings, m, &me, no_quorum, resumed)
        })
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(i) = image
        && let Some(gone) = i
            .modules
            .iter()
            .find(|r| !settings.modules.iter().any(|m| m.name == r.name))
    {
        return Err((
            EXIT_USAGE,
            format!(
                "module {} is served here but no longer in the configuration: \
                 stop it before the upgrade",
                gone.name
            ),
        ));
    }

    let server = start_secondary_server(rt, &settings, &creds, my_addr, stop)?;

    let hb = Heartbeats::new(
        key,
        &settings.cluster.name,
        &me.name,
        &peer.name,
        paths,
        settings.heartbeat.interval,
    );
    let (input_tx, input_rx) = mpsc::channel::<Input>();
    let (heard_tx, mut heard_rx) = tokio::sync::mpsc::unbounded_channel();
    rt.block_on(hb.start(heard_tx, stop)).map_err(usage)?;
    start_checkers(&modules, &quorum, &me, &peer, &input_tx, stop)?;
    let fwd = input_tx.clone();
    stop.task(rt.handle(), "heard", async move {
        while let Some(h) = heard_rx.recv().await {
            if fwd.send(Input::Heard(h)).is_err() {
                return;
            }
        }
    });
    tracing::info!(
        "node {} in cluster {}, peer {} ({peer_addr})",
        me.name,
        settings.cluster.name,
        peer.name
    );
    let shared = Arc::new(Shared {
        status: Mutex::new(Status::default()),
        logs: Mutex::new(Vec::new()),
        history: Mutex::new(Vec::new()),
        replicas: Mutex::new(Vec::new()),
        input: Mutex::new(input_tx.clone()),
        relay: Relay {
            me: me.name.clone(),
            peer: peer.name.clone(),
            rt: rt.handle().clone(),
            creds: creds.clone(),
            peer_addr,
            compression: replicas::compression(settings.replication.compression),
            timeout: Duration::from_secs(30),
        },
        snapped: snapped(&modules, &me.name, &peer.name)?,
    });
    {
        let s = shared.clone();
        let _ = server.control.set(Arc::new(move |json| s.relayed(json)));
    }
    let health = start_health_endpoints(rt, &settings, &modules, &creds, &me, stop)?;
    let metrics = Arc::new(crate::metrics::Metrics::new());
    start_api(rt, &settings, &me, &peer, &creds, &shared, &metrics, stop)?;
    let guard = match image.and_then(|i| i.guard.as_ref()) {
        // A duplicate: the inherited number stays open until the take-over
        // is done, so that a start failing before it neither wakes the
        // guard nor keeps the previous program from taking it back.
        Some(g) => {
            use std::os::fd::IntoRawFd;
            let dup = crate::daemon::handover::duplicate(g.pipe)
                .map_err(|e| (EXIT_FAILURE, format!("the guard's pipe: {e}")))?;
            // SAFETY: the duplicate is ours and taken once.
            unsafe { crate::failover::guard::Guard::adopt(dup.into_raw_fd(), g.pid) }
        }
        None => crate::failover::guard::Guard::spawn().map_err(|e| {
            (
                EXIT_FAILURE,
                format!("cannot start the guard process (it cleans up if this daemon dies): {e}"),
            )
        })?,
    };
    // Fences a cut-off node even while the manager's thread is held up.
    let quorum_ok = start_fencer(&modules, &quorum, &ping, &hb, &health, &settings, stop)?;
    let node = ThisNode {
        quorum,
        quorum_ok,
        guard: Mutex::new(Some(guard)),
        ping,
        me,
        peer,
        creds,
        peer_addr,
        server,
        rt: rt.handle().clone(),
        // A daemon going on from an image continues its predecessor's clock.
        started: image
            .and_then(|i| Instant::now().checked_sub(Duration::from_millis(i.now_ms)))
            .unwrap_or_else(Instant::now),
        since_ms: crate::cluster::heartbeat::now_ms(),
        took_over_from: image.map(|i| i.software.clone()),
        taken_back: image.and_then(|_| std::env::var(crate::daemon::handover::BACK).ok()),
        health,
        settings,
        stop: stop.clone(),
        metrics,
        inputs: input_tx,
    };
    let mut modules = modules;
    if let Some(image) = image {
        *taking = true;
        take_over(&node, &hb, &mut modules, image, opts.handover)?;
    }
    let socket = node.settings.daemon.socket.clone();
    super::snapshots::start_scheduler(shared.clone(), stop).map_err(|e| {
        (
            EXIT_FAILURE,
            format!("cannot start the snapshot schedule: {e}"),
        )
    })?;
    let mgr_shared = shared.clone();
    let hb2 = hb.clone();
    let manager = std::thread::Builder::new()
        .name("cluster".into())
        .spawn(move || manage(node, modules, hb2, input_rx, &mgr_shared))
        .map_err(|e| {
            (
                EXIT_FAILURE,
                format!("cannot start the cluster manager: {e}"),
            )
        })?;

    let served = rt.block_on(crate::daemon::serve(&socket, signals, shared.clone(), stop));
    // The clean-stop sequence runs on the manager; everything else is
    // stopped after it (the quorum's client gives the leases back first).
    let (tx, rx) = mpsc::channel();
    if shared.input.lock().send(Input::Shutdown(tx)).is_ok() {
        let _ = rx.recv();
    }
    let _ = manager.join();
    let _ = std::fs::remove_file(&socket);
    served.map_err(|e| (EXIT_FAILURE, format!("{e:#}")))
}

/// Serves again every module the previous daemon handed over, then lets go
/// of the image's own descriptors.
fn take_over(
    node: &ThisNode,
    hb: &Heartbeats,
    modules: &mut [Managed],
    image: &crate::daemon::handover::Image,
    memfd: Option<std::os::fd::RawFd>,
) -> Result<(), (u8, String)> {
    // The peer was heard until a moment ago: counted as heard now, so that
    // neither the manager nor the fencer takes it for lost before its next
    // heartbeat.
    for h in hb.heard.lock().iter_mut() {
        *h = Some(Instant::now());
    }
    // What the previous daemon already waited for the peer counts.
    let waited = image.modules.iter().map(|m| m.waited_ms).max().unwrap_or(0);
    let until = Instant::now()
        + node
            .settings
            .replication
            .peer_timeout
            .saturating_sub(Duration::from_millis(waited));
    for mi in &image.modules {
        let Some(m) = modules.iter_mut().find(|m| m.cfg.name == mi.name) else {
            continue;
        };
        m.take_over(node, mi, until).map_err(|e| {
            (
                crate::exit::EXIT_FAILURE,
                format!("module {}: {e}", mi.name),
            )
        })?;
    }
    // Duplicated when the modules and the guard were opened: the image's
    // numbers close now.
    let mut done: Vec<std::os::fd::RawFd> =
        image.modules.iter().flat_map(|m| m.roots.clone()).collect();
    done.push(image.previous);
    done.extend(image.guard.as_ref().map(|g| g.pipe));
    done.extend(memfd);
    for fd in done {
        // SAFETY: inherited and not taken by anything (duplicated above).
        drop(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
    }
    tracing::info!(
        "took over from tandem {} in this process: {} modules serving",
        image.software,
        image.modules.len()
    );
    Ok(())
}

/// Each module's snapshots, with duplicates of its real directories.
fn snapped(
    modules: &[Managed],
    me: &str,
    peer: &str,
) -> Result<Vec<super::snapshots::Snapped>, (u8, String)> {
    let mut out = Vec::new();
    for m in modules {
        let Some(snaps) = m.base.first().and_then(|d| d.snaps.clone()) else {
            continue;
        };
        snaps.set_node(me);
        snaps.set_keep_before_resync(m.cfg.snapshots.keep_before_resync);
        snaps.set_capture_sync(if m.cfg.snapshots.sync_before_change {
            CaptureSync::BeforeChange
        } else {
            CaptureSync::Deferred
        });
        let roots = m
            .base
            .iter()
            .map(|d| d.root.try_clone())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                (
                    crate::exit::EXIT_FAILURE,
                    format!(
                        "module {}: cannot duplicate its directories: {e}",
                        m.cfg.name
                    ),
                )
            })?;
        out.push(super::snapshots::Snapped {
            name: m.cfg.name.clone(),
            snaps,
            roots,
            logs: m.base.iter().map(|d| d.log.clone()).collect(),
            policy: m.cfg.snapshots.clone(),
            script: (
                crate::failover::scripts::Context::new(&m.cfg.name, "prim", me, peer, &m.cfg.dirs),
                m.cfg.scripts.timeout,
            ),
            schedule: Mutex::new((None, 0)),
        });
    }
    Ok(out)
}
