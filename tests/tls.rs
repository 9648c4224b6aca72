//! Node-to-node connections: mutual TLS with the cluster's own CA, made by
//! `tandem init`; anything else is refused at the handshake.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{tandem, tandem_init};
use tandem::replication::frame::{self, Compression};
use tandem::replication::tls::Credentials;
use tandem::replication::wire::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

#[test]
fn init_writes_root_only_keys_and_never_replaces_them_silently() {
    let t = common::tempdir();
    let dir = t.path().join("tls");
    let o = tandem_init(&dir, "c1", &[]);
    assert!(o.status.success(), "{o:?}");
    for (f, mode) in [
        ("ca.pem", 0o644),
        ("ca.key", 0o600),
        ("node1.key", 0o600),
        ("node2.pem", 0o644),
        ("heartbeat.key", 0o600),
    ] {
        let m = std::fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(m, mode, "{f}");
    }
    let key = std::fs::read_to_string(dir.join("heartbeat.key")).unwrap();
    assert_eq!(key.trim().len(), 64);
    let before = std::fs::read(dir.join("node1.pem")).unwrap();
    let o = tandem_init(&dir, "c1", &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("already exists"),
        "{o:?}"
    );
    assert_eq!(
        std::fs::read(dir.join("node1.pem")).unwrap(),
        before,
        "nothing replaced"
    );
    let o = tandem_init(&dir, "c1", &["--force"]);
    assert!(o.status.success());
    assert_ne!(std::fs::read(dir.join("node1.pem")).unwrap(), before);
    // Bad node names are refused.
    let o = tandem(&[
        "init",
        "--out",
        t.path().join("x").to_str().unwrap(),
        "--cluster",
        "c",
        "--node",
        "a",
        "--node",
        "a",
    ]);
    assert_eq!(o.status.code(), Some(2));
}

/// Accepts one connection as `server` and reports what the handshake gave.
async fn serve_once(listener: TcpListener, creds: Credentials) -> Result<Message, String> {
    let acceptor = TlsAcceptor::from(creds.server_config().unwrap());
    let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
    let mut tls = acceptor
        .accept(tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    if !creds.is_peer(tls.get_ref().1.peer_certificates()) {
        return Err("not the expected peer".into());
    }
    let mut buf = Vec::new();
    loop {
        if let Some((msg, _)) = frame::decode(&buf).map_err(|e| e.to_string())? {
            return Ok(msg);
        }
        let mut chunk = [0u8; 4096];
        let n = tls.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn connect(addr: std::net::SocketAddr, creds: &Credentials) -> Result<(), String> {
    let connector = TlsConnector::from(creds.client_config().unwrap());
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut tls = connector
        .connect(Credentials::server_name(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    if !creds.is_peer(tls.get_ref().1.peer_certificates()) {
        return Err("not the expected peer".into());
    }
    let mut out = Vec::new();
    let hello = Message::Hello {
        cluster: "c1".into(),
        node: creds.node.clone(),
        modules: vec!["app".into()],
        dirs: 1,
        generation: 1,
        verify: false,
        acks: Default::default(),
        speaks: None,
        resumes: false,
    };
    frame::encode(&hello, Compression::Off, &mut out).unwrap();
    tls.write_all(&out).await.map_err(|e| e.to_string())?;
    tls.flush().await.map_err(|e| e.to_string())?;
    // Wait for the server to close so the frame is surely delivered.
    let mut rest = Vec::new();
    let _ = tls.read_to_end(&mut rest).await;
    Ok(())
}

async fn attempt(
    server: Credentials,
    client: Credentials,
) -> (Result<Message, String>, Result<(), String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let s = tokio::spawn(serve_once(listener, server));
    let c = connect(addr, &client).await;
    (s.await.unwrap(), c)
}

#[tokio::test]
async fn nodes_of_one_cluster_connect_and_others_are_refused() {
    let t = common::tempdir();
    let (good, rogue) = (t.path().join("good"), t.path().join("rogue"));
    assert!(tandem_init(&good, "c1", &[]).status.success());
    assert!(tandem_init(&rogue, "c1", &[]).status.success());
    let creds = |dir: &Path, me: &str, peer: &str| Credentials::load(dir, me, peer).unwrap();

    let (s, c) = attempt(
        creds(&good, "node1", "node2"),
        creds(&good, "node2", "node1"),
    )
    .await;
    assert_eq!(c, Ok(()));
    match s {
        Ok(Message::Hello { node, .. }) => assert_eq!(node, "node2"),
        other => panic!("server got {other:?}"),
    }

    // Same cluster name, same node names, but another CA: refused by both sides.
    let (s, c) = attempt(
        creds(&good, "node1", "node2"),
        creds(&rogue, "node2", "node1"),
    )
    .await;
    assert!(
        s.as_ref().is_err_and(|e| e.starts_with("handshake")),
        "{s:?}"
    );
    assert!(c.is_err(), "{c:?}");

    // A valid certificate of this cluster that is not the expected peer.
    let (s, _) = attempt(
        creds(&good, "node1", "node2"),
        creds(&good, "node1", "node2"),
    )
    .await;
    assert!(
        s.is_err(),
        "a node must not be accepted as its own peer: {s:?}"
    );
}
