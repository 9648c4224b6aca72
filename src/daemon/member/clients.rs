//! How clients follow the serving node: the virtual addresses and what the
//! load balancers' health endpoint says.

use std::sync::atomic::Ordering;

use super::{Managed, ThisNode};
use crate::cluster::machine::State;
use crate::failover::vip::VipError;

impl Managed {
    /// What the load balancer's probes are told about this module.
    pub(super) fn health(&self) -> lb_health::ModuleHealth {
        let view = self.machine.view();
        lb_health::ModuleHealth {
            state: self.machine.state.name().to_string(),
            generation: view.generation.current,
            serving: self.machine.state.serving()
                && self.app_running
                && !self.fence.fenced.load(Ordering::SeqCst),
            uptodate: self.machine.state == State::Second && view.uptodate,
            lag: None,
        }
    }

    /// How clients reach the module here, for the status.
    pub(super) fn clients(&self, node: &ThisNode) -> String {
        match (&self.vips, &self.cfg.failover) {
            (Some(v), _) if v.taken().is_empty() => "virtual addresses not held here".into(),
            (Some(v), _) => format!(
                "holding {}",
                v.taken()
                    .iter()
                    .map(|t| t.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            (None, crate::config::Failover::Lb { port, tls }) => format!(
                "{}://*:{port}/primary/{} answers {}",
                if *tls { "https" } else { "http" },
                self.cfg.name,
                if node.health.serving(&self.cfg.name) {
                    200
                } else {
                    503
                }
            ),
            (None, _) => String::new(),
        }
    }

    /// Clients reach this node from now on: the virtual addresses are taken
    /// (the guard told first, so a crash right after gives them back).
    pub(super) fn take_clients(&mut self, node: &ThisNode) -> Result<(), VipError> {
        let Some(v) = &self.vips else {
            return Ok(());
        };
        let plan = v.plan()?;
        if let Some(g) = node.guard.lock().as_mut() {
            let mut duty = self.guard_duty(node);
            duty.vips = plan.clone();
            g.include(duty);
        }
        let v = self.vips.as_mut().expect("checked above");
        v.take(plan)?;
        let held: Vec<String> = v.taken().iter().map(|t| t.to_string()).collect();
        self.note(format!("virtual addresses taken: {}", held.join(", ")));
        Ok(())
    }

    /// Clients stop reaching this node: the probe says 503 and the virtual
    /// addresses go, before the application is stopped.
    pub(super) fn release_clients(&mut self, node: &ThisNode) {
        node.health.set_serving(&self.cfg.name, false);
        if let Some(v) = self.vips.as_mut()
            && !v.taken().is_empty()
        {
            let errors = v.release();
            self.note(if errors.is_empty() {
                "virtual addresses released".into()
            } else {
                format!("releasing virtual addresses: {}", errors.join("; "))
            });
        }
    }
}
