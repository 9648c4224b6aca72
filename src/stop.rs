//! One stop for the whole daemon. Every thread and task the daemon starts
//! is started through a `Stop`, waits on it between steps, and is joined
//! within a deadline at shutdown, so nothing is left running detached and
//! nothing is cut off in the middle of a step.
//!
//! A child stop (`child`) ends a part on its own (one module's link, one
//! announcer) and is stopped with its parent too.

use parking_lot::{Condvar, Mutex};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone)]
pub struct Stop(Arc<Inner>);

struct Inner {
    stopped: Mutex<bool>,
    wake: Condvar,
    watch: tokio::sync::watch::Sender<bool>,
    running: Mutex<Vec<Running>>,
    /// Kept while in use or running something, so what a stopped child
    /// still runs is joined with the parent.
    children: Mutex<Vec<Stop>>,
}

struct Running {
    name: String,
    handle: Handle,
}

enum Handle {
    Thread(std::thread::JoinHandle<()>),
    Task(tokio::task::JoinHandle<()>),
}

impl Handle {
    fn finished(&self) -> bool {
        match self {
            Handle::Thread(h) => h.is_finished(),
            Handle::Task(h) => h.is_finished(),
        }
    }
}

impl Default for Stop {
    fn default() -> Self {
        Self::new()
    }
}

impl Stop {
    pub fn new() -> Stop {
        Stop(Arc::new(Inner {
            stopped: Mutex::new(false),
            wake: Condvar::new(),
            watch: tokio::sync::watch::channel(false).0,
            running: Mutex::new(Vec::new()),
            children: Mutex::new(Vec::new()),
        }))
    }

    /// A stop of its own that this one's stop also stops.
    pub fn child(&self) -> Stop {
        let child = Stop::new();
        let mut children = self.0.children.lock();
        children.retain(|c| Arc::strong_count(&c.0) > 1 || c.running() > 0);
        children.push(child.clone());
        // Checked under the lock `stop` takes: a child is never missed.
        if self.is_stopped() {
            child.stop();
        }
        child
    }

    pub fn stop(&self) {
        {
            let mut s = self.0.stopped.lock();
            if *s {
                return;
            }
            *s = true;
        }
        self.0.wake.notify_all();
        self.0.watch.send_replace(true);
        let children = self.0.children.lock().clone();
        for c in children {
            c.stop();
        }
    }

    pub fn is_stopped(&self) -> bool {
        *self.0.stopped.lock()
    }

    /// Sleeps for `d` or until stopped; true when stopped.
    pub fn sleep(&self, d: Duration) -> bool {
        let until = Instant::now() + d;
        let mut s = self.0.stopped.lock();
        while !*s {
            if self.0.wake.wait_until(&mut s, until).timed_out() {
                break;
            }
        }
        *s
    }

