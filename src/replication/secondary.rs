//! The secondary's server: accepts the primary's authenticated connection for
//! each module it is secondary of, tells it what it changed on its own, then
//! applies the stream in order on a thread of its own and acknowledges.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::changelog::ChangeLog;
use crate::stop::Stop;

use super::applier::Applier;
use super::applier::ApplyError;
use super::channel::{Channel, ChannelError};
use super::dir::Dir;
use super::frame::Compression;
use super::framed::{
    Expect, FrameReader, FrameWriter, Frames, HELLO_TIMEOUT, HelloError, check_hello,
};
use super::resync;
use super::session::{KEEPALIVE, SessionError};
use super::snapshot::Snapshots;
use super::status::{ReplicationStatus, ResyncProgress, Tally};
use super::syncer::{self, Syncer};
use super::tls::Credentials;
use super::wire::{AckAt, Message, WireMutation};

/// How long applied changes may stay in the page cache only.
const SYNC_EVERY: Duration = Duration::from_millis(500);
/// And while a resync's changes come: what is still unsynced when its last
/// change is applied is what its end waits for, so it is written back as
/// it goes (a 1% resync of 4 GiB ended in about 1.0 s instead of 1.3 s).
const SYNC_EVERY_RESYNC: Duration = Duration::from_millis(100);
/// Entries per Diverged message.
const DIVERGED_PART: usize = 4096;

#[derive(Default)]
struct Counters {
    received: AtomicU64,
    applied: AtomicU64,
    durable: AtomicU64,
}

pub struct SecondaryModule {
    pub name: String,
    applier: Mutex<Applier>,
    logs: Vec<Arc<dyn ChangeLog>>,
    dirs: Arc<Vec<Dir>>,
    session: AtomicU64,
    state: Mutex<SecondaryState>,
    /// Ask the primary for a full sync (by content) at the next connection.
    full_sync: std::sync::atomic::AtomicBool,
    tally: Arc<Tally>,
    /// This node's snapshots of the module.
    snaps: Option<Arc<Snapshots>>,
    /// Held around each change applied: a snapshot taken under it falls
    /// between two changes of the stream.
    cut: Mutex<()>,
}

#[derive(Default)]
struct SecondaryState {
    connected: bool,
    uptodate: bool,
    applied: u64,
    durable: u64,
    bytes: u64,
    last_error: Option<String>,
    /// The protocol version the primary's link speaks, and its release.
    agreed: Option<crate::versions::Agreed>,
}

impl SecondaryModule {
    /// `dirs`: the module's directories; the applier writes through
    /// duplicates of their root descriptors.
    pub fn new(name: &str, dirs: Vec<Dir>) -> std::io::Result<Arc<Self>> {
        let roots = dirs
            .iter()
            .map(|d| d.root.try_clone())
            .collect::<Result<Vec<_>, _>>()?;
        let snaps = dirs.first().and_then(|d| d.snaps.clone());
        Ok(Arc::new(Self {
            name: name.to_string(),
            applier: Mutex::new(
                Applier::new(roots).with_snapshots(dirs.first().and_then(|d| d.snaps.clone())),
            ),
            logs: dirs.iter().map(|d| d.log.clone()).collect(),
            dirs: Arc::new(dirs),
            session: AtomicU64::new(0),
            state: Mutex::new(SecondaryState::default()),
            full_sync: std::sync::atomic::AtomicBool::new(false),
            tally: Arc::default(),
            snaps,
            cut: Mutex::new(()),
        }))
    }

    /// Runs `f` between two applied changes, with the stream position of
    /// the last one applied.
    pub fn at_cut<R>(&self, f: impl FnOnce(u64) -> R) -> R {
        let _cut = self.cut.lock();
        let applied = self.state.lock().applied;
        f(applied)
    }

    /// The primary took snapshot `name` at `position` for a consistent
    /// comparison: this copy takes its own there (under the cut).
    fn cut(&self, name: &str, position: u64) {
        let Some(snaps) = &self.snaps else {
            return;
        };
        let new = crate::replication::snapshot::New {
            name: Some(name.to_string()),
            kind: crate::replication::snapshot::Kind::Verify,
            role: "secondary".into(),
            position: Some(position),
            generation: None,
            consistent: snaps.resyncing().is_none(),
        };
        match snaps.create(new) {
            Ok(_) => snaps.prune(crate::replication::snapshot::Kind::Verify, 2),
            Err(e) => tracing::error!(
                "{}: no snapshot at the primary's cut {name}: {e}",
                self.name
            ),
        }
    }

