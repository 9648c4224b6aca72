//! The node's services, started once: the quorum's client, the server its
//! peer replicates to, the application's checkers, the load balancers'
//! health endpoints and the fencer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Instant;

use parking_lot::Mutex;

use super::control::Shared;
use super::{Ask, Input, Managed};
use crate::cluster::LeaseQuorum;
use crate::cluster::heartbeat::Heartbeats;
use crate::config::{Node, Quorum, Settings};
use crate::daemon::replicas::{self};
use crate::failover::scripts;
use crate::replication::secondary::SecondaryServer;
use crate::replication::session::resolve;
use crate::replication::tls::Credentials;
use crate::stop::Stop;

use crate::exit::{EXIT_FAILURE, EXIT_USAGE};

fn usage(e: String) -> (u8, String) {
    (EXIT_USAGE, e)
}

type Started<T> = Result<T, (u8, String)>;

/// Resolves the witness, or starts pinging, or starts the etcd client.
#[allow(clippy::type_complexity)]
pub(super) fn start_quorum(
    settings: &Settings,
    me: &Node,
    rt: &tokio::runtime::Runtime,
    stop: &Stop,
) -> Started<(
    Option<SocketAddr>,
    Option<Arc<crate::cluster::ping::Pinger>>,
    Option<Arc<crate::cluster::etcd::Client>>,
)> {
    let mut witness = None;
    let mut ping = None;
    let mut etcd = None;
    match &settings.cluster.quorum {
        Quorum::None => {}
        Quorum::Witness(hp) => {
            witness = Some(
                rt.block_on(resolve(&hp.host, hp.port))
                    .map_err(|e| usage(format!("cluster.witness: {e}")))?,
            )
        }
        Quorum::Ping(addrs) => {
            ping = Some(
                // An answer counts for two intervals: one lost echo is not
                // a lost network, and a cut-off node notices within two.
                crate::cluster::ping::Pinger::spawn(
                    addrs.clone(),
                    settings.heartbeat.interval,
                    2 * settings.heartbeat.interval,
                    stop,
                )
                .map_err(|e| (EXIT_FAILURE, format!("cannot start pinging: {e}")))?,
            )
        }
        Quorum::Etcd(e) => {
            // Like the witness's: the lease outlives its last renewal by the
            // heartbeat timeout plus two intervals; relied on for two.
            let hb = &settings.heartbeat;
            let c = crate::cluster::etcd::Client::new(
                e,
                &settings.cluster.name,
                &me.name,
                hb.timeout + 2 * hb.interval,
                2 * hb.interval,
                hb.interval,
            )
            .map_err(|e| usage(e.to_string()))?;
            c.clone().spawn(stop, rt.handle());
            etcd = Some(c);
        }
    }
    Ok((witness, ping, etcd))
}

pub(super) fn start_secondary_server(
    rt: &tokio::runtime::Runtime,
    settings: &Settings,
    creds: &Arc<Credentials>,
    my_addr: SocketAddr,
    stop: &Stop,
) -> Started<Arc<SecondaryServer>> {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(my_addr))
        .map_err(|e| usage(format!("cannot listen for the peer on {my_addr}: {e}")))?;
    let server = Arc::new(SecondaryServer {
        creds: creds.clone(),
        cluster: settings.cluster.name.clone(),
        modules: Mutex::new(Default::default()),
        compression: replicas::compression(settings.replication.compression),
        control: Default::default(),
    });
    let run = server.clone().run(listener, stop.clone());
    stop.watched_task(rt.handle(), "replication-server", run);
    Ok(server)
}

