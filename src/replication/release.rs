//! Lets go of open files on a thread of its own. Closing the last
//! descriptor of a removed file frees its blocks then, and on a file system
//! mounted with `discard` that waits for the disk to discard each of them: a
//! resync that removes a few hundred files would wait that long on the
//! applying thread.
//!
//! The thread is shared by the process, started when there is something to
//! let go and gone after a spell without, or at a stop ([`end`]).

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;

/// How long the thread waits for more before it ends.
const IDLE: Duration = Duration::from_secs(5);

type Held = Box<dyn Send>;

/// The way to the releasing thread, and the thread, while it runs.
struct Releaser(Mutex<Option<(mpsc::Sender<Held>, JoinHandle<()>)>>);

static RELEASER: Releaser = Releaser(Mutex::new(None));

/// Drops `held` (descriptors, or what holds them) on the releasing thread;
/// in place if that thread cannot be started.
pub fn later<T: Send + 'static>(held: T) {
    RELEASER.later(Box::new(held));
}

/// Lets go of everything queued and ends the thread, at a stop: nothing is
/// left running. A later call starts it again.
pub fn end() {
    RELEASER.end();
}

impl Releaser {
    fn later(&self, mut held: Held) {
        let mut q = self.0.lock();
        if let Some((t, _)) = q.as_ref() {
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
        match spawned {
            Ok(handle) => {
                // The thread holds the receiver: this cannot fail.
                let _ = t.send(held);
                *q = Some((t, handle));
            }
            Err(_) => drop(held),
        }
    }

    fn end(&self) {
        let taken = self.0.lock().take();
        if let Some((t, handle)) = taken {
            // Without a sender the thread drops what is queued and ends.
            drop(t);
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn what_is_let_go_is_dropped_on_another_thread_which_ends_at_a_stop() {
        let (tx, rx) = mpsc::channel();
        struct Tell(mpsc::Sender<std::thread::ThreadId>);
        impl Drop for Tell {
            fn drop(&mut self) {
                let _ = self.0.send(std::thread::current().id());
            }
        }
        let r = Releaser(Mutex::new(None));
        for _ in 0..3 {
            r.later(Box::new(Tell(tx.clone())));
        }
        let first = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_ne!(first, std::thread::current().id());
        for _ in 0..2 {
            assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), first);
        }
        // At a stop the thread ends (joined); a later call starts another.
        r.end();
        assert!(r.0.lock().is_none());
        r.later(Box::new(Tell(tx.clone())));
        let second = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_ne!(second, first);
        r.end();
        // The process's own releaser.
        let f = Arc::new(tempfile::tempfile().unwrap());
        later(f.clone());
        let t = std::time::Instant::now();
        while Arc::strong_count(&f) > 1 {
            assert!(t.elapsed() < Duration::from_secs(5), "never dropped");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