    /// A resync's change is about to be applied: the first one of a resync
    /// takes the before-resync snapshot (at the position before it).
    fn before_resync(&self, seq: u64) {
        let Some(snaps) = &self.snaps else {
            return;
        };
        if snaps.resyncing().is_some() {
            return;
        }
        let generation = self
            .logs
            .first()
            .and_then(|l| l.generation().ok())
            .map(|g| format!("{:016x}", g.current));
        match snaps.begin_resync(Some(seq.saturating_sub(1)), generation) {
            Ok(Some(s)) => tracing::info!(
                "{}: snapshot {} taken before the resync; this copy is inconsistent until it ends",
                self.name,
                s.name
            ),
            Ok(None) => {}
            Err(e) => tracing::error!(
                "{}: no snapshot before the resync ({e}); this copy is inconsistent until it ends",
                self.name
            ),
        }
    }

    /// This copy is current: the last resync finished and nothing since
    /// told otherwise (a disconnect alone does not make it stale).
    pub fn uptodate(&self) -> bool {
        self.state.lock().uptodate
    }

    /// Ends any session from the primary and waits until its applier has
    /// let go of the directories.
    pub fn close(&self) {
        self.session.fetch_add(1, Ordering::SeqCst);
        drop(self.applier.lock());
        self.state.lock().connected = false;
    }

    /// The next connection from the primary resynchronises by content, and
    /// the current one (if any) is ended to make that happen now.
    pub fn request_full_sync(&self) {
        self.full_sync.store(true, Ordering::SeqCst);
        self.session.fetch_add(1, Ordering::SeqCst);
        self.state.lock().uptodate = false;
    }

    pub fn status(&self) -> ReplicationStatus {
        let s = self.state.lock();
        let (mut dirty_bytes, mut dirty_files) = (0, 0);
        for l in &self.logs {
            dirty_bytes += l.dirty_bytes().unwrap_or(0);
            dirty_files += l.dirty_files().map(|v| v.len() as u64).unwrap_or(0);
        }
        ReplicationStatus {
            role: "secondary".into(),
            peer: match (s.connected, s.uptodate) {
                (false, _) => "disconnected",
                (true, false) => "syncing",
                (true, true) => "uptodate",
            }
            .into(),
            ack: String::new(),
            sent: 0,
            applied: s.applied,
            durable: s.durable,
            dirty_bytes,
            dirty_files,
            bytes_replicated: s.bytes,
            resync: ResyncProgress::default(),
            last_error: s.last_error.clone(),
            verify: Default::default(),
            hot_extents: 0,
            wire: self.tally.counts(),
            protocol: s.agreed.as_ref().map(|a| a.protocol),
            peer_version: s.agreed.as_ref().and_then(|a| a.peer_software.clone()),
        }
    }
}

pub struct SecondaryServer {
    pub creds: Arc<Credentials>,
    pub cluster: String,
    /// The modules this node is SECOND for now (the cluster manager adds
    /// and removes them as roles change).
    pub modules: parking_lot::Mutex<HashMap<String, Arc<SecondaryModule>>>,
    pub compression: Compression,
    /// Answers commands relayed by the peer (none with fixed roles).
    pub control: std::sync::OnceLock<super::relay::Handler>,
}

