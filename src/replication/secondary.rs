//! The secondary's server: accepts the primary's authenticated connection for
//! each module it is secondary of, tells it what it changed on its own, then
//! applies the stream in order on a thread of its own and acknowledges.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::changelog::ChangeLog;
use crate::stop::Stop;

use super::applier::Applier;
use super::dir::Dir;
use super::frame::Compression;
use super::link::{Expect, FrameReader, FrameWriter, HELLO_TIMEOUT, check_hello};
use super::resync;
use super::session::KEEPALIVE;
use super::status::{ReplicationStatus, ResyncProgress};
use super::tls::Credentials;
use super::wire::{Message, WireMutation};

/// How long applied changes may stay in the page cache only.
const SYNC_EVERY: Duration = Duration::from_millis(500);
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
}

#[derive(Default)]
struct SecondaryState {
    connected: bool,
    uptodate: bool,
    applied: u64,
    durable: u64,
    bytes: u64,
    last_error: Option<String>,
}

impl SecondaryModule {
    /// `dirs`: the module's directories; the applier writes through
    /// duplicates of their root descriptors.
    pub fn new(name: &str, dirs: Vec<Dir>) -> std::io::Result<Arc<Self>> {
        let roots = dirs
            .iter()
            .map(|d| d.root.try_clone())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Arc::new(Self {
            name: name.to_string(),
            applier: Mutex::new(Applier::new(roots)),
            logs: dirs.iter().map(|d| d.log.clone()).collect(),
            dirs: Arc::new(dirs),
            session: AtomicU64::new(0),
            state: Mutex::new(SecondaryState::default()),
            full_sync: std::sync::atomic::AtomicBool::new(false),
        }))
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
    ) -> Result<(), String> {
        // Until a session starts nothing runs beside this future: a stop
        // ends it at its next step.
        let opened = tokio::select! {
            r = self.open(tcp, addr) => r?,
            () = stop.stopped() => return Err("this node stops".into()),
        };
        let Some((module, reader, writer)) = opened else {
            return Ok(());
        };
        let r = session(module.clone(), reader, writer, stop).await;
        module.state.lock().connected = false;
        r
    }

    /// Introduces both sides, answers a relayed command or a verify, or
    /// tells the primary where the copies diverged: what a session starts
    /// from (none when the connection's work is done).
    async fn open(&self, tcp: TcpStream, addr: SocketAddr) -> Result<Option<Opened>, String> {
        tcp.set_nodelay(true).ok();
        let config = self.creds.server_config().map_err(|e| e.to_string())?;
        let tls = tokio::time::timeout(HELLO_TIMEOUT, TlsAcceptor::from(config).accept(tcp))
            .await
            .map_err(|_| "TLS handshake timed out".to_string())?
            .map_err(|e| format!("refused at the TLS handshake: {e}"))?;
        if !self.creds.is_peer(tls.get_ref().1.peer_certificates()) {
            return Err(format!(
                "refused: the client did not present {}'s certificate",
                self.creds.peer
            ));
        }
        let (rd, wr) = tokio::io::split(tls);
        let mut reader = FrameReader::new(rd);
        let mut writer = FrameWriter::new(wr, self.compression);
        let hello = tokio::time::timeout(HELLO_TIMEOUT, reader.next())
            .await
            .map_err(|_| "no Hello".to_string())??;
        if let Message::Control { request } = hello {
            super::relay::answer(self.control.get().cloned(), request, &mut writer).await?;
            return Ok(None);
        }
        let checked = check_hello(
            hello,
            &Expect {
                cluster: &self.cluster,
                peer: &self.creds.peer,
                module: None,
                dirs: None,
            },
        )
        .and_then(|h| {
            let (module, dirs) = (h.module, h.dirs);
            let m = self.modules.lock().get(&module).cloned().ok_or_else(|| {
                format!("module {module:?} is not replicated to this node as secondary")
            })?;
            let have = m.logs.len();
            if have != dirs as usize {
                return Err(format!(
                    "module {module}: peer replicates {dirs} directories, this node {have}"
                ));
            }
            Ok((m, h.verify))
        });
        let (module, verify) = match checked {
            Ok(m) => m,
            Err(reason) => {
                let _ = writer
                    .send(&Message::Close {
                        reason: reason.clone(),
                    })
                    .await;
                return Err(reason);
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
            })
            .await?;
        if verify {
            super::verify::serve(module.dirs.clone(), reader, writer).await?;
            return Ok(None);
        }
        let full = module.full_sync.swap(false, Ordering::SeqCst);
        send_diverged(&module, &mut writer, full).await?;
        tracing::info!(
            "{}: primary {} connected from {addr}",
            module.name,
            self.creds.peer
        );
        Ok(Some((module, reader, writer)))
    }
}

type Tls = tokio_rustls::server::TlsStream<TcpStream>;
type Opened = (
    Arc<SecondaryModule>,
    FrameReader<tokio::io::ReadHalf<Tls>>,
    FrameWriter<tokio::io::WriteHalf<Tls>>,
);

