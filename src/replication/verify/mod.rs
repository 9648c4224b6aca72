//! Verify: compares the two nodes' trees by names, metadata and content
//! chunks, on a connection of its own. The peer computes its manifest while
//! this node computes its own; differences are checked again before they are
//! reported, so files written during the check are not reported unless they
//! still differ. `--repair` and full sync turn differences into change-log
//! records, and the ordinary resync ships them.

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::changelog::{ChangeLogError, NsChange};

use super::dir::Dir;
use super::errors::{SessionError, protocol};
use super::framed::{Connector, Expect, FrameReader, FrameWriter, HELLO_TIMEOUT, check_hello};
use super::manifest::{self, Item, ScanProgress};
use super::primary::Replicator;
use super::status::{Difference, VerifyReport, VerifyState};
use super::tls::Credentials;
use super::wire::{ChunkSum, Entry, EntryKind, ManifestItem, Message, checked_path};

pub mod full;
mod merge;

/// Items per Manifest message, and chunks per item part.
const PART_ITEMS: usize = 2048;
const PART_CHUNKS: usize = 16384;

fn raw(p: &Path) -> Vec<u8> {
    p.as_os_str().as_bytes().to_vec()
}

// ---- the peer's side ----

/// Answers manifest requests on a verify connection until it closes. The
/// snapshots this node took at the primary's cuts for it go with it.
pub async fn serve<R, W>(
    dirs: Arc<Vec<Dir>>,
    reader: FrameReader<R>,
    writer: FrameWriter<W>,
) -> Result<(), SessionError>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut used = Vec::new();
    let r = serve_requests(&dirs, reader, writer, &mut used).await;
    if let Some(snaps) = dirs.first().and_then(|d| d.snaps.clone()) {
        for name in used {
            if let Err(e) = snaps.delete(&name) {
                tracing::warn!("verify snapshot {name}: {e}");
            }
        }
    }
    r
}

