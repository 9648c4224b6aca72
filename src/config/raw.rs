//! The file as written: every field optional and spanned, so that a missing or bad value
//! is reported by validation (all of them, with lines) rather than by the first serde
//! failure. Enumerations stay strings for the same reason.

use serde::Deserialize;
use toml::Spanned;

use super::report::Span;

pub(super) type Str = Spanned<String>;
pub(super) type Int = Spanned<i64>;
pub(super) type List = Spanned<Vec<Spanned<String>>>;

/// One top-level table (or one element of `[[node]]` / `[[module]]`).
pub(super) struct Section<T> {
    /// Where the section starts; `None` when it is absent from the file.
    pub span: Option<Span>,
    /// `None` when the section could not be decoded (the error is already reported).
    pub value: Option<T>,
}

impl<T: Default> Section<T> {
    pub fn absent() -> Self {
        Self {
            span: None,
            value: Some(T::default()),
        }
    }
}

pub(super) struct RawConfig {
    pub cluster: Section<RawCluster>,
    /// `None` when `node` is not an array of tables (already reported).
    pub nodes: Option<Vec<Section<RawNode>>>,
    pub heartbeat: Section<RawHeartbeat>,
    pub replication: Section<RawReplication>,
    pub daemon: Section<RawDaemon>,
    pub api: Section<RawApi>,
    /// `None` when `module` is not an array of tables (already reported).
    pub modules: Option<Vec<Section<RawModule>>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawCluster {
    pub name: Option<Str>,
    pub quorum: Option<Str>,
    pub ping: Option<List>,
    pub witness: Option<Str>,
    pub etcd: Option<List>,
    pub etcd_ca: Option<Str>,
    pub etcd_cert: Option<Str>,
    pub etcd_key: Option<Str>,
    pub etcd_user: Option<Str>,
    pub etcd_password_file: Option<Str>,
    pub preferred_primary: Option<Str>,
    pub maintenance_alert_after_s: Option<Int>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawNode {
    pub name: Option<Str>,
    pub address: Option<Str>,
    pub heartbeat: Option<List>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawHeartbeat {
    pub port: Option<Int>,
    pub interval_ms: Option<Int>,
    pub timeout_ms: Option<Int>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawReplication {
    pub port: Option<Int>,
    pub peer_timeout_ms: Option<Int>,
    pub compression: Option<Str>,
    pub chunk_size_kib: Option<Int>,
    pub async_max_lag_mib: Option<Int>,
    pub resync_max_rate: Option<Str>,
    pub resync_min_rate: Option<Str>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawDaemon {
    pub state_dir: Option<Str>,
    pub socket: Option<Str>,
    pub tls_dir: Option<Str>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawApi {
    pub enabled: Option<Spanned<bool>>,
    pub address: Option<Str>,
    pub port: Option<Int>,
    pub cert: Option<Str>,
    pub key: Option<Str>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawModule {
    pub name: Option<Str>,
    pub dirs: Option<List>,
    pub exclude: Option<List>,
    pub ack: Option<Str>,
    pub failover: Option<Str>,
    pub vip: Option<List>,
    pub vip_interface: Option<Str>,
    pub vip_announce: Option<Int>,
    pub vip_announce_interval_ms: Option<Int>,
    pub vip_refresh_s: Option<Int>,
    pub lb_port: Option<Int>,
    pub lb_tls: Option<Spanned<bool>>,
    pub preferred_primary: Option<Str>,
    pub scripts: Option<RawScripts>,
    pub checker: Option<Vec<Spanned<RawChecker>>>,
    pub snapshots: Option<RawSnapshots>,
}

/// `[module.snapshots]`: this node's schedule and retention.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawSnapshots {
    pub every: Option<Str>,
    pub keep_hourly: Option<Int>,
    pub keep_daily: Option<Int>,
    pub keep_weekly: Option<Int>,
    pub keep_before_resync: Option<Int>,
    pub keep_before_resync_for: Option<Str>,
    pub budget: Option<Str>,
    pub capture_sync: Option<Str>,
    pub pre_snapshot: Option<Str>,
    pub post_snapshot: Option<Str>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawScripts {
    pub prestart: Option<Str>,
    pub start_prim: Option<Str>,
    pub stop_prim: Option<Str>,
    pub start_both: Option<Str>,
    pub stop_both: Option<Str>,
    pub poststop: Option<Str>,
    pub timeout_s: Option<Int>,
}

/// One checker; which of the kind-specific fields apply depends on `kind`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawChecker {
    pub kind: Option<Str>,
    pub pidfile: Option<Str>,
    pub name: Option<Str>,
    pub address: Option<Str>,
    pub url: Option<Str>,
    pub expect_status: Option<Int>,
    pub ca: Option<Str>,
    pub path: Option<Str>,
    pub interface: Option<Str>,
    pub interval_ms: Option<Int>,
    pub timeout_ms: Option<Int>,
    pub restarts: Option<Int>,
    pub window_s: Option<Int>,
}

impl RawChecker {
    /// The kind-specific fields that are present, with their names and spans.
    pub fn kind_fields(&self) -> Vec<(&'static str, Span)> {
        let strings = [
            ("pidfile", &self.pidfile),
            ("name", &self.name),
            ("address", &self.address),
            ("url", &self.url),
            ("ca", &self.ca),
            ("path", &self.path),
            ("interface", &self.interface),
        ];
        let mut present: Vec<_> = strings
            .into_iter()
            .filter_map(|(n, v)| v.as_ref().map(|v| (n, v.span())))
            .collect();
        if let Some(v) = &self.expect_status {
            present.push(("expect_status", v.span()));
        }
        present
    }
}
