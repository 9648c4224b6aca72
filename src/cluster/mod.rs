//! The cluster manager: heartbeats between the nodes and the per-module state
//! machine that decides which node serves.

pub mod etcd;
pub mod heartbeat;
pub mod machine;
pub mod ping;
pub mod witness;

/// What a node knows of its leases, whoever grants them (the witness or
/// etcd): the clients fill it in, the cluster manager reads it.
pub struct Book {
    pub state: parking_lot::Mutex<std::collections::HashMap<String, Held>>,
    pub last_answer: parking_lot::Mutex<Option<std::time::Instant>>,
    /// Between two renewals.
    pub interval: std::time::Duration,
}

#[derive(Default)]
pub struct Held {
    pub want: bool,
    pub generation: u64,
    pub serving: bool,
    /// Relied on until then (local clock), if held.
    pub until: Option<std::time::Instant>,
    pub holder: Option<String>,
    pub newest: u64,
}

impl Book {
    pub fn new(interval: std::time::Duration) -> Self {
        Book {
            state: Default::default(),
            last_answer: Default::default(),
            interval,
        }
    }
}

/// A lease per module from a third party (`tandem witness` or etcd): a node
/// cut off from its peer serves only while it holds the module's lease.
pub trait LeaseQuorum: Send + Sync {
    fn book(&self) -> &Book;
    /// "witness" or "etcd", for the status.
    fn kind(&self) -> &'static str;

    /// The third party's release of tandem, when it says (a witness does).
    fn release(&self) -> Option<String> {
        None
    }

    /// Whether this node wants the module's lease (serving, or ready to
    /// serve), and the generation it would serve.
    fn want(&self, module: &str, want: bool, generation: u64, serving: bool) {
        let mut s = self.book().state.lock();
        let h = s.entry(module.to_string()).or_default();
        h.want = want;
        h.generation = generation;
        h.serving = serving;
        if !want {
            h.until = None;
        }
    }

    /// Holds the lease now (conservatively: it stops relying on it before
    /// the third party would give it to the other node).
    fn holds(&self, module: &str) -> bool {
        self.book()
            .state
            .lock()
            .get(module)
            .and_then(|h| h.until)
            .is_some_and(|t| t > std::time::Instant::now())
    }

    /// The newest generation served with the lease (0: none known).
    fn newest(&self, module: &str) -> u64 {
        self.book().state.lock().get(module).map_or(0, |h| h.newest)
    }

    /// Who holds the lease, as last heard.
    fn holder(&self, module: &str) -> Option<String> {
        self.book()
            .state
            .lock()
            .get(module)
            .and_then(|h| h.holder.clone())
    }

    /// The third party answered lately (within three renewals).
    fn answering(&self) -> bool {
        let b = self.book();
        b.last_answer
            .lock()
            .is_some_and(|t| t.elapsed() < 3 * b.interval)
    }
}
