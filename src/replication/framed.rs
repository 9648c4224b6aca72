//! Framed messages over a TLS stream, and the checks every new connection
//! passes before any change is accepted from it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::errors::ChannelError;
pub use super::errors::HelloError;
use super::frame::{self, Compression, FrameError};
use super::tls::Credentials;
use super::wire::Message;

/// How long a peer may take to say hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes read from a connection, cut into frames.
pub struct Frames {
    buf: Vec<u8>,
    start: usize,
    /// Where [`peek_new`](Self::peek_new) stopped.
    peeked: usize,
}

impl Default for Frames {
    fn default() -> Self {
        Self::with(Vec::new())
    }
}

impl Frames {
    /// Starting from bytes already read.
    pub fn with(buf: Vec<u8>) -> Self {
        let mut buf = buf;
        buf.reserve(1 << 20);
        Self {
            buf,
            start: 0,
            peeked: 0,
        }
    }

    /// The next whole message, if one is buffered; errors name why the
    /// stream cannot be trusted.
    pub fn take(&mut self) -> Result<Option<Message>, FrameError> {
        match frame::decode(&self.buf[self.start..]) {
            Ok(Some((m, used))) => {
                self.start += used;
                self.reset_if_done();
                Ok(Some(m))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Hands the next whole message, if one is buffered, to `f` with a
    /// write's data where it lies in the buffer (empty when none trails the
    /// message: then the message holds its data, if any).
    pub fn take_with<R>(
        &mut self,
        f: impl FnOnce(Message, &[u8]) -> R,
    ) -> Result<Option<R>, FrameError> {
        let buf = &self.buf[self.start..];
        let Some((m, data, used)) = frame::decode_split(buf)? else {
            return Ok(None);
        };
        let r = f(m, &buf[data]);
        self.start += used;
        self.reset_if_done();
        Ok(Some(r))
    }

    fn reset_if_done(&mut self) {
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
            self.peeked = 0;
        }
    }

    /// Hands each whole message buffered and not yet handed out by an
    /// earlier call to `f`, without taking it, with the length of a trailing
    /// write's data (see [`frame::peek`]).
    pub fn peek_new(&mut self, mut f: impl FnMut(&Message, usize)) {
        let mut at = self.peeked.max(self.start);
        while let Some((m, data, used)) = frame::peek(&self.buf[at..]) {
            if let Some(m) = &m {
                f(m, data);
            }
            at += used;
        }
        self.peeked = at;
    }

    /// Hands the buffered messages to `f` from the next one to take,
    /// without taking them, as long as it returns true (with the length of
    /// a trailing write's data, as [`peek_new`](Self::peek_new)).
    pub fn peek_from_start(&self, mut f: impl FnMut(&Message, usize) -> bool) {
        let mut at = self.start;
        while let Some((m, data, used)) = frame::peek(&self.buf[at..]) {
            match &m {
                Some(m) if f(m, data) => at += used,
                _ => return,
            }
        }
    }

    /// Bytes buffered and not taken yet.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// A whole frame is already buffered (no read needed to get it).
    pub fn has_frame(&self) -> bool {
        frame::is_whole(&self.buf[self.start..])
    }

    /// Where the next read goes: the buffer itself, with room at its end.
    pub fn room(&mut self) -> &mut Vec<u8> {
        // Compact only when the consumed part dominates: frames are
        // large, and moving a partial one on every read costs a copy.
        if self.start > 0 && self.start >= self.buf.len() - self.start {
            self.buf.drain(..self.start);
            self.peeked = self.peeked.saturating_sub(self.start);
            self.start = 0;
        }
        self.buf.reserve(256 * 1024);
        &mut self.buf
    }

    /// The bytes not consumed yet.
    pub fn into_rest(mut self) -> Vec<u8> {
        self.buf.drain(..self.start);
        self.buf
    }
}

pub struct FrameReader<R> {
    rd: R,
    frames: Frames,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(rd: R) -> Self {
        Self {
            rd,
            frames: Frames::default(),
        }
    }

    /// The stream and any bytes read past the last message.
    pub fn into_parts(self) -> (R, Vec<u8>) {
        (self.rd, self.frames.into_rest())
    }

    /// A whole frame is already buffered (no read needed to get it).
    pub fn has_frame(&self) -> bool {
        self.frames.has_frame()
    }

    /// The next message; errors name why the stream cannot be trusted.
    pub async fn next(&mut self) -> Result<Message, ChannelError> {
        loop {
            if let Some(m) = self.frames.take()? {
                return Ok(m);
            }
            // Into the spare capacity: nothing is zeroed or copied twice.
            let n = self
                .rd
                .read_buf(self.frames.room())
                .await
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::UnexpectedEof => ChannelError::Lost,
                    _ => ChannelError::Io {
                        op: "read",
                        why: e.to_string(),
                    },
                })?;
            if n == 0 {
                return Err(ChannelError::PeerClosed);
            }
        }
    }
}