pub(super) fn start_checkers(
    modules: &[Managed],
    quorum: &Option<Arc<dyn LeaseQuorum>>,
    me: &Node,
    peer: &Node,
    input_tx: &mpsc::Sender<Input>,
    stop: &Stop,
) -> Started<()> {
    for m in modules {
        for c in &m.cfg.checkers {
            let (tx, module) = (input_tx.clone(), m.cfg.name.clone());
            let (restarts, window) = (c.restarts, c.window);
            let witness_ok: Arc<dyn Fn() -> bool + Send + Sync> = match &quorum {
                Some(w) => {
                    let w = w.clone();
                    Arc::new(move || w.answering())
                }
                None => Arc::new(|| false),
            };
            crate::failover::checkers::spawn(
                module.clone(),
                c.clone(),
                scripts::Context::new(&module, "prim", &me.name, &peer.name, &m.cfg.dirs),
                m.checks.active.clone(),
                witness_ok,
                move |why| {
                    let _ = tx.send(Input::Ask(Ask::CheckFailed {
                        module: module.clone(),
                        why,
                        restarts,
                        window,
                        at: Instant::now(),
                    }));
                },
                stop,
            )
            .map_err(|e| (EXIT_FAILURE, format!("cannot start a checker: {e}")))?;
        }
    }
    Ok(())
}

pub(super) fn start_health_endpoints(
    rt: &tokio::runtime::Runtime,
    settings: &Settings,
    modules: &[Managed],
    creds: &Arc<Credentials>,
    me: &Node,
    stop: &Stop,
) -> Started<Arc<lb_health::Health>> {
    // The load balancers' probes, answered from the manager's last word; a
    // manager that stops beating for a heartbeat timeout is a hung daemon.
    let health = lb_health::Health::new(&me.name, settings.heartbeat.timeout);
    for m in modules {
        health.set(&m.cfg.name, m.health());
    }
    let mut lb_ports: Vec<(u16, bool)> = settings
        .modules
        .iter()
        .filter_map(|m| match m.failover {
            crate::config::Failover::Lb { port, tls } => Some((port, tls)),
            crate::config::Failover::Vip { .. } => None,
        })
        .collect();
    lb_ports.sort();
    lb_ports.dedup();
    for (port, tls) in lb_ports {
        let listener = rt
            .block_on(listen_any(port))
            .map_err(|e| usage(format!("lb_port {port}: cannot listen: {e}")))?;
        if tls {
            let config = creds
                .server_config_anonymous()
                .map_err(|e| usage(format!("lb_tls: {e}")))?;
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            let tls = move |tcp| {
                let a = acceptor.clone();
                async move { a.accept(tcp).await }
            };
            let s = stop.clone();
            let serve =
                lb_health::serve(
                    listener,
                    health.clone(),
                    tls,
                    async move { s.stopped().await },
                );
            stop.watched_task(rt.handle(), "health-endpoints", serve);
        } else {
            let s = stop.clone();
            let serve = lb_health::serve(listener, health.clone(), lb_health::plain, async move {
                s.stopped().await
            });
            stop.watched_task(rt.handle(), "health-endpoints", serve);
        }
        tracing::info!(
            "health endpoints on {}://*:{port}",
            if tls { "https" } else { "http" }
        );
    }
    Ok(health)
}

/// The operators' HTTPS interface (API, console, metrics), unless
/// `api.enabled = false`.
#[allow(clippy::too_many_arguments)]
pub(super) fn start_api(
    rt: &tokio::runtime::Runtime,
    settings: &Settings,
    me: &Node,
    peer: &Node,
    creds: &Arc<Credentials>,
    shared: &Arc<Shared>,
    metrics: &Arc<crate::metrics::Metrics>,
    stop: &Stop,
) -> Started<()> {
    let a = &settings.api;
    if !a.enabled {
        return Ok(());
    }
    let host = a.address.as_ref().unwrap_or(&me.address);
    let addr = rt
        .block_on(resolve(host, a.port))
        .map_err(|e| usage(format!("api.address: {e}")))?;
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(addr))
        .map_err(|e| usage(format!("api: cannot listen on {addr}: {e}")))?;
    let tls = crate::api::tls_config(a.cert.as_ref(), creds).map_err(|e| usage(e.to_string()))?;
    let audit = shared.clone();
    let api = Arc::new(crate::api::Api {
        node: me.name.clone(),
        peer_name: peer.name.clone(),
        tokens: crate::api::tokens::Tokens::new(crate::api::tokens::path(
            &settings.daemon.state_dir,
        )),
        commands: shared.clone(),
        audit: Arc::new(move |module: Option<&str>, line: String| {
            let _ = audit.input.lock().send(Input::Ask(Ask::Note {
                module: module.map(str::to_string),
                line,
            }));
        }),
        metrics: metrics.clone(),
        stop: stop.clone(),
        peer: Default::default(),
        wanted: Default::default(),
    });
    crate::api::start(api, listener, tls, rt.handle());
    tracing::info!("API and console on https://{addr}/");
    Ok(())
}

