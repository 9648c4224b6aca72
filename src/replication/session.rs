//! The primary's connection to its secondary: connect, authenticate, learn
//! what the target changed on its own, resync, then stream mutations and read
//! acknowledgements until the link breaks; then retry.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::channel::{Channel, PrimaryEnd};
pub use super::errors::{SessionError, protocol};
use super::frame::Compression;
use super::framed::{Connector, Expect, FrameReader, FrameWriter, HELLO_TIMEOUT, check_hello};
use super::primary::{LinkError, Replicator};
use super::resync::{self, Diverged};
use super::tls::Credentials;
use super::wire::{AckAt, Message, checked_path, checked_path_or_root};
use crate::changelog::ChangeLogError;
use crate::config::Ack;
use crate::stop::Stop;

type Tls = tokio_rustls::client::TlsStream<TcpStream>;
type Rd = tokio::io::ReadHalf<Tls>;
type Wr = tokio::io::WriteHalf<Tls>;

/// How long to wait between connection attempts.
pub const RETRY: Duration = Duration::from_millis(100);
pub const MAX_RETRY: Duration = Duration::from_secs(5);
/// The secondary acknowledges at least this often, even when idle.
pub const KEEPALIVE: Duration = Duration::from_secs(1);
/// How often the times of files written and left open go to the peer.
pub const TIMES_EVERY: Duration = Duration::from_millis(500);
/// The longest a change no durability point asked for stays queued.
const BACKSTOP: Duration = Duration::from_millis(5);

pub struct PrimarySession {
    pub rep: Arc<Replicator>,
    pub creds: Arc<Credentials>,
    pub cluster: String,
    pub peer_addr: SocketAddr,
    pub compression: Compression,
    /// Ends the link and what runs for it (a verify).
    pub stop: Stop,
}

impl PrimarySession {
    /// Runs the link on `rt` until its stop.
    pub fn start(self: &Arc<Self>, rt: &tokio::runtime::Handle) {
        let name = format!("link-{}", self.rep.module);
        self.stop.watched_task(rt, name, self.clone().run());
    }

    /// What another connection to the peer (a verify's) needs.
    pub fn connector(&self) -> Connector {
        Connector {
            creds: self.creds.clone(),
            cluster: self.cluster.clone(),
            peer_addr: self.peer_addr,
            compression: self.compression,
        }
    }

