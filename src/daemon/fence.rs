//! The fencer: a thread of its own that stops a cut-off node from serving
//! when its cluster manager cannot do it in time — the manager runs the
//! application's scripts, and waits for them, on its one thread. A serving
//! module whose node hears neither its peer nor its quorum (its lease ran
//! out, no address answers) is fenced within a fraction of the heartbeat
//! interval, well before the peer may take over: the health endpoint says
//! 503, the virtual addresses go, and the replication refuses every change
//! (so nothing is acknowledged alone). The manager then stops the
//! application and steps down as usual, and re-arms the fence when the
//! module serves again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::failover::vip::VipFence;
use crate::replication::primary::Replicator;

/// What the fencer may undo for one module, kept up to date by the manager.
#[derive(Default)]
pub struct Fence {
    pub module: String,
    /// The module serves here and its peer did not step down for it: a cut
    /// from both the peer and the quorum means the peer may take over.
    pub armed: AtomicBool,
    /// Fenced since the module last started serving.
    pub fenced: AtomicBool,
    pub rep: Mutex<Option<Arc<Replicator>>>,
    pub vips: Mutex<Option<VipFence>>,
}

impl Fence {
    pub fn new(module: &str) -> Arc<Fence> {
        Arc::new(Fence {
            module: module.to_string(),
            ..Fence::default()
        })
    }

    /// Stops serving at once, outside the manager; true the first time.
    pub fn fence(&self, health: &lb_health::Health, why: &str) -> bool {
        if self.fenced.swap(true, Ordering::SeqCst) {
            return false;
        }
        health.set_serving(&self.module, false);
        if let Some(v) = self.vips.lock().as_ref() {
            for e in v.drop_all() {
                tracing::error!(module = %self.module, "fenced: {e}");
            }
        }
        if let Some(rep) = self.rep.lock().as_ref() {
            rep.fence(why);
        }
        tracing::warn!(module = %self.module, "fenced: {why}");
        true
    }
}

/// Whether this node may serve without its peer now (holds the module's
/// lease, an address answers).
pub type QuorumOk = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Watches every `interval / 4` until `stop`. `quiet` says whether the
/// peer has been silent on every path for two heartbeat intervals.
pub fn spawn(
    fences: Vec<Arc<Fence>>,
    quorum_ok: QuorumOk,
    quiet: Arc<dyn Fn() -> bool + Send + Sync>,
    health: Arc<lb_health::Health>,
    interval: Duration,
    stop: &crate::stop::Stop,
) -> std::io::Result<()> {
    let every = (interval / 4).clamp(Duration::from_millis(5), Duration::from_millis(50));
    let stop2 = stop.clone();
    stop.thread("fencer", move || {
        loop {
            let t0 = Instant::now();
            for f in &fences {
                if f.armed.load(Ordering::SeqCst)
                    && !f.fenced.load(Ordering::SeqCst)
                    && !quorum_ok(&f.module)
                    && quiet()
                {
                    f.fence(
                        &health,
                        "neither the peer nor the quorum answers: stopped serving",
                    );
                }
            }
            if stop2.sleep(every.saturating_sub(t0.elapsed())) {
                return;
            }
        }
    })
}
