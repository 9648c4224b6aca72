//! When the peer counts as gone: no heartbeat on any path for the timeout.

use std::time::{Duration, Instant};

/// Whether every path has been silent for `timeout` at `now` (`heard`: when
/// each path last carried a heartbeat; `None`: never).
pub(super) fn silent(heard: &[Option<Instant>], timeout: Duration, now: Instant) -> bool {
    heard
        .iter()
        .all(|h| h.is_none_or(|t| now.saturating_duration_since(t) >= timeout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peer_is_silent_only_when_every_path_is() {
        let t0 = Instant::now();
        let timeout = Duration::from_millis(500);
        let at = |ms| t0 + Duration::from_millis(ms);
        // One path still heard: not silent.
        assert!(!silent(&[Some(t0), Some(at(400))], timeout, at(600)));
        // Both older than the timeout.
        assert!(silent(&[Some(t0), Some(at(100))], timeout, at(600)));
        // Exactly the timeout counts as silent.
        assert!(silent(&[Some(t0)], timeout, at(500)));
        assert!(!silent(&[Some(t0)], timeout, at(499)));
        // Never heard on any path.
        assert!(silent(&[None, None], timeout, t0));
        assert!(!silent(&[None, Some(at(200))], timeout, at(300)));
    }
}