async fn send_diverged<W: tokio::io::AsyncWrite + Unpin>(
    module: &SecondaryModule,
    writer: &mut FrameWriter<W>,
    full: bool,
) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    let n = module.logs.len();
    for (d, log) in module.logs.iter().enumerate() {
        let dv = resync::diverged_of(log.as_ref()).map_err(|e| format!("change log: {e}"))?;
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
    writer.flush().await
}

async fn session<R, W>(
    module: Arc<SecondaryModule>,
    mut reader: FrameReader<R>,
    writer: FrameWriter<W>,
    stop: &Stop,
) -> Result<(), String>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let id = module.session.fetch_add(1, Ordering::SeqCst) + 1;
    let counters = Arc::new(Counters::default());
    let (out_tx, out_rx) = tokio::sync::mpsc::unbounded_channel();
    let (apply_tx, apply_rx) = mpsc::channel::<Message>();
    let mut pump = tokio::spawn(writer.pump(out_rx));
    let thread_module = module.clone();
    let thread_counters = counters.clone();
    let thread_out = out_tx.clone();
    let stopped = Arc::new(tokio::sync::Notify::new());
    let thread_stopped = stopped.clone();
    let applier = std::thread::Builder::new()
        .name(format!("apply-{}", module.name))
        .spawn(move || {
            apply_loop(&thread_module, id, apply_rx, &thread_counters, &thread_out);
            drop(thread_out);
            thread_stopped.notify_one();
        })
        .map_err(|e| format!("cannot start the applier: {e}"))?;
    let mut last_seq = None::<u64>;
    let mut pump_done = false;
    // Watched once for the whole loop: not a new watch per frame.
    let stopping = stop.stopped();
    tokio::pin!(stopping);
    let why = loop {
        tokio::select! {
            m = reader.next() => match m {
                Err(e) => break e,
                Ok(Message::Close { reason }) => break format!("primary closed the link: {reason}"),
                Ok(m @ Message::Mutate { .. }) => {
                    let Message::Mutate { seq, .. } = &m else { unreachable!() };
                    if let Some(prev) = last_seq && *seq != prev + 1 {
                        break format!("out of order: seq {seq} after {prev}");
                    }
                    last_seq = Some(*seq);
                    counters.received.store(*seq, Ordering::Release);
                    if apply_tx.send(m).is_err() {
                        break "applier stopped".into();
                    }
                    if !reader.has_frame() {
                        let _ = out_tx.send(ack(&counters));
                    }
                }
                Ok(m @ Message::ResyncDone { .. }) => {
                    if apply_tx.send(m).is_err() {
                        break "applier stopped".into();
                    }
                }
                Ok(other) => break format!("unexpected message from the primary: {}", other.kind()),
            },
            r = &mut pump => {
                pump_done = true;
                break match r {
                    Ok(Ok(())) => "link dropped".into(),
                    Ok(Err(e)) => e,
                    Err(e) => e.to_string(),
                }
            }
            _ = stopped.notified() => break module
                .state
                .lock()
                .last_error
                .clone()
                .unwrap_or_else(|| "applier stopped".into()),
            () = &mut stopping => break "this node stops".into(),
        }
    };
    drop(apply_tx);
    // The applier finishes what it has, makes it durable and stops; its
    // last words (an ack, or why it stopped) still go out.
    let _ = tokio::task::spawn_blocking(move || applier.join()).await;
    drop(out_tx);
    if !pump_done
        && tokio::time::timeout(Duration::from_secs(2), &mut pump)
            .await
            .is_err()
    {
        pump.abort();
    }
    Err(why)
}

fn ack(c: &Counters) -> Message {
    Message::Ack {
        received: c.received.load(Ordering::Acquire),
        applied: c.applied.load(Ordering::Acquire),
        durable: c.durable.load(Ordering::Acquire),
    }
}

fn sync_all(applier: &mut Applier) -> Result<(), String> {
    // A sync covers every directory of the module.
    applier
        .apply(0, &WireMutation::Sync, false, &[])
        .map_err(|e| e.to_string())
}

fn apply_loop(
    module: &SecondaryModule,
    id: u64,
    rx: mpsc::Receiver<Message>,
    c: &Counters,
    out: &tokio::sync::mpsc::UnboundedSender<Message>,
) {
    // Waits for the previous session's applier, if any, to let go.
    let mut applier = module.applier.lock();
    if module.session.load(Ordering::SeqCst) != id {
        return;
    }
    {
        let mut s = module.state.lock();
        s.connected = true;
        s.uptodate = false;
        s.last_error = None;
    }
    let mut applied = 0u64;
    let mut durable = 0u64;
    let mut requested = 0u64;
    let mut last_sync = Instant::now();
    // syncfs runs on a thread of its own so applying never waits for the disk.
    let (sync_tx, sync_rx) = mpsc::channel::<u64>();
    let sync_fds = match applier.sync_handles() {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(
                "{}: cannot open the directories to sync them: {e}",
                module.name
            );
            return;
        }
    };
    std::thread::scope(|scope| {
        let handle = scope.spawn(|| syncer(sync_rx, sync_fds, c, out));
        apply_session(
            module,
            id,
            &rx,
            c,
            out,
            &mut applier,
            &sync_tx,
            &mut applied,
            &mut durable,
            &mut requested,
            &mut last_sync,
        );
        // Closing the channel ends the syncer once its last syncfs is done.
        drop(sync_tx);
        let _ = handle.join();
    });
    // Whatever was applied since the last sync is made durable before leaving.
    if applied > c.durable.load(Ordering::Acquire) && sync_all(&mut applier).is_ok() {
        c.durable.store(applied, Ordering::Release);
        let _ = out.send(ack(c));
    }
}

