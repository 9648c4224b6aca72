//! `/metrics` in Prometheus's text format (prometheus-client): what the
//! daemon counts as it goes (role changes, check failures, script
//! durations), and what its status says at the moment of the scrape
//! (with the bytes its snapshots hold, listed then).

use std::sync::atomic::AtomicU64;

use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::control::{SnapshotSummary, Status};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModuleLabel {
    module: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    module: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScriptLabels {
    module: String,
    script: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PathLabels {
    local: String,
    remote: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    reason: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_buckets() -> Histogram {
    // 25 µs to about 0.8 s.
    Histogram::new(exponential_buckets(0.000_025, 2.0, 16))
}

fn script_buckets() -> Histogram {
    // 10 ms to about 80 s.
    Histogram::new(exponential_buckets(0.01, 2.0, 14))
}

/// The states a module can be in, each a series of its own (1 for the
/// current one), as Prometheus prefers to a string.
const STATES: [&str; 5] = ["STOP", "WAIT", "SECOND", "PRIM", "ALONE"];

pub struct Metrics {
    registry: Registry,
    role_changes: Family<ModuleLabel, Counter>,
    check_failures: Family<ModuleLabel, Counter>,
    script_seconds: Histograms<ScriptLabels>,
    replication_wait: Histograms<ModuleLabel>,
    state: Family<StateLabels, Gauge>,
    serving: Family<ModuleLabel, Gauge>,
    uptodate: Family<ModuleLabel, Gauge>,
    split_brain: Family<ModuleLabel, Gauge>,
    maintenance: Family<ModuleLabel, Gauge>,
    maintenance_seconds: Family<ModuleLabel, Gauge>,
    maintenance_overdue: Family<ModuleLabel, Gauge>,
    maintenance_alert_after: Gauge,
    dirty_bytes: Family<ModuleLabel, Gauge>,
    dirty_files: Family<ModuleLabel, Gauge>,
    in_flight: Family<ModuleLabel, Gauge>,
    replicated_bytes: Family<ModuleLabel, Counter>,
    flushes: Family<ModuleLabel, Counter>,
    acks: Family<ModuleLabel, Counter>,
    resync_done: Family<ModuleLabel, Gauge>,
    resync_total: Family<ModuleLabel, Gauge>,
    resync_rate: Family<ModuleLabel, Gauge>,
    resync_max_rate: Family<ModuleLabel, Gauge>,
    resync_paused: Family<ModuleLabel, Gauge>,
    resync_yielding: Family<ModuleLabel, Gauge>,
    resync_eta: Family<ModuleLabel, Gauge>,
    peer_alive: Gauge,
    mixed_versions: Gauge,
    heard_age: Family<PathLabels, Gauge<f64, AtomicU64>>,
    rtt: Family<PathLabels, Gauge<f64, AtomicU64>>,
    lost: Family<PathLabels, Counter>,
    heartbeats_sent: Counter,
    heartbeats_received: Counter,
    heartbeats_dropped: Family<DropLabels, Counter>,
    snapshots: Family<ModuleLabel, Gauge>,
    snapshot_bytes: Family<ModuleLabel, Gauge>,
    snapshot_oldest_age: Family<ModuleLabel, Gauge<f64, AtomicU64>>,
    snapshot_newest_age: Family<ModuleLabel, Gauge<f64, AtomicU64>>,
    snapshot_failures: Family<ModuleLabel, Counter>,
    snapshot_broken: Family<ModuleLabel, Gauge>,
    snapshot_inconsistent: Family<ModuleLabel, Gauge>,
    snapshot_schedule_failures: Family<ModuleLabel, Counter>,
    snapshot_schedule_failing: Family<ModuleLabel, Gauge>,
    /// What the counters above were last set from (the status keeps totals).
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    /// Totals of the status, by what they count.
    totals: Vec<(String, u64)>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tandem");
        macro_rules! reg {
            ($name:literal, $help:literal, $m:expr) => {{
                let m = $m;
                registry.register($name, $help, m.clone());
                m
            }};
        }
        Metrics {
            role_changes: reg!(
                "module_state_changes",
                "Changes of a module's state on this node",
                Family::default()
            ),
            check_failures: reg!(
                "checker_failures",
                "Health check failures of a module's application",
                Family::default()
            ),
            script_seconds: reg!(
                "script_duration_seconds",
                "How long the application's scripts ran",
                Histograms::<ScriptLabels>::new_with_constructor(script_buckets)
            ),
            replication_wait: reg!(
                "replication_ack_wait_seconds",
                "How long a call that promises durability (fsync, O_SYNC) waited for the peer",
                Histograms::<ModuleLabel>::new_with_constructor(latency_buckets)
            ),
            state: reg!(
                "module_state",
                "1 for the module's current state on this node",
                Family::default()
            ),
            serving: reg!(
                "module_serving",
                "1 while the module is served here",
                Family::default()
            ),
            uptodate: reg!(
                "module_uptodate",
                "1 while this node is an up-to-date SECOND",
                Family::default()
            ),
            split_brain: reg!(
                "module_split_brain",
                "1 while a split brain is to be resolved",
                Family::default()
            ),
            maintenance: reg!(
                "maintenance",
                "1 while the module is in maintenance here: nothing moves it by itself",
                Family::default()
            ),
            maintenance_seconds: reg!(
                "maintenance_seconds",
                "How long the module has been in maintenance (0 when it is not)",
                Family::default()
            ),
            maintenance_overdue: reg!(
                "maintenance_overdue",
                "1 while maintenance has been on longer than cluster.maintenance_alert_after_s",
                Family::default()
            ),
            maintenance_alert_after: reg!(
                "maintenance_alert_after_seconds",
                "cluster.maintenance_alert_after_s: maintenance on longer than this is overdue",
                Gauge::default()
            ),
            dirty_bytes: reg!(
                "replication_dirty_bytes",
                "Bytes the peer lacks",
                Family::default()
            ),
            dirty_files: reg!(
                "replication_dirty_files",
                "Files the peer lacks changes of",
                Family::default()
            ),
            in_flight: reg!(
                "replication_in_flight_changes",
                "Changes sent to the peer and not yet durable there",
                Family::default()
            ),
            replicated_bytes: reg!(
                "replication_sent_bytes",
                "Bytes replicated to the peer",
                Family::default()
            ),
            flushes: reg!(
                "replication_flushes",
                "Writes of queued changes (or acknowledgements) to the peer's socket",
                Family::default()
            ),
            acks: reg!(
                "replication_acks",
                "Acknowledgements received from the secondary (or sent, on it)",
                Family::default()
            ),
            resync_done: reg!(
                "resync_done_bytes",
                "Bytes of the running resync shipped",
                Family::default()
            ),
            resync_total: reg!(
                "resync_total_bytes",
                "Bytes the running resync ships",
                Family::default()
            ),
            resync_rate: reg!(
                "resync_rate_bytes_per_second",
                "Rate of the running resync over the last two seconds",
                Family::default()
            ),
            resync_max_rate: reg!(
                "resync_max_rate_bytes_per_second",
                "The most a resync of the module ships a second (0: no cap)",
                Family::default()
            ),
            resync_paused: reg!(
                "resync_paused",
                "1 while an operator holds the module's resync paused (kept across restarts)",
                Family::default()
            ),
            resync_yielding: reg!(
                "resync_yielding",
                "1 while the running resync yields to the application's writes (held to resync_min_rate)",
                Family::default()
            ),
            resync_eta: reg!(
                "resync_eta_seconds",
                "Seconds the running resync has left at its current rate (-1: none known)",
                Family::default()
            ),
            peer_alive: reg!(
                "peer_alive",
                "1 while the peer's heartbeats arrive",
                Gauge::default()
            ),
            mixed_versions: reg!(
                "mixed_versions",
                "1 while the peer runs another release of tandem than this node",
                Gauge::default()
            ),
            heard_age: reg!(
                "heartbeat_last_heard_seconds",
                "Time since a heartbeat last arrived on a path",
                Family::default()
            ),
            rtt: reg!(
                "heartbeat_rtt_seconds",
                "Round trip of the heartbeats on a path, as last timed",
                Family::default()
            ),
            lost: reg!(
                "heartbeats_lost",
                "The peer's heartbeats a path lost (gaps in their numbers)",
                Family::default()
            ),
            heartbeats_sent: reg!("heartbeats_sent", "Heartbeats sent", Counter::default()),
            heartbeats_received: reg!(
                "heartbeats_received",
                "Heartbeats received and accepted",
                Counter::default()
            ),
            heartbeats_dropped: reg!(
                "heartbeats_dropped",
                "Heartbeats refused, by reason (bad_mac: not from the peer)",
                Family::default()
            ),
            snapshots: reg!(
                "snapshots",
                "Snapshots of the module this node holds",
                Family::default()
            ),
            snapshot_bytes: reg!(
                "snapshot_bytes",
                "Bytes this node's snapshots of the module hold",
                Family::default()
            ),
            snapshot_oldest_age: reg!(
                "snapshot_oldest_age_seconds",
                "Age of the module's oldest snapshot on this node (absent without one)",
                Family::default()
            ),
            snapshot_newest_age: reg!(
                "snapshot_newest_age_seconds",
                "Age of the module's newest snapshot on this node (absent without one)",
                Family::default()
            ),
            snapshot_failures: reg!(
                "snapshot_failures",
                "What a change destroyed that could not be kept for the snapshots (each marks them broken)",
                Family::default()
            ),
            snapshot_broken: reg!(
                "snapshot_broken",
                "Snapshots of the module marked broken: they cannot be restored",
                Family::default()
            ),
            snapshot_inconsistent: reg!(
                "snapshot_inconsistent",
                "1 while a resync writes into this node's copy: snapshots taken now are of no state the primary had",
                Family::default()
            ),
            snapshot_schedule_failures: reg!(
                "snapshot_schedule_failures",
                "Scheduled snapshots of the module that could not be taken on this node",
                Family::default()
            ),
            snapshot_schedule_failing: reg!(
                "snapshot_schedule_failing",
                "1 while the last scheduled snapshot failed (an alert until one is taken)",
                Family::default()
            ),
            seen: Mutex::new(Seen::default()),
            registry,
        }
    }

    /// A module's state changed (counted where it happens: a scrape would
    /// miss a change and its undoing in between).
    pub fn state_changed(&self, module: &str) {
        self.role_changes
            .get_or_create(&ModuleLabel {
                module: module.into(),
            })
            .inc();
    }

    pub fn check_failed(&self, module: &str) {
        self.check_failures
            .get_or_create(&ModuleLabel {
                module: module.into(),
            })
            .inc();
    }

    pub fn script_ran(&self, module: &str, script: &str, seconds: f64) {
        self.script_seconds
            .get_or_create(&ScriptLabels {
                module: module.into(),
                script: script.into(),
            })
            .observe(seconds);
    }

    /// What a module's replicator counts its waits for the peer in.
    pub fn replication_latency(&self, module: &str) -> Histogram {
        self.replication_wait
            .get_or_create(&ModuleLabel {
                module: module.into(),
            })
            .clone()
    }

    /// The text a scrape gets, with the gauges set from `status` and
    /// `snapshot_bytes` (per module; one missing keeps its last value).
    pub fn render(&self, status: &Status, snapshot_bytes: &[(String, u64)]) -> String {
        self.update(status);
        for (module, bytes) in snapshot_bytes {
            let l = ModuleLabel {
                module: module.clone(),
            };
            self.snapshot_bytes.get_or_create(&l).set(*bytes as i64);
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }

    fn update(&self, st: &Status) {
        let mut seen = self.seen.lock();
        for m in &st.modules {
            let l = ModuleLabel {
                module: m.name.clone(),
            };
            for s in STATES {
                let g = self.state.get_or_create(&StateLabels {
                    module: m.name.clone(),
                    state: s.into(),
                });
                g.set((m.state == s) as i64);
            }
            // Present from the start (counted by `state_changed`).
            let _ = self.role_changes.get_or_create(&l);
            let c = m.cluster.as_ref();
            self.serving.get_or_create(&l).set(
                c.is_some_and(|c| c.app_running && matches!(m.state.as_str(), "PRIM" | "ALONE"))
                    as i64,
            );
            self.uptodate
                .get_or_create(&l)
                .set(c.is_some_and(|c| c.uptodate && m.state == "SECOND") as i64);
            self.split_brain
                .get_or_create(&l)
                .set(c.is_some_and(|c| c.split_brain) as i64);
            let maintenance = c.and_then(|c| c.maintenance.as_ref());
            let on = maintenance.filter(|x| x.on);
            self.maintenance.get_or_create(&l).set(on.is_some() as i64);
            self.maintenance_seconds
                .get_or_create(&l)
                .set(on.map_or(0, |x| x.seconds as i64));
            self.maintenance_overdue
                .get_or_create(&l)
                .set(on.is_some_and(|x| x.overdue) as i64);
            if let Some(x) = maintenance {
                self.maintenance_alert_after.set(x.alert_after_s as i64);
            }
            // Present from the start: a rate over a series that appears later misses its first count.
            let _ = self.check_failures.get_or_create(&l);
            if let Some(x) = &m.snapshots {
                self.snapshots_seen(&mut seen, &l, x);
            }
            let Some(r) = &m.replication else {
                continue;
            };
            self.dirty_bytes.get_or_create(&l).set(r.dirty_bytes as i64);
            self.dirty_files.get_or_create(&l).set(r.dirty_files as i64);
            self.in_flight
                .get_or_create(&l)
                .set(r.sent.saturating_sub(r.durable) as i64);
            let sent = delta(
                &mut seen.totals,
                &format!("replicated {}", m.name),
                r.bytes_replicated,
            );
            self.replicated_bytes.get_or_create(&l).inc_by(sent);
            for (family, what, total) in [
                (&self.flushes, "flushes", r.wire.flushes),
                (&self.acks, "acks", r.wire.acks),
            ] {
                let n = delta(&mut seen.totals, &format!("{what} {}", m.name), total);
                family.get_or_create(&l).inc_by(n);
            }
            let (done, total) = (r.resync.bytes_done, r.resync.bytes_total);
            self.resync_done.get_or_create(&l).set(done as i64);
            self.resync_total.get_or_create(&l).set(total as i64);
            let rs = &r.resync;
            self.resync_rate.get_or_create(&l).set(rs.rate as i64);
            self.resync_max_rate
                .get_or_create(&l)
                .set(rs.max_rate as i64);
            self.resync_paused.get_or_create(&l).set(rs.paused as i64);
            self.resync_yielding
                .get_or_create(&l)
                .set((rs.state == "yielding") as i64);
            self.resync_eta
                .get_or_create(&l)
                .set(rs.eta_seconds.map_or(-1, |s| s as i64));
        }
        if let Some(n) = &st.nodes {
            self.peer_alive.set(n.peer_alive as i64);
            self.mixed_versions.set(n.mixed_versions() as i64);
            for p in &n.paths {
                let l = PathLabels {
                    local: p.local.clone(),
                    remote: p.remote.clone(),
                };
                let age = p
                    .last_heard_ms
                    .map_or(f64::INFINITY, |ms| ms as f64 / 1000.0);
                self.heard_age.get_or_create(&l).set(age);
                if let Some(us) = p.rtt_us {
                    self.rtt.get_or_create(&l).set(us as f64 / 1e6);
                }
                let key = format!("lost {} {}", p.local, p.remote);
                let d = delta(&mut seen.totals, &key, p.lost);
                self.lost.get_or_create(&l).inc_by(d);
            }
            self.heartbeats_sent
                .inc_by(delta(&mut seen.totals, "sent", n.heartbeats_sent));
            self.heartbeats_received.inc_by(delta(
                &mut seen.totals,
                "received",
                n.heartbeats_received,
            ));
            for (reason, total) in [
                ("bad_mac", n.dropped_bad_mac),
                ("replayed", n.dropped_replayed),
                ("malformed", n.dropped_malformed),
                ("foreign", n.dropped_foreign),
            ] {
                let d = delta(&mut seen.totals, &format!("dropped {reason}"), total);
                self.heartbeats_dropped
                    .get_or_create(&DropLabels {
                        reason: reason.into(),
                    })
                    .inc_by(d);
            }
        }
    }
}

impl Metrics {
    fn snapshots_seen(&self, seen: &mut Seen, l: &ModuleLabel, x: &SnapshotSummary) {
        self.snapshots.get_or_create(l).set(x.count as i64);
        self.snapshot_broken.get_or_create(l).set(x.broken as i64);
        self.snapshot_inconsistent
            .get_or_create(l)
            .set(x.inconsistent_since_ms.is_some() as i64);
        let key = format!("snapshot failures {}", l.module);
        let n = delta(&mut seen.totals, &key, x.failures);
        self.snapshot_failures.get_or_create(l).inc_by(n);
        let key = format!("snapshot schedule failures {}", l.module);
        let n = delta(&mut seen.totals, &key, x.schedule_failures);
        self.snapshot_schedule_failures.get_or_create(l).inc_by(n);
        self.snapshot_schedule_failing
            .get_or_create(l)
            .set(x.schedule_failed.is_some() as i64);
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        for (family, at) in [
            (&self.snapshot_oldest_age, x.oldest_ms),
            (&self.snapshot_newest_age, x.newest_ms),
        ] {
            match at {
                Some(ms) => {
                    let age = now_ms.saturating_sub(ms) as f64 / 1000.0;
                    family.get_or_create(l).set(age);
                }
                // No age at all rather than 0: an alert on a stale newest
                // snapshot must not read "none" as "just taken".
                None => {
                    family.remove(l);
                }
            }
        }
    }
}

/// How much `total` grew since last seen under `key`.
fn delta(seen: &mut Vec<(String, u64)>, key: &str, total: u64) -> u64 {
    match seen.iter_mut().find(|(k, _)| k == key) {
        // A total that went down started again (a new replicator, say):
        // all of it is new.
        Some((_, was)) if total < *was => {
            *was = total;
            total
        }
        Some((_, was)) => {
            let d = total - *was;
            *was = total;
            d
        }
        None => {
            seen.push((key.into(), total));
            total
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::control::{ModuleStatus, SnapshotSummary, Status};

    fn value(out: &str, series: &str) -> Option<f64> {
        out.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map(|v| v.parse().unwrap())
    }

    #[test]
    fn snapshots_are_counted_per_module_and_ages_vanish_without_one() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let status = |s: SnapshotSummary| Status {
            modules: vec![ModuleStatus {
                name: "app".into(),
                state: "PRIM".into(),
                snapshots: Some(s),
                ..ModuleStatus::default()
            }],
            ..Status::default()
        };
        let m = super::Metrics::new();
        let out = m.render(
            &status(SnapshotSummary {
                count: 2,
                oldest_ms: Some(now - 60_000),
                newest: Some("b".into()),
                newest_ms: Some(now - 1_000),
                broken: 1,
                failures: 3,
                inconsistent_since_ms: Some(now),
                last_consistent: Some("a".into()),
                rolling_back: None,
                schedule_failed: Some("then: pre_snapshot failed".into()),
                schedule_failures: 2,
            }),
            &[("app".into(), 8192)],
        );
        let v = |series: &str| value(&out, series);
        assert_eq!(v(r#"tandem_snapshots{module="app"}"#), Some(2.0), "{out}");
        assert_eq!(v(r#"tandem_snapshot_bytes{module="app"}"#), Some(8192.0));
        assert_eq!(v(r#"tandem_snapshot_broken{module="app"}"#), Some(1.0));
        assert_eq!(
            v(r#"tandem_snapshot_failures_total{module="app"}"#),
            Some(3.0)
        );
        assert_eq!(
            v(r#"tandem_snapshot_inconsistent{module="app"}"#),
            Some(1.0)
        );
        assert_eq!(
            v(r#"tandem_snapshot_schedule_failures_total{module="app"}"#),
            Some(2.0)
        );
        assert_eq!(
            v(r#"tandem_snapshot_schedule_failing{module="app"}"#),
            Some(1.0)
        );
        let oldest = v(r#"tandem_snapshot_oldest_age_seconds{module="app"}"#).unwrap();
        let newest = v(r#"tandem_snapshot_newest_age_seconds{module="app"}"#).unwrap();
        assert!((60.0..70.0).contains(&oldest), "{oldest}");
        assert!((1.0..11.0).contains(&newest), "{newest}");

        // All deleted, a failure more: the counter adds what is new, the
        // ages go, the bytes are what was listed.
        let out = m.render(
            &status(SnapshotSummary {
                failures: 4,
                ..SnapshotSummary::default()
            }),
            &[("app".into(), 0)],
        );
        let v = |series: &str| value(&out, series);
        assert_eq!(v(r#"tandem_snapshots{module="app"}"#), Some(0.0), "{out}");
        assert_eq!(
            v(r#"tandem_snapshot_failures_total{module="app"}"#),
            Some(4.0)
        );
        assert_eq!(
            v(r#"tandem_snapshot_inconsistent{module="app"}"#),
            Some(0.0)
        );
        assert_eq!(v(r#"tandem_snapshot_bytes{module="app"}"#), Some(0.0));
        assert!(
            !out.contains("tandem_snapshot_oldest_age_seconds{"),
            "{out}"
        );
        assert!(
            !out.contains("tandem_snapshot_newest_age_seconds{"),
            "{out}"
        );
    }

    #[test]
    fn a_total_that_starts_again_counts_from_zero() {
        let mut seen = Vec::new();
        assert_eq!(super::delta(&mut seen, "a", 5), 5);
        assert_eq!(super::delta(&mut seen, "a", 8), 3);
        assert_eq!(super::delta(&mut seen, "a", 2), 2, "a new replicator");
        assert_eq!(super::delta(&mut seen, "a", 4), 2);
        assert_eq!(super::delta(&mut seen, "b", 1), 1);
    }
}
