//! `tandem snapshot`: this node's snapshots of a module, taken where the
//! module's changes are ordered (the primary's stream, the SECOND's
//! applier), restored, compared and deleted by this node alone.

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::control::Shared;
use crate::changelog::ChangeLog;
use crate::config::SnapshotPolicy;
use crate::control::{Response, SnapshotOp};
use crate::daemon::replicas::Replica;
use crate::failover::scripts;
use crate::replication::snapshot::{Kind, New, Snapshot, Snapshots, retention};

/// A module's snapshots with what reading them needs.
pub(super) struct Snapped {
    pub(super) name: String,
    pub(super) snaps: Arc<Snapshots>,
    /// The real directories (opened before anything was mounted over them).
    pub(super) roots: Vec<OwnedFd>,
    /// Their change logs, told when the copy changed behind them.
    pub(super) logs: Vec<Arc<dyn ChangeLog>>,
    /// This node's schedule, retention and scripts for them.
    pub(super) policy: SnapshotPolicy,
    /// What the pre and post scripts are run with, and for how long.
    pub(super) script: (scripts::Context, Duration),
    /// The last scheduled snapshot that failed, and how many did.
    pub(super) schedule: Mutex<(Option<String>, u64)>,
}

fn ok(message: String, data: Option<serde_json::Value>) -> Response {
    Response {
        ok: true,
        messages: vec![message],
        data,
        ..Response::default()
    }
}

fn json<T: serde::Serialize>(v: &T) -> Option<serde_json::Value> {
    Some(serde_json::to_value(v).expect("serialisable"))
}

fn shown(s: &Snapshot) -> String {
    match s.position {
        Some(p) => format!("{} (stream position {p})", s.name),
        None => s.name.clone(),
    }
}

impl Shared {
    pub(super) fn snapshot(&self, module: String, op: SnapshotOp) -> Response {
        let Some(m) = self.snapped.iter().find(|s| s.name == module) else {
            return Response::error(format!("no module named {module:?}"));
        };
        let node = &self.relay.me;
        let roots: Vec<_> = m.roots.iter().map(|r| r.as_fd()).collect();
        let result = match op {
            SnapshotOp::Create { name } => self
                .take(m, name, Kind::Manual)
                .map_err(|e| match e {
                    TakeError::Store(e) => e,
                    TakeError::Script(e) => crate::replication::snapshot::SnapshotError::Target {
                        path: m.policy.pre_snapshot.clone().unwrap_or_default(),
                        why: e.to_string(),
                    },
                })
                .map(|s| {
                    ok(
                        format!(
                            "module {module}: snapshot {} taken on {node} ({}{})",
                            shown(&s),
                            s.role,
                            if s.consistent {
                                ""
                            } else {
                                "; INCONSISTENT: taken during a resync"
                            }
                        ),
                        json(&s),
                    )
                }),
            SnapshotOp::List {} => m.snaps.list().map(|l| {
                ok(
                    format!("module {module}: {} snapshots on {node}", l.len()),
                    json(&l),
                )
            }),
            SnapshotOp::Diff { from, to } => {
                m.snaps
                    .diff(&from, to.as_deref(), &roots)
                    .map(|(a, b, changes)| {
                        let upto = b.map_or("now".to_string(), |b| b.name);
                        ok(
                            format!(
                                "module {module} on {node}: {} changes from {} to {upto}",
                                changes.len(),
                                a.name
                            ),
                            json(&changes),
                        )
                    })
            }
            SnapshotOp::Restore { name, to } => {
                let t = Instant::now();
                m.snaps
                    .restore(&name, &roots, &PathBuf::from(&to))
                    .map(|(s, r)| {
                        ok(
                            format!(
                                "module {module}: snapshot {} restored into {} on {node}: {} files, \
                                 {} directories, {} others, {} bytes in {:.2} s",
                                s.name,
                                r.path.display(),
                                r.files,
                                r.dirs,
                                r.others,
                                r.bytes,
                                t.elapsed().as_secs_f64()
                            ),
                            json(&r),
                        )
                    })
            }
            SnapshotOp::Delete { name } => m.snaps.delete(&name).map(|s| {
                ok(
                    format!("module {module}: snapshot {} deleted on {node}", s.name),
                    json(&s),
                )
            }),
            SnapshotOp::Rollback { name } => {
                return self.rollback(m, &name, &roots).unwrap_or_else(|e| e);
            }
        };
        result.unwrap_or_else(|e| Response::error(format!("module {module}: {e}")))
    }

