//! Commands about the other node travel over the same mutually authenticated
//! TLS link as replication: a connection whose first message is
//! [`Message::Control`] carries one request (JSON) and gets one
//! [`Message::ControlReply`]. Only the peer's certificate is accepted, so a
//! relayed command is as trusted as the root-only control socket it came from.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::frame::Compression;
use super::link::{FrameReader, FrameWriter};
use super::tls::Credentials;
use super::wire::Message;

/// Answers one relayed request (JSON in, JSON out); may block.
pub type Handler = Arc<dyn Fn(String) -> String + Send + Sync>;

/// Server side: the connection's first message was a command.
pub async fn answer<W: AsyncWrite + Unpin>(
    handler: Option<Handler>,
    request: String,
    writer: &mut FrameWriter<W>,
) -> Result<(), String> {
    let Some(h) = handler else {
        let reason = "this node takes no relayed commands (it runs with fixed roles)".to_string();
        let _ = writer
            .send(&Message::Close {
                reason: reason.clone(),
            })
            .await;
        return Err(reason);
    };
    let response = tokio::task::spawn_blocking(move || h(request))
        .await
        .map_err(|e| format!("relayed command: {e}"))?;
    writer.send(&Message::ControlReply { response }).await
}

/// Client side: sends `request` to the peer at `addr`, returns its answer.
pub async fn ask(
    creds: &Credentials,
    addr: SocketAddr,
    compression: Compression,
    request: String,
    timeout: Duration,
) -> Result<String, String> {
    let peer = creds.peer.clone();
    let exchange = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        tcp.set_nodelay(true).ok();
        let config = creds.client_config().map_err(|e| e.to_string())?;
        let tls = TlsConnector::from(config)
            .connect(Credentials::server_name(), tcp)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        if !creds.is_peer(tls.get_ref().1.peer_certificates()) {
            return Err(format!("the server did not present {peer}'s certificate"));
        }
        let (rd, wr) = tokio::io::split(tls);
        let mut reader = FrameReader::new(rd);
        let mut writer = FrameWriter::new(wr, compression);
        writer.send(&Message::Control { request }).await?;
        match reader.next().await? {
            Message::ControlReply { response } => Ok(response),
            Message::Close { reason } => Err(format!("refused: {reason}")),
            other => Err(format!("expected ControlReply, got {}", other.kind())),
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("{peer} at {addr} did not answer within {timeout:?}"))?
        .map_err(|e| format!("{peer} at {addr}: {e}"))
}
