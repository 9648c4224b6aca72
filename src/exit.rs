//! The exit statuses of every `tandem` command and of the daemon, in one
//! place: scripts and service managers act on them (systemd's unit does not
//! restart a daemon that exited with [`EXIT_USAGE`]).

/// Something failed: the peer, a mount, a script, a difference found.
pub const EXIT_FAILURE: u8 = 1;
/// The command line or the configuration is wrong: trying again will not help.
pub const EXIT_USAGE: u8 = 2;
