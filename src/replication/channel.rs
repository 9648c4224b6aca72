//! A replication stream driven by the threads that use it. The handshake and
//! the introductions run on the runtime; then the connection is handed to
//! plain threads: a sender encodes, encrypts and writes on its own thread
//! (the application's, on the primary), and a receiver reads, decrypts and
//! decodes on its own. On the sync path every hand-off to another thread or
//! task is a wake-up, and a wake-up costs more than the work it hands over.
//!
//! Sends are queued in the TLS layer until a durability point asks for them
//! (or enough piled up, or the receiver's backstop finds them old), so a
//! write and the fsync after it leave in one segment.

use std::io::{self, BufRead, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

pub use super::errors::ChannelError;
use super::frame::{self, Compression};
use super::framed::Frames;
use super::primary::LinkError;
use super::status::Tally;
use super::wire::{Message, Outgoing};

/// Queued bytes beyond this go out without waiting for a durability point.
const FLUSH_AT: usize = 256 << 10;

pub struct Channel {
    sock: TcpStream,
    tally: std::sync::Arc<Tally>,
    state: Mutex<State>,
    /// How long a send may find no room before the peer counts as stuck.
    patience: Duration,
}

struct State {
    tls: rustls::Connection,
    /// Plaintext a sender read while it waited for room: the receiver's.
    early: Vec<u8>,
    /// Bytes queued in the TLS layer, and since when.
    queued: usize,
    since: Option<Instant>,
    last_send: Option<Instant>,
    scratch: Vec<u8>,
    /// Why the channel cannot be used any more.
    broken: Option<ChannelError>,
    /// Time senders spent waiting for room in the socket.
    waited: Duration,
    /// When the peer last sent anything.
    heard: Instant,
}

impl Channel {
    /// Takes over a connection the runtime opened: its socket, its TLS
    /// state, and the plaintext already read past the last message (which
    /// goes back to the receiver's `Frames`).
    pub fn from_tokio(
        tcp: tokio::net::TcpStream,
        tls: impl Into<rustls::Connection>,
        patience: Duration,
        tally: std::sync::Arc<Tally>,
    ) -> Result<Self, ChannelError> {
        let take_over = |e: io::Error| ChannelError::TakeOver(e.to_string());
        let sock = tcp.into_std().map_err(take_over)?;
        Self::new(sock, tls, patience, tally).map_err(take_over)
    }

    /// Takes over a connection whose handshake is done; counts its flushes
    /// in `tally`.
    pub fn new(
        sock: TcpStream,
        tls: impl Into<rustls::Connection>,
        patience: Duration,
        tally: std::sync::Arc<Tally>,
    ) -> io::Result<Self> {
        sock.set_nonblocking(true)?;
        let mut tls = tls.into();
        // The queue is bounded by when it is flushed, not by rustls.
        tls.set_buffer_limit(None);
        Ok(Self {
            sock,
            tally,
            state: Mutex::new(State {
                tls,
                early: Vec::new(),
                queued: 0,
                since: None,
                last_send: None,
                scratch: Vec::with_capacity(64 << 10),
                broken: None,
                waited: Duration::ZERO,
                heard: Instant::now(),
            }),
            patience,
        })
    }

    /// Queues `m`; with `now`, writes it and everything queued before it.
    pub fn send(
        &self,
        m: &Message,
        compression: Compression,
        now: bool,
    ) -> Result<(), ChannelError> {
        self.send_out(&Outgoing::whole(m.clone()), compression, now)
    }

    /// [`send`](Self::send) of a message whose write data is still the
    /// caller's: encrypted from where it is unless it is compressed.
    pub fn send_out(
        &self,
        m: &Outgoing<'_>,
        compression: Compression,
        now: bool,
    ) -> Result<(), ChannelError> {
        let mut s = self.state.lock();
        if let Some(e) = &s.broken {
            return Err(e.clone());
        }
        let st = &mut *s;
        st.scratch.clear();
        let data = if m.data.is_empty() || compression != Compression::Off {
            let whole;
            let msg = if m.data.is_empty() {
                &m.msg
            } else {
                whole = m.to_message();
                &whole
            };
            frame::encode(msg, compression, &mut st.scratch)?;
            &[][..]
        } else {
            frame::encode_trailing(&m.msg, m.data, &mut st.scratch)?;
            m.data
        };
        let mut parts = [io::IoSlice::new(&st.scratch), io::IoSlice::new(data)];
        let mut parts = &mut parts[..];
        while !parts.is_empty() {
            match st.tls.writer().write_vectored(parts) {
                Ok(0) => {
                    return Err(ChannelError::Tls(
                        "the connection takes no more data".into(),
                    ));
                }
                Ok(n) => io::IoSlice::advance_slices(&mut parts, n),
                Err(e) => return Err(ChannelError::Tls(e.to_string())),
            }
        }
        st.queued += st.scratch.len() + data.len();
        let t = Instant::now();
        st.since.get_or_insert(t);
        st.last_send = Some(t);
        if st.scratch.capacity() > 4 << 20 {
            // One large frame does not keep its buffer for the life of the link.
            st.scratch = Vec::with_capacity(64 << 10);
        }
        if now || s.queued >= FLUSH_AT {
            self.drain(&mut s, self.patience)?;
        }
        Ok(())
    }

    /// Writes whatever is queued.
    pub fn flush(&self) -> Result<(), ChannelError> {
        let mut s = self.state.lock();
        if let Some(e) = &s.broken {
            return Err(e.clone());
        }
        self.drain(&mut s, self.patience)
    }

    /// Writes what the socket takes now, never waiting for room nor for a
    /// sender that holds the channel: for a thread that must not wait on
    /// the peer. What is left goes with the next flush or the backstop.
    pub fn nudge(&self) {
        let Some(mut s) = self.state.try_lock() else {
            return;
        };
        if s.broken.is_some() || !s.tls.wants_write() {
            return;
        }
        Tally::count(&self.tally.flushes, 1);
        while s.tls.wants_write() {
            match s.tls.write_tls(&mut &self.sock) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    self.fail(&mut s, ChannelError::io("write", e));
                    return;
                }
            }
        }
        s.queued = 0;
        s.since = None;
    }

    /// The backstop for sends no durability point asked for: writes what
    /// has been queued for `age` or longer. Returns how long the caller may
    /// wait before it looks again: `age` while sends keep coming, longer
    /// once they stopped a while ago.
    pub fn backstop(&self, age: Duration) -> Result<Duration, ChannelError> {
        let mut s = self.state.lock();
        if let Some(e) = &s.broken {
            return Err(e.clone());
        }
        if s.since.is_some_and(|t| t.elapsed() >= age) {
            self.drain(&mut s, self.patience)?;
        }
        Ok(next_look(&s, age))
    }

    /// The socket's readiness to be read, registered with the runtime (on a
    /// duplicate, so that the socket itself stays as it is).
    pub fn readiness(&self) -> io::Result<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
        let fd = std::os::fd::OwnedFd::from(self.sock.try_clone()?);
        // SAFETY: the AsyncFd owns `fd`, an open descriptor nothing else
        // closes, and an OwnedFd always returns that same number.
        unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
        }
        .map_err(|e| e.into_parts().1)
    }

    /// Whether the socket holds bytes not read yet (or its end), or a
    /// sender took some in while it waited for room.
    pub fn readable_now(&self) -> bool {
        !self.state.lock().early.is_empty()
            || poll(&self.sock, libc::POLLIN, Duration::ZERO).is_ok_and(|r| r != 0)
    }

    /// What [`backstop`](Self::backstop) would answer when it has nothing
    /// to write; `None` if it has (or the channel broke): then it is called.
    pub fn idle_backstop(&self, age: Duration) -> Option<Duration> {
        let s = self.state.lock();
        if s.broken.is_some() || s.since.is_some() {
            return None;
        }
        Some(next_look(&s, age))
    }

    /// How long senders waited for room in the socket, in all.
    pub fn waited(&self) -> Duration {
        self.state.lock().waited
    }

    /// The next message, `None` if none came within `timeout`. What arrived
    /// before the connection failed is delivered before the failure.
    pub fn recv(
        &self,
        frames: &mut Frames,
        timeout: Duration,
    ) -> Result<Option<Message>, ChannelError> {
        if !self.fill(frames, timeout)? {
            return Ok(None);
        }
        Ok(frames.take()?)
    }

    /// Reads until `frames` holds a whole frame (true) or `timeout` passes
    /// (false).
    pub fn fill(&self, frames: &mut Frames, timeout: Duration) -> Result<bool, ChannelError> {
        let deadline = Instant::now() + timeout;
        loop {
            if frames.has_frame() {
                return Ok(true);
            }
            {
                let mut s = self.state.lock();
                if !s.early.is_empty() {
                    frames.room().append(&mut s.early);
                    continue;
                }
                if let Some(e) = &s.broken {
                    return Err(e.clone());
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let ready =
                poll(&self.sock, libc::POLLIN, left).map_err(|e| ChannelError::io("poll", e))?;
            if ready == 0 {
                return Ok(false);
            }
            let mut s = self.state.lock();
            // A failure is kept in `broken` and reported after what came first.
            let _ = self.pull(&mut s, frames.room());
            if s.tls.wants_write() && s.broken.is_none() {
                // The TLS layer has something to say (a key update).
                let _ = self.drain(&mut s, self.patience);
            }
        }
    }

    /// Adds to `frames` whatever has arrived, without waiting: a peer that
    /// looks ahead in what is buffered sees further. A failure is reported
    /// by the next [`fill`](Self::fill), after what came first.
    pub fn pull_ready(&self, frames: &mut Frames) {
        let mut s = self.state.lock();
        if !s.early.is_empty() {
            frames.room().append(&mut s.early);
        }
        if s.broken.is_none() {
            let _ = self.pull(&mut s, frames.room());
        }
    }

    /// Ends the connection: `graceful` writes what is queued first (for a
    /// second at most). Wakes every thread waiting on it.
    pub fn close(&self, graceful: bool) {
        if graceful {
            let mut s = self.state.lock();
            if s.broken.is_none() {
                let _ = self.drain(&mut s, Duration::from_secs(1));
            }
        }
        // Before the lock: a sender waiting for room holds it, and wakes
        // up to find the socket shut.
        let _ = self.sock.shutdown(Shutdown::Both);
        self.state.lock().broken.get_or_insert(ChannelError::Closed);
    }

    fn fail(&self, s: &mut State, why: ChannelError) -> ChannelError {
        let _ = self.sock.shutdown(Shutdown::Both);
        s.broken.get_or_insert(why).clone()
    }

    /// Writes everything queued; while the socket has no room, reads what
    /// the peer sends meanwhile, or both sides could wait on each other.
    /// Gives up once the peer was silent for `patience` with no room: a
    /// socket that takes a little now and then (its buffer growing) does
    /// not stretch the wait, and every thread waiting on a stuck peer gives
    /// up at the same moment.
    fn drain(&self, s: &mut State, patience: Duration) -> Result<(), ChannelError> {
        if s.tls.wants_write() {
            Tally::count(&self.tally.flushes, 1);
        }
        let deadline = Instant::now().min(s.heard) + patience;
        while s.tls.wants_write() {
            match s.tls.write_tls(&mut &self.sock) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let t0 = Instant::now();
                    let left = deadline.saturating_duration_since(t0);
                    if left.is_zero() {
                        let why = ChannelError::Stuck {
                            patience_ms: patience.as_millis(),
                        };
                        return Err(self.fail(s, why));
                    }
                    let ready = poll(&self.sock, libc::POLLOUT | libc::POLLIN, left)
                        .map_err(|e| ChannelError::io("poll", e))?;
                    if ready & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                        let mut early = std::mem::take(&mut s.early);
                        let r = self.pull(s, &mut early);
                        s.early = early;
                        r?;
                    }
                    s.waited += t0.elapsed();
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.fail(s, ChannelError::io("write", e))),
            }
        }
        s.queued = 0;
        s.since = None;
        Ok(())
    }

    /// Reads what the socket holds and appends its plaintext to `out`.
    fn pull(&self, s: &mut State, out: &mut Vec<u8>) -> Result<(), ChannelError> {
        loop {
            match s.tls.read_tls(&mut &self.sock) {
                Ok(0) => return Err(self.fail(s, ChannelError::PeerClosed)),
                Ok(_) => {
                    s.heard = Instant::now();
                    let io = match s.tls.process_new_packets() {
                        Ok(io) => io,
                        Err(e) => return Err(self.fail(s, ChannelError::Tls(e.to_string()))),
                    };
                    let mut n = io.plaintext_bytes_to_read();
                    let closed = io.peer_has_closed();
                    // Straight from the TLS layer's buffers: nothing is
                    // zeroed first.
                    while n > 0 {
                        let mut r = s.tls.reader();
                        let got = match r.fill_buf() {
                            Ok(b) => {
                                out.extend_from_slice(b);
                                b.len()
                            }
                            Err(e) => return Err(self.fail(s, ChannelError::Tls(e.to_string()))),
                        };
                        r.consume(got);
                        n = n.saturating_sub(got.max(1));
                    }
                    if closed {
                        return Err(self.fail(s, ChannelError::PeerClosed));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.fail(s, ChannelError::io("read", e))),
            }
        }
    }
}

