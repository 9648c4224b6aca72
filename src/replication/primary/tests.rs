//! The replicator on an in-memory change log, with channels for links.

use super::*;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

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
use std::sync::atomic::AtomicBool;

fn replicator(peer_timeout_ms: u64) -> (Arc<Replicator>, tempfile::TempDir) {
    with_quorum(peer_timeout_ms, None)
}

/// A replicator that may go on alone only while `alone_ok` says so.
fn with_quorum(
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
    };
    let rep = Replicator::new(Settings {
        module: "m".into(),
        ack: Ack::Durable,
        peer_timeout: Duration::from_millis(peer_timeout_ms),
        async_max_lag: 0,
        dirs: vec![dir],
        exclude: Exclude::default(),
        alone_ok,
        latency: None,
        blocking: || {},
    });
    (rep, root)
}

#[test]
fn a_link_whose_writer_stopped_is_unlinked_with_its_bookkeeping() {
    let (rep, _root) = replicator(1000);
    let generation = rep.dirs[0].log.generation().unwrap().current;
    let (_, rx) = current_link(&rep);
    drop(rx);
    let mut o = rep.order.lock();
    assert!(
        rep.send_locked(&mut o, 0, false, WireMutation::Sync, Vec::new())
            .is_none()
    );
    assert!(o.link.is_none() && o.resync_done.is_none() && !o.ready);
    drop(o);
    assert!(!rep.still_linked(1));
    assert_eq!(
        rep.dirs[0].log.generation().unwrap().current,
        generation,
        "nothing was acknowledged without the peer yet: same data, same generation"
    );
    assert_eq!(rep.status().peer, "alone");
    rep.alone().unwrap();
    let alone = rep.dirs[0].log.generation().unwrap().current;
    assert_ne!(
        alone, generation,
        "the peer that was current is behind once a durable call is kept without it"
    );
    rep.alone().unwrap();
    assert_eq!(rep.dirs[0].log.generation().unwrap().current, alone, "once");
}

/// A durable call made once the current peer's link is gone; asserts
/// that it is still waiting a moment later (`why` if not).
fn kept_alone(rep: &Arc<Replicator>, why: &str) -> std::thread::JoinHandle<Result<(), Errno>> {
    let (conn, _rx) = current_link(rep);
    rep.detach(conn, "the peer went away");
    let waiting = {
        let rep = rep.clone();
        std::thread::spawn(move || rep.alone())
    };
    std::thread::sleep(Duration::from_millis(100));
    assert!(!waiting.is_finished(), "{why}");
    waiting
}

