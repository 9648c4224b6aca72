//! The cluster manager: heartbeats between the nodes and the per-module state
//! machine that decides which node serves.

pub mod heartbeat;
pub mod machine;
pub mod ping;
pub mod witness;