impl SecondaryServer {
    /// Accepts the peer's connections until `stop`; each ends with it too.
    pub async fn run(self: Arc<Self>, listener: TcpListener, stop: Stop) {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = stop.stopped() => return,
            };
            match accepted {
                Ok((tcp, addr)) => {
                    let (me, s) = (self.clone(), stop.clone());
                    stop.watched_task(
                        &tokio::runtime::Handle::current(),
                        "replication-connection",
                        async move {
                            if let Err(e) = me.connection(tcp, addr, &s).await {
                                tracing::warn!("replication connection from {addr}: {e}");
                            }
                        },
                    );
                }
                Err(e) => {
                    tracing::error!("accepting replication connections: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn connection(
        &self,
        tcp: TcpStream,
        addr: SocketAddr,
        stop: &Stop,
    ) -> Result<(), SessionError> {
        // Until a session starts nothing runs beside this future: a stop
        // ends it at its next step.
        let opened = tokio::select! {
            r = self.open(tcp, addr) => r?,
            () = stop.stopped() => return Err(SessionError::Stopped("this node stops")),
        };
        let Some((module, reader, writer, acks, resumes)) = opened else {
            return Ok(());
        };
        let r = session(module.clone(), reader, writer, acks, resumes, stop).await;
        module.state.lock().connected = false;
        r
    }

    /// Introduces both sides, answers a relayed command or a verify, or
    /// tells the primary where the copies diverged: what a session starts
    /// from (none when the connection's work is done).
    async fn open(&self, tcp: TcpStream, addr: SocketAddr) -> Result<Option<Opened>, SessionError> {
        tcp.set_nodelay(true).ok();
        let config = self.creds.server_config()?;
        let tls = tokio::time::timeout(HELLO_TIMEOUT, TlsAcceptor::from(config).accept(tcp))
            .await
            .map_err(|_| SessionError::Timeout("TLS handshake timed out"))?
            .map_err(SessionError::HandshakeRefused)?;
        if !self.creds.is_peer(tls.get_ref().1.peer_certificates()) {
            return Err(SessionError::ClientNotPeer(self.creds.peer.clone()));
        }
        let (rd, wr) = tokio::io::split(tls);
        let mut reader = FrameReader::new(rd);
        let mut writer = FrameWriter::new(wr, self.compression);
        let hello = tokio::time::timeout(HELLO_TIMEOUT, reader.next())
            .await
            .map_err(|_| SessionError::Timeout("no Hello"))??;
        if let Message::Control { request } = hello {
            super::relay::answer(self.control.get().cloned(), request, &mut writer).await?;
            return Ok(None);
        }
        let checked = check_hello(
            hello,
            &Expect {
                me: &self.creds.node,
                cluster: &self.cluster,
                peer: &self.creds.peer,
                module: None,
                dirs: None,
            },
        )
        .and_then(|h| {
            let (module, dirs) = (h.module, h.dirs);
            let m = self.modules.lock().get(&module).cloned();
            let m = m.ok_or_else(|| HelloError::NotSecondary(module.clone()))?;
            let have = m.logs.len();
            if have != dirs as usize {
                return Err(HelloError::Dirs {
                    module,
                    theirs: dirs,
                    ours: have,
                });
            }
            Ok((m, h.verify, h.acks, h.agreed, h.resumes))
        });
        let (module, verify, acks, agreed, resumes) = match checked {
            Ok(m) => m,
            Err(reason) => {
                let _ = writer
                    .send(&Message::Close {
                        reason: reason.to_string(),
                    })
                    .await;
                return Err(reason.into());
            }
        };
        let generation = module.logs[0].generation().map(|g| g.current).unwrap_or(0);
        writer
            .send(&Message::Hello {
                cluster: self.cluster.clone(),
                node: self.creds.node.clone(),
                modules: vec![module.name.clone()],
                dirs: module.logs.len() as u32,
                generation,
                verify,
                acks: Default::default(),
                speaks: super::framed::speaks(),
                resumes: false,
            })
            .await?;
        if verify {
            super::verify::serve(module.dirs.clone(), reader, writer).await?;
            return Ok(None);
        }
        module.state.lock().agreed = Some(agreed);
        // A copy changed behind the change log (a snapshot rolled back)
        // asks for a comparison by content until a resync ends.
        let changed_behind = module
            .logs
            .iter()
            .any(|l| l.compare_needed().unwrap_or(true));
        let full = module.full_sync.swap(false, Ordering::SeqCst) || changed_behind;
        send_diverged(&module, &mut writer, full).await?;
        tracing::info!(
            "{}: primary {} connected from {addr}",
            module.name,
            self.creds.peer
        );
        Ok(Some((module, reader, writer, acks, resumes)))
    }
}

type Tls = tokio_rustls::server::TlsStream<TcpStream>;
type Opened = (
    Arc<SecondaryModule>,
    FrameReader<tokio::io::ReadHalf<Tls>>,
    FrameWriter<tokio::io::WriteHalf<Tls>>,
    AckAt,
    bool,
);

async fn send_diverged<W: tokio::io::AsyncWrite + Unpin>(
    module: &SecondaryModule,
    writer: &mut FrameWriter<W>,
    full: bool,
) -> Result<(), SessionError> {
    use std::os::unix::ffi::OsStrExt;
    let n = module.logs.len();
    for (d, log) in module.logs.iter().enumerate() {
        let dv = resync::diverged_of(log.as_ref())?;
        let mut files: Vec<_> = dv
            .files
            .into_iter()
            .map(|(p, r)| {
                (
                    p.as_os_str().as_bytes().to_vec(),
                    r.into_iter().map(|r| (r.start, r.end)).collect::<Vec<_>>(),
                )
            })
            .collect();
        let mut paths: Vec<_> = dv
            .paths
            .into_iter()
            .map(|p| p.as_os_str().as_bytes().to_vec())
            .collect();
        loop {
            let f: Vec<_> = files.drain(..files.len().min(DIVERGED_PART)).collect();
            let p: Vec<_> = paths.drain(..paths.len().min(DIVERGED_PART)).collect();
            let last = d + 1 == n && files.is_empty() && paths.is_empty();
            writer.push(&Message::Diverged {
                dir: d as u32,
                files: f,
                paths: p,
                last,
                full: full && last,
            })?;
            if files.is_empty() && paths.is_empty() {
                break;
            }
        }
    }
    Ok(writer.flush().await?)
}

/// Runs a session on a thread of its own: it reads, applies, makes durable
/// and acknowledges, with no hand-off between those steps.
async fn session(
    module: Arc<SecondaryModule>,
    reader: FrameReader<tokio::io::ReadHalf<Tls>>,
    writer: FrameWriter<tokio::io::WriteHalf<Tls>>,
    acks: AckAt,
    resumes: bool,
    stop: &Stop,
) -> Result<(), SessionError> {
    let id = module.session.fetch_add(1, Ordering::SeqCst) + 1;
    let (rd, rest) = reader.into_parts();
    let (tcp, tls) = rd.unsplit(writer.into_inner()).into_inner();
    let channel = Channel::from_tokio(tcp, tls, HELLO_TIMEOUT, module.tally.clone())?;
    let stop = stop.clone();
    tokio::task::spawn_blocking(move || {
        let r = serve(
            &module,
            id,
            &channel,
            Frames::with(rest),
            acks,
            resumes,
            &stop,
        );
        // Its last words (an ack, or why it stopped) go out first.
        channel.close(true);
        r
    })
    .await
    .map_err(|e| SessionError::Task {
        what: "applier",
        why: e.to_string(),
    })?
}

fn ack(c: &Counters) -> Message {
    Message::Ack {
        received: c.received.load(Ordering::Acquire),
        applied: c.applied.load(Ordering::Acquire),
        durable: c.durable.load(Ordering::Acquire),
    }
}

fn send_ack(channel: &Channel, c: &Counters, tally: &Tally) -> Result<(), ChannelError> {
    Tally::count(&tally.acks, 1);
    channel.send(&ack(c), Compression::Off, true)
}

fn sync_all(applier: &mut Applier) -> Result<(), ApplyError> {
    // A sync covers every directory of the module.
    applier.apply(0, &WireMutation::Sync, false, &[])
}

/// A session: why it ended.
fn serve(
    module: &SecondaryModule,
    id: u64,
    channel: &Channel,
    frames: Frames,
    acks: AckAt,
    resumes: bool,
    stop: &Stop,
) -> Result<(), SessionError> {
    // Waits for the previous session's applier, if any, to let go.
    let mut applier = module.applier.lock();
    if module.session.load(Ordering::SeqCst) != id {
        return Err(SessionError::Replaced("session replaced"));
    }
    {
        let mut s = module.state.lock();
        s.connected = true;
        // A primary's new daemon going on after this copy confirmed every
        // change (`tandem upgrade`): current it was, current it stays. What
        // its change log has not cleared yet is shipped again, and is
        // already here.
        s.uptodate &= resumes;
        s.last_error = None;
    }
    let sync_fds = applier.sync_handles().map_err(|e| {
        let why = SessionError::SyncHandles(e);
        tracing::error!("{}: {why}", module.name);
        why
    })?;
    let c = Counters::default();
    let sync = |seq| sync_and_ack(&sync_fds, seq, &c, channel, &module.tally);
    let why = std::thread::scope(|scope| {
        let syncer = Syncer::new(scope, &sync, syncer::IDLE);
        let request_sync = |seq| syncer.request(seq);
        let mut session = Applying {
            module,
            id,
            channel,
            acks,
            c: &c,
            applier: &mut applier,
            request_sync: &request_sync,
            applied: 0,
            requested: 0,
            last_sync: Instant::now(),
            last_ack: Instant::now(),
            unacked: 0,
            owed: false,
            urgent: false,
            done_at: None,
            adopt: None,
            resyncing: false,
            kept_ahead: 0,
        };
        let why = session.run(frames, stop);
        // Its thread ends once its last syncfs is done; the scope waits.
        syncer.close();
        why
    });
    // Whatever was applied since the last sync is made durable before leaving.
    let applied = c.applied.load(Ordering::Acquire);
    if applied > c.durable.load(Ordering::Acquire) && sync_all(&mut applier).is_ok() {
        c.durable.store(applied, Ordering::Release);
        let _ = send_ack(channel, &c, &module.tally);
    }
    Err(why)
}

/// Makes everything applied up to `seq` durable, then says so.
fn sync_and_ack(
    fds: &[std::os::fd::OwnedFd],
    seq: u64,
    c: &Counters,
    channel: &Channel,
    tally: &Tally,
) -> bool {
    if let Err(e) = fds.iter().try_for_each(nix::unistd::syncfs) {
        tracing::error!("syncfs: {e}");
        return false;
    }
    c.durable.fetch_max(seq, Ordering::AcqRel);
    let _ = send_ack(channel, c, tally);
    true
}

/// Applied bytes (plus a little per change) after which the secondary
/// acknowledges even without a durability point: the primary's window and
/// the resync's lag bound move on them.
const ACK_BYTES: u64 = 4 << 20;

/// How far a resync's changes are read ahead of the one applied, so that
/// what they overwrite is read from the disk (to be kept) meanwhile.
const LOOKAHEAD: usize = 16 << 20;

/// The state of one session on the secondary.
struct Applying<'a> {
    module: &'a SecondaryModule,
    id: u64,
    channel: &'a Channel,
    acks: AckAt,
    c: &'a Counters,
    applier: &'a mut Applier,
    /// Asks for what was applied up to a seq to be made durable, without
    /// waiting (false: a sync failed).
    request_sync: &'a dyn Fn(u64) -> bool,
    applied: u64,
    requested: u64,
    last_sync: Instant,
    last_ack: Instant,
    /// Applied since the last ack: bytes, and whether the primary waits
    /// for something among them.
    unacked: u64,
    owed: bool,
    /// A durability point the primary waits for was applied: acknowledged
    /// at once, though more is buffered behind it.
    urgent: bool,
    done_at: Option<u64>,
    adopt: Option<crate::changelog::Generation>,
    /// A resync's changes came and its end did not yet: only then is it
    /// worth looking ahead in what is buffered.
    resyncing: bool,
    /// The last of a resync's changes whose before-images were kept ahead.
    kept_ahead: u64,
}

impl Applying<'_> {
    /// Reads and applies until the session ends; why it ended.
    fn run(&mut self, mut frames: Frames, stop: &Stop) -> SessionError {
        let mut last_seq = None::<u64>;
        loop {
            if self.module.session.load(Ordering::SeqCst) != self.id {
                return self.fail(SessionError::Replaced(
                    "session replaced (full sync requested, or a newer connection)",
                ));
            }
            if stop.is_stopped() {
                return SessionError::Stopped("this node stops");
            }
            match self.channel.fill(&mut frames, Duration::from_millis(100)) {
                Ok(true) => {}
                Ok(false) => {
                    if let Err(why) = self.after_batch(true) {
                        return why;
                    }
                    continue;
                }
                Err(e) => return e.into(),
            }
            if self.resyncing {
                // Read on while applying, or the first changes of each
                // read would come with no time to warm them.
                if frames.buffered() < LOOKAHEAD {
                    self.channel.pull_ready(&mut frames);
                }
                self.warm_ahead(&mut frames);
            }
            if self.resyncing {
                self.keep_ahead(&frames);
            }
            // A write's data is applied from where it was read.
            match frames.take_with(|msg, data| self.handle(msg, data, &mut last_seq)) {
                Ok(Some(Ok(()))) | Ok(None) => {}
                Ok(Some(Err(why))) => return why,
                Err(e) => return ChannelError::from(e).into(),
            }
            // Everything already here is applied, then acknowledged once;
            // while a resync keeps the buffer full, every few MiB, and at
            // once for a point the application waits for.
            if frames.has_frame()
                && self.last_sync.elapsed() < self.sync_every()
                && !self.urgent
                && self.unacked < ACK_BYTES
            {
                continue;
            }
            if let Err(why) = self.after_batch(false) {
                return why;
            }
        }
    }

