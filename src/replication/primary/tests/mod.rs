//! The replicator on an in-memory change log, with channels for links:
//! what losing the peer does to generations here, the change-log records
//! in `records.rs`, waiting for the peer in `waits.rs`.

use super::acks::Need;
use super::stream::WINDOW;
use super::*;
use crate::replication::wire::{Outgoing, Time, WireMutation};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::fs::Remains;

/// The messages sent, in a channel the test reads.
impl Outlet for tokio::sync::mpsc::UnboundedSender<Message> {
    fn send(&self, m: &Outgoing<'_>, _now: bool) -> Result<(), LinkError> {
        tokio::sync::mpsc::UnboundedSender::send(self, m.to_message())
            .map_err(|_| LinkError::Broken("closed".into()))
    }
    fn flush(&self) -> Result<(), LinkError> {
        Ok(())
    }
    fn close(&self, _graceful: bool) {}
}
use crate::changelog::{ChangeLog, MemChangeLog, NsChange};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

pub(super) fn replicator(peer_timeout_ms: u64) -> (Arc<Replicator>, tempfile::TempDir) {
    with_quorum(peer_timeout_ms, None)
}

/// A replicator that may go on alone only while `alone_ok` says so.
pub(super) fn with_quorum(
    peer_timeout_ms: u64,
    alone_ok: Option<AloneCheck>,
) -> (Arc<Replicator>, tempfile::TempDir) {
    build(
        peer_timeout_ms,
        alone_ok,
        Arc::new(MemChangeLog::new(65536).unwrap()),
    )
}

fn build(
    peer_timeout_ms: u64,
    alone_ok: Option<AloneCheck>,
    log: Arc<dyn ChangeLog>,
) -> (Arc<Replicator>, tempfile::TempDir) {
    let root = tempfile::tempdir().unwrap();
    let dir = Dir {
        root: std::fs::File::open(root.path()).unwrap().into(),
        log,
        cache: Mutex::new(Default::default()),
        snaps: None,
    };
    let rep = Replicator::new(Settings {
        module: "m".into(),
        ack: Ack::Durable,
        peer_timeout: Duration::from_millis(peer_timeout_ms),
        async_max_lag: 0,
        resync_max_rate: 0,
        resync_min_rate: 0,
        pause_file: None,
        dirs: vec![dir],
        exclude: Exclude::default(),
        alone_ok,
        latency: None,
        blocking: || {},
    });
    (rep, root)
}

mod records;
mod waits;

/// Attaches a link whose peer is current (resync done, all durable).
pub(super) fn current_link(
    rep: &Replicator,
) -> (u64, tokio::sync::mpsc::UnboundedReceiver<Message>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let conn = rep.attach(Arc::new(tx));
    let mut o = rep.stream.lock();
    o.ready = true;
    o.resync_done = Some(0);
    (conn, rx)
}

pub(super) fn write(sink: &ReplicatingSink, offset: u64, data: &[u8]) {
    let m = Mutation::Write {
        path: Some(PathBuf::from("f")),
        offset,
        data,
        sync: false,
    };
    sink.apply(&m, &mut || Ok(())).unwrap();
}

#[test]
fn a_link_whose_writer_stopped_is_unlinked_with_its_bookkeeping() {
    let (rep, _root) = replicator(1000);
    let generation = rep.dirs()[0].log.generation().unwrap().current;
    let (_, rx) = current_link(&rep);
    drop(rx);
    let mut o = rep.stream.lock();
    assert!(
        rep.stream
            .send(&mut o, 0, false, WireMutation::Sync, Vec::new())
            .is_none()
    );
    assert!(o.link.is_none() && o.resync_done.is_none() && !o.ready);
    drop(o);
    assert!(!rep.still_linked(1));
    assert_eq!(
        rep.dirs()[0].log.generation().unwrap().current,
        generation,
        "nothing was acknowledged without the peer yet: same data, same generation"
    );
    assert_eq!(rep.status().peer, "alone");
    rep.stream.alone().unwrap();
    let alone = rep.dirs()[0].log.generation().unwrap().current;
    assert_ne!(
        alone, generation,
        "the peer that was current is behind once a durable call is kept without it"
    );
    rep.stream.alone().unwrap();
    assert_eq!(
        rep.dirs()[0].log.generation().unwrap().current,
        alone,
        "once"
    );
}

/// A durable call made once the current peer's link is gone; asserts
/// that it is still waiting a moment later (`why` if not).
fn kept_alone(rep: &Arc<Replicator>, why: &str) -> std::thread::JoinHandle<Result<(), Errno>> {
    let (conn, _rx) = current_link(rep);
    rep.detach(conn, "the peer went away");
    let waiting = {
        let rep = rep.clone();
        std::thread::spawn(move || rep.stream.alone())
    };
    std::thread::sleep(Duration::from_millis(100));
    assert!(!waiting.is_finished(), "{why}");
    waiting
}

#[test]
fn a_node_that_may_not_go_on_alone_keeps_its_generation_until_fenced() {
    let (rep, _root) = with_quorum(1000, Some(Arc::new(|| false)));
    let generation = rep.dirs()[0].log.generation().unwrap().current;
    let waiting = kept_alone(&rep, "acknowledged without the peer or quorum");
    rep.fence("lost the lease");
    assert_eq!(waiting.join().unwrap(), Err(Errno::EIO));
    assert_eq!(
        rep.dirs()[0].log.generation().unwrap().current,
        generation,
        "a fenced node that kept nothing alone has the peer's generation"
    );
}

#[test]
fn the_first_call_kept_alone_waits_until_the_quorum_knows_its_generation() {
    let log: Arc<dyn ChangeLog> = Arc::new(MemChangeLog::new(65536).unwrap());
    let known = Arc::new(AtomicU64::new(log.generation().unwrap().current));
    let (k, l) = (known.clone(), log.clone());
    let (rep, _root) = build(
        1000,
        Some(Arc::new(move || {
            l.generation().unwrap().current == k.load(Ordering::SeqCst)
        })),
        log,
    );
    let waiting = kept_alone(
        &rep,
        "acknowledged before the quorum knew the new generation",
    );
    let new = rep.dirs()[0].log.generation().unwrap().current;
    assert_ne!(new, known.load(Ordering::SeqCst));
    known.store(new, Ordering::SeqCst);
    assert_eq!(waiting.join().unwrap(), Ok(()));
}

#[test]
fn a_link_back_before_anything_was_kept_alone_owes_no_generation() {
    let (rep, _root) = replicator(1000);
    let generation = rep.dirs()[0].log.generation().unwrap().current;
    let (conn, _rx) = current_link(&rep);
    rep.detach(conn, "the peer went away");
    let (_, _rx2) = current_link(&rep);
    rep.close_link("done");
    rep.stream.alone().unwrap();
    assert_eq!(rep.dirs()[0].log.generation().unwrap().current, generation);
}
