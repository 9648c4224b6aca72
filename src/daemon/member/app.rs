//! The application: its scripts, restarting it where it runs, the budget of
//! restarts its checkers allow, and the replication facts the machine
//! decides on.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Managed, ThisNode};
use crate::cluster::machine::{Event, Hook};
use crate::daemon::replicas::Replica;

/// The application's health checks, as the manager keeps them.
pub(super) struct Checks {
    /// Not suspended by `tandem checker MODULE off`.
    pub on: bool,
    /// Read by the checker threads: check now (served here, application up).
    pub active: Arc<std::sync::atomic::AtomicBool>,
    /// Recent failures, for the restart budget.
    pub failures: VecDeque<Instant>,
    /// The application (re)started then: earlier failures are about the
    /// process that was replaced.
    pub from: Instant,
    /// In maintenance: when a failure last went to the log, with how many
    /// came since (nothing restarts the application, so its checks fail
    /// every interval: one line a minute says it).
    pub noted: Option<(Instant, u64)>,
}

impl Default for Checks {
    fn default() -> Self {
        Checks {
            on: true,
            active: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            failures: VecDeque::new(),
            from: Instant::now(),
            noted: None,
        }
    }
}

impl Managed {
    /// Replication facts the machine decides on, fed when they change.
    pub(super) fn observe(&mut self, node: &ThisNode) {
        let up = match &self.replica {
            Some(Replica::Secondary(sm)) => Some(sm.uptodate()),
            _ => None,
        };
        if up == Some(true) && self.fresh {
            // The first completed sync: this copy now counts.
            self.fresh = false;
            self.save_role(self.machine.state);
        }
        if let Some(g) = self.read_generation()
            && *self.machine.generation() != g
        {
            self.feed(node, Event::Generation(g));
        }
        if let Some(up) = up
            && self.machine.synced() != up
        {
            self.feed(node, Event::Synced(up));
        }
    }
}

/// The application's scripts, as `[module.scripts]` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Script {
    Prestart,
    StartPrim,
    StopPrim,
    StartBoth,
    StopBoth,
    Poststop,
}

impl Script {
    pub(super) fn name(self) -> &'static str {
        match self {
            Script::Prestart => "prestart",
            Script::StartPrim => "start_prim",
            Script::StopPrim => "stop_prim",
            Script::StartBoth => "start_both",
            Script::StopBoth => "stop_both",
            Script::Poststop => "poststop",
        }
    }

    pub(super) fn path(self, s: &crate::config::Scripts) -> &Option<PathBuf> {
        match self {
            Script::Prestart => &s.prestart,
            Script::StartPrim => &s.start_prim,
            Script::StopPrim => &s.stop_prim,
            Script::StartBoth => &s.start_both,
            Script::StopBoth => &s.stop_both,
            Script::Poststop => &s.poststop,
        }
    }
}

impl From<Hook> for Script {
    fn from(h: Hook) -> Script {
        match h {
            Hook::StartBoth => Script::StartBoth,
            Hook::StopBoth => Script::StopBoth,
            Hook::Poststop => Script::Poststop,
        }
    }
}

/// What one more check failure leads to.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Budget {
    /// Restart in place: the `n`th restart within the window.
    Restart(u32),
    /// `n` failures within the window, more than the restarts allowed: the
    /// module goes to the other node (and the count starts again).
    FailOver(u32),
}

/// Counts a check failure at `now` among the `failures` still within
/// `window`, and says whether a restart is left.
pub(super) fn budget(
    failures: &mut VecDeque<Instant>,
    now: Instant,
    restarts: u32,
    window: Duration,
) -> Budget {
    failures.retain(|t| now.duration_since(*t) < window);
    failures.push_back(now);
    let n = failures.len() as u32;
    if n <= restarts {
        Budget::Restart(n)
    } else {
        failures.clear();
        Budget::FailOver(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_restart_in_place_until_the_budget_is_spent_then_fail_over() {
        let t0 = Instant::now();
        let w = Duration::from_secs(300);
        let mut f = VecDeque::new();
        assert_eq!(budget(&mut f, t0, 2, w), Budget::Restart(1));
        assert_eq!(
            budget(&mut f, t0 + Duration::from_secs(1), 2, w),
            Budget::Restart(2)
        );
        assert_eq!(
            budget(&mut f, t0 + Duration::from_secs(2), 2, w),
            Budget::FailOver(3)
        );
        // Counted afresh after a failover.
        assert_eq!(
            budget(&mut f, t0 + Duration::from_secs(3), 2, w),
            Budget::Restart(1)
        );
    }

    #[test]
    fn failures_older_than_the_window_are_forgotten() {
        let t0 = Instant::now();
        let w = Duration::from_secs(10);
        let mut f = VecDeque::new();
        assert_eq!(budget(&mut f, t0, 1, w), Budget::Restart(1));
        assert_eq!(
            budget(&mut f, t0 + Duration::from_secs(11), 1, w),
            Budget::Restart(1)
        );
        assert_eq!(
            budget(&mut f, t0 + Duration::from_secs(12), 1, w),
            Budget::FailOver(2)
        );
    }

    #[test]
    fn no_restarts_allowed_fails_over_at_once() {
        let mut f = VecDeque::new();
        let w = Duration::from_secs(1);
        assert_eq!(budget(&mut f, Instant::now(), 0, w), Budget::FailOver(1));
    }
}
