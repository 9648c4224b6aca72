//! The service manager's notify protocol (systemd `Type=notify`, see
//! `config/systemd/`): READY=1 once every module has its role, a STATUS= line
//! whenever a module's state changes, WATCHDOG=1 from the manager's own loop —
//! so a manager stuck anywhere stops the pings and is restarted — and
//! STOPPING=1 when a clean stop begins. A daemon started without
//! `NOTIFY_SOCKET` sends nothing.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

use crate::cluster::machine::State;

/// Whether a module has its role: serving (its directories mounted and its
/// application started before the state was taken), following, or stopped.
/// A module waiting has its role too once its boot wait is over and it has
/// waited `decide_within` (the heartbeat timeout) more: a wait that long is
/// the answer (no peer yet and a copy that may be stale, or an operator
/// needed), not a step on the way to serving or following.
pub fn settled(state: State, booting: bool, waited: Duration, decide_within: Duration) -> bool {
    state != State::Wait || (!booting && waited >= decide_within)
}

/// The STATUS= line: each module and its state, as `tandem status` names them.
pub fn status_line(modules: &[(String, State)]) -> String {
    modules
        .iter()
        .map(|(name, state)| format!("{name} {}", state.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

pub struct Notifier {
    on: bool,
    decide_within: Duration,
    /// Since when each waiting module has waited, its boot wait over.
    waiting: HashMap<String, Instant>,
    ready: bool,
    status: String,
    /// Half the watchdog's period, as systemd advises.
    ping_every: Option<Duration>,
    pinged: Option<Instant>,
}

impl Notifier {
    pub fn from_env(decide_within: Duration) -> Self {
        let on = std::env::var_os("NOTIFY_SOCKET").is_some();
        Notifier {
            on,
            decide_within,
            waiting: HashMap::new(),
            ready: false,
            status: String::new(),
            ping_every: sd_notify::watchdog_enabled().filter(|_| on).map(|d| d / 2),
            pinged: None,
        }
    }

    /// Called on every turn of the manager's loop, after its actions, with
    /// each module's state and whether its machine still waits out its boot.
    pub fn turn(&mut self, modules: &[(String, State, bool)]) {
        if !self.on {
            return;
        }
        let mut say = Vec::new();
        let states: Vec<(String, State)> =
            modules.iter().map(|(n, s, _)| (n.clone(), *s)).collect();
        let status = status_line(&states);
        if status != self.status {
            self.status = status;
            say.push(NotifyState::Status(&self.status));
        }
        let now = Instant::now();
        let mut all = true;
        for (name, state, booting) in modules {
            let waited = if *state == State::Wait && !booting {
                now.duration_since(*self.waiting.entry(name.clone()).or_insert(now))
            } else {
                self.waiting.remove(name);
                Duration::ZERO
            };
            all &= settled(*state, *booting, waited, self.decide_within);
        }
        if !self.ready && all {
            self.ready = true;
            say.push(NotifyState::Ready);
        }
        if let Some(every) = self.ping_every
            && self.pinged.is_none_or(|t| t.elapsed() >= every)
        {
            self.pinged = Some(Instant::now());
            say.push(NotifyState::Watchdog);
        }
        if !say.is_empty()
            && let Err(e) = sd_notify::notify(&say)
        {
            tracing::warn!("telling the service manager: {e}");
        }
    }

    /// A clean stop begins: the service manager waits for it instead of
    /// taking the daemon's exit for a failure.
    pub fn stopping(&mut self) {
        if self.on {
            let _ = sd_notify::notify(&[NotifyState::Stopping]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_module_waiting_is_settled_once_it_has_waited_a_timeout_after_its_boot_wait() {
        let t = Duration::from_millis(500);
        for s in [State::Stop, State::Second, State::Prim, State::Alone] {
            assert!(settled(s, true, Duration::ZERO, t), "{s:?}");
        }
        assert!(!settled(State::Wait, true, Duration::from_secs(9), t));
        assert!(!settled(State::Wait, false, Duration::from_millis(499), t));
        assert!(settled(State::Wait, false, t, t));
    }

    #[test]
    fn the_status_line_names_each_module_and_its_state() {
        let m = [("web".to_string(), State::Prim), ("db".into(), State::Wait)];
        assert_eq!(status_line(&m), "web PRIM, db WAIT");
        assert_eq!(status_line(&[]), "");
    }
}
