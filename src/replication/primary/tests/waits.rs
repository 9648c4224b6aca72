//! Waiting for the peer: timeouts, quorum, a fence, a frozen caller.

use super::*;

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
        std::thread::spawn(move || rep.stream.wait(conn, 1, Need::Applied))
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
    assert_eq!(rep.stream.wait(conn, 1, Need::Applied), Ok(()));
    assert!(t.elapsed() >= Duration::from_millis(100));
    assert!(!rep.still_linked(conn) || rep.stream.lock().link.is_none());

    // A link that went away before the call was made durable: the call
    // waits for quorum (or the fence) too; plain writes do not.
    let q = quorum.clone();
    let (rep, _root) = with_quorum(10_000, Some(Arc::new(move || q.load(Ordering::SeqCst))));
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let conn = rep.attach(Arc::new(tx));
    quorum.store(false, Ordering::SeqCst);
    rep.detach(conn, "the session ended");
    assert_eq!(rep.stream.wait(conn, 1, Need::Lag(WINDOW)), Ok(()));
    let waiter = {
        let rep = rep.clone();
        std::thread::spawn(move || rep.stream.wait(conn, 1, Need::Applied))
    };
    std::thread::sleep(Duration::from_millis(200));
    assert!(!waiter.is_finished(), "made durable alone without quorum");
    quorum.store(true, Ordering::SeqCst);
    assert_eq!(waiter.join().unwrap(), Ok(()));
}

/// A link on which a reader finds what `answer` gives: nothing (after
/// waiting until the deadline it was given), or an answer.
struct Scripted<F: Fn(Instant) -> Vec<Message> + Send + Sync>(F);

impl<F: Fn(Instant) -> Vec<Message> + Send + Sync> Outlet for Scripted<F> {
    fn send(&self, _m: &Outgoing<'_>, _now: bool) -> Result<(), LinkError> {
        Ok(())
    }
    fn flush(&self) -> Result<(), LinkError> {
        Ok(())
    }
    fn close(&self, _graceful: bool) {}
    fn read(&self, until: Instant) -> Option<Result<Vec<Message>, LinkError>> {
        Some(Ok((self.0)(until)))
    }
}

/// The peer hears everything and answers nothing.
fn silent(until: Instant) -> Vec<Message> {
    std::thread::sleep(until.saturating_duration_since(Instant::now()));
    Vec::new()
}

/// A call that reads the peer's answers itself, on a link where nothing
/// comes, gives up at peer_timeout: reading (and finding nothing) is not
/// an answer.
#[test]
fn a_call_reading_its_own_answer_gives_up_at_peer_timeout() {
    for ack_wait in [Need::Applied, Need::Lag(0)] {
        let (rep, _root) = replicator(300);
        let conn = rep.attach(Arc::new(Scripted(silent)));
        rep.stream.lock().ready = true;
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let rep = rep.clone();
            std::thread::spawn(move || {
                let t = Instant::now();
                if let Need::Lag(_) = ack_wait {
                    rep.stream.acks.sent(1, 100);
                }
                let r = rep.stream.wait(conn, 1, ack_wait);
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
    let frozen = AtomicBool::new(false);
    let late = move |until: Instant| {
        if !frozen.swap(true, Ordering::SeqCst) {
            // Frozen well past the caller's deadline, having read nothing.
            silent(until + Duration::from_millis(200));
            return Vec::new();
        }
        // The answer came in meanwhile.
        vec![Message::Ack {
            received: 1,
            applied: 1,
            durable: 1,
        }]
    };
    let (rep, _root) = replicator(100);
    let conn = rep.attach(Arc::new(Scripted(late)));
    assert_eq!(rep.stream.wait(conn, 1, Need::Applied), Ok(()));
    assert!(rep.still_linked(conn), "the peer answered: it stays");
}