/// Makes everything up to the latest requested seq durable, then says so.
fn syncer(
    rx: mpsc::Receiver<u64>,
    fds: Vec<std::os::fd::OwnedFd>,
    c: &Counters,
    out: &tokio::sync::mpsc::UnboundedSender<Message>,
) {
    while let Ok(mut seq) = rx.recv() {
        while let Ok(s) = rx.try_recv() {
            seq = s;
        }
        let ok = fds
            .iter()
            .all(|f| unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(f)) } == 0);
        if !ok {
            tracing::error!("syncfs: {}", std::io::Error::last_os_error());
            return;
        }
        c.durable.fetch_max(seq, Ordering::AcqRel);
        let _ = out.send(ack(c));
    }
}

#[allow(clippy::too_many_arguments)]
fn apply_session(
    module: &SecondaryModule,
    id: u64,
    rx: &mpsc::Receiver<Message>,
    c: &Counters,
    out: &tokio::sync::mpsc::UnboundedSender<Message>,
    applier: &mut Applier,
    sync_tx: &mpsc::Sender<u64>,
    applied: &mut u64,
    durable: &mut u64,
    requested: &mut u64,
    last_sync: &mut Instant,
) {
    let mut last_ack = Instant::now();
    let mut done_at: Option<u64> = None;
    let mut adopt: Option<crate::changelog::Generation> = None;
    let fail = |why: String| {
        tracing::error!("{}: {why}", module.name);
        module.state.lock().last_error = Some(why.clone());
        let _ = out.send(Message::Close { reason: why });
    };
    'session: loop {
        if module.session.load(Ordering::SeqCst) != id {
            fail("session replaced (full sync requested, or a newer connection)".into());
            break;
        }
        let first = match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(m) => Some(m),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let idle = first.is_none();
        let mut next = first;
        // Apply everything queued, then acknowledge once.
        while let Some(msg) = next.take() {
            match msg {
                Message::Mutate {
                    seq,
                    dir,
                    resync,
                    mutation,
                    times,
                } => {
                    let n = match &mutation {
                        WireMutation::Write { data, .. } => data.len() as u64,
                        _ => 0,
                    };
                    let r = applier.apply(dir, &mutation, resync, &times);
                    if let Err(e) = r {
                        fail(format!("cannot apply seq {seq}: {e}"));
                        break 'session;
                    }
                    if matches!(mutation, WireMutation::Sync) {
                        c.durable.fetch_max(seq, Ordering::AcqRel);
                    }
                    *applied = seq;
                    c.applied.store(seq, Ordering::Release);
                    let mut s = module.state.lock();
                    s.applied = seq;
                    s.bytes += n;
                }
                Message::ResyncDone {
                    seq,
                    generation,
                    history,
                } => {
                    done_at = Some(seq);
                    adopt = Some(crate::changelog::Generation {
                        current: generation,
                        history,
                    });
                }
                _ => {}
            }
            if last_sync.elapsed() >= SYNC_EVERY {
                break;
            }
            next = rx.try_recv().ok();
        }
        if *applied > *requested && (idle || last_sync.elapsed() >= SYNC_EVERY) {
            // The syncfs makes everything applied durable, times included.
            if let Err(e) = applier.settle_times() {
                fail(format!("cannot apply seq {applied}: {e}"));
                break;
            }
            if sync_tx.send(*applied).is_err() {
                fail("cannot make applied changes durable (syncfs failed)".into());
                break;
            }
            *requested = *applied;
            *last_sync = Instant::now();
        }
        *durable = c.durable.load(Ordering::Acquire);
        if let Some(seq) = done_at
            && *durable >= seq
        {
            done_at = None;
            for log in &module.logs {
                if let Err(e) = resync::clear_all(log.as_ref()) {
                    fail(format!("change log: {e}"));
                }
                // Same data as the primary now: same generation.
                if let Some(g) = &adopt
                    && let Err(e) = log.adopt_generation(g)
                {
                    fail(format!("change log: {e}"));
                }
            }
            module.state.lock().uptodate = true;
            tracing::info!("{}: up to date with the primary", module.name);
        }
        module.state.lock().durable = *durable;
        if !idle || last_ack.elapsed() >= KEEPALIVE / 2 {
            let _ = out.send(ack(c));
            last_ack = Instant::now();
        }
    }
}
