//! `tandem upgrade`: asks the daemon to hand its mounts to a new program in
//! place, then waits until the new daemon answers and every module that
//! served before serves again.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::control::{self, Request, Status};
use crate::exit::{EXIT_FAILURE, EXIT_USAGE};

/// How long the new daemon's peer may take to follow again before the
/// upgrade is reported done without it.
const PEER_GRACE: Duration = Duration::from_secs(10);

/// The modules that serve (with their state: PRIM or ALONE), and since when
/// the daemon's program does.
fn serving(st: &Status) -> (Vec<(String, String)>, Option<u64>) {
    let names = st
        .modules
        .iter()
        .filter(|m| {
            m.state
                .parse::<crate::cluster::machine::State>()
                .is_ok_and(|s| s.serving())
        })
        .map(|m| (m.name.clone(), m.state.clone()))
        .collect();
    let since = st
        .nodes
        .as_ref()
        .and_then(|n| n.daemon.as_ref())
        .map(|d| d.since_ms);
    (names, since)
}

fn status(socket: &std::path::Path) -> anyhow::Result<Status> {
    let r = control::call(socket, &Request::Status {})?;
    r.status
        .ok_or_else(|| anyhow::anyhow!(r.error.unwrap_or_else(|| "no status".into())))
}

pub(super) fn run(
    config: &std::path::Path,
    socket: Option<PathBuf>,
    program: Option<PathBuf>,
    timeout: Duration,
) -> ExitCode {
    let socket = match super::commands::socket_path(config, socket) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let program = match program {
        None => None,
        Some(p) => match std::path::absolute(&p) {
            Ok(a) if a.is_file() => Some(a),
            Ok(_) => {
                eprintln!("tandem: --program {}: no such file", p.display());
                return ExitCode::from(EXIT_USAGE);
            }
            Err(e) => {
                eprintln!("tandem: --program {}: {e}", p.display());
                return ExitCode::from(EXIT_USAGE);
            }
        },
    };
    let before = match status(&socket) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tandem: {e:#}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let (served, since) = serving(&before);
    let Some(since) = since else {
        eprintln!(
            "tandem: this daemon cannot hand over in place (a fixed --role, or an older \
             release): restart it instead"
        );
        return ExitCode::from(EXIT_USAGE);
    };
    let t0 = Instant::now();
    let req = Request::Upgrade {
        program: program.map(|p| p.to_string_lossy().into_owned()),
    };
    match control::call(&socket, &req) {
        Ok(r) if r.ok => {
            for m in &r.messages {
                println!("{m}");
            }
        }
        Ok(r) => {
            eprintln!(
                "tandem: {}",
                r.error.unwrap_or_else(|| "upgrade refused".into())
            );
            return ExitCode::from(EXIT_USAGE);
        }
        // The program was replaced before its answer left: see below.
        Err(_) => {}
    }
    let deadline = t0 + timeout;
    let mut last = String::from("no answer yet");
    let mut serving_since: Option<Instant> = None;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        let st = match status(&socket) {
            Ok(st) => st,
            Err(e) => {
                last = format!("{e:#}");
                continue;
            }
        };
        let (now_serving, now_since) = serving(&st);
        if now_since == Some(since) {
            last = "the previous daemon still answers".into();
            continue;
        }
        let missing: Vec<String> = served
            .iter()
            .filter(|(n, _)| !now_serving.iter().any(|(m, _)| m == n))
            .map(|(n, _)| n.clone())
            .collect();
        if !missing.is_empty() {
            last = format!("not serving yet: {}", missing.join(", "));
            continue;
        }
        // PRIM as before: the peer follows again (a crash from here on fails
        // over as any other). A peer that does not answer is waited for a
        // while only: the upgrade is done, it resyncs when it answers.
        let behind: Vec<String> = served
            .iter()
            .filter(|m| !now_serving.contains(m))
            .map(|(n, s)| format!("{n} ({s} before)"))
            .collect();
        let first = *serving_since.get_or_insert_with(Instant::now);
        if !behind.is_empty() && first.elapsed() < PEER_GRACE {
            last = format!("the peer does not follow yet: {}", behind.join(", "));
            continue;
        }
        for b in &behind {
            println!("the peer does not follow yet (it resyncs once it answers): {b}");
        }
        let nodes = st.nodes.as_ref();
        let version = nodes.map(|n| n.version.clone()).unwrap_or_default();
        if let Some(why) = nodes
            .and_then(|n| n.daemon.as_ref())
            .and_then(|d| d.taken_back.clone())
        {
            eprintln!(
                "tandem: the new program could not go on ({why}); the previous one (tandem \
                 {version}) took its sessions back and serves on"
            );
            return ExitCode::from(EXIT_FAILURE);
        }
        let from = nodes
            .and_then(|n| n.daemon.as_ref())
            .and_then(|d| d.took_over_from.clone());
        match from {
            Some(from) => println!(
                "upgraded in place: tandem {from} -> {version} in {} ms; serving: {}",
                t0.elapsed().as_millis(),
                if served.is_empty() {
                    "nothing".into()
                } else {
                    served
                        .iter()
                        .map(|(n, s)| format!("{n} ({s})"))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ),
            None => {
                eprintln!(
                    "tandem: the daemon restarted instead of taking over (tandem {version}); \
                     see `tandem log MODULE`"
                );
                return ExitCode::from(EXIT_FAILURE);
            }
        }
        return ExitCode::SUCCESS;
    }
    eprintln!(
        "tandem: the new daemon did not serve again within {} s ({last}); see the \
         daemon's log — if it died, the guard stopped the application here and the peer \
         takes over",
        timeout.as_secs()
    );
    ExitCode::from(EXIT_FAILURE)
}