#[test]
fn a_node_that_may_not_go_on_alone_keeps_its_generation_until_fenced() {
    let (rep, _root) = with_quorum(1000, Some(Arc::new(|| false)));
    let generation = rep.dirs[0].log.generation().unwrap().current;
    let waiting = kept_alone(&rep, "acknowledged without the peer or quorum");
    rep.fence("lost the lease");
    assert_eq!(waiting.join().unwrap(), Err(Errno::EIO));
    assert_eq!(
        rep.dirs[0].log.generation().unwrap().current,
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
    let new = rep.dirs[0].log.generation().unwrap().current;
    assert_ne!(new, known.load(Ordering::SeqCst));
    known.store(new, Ordering::SeqCst);
    assert_eq!(waiting.join().unwrap(), Ok(()));
}

#[test]
fn a_link_back_before_anything_was_kept_alone_owes_no_generation() {
    let (rep, _root) = replicator(1000);
    let generation = rep.dirs[0].log.generation().unwrap().current;
    let (conn, _rx) = current_link(&rep);
    rep.detach(conn, "the peer went away");
    let (_, _rx2) = current_link(&rep);
    rep.close_link("done");
    rep.alone().unwrap();
    assert_eq!(rep.dirs[0].log.generation().unwrap().current, generation);
}

/// Attaches a link whose peer is current (resync done, all durable).
fn current_link(rep: &Replicator) -> (u64, tokio::sync::mpsc::UnboundedReceiver<Message>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let conn = rep.attach(Arc::new(tx));
    let mut o = rep.order.lock();
    o.ready = true;
    o.resync_done = Some(0);
    (conn, rx)
}

fn write(sink: &ReplicatingSink, offset: u64, data: &[u8]) {
    let m = Mutation::Write {
        path: Some(PathBuf::from("f")),
        offset,
        data,
        sync: false,
    };
    sink.apply(&m, &mut || Ok(())).unwrap();
}

#[test]
fn a_write_whose_send_finds_the_writer_gone_stays_marked() {
    let (rep, _root) = replicator(1000);
    let (conn, rx) = current_link(&rep);
    let sink = rep.sink(0);
    // Seq 1 reaches the channel and the peer makes it durable, so the
    // extent is hot with nothing pending.
    write(&sink, 0, b"first");
    rep.on_ack(conn, 1, 1, 1);
    drop(rx);
    // The writer is gone: this write never leaves, and its bytes must
    // stay marked for the resync (the rest of the extent may go).
    write(&sink, 8192, b"second");
    assert_eq!(rep.status().peer, "alone");
    let id = rep.dirs[0].log.ensure(Path::new("f")).unwrap();
    assert_eq!(rep.dirs[0].log.dirty(id).unwrap(), vec![8192..8198]);
}

type Stamps = Vec<(Vec<u8>, Time)>;

/// The mutations sent so far: what each is, and the times it carries.
fn sent(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Message>) -> Vec<(String, Stamps)> {
    std::iter::from_fn(|| rx.try_recv().ok())
        .filter_map(|m| match m {
            Message::Mutate {
                mutation, times, ..
            } => {
                let kind = format!("{mutation:?}");
                Some((
                    kind[..kind.find([' ', '{']).unwrap_or(kind.len())].to_string(),
                    times,
                ))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn writes_owe_their_times_until_a_close_or_another_change() {
    let (rep, root) = replicator(1000);
    std::fs::write(root.path().join("f"), b"abc").unwrap();
    let mtime = || {
        let st =
            crate::fs::sys::stat_fd(std::fs::File::open(root.path().join("f")).unwrap().as_fd())
                .unwrap();
        vec![(b"f".to_vec(), Time::mtime_of(&st))]
    };
    let (_conn, mut rx) = current_link(&rep);
    let sink = rep.sink(0);
    write(&sink, 0, b"a");
    write(&sink, 1, b"b");
    let got = sent(&mut rx);
    assert_eq!(got.len(), 2);
    assert!(
        got.iter().all(|(k, t)| k == "Write" && t.is_empty()),
        "{got:?}"
    );
    // Closed: the time goes, once.
    sink.closed();
    assert_eq!(sent(&mut rx), vec![("Times".to_string(), mtime())]);
    sink.closed();
    assert_eq!(sent(&mut rx), vec![]);
    // Owed again, and sent before a change of another kind.
    write(&sink, 2, b"c");
    let mkdir = Mutation::Mkdir {
        path: PathBuf::from("d"),
        mode: 0o755,
        umask: 0,
        uid: 0,
        gid: 0,
    };
    sink.apply(&mkdir, &mut || Ok(())).unwrap();
    let kinds: Vec<String> = sent(&mut rx).into_iter().map(|(k, _)| k).collect();
    assert_eq!(kinds, ["Write", "Times", "Mkdir"]);
}

#[test]
fn an_owed_time_is_recorded_until_the_peer_has_it_durably() {
    let (rep, root) = replicator(1000);
    std::fs::write(root.path().join("f"), b"abc").unwrap();
    let log = &rep.dirs[0].log;
    let set_attr = |log: &Arc<dyn ChangeLog>| {
        log.ns_since(0)
            .unwrap()
            .into_iter()
            .filter(|(_, c)| {
                *c == NsChange::SetAttr {
                    path: PathBuf::from("f"),
                }
            })
            .count()
    };
    // Sent and made durable: forgotten.
    let (conn, _rx) = current_link(&rep);
    let sink = rep.sink(0);
    write(&sink, 0, b"a");
    assert_eq!(set_attr(log), 1);
    write(&sink, 1, b"b");
    assert_eq!(set_attr(log), 1, "one record per stretch, not per write");
    sink.closed();
    rep.on_ack(conn, 3, 3, 3);
    assert_eq!(set_attr(log), 0);
    // The link goes before the time is sent: the record stays for the
    // resync, which ships the file's times.
    write(&sink, 2, b"c");
    rep.detach(conn, "gone");
    assert_eq!(set_attr(log), 1);
}

#[test]
fn a_truncate_keeps_hot_extents_marked_whole() {
    let (rep, _root) = replicator(1000);
    let (conn, _rx) = current_link(&rep);
    let sink = rep.sink(0);
    write(&sink, 0, b"first");
    rep.on_ack(conn, 1, 1, 1);
    // An O_TRUNC open: the file is emptied, the extent stays hot.
    let truncate = Mutation::SetAttr {
        path: Some(PathBuf::from("f")),
        change: crate::fs::AttrChange {
            size: Some(0),
            ..Default::default()
        },
    };
    sink.apply(&truncate, &mut || Ok(())).unwrap();
    rep.on_ack(conn, 2, 2, 1);
    write(&sink, 0, b"second");
    rep.on_ack(conn, 2, 2, 2);
    // The link drops before the second write is durable: it must stay
    // marked for the resync.
    rep.detach(conn, "gone");
    let id = rep.dirs[0].log.ensure(Path::new("f")).unwrap();
    assert_eq!(rep.dirs[0].log.dirty(id).unwrap(), vec![0..6]);
}

#[test]
fn a_removed_name_of_a_hard_linked_file_hands_its_records_to_the_survivor() {
    let (rep, _root) = replicator(1000);
    let (conn, _rx) = current_link(&rep);
    let sink = rep.sink(0);
    // Written under the name "f" (hot, not yet durable on the peer).
    write(&sink, 4096, b"data");
    let unlink = Mutation::Unlink {
        path: PathBuf::from("f"),
        survivor: Remains::Name(PathBuf::from("g")),
    };
    sink.apply(&unlink, &mut || Ok(())).unwrap();
    rep.detach(conn, "gone");
    let log = &rep.dirs[0].log;
    let g = log
        .resolve(Path::new("g"))
        .unwrap()
        .expect("g has the records");
    assert_eq!(log.dirty(g).unwrap(), vec![4096..4100]);
    assert_eq!(log.resolve(Path::new("f")).unwrap(), None);
}

#[test]
fn a_removed_name_of_a_file_linked_under_unseen_names_asks_for_a_comparison() {
    let (rep, _root) = replicator(1000);
    let (_conn, _rx) = current_link(&rep);
    let sink = rep.sink(0);
    let log = &rep.dirs[0].log;
    // A name without records goes: nothing is owed.
    let unlink = |path: &str| Mutation::Unlink {
        path: PathBuf::from(path),
        survivor: Remains::Unseen,
    };
    sink.apply(&unlink("clean"), &mut || Ok(())).unwrap();
    assert!(!log.compare_needed().unwrap());
    write(&sink, 4096, b"data");
    sink.apply(&unlink("f"), &mut || Ok(())).unwrap();
    assert!(
        log.compare_needed().unwrap(),
        "the records had nowhere to go"
    );
    assert_eq!(log.resolve(Path::new("f")).unwrap(), None);
}

#[test]
fn without_quorum_a_silent_peer_is_not_left_behind_and_a_fence_fails_the_call() {
    let quorum = Arc::new(AtomicBool::new(false));
    let q = quorum.clone();
    let (rep, _root) = with_quorum(100, Some(Arc::new(move || q.load(Ordering::SeqCst))));
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let conn = rep.attach(Arc::new(tx));
    // The peer never acknowledges seq 1; without quorum the call keeps
    // waiting past peer_timeout rather than being acknowledged alone.
    let waiter = {
        let rep = rep.clone();
        std::thread::spawn(move || rep.wait(conn, 1, Need::Applied))
    };
    std::thread::sleep(Duration::from_millis(400));
    assert!(!waiter.is_finished(), "acknowledged alone without quorum");
    rep.fence("peer and quorum lost");
    assert_eq!(waiter.join().unwrap(), Err(Errno::EIO));

    // With quorum, the same silence leaves the peer behind after the
    // timeout and the call goes on.
    let q = quorum.clone();
    let (rep, _root) = with_quorum(100, Some(Arc::new(move || q.load(Ordering::SeqCst))));
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let conn = rep.attach(Arc::new(tx));
    quorum.store(true, Ordering::SeqCst);
    let t = Instant::now();
    assert_eq!(rep.wait(conn, 1, Need::Applied), Ok(()));
    assert!(t.elapsed() >= Duration::from_millis(100));
    assert!(!rep.still_linked(conn) || rep.order.lock().link.is_none());

    // A link that went away before the call was made durable: the call
    // waits for quorum (or the fence) too; plain writes do not.
    let q = quorum.clone();
    let (rep, _root) = with_quorum(10_000, Some(Arc::new(move || q.load(Ordering::SeqCst))));
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let conn = rep.attach(Arc::new(tx));
    quorum.store(false, Ordering::SeqCst);
    rep.detach(conn, "the session ended");
    assert_eq!(rep.wait(conn, 1, Need::Lag(WINDOW)), Ok(()));
    let waiter = {
        let rep = rep.clone();
        std::thread::spawn(move || rep.wait(conn, 1, Need::Applied))
    };
    std::thread::sleep(Duration::from_millis(200));
    assert!(!waiter.is_finished(), "made durable alone without quorum");
    quorum.store(true, Ordering::SeqCst);
    assert_eq!(waiter.join().unwrap(), Ok(()));
}

/// A link whose peer hears everything and answers nothing: reading it
/// takes until the deadline the reader gives and finds no message.
struct Silent;

impl Outlet for Silent {
    fn send(&self, _m: &Outgoing<'_>, _now: bool) -> Result<(), LinkError> {
        Ok(())
    }
    fn flush(&self) -> Result<(), LinkError> {
        Ok(())
    }
    fn close(&self, _graceful: bool) {}
    fn read(&self, until: Instant) -> Option<Result<Vec<Message>, LinkError>> {
        std::thread::sleep(until.saturating_duration_since(Instant::now()));
        Some(Ok(Vec::new()))
    }
}

/// A call that reads the peer's answers itself, on a link where nothing
/// comes, gives up at peer_timeout: reading (and finding nothing) is not
/// an answer.
#[test]
fn a_call_reading_its_own_answer_gives_up_at_peer_timeout() {
    for ack_wait in [Need::Applied, Need::Lag(0)] {
        let (rep, _root) = replicator(300);
        let conn = rep.attach(Arc::new(Silent));
        rep.order.lock().ready = true;
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let rep = rep.clone();
            std::thread::spawn(move || {
                let t = Instant::now();
                if let Need::Lag(_) = ack_wait {
                    rep.acks.sent(1, 100);
                }
                let r = rep.wait(conn, 1, ack_wait);
                tx.send(t.elapsed()).unwrap();
                r
            })
        };
        let waited = rx
            .recv_timeout(Duration::from_secs(3))
            .expect("the call is still waiting 3 s later (peer_timeout 300 ms)");
        assert_eq!(waiter.join().unwrap(), Ok(()));
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_millis(600),
            "{ack_wait:?}: waited {waited:?}"
        );
        assert_eq!(rep.status().peer, "alone");
    }
}

/// The answer that came in while this node was frozen past the deadline
/// is looked at before the peer is given up.
#[test]
fn an_answer_waiting_at_the_deadline_keeps_the_peer() {
    struct Late(std::sync::atomic::AtomicBool);
    impl Outlet for Late {
        fn send(&self, _m: &Outgoing<'_>, _now: bool) -> Result<(), LinkError> {
            Ok(())
        }
        fn flush(&self) -> Result<(), LinkError> {
            Ok(())
        }
        fn close(&self, _graceful: bool) {}
        fn read(&self, until: Instant) -> Option<Result<Vec<Message>, LinkError>> {
            if !self.0.swap(true, Ordering::SeqCst) {
                // Frozen well past the caller's deadline, having read nothing.
                std::thread::sleep(
                    until.saturating_duration_since(Instant::now()) + Duration::from_millis(200),
                );
                return Some(Ok(Vec::new()));
            }
            // The answer came in meanwhile.
            Some(Ok(vec![Message::Ack {
                received: 1,
                applied: 1,
                durable: 1,
            }]))
        }
    }
    let (rep, _root) = replicator(100);
    let conn = rep.attach(Arc::new(Late(AtomicBool::new(false))));
    assert_eq!(rep.wait(conn, 1, Need::Applied), Ok(()));
    assert!(rep.still_linked(conn), "the peer answered: it stays");
}
