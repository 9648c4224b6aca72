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
use super::framed::{FrameReader, FrameWriter};
use super::session::SessionError;
use super::tls::Credentials;
use super::wire::Message;

/// Answers one relayed request (JSON in, JSON out); may block.
pub type Handler = Arc<dyn Fn(String) -> String + Send + Sync>;

/// Server side: the connection's first message was a command.
pub async fn answer<W: AsyncWrite + Unpin>(
    handler: Option<Handler>,
    request: String,
    writer: &mut FrameWriter<W>,
) -> Result<(), SessionError> {
    let Some(h) = handler else {
        let reason = SessionError::NoRelay;
        let _ = writer
            .send(&Message::Close {
                reason: reason.to_string(),
            })
            .await;
        return Err(reason);
    };
    let response = tokio::task::spawn_blocking(move || h(request))
        .await
        .map_err(|e| SessionError::Task {
            what: "relayed command",
            why: e.to_string(),
        })?;
    Ok(writer.send(&Message::ControlReply { response }).await?)
}

/// Why a command could not be relayed to the peer.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("{peer} at {addr} did not answer within {timeout:?}")]
    Timeout {
        peer: String,
        addr: SocketAddr,
        timeout: Duration,
    },
    #[error("{peer} at {addr}: {why}")]
    Failed {
        peer: String,
        addr: SocketAddr,
        why: SessionError,
    },
}

/// Client side: sends `request` to the peer at `addr`, returns its answer.
pub async fn ask(
    creds: &Credentials,
    addr: SocketAddr,
    compression: Compression,
    request: String,
    timeout: Duration,
) -> Result<String, RelayError> {
    let peer = creds.peer.clone();
    let exchange = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(SessionError::Connect)?;
        tcp.set_nodelay(true).ok();
        let config = creds.client_config()?;
        let tls = TlsConnector::from(config)
            .connect(Credentials::server_name(), tcp)
            .await
            .map_err(SessionError::Handshake)?;
        if !creds.is_peer(tls.get_ref().1.peer_certificates()) {
            return Err(SessionError::ServerNotPeer(peer.clone()));
        }
        let (rd, wr) = tokio::io::split(tls);
        let mut reader = FrameReader::new(rd);
        let mut writer = FrameWriter::new(wr, compression);
        writer.send(&Message::Control { request }).await?;
        match reader.next().await? {
            Message::ControlReply { response } => Ok(response),
            Message::Close { reason } => Err(SessionError::RelayRefused(reason)),
            other => Err(SessionError::Protocol(format!(
                "expected ControlReply, got {}",
                other.kind()
            ))),
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Err(_) => Err(RelayError::Timeout {
            peer,
            addr,
            timeout,
        }),
        Ok(r) => r.map_err(|why| RelayError::Failed { peer, addr, why }),
    }
}
