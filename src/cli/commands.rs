//! Dispatch of the parsed command line.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::DirChecks;
use crate::control::{self, Request, Response};

use super::{Cli, Command, ConfigAction, EXIT_FAILURE, EXIT_USAGE};

pub fn run(cli: Cli) -> ExitCode {
    let on = cli.on.clone();
    if on.is_some()
        && !matches!(
            cli.command,
            Command::Status { .. }
                | Command::Start { .. }
                | Command::Stop { .. }
                | Command::Restart { .. }
                | Command::Swap { .. }
                | Command::Prim { .. }
                | Command::Second { .. }
                | Command::Resolve { .. }
                | Command::Checker { .. }
                | Command::Maintenance { .. }
                | Command::Snapshot { .. }
                | Command::Log { .. }
        )
    {
        eprintln!(
            "tandem: --on is for commands to a daemon (status, start, stop, restart, swap, \
             prim, second, resolve, checker, maintenance, snapshot, log); run this one on the node \
             itself"
        );
        return ExitCode::from(EXIT_USAGE);
    }
    match cli.command {
        Command::Mount(args) => super::mount::run(args),
        Command::Guard => crate::failover::guard::run(),
        Command::HandoverCheck => {
            println!("{}", crate::daemon::handover::check_json());
            ExitCode::SUCCESS
        }
        Command::Upgrade { program, timeout } => super::upgrade::run(
            &cli.config,
            cli.socket,
            program,
            std::time::Duration::from_secs(timeout),
        ),
        Command::Generate { action } => super::generate::run(action),
        Command::Token { action } => super::token::run(&cli.config, action),
        Command::Witness { listen, state } => witness(&cli.config, listen, state),
        Command::Config {
            action:
                ConfigAction::Check {
                    file,
                    skip_dir_checks,
                },
        } => config_check(&file, skip_dir_checks),
        Command::Daemon {
            node,
            role,
            handover_fd,
        } => match crate::config::load(
            &cli.config,
            // Going on from a hand-over, the directories are mounted and
            // nobody reads the mounts yet: a look at them would wait forever.
            if handover_fd.is_some() {
                crate::config::DirChecks::Off
            } else {
                super::on_disk()
            },
        ) {
            Ok(settings) => crate::daemon::run(
                settings,
                crate::daemon::Options {
                    node,
                    role: role.map(Into::into),
                    handover: handover_fd,
                },
            ),
            Err(e) => {
                eprintln!("{e}");
                // A new program that cannot read the configuration gives the
                // previous one its sessions back.
                if let Some(fd) = handover_fd
                    && let Ok(image) = crate::daemon::handover::read(fd)
                {
                    let e = crate::daemon::handover::fall_back(&image, fd, &e.to_string());
                    eprintln!("tandem: {e}");
                }
                ExitCode::from(EXIT_USAGE)
            }
        },
        Command::Status { json } => with_daemon(
            &cli.config,
            cli.socket,
            &relayed(&on, Request::Status {}),
            |r| super::status::print_status(r, json),
        ),
        Command::Start { module } => with_daemon(
            &cli.config,
            cli.socket,
            &relayed(&on, Request::Start { module }),
            print_messages,
        ),
        Command::Stop { module } => with_daemon(
            &cli.config,
            cli.socket,
            &relayed(&on, Request::Stop { module }),
            print_messages,
        ),
        Command::Restart { module } => with_daemon(
            &cli.config,
            cli.socket,
            &relayed(&on, Request::Restart { module }),
            print_messages,
        ),
        Command::Swap { module } => with_daemon(
            &cli.config,
            cli.socket,
            &relayed(&on, Request::Swap { module }),
            print_messages,
        ),
        Command::Prim { module, force } => with_daemon(
            &cli.config,
            cli.socket,
            &relayed(&on, Request::Prim { module, force }),
            print_messages,
        ),
        Command::Second {
            module,
            fullsync: true,
        } => with_daemon(
            &cli.config,
            cli.socket,
            &relayed(&on, Request::FullSync { module }),
            print_messages,
        ),
        Command::Second { module, .. } => with_daemon(
            &cli.config,
            cli.socket,
            &relayed(&on, Request::Second { module }),
            print_messages,
        ),
        Command::Resync {
            module,
            rate,
            pause,
            resume,
            ..
        } if rate.is_some() || pause || resume => with_daemon(
            &cli.config,
            cli.socket,
            &relayed(
                &on,
                Request::ResyncPace {
                    module,
                    rate,
                    paused: (pause || resume).then_some(pause),
                },
            ),
            print_messages,
        ),
        Command::Resync {
            module, wait, json, ..
        } => super::resync::run(
            &cli.config,
            cli.socket,
            &module,
            std::time::Duration::from_secs(wait),
            json,
        ),
        Command::Verify {
            module,
            json,
            repair,
        } => super::verify::run(&cli.config, cli.socket, &module, json, repair),
        Command::Snapshot { action } => super::snapshot::run(&cli.config, cli.socket, &on, action),
        Command::Resolve { module, keep } => with_daemon(
            &cli.config,
            cli.socket,
            &relayed(&on, Request::Resolve { module, keep }),
            print_messages,
        ),
        Command::Checker { module, state } => with_daemon(
            &cli.config,
            cli.socket,
            &relayed(
                &on,
                Request::Checker {
                    module,
                    on: state == "on",
                },
            ),
            print_messages,
        ),
        Command::Maintenance { state, module } => with_daemon(
            &cli.config,
            cli.socket,
            &relayed(
                &on,
                Request::Maintenance {
                    module,
                    on: state == "on",
                    asked: None,
                },
            ),
            print_messages,
        ),
        Command::Log {
            module,
            follow,
            json,
        } => log(&cli.config, cli.socket, &on, &module, follow, json),
        Command::Init {
            out,
            cluster,
            nodes,
            force,
        } => init(&cli.config, out, cluster, nodes, force),
    }
}

