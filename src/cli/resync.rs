//! `tandem resync MODULE`: the primary resynchronises a returning peer by
//! itself as soon as it connects; this shows that resync's progress until it
//! ends, or says why there is none.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use crate::control::{self, Request};

use super::{EXIT_FAILURE, EXIT_USAGE};

/// A `--rate` that is not a size a second.
#[derive(Debug, thiserror::Error)]
#[error(
    "{0:?} is not a rate: bytes a second, as \"50MiB\", \"1GB\", a number of bytes, or \"0\" for no cap"
)]
pub struct BadRate(String);

/// `--rate`: `50MiB`, `1GB`, bytes, `0`.
pub fn rate(s: &str) -> Result<u64, BadRate> {
    crate::config::size(s).ok_or_else(|| BadRate(s.to_string()))
}

/// `wait`: how long to wait for a peer that is not connected yet. With
/// `json`, each sample is one line: `{"module", "peer", "dirty_bytes",
/// "dirty_files", "resync"}` (`peer` is `connected` on the last one).
pub fn run(
    config: &Path,
    socket: Option<PathBuf>,
    module: &str,
    wait: Duration,
    json: bool,
) -> ExitCode {
    let socket = match super::commands::socket_path(config, socket) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let tty = std::io::stdout().is_terminal();
    let mut shown = false;
    let mut waited = Duration::ZERO;
    loop {
        let resp = match control::call(&socket, &Request::Status {}) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("tandem: {e:#}");
                return ExitCode::from(EXIT_FAILURE);
            }
        };
        let Some(m) = resp
            .status
            .as_ref()
            .and_then(|s| s.modules.iter().find(|m| m.name == module))
        else {
            eprintln!("tandem: no module named {module:?}");
            return ExitCode::from(EXIT_USAGE);
        };
        let Some(r) = &m.replication else {
            eprintln!(
                "tandem: module {module} is not replicated by this daemon (started without --role)"
            );
            return ExitCode::from(EXIT_FAILURE);
        };
        if r.role != "primary" {
            eprintln!(
                "tandem: module {module} is secondary here; run `tandem resync` on the primary"
            );
            return ExitCode::from(EXIT_USAGE);
        }
        if json {
            println!(
                "{}",
                serde_json::json!({
                    "module": module,
                    "peer": r.peer,
                    "dirty_bytes": r.dirty_bytes,
                    "dirty_files": r.dirty_files,
                    "resync": r.resync,
                })
            );
        }
        let tty = tty && !json;
        match r.peer.as_str() {
            "alone" if waited < wait => {
                if !shown {
                    eprintln!("tandem: module {module}: waiting for the peer to connect");
                    shown = true;
                }
                waited += Duration::from_millis(if tty { 250 } else { 1000 });
            }
            "alone" => {
                if shown && tty {
                    println!();
                }
                eprintln!(
                    "tandem: module {module}: the peer is not connected ({} dirty bytes in {} files wait for it); the resync starts when it connects",
                    r.dirty_bytes, r.dirty_files
                );
                return ExitCode::from(EXIT_FAILURE);
            }
            "connected" if json => return ExitCode::SUCCESS,
            "connected" => {
                if shown && r.resync.started_unix_ms > 0 {
                    let line = super::progress::line(&r.resync);
                    if tty {
                        println!("\r\x1b[Kresync: {line}");
                    } else {
                        println!("resync: {line}");
                    }
                }
                println!("module {module}: peer up to date");
                return ExitCode::SUCCESS;
            }
            _ if json => shown = true,
            _ => {
                let line = super::progress::line(&r.resync);
                if tty {
                    print!("\r\x1b[Kresync: {line}");
                    let _ = std::io::stdout().flush();
                } else {
                    println!("resync: {line}");
                }
                shown = true;
            }
        }
        std::thread::sleep(Duration::from_millis(if tty { 250 } else { 1000 }));
    }
}