    /// Asks for the names and ranges that the resync's changes buffered
    /// behind this one reach to be looked up and read (a write's
    /// before-image is kept first, a name's directory is read to make or
    /// set it), while the applier works through the ones before.
    fn warm_ahead(&self, frames: &mut Frames) {
        let roots = self.applier.roots();
        let kept = self.module.snaps.as_ref().is_some_and(|s| s.any());
        let warm = |dir: u32, path: &[u8], ranges| {
            if let Ok(path) = super::wire::checked_path(path) {
                super::warm::ahead(roots, dir as usize, path, ranges);
            }
        };
        // A file's writes come one after another: one job for all of them.
        let mut run: Option<(u32, Vec<u8>, Vec<std::ops::Range<u64>>)> = None;
        frames.peek_new(|m, trailing| {
            let Message::Mutate {
                dir,
                resync: true,
                mutation,
                ..
            } = m
            else {
                return;
            };
            if let WireMutation::Write {
                path: Some(path),
                offset,
                data,
                ..
            } = mutation
            {
                let range = *offset..offset + data.len().max(trailing) as u64;
                match &mut run {
                    Some((d, p, ranges)) if d == dir && p == path => ranges.push(range),
                    _ => {
                        if let Some((d, p, ranges)) = run.replace((*dir, path.clone(), vec![range]))
                        {
                            warm(d, &p, ranges);
                        }
                    }
                }
                return;
            }
            if let Some((d, p, ranges)) = run.take() {
                warm(d, &p, ranges);
            }
            // A name that goes is kept whole for the snapshot first (if
            // nothing else names it): its contents are read too.
            let gone = || if kept { vec![0..u64::MAX] } else { Vec::new() };
            match mutation {
                WireMutation::Reconcile { path, entry } => warm(
                    *dir,
                    path,
                    if entry.is_none() { gone() } else { Vec::new() },
                ),
                WireMutation::Rename { from, to, .. } => {
                    warm(*dir, from, Vec::new());
                    warm(*dir, to, gone());
                }
                _ => {}
            }
        });
        if let Some((d, p, ranges)) = run {
            warm(d, &p, ranges);
        }
    }

