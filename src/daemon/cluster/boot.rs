//! Starting the node: quorum, credentials, every module, the secondary
//! server, heartbeats, checkers, health endpoints, the guard, then the
//! manager's thread.

#[allow(unused_imports)]
use super::*;

/// A listener on every address, IPv6 and IPv4 whatever `bindv6only` says
/// (or IPv4 alone where IPv6 is off).
pub(super) async fn listen_any(port: u16) -> std::io::Result<tokio::net::TcpListener> {
    let dual = || -> std::io::Result<std::net::TcpListener> {
        use crate::sock;
        use std::os::fd::AsRawFd;
        let sock = sock::socket(libc::AF_INET6, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0)?;
        let set = |level, opt, v: libc::c_int| sock::set(&sock, level, opt, &v);
        set(libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 0)?;
        set(libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
        let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
        sa.sin6_port = port.to_be();
        let len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        if unsafe {
            libc::bind(
                sock.as_raw_fd(),
                (&sa as *const libc::sockaddr_in6).cast(),
                len,
            )
        } < 0
            || unsafe { libc::listen(sock.as_raw_fd(), 128) } < 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(std::net::TcpListener::from(sock))
    };
    match dual() {
        Ok(l) => tokio::net::TcpListener::from_std(l),
        Err(_) => tokio::net::TcpListener::bind(("0.0.0.0", port)).await,
    }
}

/// The heartbeat paths: the configured networks, or the node addresses.
pub(super) fn paths(s: &Settings, me: &Node, peer: &Node) -> Result<Vec<NetPath>, String> {
    let port = s.heartbeat.port;
    let ip = |h: &crate::config::Host, who: &str| {
        h.ip()
            .ok_or_else(|| format!("node {who}: heartbeats need IP addresses (set node.heartbeat)"))
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

pub fn run(
    settings: Settings,
    opts: &crate::daemon::Options,
    rt: &tokio::runtime::Runtime,
    signals: crate::signals::StopSignals,
) -> Result<(), (u8, String)> {
    use crate::exit::{EXIT_FAILURE, EXIT_USAGE};
    let usage = |e: String| (EXIT_USAGE, e);
    let (me, peer) = replicas::identity(&settings, opts.node.as_deref()).map_err(usage)?;
    let (me, peer) = (me.clone(), peer.clone());
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
                )
                .map_err(|e| (EXIT_FAILURE, format!("cannot start pinging: {e}")))?,
            )
        }
        Quorum::Etcd(urls) => {
            // Like the witness's: the lease outlives its last renewal by the
            // heartbeat timeout plus two intervals; relied on for two.
            let hb = &settings.heartbeat;
            let c = crate::cluster::etcd::Client::new(
                urls.clone(),
                &settings.cluster.name,
                &me.name,
                hb.timeout + 2 * hb.interval,
                2 * hb.interval,
                hb.interval,
            )
            .map_err(usage)?;
            c.clone()
                .spawn()
                .map_err(|e| (EXIT_FAILURE, format!("cannot start the etcd client: {e}")))?;
            etcd = Some(c);
        }
    }
    for m in &settings.modules {
        for c in &m.checkers {
            if let crate::config::Check::Http { url, .. } = &c.check
                && url.https
            {
                return Err(usage(format!(
                    "module {}: http checker of an https:// URL: not available in this \
                     version (check the plain http port, or use a script checker)",
                    m.name
                )));
            }
        }
    }
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
            rt.spawn(c.clone().run());
            Some(c)
        }
        (None, Some(e)) => Some(e),
        (None, None) => None,
    };
    let port = settings.replication.port;
    let peer_addr = rt.block_on(resolve(&peer.address, port)).map_err(usage)?;
    let my_addr = rt.block_on(resolve(&me.address, port)).map_err(usage)?;
    let paths = paths(&settings, &me, &peer).map_err(usage)?;

    let mut modules = Vec::new();
    for m in &settings.modules {
        let base = replicas::open_dirs(&settings, m).map_err(usage)?;
        let at = settings.daemon.state_dir.join("modules").join(&m.name);
        let role_file = at.join("role.json");
        let saved: Option<RoleFile> = std::fs::read(&role_file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let fresh = saved.as_ref().is_none_or(|r| r.fresh);
        let last = saved.as_ref().map(|r| r.state);
        let caches = (0..m.dirs.len())
            .map(|i| state_dir(&settings.daemon.state_dir, &m.name, i).join("manifest.cache"))
            .collect();
        let g = base[0]
            .log
            .generation()
            .map_err(|e| usage(format!("module {}: change log: {e}", m.name)))?;
        let g = Gen {
            current: g.current,
            history: g.history,
            fresh,
        };
        let mut managed = Managed {
            cfg: m.clone(),
            base,
            caches,
            machine: Machine::new(
                machine_cfg(&settings, m, &me),
                0,
                last,
                g,
                quorum.is_none() && ping.is_none(),
            ),
            replica: None,
            link_task: None,
            mounts: Vec::new(),
            sinks: Vec::new(),
            role_file,
            fresh,
            app_running: false,
            synced: None,
            generation: None,
            log: VecDeque::new(),
            checks_on: true,
            checks_active: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            check_failures: VecDeque::new(),
            checks_from: Instant::now(),
            witness_newest: 0,
            vips: match &m.failover {
                crate::config::Failover::Vip {
                    addresses,
                    interface,
                    announce,
                } => Some(crate::failover::vip::Vips::new(
                    &m.name,
                    addresses.clone(),
                    interface.clone(),
                    *announce,
                )),
                crate::config::Failover::Lb { .. } => None,
            },
            failing: 0,
            fence: crate::daemon::fence::Fence::new(&m.name),
        };
        *managed.fence.vips.lock() = managed.vips.as_ref().map(|v| v.fence());
        managed.note(format!(
            "starting as {:?} (last run: {})",
            managed.machine.state,
            last.map_or("none".into(), |s| format!("{s:?}"))
        ));
        // Reported now; a node that serves later manages (and removes) it.
        for p in managed
            .vips
            .as_ref()
            .map(|v| v.present())
            .unwrap_or_default()
        {
            tracing::error!(module = %m.name, "{p} before this daemon took it");
            managed.note(format!(
                "{p} before this daemon took it: check who else holds it"
            ));
        }
        // An address with no interface to go to is said now, not at failover.
        if let Some(Err(e)) = managed.vips.as_ref().map(|v| v.plan()) {
            tracing::error!(module = %m.name, "{e}");
            managed.note(format!("{e}: this node cannot serve the module"));
        }
        modules.push(managed);
    }

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
    rt.spawn(server.clone().run(listener));

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
    rt.block_on(hb.start(heard_tx)).map_err(usage)?;
    for m in &modules {
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
                m.checks_active.clone(),
                witness_ok,
                move |why| {
                    let _ = tx.send(Input::CheckFailed {
                        module: module.clone(),
                        why,
                        restarts,
                        window,
                        at: Instant::now(),
                    });
                },
            )
            .map_err(|e| (EXIT_FAILURE, format!("cannot start a checker: {e}")))?;
        }
    }
    let fwd = input_tx.clone();
    rt.spawn(async move {
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
        replicas: Mutex::new(Vec::new()),
        input: Mutex::new(input_tx),
        relay: Relay {
            me: me.name.clone(),
            peer: peer.name.clone(),
            rt: rt.handle().clone(),
            creds: creds.clone(),
            peer_addr,
            compression: replicas::compression(settings.replication.compression),
            timeout: Duration::from_secs(30),
        },
    });
    {
        let s = shared.clone();
        let _ = server.control.set(Arc::new(move |json| s.relayed(json)));
    }
    // The load balancers' probes, answered from the manager's last word; a
    // manager that stops beating for a heartbeat timeout is a hung daemon.
    let health = lb_health::Health::new(&me.name, settings.heartbeat.timeout);
    for m in &modules {
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
            rt.spawn(lb_health::serve(listener, health.clone(), move |tcp| {
                let a = acceptor.clone();
                async move { a.accept(tcp).await }
            }));
        } else {
            rt.spawn(lb_health::serve(listener, health.clone(), lb_health::plain));
        }
        tracing::info!(
            "health endpoints on {}://*:{port}",
            if tls { "https" } else { "http" }
        );
    }
    let guard = crate::failover::guard::Guard::spawn().map_err(|e| {
        (
            EXIT_FAILURE,
            format!("cannot start the guard process (it cleans up if this daemon dies): {e}"),
        )
    })?;
    // Fences a cut-off node even while the manager waits for a script.
    let fencer_stop = Arc::new(AtomicBool::new(false));
    let quorum_ok: Option<crate::daemon::fence::QuorumOk> = match (&quorum, &ping) {
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
    let fencer = match quorum_ok.clone() {
        None => None,
        Some(ok) => {
            let (heard, two) = (hb.clone(), 2 * settings.heartbeat.interval);
            let quiet = Arc::new(move || {
                heard
                    .heard
                    .lock()
                    .iter()
                    .all(|h| h.is_none_or(|t| t.elapsed() >= two))
            });
            Some(
                crate::daemon::fence::spawn(
                    modules.iter().map(|m| m.fence.clone()).collect(),
                    ok,
                    quiet,
                    health.clone(),
                    settings.heartbeat.interval,
                    fencer_stop.clone(),
                )
                .map_err(|e| (EXIT_FAILURE, format!("cannot start the fencer: {e}")))?,
            )
        }
    };
    let node = Node2 {
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
        started: Instant::now(),
        health,
        settings,
    };
    let socket = node.settings.daemon.socket.clone();
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

    let served = rt.block_on(crate::daemon::serve(&socket, signals, shared.clone()));
    let (tx, rx) = mpsc::channel();
    if shared.input.lock().send(Input::Shutdown(tx)).is_ok() {
        let _ = rx.recv();
    }
    let _ = manager.join();
    fencer_stop.store(true, Ordering::SeqCst);
    if let Some(f) = fencer {
        let _ = f.join();
    }
    let _ = std::fs::remove_file(&socket);
    served.map_err(|e| (EXIT_FAILURE, format!("{e:#}")))
}

pub(super) fn machine_cfg(s: &Settings, module: &ModuleConfig, me: &Node) -> machine::Config {
    let preferred = module
        .preferred_primary
        .as_ref()
        .or(s.cluster.preferred_primary.as_ref());
    machine::Config {
        preferred: preferred.map(|p| *p == me.name),
        listed_first: s.nodes[0].name == me.name,
        // Long enough to hear a peer that is up; a peer that is down is not
        // waited for longer than its failure would be.
        boot_wait_ms: s.heartbeat.timeout.as_millis() as u64,
        settle_ms: 2 * s.heartbeat.interval.as_millis() as u64,
        start_retries: 1,
        request_ms: 10_000,
        lease: matches!(s.cluster.quorum, Quorum::Witness(_) | Quorum::Etcd(_)),
    }
}
