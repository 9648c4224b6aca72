//! Replication between the two nodes of a module. The wire layers follow the
//! data: [`frame`] turns bytes into checked messages and back, [`wire`] holds
//! the messages themselves, including the owned form of every mutation.

pub mod frame;
pub mod wire;
