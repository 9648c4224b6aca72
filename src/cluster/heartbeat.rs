//! Heartbeats: one UDP datagram per network path every interval, carrying
//! each module's state on this node. Datagrams are authenticated with
//! HMAC-SHA256 under the cluster's heartbeat key and numbered: a forged,
//! altered or replayed datagram is dropped and counted, never believed.
//!
//! Layout: `"TB"`, version, postcard-encoded [`Beat`], 32-byte tag over all
//! of the above.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use ring::hmac;
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;

use super::machine::{Maintenance, PeerView};
use crate::versions::{Range, Speaks};

const MAGIC: [u8; 2] = *b"TB";
/// The version this node's datagrams carry (theirs must be one it speaks).
const VERSION: u8 = 1;
/// The heartbeats' versions this release speaks: what later releases add
/// goes after the fields an earlier one reads (see [`Extra`]), so the one
/// version has served every release so far.
pub const PROTOCOL: Range = Range::new(1, 1);
/// Heartbeats whose sending time is kept for the echo: a few seconds' worth.
const SENT_KEPT: usize = 64;
const TAG_LEN: usize = 32;
/// Larger datagrams are not heartbeats.
pub const MAX_DATAGRAM: usize = 16 * 1024;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Beat {
    pub cluster: String,
    pub node: String,
    /// Random per daemon start: numbering restarts with it.
    pub boot: u64,
    pub seq: u64,
    /// Sender's wall clock (ms): a new boot must be later than the last one seen.
    pub sent_ms: u64,
    pub modules: Vec<(String, PeerView)>,
    /// Sent after the rest (see [`Extra`]).
    #[serde(skip)]
    pub extra: Extra,
    /// What the sender speaks, sent after [`Later`] (`None`: a release
    /// that does not say).
    #[serde(skip)]
    pub speaks: Option<Speaks>,
}

/// What a heartbeat says beyond the fields above. It is encoded after them,
/// where a node that knows only those stops reading: nodes of both kinds
/// keep hearing each other during an upgrade.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extra {
    /// As the serving node: each module's bytes its peer lacks.
    pub dirty: Vec<(String, u64)>,
    /// Per path, by position: the last heartbeat heard from the peer there
    /// (its seq) and how many µs ago, so the peer can time the round trip.
    pub echo: Vec<Option<(u64, u64)>>,
}

/// What a heartbeat says beyond [`Extra`], encoded after it for the same
/// reason: a node that knows only `Extra` stops reading before it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Later {
    /// The modules this node cannot serve now ([`PeerView::cannot_serve`],
    /// which the modules' views leave out of their encoding).
    cannot_serve: Vec<String>,
}

impl Later {
    fn of(beat: &Beat) -> Later {
        Later {
            cannot_serve: beat
                .modules
                .iter()
                .filter(|(_, v)| v.cannot_serve)
                .map(|(n, _)| n.clone())
                .collect(),
        }
    }

    fn apply(&self, beat: &mut Beat) {
        for (n, v) in &mut beat.modules {
            v.cannot_serve = self.cannot_serve.contains(n);
        }
    }
}

/// What a heartbeat says beyond [`Later`], encoded after it for the same
/// reason: a node that knows only `Later` stops reading before it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Maintained {
    /// Each module's word on maintenance ([`PeerView::maintenance`]), for
    /// the modules that ever had it switched.
    maintenance: Vec<(String, Maintenance)>,
}

impl Maintained {
    fn of(beat: &Beat) -> Maintained {
        Maintained {
            maintenance: beat
                .modules
                .iter()
                .filter(|(_, v)| v.maintenance != Maintenance::default())
                .map(|(n, v)| (n.clone(), v.maintenance.clone()))
                .collect(),
        }
    }

