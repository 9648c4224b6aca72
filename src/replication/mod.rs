//! Replication between the two nodes of a module. The wire layers follow the
//! data: [`frame`] turns bytes into checked messages and back, [`wire`] holds
//! the messages themselves, including the owned form of every mutation, and
//! [`tls`] the cluster credentials and mutually authenticated connections.
//! [`framed`] carries frames over a connection and checks the introductions;
//! [`channel`] is the stream once it runs on the threads that use it;
//! [`errors`] says how each of those fails. [`primary`] is the mount's sink
//! on the serving node and [`session`] its connection to the peer;
//! [`secondary`] accepts that connection and [`applier`] applies the stream
//! ([`keep_ahead`] keeps a resync's before-images by the run);
//! [`resync`] ships what changed while the peer was away, as
//! [`entry`] states and byte ranges ([`replay`] says which moved files
//! travel whole), with [`warm`] looking up the next files on both nodes.
//! [`verify`] compares both trees by [`manifest`]s of content-defined chunks.

pub mod activity;
pub mod applier;
pub mod aside;
pub mod channel;
pub mod dir;
pub mod entry;
pub mod errors;
pub mod frame;
pub mod framed;
pub mod keep_ahead;
pub mod manifest;
pub mod primary;
pub mod relay;
pub mod release;
pub mod replay;
pub mod resync;
pub mod rollback;
pub mod secondary;
pub mod session;
pub mod snapshot;
#[cfg(test)]
mod snapshot_model;
pub mod status;
pub mod steps;
pub mod syncer;
pub mod tls;
pub mod verify;
pub mod warm;
pub mod wire;
