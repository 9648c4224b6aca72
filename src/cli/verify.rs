//! `tandem verify MODULE`: compares the module's trees on both nodes and
//! lists what differs. Exit 0 identical, 1 different, 2 error.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use crate::control::{self, Request};
use crate::replication::status::VerifyReport;

use super::progress::human;
use super::{EXIT_FAILURE, EXIT_USAGE};

pub fn run(
    config: &Path,
    socket: Option<PathBuf>,
    module: &str,
    json: bool,
    repair: bool,
) -> ExitCode {
    let socket = match super::commands::socket_path(config, socket) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let req = Request::Verify {
        module: module.to_string(),
        repair,
    };
    match control::call(&socket, &req) {
        Ok(r) if r.ok => {}
        Ok(r) => {
            eprintln!(
                "tandem: {}",
                r.error.unwrap_or_else(|| "verify refused".into())
            );
            return ExitCode::from(EXIT_USAGE);
        }
        Err(e) => {
            eprintln!("tandem: {e:#}");
            return ExitCode::from(EXIT_USAGE);
        }
    }
    let tty = std::io::stderr().is_terminal() && !json;
    loop {
        std::thread::sleep(Duration::from_millis(if tty { 100 } else { 25 }));
        let st = match control::call(&socket, &Request::Status {}) {
            Ok(r) => r.status,
            Err(e) => {
                eprintln!("tandem: {e:#}");
                return ExitCode::from(EXIT_USAGE);
            }
        };
        let Some(v) = st
            .as_ref()
            .and_then(|s| s.modules.iter().find(|m| m.name == module))
            .and_then(|m| m.replication.as_ref())
            .map(|r| r.verify.clone())
        else {
            eprintln!("tandem: module {module} disappeared from the status");
            return ExitCode::from(EXIT_USAGE);
        };
        if v.running {
            if tty {
                eprint!(
                    "\r\x1b[K{}: {} names, {} hashed, {} from cache",
                    v.phase,
                    v.files,
                    human(v.bytes_hashed),
                    human(v.bytes_cached)
                );
                let _ = std::io::stderr().flush();
            }
            continue;
        }
        if tty {
            eprint!("\r\x1b[K");
        }
        if let Some(e) = v.error {
            eprintln!("tandem: verify of {module} failed: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
        let Some(report) = v.report else {
            eprintln!("tandem: verify of {module} ended without a report");
            return ExitCode::from(EXIT_USAGE);
        };
        print_report(module, &report, json);
        return if report.differences.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(EXIT_FAILURE)
        };
    }
}

fn print_report(module: &str, r: &VerifyReport, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(r).expect("reports serialise")
        );
        return;
    }
    if r.repaired > 0 {
        println!("module {module}: repaired {} differences", r.repaired);
    }
    for d in &r.differences {
        let ranges: Vec<String> = d.ranges.iter().map(|(s, e)| format!("{s}-{e}")).collect();
        println!(
            "{}: {}{}",
            d.path,
            d.what.join(", "),
            if ranges.is_empty() {
                String::new()
            } else {
                format!(" (bytes {})", ranges.join(" "))
            }
        );
    }
    println!(
        "module {module}: {} — {} names, {} compared, {} hashed, in {:.1} s",
        if r.differences.is_empty() {
            "identical".to_string()
        } else {
            format!("{} differences", r.differences.len())
        },
        r.files,
        human(r.bytes),
        human(r.bytes_hashed),
        r.elapsed_ms as f64 / 1000.0
    );
}
