//! Threads for the short blocking steps of every link of the process (what
//! the peer acknowledged taken in and cleared from the change log, queued
//! sends written, owed times sent). A step goes to the thread idle the
//! shortest, so a few threads serve every module at rest instead of each
//! idle thread being woken in turn and none ever ending; a thread with no
//! step for [`IDLE`] ends. There is no bound: a step may wait (on the order
//! lock, on a slow peer's socket, up to the peer timeout), and the others
//! must not queue behind it.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

/// How long a thread waits for a step before it ends.
const IDLE: Duration = Duration::from_secs(5);

/// A step: it works, then returns how to deliver its result, which runs once
/// the thread is counted idle again (so that a caller's next step finds it).
type Job = Box<dyn FnOnce() -> Deliver + Send>;
type Deliver = Box<dyn FnOnce() + Send>;

/// One idle thread's slot: the step handed to it, or the order to end.
#[derive(Default)]
struct Slot {
    job: Mutex<Option<Job>>,
    end: Mutex<bool>,
    wake: Condvar,
}

#[derive(Default)]
struct Pool {
    /// Idle threads, the most recently idle last.
    idle: Vec<Arc<Slot>>,
    threads: Vec<JoinHandle<()>>,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    idle: Vec::new(),
    threads: Vec::new(),
});

/// Why a step did not run.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("no thread could start for it: {0}")]
    Spawn(std::io::Error),
    #[error("it panicked")]
    Panicked,
}

/// Runs `f` on a pool thread and returns its result.
pub async fn run<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, StepError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    submit(Box::new(move || {
        let out = f();
        Box::new(move || {
            let _ = tx.send(out);
        })
    }))?;
    rx.await.map_err(|_| StepError::Panicked)
}

fn submit(job: Job) -> Result<(), StepError> {
    let mut pool = POOL.lock();
    if let Some(slot) = pool.idle.pop() {
        *slot.job.lock() = Some(job);
        slot.wake.notify_one();
        return Ok(());
    }
    pool.threads.retain(|t| !t.is_finished());
    let t = std::thread::Builder::new()
        .name("tandem-step".into())
        .spawn(move || work(job))
        .map_err(StepError::Spawn)?;
    pool.threads.push(t);
    Ok(())
}

fn work(first: Job) {
    let mut job = Some(first);
    let slot = Arc::new(Slot::default());
    loop {
        // A panicking step loses its answer (the caller sees it), not the thread.
        let deliver = job
            .take()
            .and_then(|j| std::panic::catch_unwind(std::panic::AssertUnwindSafe(j)).ok());
        POOL.lock().idle.push(slot.clone());
        if let Some(d) = deliver {
            d();
        }
        let mut given = slot.job.lock();
        let mut waited = false;
        loop {
            if let Some(j) = given.take() {
                job = Some(j);
                break;
            }
            if *slot.end.lock() || waited {
                drop(given);
                // Leave the stack unless a step is being handed over.
                let mut pool = POOL.lock();
                let mut given = slot.job.lock();
                if let Some(j) = given.take() {
                    job = Some(j);
                    break;
                }
                pool.idle.retain(|s| !Arc::ptr_eq(s, &slot));
                return;
            }
            waited = slot.wake.wait_for(&mut given, IDLE).timed_out();
        }
    }
}

/// Ends the idle threads and waits for every thread (at a stop, once no
/// link is left to give them steps). Later steps start threads again.
pub fn end_all() {
    let (idle, threads) = {
        let mut pool = POOL.lock();
        (
            std::mem::take(&mut pool.idle),
            std::mem::take(&mut pool.threads),
        )
    };
    for slot in idle {
        *slot.end.lock() = true;
        let _g = slot.job.lock();
        slot.wake.notify_one();
    }
    for t in threads {
        let _ = t.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn threads() -> usize {
        POOL.lock()
            .threads
            .iter()
            .filter(|t| !t.is_finished())
            .count()
    }

    #[test]
    fn steps_in_turn_reuse_one_thread_and_results_come_back() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            for i in 0..200u32 {
                assert_eq!(run(move || i * 2).await.unwrap(), i * 2);
            }
        });
        assert_eq!(threads(), 1, "steps one after another took several threads");
        // Overlapping steps each get a thread; a panicking one reports it.
        rt.block_on(async {
            let slow = run(|| std::thread::sleep(Duration::from_millis(200)));
            let quick = run(|| 7);
            let (s, q) = tokio::join!(slow, quick);
            s.unwrap();
            assert_eq!(q.unwrap(), 7);
            assert!(matches!(
                run(|| panic!("a step")).await,
                Err(StepError::Panicked)
            ));
        });
        end_all();
        assert_eq!(threads(), 0);
        assert!(POOL.lock().idle.is_empty());
    }
}
