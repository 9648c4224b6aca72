//! `[daemon]`: where the daemon keeps its state, socket and credentials.

use std::path::PathBuf;

use super::super::raw::{RawDaemon, Section, Str};
use super::super::report::Report;
use super::super::settings::Daemon;
use super::fields;

const STATE_DIR: &str = "/var/lib/tandem";
const SOCKET: &str = "/run/tandem/tandem.sock";
const TLS_DIR: &str = "/etc/tandem/tls";

pub(super) fn daemon(r: &mut Report, section: &Section<RawDaemon>) -> Option<Daemon> {
    let raw = section.value.as_ref()?;
    let mut path = |value: &Option<Str>, field: &str, default: &str| match value {
        Some(v) => fields::abs_path(r, v, field),
        None => Some(PathBuf::from(default)),
    };
    let state_dir = path(&raw.state_dir, "daemon.state_dir", STATE_DIR);
    let socket = path(&raw.socket, "daemon.socket", SOCKET);
    let tls_dir = path(&raw.tls_dir, "daemon.tls_dir", TLS_DIR);
    Some(Daemon {
        state_dir: state_dir?,
        socket: socket?,
        tls_dir: tls_dir?,
    })
}
