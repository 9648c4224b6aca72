//! `tandem status` as people read it: both nodes in one table, then what
//! each module's state, checks, clients, quorum and link say.

use crate::control::Response;

/// Prints a status answer: both nodes' table, then each module's lines
/// (`json`: the status as it came).
pub(super) fn print_status(resp: &Response, json: bool) {
    let Some(st) = &resp.status else { return };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(st).expect("status serialises")
        );
        return;
    }
    println!("cluster {} (daemon pid {})", st.cluster, st.pid);
    if let Some(b) = super::maintenance::banner(st) {
        println!("{b}");
    }
    print!("{}", table(st));
    println!();
    if let Some(n) = &st.nodes {
        println!(
            "node {}, peer {}: {}; heartbeats sent {}, received {}, dropped {} (bad HMAC {}, replayed {})",
            n.node,
            n.peer,
            if n.peer_alive { "alive" } else { "not heard" },
            n.heartbeats_sent,
            n.heartbeats_received,
            n.dropped_bad_mac + n.dropped_replayed + n.dropped_malformed + n.dropped_foreign,
            n.dropped_bad_mac,
            n.dropped_replayed
        );
        println!(
            "tandem {} here, {} on the peer",
            n.version,
            n.peer_version.as_deref().unwrap_or("unknown")
        );
        if n.mixed_versions() {
            println!(
                "  MIXED VERSIONS: the nodes run different releases (a rolling upgrade \
                 under way?); upgrade the other node too"
            );
        }
    }
    for m in &st.modules {
        println!("module {}: {}", m.name, m.state);
        if let Some(c) = &m.cluster {
            println!(
                "  {} for {:.1} s: {}",
                c.state,
                c.since_ms as f64 / 1000.0,
                c.why
            );
            println!(
                "  peer {}{}; generation {}{}; application {}",
                c.peer_state.as_deref().unwrap_or("not heard"),
                if c.peer_uptodate { " (up to date)" } else { "" },
                c.generation,
                c.peer_generation
                    .as_ref()
                    .map(|g| format!(" (peer {g})"))
                    .unwrap_or_default(),
                if c.app_running { "running" } else { "stopped" }
            );
            if c.checks != "none" {
                println!("  health checks {}", c.checks);
            }
            if !c.clients.is_empty() {
                println!("  clients: {}", c.clients);
            }
            if c.quorum != "none" {
                println!("  quorum {}", c.quorum);
            }
            if let Some(r) = m.replication.as_ref().filter(|r| r.protocol.is_some()) {
                println!(
                    "  link protocol {}{}",
                    r.protocol.unwrap_or_default(),
                    r.peer_version
                        .as_ref()
                        .map(|v| format!(" with tandem {v}"))
                        .unwrap_or_default()
                );
            }
            if let Some(l) = super::maintenance::line(m) {
                println!("{l}");
            }
            for l in snapshot_lines(m) {
                println!("{l}");
            }
            if c.split_brain {
                println!(
                    "  SPLIT BRAIN: resolve with `tandem resolve {} --keep NODE`",
                    m.name
                );
            }
            if let Some(b) = &c.blocked {
                println!(
                    "  not allowed to serve here: {b} (`tandem start {}` clears it)",
                    m.name
                );
            }
        }
        if let Some(r) = &m.replication {
            println!(
                "  {} — peer {}{}; applied {}, durable {}; {} dirty bytes in {} files",
                r.role,
                r.peer,
                if r.ack.is_empty() {
                    String::new()
                } else {
                    format!(", ack {}", r.ack)
                },
                r.applied,
                r.durable,
                r.dirty_bytes,
                r.dirty_files
            );
            if r.resync.running {
                println!("  resync: {}", super::progress::line(&r.resync));
            } else if let Some(held) = super::progress::held(&r.resync) {
                println!("  resync: {held}");
            }
            if let Some(e) = &r.last_error {
                println!("  last problem: {e}");
            }
        }
        for d in &m.dirs {
            println!(
                "  {} {} — {} mutations, {} bytes written",
                d.path,
                if d.mounted { "mounted" } else { "not mounted" },
                d.mutations,
                d.bytes_written
            );
        }
    }
}

/// The columns of `tandem status`'s table.
const TABLE: [&str; 7] = [
    "NODE",
    "MODULE",
    "ROLE",
    "STATE",
    "UP TO DATE",
    "DIRTY",
    "RESYNC",
];

/// Both nodes' view of every module, one row each, as `patronictl list`
/// shows a cluster: the peer's row as its heartbeats tell it.
fn table(st: &crate::control::Status) -> String {
    let role = |state: &str| match state {
        "PRIM" | "ALONE" => "primary",
        "SECOND" => "secondary",
        _ => "-",
    };
    let yes = |b: bool| if b { "yes" } else { "no" };
    let mut rows = vec![TABLE.map(String::from)];
    let (me, peer) = st.nodes.as_ref().map_or(("this node".into(), None), |n| {
        (n.node.clone(), Some(n.peer.clone()))
    });
    for m in &st.modules {
        let c = m.cluster.as_ref();
        let r = m.replication.as_ref();
        let serving = matches!(m.state.as_str(), "PRIM" | "ALONE");
        rows.push([
            me.clone(),
            m.name.clone(),
            role(&m.state).into(),
            m.state.clone(),
            if serving {
                "-".into()
            } else {
                c.map_or("-".into(), |c| yes(c.uptodate).into())
            },
            r.map_or("-".into(), |r| super::progress::human(r.dirty_bytes)),
            r.filter(|r| r.resync.running && r.resync.bytes_total > 0)
                .map_or("-".into(), |r| {
                    format!(
                        "{:.0} %",
                        100.0 * r.resync.bytes_done as f64 / r.resync.bytes_total as f64
                    )
                }),
        ]);
        if let (Some(peer), Some(c)) = (&peer, c) {
            let state = c.peer_state.clone().unwrap_or_else(|| "not heard".into());
            let peer_serving = matches!(state.as_str(), "PRIM" | "ALONE");
            rows.push([
                peer.clone(),
                m.name.clone(),
                role(&state).into(),
                state.clone(),
                if peer_serving || c.peer_state.is_none() {
                    "-".into()
                } else {
                    yes(c.peer_uptodate).into()
                },
                "-".into(),
                "-".into(),
            ]);
        }
    }
    let widths: Vec<usize> = (0..7)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// What the module's snapshots on this node add to its details: how many,
/// and what needs the operator (a copy between two states, a rollback cut
/// short, a failing schedule, broken snapshots).
fn snapshot_lines(m: &crate::control::ModuleStatus) -> Vec<String> {
    let Some(x) = &m.snapshots else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if x.count > 0 {
        out.push(format!(
            "  snapshots: {} here, newest {}",
            x.count,
            x.newest.as_deref().unwrap_or("-")
        ));
    }
    if let Some(since) = x.inconsistent_since_ms {
        out.push(format!(
            "  INCONSISTENT since {}: a resync is writing into this copy; last consistent \
             snapshot: {}",
            crate::clock::utc(since),
            x.last_consistent.as_deref().unwrap_or("none")
        ));
    }
    if let Some(to) = &x.rolling_back {
        out.push(format!(
            "  ROLLBACK to {to} did not finish: run `tandem snapshot rollback {} {to}` again",
            m.name
        ));
    }
    if let Some(why) = &x.schedule_failed {
        out.push(format!("  SCHEDULED SNAPSHOT FAILED: {why}"));
    }
    if x.broken > 0 {
        out.push(format!(
            "  {} snapshots BROKEN (`tandem snapshot list {}`)",
            x.broken, m.name
        ));
    }
    out
}