    fn apply(self, beat: &mut Beat) {
        for (n, m) in self.maintenance {
            if let Some((_, v)) = beat.modules.iter_mut().find(|(x, _)| *x == n) {
                v.maintenance = m;
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Dropped {
    #[error("not a heartbeat")]
    Malformed,
    #[error("heartbeat version {0}, this node speaks {PROTOCOL}")]
    Version(u8),
    #[error("bad HMAC: not from this cluster, or altered")]
    BadMac,
    #[error("replayed or out of order")]
    Replayed,
    #[error("from {node:?} of cluster {cluster:?}, not the peer")]
    Foreign { cluster: String, node: String },
}

#[derive(Clone)]
pub struct Key(hmac::Key);

impl Key {
    pub fn new(secret: &[u8]) -> Key {
        Key(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    /// The key written by `tandem init` (hex).
    pub fn load(path: &Path) -> Result<Key, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let hex = text.trim();
        if hex.len() < 32 || hex.len() % 2 != 0 {
            return Err(KeyError::TooShort(path.to_path_buf()));
        }
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| KeyError::NotHex(path.to_path_buf()))?;
        Ok(Key::new(&bytes))
    }
}

/// Why the heartbeat key cannot be used; each names its file.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("heartbeat key {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("heartbeat key {0}: expected at least 16 bytes in hex")]
    TooShort(PathBuf),
    #[error("heartbeat key {0}: not hexadecimal")]
    NotHex(PathBuf),
}

/// A heartbeat path's local address cannot be bound.
#[derive(Debug, thiserror::Error)]
#[error("heartbeat: cannot bind {addr}: {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

pub fn seal(key: &Key, beat: &Beat) -> Vec<u8> {
    // A tuple is its fields one after the other: the beat, then the extras.
    let speaks = Speaks::this(PROTOCOL);
    seal_with(
        key,
        MAGIC,
        &(
            beat,
            &beat.extra,
            &Later::of(beat),
            &speaks,
            &Maintained::of(beat),
        ),
    )
}

pub fn open(key: &Key, datagram: &[u8]) -> Result<Beat, Dropped> {
    let body = verified(key, MAGIC, datagram)?;
    let (mut beat, rest) =
        postcard::take_from_bytes::<Beat>(body).map_err(|_| Dropped::Malformed)?;
    // A node that sends no extra, or a later one with more: what is known.
    let (extra, rest) = postcard::take_from_bytes(rest).unwrap_or_default();
    beat.extra = extra;
    let (later, rest): (Later, _) = postcard::take_from_bytes(rest).unwrap_or_default();
    later.apply(&mut beat);
    // What this release says after that: its versions, then maintenance.
    let (speaks, rest) = match postcard::take_from_bytes::<Speaks>(rest) {
        Ok((s, rest)) => (Some(s), rest),
        Err(_) => (None, &[][..]),
    };
    beat.speaks = speaks;
    let maintained: Maintained = postcard::take_from_bytes(rest)
        .map(|(m, _)| m)
        .unwrap_or_default();
    maintained.apply(&mut beat);
    Ok(beat)
}

/// Signs any message the nodes (and the witness) exchange over UDP; `magic`
/// keeps one kind from being taken for another.
pub fn seal_with<T: Serialize>(key: &Key, magic: [u8; 2], msg: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(&magic);
    out.push(VERSION);
    let mut out = postcard::to_extend(msg, out).expect("messages serialise");
    let tag = hmac::sign(&key.0, &out);
    out.extend_from_slice(tag.as_ref());
    out
}

pub fn open_with<T: serde::de::DeserializeOwned>(
    key: &Key,
    magic: [u8; 2],
    datagram: &[u8],
) -> Result<T, Dropped> {
    postcard::from_bytes(verified(key, magic, datagram)?).map_err(|_| Dropped::Malformed)
}

/// [`open_with`], and what the sender speaks when it says (a release
/// before ranges sends the message alone; a later one may add more, left
/// unread).
pub fn open_speaking<T: serde::de::DeserializeOwned>(
    key: &Key,
    magic: [u8; 2],
    datagram: &[u8],
) -> Result<(T, Option<Speaks>), Dropped> {
    let body = verified(key, magic, datagram)?;
    let (msg, rest) = postcard::take_from_bytes(body).map_err(|_| Dropped::Malformed)?;
    Ok((msg, postcard::take_from_bytes(rest).ok().map(|(s, _)| s)))
}

/// The message's encoding, once its kind, version and HMAC are right.
fn verified<'a>(key: &Key, magic: [u8; 2], datagram: &'a [u8]) -> Result<&'a [u8], Dropped> {
    if datagram.len() < 3 + TAG_LEN || datagram[..2] != magic {
        return Err(Dropped::Malformed);
    }
    if !(PROTOCOL.lowest..=PROTOCOL.highest).contains(&datagram[2]) {
        return Err(Dropped::Version(datagram[2]));
    }
    let (body, tag) = datagram.split_at(datagram.len() - TAG_LEN);
    // Authenticate before parsing anything an attacker wrote.
    hmac::verify(&key.0, body, tag).map_err(|_| Dropped::BadMac)?;
    Ok(&body[3..])
}

/// Accepts each heartbeat of the peer at most once, in order.
#[derive(Default)]
pub struct Replay {
    last: Option<(u64, u64, u64)>,
}

impl Replay {
    pub fn accept(&mut self, b: &Beat) -> bool {
        let ok = match self.last {
            None => true,
            Some((boot, seq, _)) if boot == b.boot => b.seq > seq,
            Some((_, _, sent)) => b.sent_ms > sent,
        };
        if ok {
            self.last = Some((b.boot, b.seq, b.sent_ms));
        }
        ok
    }
}

/// Dropped datagrams, by reason (shown in the status).
#[derive(Default, Debug)]
pub struct Counters {
    pub received: AtomicU64,
    pub sent: AtomicU64,
    pub bad_mac: AtomicU64,
    pub replayed: AtomicU64,
    pub malformed: AtomicU64,
    pub foreign: AtomicU64,
}

/// One network path: this node's address and the peer's, on the heartbeat port.
#[derive(Clone, Copy, Debug)]
pub struct NetPath {
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

pub struct Heartbeats {
    pub key: Key,
    pub cluster: String,
    pub me: String,
    pub peer: String,
    pub paths: Vec<NetPath>,
    pub interval: Duration,
    pub counters: Counters,
    /// What to announce: each module's view, kept current by the manager.
    pub views: Mutex<Vec<(String, PeerView)>>,
    /// Send at once (a state changed) instead of at the next interval.
    pub now: tokio::sync::Notify,
    /// When the peer was last heard on each path, kept by the receivers
    /// themselves so a busy cluster manager never mistakes itself for a
    /// silent peer.
    pub heard: Mutex<Vec<Option<std::time::Instant>>>,
    /// The round trip on each path, as last timed.
    pub rtt: Mutex<Vec<Option<Duration>>>,
    /// As the serving node: each module's bytes the peer lacks, to say.
    pub dirty: Mutex<Vec<(String, u64)>>,
    /// The peer's last word on the same.
    pub peer_dirty: Mutex<Vec<(String, u64)>>,
    /// What the peer's heartbeats say it speaks (its release).
    pub peer_speaks: Mutex<Option<Speaks>>,
    /// The seq last heard on each path, for the echo.
    heard_seq: Mutex<Vec<u64>>,
    /// Heartbeats of the peer that never arrived on each path (gaps in the
    /// numbers it sends on every path), and the last (boot, seq) seen there.
    pub lost: Mutex<Vec<u64>>,
    seen_on: Mutex<Vec<Option<(u64, u64)>>>,
    /// When recent heartbeats went out, by seq.
    sent: Mutex<std::collections::VecDeque<(u64, std::time::Instant)>>,
    boot: u64,
    seq: AtomicU64,
    replay: Mutex<Replay>,
}

/// A heartbeat accepted from the peer on path `path`.
pub struct Heard {
    pub path: usize,
    pub beat: Beat,
}

impl Heartbeats {
    pub fn new(
        key: Key,
        cluster: &str,
        me: &str,
        peer: &str,
        paths: Vec<NetPath>,
        interval: Duration,
    ) -> Arc<Self> {
        let heard = Mutex::new(vec![None; paths.len()]);
        Arc::new(Heartbeats {
            heard,
            rtt: Mutex::new(vec![None; paths.len()]),
            dirty: Mutex::new(Vec::new()),
            peer_dirty: Mutex::new(Vec::new()),
            peer_speaks: Mutex::new(None),
            heard_seq: Mutex::new(vec![0; paths.len()]),
            lost: Mutex::new(vec![0; paths.len()]),
            seen_on: Mutex::new(vec![None; paths.len()]),
            sent: Mutex::new(Default::default()),
            key,
            cluster: cluster.into(),
            me: me.into(),
            peer: peer.into(),
            paths,
            interval,
            counters: Counters::default(),
            views: Mutex::new(Vec::new()),
            now: tokio::sync::Notify::new(),
            boot: crate::changelog::random_id().unwrap_or(1),
            seq: AtomicU64::new(0),
            replay: Mutex::new(Replay::default()),
        })
    }

