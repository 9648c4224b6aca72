//! Heartbeats over real sockets on loopback, their codec, and the previous
//! release's heartbeats.

use super::*;

fn beat(seq: u64) -> Beat {
    Beat {
        cluster: "c".into(),
        node: "node2".into(),
        boot: 7,
        seq,
        sent_ms: 1000 + seq,
        modules: vec![("app".into(), PeerView::default())],
        extra: Extra::default(),
        speaks: Some(Speaks::this(PROTOCOL)),
    }
}

#[test]
fn sealed_heartbeats_open_only_with_the_key_and_unaltered() {
    let k = Key::new(b"0123456789abcdef0123456789abcdef");
    let d = seal(&k, &beat(1));
    assert_eq!(open(&k, &d).unwrap(), beat(1));
    let other = Key::new(b"another key of the same length!!");
    assert_eq!(open(&other, &d), Err(Dropped::BadMac));
    for i in 3..d.len() {
        let mut bad = d.clone();
        bad[i] ^= 0x01;
        assert_eq!(open(&k, &bad), Err(Dropped::BadMac), "byte {i}");
    }
    assert_eq!(open(&k, &d[..10]), Err(Dropped::Malformed));
    let mut v = d.clone();
    v[2] = 9;
    assert_eq!(open(&k, &v), Err(Dropped::Version(9)));
}

#[test]
fn replayed_and_old_heartbeats_are_refused() {
    let mut r = Replay::default();
    assert!(r.accept(&beat(5)));
    assert!(!r.accept(&beat(5)), "the same datagram twice");
    assert!(!r.accept(&beat(3)), "an older one");
    assert!(r.accept(&beat(6)));
    // A restarted sender: new boot id, later clock.
    let mut b = beat(1);
    b.boot = 8;
    b.sent_ms = 5000;
    assert!(r.accept(&b));
    // A datagram of the old boot replayed after the restart.
    assert!(!r.accept(&beat(7)));
}

#[test]
fn keys_load_from_hex_and_bad_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("heartbeat.key");
    std::fs::write(
        &p,
        "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n",
    )
    .unwrap();
    assert!(Key::load(&p).is_ok());
    std::fs::write(&p, "zz112233445566778899aabbccddeeff").unwrap();
    let e = Key::load(&p).err().unwrap();
    assert!(matches!(e, KeyError::NotHex(_)), "{e}");
    assert!(e.to_string().contains("not hexadecimal"), "{e}");
    std::fs::write(&p, "0011").unwrap();
    assert!(matches!(Key::load(&p), Err(KeyError::TooShort(_))));
    let e = Key::load(&dir.path().join("missing")).err().unwrap();
    assert!(matches!(e, KeyError::Read { .. }), "{e}");
    assert!(e.to_string().contains("missing"), "{e}");
}

#[tokio::test]
async fn heartbeats_travel_between_two_nodes_and_strangers_are_counted() {
    let secret = b"0123456789abcdef0123456789abcdef";
    let a_addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    // Fixed ports are needed for the pairing: pick two free ones.
    let pa = std::net::UdpSocket::bind(a_addr)
        .unwrap()
        .local_addr()
        .unwrap();
    let pb = std::net::UdpSocket::bind(a_addr)
        .unwrap()
        .local_addr()
        .unwrap();
    let a = Heartbeats::new(
        Key::new(secret),
        "c",
        "node1",
        "node2",
        vec![NetPath {
            local: pa,
            remote: pb,
        }],
        Duration::from_millis(20),
    );
    let b = Heartbeats::new(
        Key::new(secret),
        "c",
        "node2",
        "node1",
        vec![NetPath {
            local: pb,
            remote: pa,
        }],
        Duration::from_millis(20),
    );
    *a.views.lock() = vec![("app".into(), PeerView::default())];
    let (ta, _ra) = tokio::sync::mpsc::unbounded_channel();
    let (tb, mut rb) = tokio::sync::mpsc::unbounded_channel();
    let stop = crate::stop::Stop::new();
    a.start(ta, &stop).await.unwrap();
    b.start(tb, &stop).await.unwrap();
    let h = tokio::time::timeout(Duration::from_secs(2), rb.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(h.beat.node, "node1");
    assert_eq!(h.beat.modules[0].0, "app");
    // A stranger with another key, and a replay of a real datagram.
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.send_to(
        &seal(&Key::new(b"not the cluster key, not at all!"), &h.beat),
        pb,
    )
    .unwrap();
    s.send_to(&seal(&Key::new(secret), &h.beat), pb).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(b.counters.bad_mac.load(Ordering::Relaxed), 1);
    assert!(b.counters.replayed.load(Ordering::Relaxed) >= 1);
    assert!(b.counters.received.load(Ordering::Relaxed) >= 3);

    // Both talking: each times the round trip, and the serving node's
    // dirty bytes reach the other.
    *a.dirty.lock() = vec![("app".into(), 4096)];
    *b.views.lock() = vec![("app".into(), PeerView::default())];
    tokio::time::sleep(Duration::from_millis(300)).await;
    for n in [&a, &b] {
        let rtt = n.rtt.lock()[0].expect("a round trip timed");
        assert!(rtt < Duration::from_millis(500), "{rtt:?}");
    }
    assert_eq!(*b.peer_dirty.lock(), vec![("app".to_string(), 4096)]);
}

#[test]
fn losses_are_counted_per_path_from_the_gaps_in_the_numbers() {
    let path = |p: u16| NetPath {
        local: SocketAddr::from(([127, 0, 0, 1], p)),
        remote: SocketAddr::from(([127, 0, 0, 2], p)),
    };
    let h = Heartbeats::new(
        Key::new(b"0123456789abcdef0123456789abcdef"),
        "c",
        "node1",
        "node2",
        vec![path(1), path(2)],
        Duration::from_millis(20),
    );
    for s in [1, 2, 5, 6] {
        h.count_on(0, &beat(s));
    }
    for s in 1..=6 {
        h.count_on(1, &beat(s));
    }
    // Late or repeated ones are not losses, and a restarted peer starts
    // its numbers again.
    h.count_on(0, &beat(4));
    let mut b = beat(1);
    b.boot = 9;
    h.count_on(0, &b);
    assert_eq!(*h.lost.lock(), vec![2, 0]);
}

/// The first version's heartbeat, as a node that predates [`Extra`]
/// reads and writes it.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct FirstBeat {
    cluster: String,
    node: String,
    boot: u64,
    seq: u64,
    sent_ms: u64,
    modules: Vec<(String, PeerView)>,
}

