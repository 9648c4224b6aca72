//! What reaches a secondary from anyone but its primary, or from its primary
//! in a malformed shape, is refused, logged, and changes nothing on disk.

mod common;

use std::path::Path;

use common::pair::Pair;
use common::wait_until;
use tandem::replication::frame::{self, Compression};
use tandem::replication::framed::FrameReader;
use tandem::replication::tls::Credentials;
use tandem::replication::wire::{Message, WireMutation};
use tandem::versions::{Range, Speaks};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

async fn connect(pair: &Pair, tls_dir: &Path) -> Result<TlsStream<TcpStream>, String> {
    let creds = Credentials::load(tls_dir, "node1", "node2").unwrap();
    let tcp = TcpStream::connect(("127.0.0.2", pair.port))
        .await
        .map_err(|e| e.to_string())?;
    let mut tls = TlsConnector::from(creds.client_config().unwrap())
        .connect(Credentials::server_name(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    // With TLS 1.3 a refused client certificate shows on the first read.
    tls.write_all(&[]).await.map_err(|e| e.to_string())?;
    Ok(tls)
}

fn hello(module: &str, dirs: u32) -> Message {
    Message::Hello {
        cluster: "pair".into(),
        node: "node1".into(),
        modules: vec![module.into()],
        dirs,
        generation: 1,
        verify: false,
        acks: Default::default(),
        speaks: None,
        resumes: false,
    }
}

fn bytes(m: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    frame::encode(m, Compression::Off, &mut out).unwrap();
    out
}

/// Sends `raw` and reads until the secondary closes; returns what it said.
async fn send_and_wait_close(tls: &mut TlsStream<TcpStream>, raw: &[u8]) -> Vec<Message> {
    let _ = tls.write_all(raw).await;
    let _ = tls.flush().await;
    let mut got = Vec::new();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tls.read_to_end(&mut rest),
    )
    .await;
    assert!(read.is_ok(), "the secondary kept a bad connection open");
    let mut buf = &rest[..];
    while let Ok(Some((m, used))) = frame::decode(buf) {
        got.push(m);
        buf = &buf[used..];
    }
    got
}

/// A session as node1: Hello exchanged and the diverged set read.
async fn session(pair: &Pair) -> TlsStream<TcpStream> {
    let mut tls = connect(pair, &pair.tmp.path().join("tls")).await.unwrap();
    tls.write_all(&bytes(&hello("app", 1))).await.unwrap();
    let (rd, wr) = tokio::io::split(tls);
    let mut reader = FrameReader::new(rd);
    match reader.next().await.unwrap() {
        Message::Hello { node, .. } => assert_eq!(node, "node2"),
        other => panic!("expected Hello, got {other:?}"),
    }
    loop {
        if let Message::Diverged { last: true, .. } = reader.next().await.unwrap() {
            break;
        }
    }
    assert!(!reader.has_frame());
    let (rd, _) = reader.into_parts();
    rd.unsplit(wr)
}

fn mutate(seq: u64, m: WireMutation) -> Message {
    Message::Mutate {
        seq,
        dir: 0,
        resync: false,
        mutation: m,
        times: Vec::new(),
    }
}

fn write(path: &[u8]) -> WireMutation {
    WireMutation::Write {
        path: Some(path.to_vec()),
        offset: 0,
        data: b"pwned".to_vec(),
        sync: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_and_malformed_frames_are_refused_and_change_nothing() {
    let mut pair = Pair::new();
    pair.start(2);
    let outside = pair.tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    // A symlink planted in the secondary's tree, pointing out of it.
    std::os::unix::fs::symlink(&outside, pair.dir(2).join("escape")).unwrap();
    std::fs::write(pair.dir(2).join("keep"), b"original").unwrap();

    // 1. Another cluster's CA with the same node names: refused at the handshake.
    let rogue = pair.tmp.path().join("rogue");
    let o = common::tandem_init(&rogue, "pair", &[]);
    assert!(o.status.success());
    match connect(&pair, &rogue).await {
        Err(_) => {}
        Ok(mut tls) => {
            let got = send_and_wait_close(&mut tls, &bytes(&hello("app", 1))).await;
            assert!(got.is_empty(), "a rogue client got an answer: {got:?}");
        }
    }
    assert!(wait_until(5, || pair
        .log_text(2)
        .contains("refused at the TLS handshake")));

    // 2. The right certificate, but bytes that are not frames.
    let mut tls = connect(&pair, &pair.tmp.path().join("tls")).await.unwrap();
    send_and_wait_close(&mut tls, b"GET / HTTP/1.1\r\n\r\n").await;
    assert!(wait_until(5, || pair
        .log_text(2)
        .contains("not a tandem frame")));

    // 3. Another frame format.
    let mut raw = bytes(&hello("app", 1));
    raw[2] = 99;
    let mut tls = connect(&pair, &pair.tmp.path().join("tls")).await.unwrap();
    send_and_wait_close(&mut tls, &raw).await;
    assert!(wait_until(5, || pair
        .log_text(2)
        .contains("frame format 99")));

    // 3b. A release too far ahead: no protocol version in common, said back
    // with both ranges and the node to upgrade (the Hello of a release
    // before ranges, which says nothing, is the one `session` sends).
    let mut ahead = hello("app", 1);
    if let Message::Hello { speaks, .. } = &mut ahead {
        *speaks = Some(Speaks {
            range: Range::new(7, 9),
            software: "9.0.0".into(),
        });
    }
    let mut tls = connect(&pair, &pair.tmp.path().join("tls")).await.unwrap();
    let got = send_and_wait_close(&mut tls, &bytes(&ahead)).await;
    assert!(
        matches!(&got[..], [Message::Close { reason }] if reason
            == "no protocol version in common: node2 speaks 3-5, node1 speaks 7-9; upgrade node2"),
        "{got:?}"
    );

    // 4. A length over the limit.
    let mut raw = vec![b'T', b'D', frame::VERSION, 0];
    raw.extend_from_slice(&u32::MAX.to_be_bytes());
    let mut tls = connect(&pair, &pair.tmp.path().join("tls")).await.unwrap();
    send_and_wait_close(&mut tls, &raw).await;
    assert!(wait_until(5, || pair
        .log_text(2)
        .contains("exceeds the limit")));

    // 5. A module this node does not have: told why, then closed.
    let mut tls = connect(&pair, &pair.tmp.path().join("tls")).await.unwrap();
    let got = send_and_wait_close(&mut tls, &bytes(&hello("nosuch", 1))).await;
    assert!(
        matches!(&got[..], [Message::Close { reason }] if reason.contains("nosuch")),
        "{got:?}"
    );

    // 6. Paths that leave the module root, directly or through a symlink.
    for (i, path) in [&b"../outside/x"[..], b"/etc/x", b"escape/x", b"a/../../x"]
        .into_iter()
        .enumerate()
    {
        let mut tls = session(&pair).await;
        send_and_wait_close(&mut tls, &bytes(&mutate(1, write(path)))).await;
        let refused = || {
            pair.log_text(2)
                .matches("replication connection from")
                .count()
                > 5 + i
        };
        assert!(
            wait_until(5, refused),
            "connection {i} ({}) was not refused:\n{}",
            String::from_utf8_lossy(path),
            pair.log_text(2)
        );
    }
    // 7. A Mutate out of order, then a frame of the wrong kind.
    let mut tls = session(&pair).await;
    let mut raw = bytes(&mutate(5, WireMutation::Sync));
    raw.extend(bytes(&mutate(9, WireMutation::Sync)));
    send_and_wait_close(&mut tls, &raw).await;
    assert!(wait_until(5, || pair.log_text(2).contains("out of order")));
    let mut tls = session(&pair).await;
    send_and_wait_close(&mut tls, &bytes(&hello("app", 1))).await;
    assert!(wait_until(5, || pair
        .log_text(2)
        .contains("unexpected message")));

    // Nothing was written anywhere, and the secondary still serves.
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    assert!(!pair.tmp.path().join("x").exists());
    let mut names: Vec<_> = std::fs::read_dir(pair.dir(2))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["escape", "keep"]);
    assert_eq!(
        std::fs::read(pair.dir(2).join("keep")).unwrap(),
        b"original"
    );
    assert!(pair.replication(2).is_some());

    // And the real primary still connects and replicates afterwards.
    pair.start(1);
    pair.wait_connected();
    std::fs::write(pair.dir(1).join("after"), b"fine").unwrap();
    pair.wait_caught_up();
    assert_eq!(std::fs::read(pair.dir(2).join("after")).unwrap(), b"fine");
}