async fn serve_requests<R, W>(
    dirs: &Arc<Vec<Dir>>,
    mut reader: FrameReader<R>,
    mut writer: FrameWriter<W>,
    used: &mut Vec<String>,
) -> Result<(), SessionError>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    loop {
        let m = match reader.next().await {
            Ok(m) => m,
            Err(e) if e.is_end() => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        if let Message::ManifestAt {
            dir,
            paths,
            snapshot,
        } = m
        {
            if !used.contains(&snapshot) {
                used.push(snapshot.clone());
            }
            serve_at(dirs, dir, paths, snapshot, &mut writer).await?;
            continue;
        }
        let Message::ManifestRequest { dir, paths, hash } = m else {
            return Err(protocol(format!(
                "unexpected message on a verify connection: {}",
                m.kind()
            )));
        };
        if dir as usize >= dirs.len() {
            return Err(protocol(format!(
                "manifest of directory {dir}, which does not exist"
            )));
        }
        let paths = match paths {
            None => None,
            Some(ps) => Some(
                ps.iter()
                    .map(|p| {
                        if p.is_empty() {
                            Ok(PathBuf::new())
                        } else {
                            checked_path(p).map_err(protocol)
                        }
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<ManifestItem>>(4);
        let scan_dirs = dirs.clone();
        let work = tokio::task::spawn_blocking(move || {
            produce(
                &scan_dirs[dir as usize],
                paths,
                hash,
                &ScanProgress::default(),
                &tx,
            )
        });
        let send = async {
            while let Some(items) = rx.recv().await {
                writer.push(&Message::Manifest {
                    dir,
                    items,
                    last: false,
                })?;
                writer.flush().await?;
            }
            Ok::<(), SessionError>(())
        };
        let (r, s) = tokio::join!(work, send);
        s?;
        r??;
        writer
            .send(&Message::Manifest {
                dir,
                items: Vec::new(),
                last: true,
            })
            .await?;
    }
}

/// How long the peer's snapshot at a cut may take to arrive: the cut
/// travels on the replication stream, this request on its own connection.
const CUT_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Answers a manifest of `paths` as this node's snapshot `snapshot` saw them.
async fn serve_at<W>(
    dirs: &Arc<Vec<Dir>>,
    dir: u32,
    paths: Vec<Vec<u8>>,
    snapshot: String,
    writer: &mut FrameWriter<W>,
) -> Result<(), SessionError>
where
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Some(snaps) = dirs.get(dir as usize).and_then(|d| d.snaps.clone()) else {
        return Err(protocol(format!(
            "manifest at a snapshot of directory {dir}, which has none here"
        )));
    };
    let paths = paths
        .iter()
        .map(|p| {
            if p.is_empty() {
                Ok(PathBuf::new())
            } else {
                checked_path(p).map_err(protocol)
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let deadline = Instant::now() + CUT_WAIT;
    while snaps.find(&snapshot).is_err() {
        if Instant::now() > deadline {
            return Err(protocol(format!(
                "no snapshot {snapshot} here: the cut did not arrive"
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let dirs2 = dirs.clone();
    let items = tokio::task::spawn_blocking(move || {
        let root = dirs2[dir as usize].root.as_fd();
        paths
            .iter()
            .map(|p| {
                let it = snaps
                    .item_at(&snapshot, dir, root, p)
                    .map_err(|e| SessionError::Manifest(std::io::Error::other(e.to_string())))?;
                Ok((p.clone(), it))
            })
            .collect::<Result<Vec<_>, SessionError>>()
    })
    .await??;
    let mut part = Vec::new();
    for (p, it) in items {
        let (entry, chunks) = match it {
            Some(it) => (Some(it.entry), it.chunks),
            None => (None, Vec::new()),
        };
        part.push(ManifestItem::Entry {
            path: raw(&p),
            entry,
        });
        for c in chunks.chunks(PART_CHUNKS) {
            part.push(ManifestItem::Chunks(c.to_vec()));
        }
    }
    writer
        .send(&Message::Manifest {
            dir,
            items: part,
            last: true,
        })
        .await?;
    Ok(())
}

/// Scans (or looks up `paths`) and hands items over in parts.
fn produce(
    d: &Dir,
    paths: Option<Vec<PathBuf>>,
    hash: bool,
    progress: &ScanProgress,
    tx: &tokio::sync::mpsc::Sender<Vec<ManifestItem>>,
) -> Result<(), SessionError> {
    let mut part = Vec::new();
    let emit = |part: &mut Vec<ManifestItem>, force: bool| -> std::io::Result<()> {
        if part.len() >= PART_ITEMS || (force && !part.is_empty()) {
            tx.blocking_send(std::mem::take(part))
                .map_err(|_| std::io::Error::other("verify connection closed"))?;
        }
        Ok(())
    };
    let push =
        |part: &mut Vec<ManifestItem>, path: &Path, it: Option<Item>| -> std::io::Result<()> {
            let (entry, chunks) = match it {
                Some(it) => (Some(it.entry), it.chunks),
                None => (None, Vec::new()),
            };
            part.push(ManifestItem::Entry {
                path: raw(path),
                entry,
            });
            for c in chunks.chunks(PART_CHUNKS) {
                part.push(ManifestItem::Chunks(c.to_vec()));
            }
            emit(part, false)
        };
    let root = d.root.as_fd();
    // A scan that hashes nothing leaves the cache to others (a full sync's
    // hasher, while this scan runs). Only a scan that hashes every file may
    // drop the entries it did not see.
    let mut cache = hash.then(|| d.cache.lock());
    let cached = match cache.as_mut() {
        Some(c) => c.begin(paths.is_none()),
        None => manifest::Scan::off(),
    };
    let hash_if: manifest::HashIf<'_> = if hash {
        &manifest::all
    } else {
        &manifest::none
    };
    let r = match paths {
        None => manifest::scan(root, hash_if, &cached, progress, &mut |it| {
            let path = it.path.clone();
            push(&mut part, &path, Some(it))
        }),
        Some(paths) => paths.iter().try_for_each(|p| {
            let it = manifest::item(root, p, hash_if, &cached, progress)?;
            push(&mut part, p, it)
        }),
    };
    cached.finish(r.is_ok());
    drop(cache);
    r.and_then(|()| emit(&mut part, true))
        .map_err(SessionError::Manifest)
}

// ---- this node's side ----

/// A verify connection to the peer.
pub struct Remote<R, W> {
    reader: FrameReader<R>,
    writer: FrameWriter<W>,
}

pub async fn connect(
    link: &Connector,
    rep: &Replicator,
) -> Result<
    Remote<impl tokio::io::AsyncRead + Unpin, impl tokio::io::AsyncWrite + Unpin>,
    SessionError,
> {
    let tcp = tokio::time::timeout(HELLO_TIMEOUT, TcpStream::connect(link.peer_addr))
        .await
        .map_err(|_| SessionError::Timeout("connect timed out"))?
        .map_err(|why| SessionError::ConnectTo {
            addr: link.peer_addr,
            why,
        })?;
    tcp.set_nodelay(true).ok();
    let config = link.creds.client_config()?;
    let tls = TlsConnector::from(config)
        .connect(Credentials::server_name(), tcp)
        .await
        .map_err(SessionError::Handshake)?;
    if !link.creds.is_peer(tls.get_ref().1.peer_certificates()) {
        return Err(SessionError::ServerNotPeer(link.creds.peer.clone()));
    }
    let (rd, wr) = tokio::io::split(tls);
    let mut reader = FrameReader::new(rd);
    let mut writer = FrameWriter::new(wr, link.compression);
    writer
        .send(&Message::Hello {
            cluster: link.cluster.clone(),
            node: link.creds.node.clone(),
            modules: vec![rep.module.clone()],
            dirs: rep.dirs().len() as u32,
            generation: 0,
            verify: true,
            acks: Default::default(),
            speaks: super::framed::speaks(),
            resumes: false,
        })
        .await?;
    let hello = tokio::time::timeout(HELLO_TIMEOUT, reader.next())
        .await
        .map_err(|_| SessionError::Timeout("no Hello from the peer"))??;
    if let Message::Close { reason } = hello {
        return Err(SessionError::Refused(reason));
    }
    check_hello(
        hello,
        &Expect {
            me: &link.creds.node,
            cluster: &link.cluster,
            peer: &link.creds.peer,
            module: Some(&rep.module),
            dirs: Some(rep.dirs().len() as u32),
        },
    )?;
    Ok(Remote { reader, writer })
}

impl<R: tokio::io::AsyncRead + Unpin, W: tokio::io::AsyncWrite + Unpin> Remote<R, W> {
    /// The peer's items of `paths`, hashed.
    async fn manifest(
        &mut self,
        dir: u32,
        paths: &[PathBuf],
    ) -> Result<BTreeMap<PathBuf, Item>, SessionError> {
        self.writer
            .send(&Message::ManifestRequest {
                dir,
                paths: Some(paths.iter().map(|p| raw(p)).collect()),
                hash: true,
            })
            .await?;
        self.read_manifest(dir).await
    }

    /// The manifest of `paths` as the peer's snapshot `snapshot` saw them.
    async fn manifest_at(
        &mut self,
        dir: u32,
        paths: &[PathBuf],
        snapshot: &str,
    ) -> Result<BTreeMap<PathBuf, Item>, SessionError> {
        self.writer
            .send(&Message::ManifestAt {
                dir,
                paths: paths.iter().map(|p| raw(p)).collect(),
                snapshot: snapshot.to_string(),
            })
            .await?;
        self.read_manifest(dir).await
    }

    async fn read_manifest(&mut self, dir: u32) -> Result<BTreeMap<PathBuf, Item>, SessionError> {
        let mut items = merge::Assembler::default();
        while !self.next_part(dir, &mut items).await? {}
        Ok(items.into_items().map(|it| (it.path.clone(), it)).collect())
    }

    /// Reads the next part of a manifest of `dir` into `items`; whether it
    /// was the last.
    async fn next_part(
        &mut self,
        dir: u32,
        items: &mut merge::Assembler,
    ) -> Result<bool, SessionError> {
        let m = self.reader.next().await?;
        let Message::Manifest {
            dir: d,
            items: part,
            last,
        } = m
        else {
            return Err(protocol(format!("expected Manifest, got {}", m.kind())));
        };
        if d != dir {
            return Err(protocol(format!(
                "manifest of directory {d}, asked for {dir}"
            )));
        }
        items.feed(part, last)?;
        Ok(last)
    }
}

/// This node's items of `paths`, hashed.
fn local_manifest(
    d: &Dir,
    paths: &[PathBuf],
    progress: &ScanProgress,
) -> Result<BTreeMap<PathBuf, Item>, SessionError> {
    let mut cache = d.cache.lock();
    // It hashes some files only: what it did not hash stays in the cache.
    let cached = cache.begin(false);
    let r = manifest::items(d.root.as_fd(), paths, &manifest::all, &cached, progress);
    cached.finish(r.is_ok());
    let found = r.map_err(SessionError::Manifest)?;
    Ok(found
        .into_iter()
        .flatten()
        .map(|it| (it.path.clone(), it))
        .collect())
}

fn same_meta(a: &Entry, b: &Entry, what: &mut Vec<String>) {
    let kind = |e: &Entry| std::mem::discriminant(&e.kind);
    if kind(a) != kind(b) {
        what.push("type".into());
        return;
    }
    if let (EntryKind::Symlink(x), EntryKind::Symlink(y)) = (&a.kind, &b.kind)
        && x != y
    {
        what.push("symlink target".into());
    }
    if let (EntryKind::Char(x), EntryKind::Char(y)) | (EntryKind::Block(x), EntryKind::Block(y)) =
        (&a.kind, &b.kind)
        && x != y
    {
        what.push("device".into());
    }
    if a.mode != b.mode {
        what.push("mode".into());
    }
    if (a.uid, a.gid) != (b.uid, b.gid) {
        what.push("owner".into());
    }
    if a.kind == EntryKind::File && a.size != b.size {
        what.push("size".into());
    }
    if a.mtime != b.mtime {
        what.push("mtime".into());
    }
    if a.xattrs != b.xattrs {
        what.push("xattrs".into());
    }
}

/// Ranges of `ours` whose chunks `theirs` does not hold at the same place.
fn content_ranges(ours: &[ChunkSum], theirs: &[ChunkSum]) -> Vec<(u64, u64)> {
    let have: std::collections::HashSet<&ChunkSum> = theirs.iter().collect();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for c in ours.iter().filter(|c| !have.contains(c)) {
        let (s, e) = (c.offset, c.offset + c.len as u64);
        match out.last_mut() {
            Some(last) if last.1 == s => last.1 = e,
            _ => out.push((s, e)),
        }
    }
    out
}

fn compare(
    dir: u32,
    ours: &BTreeMap<PathBuf, Item>,
    theirs: &BTreeMap<PathBuf, Item>,
) -> Vec<Difference> {
    let mut out: Vec<Difference> = ours
        .iter()
        .filter_map(|(p, a)| compare_one(dir, p, Some(a), theirs.get(p)))
        .collect();
    out.extend(
        theirs
            .iter()
            .filter(|(p, _)| !ours.contains_key(*p))
            .filter_map(|(p, b)| compare_one(dir, p, None, Some(b))),
    );
    out.sort_by(|a, b| a.raw.cmp(&b.raw));
    out
}

/// How the name `p` differs between this node (`ours`) and the peer (both
/// hashed).
fn compare_one(
    dir: u32,
    p: &Path,
    ours: Option<&Item>,
    theirs: Option<&Item>,
) -> Option<Difference> {
    let diff = |what: Vec<String>, ranges: Vec<(u64, u64)>| Difference {
        dir,
        path: manifest::display(p),
        what,
        ranges,
        raw: raw(p),
    };
    match (ours, theirs) {
        (None, None) => None,
        (Some(a), None) => Some(diff(
            vec!["only here".into()],
            if a.entry.kind == EntryKind::File && a.entry.size > 0 {
                vec![(0, a.entry.size)]
            } else {
                Vec::new()
            },
        )),
        (None, Some(_)) => Some(diff(vec!["only on the peer".into()], Vec::new())),
        (Some(a), Some(b)) => {
            let mut what = Vec::new();
            same_meta(&a.entry, &b.entry, &mut what);
            let mut ranges = Vec::new();
            if a.entry.kind == EntryKind::File
                && b.entry.kind == EntryKind::File
                && a.chunks != b.chunks
            {
                what.push("content".into());
                ranges = content_ranges(&a.chunks, &b.chunks);
            }
            if what.iter().any(|w| w == "type") && a.entry.kind == EntryKind::File {
                ranges = vec![(0, a.entry.size)];
            }
            (!what.is_empty()).then(|| diff(what, ranges))
        }
    }
}

/// Compares every directory of the module with the peer. `state` sees the
/// local scan's counters as it goes.
pub async fn run(
    link: &Connector,
    rep: &Arc<Replicator>,
    state: &parking_lot::Mutex<VerifyState>,
) -> Result<VerifyReport, SessionError> {
    let started = Instant::now();
    let rep = rep.clone();
    let mut remote = connect(link, &rep).await?;
    let mut report = VerifyReport::default();
    // The consistent cut, taken at the first re-check (`Some(None)`: none
    // could be taken).
    let mut cut: Option<Option<String>> = None;
    for d in 0..rep.dirs().len() {
        let dir = d as u32;
        state.lock().phase = format!("scanning directory {}", d + 1);
        let progress = Arc::new(ScanProgress::default());
        let (scan_rep, scan_progress) = (rep.clone(), progress.clone());
        let ticker = async {
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                let mut s = state.lock();
                s.files = progress.files.load(Ordering::Relaxed);
                s.bytes_hashed = progress.bytes_hashed.load(Ordering::Relaxed);
                s.bytes_cached = progress.bytes_cached.load(Ordering::Relaxed);
            }
        };
        let (files, bytes, first) = tokio::select! {
            r = first_pass(&mut remote, &scan_rep, d, scan_progress) => r?,
            _ = ticker => unreachable!(),
        };
        report.files += files;
        report.bytes += bytes;
        report.bytes_hashed += progress.bytes_hashed.load(Ordering::Relaxed);
        if first.is_empty() {
            continue;
        }
        // Check again what differed: a file written meanwhile may agree now.
        state.lock().phase = format!("re-checking {} names", first.len());
        report.rechecked += first.len() as u64;
        let paths: Vec<PathBuf> = first
            .iter()
            .map(|d| PathBuf::from(std::ffi::OsStr::from_bytes(&d.raw)))
            .collect();
        if cut.is_none() {
            cut = Some(rep.verify_cut());
        }
        let (mut again_ours, mut again_theirs) = match cut.clone().flatten() {
            // Both copies as they were at one point of the stream: a file
            // written throughout the check is compared as it was there.
            Some(name) => {
                let mut theirs = BTreeMap::new();
                for batch in paths.chunks(PART_ITEMS) {
                    theirs.extend(remote.manifest_at(dir, batch, &name).await?);
                }
                let (at_rep, at_paths) = (rep.clone(), paths.clone());
                let ours =
                    tokio::task::spawn_blocking(move || at_manifest(&at_rep, d, &name, &at_paths))
                        .await??;
                (ours, theirs)
            }
            None => {
                let mut theirs = BTreeMap::new();
                for batch in paths.chunks(PART_ITEMS) {
                    theirs.extend(remote.manifest(dir, batch).await?);
                }
                let (again_rep, again_paths, again_progress) = (
                    rep.clone(),
                    paths.clone(),
                    Arc::new(ScanProgress::default()),
                );
                let ours = tokio::task::spawn_blocking(move || {
                    local_manifest(&again_rep.dirs()[d], &again_paths, &again_progress)
                })
                .await??;
                (ours, theirs)
            }
        };
        replicated_only(&rep, &mut again_ours);
        replicated_only(&rep, &mut again_theirs);
        report
            .differences
            .extend(compare(dir, &again_ours, &again_theirs));
    }
    if let Some(Some(name)) = &cut {
        rep.drop_cut(name);
        report.at_cut = true;
    }
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    crate::fs::sys::give_back_memory();
    Ok(report)
}

/// The two ordered streams a compare of one directory merges (see
/// [`merge`]): this node's scan, made by a task of its own, and the peer's
/// manifest. Names excluded from replication are left out on both sides.
struct Streams<'a, R, W> {
    remote: &'a mut Remote<R, W>,
    rep: &'a Arc<Replicator>,
    dir: u32,
    rx: tokio::sync::mpsc::Receiver<Vec<ManifestItem>>,
    scan: Option<tokio::task::JoinHandle<Result<(), SessionError>>>,
    ours: merge::Assembler,
    theirs: merge::Assembler,
}

impl<'a, R, W> Streams<'a, R, W>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    /// Asks the peer for its manifest of directory `d` (hashed) and starts
    /// this node's scan of it (hashed if `hash`).
    async fn start(
        remote: &'a mut Remote<R, W>,
        rep: &'a Arc<Replicator>,
        d: usize,
        hash: bool,
        progress: Arc<ScanProgress>,
    ) -> Result<Self, SessionError> {
        let dir = d as u32;
        remote
            .writer
            .send(&Message::ManifestRequest {
                dir,
                paths: None,
                hash: true,
            })
            .await?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Vec<ManifestItem>>(4);
        let scan_rep = rep.clone();
        let scan = Some(tokio::task::spawn_blocking(move || {
            produce(&scan_rep.dirs()[d], None, hash, &progress, &tx)
        }));
        Ok(Self {
            remote,
            rep,
            dir,
            rx,
            scan,
            ours: merge::Assembler::default(),
            theirs: merge::Assembler::default(),
        })
    }

    /// The next name's item on each side (`None`: not there, or excluded);
    /// `None` once both streams ended.
    async fn next(&mut self) -> Result<Option<(Option<Item>, Option<Item>)>, SessionError> {
        while !self.ours.fed() {
            match self.rx.recv().await {
                Some(part) => self.ours.feed(part, false)?,
                None => {
                    // The scan ended: a failure is reported as such, not
                    // as names missing here.
                    if let Some(scan) = self.scan.take() {
                        scan.await??;
                    }
                    self.ours.feed(Vec::new(), true)?;
                }
            }
        }
        while !self.theirs.fed() {
            self.remote.next_part(self.dir, &mut self.theirs).await?;
        }
        let here = self.ours.peek().map(|i| i.path.as_path());
        let (a, b) = match merge::next_side(here, self.theirs.peek().map(|i| i.path.as_path())) {
            None => return Ok(None),
            Some(merge::Side::Ours) => (self.ours.take("this node's scan")?, None),
            Some(merge::Side::Theirs) => (None, self.theirs.take("the peer's manifest")?),
            Some(merge::Side::Both) => (
                self.ours.take("this node's scan")?,
                self.theirs.take("the peer's manifest")?,
            ),
        };
        let kept = |it: Option<Item>| it.filter(|it| replicated(self.rep, it));
        Ok(Some((kept(a), kept(b))))
    }
}

/// The first pass of a verify of directory `d`: how many names this node
/// has, their bytes, and how they differ from the peer's.
async fn first_pass<R, W>(
    remote: &mut Remote<R, W>,
    rep: &Arc<Replicator>,
    d: usize,
    progress: Arc<ScanProgress>,
) -> Result<(u64, u64, Vec<Difference>), SessionError>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut streams = Streams::start(remote, rep, d, true, progress).await?;
    let (mut files, mut bytes, mut out) = (0, 0, Vec::new());
    while let Some((a, b)) = streams.next().await? {
        if let Some(a) = &a {
            files += 1;
            bytes += a.entry.size;
        }
        if let Some(p) = a.as_ref().or(b.as_ref()).map(|i| i.path.clone())
            && let Some(diff) = compare_one(d as u32, &p, a.as_ref(), b.as_ref())
        {
            out.push(diff);
        }
    }
    out.sort_by(|a, b| a.raw.cmp(&b.raw));
    Ok((files, bytes, out))
}

/// This node's items of `paths` as its snapshot `name` saw them.
fn at_manifest(
    rep: &Replicator,
    d: usize,
    name: &str,
    paths: &[PathBuf],
) -> Result<BTreeMap<PathBuf, Item>, SessionError> {
    let dir = &rep.dirs()[d];
    let snaps = dir
        .snaps
        .clone()
        .ok_or_else(|| SessionError::Manifest(std::io::Error::other("no snapshot store")))?;
    let mut out = BTreeMap::new();
    for p in paths {
        let it = snaps
            .item_at(name, d as u32, dir.root.as_fd(), p)
            .map_err(|e| SessionError::Manifest(std::io::Error::other(e.to_string())))?;
        if let Some(it) = it {
            out.insert(p.clone(), it);
        }
    }
    Ok(out)
}

/// Leaves out what the module's `exclude` patterns keep from replication,
/// on either side: neither compared, nor shipped, nor removed.
fn replicated_only(rep: &Replicator, items: &mut BTreeMap<PathBuf, Item>) {
    items.retain(|_, it| replicated(rep, it));
}

/// Whether `it` is replicated (not kept from it by the module's `exclude`).
fn replicated(rep: &Replicator, it: &Item) -> bool {
    rep.exclusions()
        .is_none_or(|ex| !ex.excluded(&it.path, it.entry.kind == EntryKind::Dir))
}

/// Records every difference in the change log so the next resync ships it:
/// names present here are reconciled (their contents marked where they
/// differ), names only on the peer are removed there.
pub fn mark(rep: &Replicator, diffs: &[Difference]) -> Result<(), ChangeLogError> {
    for (d, dir) in rep.dirs().iter().enumerate() {
        let log = &dir.log;
        let mut marks = Vec::new();
        let mut names = Vec::new();
        for diff in diffs.iter().filter(|x| x.dir as usize == d) {
            let path = PathBuf::from(std::ffi::OsStr::from_bytes(&diff.raw));
            if diff.what.iter().any(|w| w == "only on the peer") {
                names.push(NsChange::Unlink { path });
                continue;
            }
            if !diff.ranges.is_empty() {
                let id = log.ensure(&path)?;
                marks.extend(diff.ranges.iter().map(|(s, e)| (id, *s, e - s)));
            }
            names.push(NsChange::SetAttr { path });
        }
        // One durable write each, however many differences.
        log.mark_many(&marks)?;
        log.log_ns_many(names)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(offset: u64, len: u32, h: u8) -> ChunkSum {
        ChunkSum {
            offset,
            len,
            hash: [h; 32],
        }
    }

    #[test]
    fn content_ranges_merge_adjacent_missing_chunks() {
        let ours = [c(0, 10, 1), c(10, 10, 2), c(20, 10, 3), c(30, 10, 4)];
        let theirs = [c(0, 10, 1), c(10, 10, 9), c(20, 10, 8), c(30, 10, 4)];
        assert_eq!(content_ranges(&ours, &theirs), vec![(10, 30)]);
        assert_eq!(content_ranges(&ours, &ours), vec![]);
        // A chunk at another offset is not the same chunk.
        assert_eq!(
            content_ranges(&[c(0, 10, 1)], &[c(5, 10, 1)]),
            vec![(0, 10)]
        );
    }
}