fn init(
    config: &std::path::Path,
    out: Option<PathBuf>,
    cluster: Option<String>,
    nodes: Vec<String>,
    force: bool,
) -> ExitCode {
    // Names not given come from the configuration; directories need not exist yet.
    let settings = if out.is_none() || cluster.is_none() || nodes.is_empty() {
        let text = match std::fs::read_to_string(config) {
            Ok(t) => t,
            Err(e) => {
                eprintln!(
                    "{}: cannot read: {e} (or give --out, --cluster and --node twice)",
                    config.display()
                );
                return ExitCode::from(EXIT_USAGE);
            }
        };
        match crate::config::parse(&text, config, DirChecks::Off) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(EXIT_USAGE);
            }
        }
    } else {
        None
    };
    let out = out
        .or_else(|| settings.as_ref().map(|s| s.daemon.tls_dir.clone()))
        .expect("one of the two");
    let cluster = cluster
        .or_else(|| settings.as_ref().map(|s| s.cluster.name.clone()))
        .expect("one of the two");
    let nodes = if nodes.is_empty() {
        settings
            .as_ref()
            .map(|s| s.nodes.iter().map(|n| n.name.clone()).collect())
            .expect("settings were loaded")
    } else {
        nodes
    };
    if nodes.len() != 2 || nodes[0] == nodes[1] {
        eprintln!("tandem init: --node must name two different nodes (got {nodes:?})");
        return ExitCode::from(EXIT_USAGE);
    }
    if let Some(bad) = nodes.iter().find(|n| {
        n.is_empty()
            || !n
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
    }) {
        eprintln!("tandem init: --node {bad:?}: use letters, digits, '_', '.' or '-'");
        return ExitCode::from(EXIT_USAGE);
    }
    // With the configuration, each node's certificate names its address too.
    let nodes: Vec<(String, Vec<String>)> = nodes
        .into_iter()
        .map(|n| {
            let addresses = settings
                .as_ref()
                .and_then(|s| s.nodes.iter().find(|x| x.name == n))
                .map(|x| vec![x.address.to_string()])
                .unwrap_or_default();
            (n, addresses)
        })
        .collect();
    match crate::replication::tls::init(&out, &cluster, &nodes, force) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            println!(
                "copy {} to both nodes (it holds private keys: keep it root-only)",
                out.display()
            );
            ExitCode::SUCCESS
        }
        Err(e @ crate::replication::tls::TlsError::Exists(_)) => {
            eprintln!("tandem init: {e}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(e) => {
            eprintln!("tandem init: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// `tandem witness`: leases for the nodes of the configured cluster.
fn witness(
    config: &std::path::Path,
    listen: Option<String>,
    state: Option<std::path::PathBuf>,
) -> ExitCode {
    let settings = match crate::config::parse(
        &match std::fs::read_to_string(config) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("{}: cannot read: {e}", config.display());
                return ExitCode::from(EXIT_USAGE);
            }
        },
        config,
        DirChecks::Off,
    ) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let addr = match (listen, &settings.cluster.quorum) {
        (Some(l), _) => l,
        (None, crate::config::Quorum::Witness(hp)) => hp.to_string(),
        (None, _) => {
            eprintln!("tandem witness: cluster.quorum is not \"witness\": give --listen ADDR:PORT");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let addr: std::net::SocketAddr = match addr.parse() {
        Ok(a) => a,
        Err(_) => {
            eprintln!("tandem witness: --listen {addr:?}: expected IP:PORT");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let key = match crate::cluster::heartbeat::Key::load(
        &crate::replication::tls::heartbeat_key_path(&settings.daemon.tls_dir),
    ) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("tandem witness: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let state = match state {
        Some(s) => s,
        None => {
            let dir = &settings.daemon.state_dir;
            if let Err(e) = std::fs::create_dir_all(dir) {
                eprintln!("tandem witness: daemon.state_dir {}: {e}", dir.display());
                return ExitCode::from(EXIT_USAGE);
            }
            dir.join("witness.json")
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tandem witness: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let served = rt.block_on(async {
        let mut signals = crate::signals::StopSignals::install().map_err(|e| e.to_string())?;
        tokio::select! {
            // A node is lost after the heartbeat timeout; its lease outlives
            // that by two intervals, the time its holder takes to notice
            // that it is cut off and stop serving.
            r = crate::cluster::witness::serve(
                addr,
                key,
                settings.cluster.name.clone(),
                settings.heartbeat.timeout + 2 * settings.heartbeat.interval,
                &state,
            ) => r.map_err(|e| e.to_string()),
            why = signals.recv() => { tracing::info!("{why}: witness stops"); Ok(()) }
        }
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tandem {e}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// Prints the module's log; with `follow`, keeps printing new lines.
fn log(
    config: &std::path::Path,
    socket: Option<PathBuf>,
    on: &Option<String>,
    module: &str,
    follow: bool,
    json: bool,
) -> ExitCode {
    let socket = match socket_path(config, socket) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let req = relayed(
        on,
        Request::Log {
            module: module.to_string(),
        },
    );
    let mut last: Option<String> = None;
    loop {
        match control::call(&socket, &req) {
            Ok(resp) if resp.ok => {
                // Lines after the last one printed (the daemon keeps a window).
                let from = last
                    .as_ref()
                    .and_then(|l| resp.messages.iter().rposition(|m| m == l))
                    .map_or(0, |i| i + 1);
                for m in &resp.messages[from..] {
                    if json {
                        let node = on.clone().map_or(serde_json::Value::Null, Into::into);
                        println!(
                            "{}",
                            serde_json::json!({"node": node, "module": module, "line": m})
                        );
                    } else {
                        println!("{m}");
                    }
                }
                if let Some(l) = resp.messages.last() {
                    last = Some(l.clone());
                }
            }
            Ok(resp) => {
                eprintln!(
                    "tandem: {}",
                    resp.error.unwrap_or_else(|| "request failed".into())
                );
                return ExitCode::from(EXIT_USAGE);
            }
            Err(e) => {
                eprintln!("tandem: {e:#}");
                return ExitCode::from(EXIT_FAILURE);
            }
        }
        if !follow {
            return ExitCode::SUCCESS;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

fn config_check(file: &std::path::Path, skip_dir_checks: bool) -> ExitCode {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: cannot read: {e}", file.display());
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match crate::config::parse(
        &text,
        file,
        if skip_dir_checks {
            DirChecks::Off
        } else {
            super::on_disk()
        },
    ) {
        Ok(settings) => {
            println!("OK");
            print!("{}", settings.summary());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

pub(super) fn socket_path(
    config: &std::path::Path,
    socket: Option<PathBuf>,
) -> Result<PathBuf, ExitCode> {
    if let Some(s) = socket {
        return Ok(s);
    }
    match crate::config::load(config, super::on_disk()) {
        Ok(s) => Ok(s.daemon.socket.clone()),
        Err(e) => {
            eprintln!("{e}");
            Err(ExitCode::from(EXIT_USAGE))
        }
    }
}

/// `req`, or `req` to be carried out on node `on`.
pub(super) fn relayed(on: &Option<String>, req: Request) -> Request {
    match on {
        None => req,
        Some(node) => Request::On {
            node: node.clone(),
            request: Box::new(req),
        },
    }
}

pub(super) fn with_daemon(
    config: &std::path::Path,
    socket: Option<PathBuf>,
    req: &Request,
    show: impl FnOnce(&Response),
) -> ExitCode {
    let socket = match socket_path(config, socket) {
        Ok(s) => s,
        Err(code) => return code,
    };
    match control::call(&socket, req) {
        Ok(resp) if resp.ok => {
            show(&resp);
            ExitCode::SUCCESS
        }
        Ok(resp) => {
            eprintln!(
                "tandem: {}",
                resp.error.unwrap_or_else(|| "request failed".into())
            );
            ExitCode::from(EXIT_USAGE)
        }
        Err(e) => {
            eprintln!("tandem: {e:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn print_messages(resp: &Response) {
    for m in &resp.messages {
        println!("{m}");
    }
}