#[test]
fn nodes_with_and_without_the_extra_hear_each_other() {
    let k = Key::new(b"0123456789abcdef0123456789abcdef");
    let mut b = beat(4);
    b.extra = Extra {
        dirty: vec![("app".into(), 7)],
        echo: vec![Some((3, 250)), None],
    };
    let new = seal(&k, &b);
    let old: FirstBeat = open_with(&k, MAGIC, &new).unwrap();
    assert_eq!((old.seq, old.modules.clone()), (4, b.modules.clone()));
    let from_old = seal_with(&k, MAGIC, &old);
    let heard = open(&k, &from_old).unwrap();
    assert_eq!(heard.extra, Extra::default());
    assert_eq!(heard.seq, 4);
    assert_eq!(open(&k, &new).unwrap(), b);
}

#[test]
fn the_previous_release_and_this_one_hear_each_other_and_its_modules_count_as_able() {
    let k = Key::new(b"0123456789abcdef0123456789abcdef");
    let mut b = beat(5);
    b.modules = vec![
        (
            "app".into(),
            PeerView {
                cannot_serve: true,
                ..PeerView::default()
            },
        ),
        ("db".into(), PeerView::default()),
    ];
    b.extra = Extra {
        dirty: vec![("app".into(), 9)],
        echo: vec![Some((4, 100))],
    };
    let new = seal(&k, &b);
    // The previous release reads the beat and the extra, and stops there.
    let body = verified(&k, MAGIC, &new).unwrap();
    let (old, rest): (Beat, _) = postcard::take_from_bytes(body).unwrap();
    let (extra, _): (Extra, _) = postcard::take_from_bytes(rest).unwrap();
    assert_eq!((old.seq, &extra), (5, &b.extra));
    // It sends those two, and says nothing of who cannot serve.
    let from_old = seal_with(&k, MAGIC, &(&b, &b.extra));
    let heard = open(&k, &from_old).unwrap();
    assert_eq!(heard.extra, b.extra);
    assert!(heard.modules.iter().all(|(_, v)| !v.cannot_serve));
    // Nor of the versions it speaks.
    assert_eq!(heard.speaks, None);
    // The release before versions reads up to who cannot serve.
    let from_before = seal_with(&k, MAGIC, &(&b, &b.extra, &Later::of(&b)));
    let heard = open(&k, &from_before).unwrap();
    assert!(heard.modules[0].1.cannot_serve);
    assert_eq!(heard.speaks, None);
    // This release hears itself whole.
    let heard = open(&k, &new).unwrap();
    assert_eq!(heard, b);
    assert!(heard.modules[0].1.cannot_serve && !heard.modules[1].1.cannot_serve);
}

#[test]
fn maintenance_travels_after_the_later_fields_and_both_releases_hear_each_other() {
    let k = Key::new(b"0123456789abcdef0123456789abcdef");
    let on = Maintenance {
        on: true,
        since_ms: 1_700_000_000_000,
        by: "node1".into(),
        version: 3,
    };
    let mut b = beat(6);
    b.modules = vec![
        (
            "app".into(),
            PeerView {
                cannot_serve: true,
                maintenance: on.clone(),
                ..PeerView::default()
            },
        ),
        ("db".into(), PeerView::default()),
    ];
    let new = seal(&k, &b);
    // The previous release reads the beat, the extra and the later fields,
    // and stops there: it hears who cannot serve.
    let body = verified(&k, MAGIC, &new).unwrap();
    let (old, rest): (Beat, _) = postcard::take_from_bytes(body).unwrap();
    let (extra, rest): (Extra, _) = postcard::take_from_bytes(rest).unwrap();
    let (later, _): (Later, _) = postcard::take_from_bytes(rest).unwrap();
    assert_eq!((old.seq, &extra), (6, &b.extra));
    assert_eq!(later.cannot_serve, vec!["app".to_string()]);
    // What it sends has no word on maintenance: none is taken.
    let from_old = seal_with(&k, MAGIC, &(&old, &extra, &later));
    let heard = open(&k, &from_old).unwrap();
    assert!(heard.modules[0].1.cannot_serve);
    assert!(
        heard
            .modules
            .iter()
            .all(|(_, v)| v.maintenance == Maintenance::default())
    );
    // This release hears itself whole.
    let heard = open(&k, &new).unwrap();
    assert_eq!(heard, b);
    assert_eq!(heard.modules[0].1.maintenance, on);
    assert_eq!(heard.modules[1].1.maintenance, Maintenance::default());
}
