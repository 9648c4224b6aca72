//! One behavioural suite run against both implementations, plus RocksDB-only
//! persistence and crash tests.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::ops::Range;
use std::path::Path;
use std::process::{Command, Stdio};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

fn p(s: &str) -> &Path {
    Path::new(s)
}

// ---------------------------------------------------------------- the suite

fn suite_ids(log: &dyn ChangeLog) {
    assert_eq!(log.resolve(p("")).unwrap(), Some(ROOT_ID));
    assert_eq!(log.path_of(ROOT_ID).unwrap(), Some("".into()));
    assert_eq!(log.resolve(p("a/b/c")).unwrap(), None);
    let c = log.ensure(p("a/b/c")).unwrap();
    let a = log.resolve(p("a")).unwrap().unwrap();
    let b = log.resolve(p("a/b")).unwrap().unwrap();
    assert!(a != b && b != c && a != ROOT_ID);
    assert_eq!(log.ensure(p("a/b/c")).unwrap(), c);
    assert_eq!(log.ensure(p("./a/b/c")).unwrap(), c);
    assert_eq!(log.path_of(c).unwrap(), Some("a/b/c".into()));
    assert!(matches!(
        log.ensure(p("/abs")),
        Err(ChangeLogError::InvalidPath(_))
    ));
    assert!(matches!(
        log.resolve(p("a/../b")),
        Err(ChangeLogError::InvalidPath(_))
    ));

    // Renaming a grandparent changes the grandchild's path, not its id.
    assert_eq!(log.rename(p("a"), p("x/y")).unwrap(), Some(a));
    assert_eq!(log.resolve(p("x/y/b/c")).unwrap(), Some(c));
    assert_eq!(log.path_of(c).unwrap(), Some("x/y/b/c".into()));
    assert_eq!(log.path_of(b).unwrap(), Some("x/y/b".into()));
    assert_eq!(log.resolve(p("a")).unwrap(), None);
    assert_eq!(log.resolve(p("a/b/c")).unwrap(), None);
    // A new "a" is a new file.
    let a2 = log.ensure(p("a")).unwrap();
    assert!(a2 != a);

    // A directory cannot move below itself; the root cannot move.
    assert!(matches!(
        log.rename(p("x/y"), p("x/y/b/z")),
        Err(ChangeLogError::InvalidRename { .. })
    ));
    assert_eq!(log.path_of(c).unwrap(), Some("x/y/b/c".into()));
    assert!(log.rename(p(""), p("q")).is_err());
    // Renaming onto itself is a no-op.
    assert_eq!(log.rename(p("x/y/b"), p("x/y/b")).unwrap(), Some(b));
    assert_eq!(log.path_of(c).unwrap(), Some("x/y/b/c".into()));
}