    /// Brings this node's copy back to snapshot `name`: only while the module
    /// is stopped here (nothing else may change the directories meanwhile).
    fn rollback(
        &self,
        m: &Snapped,
        name: &str,
        roots: &[std::os::fd::BorrowedFd<'_>],
    ) -> Result<Response, Response> {
        let module = &m.name;
        let state = self
            .status
            .lock()
            .modules
            .iter()
            .find(|s| s.name == *module)
            .and_then(|s| s.cluster.as_ref().map(|c| c.state.clone()))
            .unwrap_or_default();
        let active = self
            .replicas
            .lock()
            .iter()
            .any(|(n, r)| n == module && r.is_some());
        if state != "STOP" || active {
            return Err(Response::error(format!(
                "module {module} is {state} on {}: a rollback changes the directories under \
                 the application and the replication; stop the module on this node first \
                 (`tandem stop {module}`)",
                self.relay.me
            )));
        }
        // Before the first change: whichever way the next resync goes, it
        // compares the trees by content, also after a rollback cut short.
        for log in &m.logs {
            log.set_compare_needed(true)
                .map_err(|e| Response::error(format!("module {module}: change log: {e}")))?;
        }
        let t = Instant::now();
        let (s, r) = crate::replication::rollback::rollback(&m.snaps, name, roots)
            .map_err(|e| Response::error(format!("module {module}: {e}")))?;
        let msg = format!(
            "module {module}: {} rolled back to snapshot {} in {:.2} s: {} names removed, {} made, \
             {} rewritten, {} bytes written back; the next resync compares both copies by \
             content (`tandem start {module}`; `tandem prim --force {module}` to serve this copy)",
            self.relay.me,
            shown(&s),
            t.elapsed().as_secs_f64(),
            r.removed,
            r.made,
            r.rewritten,
            r.bytes
        );
        tracing::warn!(module = %module, "{msg}");
        Ok(ok(msg, json(&r)))
    }

    /// Takes a snapshot where the module's changes are ordered on this node;
    /// an operator's or a scheduled one on the serving node between the
    /// module's `pre_snapshot` and `post_snapshot` scripts.
    pub(super) fn take(
        &self,
        m: &Snapped,
        name: Option<String>,
        kind: Kind,
    ) -> Result<Snapshot, TakeError> {
        let replica = self
            .replicas
            .lock()
            .iter()
            .find(|(n, _)| *n == m.name)
            .and_then(|(_, r)| r.clone());
        let serving = matches!(replica, Some(Replica::Primary(..)));
        let (ctx, timeout) = &m.script;
        if serving && let Some(pre) = &m.policy.pre_snapshot {
            scripts::run("pre_snapshot", pre, ctx, *timeout).map_err(TakeError::Script)?;
        }
        let taken = self.take_now(m, name, kind, replica);
        if serving && let Some(post) = &m.policy.post_snapshot {
            // After a failed take too: the application waits for it.
            if let Err(e) = scripts::run("post_snapshot", post, ctx, *timeout) {
                tracing::error!(module = %m.name, "{e}");
            }
        }
        taken.map_err(TakeError::Store)
    }

    fn take_now(
        &self,
        m: &Snapped,
        name: Option<String>,
        kind: Kind,
        replica: Option<Replica>,
    ) -> crate::replication::snapshot::Result<Snapshot> {
        let state = self
            .status
            .lock()
            .modules
            .iter()
            .find(|s| s.name == m.name)
            .and_then(|s| {
                s.cluster
                    .as_ref()
                    .map(|c| (c.state.clone(), c.generation.clone()))
            });
        let (state, generation) = state.unzip();
        let consistent = m.snaps.resyncing().is_none();
        let new = |role: &str, position| New {
            name: name.clone(),
            kind,
            role: role.to_string(),
            position,
            generation: generation.clone(),
            consistent,
        };
        match replica {
            Some(Replica::Primary(rep, _)) => {
                rep.at_cut(|pos| m.snaps.create(new("primary", Some(pos))))
            }
            Some(Replica::Secondary(sm)) => {
                sm.at_cut(|pos| m.snaps.create(new("secondary", Some(pos))))
            }
            // Nothing changes the module here now.
            None => m.snaps.create(new(
                &state.unwrap_or_else(|| "stopped".into()).to_lowercase(),
                None,
            )),
        }
    }

    /// One round of the schedule and the retention of every module.
    fn keep_schedule(&self, now_ms: u64) {
        for m in &self.snapped {
            let Ok(list) = m.snaps.list() else {
                continue;
            };
            if let Some(every) = m.policy.every {
                let last = list
                    .iter()
                    .filter(|l| l.snapshot.kind == Kind::Scheduled)
                    .map(|l| l.snapshot.created_ms)
                    .max()
                    .unwrap_or(0);
                if now_ms.saturating_sub(last) >= every.as_millis() as u64 {
                    self.scheduled(m, now_ms);
                }
            }
            self.retain(m, now_ms);
        }
    }

    fn scheduled(&self, m: &Snapped, now_ms: u64) {
        if m.snaps.resyncing().is_some() {
            // Not a state of the primary: the one before the resync stands.
            return;
        }
        let name = format!(
            "scheduled-{}",
            crate::clock::utc(now_ms)
                .replace(['-', ':'], "")
                .trim_end_matches('Z')
                .split('.')
                .next()
                .unwrap_or_default()
        );
        match self.take(m, Some(name), Kind::Scheduled) {
            Ok(s) => {
                tracing::info!(module = %m.name, "scheduled snapshot {} taken", s.name);
                m.schedule.lock().0 = None;
            }
            Err(e) => {
                tracing::error!(module = %m.name, "ALERT: scheduled snapshot failed: {e}");
                let mut st = m.schedule.lock();
                st.0 = Some(format!("{}: {e}", crate::clock::utc(now_ms)));
                st.1 += 1;
            }
        }
    }

    /// This node's retention: scheduled snapshots past their counts, then
    /// the oldest automatic ones while over the byte budget.
    fn retain(&self, m: &Snapped, now_ms: u64) {
        let Ok(list) = m.snaps.list() else {
            return;
        };
        let scheduled: Vec<(u64, String)> = list
            .iter()
            .filter(|l| l.snapshot.kind == Kind::Scheduled)
            .map(|l| (l.snapshot.created_ms, l.snapshot.name.clone()))
            .collect();
        let p = &m.policy;
        for name in retention::expired(
            &scheduled,
            now_ms,
            p.keep_hourly,
            p.keep_daily,
            p.keep_weekly,
        ) {
            match m.snaps.delete(&name) {
                Ok(_) => tracing::info!(module = %m.name, "scheduled snapshot {name} expired"),
                Err(e) => tracing::error!(module = %m.name, "expiring snapshot {name}: {e}"),
            }
        }
        let taken: Vec<(u64, String)> = list
            .iter()
            .filter(|l| l.snapshot.kind == Kind::BeforeResync)
            .map(|l| (l.snapshot.created_ms, l.snapshot.name.clone()))
            .collect();
        for name in retention::stale_before_resync(
            &taken,
            m.snaps.resync_ended_ms(),
            m.snaps.resyncing().is_some(),
            now_ms,
            p.keep_before_resync_for.as_millis() as u64,
        ) {
            match m.snaps.delete(&name) {
                Ok(_) => tracing::info!(
                    module = %m.name,
                    "snapshot {name} expired ({} s after its resync ended)",
                    p.keep_before_resync_for.as_secs()
                ),
                Err(e) => tracing::error!(module = %m.name, "expiring snapshot {name}: {e}"),
            }
        }
        let Some(budget) = p.budget else {
            return;
        };
        // The copy's last consistent state stays while a resync runs.
        let protect = m.snaps.resyncing().and_then(|r| r.last_consistent);
        while let Ok(list) = m.snaps.list() {
            let Some(name) = retention::over_budget(&list, budget, protect.as_deref()) else {
                let held: u64 = list.iter().map(|l| l.bytes).sum();
                if held > budget {
                    tracing::warn!(
                        module = %m.name,
                        "snapshots hold {held} bytes, over the budget of {budget}: only the \
                         operator's are left (`tandem snapshot delete`)"
                    );
                }
                return;
            };
            match m.snaps.delete(&name) {
                Ok(_) => {
                    tracing::warn!(module = %m.name, "snapshot {name} deleted: over the budget of {budget} bytes")
                }
                Err(e) => {
                    tracing::error!(module = %m.name, "deleting snapshot {name}: {e}");
                    return;
                }
            }
        }
    }
}

/// Why a snapshot was not taken.
#[derive(Debug, thiserror::Error)]
pub(super) enum TakeError {
    #[error(transparent)]
    Script(scripts::ScriptError),
    #[error(transparent)]
    Store(crate::replication::snapshot::SnapshotError),
}

/// Runs every module's schedule and retention, every second, until `stop`.
pub(super) fn start_scheduler(
    shared: Arc<Shared>,
    stop: &crate::stop::Stop,
) -> std::io::Result<()> {
    let s = stop.clone();
    stop.thread("snapshots", move || {
        while !s.sleep(Duration::from_secs(1)) {
            for m in &shared.snapped {
                m.snaps.settle(false);
            }
            shared.keep_schedule(crate::cluster::heartbeat::now_ms());
        }
    })
}
