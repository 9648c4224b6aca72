//! A full sync's compare: this node's tree against the peer's manifest by
//! content, every difference recorded in the change log as it is found, so
//! that the resync that follows ships it.
//!
//! Both trees come as ordered streams (see [`super::merge`]) and the differences go
//! to the change log a batch at a time: what the compare holds does not grow
//! with the tree, which matters for the first sync of ten million files to an
//! empty peer. This node's scan hashes nothing itself; a file is hashed once
//! the peer's manifest shows it has one of that name too (one the peer lacks
//! is shipped whole anyway), by a thread that holds the chunk cache while the
//! merge goes on.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc;

use super::manifest::{self, Item, ScanProgress};
use super::{EntryKind, Remote, Replicator, SessionError, compare_one, mark};
use crate::replication::status::{Difference, VerifyState};

/// Files hashed at a time (the hasher works on one batch while the merge
/// gathers the next).
const HASH_BATCH: usize = 256;
/// Differences recorded in the change log at a time (one durable write).
const MARK_BATCH: usize = 4096;

/// What a full sync's compare found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FullSyncReport {
    pub files: u64,
    /// Differences recorded in the change log.
    pub differences: u64,
    pub bytes_hashed: u64,
}

/// Compares every directory of the module with the peer by content and
/// records each difference in the change log (see [`mark`]). A compare cut
/// short leaves what it recorded: each was a difference when it was found,
/// and the next resync ships it.
pub async fn run(
    link: &super::Connector,
    rep: &Arc<Replicator>,
    state: &parking_lot::Mutex<VerifyState>,
) -> Result<FullSyncReport, SessionError> {
    let mut remote = super::connect(link, rep).await?;
    let mut report = FullSyncReport::default();
    for d in 0..rep.dirs().len() {
        state.lock().phase = format!("full sync: comparing directory {}", d + 1);
        // The names scanned, and the files hashed (looked up again).
        let (scanned, hashed) = (Arc::default(), Arc::default());
        let ticker = async {
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                show(&mut state.lock(), &scanned, &hashed);
            }
        };
        let (files, differences) = tokio::select! {
            r = compare_dir(&mut remote, rep, d, scanned.clone(), hashed.clone()) => r?,
            _ = ticker => unreachable!(),
        };
        show(&mut state.lock(), &scanned, &hashed);
        report.files += files;
        report.differences += differences;
        report.bytes_hashed += hashed.bytes_hashed.load(Ordering::Relaxed);
    }
    crate::fs::sys::give_back_memory();
    Ok(report)
}

fn show(s: &mut VerifyState, scanned: &ScanProgress, hashed: &ScanProgress) {
    s.files = scanned.files.load(Ordering::Relaxed);
    s.bytes_hashed = hashed.bytes_hashed.load(Ordering::Relaxed);
    s.bytes_cached = hashed.bytes_cached.load(Ordering::Relaxed);
}

/// Directory `d`: how many names this node has, and how many differences
/// were recorded.
async fn compare_dir<R, W>(
    remote: &mut Remote<R, W>,
    rep: &Arc<Replicator>,
    d: usize,
    scanned: Arc<ScanProgress>,
    hashed: Arc<ScanProgress>,
) -> Result<(u64, u64), SessionError>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let dir = d as u32;
    // This node's scan hashes nothing: the hasher does, for names the peer
    // has as files too.
    let mut streams = super::Streams::start(remote, rep, d, false, scanned).await?;
    let mut hasher = Hasher::start(rep.clone(), d, hashed);
    let mut found = Found::new(rep.clone());
    let mut files = 0;
    while let Some((a, b)) = streams.next().await? {
        if a.is_some() {
            files += 1;
        }
        match (a, b) {
            (Some(a), Some(b))
                if a.entry.kind == EntryKind::File && b.entry.kind == EntryKind::File =>
            {
                for (a, b) in hasher.push(b).await? {
                    found.compare(dir, a.as_ref(), Some(&b));
                }
            }
            (a, b) => found.compare(dir, a.as_ref(), b.as_ref()),
        }
        found.record_if_full().await?;
    }
    for (a, b) in hasher.finish().await? {
        found.compare(dir, a.as_ref(), Some(&b));
    }
    found.record().await?;
    Ok((files, found.count))
}

