//! Starting the node: quorum, credentials, every module, the secondary
//! server, heartbeats, checkers, health endpoints, the guard, then the
//! manager's thread.

#[allow(unused_imports)]
use super::*;

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
    let (witness, ping, etcd) = start_quorum(&settings, &me, rt)?;
    refuse_https_checkers(&settings)?;
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

    let no_quorum = quorum.is_none() && ping.is_none();
    let modules = settings
        .modules
        .iter()
        .map(|m| Managed::open(&settings, m, &me, no_quorum))
        .collect::<Result<Vec<_>, _>>()?;

    let server = start_secondary_server(rt, &settings, &creds, my_addr)?;

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
    start_checkers(&modules, &quorum, &me, &peer, &input_tx)?;
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
    let health = start_health_endpoints(rt, &settings, &modules, &creds, &me)?;
    let guard = crate::failover::guard::Guard::spawn().map_err(|e| {
        (
            EXIT_FAILURE,
            format!("cannot start the guard process (it cleans up if this daemon dies): {e}"),
        )
    })?;
    // Fences a cut-off node even while the manager waits for a script.
    let fencer_stop = Arc::new(AtomicBool::new(false));
    let (quorum_ok, fencer) = start_fencer(
        &modules,
        &quorum,
        &ping,
        &hb,
        &health,
        &settings,
        &fencer_stop,
    )?;
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