    /// Resolves once stopped.
    pub async fn stopped(&self) {
        let mut rx = self.0.watch.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Starts a thread that takes this stop (or a clone of it) and ends
    /// when it is stopped.
    pub fn thread(
        &self,
        name: impl Into<String>,
        f: impl FnOnce() + Send + 'static,
    ) -> std::io::Result<()> {
        let name = name.into();
        let h = std::thread::Builder::new().name(name.clone()).spawn(f)?;
        self.register(name, Handle::Thread(h));
        Ok(())
    }

    /// Starts a task on `rt` that ends at its next step once stopped: its
    /// awaits are the points between its steps.
    pub fn task(
        &self,
        rt: &tokio::runtime::Handle,
        name: impl Into<String>,
        f: impl Future<Output = ()> + Send + 'static,
    ) {
        let stop = self.clone();
        let h = rt.spawn(async move {
            tokio::select! {
                () = f => {}
                () = stop.stopped() => {}
            }
        });
        self.register(name.into(), Handle::Task(h));
    }

    /// Starts a task on `rt` that watches this stop itself (`stopped`) and
    /// ends when it is stopped, at a point of its choosing.
    pub fn watched_task(
        &self,
        rt: &tokio::runtime::Handle,
        name: impl Into<String>,
        f: impl Future<Output = ()> + Send + 'static,
    ) {
        self.register(name.into(), Handle::Task(rt.spawn(f)));
    }

    /// `task` on the runtime this is called from.
    pub fn spawn(&self, name: impl Into<String>, f: impl Future<Output = ()> + Send + 'static) {
        self.task(&tokio::runtime::Handle::current(), name, f)
    }

    fn register(&self, name: String, handle: Handle) {
        let mut running = self.0.running.lock();
        // Ended ones are dropped here, so a busy server's list stays short.
        running.retain(|r| !r.handle.finished());
        running.push(Running { name, handle });
    }

    /// How many registered threads and tasks (children's too) are running.
    pub fn running(&self) -> usize {
        let mut n = self
            .0
            .running
            .lock()
            .iter()
            .filter(|r| !r.handle.finished())
            .count();
        for c in self.0.children.lock().iter() {
            n += c.running();
        }
        n
    }

    /// Stops, then waits until everything registered (children's too) has
    /// ended or `within` has passed. Returns how many ended and the names
    /// of those still running. Must not be called on a runtime thread.
    pub fn join(&self, within: Duration) -> Joined {
        self.stop();
        let until = Instant::now() + within;
        let mut all = Vec::new();
        self.take_all(&mut all);
        let mut ended = 0;
        loop {
            let mut i = 0;
            while i < all.len() {
                if all[i].handle.finished() {
                    if let Handle::Thread(h) = all.swap_remove(i).handle {
                        let _ = h.join();
                    }
                    ended += 1;
                } else {
                    i += 1;
                }
            }
            // Something that ended may have started more (a server's last
            // connection, say): those are waited for too.
            self.take_all(&mut all);
            if all.is_empty() || Instant::now() >= until {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let late = all.into_iter().map(|r| r.name).collect();
        Joined { ended, late }
    }

    fn take_all(&self, into: &mut Vec<Running>) {
        into.append(&mut self.0.running.lock());
        for c in self.0.children.lock().iter() {
            c.take_all(into);
        }
    }
}

/// What `join` saw.
#[derive(Debug)]
pub struct Joined {
    pub ended: usize,
    /// Names of what had not ended by the deadline.
    pub late: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleep_ends_early_when_stopped() {
        let stop = Stop::new();
        let s = stop.clone();
        let t0 = Instant::now();
        let h = std::thread::spawn(move || s.sleep(Duration::from_secs(30)));
        std::thread::sleep(Duration::from_millis(20));
        stop.stop();
        assert!(h.join().unwrap());
        assert!(t0.elapsed() < Duration::from_secs(5));
        assert!(!Stop::new().sleep(Duration::from_millis(1)));
    }

    #[test]
    fn a_parent_stops_its_children_and_a_child_not_its_parent() {
        let parent = Stop::new();
        let a = parent.child();
        let b = a.child();
        b.stop();
        assert!(!a.is_stopped() && !parent.is_stopped());
        let c = a.child();
        parent.stop();
        assert!(a.is_stopped() && c.is_stopped());
        assert!(parent.child().is_stopped(), "a child of a stopped stop");
    }

    #[test]
    fn join_waits_for_threads_and_tasks_and_names_the_late() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let stop = Stop::new();
        let s = stop.clone();
        stop.thread(
            "obedient",
            move || while !s.sleep(Duration::from_secs(60)) {},
        )
        .unwrap();
        let child = stop.child();
        child.task(rt.handle(), "idle", std::future::pending());
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        stop.thread("deaf", move || {
            let _ = release_rx.recv();
        })
        .unwrap();
        assert_eq!(stop.running(), 3);
        let t0 = Instant::now();
        let joined = stop.join(Duration::from_millis(200));
        assert!(t0.elapsed() >= Duration::from_millis(200));
        assert_eq!(joined.ended, 2);
        assert_eq!(joined.late, vec!["deaf".to_string()]);
        drop(release_tx);
    }

    #[test]
    fn a_task_ends_at_its_next_await_and_started_ones_are_pruned() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let stop = Stop::new();
        for _ in 0..100 {
            stop.task(rt.handle(), "quick", async {});
        }
        rt.block_on(async { tokio::time::sleep(Duration::from_millis(10)).await });
        stop.task(rt.handle(), "one more", async {});
        assert!(stop.0.running.lock().len() <= 2, "ended tasks are dropped");
        let s = stop.clone();
        let waiter = rt.spawn(async move { s.stopped().await });
        stop.stop();
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), waiter).await })
            .expect("stopped() resolves")
            .unwrap();
    }
}
