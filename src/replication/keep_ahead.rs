//! Which of a resync's buffered changes the peer keeps the before-images of
//! at once: a run of writes (past the reconciliations of the files they end,
//! which change no name). Kept one change at a time, each overwritten 4 KiB
//! block cost a write of the store, an append of its bytes and a disk wait
//! of its own; kept by the run, the disk is asked for all of them together,
//! and a few hundred cost one write and one append
//! (see [`super::snapshot::Snapshots::keep_ahead`]).

use super::framed::Frames;
use super::snapshot::Effect;
use super::wire::{EntryKind, Message, WireMutation, checked_path};

/// The most before-image bytes one run keeps: what it holds in memory.
pub const RUN_BYTES: u64 = 4 << 20;
/// The most changes one run looks at.
const RUN_CHANGES: usize = 2048;

/// A run to keep ahead: its directory, what its writes overwrite, and the
/// last change it covers.
#[derive(Debug, PartialEq)]
pub struct Run {
    pub dir: u32,
    pub effects: Vec<Effect>,
    pub upto: u64,
}

/// The run that starts at the next buffered change, if that change is a
/// resync's write after `after` (the last change an earlier run covered).
pub fn next(frames: &Frames, after: u64) -> Option<Run> {
    let mut run: Option<Run> = None;
    let (mut bytes, mut changes) = (0u64, 0usize);
    frames.peek_from_start(|m, trailing| {
        let Message::Mutate {
            seq,
            dir,
            resync: true,
            mutation,
            ..
        } = m
        else {
            return false;
        };
        if *seq <= after || run.as_ref().is_some_and(|r| r.dir != *dir) {
            return false;
        }
        changes += 1;
        match mutation {
            WireMutation::Write {
                path: Some(path),
                offset,
                data,
                ..
            } => {
                let Ok(p) = checked_path(path) else {
                    return false;
                };
                let len = data.len().max(trailing) as u64;
                let r = run.get_or_insert_with(|| Run {
                    dir: *dir,
                    effects: Vec::new(),
                    upto: *seq,
                });
                r.effects.push(Effect::Bytes(p, *offset, len));
                r.upto = *seq;
                bytes += len;
            }
            // A file's end: its metadata and size, its name unchanged.
            WireMutation::Reconcile { entry: Some(e), .. }
                if e.kind == EntryKind::File && run.is_some() => {}
            _ => return false,
        }
        bytes < RUN_BYTES && changes < RUN_CHANGES
    });
    run
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::frame::{self, Compression};
    use crate::replication::wire::{Entry, Time};
    use std::path::PathBuf;

    fn mutate(seq: u64, dir: u32, resync: bool, mutation: WireMutation) -> Message {
        Message::Mutate {
            seq,
            dir,
            resync,
            mutation,
            times: Vec::new(),
        }
    }

    fn write(path: &str, offset: u64, data: Vec<u8>) -> WireMutation {
        WireMutation::Write {
            path: Some(path.as_bytes().to_vec()),
            offset,
            data,
            sync: false,
        }
    }

    fn reconcile(path: &str, kind: EntryKind) -> WireMutation {
        let t = Time { secs: 1, nanos: 0 };
        WireMutation::Reconcile {
            path: path.as_bytes().to_vec(),
            entry: Some(Entry {
                kind,
                mode: 0o644,
                uid: 0,
                gid: 0,
                size: 10,
                atime: t,
                mtime: t,
                xattrs: Vec::new(),
                links: 1,
            }),
        }
    }

    /// Frames as the peer buffers them: a write's data trails its message.
    fn frames(msgs: &[Message]) -> Frames {
        let mut buf = Vec::new();
        for m in msgs {
            match m {
                Message::Mutate {
                    seq,
                    dir,
                    resync,
                    mutation:
                        WireMutation::Write {
                            path,
                            offset,
                            data,
                            sync,
                        },
                    times,
                } => {
                    let bare = mutate(
                        *seq,
                        *dir,
                        *resync,
                        WireMutation::Write {
                            path: path.clone(),
                            offset: *offset,
                            data: Vec::new(),
                            sync: *sync,
                        },
                    );
                    assert!(times.is_empty());
                    frame::encode_trailing(&bare, data, &mut buf).unwrap();
                    buf.extend_from_slice(data);
                }
                m => frame::encode(m, Compression::Off, &mut buf).unwrap(),
            }
        }
        Frames::with(buf)
    }

    fn bytes(path: &str, off: u64, len: u64) -> Effect {
        Effect::Bytes(PathBuf::from(path), off, len)
    }

    #[test]
    fn a_run_is_the_writes_up_to_the_first_change_of_names() {
        let f = frames(&[
            mutate(5, 0, true, write("a", 0, vec![1; 4096])),
            mutate(6, 0, true, write("a", 8192, vec![2; 100])),
            mutate(7, 0, true, reconcile("a", EntryKind::File)),
            mutate(8, 0, true, write("d/b", 4096, vec![3; 4096])),
            mutate(9, 0, true, reconcile("d", EntryKind::Dir)),
            mutate(10, 0, true, write("c", 0, vec![4; 10])),
        ]);
        let run = next(&f, 0).unwrap();
        assert_eq!(run.dir, 0);
        assert_eq!(run.upto, 8);
        assert_eq!(
            run.effects,
            vec![
                bytes("a", 0, 4096),
                bytes("a", 8192, 100),
                bytes("d/b", 4096, 4096)
            ]
        );
        // What a run covered is not kept again.
        assert_eq!(next(&f, 8), None);
        // A run starts only at a write.
        let f = frames(&[
            mutate(5, 0, true, reconcile("a", EntryKind::File)),
            mutate(6, 0, true, write("a", 0, vec![1; 10])),
        ]);
        assert_eq!(next(&f, 0), None);
    }

    #[test]
    fn a_run_stays_in_one_directory_and_in_the_resync() {
        let f = frames(&[
            mutate(5, 1, true, write("a", 0, vec![1; 10])),
            mutate(6, 0, true, write("a", 0, vec![1; 10])),
        ]);
        let run = next(&f, 0).unwrap();
        assert_eq!((run.dir, run.upto), (1, 5));
        // The application's own changes are not a resync's.
        let f = frames(&[
            mutate(5, 0, true, write("a", 0, vec![1; 10])),
            mutate(6, 0, false, write("b", 0, vec![1; 10])),
        ]);
        assert_eq!(next(&f, 0).unwrap().upto, 5);
        assert_eq!(
            next(&frames(&[mutate(5, 0, false, write("b", 0, vec![1]))]), 0),
            None
        );
        // A path that leaves the module ends the run before it.
        let f = frames(&[
            mutate(5, 0, true, write("a", 0, vec![1; 10])),
            mutate(6, 0, true, write("../x", 0, vec![1; 10])),
        ]);
        assert_eq!(next(&f, 0).unwrap().effects, vec![bytes("a", 0, 10)]);
    }

    #[test]
    fn a_run_holds_at_most_its_bytes() {
        let piece = 1u64 << 20;
        let msgs: Vec<Message> = (0..8)
            .map(|i| {
                mutate(
                    i + 1,
                    0,
                    true,
                    write("big", i * piece, vec![7; piece as usize]),
                )
            })
            .collect();
        let run = next(&frames(&msgs), 0).unwrap();
        assert_eq!(run.upto, RUN_BYTES / piece);
        // Once those are applied, the next run starts after them.
        let rest = frames(&msgs[run.upto as usize..]);
        assert_eq!(next(&rest, run.upto).map(|r| r.effects.len()), Some(4));
    }
}