/// Whether this node may serve without its peer now, and the fencer that
/// acts on it while the manager is busy (with a quorum only).
#[allow(clippy::type_complexity)]
pub(super) fn start_fencer(
    modules: &[Managed],
    quorum: &Option<Arc<dyn LeaseQuorum>>,
    ping: &Option<Arc<crate::cluster::ping::Pinger>>,
    hb: &Arc<Heartbeats>,
    health: &Arc<lb_health::Health>,
    settings: &Settings,
    stop: &Stop,
) -> Started<Option<crate::daemon::fence::QuorumOk>> {
    let quorum_ok: Option<crate::daemon::fence::QuorumOk> = match (quorum, ping) {
        (Some(q), _) => {
            let q = q.clone();
            Some(Arc::new(move |m: &str| q.holds(m)))
        }
        (None, Some(p)) => {
            let p = p.clone();
            Some(Arc::new(move |_: &str| p.ok()))
        }
        (None, None) => None,
    };
    if let Some(ok) = quorum_ok.clone() {
        let (heard, two) = (hb.clone(), 2 * settings.heartbeat.interval);
        let quiet =
            Arc::new(move || super::liveness::silent(&heard.heard.lock(), two, Instant::now()));
        crate::daemon::fence::spawn(
            modules.iter().map(|m| m.fence.clone()).collect(),
            ok,
            quiet,
            health.clone(),
            settings.heartbeat.interval,
            stop,
        )
        .map_err(|e| (EXIT_FAILURE, format!("cannot start the fencer: {e}")))?;
    }
    Ok(quorum_ok)
}

/// A listener on every address, IPv6 and IPv4 whatever `bindv6only` says
/// (or IPv4 alone where IPv6 is off).
async fn listen_any(port: u16) -> std::io::Result<tokio::net::TcpListener> {
    let dual = || -> std::io::Result<std::net::TcpListener> {
        use crate::sock;
        use std::os::fd::AsRawFd;
        let sock = sock::socket(libc::AF_INET6, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0)?;
        let set = |level, opt, v: libc::c_int| sock::set(&sock, level, opt, &v);
        set(libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 0)?;
        set(libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
        // SAFETY: sockaddr_in6 is plain data (integers and byte arrays): all-zero bytes are a valid
        // value.
        let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
        sa.sin6_port = port.to_be();
        let len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        // SAFETY: `sa` is a sockaddr_in6 living across the call and `len` is its size; `sock` is an
        // open socket we own.
        if unsafe {
            libc::bind(
                sock.as_raw_fd(),
                (&sa as *const libc::sockaddr_in6).cast(),
                len,
            )
        } < 0
            // SAFETY: listen takes no pointer; `sock` is the open socket we own.
            || unsafe { libc::listen(sock.as_raw_fd(), lb_health::BACKLOG) } < 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(std::net::TcpListener::from(sock))
    };
    match dual() {
        Ok(l) => tokio::net::TcpListener::from_std(l),
        Err(_) => lb_health::listener(([0, 0, 0, 0], port).into()),
    }
}