    /// Keeps the before-images of the run of a resync's writes that starts
    /// with the next change, in one go, once its before-resync snapshot is
    /// taken (see [`super::keep_ahead`]).
    fn keep_ahead(&mut self, frames: &Frames) {
        if !self.module.snaps.as_ref().is_some_and(|s| s.is_resyncing()) {
            return;
        }
        if let Some(run) = super::keep_ahead::next(frames, self.kept_ahead) {
            self.applier.keep_ahead(run.dir, &run.effects);
            self.kept_ahead = run.upto;
        }
    }

    /// One message from the primary; why the session ends, if it does.
    fn handle(
        &mut self,
        msg: Message,
        data: &[u8],
        last_seq: &mut Option<u64>,
    ) -> Result<(), SessionError> {
        match msg {
            Message::Mutate {
                seq,
                dir,
                resync,
                mutation,
                times,
            } => {
                if let Some(prev) = *last_seq
                    && seq != prev + 1
                {
                    return Err(SessionError::Protocol(format!(
                        "out of order: seq {seq} after {prev}"
                    )));
                }
                *last_seq = Some(seq);
                self.resyncing |= resync;
                self.apply(seq, dir, resync, &mutation, data, &times)
            }
            Message::ResyncDone {
                seq,
                generation,
                history,
            } => {
                self.done_at = Some(seq);
                self.resyncing = false;
                self.adopt = Some(crate::changelog::Generation {
                    current: generation,
                    history,
                });
                Ok(())
            }
            Message::Close { reason } => Err(SessionError::PrimaryClosed(reason)),
            other => Err(SessionError::Protocol(format!(
                "unexpected message from the primary: {}",
                other.kind()
            ))),
        }
    }

