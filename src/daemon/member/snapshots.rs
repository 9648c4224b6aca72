//! `tandem snapshot`: this node's snapshots of a module, taken where the
//! module's changes are ordered (the primary's stream, the SECOND's
//! applier), restored, compared and deleted by this node alone.

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use super::control::Shared;
use crate::changelog::ChangeLog;
use crate::control::{Response, SnapshotOp};
use crate::daemon::replicas::Replica;
use crate::replication::snapshot::{Kind, New, Snapshot, Snapshots};

/// A module's snapshots with what reading them needs.
pub(super) struct Snapped {
    pub(super) name: String,
    pub(super) snaps: Arc<Snapshots>,
    /// The real directories (opened before anything was mounted over them).
    pub(super) roots: Vec<OwnedFd>,
    /// Their change logs, told when the copy changed behind them.
    pub(super) logs: Vec<Arc<dyn ChangeLog>>,
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
            SnapshotOp::Create { name } => self.take(m, name, Kind::Manual).map(|s| {
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
        let (s, r) = m
            .snaps
            .rollback(name, roots)
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

    /// Takes a snapshot where the module's changes are ordered on this node.
    pub(super) fn take(
        &self,
        m: &Snapped,
        name: Option<String>,
        kind: Kind,
    ) -> crate::replication::snapshot::Result<Snapshot> {
        let replica = self
            .replicas
            .lock()
            .iter()
            .find(|(n, _)| *n == m.name)
            .and_then(|(_, r)| r.clone());
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
}