pub struct FrameWriter<W> {
    wr: W,
    buf: Vec<u8>,
    compression: Compression,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub fn new(wr: W, compression: Compression) -> Self {
        Self {
            wr,
            buf: Vec::with_capacity(1 << 20),
            compression,
        }
    }

    pub fn push(&mut self, m: &Message) -> Result<(), ChannelError> {
        Ok(frame::encode(m, self.compression, &mut self.buf)?)
    }

    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The stream (nothing may be left unsent).
    pub fn into_inner(self) -> W {
        debug_assert!(self.buf.is_empty());
        self.wr
    }

    pub async fn flush(&mut self) -> Result<(), ChannelError> {
        let write = |e: std::io::Error| ChannelError::Io {
            op: "write",
            why: e.to_string(),
        };
        self.wr.write_all(&self.buf).await.map_err(write)?;
        self.buf.clear();
        self.wr.flush().await.map_err(write)
    }

    pub async fn send(&mut self, m: &Message) -> Result<(), ChannelError> {
        self.push(m)?;
        self.flush().await
    }
}

/// What it takes to open a connection to the peer: its address, this node's
/// credentials, the cluster's name and the frames' compression.
#[derive(Clone)]
pub struct Connector {
    pub creds: Arc<Credentials>,
    pub cluster: String,
    pub peer_addr: SocketAddr,
    pub compression: Compression,
}

/// What a Hello must say to be accepted.
pub struct Expect<'a> {
    /// This node, as its versions' refusal names it.
    pub me: &'a str,
    pub cluster: &'a str,
    pub peer: &'a str,
    /// `None`: any module this node knows (checked by the caller).
    pub module: Option<&'a str>,
    pub dirs: Option<u32>,
}

/// What an accepted Hello said.
pub struct Hello {
    pub module: String,
    pub dirs: u32,
    pub generation: u64,
    pub verify: bool,
    pub acks: super::wire::AckAt,
    /// The protocol version both speak, and the peer's release.
    pub agreed: crate::versions::Agreed,
    /// The primary's new daemon goes on with the stream (see `Message::Hello`).
    pub resumes: bool,
}

/// This node's Hello speaks the link's versions.
pub fn speaks() -> Option<crate::versions::Speaks> {
    Some(crate::versions::Speaks::this(super::wire::PROTOCOL))
}