    fn fail(&self, why: SessionError) -> SessionError {
        tracing::error!("{}: {why}", self.module.name);
        self.module.state.lock().last_error = Some(why.to_string());
        let _ = self.channel.send(
            &Message::Close {
                reason: why.to_string(),
            },
            Compression::Off,
            true,
        );
        why
    }

    fn apply(
        &mut self,
        seq: u64,
        dir: u32,
        resync: bool,
        mutation: &WireMutation,
        data: &[u8],
        times: &[(Vec<u8>, super::wire::Time)],
    ) -> Result<(), SessionError> {
        self.c.received.store(seq, Ordering::Release);
        // What the primary may be waiting for.
        let point = matches!(
            mutation,
            WireMutation::Fsync { .. }
                | WireMutation::Write { sync: true, .. }
                | WireMutation::Sync
        );
        if point && self.acks == AckAt::Received {
            send_ack(self.channel, self.c, &self.module.tally)?;
            self.last_ack = Instant::now();
        }
        let n = match mutation {
            WireMutation::Write { data: own, .. } => (own.len() + data.len()) as u64,
            _ => 0,
        };
        let cut = self.module.cut.lock();
        if resync {
            self.module.before_resync(seq);
        }
        if let Err(e) = self.applier.apply_with(dir, mutation, data, resync, times) {
            return Err(self.fail(SessionError::Apply {
                seq,
                why: e.to_string(),
            }));
        }
        if matches!(mutation, WireMutation::Sync) {
            self.c.durable.fetch_max(seq, Ordering::AcqRel);
        }
        if let WireMutation::Cut { name } = mutation {
            self.module.cut(name, seq.saturating_sub(1));
        }
        self.applied = seq;
        self.c.applied.store(seq, Ordering::Release);
        self.unacked += n + 64;
        // A resync waits for room in its window: told at the end of each
        // batch, it never waits for the keepalive's ack.
        self.owed |= point && self.acks == AckAt::Applied || self.acks == AckAt::Batch || resync;
        self.urgent |= point && self.acks == AckAt::Applied;
        let mut s = self.module.state.lock();
        s.applied = seq;
        s.bytes += n;
        drop(cut);
        Ok(())
    }