fn suite_rename_over_target(log: &dyn ChangeLog) {
    let src = log.ensure(p("d/src")).unwrap();
    let dst = log.ensure(p("e/dst")).unwrap();
    log.mark(src, 10, 5).unwrap();
    log.mark(dst, 0, 100).unwrap();
    assert_eq!(log.rename(p("d/src"), p("e/dst")).unwrap(), Some(src));
    assert_eq!(log.resolve(p("e/dst")).unwrap(), Some(src));
    assert_eq!(log.resolve(p("d/src")).unwrap(), None);
    assert_eq!(
        log.path_of(dst).unwrap(),
        None,
        "replaced target's id is dropped"
    );
    assert_eq!(log.dirty(dst).unwrap(), Vec::<Range<u64>>::new());
    assert_eq!(
        log.dirty(src).unwrap(),
        vec![10..15],
        "moved file keeps its dirty data"
    );
    assert_eq!(log.dirty_files().unwrap(), vec![src]);

    // Rename of an unknown name over a known one still drops the target.
    let t = log.ensure(p("t")).unwrap();
    assert_eq!(log.rename(p("unknown"), p("t")).unwrap(), None);
    assert_eq!(log.resolve(p("t")).unwrap(), None);
    assert_eq!(log.path_of(t).unwrap(), None);

    // Exchange swaps names and keeps ids.
    let f = log.ensure(p("f")).unwrap();
    let g = log.ensure(p("dir/g")).unwrap();
    log.exchange(p("f"), p("dir/g")).unwrap();
    assert_eq!(log.resolve(p("f")).unwrap(), Some(g));
    assert_eq!(log.resolve(p("dir/g")).unwrap(), Some(f));
    assert_eq!(log.path_of(f).unwrap(), Some("dir/g".into()));

    // Remove drops the name, the id and its dirty data.
    log.mark(f, 0, 1).unwrap();
    log.truncate(f, 0).unwrap();
    assert_eq!(log.remove(p("dir/g")).unwrap(), Some(f));
    assert_eq!(log.remove(p("dir/g")).unwrap(), None);
    assert_eq!(log.path_of(f).unwrap(), None);
    assert_eq!(log.dirty_size(f).unwrap(), None);
    assert!(!log.dirty_files().unwrap().contains(&f));
    // Descendants of a removed directory become unreachable.
    let deep = log.ensure(p("gone/deep")).unwrap();
    log.remove(p("gone")).unwrap();
    assert_eq!(log.path_of(deep).unwrap(), None);
    assert_eq!(log.resolve(p("gone/deep")).unwrap(), None);
    log.clear(src, 0..u64::MAX).unwrap();
    assert!(log.dirty_files().unwrap().is_empty());
}

fn suite_mark_merge_clear(log: &dyn ChangeLog) {
    let cs = log.chunk_size();
    let id = log.ensure(p("m")).unwrap();
    log.mark(id, 0, 0).unwrap();
    assert!(log.dirty_files().unwrap().is_empty());
    log.mark(id, 100, 50).unwrap();
    log.mark(id, 300, 10).unwrap();
    log.mark(id, 140, 20).unwrap(); // overlaps the first
    log.mark(id, 160, 10).unwrap(); // adjacent to it
    assert_eq!(log.dirty(id).unwrap(), vec![100..170, 300..310]);
    assert_eq!(log.dirty_bytes().unwrap(), 80);

    // Across a chunk boundary: one merged range, two chunks.
    log.mark(id, cs - 10, 30).unwrap();
    log.mark(id, 3 * cs - 5, 2 * cs + 10).unwrap();
    assert_eq!(
        log.dirty(id).unwrap(),
        vec![100..170, 300..310, cs - 10..cs + 20, 3 * cs - 5..5 * cs + 5]
    );
    assert_eq!(log.dirty_bytes().unwrap(), 80 + 30 + 2 * cs + 10);

    // Clear exactly a range that spans a boundary and splits intervals.
    log.clear(id, cs - 5..cs + 5).unwrap();
    log.clear(id, 120..130).unwrap();
    log.clear(id, 4 * cs..4 * cs + 1).unwrap();
    assert_eq!(
        log.dirty(id).unwrap(),
        vec![
            100..120,
            130..170,
            300..310,
            cs - 10..cs - 5,
            cs + 5..cs + 20,
            3 * cs - 5..4 * cs,
            4 * cs + 1..5 * cs + 5
        ]
    );
    // Clearing what is not dirty changes nothing.
    log.clear(id, 1000..1100).unwrap();
    log.clear(id + 1000, 0..10).unwrap();
    log.clear(id, 0..u64::MAX).unwrap();
    assert!(log.dirty(id).unwrap().is_empty());
    assert_eq!(log.dirty_bytes().unwrap(), 0);
    assert!(log.dirty_files().unwrap().is_empty());

    // Far offsets and overflow.
    log.mark(id, u64::MAX - 10, 10).unwrap();
    assert_eq!(log.dirty(id).unwrap(), vec![u64::MAX - 10..u64::MAX]);
    assert!(matches!(
        log.mark(id, u64::MAX - 10, 11),
        Err(ChangeLogError::InvalidRange { .. })
    ));
    log.clear(id, 0..u64::MAX).unwrap();

    let other = log.ensure(p("n")).unwrap();
    log.mark(other, 5, 5).unwrap();
    log.mark(id, 5, 5).unwrap();
    let mut want = vec![id, other];
    want.sort();
    assert_eq!(log.dirty_files().unwrap(), want);
    log.clear(id, 0..10).unwrap();
    log.clear(other, 0..10).unwrap();
}