/// How long the backstop may wait before it looks again: `age` while sends
/// keep coming, longer once they stopped a while ago.
fn next_look(s: &State, age: Duration) -> Duration {
    let busy = s
        .last_send
        .is_some_and(|t| t.elapsed() < Duration::from_secs(1));
    if busy {
        age
    } else {
        Duration::from_millis(100)
    }
}

/// Waits until `sock` is ready for `events` or `timeout` passes: the ready
/// events, 0 on timeout.
fn poll(sock: &TcpStream, events: i16, timeout: Duration) -> io::Result<i16> {
    let mut p = libc::pollfd {
        fd: sock.as_raw_fd(),
        events,
        revents: 0,
    };
    // Rounded up: a wait shorter than a millisecond is not a busy loop.
    let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
    loop {
        // SAFETY: `p` is one valid, initialised pollfd that lives across
        // the call, and the count passed is 1; `sock` keeps the fd open.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        if r >= 0 {
            return Ok(if r == 0 { 0 } else { p.revents });
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// The primary's end of a stream: what it sends, compressed where that pays.
pub struct PrimaryEnd {
    channel: std::sync::Arc<Channel>,
    compression: Compression,
    /// What was read and not taken yet; held by whichever thread reads.
    frames: Mutex<Frames>,
    /// When a call last waited for the peer, and when the peer was last heard.
    waiter: Mutex<Instant>,
    heard: Mutex<Instant>,
    /// Whether the socket, not the disk, holds senders back: measured as
    /// the share of time they wait for room, over the last second or so.
    slow: std::sync::atomic::AtomicBool,
    measured: Mutex<(Instant, Duration)>,
}

/// Live changes are compressed (`auto`) while senders wait for room in the
/// socket at least this share of the time, and plain again below a fifth of it.
const SLOW_ABOVE: f64 = 0.25;

impl PrimaryEnd {
    /// `rest`: what was read past the introductions.
    pub fn new(channel: std::sync::Arc<Channel>, compression: Compression, rest: Vec<u8>) -> Self {
        let now = Instant::now();
        Self {
            channel,
            compression,
            frames: Mutex::new(Frames::with(rest)),
            waiter: Mutex::new(now.checked_sub(Duration::from_secs(1)).unwrap_or(now)),
            heard: Mutex::new(now),
            slow: std::sync::atomic::AtomicBool::new(false),
            measured: Mutex::new((Instant::now(), Duration::ZERO)),
        }
    }

    /// Whether a call waited for the peer within `d`: then waiting calls
    /// read the answers themselves, and the link's reader stands aside.
    pub fn waited_within(&self, d: Duration) -> bool {
        self.waiter.lock().elapsed() < d
    }

    /// The socket's readiness to be read, for a reader that waits on the
    /// runtime (a duplicate of the socket, registered with the runtime).
    pub fn readiness(&self) -> io::Result<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
        self.channel.readiness()
    }

    /// Whether anything arrived that is not taken yet: in the socket, or
    /// read already (whole frames left by a call that read its answer); true
    /// while another thread reads.
    pub fn readable_now(&self) -> bool {
        self.frames.try_lock().is_none_or(|f| f.has_frame()) || self.channel.readable_now()
    }

    /// The backstop's next wait if it has nothing to write (see
    /// [`Channel::idle_backstop`]).
    pub fn idle_backstop(&self, age: Duration) -> Option<Duration> {
        self.channel.idle_backstop(age)
    }

    /// When the peer was last heard.
    pub fn heard(&self) -> Instant {
        *self.heard.lock()
    }

    /// The backstop of queued sends (see [`Channel::backstop`]).
    pub fn backstop(&self, age: Duration) -> Result<Duration, ChannelError> {
        self.channel.backstop(age)
    }

    /// Reads what the peer sent, waiting until `until` at most; `None` if
    /// another thread is reading.
    pub fn read_until(&self, until: Instant) -> Option<Result<Vec<Message>, ChannelError>> {
        let mut frames = self.frames.try_lock()?;
        let left = until.saturating_duration_since(Instant::now());
        let mut got = Vec::new();
        match self.channel.recv(&mut frames, left) {
            Ok(Some(m)) => got.push(m),
            Ok(None) => return Some(Ok(got)),
            Err(e) => return Some(Err(e)),
        }
        // Whatever else is already here comes along.
        loop {
            match frames.take() {
                Ok(Some(m)) => got.push(m),
                Ok(None) => break,
                Err(e) => return Some(Err(e.into())),
            }
        }
        *self.heard.lock() = Instant::now();
        Some(Ok(got))
    }

    /// How a message is encoded: resync and full sync as configured; live
    /// changes, under `auto`, compressed only while the link is slow.
    fn compression_of(&self, m: &Message) -> Compression {
        use std::sync::atomic::Ordering::Relaxed;
        let Compression::Auto { level } = self.compression else {
            return self.compression;
        };
        if matches!(m, Message::Mutate { resync: true, .. }) {
            return self.compression;
        }
        if let Some(mut at) = self.measured.try_lock() {
            let elapsed = at.0.elapsed();
            if elapsed >= Duration::from_secs(1) {
                let waited = self.channel.waited();
                let share = (waited - at.1).as_secs_f64() / elapsed.as_secs_f64();
                let slow = self.slow.load(Relaxed);
                if share >= SLOW_ABOVE && !slow || share < SLOW_ABOVE / 5.0 && slow {
                    tracing::info!(
                        "replication link {}: live changes {}",
                        if slow { "fast again" } else { "slow" },
                        if slow { "sent plain" } else { "compressed" },
                    );
                    self.slow.store(!slow, Relaxed);
                }
                *at = (Instant::now(), waited);
            }
        }
        if self.slow.load(Relaxed) {
            Compression::Zstd { level }
        } else {
            Compression::Off
        }
    }
}

impl super::primary::Outlet for PrimaryEnd {
    fn send(&self, m: &Outgoing<'_>, now: bool) -> Result<(), LinkError> {
        Ok(self.channel.send_out(m, self.compression_of(&m.msg), now)?)
    }

    fn flush(&self) -> Result<(), LinkError> {
        Ok(self.channel.flush()?)
    }

    fn nudge(&self) {
        self.channel.nudge()
    }

    fn close(&self, graceful: bool) {
        self.channel.close(graceful)
    }

    fn read(&self, until: Instant) -> Option<Result<Vec<Message>, LinkError>> {
        *self.waiter.lock() = Instant::now();
        self.read_until(until).map(|r| r.map_err(LinkError::from))
    }
}