    /// Binds every path; then sends and receives until `stop`.
    pub async fn start(
        self: &Arc<Self>,
        heard: tokio::sync::mpsc::UnboundedSender<Heard>,
        stop: &crate::stop::Stop,
    ) -> Result<(), BindError> {
        let mut socks = Vec::new();
        for p in &self.paths {
            let s = UdpSocket::bind(p.local).await.map_err(|source| BindError {
                addr: p.local,
                source,
            })?;
            socks.push(Arc::new(s));
        }
        for (i, s) in socks.iter().enumerate() {
            let (me, s, tx) = (self.clone(), s.clone(), heard.clone());
            stop.spawn(format!("heartbeat-receive-{i}"), async move {
                me.receive(i, s, tx).await
            });
        }
        let me = self.clone();
        stop.spawn("heartbeat-send", async move { me.send_loop(socks).await });
        Ok(())
    }

    fn beat(&self) -> Beat {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let now = std::time::Instant::now();
        let echo = {
            let (heard, seqs) = (self.heard.lock(), self.heard_seq.lock());
            heard
                .iter()
                .zip(seqs.iter())
                .map(|(h, s)| h.map(|at| (*s, now.duration_since(at).as_micros() as u64)))
                .collect()
        };
        let mut sent = self.sent.lock();
        if sent.len() == SENT_KEPT {
            sent.pop_front();
        }
        sent.push_back((seq, now));
        Beat {
            cluster: self.cluster.clone(),
            node: self.me.clone(),
            boot: self.boot,
            seq,
            sent_ms: now_ms(),
            modules: self.views.lock().clone(),
            extra: Extra {
                dirty: self.dirty.lock().clone(),
                echo,
            },
            speaks: Some(Speaks::this(PROTOCOL)),
        }
    }