    /// Connects, streams and reconnects until its stop.
    async fn run(self: Arc<Self>) {
        let stop = self.stop.clone();
        let mut last_err = String::new();
        let mut delay = RETRY;
        while !stop.is_stopped() {
            let started = std::time::Instant::now();
            match self.session(&stop).await {
                Ok(()) => {}
                Err(e) if stop.is_stopped() => {
                    tracing::debug!("{}: link stopped: {e}", self.rep.module)
                }
                Err(e) => {
                    let e = e.to_string();
                    if e != last_err {
                        tracing::warn!(
                            "{}: link to {} ({}): {e}",
                            self.rep.module,
                            self.creds.peer,
                            self.peer_addr
                        );
                        last_err = e;
                    }
                }
            }
            // A link that fails again and again (a peer whose disk is full,
            // say) is retried less and less often, up to every few seconds.
            delay = if started.elapsed() > Duration::from_secs(10) {
                RETRY
            } else {
                (delay * 2).min(MAX_RETRY)
            };
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = stop.stopped() => {}
            }
        }
    }

    async fn session(&self, stop: &Stop) -> Result<(), SessionError> {
        // Until streaming starts nothing runs beside this future: a stop
        // ends it at its next step (nothing is attached to the replicator).
        let (reader, writer, diverged) = tokio::select! {
            r = self.open() => r?,
            () = stop.stopped() => return Err(SessionError::Stopped("stopped before streaming")),
        };
        self.stream(stop, reader, writer, diverged).await
    }

    /// Connects, introduces both sides and compares if asked: what streaming
    /// starts from.
    async fn open(
        &self,
    ) -> Result<(FrameReader<Rd>, FrameWriter<Wr>, Vec<Diverged>), SessionError> {
        let rep = &self.rep;
        let connect_timeout = rep.peer_timeout.max(Duration::from_secs(1));
        let tcp = tokio::time::timeout(connect_timeout, TcpStream::connect(self.peer_addr))
            .await
            .map_err(|_| SessionError::Timeout("connect timed out"))?
            .map_err(SessionError::Connect)?;
        tcp.set_nodelay(true).ok();
        let config = self.creds.client_config()?;
        let tls = tokio::time::timeout(
            HELLO_TIMEOUT,
            TlsConnector::from(config).connect(Credentials::server_name(), tcp),
        )
        .await
        .map_err(|_| SessionError::Timeout("TLS handshake timed out"))?
        .map_err(SessionError::Handshake)?;
        if !self.creds.is_peer(tls.get_ref().1.peer_certificates()) {
            return Err(SessionError::ServerNotPeer(self.creds.peer.clone()));
        }
        let (rd, wr) = tokio::io::split(tls);
        let mut reader = FrameReader::new(rd);
        let mut writer = FrameWriter::new(wr, self.compression);
        let generation = rep.dirs()[0]
            .log
            .generation()
            .map(|g| g.current)
            .unwrap_or(0);
        writer
            .send(&Message::Hello {
                cluster: self.cluster.clone(),
                node: self.creds.node.clone(),
                modules: vec![rep.module.clone()],
                dirs: rep.dirs().len() as u32,
                generation,
                verify: false,
                acks: match rep.ack {
                    Ack::Durable => AckAt::Applied,
                    Ack::Received => AckAt::Received,
                    Ack::Async => AckAt::Batch,
                },
                speaks: super::framed::speaks(),
                resumes: rep.resumes.swap(false, std::sync::atomic::Ordering::SeqCst),
            })
            .await?;
        let hello = tokio::time::timeout(HELLO_TIMEOUT, reader.next())
            .await
            .map_err(|_| SessionError::Timeout("no Hello from the peer"))??;
        if let Message::Close { reason } = hello {
            return Err(SessionError::Refused(reason));
        }
        let hello = check_hello(
            hello,
            &Expect {
                me: &self.creds.node,
                cluster: &self.cluster,
                peer: &self.creds.peer,
                module: Some(&rep.module),
                dirs: Some(rep.dirs().len() as u32),
            },
        )?;
        *rep.agreed.lock() = Some(hello.agreed);
        let (diverged, full) = read_diverged(&mut reader, rep.dirs().len()).await?;
        let compare = take_compare_needed(rep)?;
        if full || compare {
            // Compare by content, record every difference, and let the
            // resync below ship them.
            if full {
                tracing::info!("{}: full sync requested by {}", rep.module, self.creds.peer);
            } else {
                tracing::info!(
                    "{}: changes were recorded under names since removed: comparing with {} by content",
                    rep.module,
                    self.creds.peer
                );
            }
            let report = match super::verify::full::run(&self.connector(), rep, &rep.verify).await {
                Ok(r) => r,
                Err(e) => {
                    restore_compare_needed(rep, compare);
                    return Err(e);
                }
            };
            tracing::info!(
                "{}: full sync: {} differences in {} files ({} bytes hashed)",
                rep.module,
                report.differences,
                report.files,
                report.bytes_hashed
            );
        }

        Ok((reader, writer, diverged))
    }

    /// Streams the changes and takes the acknowledgements until the link
    /// fails, is closed, or `stop`.
    async fn stream(
        &self,
        stop: &Stop,
        reader: FrameReader<Rd>,
        writer: FrameWriter<Wr>,
        diverged: Vec<Diverged>,
    ) -> Result<(), SessionError> {
        let rep = &self.rep;
        // From here on the application's threads send, and one task reads
        // the acknowledgements (on a shared thread only while it reads):
        // nothing stands between the senders and the socket.
        let (rd, rest) = reader.into_parts();
        let (tcp, tls) = rd.unsplit(writer.into_inner()).into_inner();
        let channel = Arc::new(Channel::from_tokio(
            tcp,
            tls,
            rep.peer_timeout,
            rep.tally.clone(),
        )?);
        let link = Arc::new(PrimaryEnd::new(channel.clone(), self.compression, rest));
        let conn = rep.attach(link.clone());
        rep.keep_times(conn, TIMES_EVERY, stop);
        tracing::info!("{}: connected to {}", rep.module, self.creds.peer);
        let resync_rep = rep.clone();
        let resync = tokio::task::spawn_blocking(move || resync::run(&resync_rep, conn, diverged));
        let idle = rep.peer_timeout.max(KEEPALIVE * 3);
        let why = read_acks(rep, conn, &link, stop, idle).await;
        // Detached, the replicator sends nothing more; the connection goes
        // with it (closed already if the link was closed on purpose).
        rep.detach(conn, &why.to_string());
        channel.close(false);
        match resync.await {
            // Lost with the link: the next link resyncs again.
            Ok(Err(e @ resync::ResyncError::Interrupted { .. })) => tracing::info!("{e}"),
            Ok(Err(e)) => tracing::warn!("{e}"),
            Err(e) => tracing::error!("{}: resync task: {e}", rep.module),
            Ok(Ok(())) => {}
        }
        Err(why)
    }
}

