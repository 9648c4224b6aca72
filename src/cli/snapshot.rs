//! `tandem snapshot`: a module's points in time on this node (or, with
//! `--on`, on the other one).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use super::commands::{relayed, with_daemon};
use crate::control::{Request, Response, SnapshotOp};

#[derive(Subcommand, Debug)]
pub enum SnapshotAction {
    /// Take a snapshot now (it copies nothing: what later changes destroy
    /// is kept as they happen).
    Create {
        module: String,
        /// Its name (default: `manual-ID`).
        #[arg(long)]
        name: Option<String>,
    },
    /// The module's snapshots on this node: name, time, stream position,
    /// consistent or not, bytes held.
    List {
        module: String,
        #[arg(long)]
        json: bool,
    },
    /// Files and byte ranges changed from snapshot FROM to snapshot TO (or now).
    Diff {
        module: String,
        from: String,
        to: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Write the tree as it was into a new directory, while everything runs.
    Restore {
        module: String,
        snapshot: String,
        /// An absent or empty directory outside the module's directories.
        #[arg(long)]
        to: PathBuf,
    },
    /// Bring this node's copy back to the snapshot (not on a serving node).
    Rollback { module: String, snapshot: String },
    /// Delete a snapshot of this node (the peer's are its own).
    Delete { module: String, snapshot: String },
}

fn when(ms: u64) -> String {
    crate::clock::utc(ms)
}

fn size(bytes: u64) -> String {
    match bytes {
        b if b < 10 << 10 => format!("{b} B"),
        b if b < 10 << 20 => format!("{} KiB", b >> 10),
        b if b < 10 << 30 => format!("{} MiB", b >> 20),
        b => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
    }
}

fn print_list(resp: &Response, json: bool) {
    let Some(data) = &resp.data else {
        return;
    };
    if json {
        println!("{data}");
        return;
    }
    let list: Vec<crate::replication::snapshot::Listed> =
        serde_json::from_value(data.clone()).unwrap_or_default();
    if list.is_empty() {
        println!("no snapshots");
        return;
    }
    println!(
        "{:<24} {:<14} {:<8} {:<24} {:>9} {:<10} {:>10}",
        "NAME", "KIND", "NODE", "TAKEN", "POSITION", "STATE", "HELD"
    );
    for l in list {
        let s = &l.snapshot;
        let state = match (&s.broken, s.consistent) {
            (Some(_), _) => "BROKEN",
            (None, false) => "inconsistent",
            (None, true) => "consistent",
        };
        println!(
            "{:<24} {:<14} {:<8} {:<24} {:>9} {:<10} {:>10}",
            s.name,
            s.kind.as_str(),
            s.node,
            when(s.created_ms),
            s.position.map_or("-".into(), |p| p.to_string()),
            state,
            size(l.bytes)
        );
        if let Some(why) = &s.broken {
            println!("  broken: {why}");
        }
    }
}

fn print_diff(resp: &Response, json: bool) {
    let Some(data) = &resp.data else {
        return;
    };
    if json {
        println!("{data}");
        return;
    }
    for m in &resp.messages {
        println!("{m}");
    }
    let changes: Vec<serde_json::Value> = serde_json::from_value(data.clone()).unwrap_or_default();
    for c in changes {
        let what = c["change"].as_str().unwrap_or("?");
        let path = c["path"].as_str().unwrap_or("?");
        let mut line = format!("{what:<8} {path}");
        if let Some(attrs) = c["attrs"].as_array().filter(|a| !a.is_empty()) {
            let a: Vec<&str> = attrs.iter().filter_map(|v| v.as_str()).collect();
            line.push_str(&format!("  [{}]", a.join(", ")));
        }
        if let Some(ranges) = c["ranges"].as_array().filter(|a| !a.is_empty()) {
            let r: Vec<String> = ranges
                .iter()
                .filter_map(|v| Some(format!("{}-{}", v[0].as_u64()?, v[1].as_u64()?)))
                .collect();
            line.push_str(&format!("  bytes {}", r.join(" ")));
        }
        println!("{line}");
    }
}

fn print_messages(resp: &Response) {
    for m in &resp.messages {
        println!("{m}");
    }
}

pub fn run(
    config: &std::path::Path,
    socket: Option<PathBuf>,
    on: &Option<String>,
    action: SnapshotAction,
) -> ExitCode {
    let ask = |module: String, op: SnapshotOp| relayed(on, Request::Snapshot { module, op });
    match action {
        SnapshotAction::Create { module, name } => with_daemon(
            config,
            socket,
            &ask(module, SnapshotOp::Create { name }),
            print_messages,
        ),
        SnapshotAction::List { module, json } => {
            with_daemon(config, socket, &ask(module, SnapshotOp::List {}), |r| {
                print_list(r, json)
            })
        }
        SnapshotAction::Diff {
            module,
            from,
            to,
            json,
        } => with_daemon(
            config,
            socket,
            &ask(module, SnapshotOp::Diff { from, to }),
            |r| print_diff(r, json),
        ),
        SnapshotAction::Restore {
            module,
            snapshot,
            to,
        } => {
            // The daemon resolves nothing against its own directory.
            let to = match std::path::absolute(&to) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("tandem: --to {}: {e}", to.display());
                    return ExitCode::from(crate::exit::EXIT_USAGE);
                }
            };
            with_daemon(
                config,
                socket,
                &ask(
                    module,
                    SnapshotOp::Restore {
                        name: snapshot,
                        to: to.to_string_lossy().into_owned(),
                    },
                ),
                print_messages,
            )
        }
        SnapshotAction::Rollback { module, snapshot } => with_daemon(
            config,
            socket,
            &ask(module, SnapshotOp::Rollback { name: snapshot }),
            print_messages,
        ),
        SnapshotAction::Delete { module, snapshot } => with_daemon(
            config,
            socket,
            &ask(module, SnapshotOp::Delete { name: snapshot }),
            print_messages,
        ),
    }
}