    /// A heartbeat heard on `path`: it times the round trip of the ones it
    /// echoes.
    fn heard_on(&self, path: usize, beat: &Beat) {
        let now = std::time::Instant::now();
        self.heard.lock()[path] = Some(now);
        self.heard_seq.lock()[path] = beat.seq;
        *self.peer_dirty.lock() = beat.extra.dirty.clone();
        *self.peer_speaks.lock() = beat.speaks.clone();
        let sent = self.sent.lock();
        let mut rtt = self.rtt.lock();
        for (i, e) in beat.extra.echo.iter().enumerate().take(rtt.len()) {
            let Some((seq, held_us)) = e else { continue };
            let Some((_, at)) = sent.iter().find(|(s, _)| s == seq) else {
                continue;
            };
            if let Some(t) = now
                .duration_since(*at)
                .checked_sub(Duration::from_micros(*held_us))
            {
                rtt[i] = Some(t);
            }
        }
    }

    async fn send_loop(self: Arc<Self>, socks: Vec<Arc<UdpSocket>>) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut warned = vec![false; socks.len()];
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.now.notified() => {}
            }
            // Nothing to say before the manager has published its modules:
            // an empty heartbeat would read as "not running them".
            if self.views.lock().is_empty() {
                continue;
            }
            let datagram = seal(&self.key, &self.beat());
            for (i, (s, p)) in socks.iter().zip(&self.paths).enumerate() {
                match s.send_to(&datagram, p.remote).await {
                    Ok(_) => {
                        self.counters.sent.fetch_add(1, Ordering::Relaxed);
                        warned[i] = false;
                    }
                    Err(e) if !warned[i] => {
                        tracing::warn!("heartbeat to {}: {e}", p.remote);
                        warned[i] = true;
                    }
                    Err(_) => {}
                }
            }
        }
    }

    async fn receive(
        self: Arc<Self>,
        path: usize,
        sock: Arc<UdpSocket>,
        tx: tokio::sync::mpsc::UnboundedSender<Heard>,
    ) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let (n, from) = match sock.recv_from(&mut buf).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!("heartbeat receive on {}: {e}", self.paths[path].local);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let checked = self.authentic(&buf[..n]).and_then(|b| {
                self.count_on(path, &b);
                self.first(b)
            });
            match checked {
                Ok(beat) => {
                    self.counters.received.fetch_add(1, Ordering::Relaxed);
                    self.heard_on(path, &beat);
                    if tx.send(Heard { path, beat }).is_err() {
                        return;
                    }
                }
                Err(d) => {
                    let c = match d {
                        Dropped::BadMac => &self.counters.bad_mac,
                        Dropped::Replayed => &self.counters.replayed,
                        Dropped::Foreign { .. } => &self.counters.foreign,
                        Dropped::Malformed | Dropped::Version(_) => &self.counters.malformed,
                    };
                    // Logged once per kind and then every 100th, not per datagram.
                    let n = c.fetch_add(1, Ordering::Relaxed);
                    if n % 100 == 0 {
                        tracing::warn!("heartbeat from {from} dropped: {d} ({} so far)", n + 1);
                    }
                }
            }
        }
    }

    /// What a received datagram is worth: the peer's heartbeat, or why it is dropped.
    pub fn check(&self, datagram: &[u8]) -> Result<Beat, Dropped> {
        self.authentic(datagram).and_then(|b| self.first(b))
    }

    /// The peer's heartbeat, signed and of this cluster, heard before or not.
    fn authentic(&self, datagram: &[u8]) -> Result<Beat, Dropped> {
        let beat = open(&self.key, datagram)?;
        if beat.cluster != self.cluster || beat.node != self.peer {
            return Err(Dropped::Foreign {
                cluster: beat.cluster,
                node: beat.node,
            });
        }
        Ok(beat)
    }

    /// Each heartbeat counts once, whichever path brought it first.
    fn first(&self, beat: Beat) -> Result<Beat, Dropped> {
        if !self.replay.lock().accept(&beat) {
            return Err(Dropped::Replayed);
        }
        Ok(beat)
    }

    /// The peer numbers its heartbeats and sends each on every path: a gap
    /// on one path is what that path lost.
    fn count_on(&self, path: usize, beat: &Beat) {
        let mut seen = self.seen_on.lock();
        match seen[path] {
            Some((boot, seq)) if boot == beat.boot && beat.seq <= seq => return,
            Some((boot, seq)) if boot == beat.boot => {
                self.lost.lock()[path] += beat.seq - seq - 1;
            }
            _ => {}
        }
        seen[path] = Some((beat.boot, beat.seq));
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
