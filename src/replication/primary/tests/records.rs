//! The change-log records the write path keeps: marks, owed times, hand-overs.

use super::*;

#[test]
fn a_write_whose_send_finds_the_writer_gone_stays_marked() {
    let (rep, _root) = replicator(1000);
    let (conn, rx) = current_link(&rep);
    let sink = rep.sink(0);
    // Seq 1 reaches the channel and the peer makes it durable, so the
    // extent is hot with nothing pending.
    write(&sink, 0, b"first");
    rep.on_ack(conn, 1, 1, 1);
    drop(rx);
    // The writer is gone: this write never leaves, and its bytes must
    // stay marked for the resync (the rest of the extent may go).
    write(&sink, 8192, b"second");
    assert_eq!(rep.status().peer, "alone");
    let id = rep.dirs()[0].log.ensure(Path::new("f")).unwrap();
    assert_eq!(rep.dirs()[0].log.dirty(id).unwrap(), vec![8192..8198]);
}

type Stamps = Vec<(Vec<u8>, Time)>;

/// The mutations sent so far: what each is, and the times it carries.
fn sent(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Message>) -> Vec<(String, Stamps)> {
    std::iter::from_fn(|| rx.try_recv().ok())
        .filter_map(|m| match m {
            Message::Mutate {
                mutation, times, ..
            } => {
                let kind = format!("{mutation:?}");
                Some((
                    kind[..kind.find([' ', '{']).unwrap_or(kind.len())].to_string(),
                    times,
                ))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn writes_owe_their_times_until_a_close_or_another_change() {
    let (rep, root) = replicator(1000);
    std::fs::write(root.path().join("f"), b"abc").unwrap();
    let mtime = || {
        let st =
            crate::fs::sys::stat_fd(std::fs::File::open(root.path().join("f")).unwrap().as_fd())
                .unwrap();
        vec![(b"f".to_vec(), Time::mtime_of(&st))]
    };
    let (_conn, mut rx) = current_link(&rep);
    let sink = rep.sink(0);
    write(&sink, 0, b"a");
    write(&sink, 1, b"b");
    let got = sent(&mut rx);
    assert_eq!(got.len(), 2);
    assert!(
        got.iter().all(|(k, t)| k == "Write" && t.is_empty()),
        "{got:?}"
    );
    // Closed: the time goes, once.
    sink.closed();
    assert_eq!(sent(&mut rx), vec![("Times".to_string(), mtime())]);
    sink.closed();
    assert_eq!(sent(&mut rx), vec![]);
    // Owed again, and sent before a change of another kind.
    write(&sink, 2, b"c");
    let mkdir = Mutation::Mkdir {
        path: PathBuf::from("d"),
        mode: 0o755,
        umask: 0,
        uid: 0,
        gid: 0,
    };
    sink.apply(&mkdir, &mut || Ok(())).unwrap();
    let kinds: Vec<String> = sent(&mut rx).into_iter().map(|(k, _)| k).collect();
    assert_eq!(kinds, ["Write", "Times", "Mkdir"]);
}

#[test]
fn an_owed_time_is_recorded_until_the_peer_has_it_durably() {
    let (rep, root) = replicator(1000);
    std::fs::write(root.path().join("f"), b"abc").unwrap();
    let log = &rep.dirs()[0].log;
    let set_attr = |log: &Arc<dyn ChangeLog>| {
        log.ns_since(0)
            .unwrap()
            .into_iter()
            .filter(|(_, c)| {
                *c == NsChange::SetAttr {
                    path: PathBuf::from("f"),
                }
            })
            .count()
    };
    // Sent and made durable: forgotten.
    let (conn, _rx) = current_link(&rep);
    let sink = rep.sink(0);
    write(&sink, 0, b"a");
    assert_eq!(set_attr(log), 1);
    write(&sink, 1, b"b");
    assert_eq!(set_attr(log), 1, "one record per stretch, not per write");
    sink.closed();
    rep.on_ack(conn, 3, 3, 3);
    assert_eq!(set_attr(log), 0);
    // The link goes before the time is sent: the record stays for the
    // resync, which ships the file's times.
    write(&sink, 2, b"c");
    rep.detach(conn, "gone");
    assert_eq!(set_attr(log), 1);
}

#[test]
fn a_truncate_keeps_hot_extents_marked_whole() {
    let (rep, _root) = replicator(1000);
    let (conn, _rx) = current_link(&rep);
    let sink = rep.sink(0);
    write(&sink, 0, b"first");
    rep.on_ack(conn, 1, 1, 1);
    // An O_TRUNC open: the file is emptied, the extent stays hot.
    let truncate = Mutation::SetAttr {
        path: Some(PathBuf::from("f")),
        change: crate::fs::AttrChange {
            size: Some(0),
            ..Default::default()
        },
    };
    sink.apply(&truncate, &mut || Ok(())).unwrap();
    rep.on_ack(conn, 2, 2, 1);
    write(&sink, 0, b"second");
    rep.on_ack(conn, 2, 2, 2);
    // The link drops before the second write is durable: it must stay
    // marked for the resync.
    rep.detach(conn, "gone");
    let id = rep.dirs()[0].log.ensure(Path::new("f")).unwrap();
    assert_eq!(rep.dirs()[0].log.dirty(id).unwrap(), vec![0..6]);
}

#[test]
fn a_removed_name_of_a_hard_linked_file_hands_its_records_to_the_survivor() {
    let (rep, _root) = replicator(1000);
    let (conn, _rx) = current_link(&rep);
    let sink = rep.sink(0);
    // Written under the name "f" (hot, not yet durable on the peer).
    write(&sink, 4096, b"data");
    let unlink = Mutation::Unlink {
        path: PathBuf::from("f"),
        survivor: Remains::Name(PathBuf::from("g")),
    };
    sink.apply(&unlink, &mut || Ok(())).unwrap();
    rep.detach(conn, "gone");
    let log = &rep.dirs()[0].log;
    let g = log
        .resolve(Path::new("g"))
        .unwrap()
        .expect("g has the records");
    assert_eq!(log.dirty(g).unwrap(), vec![4096..4100]);
    assert_eq!(log.resolve(Path::new("f")).unwrap(), None);
}

#[test]
fn a_removed_name_of_a_file_linked_under_unseen_names_asks_for_a_comparison() {
    let (rep, _root) = replicator(1000);
    let (_conn, _rx) = current_link(&rep);
    let sink = rep.sink(0);
    let log = &rep.dirs()[0].log;
    // A name without records goes: nothing is owed.
    let unlink = |path: &str| Mutation::Unlink {
        path: PathBuf::from(path),
        survivor: Remains::Unseen,
    };
    sink.apply(&unlink("clean"), &mut || Ok(())).unwrap();
    assert!(!log.compare_needed().unwrap());
    write(&sink, 4096, b"data");
    sink.apply(&unlink("f"), &mut || Ok(())).unwrap();
    assert!(
        log.compare_needed().unwrap(),
        "the records had nowhere to go"
    );
    assert_eq!(log.resolve(Path::new("f")).unwrap(), None);
}