    /// How often applied changes are synced.
    fn sync_every(&self) -> Duration {
        if self.resyncing {
            SYNC_EVERY_RESYNC
        } else {
            SYNC_EVERY
        }
    }

    /// After a batch (or an idle spell): finishes a resync that became
    /// durable, acknowledges when the primary waits for it, enough piled
    /// up, or to say it is alive, and asks for a syncfs when one is due.
    fn after_batch(&mut self, idle: bool) -> Result<(), SessionError> {
        let durable = self.c.durable.load(Ordering::Acquire);
        if let Some(seq) = self.done_at
            && durable >= seq
        {
            self.done_at = None;
            for log in &self.module.logs {
                if let Err(e) = resync::clear_all(log.as_ref()) {
                    return Err(self.fail(e.into()));
                }
                if let Err(e) = log.set_compare_needed(false) {
                    return Err(self.fail(e.into()));
                }
                // Same data as the primary now: same generation.
                if let Some(g) = &self.adopt
                    && let Err(e) = log.adopt_generation(g)
                {
                    return Err(self.fail(e.into()));
                }
            }
            self.module.state.lock().uptodate = true;
            if let Some(snaps) = &self.module.snaps
                && let Err(e) = snaps.end_resync()
            {
                tracing::error!("{}: snapshot store: {e}", self.module.name);
            }
            tracing::info!("{}: up to date with the primary", self.module.name);
        }
        self.module.state.lock().durable = durable;
        if self.owed || self.unacked >= ACK_BYTES || self.last_ack.elapsed() >= KEEPALIVE / 2 {
            send_ack(self.channel, self.c, &self.module.tally)?;
            self.last_ack = Instant::now();
            self.unacked = 0;
            self.owed = false;
            self.urgent = false;
        }
        // After the answer the primary may wait for: a sync after a rest
        // starts a thread first.
        if self.applied > self.requested && (idle || self.last_sync.elapsed() >= self.sync_every())
        {
            // The syncfs makes everything applied durable, times included.
            if let Err(e) = self.applier.settle_times() {
                return Err(self.fail(SessionError::Apply {
                    seq: self.applied,
                    why: e.to_string(),
                }));
            }
            if !(self.request_sync)(self.applied) {
                return Err(self.fail(SessionError::SyncFailed));
            }
            self.requested = self.applied;
            self.last_sync = Instant::now();
        }
        Ok(())
    }
}