fn suite_clear_many(log: &dyn ChangeLog) {
    let cs = log.chunk_size();
    let (a, b) = (log.ensure(p("ca")).unwrap(), log.ensure(p("cb")).unwrap());
    for id in [a, b] {
        log.mark(id, 0, 3 * cs).unwrap();
    }
    log.mark(a, 10 * cs, 10).unwrap();
    // A resync's pieces, cleared together: some in the same chunk, one
    // across a boundary, one of a file not dirty there.
    log.clear_many(&[
        (a, 0..100),
        (a, 200..300),
        (b, cs - 10..cs + 10),
        (a, 100..150),
        (b, 5 * cs..6 * cs),
        (a, 10 * cs..10 * cs + 10),
    ])
    .unwrap();
    assert_eq!(log.dirty(a).unwrap(), vec![150..200, 300..3 * cs]);
    assert_eq!(log.dirty(b).unwrap(), vec![0..cs - 10, cs + 10..3 * cs]);
    log.clear_many(&[]).unwrap();
    log.clear_many(&[(a, 0..u64::MAX), (b, 0..u64::MAX)])
        .unwrap();
    assert!(log.dirty_files().unwrap().is_empty());
}

/// Random marks and clears against a naive byte-set model.
fn suite_random_vs_model(log: &dyn ChangeLog, seed: u64) {
    let cs = log.chunk_size();
    let size = (5 * cs + 123) as usize;
    let mut rng = StdRng::seed_from_u64(seed);
    let ids: Vec<FileId> = (0..3)
        .map(|i| log.ensure(Path::new(&format!("rand/{i}"))).unwrap())
        .collect();
    let mut model: BTreeMap<FileId, Vec<bool>> =
        ids.iter().map(|&i| (i, vec![false; size])).collect();
    for step in 0..600 {
        let id = ids[rng.random_range(0..ids.len())];
        let off = rng.random_range(0..size as u64);
        let max = (size as u64 - off).min(if rng.random_bool(0.2) { 3 * cs } else { 700 });
        let len = rng.random_range(0..=max);
        let bytes = model.get_mut(&id).unwrap();
        match rng.random_range(0..10) {
            0..=6 => {
                log.mark(id, off, len).unwrap();
                bytes[off as usize..(off + len) as usize].fill(true);
            }
            7 | 8 => {
                log.clear(id, off..off + len).unwrap();
                bytes[off as usize..(off + len) as usize].fill(false);
            }
            _ => {
                log.truncate(id, off).unwrap();
                bytes[off as usize..].fill(false);
            }
        }
        if step % 50 == 0 || step == 599 {
            let mut total = 0;
            for (&id, bytes) in &model {
                let mut want = Vec::new();
                let mut i = 0;
                while i < bytes.len() {
                    if bytes[i] {
                        let s = i;
                        while i < bytes.len() && bytes[i] {
                            i += 1;
                        }
                        want.push(s as u64..i as u64);
                        total += (i - s) as u64;
                    }
                    i += 1;
                }
                assert_eq!(
                    log.dirty(id).unwrap(),
                    want,
                    "seed {seed} step {step} id {id}"
                );
            }
            assert_eq!(log.dirty_bytes().unwrap(), total, "seed {seed} step {step}");
        }
    }
    for &id in &ids {
        log.remove(&log.path_of(id).unwrap().unwrap()).unwrap();
    }
    assert_eq!(log.dirty_bytes().unwrap(), 0);
}