/// Reads the peer's acknowledgements until the link ends, and says why it
/// ended; stands aside while calls wait for the peer (they read their own
/// answers). Also the backstop of the sends no durability point asked for.
/// It waits on the runtime (for the socket to be readable, or for the
/// backstop's time) and each step runs on a thread shared by every link
/// (`steps`) only while it works: a link at rest holds no thread of its own.
async fn read_acks(
    rep: &Arc<Replicator>,
    conn: u64,
    link: &Arc<PrimaryEnd>,
    stop: &Stop,
    idle: Duration,
) -> SessionError {
    let task = |e: &dyn std::fmt::Display| SessionError::Task {
        what: "the acknowledgement reader",
        why: e.to_string(),
    };
    let ready = match link.readiness() {
        Ok(r) => r,
        Err(e) => return task(&e),
    };
    let mut wait = BACKSTOP;
    let mut aside = false;
    loop {
        aside = aside || link.waited_within(BACKSTOP);
        let pause = if aside { BACKSTOP } else { wait };
        let guard = tokio::select! {
            r = ready.readable(), if !aside => r.ok(),
            () = tokio::time::sleep(pause) => None,
            () = stop.stopped() => return SessionError::Stopped("the link was stopped"),
        };
        // A tick with nothing to read, clear or send is looked at here.
        if guard.is_none() && !aside && !link.readable_now() && rep.nothing_to_clear() {
            if let Some(w) = link.idle_backstop(BACKSTOP) {
                if let Err(why) = still_alive(rep, conn, link, idle) {
                    return why;
                }
                wait = w;
                continue;
            }
        }
        let (r, l) = (rep.clone(), link.clone());
        let step = super::steps::run(move || ack_step(&r, conn, &l, aside, idle)).await;
        // Readiness is an edge: kept while bytes are still unread.
        if let Some(mut g) = guard {
            if !link.readable_now() {
                g.clear_ready();
            }
        }
        match step {
            Ok(Ok(next)) => (wait, aside) = next,
            Ok(Err(why)) => return why,
            Err(e) => return task(&e),
        }
    }
}

/// One look at the link: what arrived is taken (or, aside, what the waiting
/// calls read is cleared), what waited too long is sent, and a link silent
/// or dropped ends. Returns how long to wait next and whether to stand aside.
fn ack_step(
    rep: &Replicator,
    conn: u64,
    link: &PrimaryEnd,
    aside: bool,
    idle: Duration,
) -> Result<(Duration, bool), SessionError> {
    let mut quiet = true;
    let mut aside_next = false;
    if aside {
        // What the waiting calls read, cleared here, off their path.
        rep.clear_acked(conn);
    } else {
        match link.read_until(std::time::Instant::now()) {
            Some(Ok(msgs)) => {
                quiet = msgs.is_empty();
                rep.take_replies(conn, msgs)?;
            }
            Some(Err(e)) => return Err(e.into()),
            // A waiting call is reading (for up to a slice): asking
            // again at once would spin until it is done.
            None => aside_next = true,
        }
    }
    // What arrived just now is a peer heard from and a link in use.
    if quiet {
        still_alive(rep, conn, link, idle)?;
    }
    Ok((link.backstop(BACKSTOP)?, aside_next))
}