/// Checks a peer's Hello.
pub fn check_hello(m: Message, want: &Expect<'_>) -> Result<Hello, HelloError> {
    let Message::Hello {
        cluster,
        node,
        modules,
        dirs,
        generation,
        verify,
        acks,
        speaks,
        resumes,
    } = m
    else {
        return Err(HelloError::NotHello);
    };
    if cluster != want.cluster {
        return Err(HelloError::Cluster {
            theirs: cluster,
            ours: want.cluster.into(),
        });
    }
    if node != want.peer {
        return Err(HelloError::Node {
            said: node,
            expected: want.peer.into(),
        });
    }
    let [module] = <[String; 1]>::try_from(modules).map_err(|m| HelloError::Modules(m.len()))?;
    if let Some(w) = want.module
        && module != w
    {
        return Err(HelloError::Module {
            got: module,
            want: w.into(),
        });
    }
    if let Some(d) = want.dirs
        && d != dirs
    {
        return Err(HelloError::Dirs {
            module,
            theirs: dirs,
            ours: d as usize,
        });
    }
    let agreed = crate::versions::agree(
        super::wire::PROTOCOL,
        speaks.as_ref(),
        super::wire::BEFORE_RANGES,
    )
    .map_err(|ranges| HelloError::Versions {
        me: want.me.into(),
        peer: want.peer.into(),
        ranges,
    })?;
    Ok(Hello {
        module,
        dirs,
        generation,
        verify,
        acks,
        agreed,
        resumes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::frame::{Compression, encode, encode_trailing};
    use crate::replication::wire::WireMutation;

    fn write(seq: u64, path: &[u8], data: Vec<u8>) -> Message {
        Message::Mutate {
            seq,
            dir: 0,
            resync: true,
            times: Vec::new(),
            mutation: WireMutation::Write {
                path: Some(path.to_vec()),
                offset: seq * 10,
                data,
                sync: false,
            },
        }
    }

    /// A write's frame with its data trailing, as a channel sends it.
    fn encode_with(m: &Message, data: &[u8], out: &mut Vec<u8>) {
        encode_trailing(m, data, out).unwrap();
        out.extend_from_slice(data);
    }

    /// (seq, trailing data length) of what `peek_new` hands out.
    fn peeked(f: &mut Frames) -> Vec<(u64, usize)> {
        let mut out = Vec::new();
        f.peek_new(|m, trailing| {
            if let Message::Mutate { seq, .. } = m {
                out.push((*seq, trailing));
            }
        });
        out
    }

    #[test]
    fn a_look_ahead_sees_each_buffered_message_once_and_takes_none() {
        let mut b = Vec::new();
        encode_with(&write(1, b"a", Vec::new()), &[1; 5000], &mut b);
        // A small random write sent whole (the link compresses): decoded.
        encode(&write(2, b"b", vec![2; 5000]), Compression::Off, &mut b).unwrap();
        // Compressed, and plain but large: passed over, not decoded.
        encode(
            &write(3, b"c", vec![0; 100_000]),
            Compression::Zstd { level: 3 },
            &mut b,
        )
        .unwrap();
        let large = vec![9; crate::replication::frame::PEEK_PLAIN + 1];
        encode(&write(4, b"d", large), Compression::Off, &mut b).unwrap();
        let mut next = Vec::new();
        encode_with(&write(5, b"e", Vec::new()), &[5; 300], &mut next);
        // Half of the last frame has arrived.
        let half = next.len() / 2;
        b.extend_from_slice(&next[..half]);
        let mut f = Frames::with(b);
        assert_eq!(peeked(&mut f), [(1, 5000), (2, 0)]);
        assert_eq!(peeked(&mut f), [], "handed out twice");
        // Nothing was taken: the messages come out in order, whole.
        assert_eq!(f.take_with(|m, d| (m, d.len())).unwrap().unwrap().1, 5000);
        assert!(matches!(
            f.take().unwrap(),
            Some(Message::Mutate { seq: 2, .. })
        ));
        f.room().extend_from_slice(&next[half..]);
        assert_eq!(peeked(&mut f), [(5, 300)]);
        for want in [3, 4] {
            assert!(matches!(f.take().unwrap(), Some(Message::Mutate { seq, .. }) if seq == want));
        }
        assert_eq!(f.take_with(|_, d| d.len()).unwrap(), Some(300));
        assert!(!f.has_frame());
        // Past an emptied buffer, the next bytes are new again.
        let mut more = Vec::new();
        encode_with(&write(6, b"f", Vec::new()), &[6; 7], &mut more);
        f.room().extend_from_slice(&more);
        assert_eq!(peeked(&mut f), [(6, 7)]);
    }
}
