//! The cluster configuration: a TOML file turned into validated [`Settings`], or into
//! every problem found, each naming its field and line.
//!
//! The replicated directories must exist on the node that runs them. To check a file
//! elsewhere (a workstation, CI), [`parse_with`] / [`load_with`] can skip that check;
//! `tandem config check --skip-dir-checks` does so.

mod decode;
mod error;
pub mod exclude;
mod net;
mod raw;
mod report;
mod settings;
mod summary;
mod validate;

use std::path::Path;

pub use error::{ConfigError, ConfigErrors};
pub use exclude::Exclude;
pub use net::{Host, HostPort, HttpUrl, IpPrefix};
pub use settings::{
    Ack, Announce, Check, Checker, Cluster, Compression, Daemon, Etcd, Failover, Heartbeat, Module,
    Node, ProcessMatch, Quorum, Replication, Scripts, Settings, SnapshotPolicy,
};
/// `500MiB`, `10GiB`, `2TB`, or a number of bytes.
pub use validate::size;

/// Whether the replicated directories are checked on disk.
#[derive(Clone, Copy)]
pub enum DirChecks {
    /// Not at all: a machine that is not a node (a workstation, CI).
    Off,
    /// Each must exist and be a directory. `is_stale_mount` tells a mount a
    /// killed daemon left behind (which the next daemon removes) from a
    /// directory that cannot be read; the mount layer knows how.
    On { is_stale_mount: fn(&Path) -> bool },
}

/// Reads, parses and validates the file.
pub fn load(path: &Path, checks: DirChecks) -> Result<Settings, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors::whole_file(
            path,
            format!("cannot read {}: {}", path.display(), io_reason(&e)),
        )
    })?;
    parse(&text, path, checks)
}

/// Parses and validates `text`; `origin` only names the file in errors.
pub fn parse(text: &str, origin: &Path, checks: DirChecks) -> Result<Settings, ConfigErrors> {
    let mut report = report::Report::new(text);
    let settings = decode::decode(text, &mut report)
        .and_then(|raw| validate::validate(&raw, &mut report, checks));
    match settings {
        Some(settings) if report.count() == 0 => Ok(settings),
        _ => Err(ConfigErrors {
            file: origin.to_path_buf(),
            errors: report.into_errors(),
        }),
    }
}

/// `No such file or directory`, without the `(os error 2)` that means nothing to operators.
fn io_reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.rfind(" (os error ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}
