//! The fencer: a thread of its own that carries out the machine's standing
//! decision to fence a serving module (`Machine::fence_armed`) the moment
//! its node is found cut off — neither its peer nor its quorum answers (its
//! lease ran out, no address answers) — within a fraction of the heartbeat
//! interval, well before the peer may take over, and whatever the manager's
//! thread is doing then (unmounting, flushing to the peer, copying data
//! aside for another module). The health endpoint says 503, the virtual
//! addresses go, and the replication refuses every change (so nothing is
//! acknowledged alone). The machine then hears `Event::Fenced` and steps
//! down as usual; promoting re-arms the fence.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::failover::vip::VipFence;
use crate::replication::primary::Replicator;

/// What the fencer may undo for one module, and whether it may: kept up
/// to date by the manager from the machine's decision.
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
