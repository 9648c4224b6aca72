//! tandem: two-node high availability for one application.
//!
//! Layers, each depending only on those above it in this list:
//! - [`config`]: the TOML configuration, validated into [`config::Settings`];
//! - [`fs`]: the FUSE layer mounted over each replicated directory, which turns
//!   every mutating call into a [`fs::Mutation`] for a sink;
//! - [`replication`]: the node-to-node protocol (frames, messages);
//! - [`cluster`]: heartbeats and the per-module state machine (who serves);
//! - [`daemon`]: runs the modules of a configuration (mounts, control socket);
//! - [`cli`]: the `tandem` command line.
//!
//! Beside them, [`stop`]: the one stop every thread and task of the daemon
//! is started with, waits on, and is joined by at shutdown.

pub mod api;
pub mod changelog;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod control;
pub mod daemon;
pub mod durable;
pub mod exit;
pub mod failover;
pub mod fs;
pub mod metrics;
pub mod replication;
pub mod signals;
pub mod sock;
pub mod stop;
pub mod versions;
pub mod webclient;