/// A link with nothing new ends if the peer has been silent too long or the
/// link was replaced.
fn still_alive(
    rep: &Replicator,
    conn: u64,
    link: &PrimaryEnd,
    idle: Duration,
) -> Result<(), SessionError> {
    if link.heard().elapsed() >= idle {
        return Err(SessionError::Silent {
            ms: idle.as_millis(),
        });
    }
    if !rep.still_linked(conn) {
        return Err(LinkError::Dropped.into());
    }
    Ok(())
}

/// Whether a comparison by content is owed, clearing the record of it: a
/// change that owes one during the comparison records it again.
fn take_compare_needed(rep: &Replicator) -> Result<bool, ChangeLogError> {
    let mut needed = false;
    for d in rep.dirs() {
        if d.log.compare_needed()? {
            needed = true;
            d.log.set_compare_needed(false)?;
        }
    }
    Ok(needed)
}

/// The comparison failed: it is still owed.
fn restore_compare_needed(rep: &Replicator, needed: bool) {
    if !needed {
        return;
    }
    for d in rep.dirs() {
        if let Err(e) = d.log.set_compare_needed(true) {
            tracing::error!("{}: change log: {e}", rep.module);
        }
    }
}

async fn read_diverged<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut FrameReader<R>,
    dirs: usize,
) -> Result<(Vec<Diverged>, bool), SessionError> {
    let mut out = vec![Diverged::default(); dirs];
    loop {
        let m = tokio::time::timeout(HELLO_TIMEOUT, reader.next())
            .await
            .map_err(|_| SessionError::Timeout("peer did not send its diverged set"))??;
        let Message::Diverged {
            dir,
            files,
            paths,
            last,
            full,
        } = m
        else {
            return Err(protocol(format!("expected Diverged, got {}", m.kind())));
        };
        let d = out.get_mut(dir as usize).ok_or_else(|| {
            protocol(format!(
                "diverged set for directory {dir}, which does not exist"
            ))
        })?;
        for (p, ranges) in files {
            let p = checked_path(&p).map_err(protocol)?;
            let ranges = ranges
                .into_iter()
                .map(|(s, e)| {
                    if s < e {
                        Ok(s..e)
                    } else {
                        Err(protocol(format!("bad range {s}..{e} for {}", p.display())))
                    }
                })
                .collect::<Result<Vec<_>, _>>()?;
            d.files.push((p, ranges));
        }
        for p in paths {
            // A name to reconcile may be the root itself (its metadata).
            d.paths.push(checked_path_or_root(&p).map_err(protocol)?);
        }
        if last {
            return Ok((out, full));
        }
    }
}

/// Why a peer's name gives no address.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("cannot resolve {name}: {why}")]
    Lookup { name: String, why: std::io::Error },
    #[error("{0} has no address")]
    NoAddress(String),
}

/// Where a node listens for its peer: its configured address.
pub async fn resolve(host: &crate::config::Host, port: u16) -> Result<SocketAddr, ResolveError> {
    if let Some(ip) = host.ip() {
        return Ok(SocketAddr::new(ip, port));
    }
    let name = host.to_string();
    let found = tokio::net::lookup_host((name.as_str(), port))
        .await
        .map(|mut a| a.next());
    match found {
        Ok(Some(addr)) => Ok(addr),
        Ok(None) => Err(ResolveError::NoAddress(name)),
        Err(why) => Err(ResolveError::Lookup { name, why }),
    }
}

pub fn state_dir(base: &std::path::Path, module: &str, dir: usize) -> PathBuf {
    base.join("modules").join(module).join(format!("dir{dir}"))
}
