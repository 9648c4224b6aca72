//! The stop signals every long-running verb obeys. Installed before anything
//! is mounted, so a SIGTERM that arrives during start-up unmounts cleanly
//! instead of killing the process and leaving a dead mount behind.

use tokio::signal::unix::{Signal, SignalKind, signal};

pub struct StopSignals {
    term: Signal,
    int: Signal,
}

impl StopSignals {
    /// Must run inside a tokio runtime.
    pub fn install() -> std::io::Result<Self> {
        Ok(StopSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Waits for the next SIGTERM or SIGINT and names it.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "interrupted",
        }
    }
}