/// Hashes this node's copy of the files the peer has too, a batch at a time,
/// on a thread of its own that holds the directory's chunk cache.
struct Hasher {
    jobs: Option<mpsc::Sender<Vec<PathBuf>>>,
    done: mpsc::Receiver<std::io::Result<Vec<Option<Item>>>>,
    thread: Option<tokio::task::JoinHandle<()>>,
    /// The peer's items of the batch being hashed.
    flight: Option<Vec<Item>>,
    /// The peer's items of the batch being gathered.
    gathering: Vec<Item>,
}

/// This node's item (`None`: gone meanwhile) and the peer's.
type Pair = (Option<Item>, Item);

impl Hasher {
    fn start(rep: Arc<Replicator>, d: usize, progress: Arc<ScanProgress>) -> Self {
        let (jobs, mut queue) = mpsc::channel::<Vec<PathBuf>>(1);
        let (reply, done) = mpsc::channel(1);
        let thread = tokio::task::spawn_blocking(move || {
            let dir = &rep.dirs()[d];
            let mut cache = dir.cache.lock();
            // Not every file is hashed: what is not stays in the cache.
            let cached = cache.begin(false);
            let mut well = true;
            while let Some(paths) = queue.blocking_recv() {
                let r =
                    manifest::items(dir.root.as_fd(), &paths, &manifest::all, &cached, &progress);
                well = r.is_ok();
                if reply.blocking_send(r).is_err() || !well {
                    break;
                }
            }
            cached.finish(well);
        });
        Self {
            jobs: Some(jobs),
            done,
            thread: Some(thread),
            flight: None,
            gathering: Vec::new(),
        }
    }

    /// Takes the peer's item of a file both nodes have; returns the pairs
    /// of a batch hashed meanwhile, if one was.
    async fn push(&mut self, theirs: Item) -> Result<Vec<Pair>, SessionError> {
        self.gathering.push(theirs);
        if self.gathering.len() < HASH_BATCH {
            return Ok(Vec::new());
        }
        let done = self.land().await?;
        self.launch().await?;
        Ok(done)
    }

    /// Every pair not yet returned; the thread ends.
    async fn finish(mut self) -> Result<Vec<Pair>, SessionError> {
        let mut done = self.land().await?;
        self.launch().await?;
        done.extend(self.land().await?);
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            thread.await.map_err(|e| SessionError::Task {
                what: "the full sync's hasher",
                why: e.to_string(),
            })?;
        }
        Ok(done)
    }

    /// Sends the batch gathered to the thread.
    async fn launch(&mut self) -> Result<(), SessionError> {
        if self.gathering.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.gathering);
        let paths = batch.iter().map(|it| it.path.clone()).collect();
        let jobs = self.jobs.as_ref().ok_or_else(gone)?;
        jobs.send(paths).await.map_err(|_| gone())?;
        self.flight = Some(batch);
        Ok(())
    }

    /// Waits for the batch in flight, if any.
    async fn land(&mut self) -> Result<Vec<Pair>, SessionError> {
        let Some(theirs) = self.flight.take() else {
            return Ok(Vec::new());
        };
        let ours = self
            .done
            .recv()
            .await
            .ok_or_else(gone)?
            .map_err(SessionError::Manifest)?;
        Ok(ours.into_iter().zip(theirs).collect())
    }
}

fn gone() -> SessionError {
    SessionError::Manifest(std::io::Error::other("the full sync's hasher ended"))
}

/// Differences found and not yet recorded.
struct Found {
    rep: Arc<Replicator>,
    pending: Vec<Difference>,
    count: u64,
}

impl Found {
    fn new(rep: Arc<Replicator>) -> Self {
        Self {
            rep,
            pending: Vec::new(),
            count: 0,
        }
    }

    /// Compares the two items of one name (`None`: not there).
    fn compare(&mut self, dir: u32, ours: Option<&Item>, theirs: Option<&Item>) {
        let Some(it) = ours.or(theirs) else { return };
        if let Some(diff) = compare_one(dir, &it.path, ours, theirs) {
            self.pending.push(diff);
        }
    }

    async fn record_if_full(&mut self) -> Result<(), SessionError> {
        if self.pending.len() >= MARK_BATCH {
            self.record().await?;
        }
        Ok(())
    }

    /// Writes what was found to the change log (one durable write).
    async fn record(&mut self) -> Result<(), SessionError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let (rep, diffs) = (self.rep.clone(), std::mem::take(&mut self.pending));
        let n = diffs.len() as u64;
        tokio::task::spawn_blocking(move || mark(&rep, &diffs))
            .await
            .map_err(|e| SessionError::Task {
                what: "recording a full sync's differences",
                why: e.to_string(),
            })??;
        self.count += n;
        Ok(())
    }
}