fn suite_truncate(log: &dyn ChangeLog) {
    let cs = log.chunk_size();
    let id = log.ensure(p("tr")).unwrap();
    assert_eq!(log.dirty_size(id).unwrap(), None);
    log.mark(id, 10, 20).unwrap();
    log.mark(id, cs - 10, 20).unwrap();
    log.mark(id, 3 * cs, cs).unwrap();
    log.truncate(id, cs + 5).unwrap();
    assert_eq!(log.dirty(id).unwrap(), vec![10..30, cs - 10..cs + 5]);
    assert_eq!(log.dirty_size(id).unwrap(), Some(cs + 5));
    // Growing keeps the smallest length: bytes past it may differ.
    log.truncate(id, 10 * cs).unwrap();
    assert_eq!(log.dirty_size(id).unwrap(), Some(cs + 5));
    log.truncate(id, 20).unwrap();
    assert_eq!(log.dirty(id).unwrap(), vec![10..20]);
    assert_eq!(log.dirty_size(id).unwrap(), Some(20));
    // Truncation to a chunk boundary.
    log.mark(id, 0, 2 * cs).unwrap();
    log.truncate(id, cs).unwrap();
    assert_eq!(log.dirty(id).unwrap(), vec![0..cs]);
    log.clear(id, 0..cs).unwrap();
    // A size change alone makes a file dirty.
    assert_eq!(log.dirty_files().unwrap(), vec![id]);
    assert_eq!(log.dirty_bytes().unwrap(), 0);
    log.clear_size(id).unwrap();
    assert_eq!(log.dirty_size(id).unwrap(), None);
    assert!(log.dirty_files().unwrap().is_empty());
}

