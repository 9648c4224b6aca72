//! Lets go of open files on a thread of its own. Closing the last
//! descriptor of a removed file frees its blocks then, and on a file system
//! mounted with `discard` that waits for the disk to discard each of them: a
//! resync that removes a few hundred files would wait that long on the
//! applying thread.
//!
//! The thread is shared by the process, started when there is something to
//! let go and gone after a spell without.

use std::sync::{OnceLock, mpsc};
use std::time::Duration;

use parking_lot::Mutex;

/// How long the thread waits for more before it ends.
const IDLE: Duration = Duration::from_secs(5);

type Held = Box<dyn Send>;

static QUEUE: OnceLock<Mutex<Option<mpsc::Sender<Held>>>> = OnceLock::new();

/// Drops `held` (descriptors, or what holds them) on the releasing thread;
/// in place if that thread cannot be started.
pub fn later<T: Send + 'static>(held: T) {
    let mut tx = QUEUE.get_or_init(Mutex::default).lock();
    let mut held: Held = Box::new(held);
    if let Some(t) = tx.as_ref() {
        match t.send(held) {
            Ok(()) => return,
            // The thread ended: start another.
            Err(mpsc::SendError(back)) => held = back,
        }
    }
    let (t, rx) = mpsc::channel::<Held>();
    let spawned = std::thread::Builder::new()
        .name("tandem-release".into())
        // What is still queued when it ends goes with the receiver.
        .spawn(move || while rx.recv_timeout(IDLE).is_ok() {});
    if spawned.is_ok() && t.send(held).is_ok() {
        *tx = Some(t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn what_is_let_go_is_dropped_on_another_thread() {
        let (tx, rx) = mpsc::channel();
        struct Tell(mpsc::Sender<std::thread::ThreadId>);
        impl Drop for Tell {
            fn drop(&mut self) {
                let _ = self.0.send(std::thread::current().id());
            }
        }
        for _ in 0..3 {
            later(Tell(tx.clone()));
        }
        for _ in 0..3 {
            let on = rx.recv_timeout(Duration::from_secs(5)).unwrap();
            assert_ne!(on, std::thread::current().id());
        }
        let f = Arc::new(tempfile::tempfile().unwrap());
        later(f.clone());
        let t = std::time::Instant::now();
        while Arc::strong_count(&f) > 1 {
            assert!(t.elapsed() < Duration::from_secs(5), "never dropped");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
