//! The kept bytes of files, appended to one file per epoch (`kept/E` in the
//! store's directory); the store's index holds where each run is.
//!
//! Kept in the index itself, every byte was written twice (its log, then a
//! table when the memtable is flushed) and copied twice more on the way:
//! an overwrite-heavy application paid for all four. Here it is written
//! once. Captures are only ever deleted by whole epochs (those no snapshot
//! needs any more), so deleting is removing files.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

pub struct Data {
    dir: PathBuf,
    /// The file being appended to: its epoch, the file and its end.
    tail: Mutex<Option<(u64, Arc<File>, u64)>>,
    /// Files open for reading.
    readers: Mutex<HashMap<u64, Arc<File>>>,
    /// Epochs written to since the last sync.
    unsynced: Mutex<HashSet<u64>>,
}

impl Data {
    pub fn open(store: &Path) -> std::io::Result<Self> {
        let dir = store.join("kept");
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            dir,
            tail: Mutex::new(None),
            readers: Mutex::new(HashMap::new()),
            unsynced: Mutex::new(HashSet::new()),
        })
    }

    fn path(&self, epoch: u64) -> PathBuf {
        self.dir.join(epoch.to_string())
    }

    /// Appends `bytes` to epoch `epoch`'s file: where they went.
    pub fn append(&self, epoch: u64, bytes: &[u8]) -> std::io::Result<u64> {
        let mut tail = self.tail.lock();
        if tail.as_ref().is_none_or(|(e, _, _)| *e != epoch) {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(false)
                .open(self.path(epoch))?;
            // Bytes of a capture whose index entry a crash lost stay there
            // unread: the end is the file's, not the index's.
            let end = f.metadata()?.len();
            *tail = Some((epoch, Arc::new(f), end));
        }
        let (_, f, end) = tail.as_mut().expect("just set");
        let at = *end;
        f.write_all_at(bytes, at)?;
        *end += bytes.len() as u64;
        self.unsynced.lock().insert(epoch);
        Ok(at)
    }

    /// `len` bytes at `off` of epoch `epoch`'s file.
    pub fn read(&self, epoch: u64, off: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let f = {
            let mut readers = self.readers.lock();
            match readers.get(&epoch) {
                Some(f) => f.clone(),
                None => {
                    let f = Arc::new(File::open(self.path(epoch))?);
                    readers.insert(epoch, f.clone());
                    f
                }
            }
        };
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, off)?;
        Ok(buf)
    }

    /// Makes what was appended durable.
    pub fn sync(&self) -> std::io::Result<()> {
        let epochs: Vec<u64> = self.unsynced.lock().drain().collect();
        for (i, e) in epochs.iter().enumerate() {
            let r = match File::open(self.path(*e)) {
                Ok(f) => f.sync_data(),
                // Deleted meanwhile: nothing to make durable.
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(err) => Err(err),
            };
            if let Err(err) = r {
                self.unsynced.lock().extend(&epochs[i..]);
                return Err(err);
            }
        }
        Ok(())
    }

    /// Makes every file durable, whoever wrote it (a daemon before this
    /// one, replaced in place, whose writes may still be in the cache).
    pub fn sync_all(&self) -> std::io::Result<()> {
        for entry in std::fs::read_dir(&self.dir)? {
            File::open(entry?.path())?.sync_data()?;
        }
        self.unsynced.lock().clear();
        Ok(())
    }

    /// Removes the files of epochs `[from, until)`: no snapshot needs them.
    pub fn remove(&self, from: u64, until: u64) -> std::io::Result<()> {
        let inside = |e: u64| e >= from && e < until;
        let mut tail = self.tail.lock();
        if tail.as_ref().is_some_and(|(e, _, _)| inside(*e)) {
            *tail = None;
        }
        drop(tail);
        self.readers.lock().retain(|e, _| !inside(*e));
        self.unsynced.lock().retain(|e| !inside(*e));
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let Some(e) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            if inside(e) {
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    }

    /// Bytes the files take.
    #[cfg(test)]
    pub fn bytes(&self) -> u64 {
        std::fs::read_dir(&self.dir)
            .map(|it| {
                it.flatten()
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appended_runs_read_back_and_go_by_epoch() {
        let t = tempfile::tempdir().unwrap();
        let d = Data::open(t.path()).unwrap();
        assert_eq!(d.append(3, b"hello").unwrap(), 0);
        assert_eq!(d.append(3, b"world").unwrap(), 5);
        assert_eq!(d.append(4, b"!").unwrap(), 0);
        assert_eq!(d.read(3, 5, 5).unwrap(), b"world");
        assert_eq!(d.read(4, 0, 1).unwrap(), b"!");
        assert!(d.read(3, 8, 5).is_err(), "past the end");
        d.sync().unwrap();
        // Reopened (a restart): appends go on at the end.
        let d = Data::open(t.path()).unwrap();
        assert_eq!(d.append(3, b"again").unwrap(), 10);
        d.remove(3, 4).unwrap();
        assert!(d.read(3, 0, 5).is_err());
        assert_eq!(d.read(4, 0, 1).unwrap(), b"!");
        assert_eq!(d.bytes(), 1);
        assert_eq!(
            d.append(3, b"new").unwrap(),
            0,
            "a removed epoch starts empty"
        );
        d.remove(0, u64::MAX).unwrap();
        assert_eq!(d.bytes(), 0);
    }
}
