//! Replication between the two nodes of a module. The wire layers follow the
//! data: [`frame`] turns bytes into checked messages and back, [`wire`] holds
//! the messages themselves, including the owned form of every mutation, and
//! [`tls`] the cluster credentials and mutually authenticated connections.

pub mod frame;
pub mod tls;
pub mod wire;
