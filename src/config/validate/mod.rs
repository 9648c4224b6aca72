//! Raw sections → [`Settings`]. Every check runs and reports; `Settings` is built only
//! when none failed.

mod api;
mod checker;
mod cluster;
mod daemon;
mod dirs;
mod failover;
mod fields;
mod module;
mod network;
mod nodes;
mod snapshots;

pub use snapshots::bytes as size;

use super::raw::RawConfig;
use super::report::Report;
use super::settings::Settings;

pub(super) fn validate(
    raw: &RawConfig,
    r: &mut Report,
    checks: super::DirChecks,
) -> Option<Settings> {
    let before = r.count();
    let node_names = raw.nodes.as_deref().and_then(nodes::node_names);
    let cluster = cluster::cluster(r, &raw.cluster, node_names.as_deref());
    let nodes = raw.nodes.as_deref().and_then(|n| nodes::nodes(r, n));
    let heartbeat = network::heartbeat(r, &raw.heartbeat);
    let replication = network::replication(r, &raw.replication, heartbeat.as_ref().map(|h| h.port));
    let daemon = daemon::daemon(r, &raw.daemon);
    let api = api::api(r, &raw.api);

    let mut ports = Vec::new();
    if let Some(h) = &heartbeat {
        ports.push(("heartbeat.port", h.port));
    }
    if let Some(rep) = &replication {
        ports.push(("replication.port", rep.port));
    }
    if let Some(a) = api.as_ref().filter(|a| a.enabled) {
        ports.push(("api.port", a.port));
    }
    let ctx = module::Context {
        checks,
        quorum: cluster.as_ref().map(|c| &c.quorum),
        nodes: nodes.as_ref(),
        ports,
    };
    let modules = raw
        .modules
        .as_deref()
        .and_then(|m| module::modules(r, m, &ctx));

    if r.count() > before {
        return None;
    }
    Some(Settings {
        cluster: cluster?,
        nodes: nodes?,
        heartbeat: heartbeat?,
        replication: replication?,
        daemon: daemon?,
        api: api?,
        modules: modules?,
    })
}