fn suite_ns_log(log: &dyn ChangeLog) {
    assert!(log.ns_since(0).unwrap().is_empty());
    let changes = [
        NsChange::Mkdir { path: "d".into() },
        NsChange::Create { path: "d/f".into() },
        NsChange::Link {
            existing: "d/f".into(),
            path: "d/g".into(),
        },
        NsChange::Rename {
            from: "d/g".into(),
            to: "h".into(),
            exchange: false,
        },
        NsChange::SetXattr {
            path: "h".into(),
            name: b"user.x".to_vec(),
        },
        NsChange::Symlink {
            path: "s".into(),
            target: "../nowhere".into(),
        },
    ];
    let seqs: Vec<u64> = changes
        .iter()
        .map(|c| log.log_ns(c.clone()).unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let all = log.ns_since(0).unwrap();
    assert_eq!(
        all,
        seqs.iter()
            .copied()
            .zip(changes.iter().cloned())
            .collect::<Vec<_>>()
    );
    assert_eq!(log.ns_since(seqs[3]).unwrap(), all[4..].to_vec());
    log.clear_ns_upto(seqs[2]).unwrap();
    assert_eq!(log.ns_since(0).unwrap(), all[3..].to_vec());
    log.clear_ns_upto(seqs[5]).unwrap();
    assert!(log.ns_since(0).unwrap().is_empty());
    // Sequence numbers keep growing after clearing everything.
    let next = log.log_ns(NsChange::Unlink { path: "h".into() }).unwrap();
    assert!(next > seqs[5]);
    assert_eq!(
        log.ns_since(0).unwrap(),
        vec![(next, NsChange::Unlink { path: "h".into() })]
    );
    log.clear_ns_upto(next).unwrap();
}

fn suite_ns_sent(log: &dyn ChangeLog) {
    // A new log (or one whose link was up when it stopped) counts every
    // change as possibly sent.
    assert_eq!(log.ns_sent_upto().unwrap(), u64::MAX);
    let a = log.log_ns(NsChange::Mkdir { path: "x".into() }).unwrap();
    log.ns_sending(false).unwrap();
    assert_eq!(log.ns_sent_upto().unwrap(), a);
    // Logged while alone: not sent; closing again changes nothing.
    let b = log.log_ns(NsChange::Rmdir { path: "x".into() }).unwrap();
    log.ns_sending(false).unwrap();
    assert_eq!(log.ns_sent_upto().unwrap(), a);
    log.ns_sending(true).unwrap();
    assert_eq!(log.ns_sent_upto().unwrap(), u64::MAX);
    log.ns_sending(false).unwrap();
    assert_eq!(log.ns_sent_upto().unwrap(), b);
    log.clear_ns_upto(b).unwrap();
}

fn suite_generation(log: &dyn ChangeLog) {
    let g0 = log.generation().unwrap();
    assert_ne!(g0.current, 0);
    assert_eq!(log.generation().unwrap(), g0);
    let g1 = log.new_generation().unwrap();
    assert_ne!(g1.current, g0.current);
    assert_eq!(g1.history[0], g0.current);
    assert_eq!(&g1.history[1..], &g0.history[..]);
    assert_eq!(log.generation().unwrap(), g1);
    let mut seen = vec![g0.current, g1.current];
    for _ in 0..20 {
        seen.push(log.new_generation().unwrap().current);
    }
    let g = log.generation().unwrap();
    assert_eq!(g.history.len(), GENERATION_HISTORY);
    let mut want: Vec<u64> = seen[..seen.len() - 1].iter().rev().copied().collect();
    want.truncate(GENERATION_HISTORY);
    assert_eq!(g.history, want);
    // Adopting the peer's generation: its id and history first, ours after.
    let mine = log.generation().unwrap();
    let theirs = Generation {
        current: 77,
        history: vec![55, mine.history[0]],
    };
    log.adopt_generation(&theirs).unwrap();
    let g = log.generation().unwrap();
    assert_eq!(g.current, 77);
    assert_eq!(&g.history[..3], &[55, mine.history[0], mine.current]);
    assert_eq!(g.history.len(), GENERATION_HISTORY);
    assert_eq!(
        g.history.iter().filter(|&&x| x == mine.history[0]).count(),
        1
    );
}

fn suite_compare_needed(log: &dyn ChangeLog) {
    assert!(
        !log.compare_needed().unwrap(),
        "a new log needs no comparison"
    );
    log.set_compare_needed(true).unwrap();
    assert!(log.compare_needed().unwrap());
    log.set_compare_needed(false).unwrap();
    assert!(!log.compare_needed().unwrap());
}

fn run_suite(log: &dyn ChangeLog) {
    suite_ids(log);
    suite_rename_over_target(log);
    suite_mark_merge_clear(log);
    suite_clear_many(log);
    suite_random_vs_model(log, 1);
    suite_random_vs_model(log, 2);
    suite_truncate(log);
    suite_ns_sent(log);
    suite_compare_needed(log);
    suite_ns_log(log);
    suite_generation(log);
    log.flush().unwrap();
}

// ------------------------------------------------------ the instantiations

#[test]
fn mem_suite_default_chunks() {
    run_suite(&MemChangeLog::new(DEFAULT_CHUNK_SIZE).unwrap());
}

#[test]
fn mem_suite_small_chunks() {
    run_suite(&MemChangeLog::new(4096).unwrap());
}

#[test]
fn rocks_suite_default_chunks() {
    let dir = tempfile::tempdir().unwrap();
    run_suite(&RocksChangeLog::open(dir.path(), DEFAULT_CHUNK_SIZE).unwrap());
}

#[test]
fn rocks_suite_small_chunks() {
    let dir = tempfile::tempdir().unwrap();
    run_suite(&RocksChangeLog::open(dir.path(), 512).unwrap());
}

#[test]
fn bad_chunk_sizes() {
    assert!(MemChangeLog::new(3000).is_err());
    assert!(MemChangeLog::new(1 << 32).is_err());
    let dir = tempfile::tempdir().unwrap();
    assert!(RocksChangeLog::open(dir.path(), 0).is_err());
    drop(RocksChangeLog::open(dir.path(), 4096).unwrap());
    assert!(matches!(
        RocksChangeLog::open(dir.path(), 8192),
        Err(ChangeLogError::ChunkSizeMismatch {
            stored: 4096,
            requested: 8192
        })
    ));
}

#[test]
fn rocks_reopen_keeps_everything_exact() {
    let dir = tempfile::tempdir().unwrap();
    let (c, d, gen_, seq);
    {
        let log = RocksChangeLog::open(dir.path(), 4096).unwrap();
        c = log.ensure(p("a/b/c")).unwrap();
        d = log.ensure(p("a/d")).unwrap();
        log.rename(p("a"), p("z")).unwrap();
        log.mark(c, 10, 5000).unwrap();
        log.mark(c, 9000, 1).unwrap();
        log.mark(d, 3, 4).unwrap();
        // One write for all three; the chunk at 20000 is cleared twice in
        // it, and its second state (empty) is the one that stands.
        log.mark(c, 20000, 100).unwrap();
        log.clear_many(&[(c, 20000..20050), (d, 3..7), (c, 20050..20100)])
            .unwrap();
        log.truncate(d, 77).unwrap();
        seq = log.log_ns(NsChange::Mkdir { path: "z".into() }).unwrap();
        log.ns_sending(false).unwrap();
        log.set_compare_needed(true).unwrap();
        gen_ = log.new_generation().unwrap();
    } // drop = clean close (flush)
    let log = RocksChangeLog::open(dir.path(), 4096).unwrap();
    assert_eq!(log.path_of(c).unwrap(), Some("z/b/c".into()));
    assert_eq!(log.resolve(p("z/d")).unwrap(), Some(d));
    assert_eq!(log.dirty(c).unwrap(), vec![10..5010, 9000..9001]);
    assert_eq!(log.dirty(d).unwrap(), vec![]);
    assert_eq!(log.dirty_size(d).unwrap(), Some(77));
    assert_eq!(log.dirty_files().unwrap(), vec![c, d]);
    assert_eq!(log.generation().unwrap(), gen_);
    assert_eq!(log.ns_sent_upto().unwrap(), seq);
    assert!(log.compare_needed().unwrap());
    assert_eq!(
        log.ns_since(0).unwrap(),
        vec![(seq, NsChange::Mkdir { path: "z".into() })]
    );
    assert!(log.log_ns(NsChange::Rmdir { path: "z".into() }).unwrap() > seq);
    // New ids never collide with old ones.
    let e = log.ensure(p("e")).unwrap();
    assert!(e > c && e > d);
}

// ------------------------------------------------------------- crash test

const CRASH_ENV: &str = "TANDEM_CHANGELOG_CRASH_CHILD";
const CRASH_CHUNK: u64 = 4096;
const CRASH_FILE_LEN: u64 = 16 * CRASH_CHUNK;
const CRASH_FILES: usize = 4;

/// The child half of `rocks_crash_keeps_marks`: does nothing unless the
/// environment says it is the child. Marks random ranges forever, reporting
/// each mark before it starts and after it returned.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CRASH_ENV) else {
        return;
    };
    let log = RocksChangeLog::open(Path::new(&dir), CRASH_CHUNK).unwrap();
    let ids: Vec<FileId> = (0..CRASH_FILES)
        .map(|i| log.ensure(Path::new(&format!("dir/f{i}"))).unwrap())
        .collect();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "ids {}",
        ids.iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    )
    .unwrap();
    let mut rng = StdRng::seed_from_u64(std::process::id().into());
    for n in 0u64.. {
        let i = rng.random_range(0..ids.len());
        let off = rng.random_range(0..CRASH_FILE_LEN);
        let len = rng.random_range(1..=(CRASH_FILE_LEN - off).min(300));
        writeln!(out, "marking {i} {off} {len}").unwrap();
        out.flush().unwrap();
        log.mark(ids[i], off, len).unwrap();
        writeln!(out, "marked {i} {off} {len}").unwrap();
        out.flush().unwrap();
        if n % 97 == 96 {
            writeln!(out, "flushing").unwrap();
            out.flush().unwrap();
            log.flush().unwrap();
            writeln!(out, "flushed").unwrap();
            out.flush().unwrap();
        }
    }
}

