//! The cluster manager: heartbeats between the nodes and the per-module state
//! machine that decides which node serves.

pub mod etcd;
pub mod heartbeat;
pub mod machine;
pub mod ping;
pub mod witness;

/// A lease per module from a third party (`tandem witness` or etcd): a node
/// cut off from its peer serves only while it holds the module's lease.
pub trait LeaseQuorum: Send + Sync {
    /// Whether this node wants the module's lease (serving, or ready to
    /// serve), and the generation it would serve.
    fn want(&self, module: &str, want: bool, generation: u64, serving: bool);
    /// Holds the lease now (conservatively: it stops relying on it before
    /// the third party would give it to the other node).
    fn holds(&self, module: &str) -> bool;
    /// The newest generation served with the lease (0: none known).
    fn newest(&self, module: &str) -> u64;
    /// Who holds the lease, as last heard.
    fn holder(&self, module: &str) -> Option<String>;
    /// The third party answered lately.
    fn answering(&self) -> bool;
    /// "witness" or "etcd", for the status.
    fn kind(&self) -> &'static str;
}