fn chunks_of(off: u64, len: u64) -> Range<u64> {
    off / CRASH_CHUNK..(off + len).div_ceil(CRASH_CHUNK)
}

fn covered(dirty: &[Range<u64>], r: &Range<u64>) -> bool {
    dirty.iter().any(|d| d.start <= r.start && r.end <= d.end)
}

#[test]
fn rocks_crash_keeps_marks() {
    for round in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "changelog::tests::crash_child", "--nocapture"])
            .env(CRASH_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let kill_after = 300 + round * 450;
        let mut log_lines = Vec::new();
        let mut marked = 0;
        while marked < kill_after {
            let l = lines.next().expect("child ended early").unwrap();
            marked += l.starts_with("marked ") as usize;
            log_lines.push(l);
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        log_lines.extend(lines.map_while(|l| l.ok()));

        let ids: Vec<FileId> = log_lines
            .iter()
            .find_map(|l| l.strip_prefix("ids "))
            .expect("ids line")
            .split(' ')
            .map(|s| s.parse().unwrap())
            .collect();
        // (file index, offset, len, done?, after the last flush?)
        let mut marks = Vec::new();
        let mut flushing_in_flight = false;
        for l in &log_lines {
            let parts: Vec<&str> = l.split(' ').collect();
            match parts[0] {
                "marking" | "marked" => {
                    let v: Vec<u64> = parts[1..].iter().map(|s| s.parse().unwrap()).collect();
                    if parts[0] == "marking" {
                        marks.push((v[0] as usize, v[1], v[2], false, true));
                    } else {
                        marks.last_mut().unwrap().3 = true;
                    }
                }
                "flushing" => flushing_in_flight = true,
                "flushed" => {
                    flushing_in_flight = false;
                    for m in &mut marks {
                        m.4 = false;
                    }
                }
                _ => {}
            }
        }

        let log = RocksChangeLog::open(dir.path(), CRASH_CHUNK).unwrap();
        for (i, &id) in ids.iter().enumerate() {
            assert_eq!(
                log.resolve(Path::new(&format!("dir/f{i}"))).unwrap(),
                Some(id)
            );
        }
        let dirty: Vec<Vec<Range<u64>>> = ids.iter().map(|&id| log.dirty(id).unwrap()).collect();
        // 1. Every mark that returned is covered.
        for &(i, off, len, done, _) in &marks {
            if done {
                assert!(
                    covered(&dirty[i], &(off..off + len)),
                    "round {round}: {off}+{len} of file {i} lost: {:?}",
                    dirty[i]
                );
            }
        }
        // 2. Nothing outside the chunks that were (being) marked is dirty.
        for (i, ranges) in dirty.iter().enumerate() {
            for r in ranges {
                for c in chunks_of(r.start, r.end - r.start) {
                    assert!(
                        marks
                            .iter()
                            .any(|m| m.0 == i && chunks_of(m.1, m.2).contains(&c)),
                        "round {round}: chunk {c} of file {i} dirty but never marked"
                    );
                }
            }
        }
        // 3. Chunks only marked before the last completed flush are exact;
        //    chunks marked after it are whole (widened at recovery).
        for (i, ranges) in dirty.iter().enumerate() {
            for c in 0..CRASH_FILE_LEN / CRASH_CHUNK {
                let touching: Vec<_> = marks
                    .iter()
                    .filter(|m| m.0 == i && chunks_of(m.1, m.2).contains(&c))
                    .collect();
                // A mark the child was killed in may or may not have happened:
                // nothing exact can be said about the chunks it touches.
                if touching.is_empty() || touching.iter().any(|m| !m.3) {
                    continue;
                }
                let chunk = c * CRASH_CHUNK..(c + 1) * CRASH_CHUNK;
                if touching.iter().any(|m| m.4) {
                    if !flushing_in_flight {
                        assert!(
                            covered(ranges, &chunk),
                            "round {round}: chunk {c} of file {i} not widened"
                        );
                    }
                } else {
                    let mut want = vec![false; CRASH_CHUNK as usize];
                    for m in &touching {
                        let s = m.1.max(chunk.start) - chunk.start;
                        let e = (m.1 + m.2).min(chunk.end) - chunk.start;
                        want[s as usize..e as usize].fill(true);
                    }
                    for (b, &w) in want.iter().enumerate() {
                        let at = chunk.start + b as u64;
                        assert_eq!(
                            ranges.iter().any(|r| r.contains(&at)),
                            w,
                            "round {round}: byte {at} of file {i} (flushed chunk {c})"
                        );
                    }
                }
            }
        }
        eprintln!(
            "round {round}: {} marks, {} dirty bytes after crash",
            marks.len(),
            log.dirty_bytes().unwrap()
        );
    }
}
