//! Hostile input for every decoder that reads what another machine or an
//! operator wrote: replication frames, heartbeats, witness messages and the
//! configuration. Valid inputs are mutated at random (bits flipped, bytes
//! replaced, inserted and cut, lengths changed) a few hundred thousand times
//! from fixed seeds; each decoder must answer with a value or an error —
//! never a panic, never a read past its input, never an escaping path.

use std::path::{Component, Path};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tandem::cluster::heartbeat::{self, Beat, Key};
use tandem::cluster::machine::PeerView;
use tandem::cluster::witness::{Answer, Ask};
use tandem::replication::frame::{self, Compression};
use tandem::replication::wire::{
    Entry, EntryKind, Message, Time, WireAttrs, WireMutation, checked_path,
};

/// One random change to `input`.
fn mutate(rng: &mut StdRng, input: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..rng.random_range(1..4) {
        let at = if v.is_empty() {
            0
        } else {
            rng.random_range(0..v.len())
        };
        match rng.random_range(0..7) {
            0 if !v.is_empty() => v[at] ^= 1 << rng.random_range(0..8),
            1 if !v.is_empty() => v[at] = rng.random(),
            2 => v.insert(at, rng.random()),
            3 if !v.is_empty() => {
                v.remove(at);
            }
            4 => v.truncate(at),
            // The integers postcard reads as lengths: as large as they go.
            5 if !v.is_empty() => v[at] = 0xff,
            _ => v.extend((0..rng.random_range(1..16)).map(|_| rng.random::<u8>())),
        }
    }
    v
}

fn messages() -> Vec<Message> {
    vec![
        Message::Hello {
            cluster: "c".into(),
            node: "node1".into(),
            modules: vec!["app".into(), "db".into()],
            dirs: 2,
            generation: 7,
            verify: false,
            acks: Default::default(),
            speaks: None,
            resumes: false,
        },
        Message::Mutate {
            seq: 9,
            dir: 0,
            resync: false,
            mutation: WireMutation::Write {
                path: Some(b"a/b/file".to_vec()),
                offset: 4096,
                data: vec![0x5a; 300],
                sync: true,
            },
            times: vec![(b"a/b".to_vec(), Time { secs: 1, nanos: 2 })],
        },
        Message::Mutate {
            seq: 10,
            dir: 1,
            resync: true,
            mutation: WireMutation::Rename {
                from: b"x".to_vec(),
                to: b"y/z".to_vec(),
                flags: 0,
            },
            times: Vec::new(),
        },
        Message::Ack {
            received: 1,
            applied: 2,
            durable: 3,
        },
        Message::Close {
            reason: "bye".into(),
        },
    ]
}

/// A path from a frame, once checked, stays below the module's root.
fn stays_inside(raw: &[u8]) {
    if let Ok(p) = checked_path(raw) {
        assert!(
            p.components().all(|c| matches!(c, Component::Normal(_))),
            "{p:?} escapes"
        );
    }
}

fn paths_of(m: &Message) -> Vec<Vec<u8>> {
    match m {
        Message::Mutate {
            mutation, times, ..
        } => {
            let mut out: Vec<Vec<u8>> = times.iter().map(|(p, _)| p.clone()).collect();
            match mutation {
                WireMutation::Write { path: Some(p), .. } => out.push(p.clone()),
                WireMutation::Rename { from, to, .. } => {
                    out.push(from.clone());
                    out.push(to.clone());
                }
                _ => {}
            }
            out
        }
        _ => Vec::new(),
    }
}

#[test]
fn mutated_replication_frames_decode_or_are_refused() {
    let mut rng = StdRng::seed_from_u64(16);
    let mut frames = Vec::new();
    for compression in [Compression::Off, Compression::Zstd { level: 1 }] {
        for m in messages() {
            let mut out = Vec::new();
            frame::encode(&m, compression, &mut out).unwrap();
            let (back, used) = frame::decode(&out).unwrap().unwrap();
            assert_eq!((back, used), (m, out.len()));
            frames.push(out);
        }
    }
    let (mut decoded, mut refused) = (0u32, 0u32);
    for i in 0..200_000 {
        let input = mutate(&mut rng, &frames[i % frames.len()]);
        match frame::decode(&input) {
            Ok(Some((m, used))) => {
                assert!(used <= input.len());
                assert!(frame::is_whole(&input));
                for p in paths_of(&m) {
                    stays_inside(&p);
                }
                decoded += 1;
            }
            Ok(None) => {}
            Err(_) => refused += 1,
        }
    }
    eprintln!("frames: {decoded} decoded, {refused} refused of 200000 mutated");
    assert!(refused > 0 && decoded > 0);
}

#[test]
fn crafted_paths_never_leave_the_module_root() {
    for raw in [
        &b"../etc/passwd"[..],
        b"/etc/passwd",
        b"a/../../b",
        b"a/./b",
        b"a//b",
        b"",
        b"a\0b",
        b"..",
        b"./..",
    ] {
        stays_inside(raw);
    }
    assert!(checked_path(b"../x").is_err());
    assert!(checked_path(b"/x").is_err());
    assert!(checked_path(b"a/../../x").is_err());
    let mut rng = StdRng::seed_from_u64(17);
    let alphabet = [b'.', b'/', b'a', 0, b'\\'];
    for _ in 0..100_000 {
        let raw: Vec<u8> = (0..rng.random_range(0..12))
            .map(|_| alphabet[rng.random_range(0..alphabet.len())])
            .collect();
        stays_inside(&raw);
    }
}

/// A heartbeat of node1 about one module.
fn sample_beat() -> Beat {
    Beat {
        cluster: "c".into(),
        node: "node1".into(),
        boot: 1,
        seq: 2,
        sent_ms: 3,
        modules: vec![("app".into(), PeerView::default())],
        extra: tandem::cluster::heartbeat::Extra {
            dirty: vec![("app".into(), 4096)],
            echo: vec![Some((2, 150)), None],
        },
        speaks: Some(tandem::versions::Speaks::this(
            tandem::cluster::heartbeat::PROTOCOL,
        )),
    }
}

#[test]
fn mutated_heartbeats_and_witness_messages_are_dropped() {
    let key = Key::new(&[7u8; 32]);
    let mut rng = StdRng::seed_from_u64(18);
    let beat = sample_beat();
    let sealed = heartbeat::seal(&key, &beat);
    assert_eq!(heartbeat::open(&key, &sealed).unwrap(), beat);
    for _ in 0..50_000 {
        let input = mutate(&mut rng, &sealed);
        if input != sealed {
            assert!(
                heartbeat::open(&key, &input).is_err(),
                "a changed heartbeat was taken"
            );
        }
    }
    // Authenticated garbage (a node that holds the key but is broken): the
    // body is still parsed safely.
    for _ in 0..50_000 {
        let mut body: Vec<u8> = b"TB".to_vec();
        body.push(sealed[2]);
        let payload = mutate(&mut rng, &sealed[3..sealed.len() - 32]);
        body.extend_from_slice(&payload);
        let resealed = reseal(&key, &body);
        let _ = heartbeat::open(&key, &resealed);
        let _ = heartbeat::open_with::<Ask>(&key, *b"TQ", &resealed);
        let _ = heartbeat::open_with::<Answer>(&key, *b"TA", &resealed);
    }
    let ask = Ask {
        cluster: "c".into(),
        node: "node2".into(),
        module: "app".into(),
        want: true,
        generation: 9,
        serving: false,
        nonce: 5,
    };
    let sealed = heartbeat::seal_with(&key, *b"TQ", &ask);
    for _ in 0..50_000 {
        let input = mutate(&mut rng, &sealed);
        if input != sealed {
            assert!(heartbeat::open_with::<Ask>(&key, *b"TQ", &input).is_err());
        }
    }
}

/// Signs `body` as [`heartbeat::seal_with`] does, with the test's key.
fn reseal(_key: &Key, body: &[u8]) -> Vec<u8> {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[7u8; 32]);
    let mut out = body.to_vec();
    out.extend_from_slice(ring::hmac::sign(&k, body).as_ref());
    out
}

#[test]
fn mutated_configurations_are_refused_with_a_field_or_a_line() {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/tandem.toml"))
            .unwrap();
    tandem::config::parse(
        &text,
        Path::new("tandem.toml"),
        tandem::config::DirChecks::Off,
    )
    .unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut rng = StdRng::seed_from_u64(19);
    let (mut ok, mut refused) = (0, 0);
    for _ in 0..3_000 {
        let mut l: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
        for _ in 0..rng.random_range(1..4) {
            let at = rng.random_range(0..l.len());
            match rng.random_range(0..5) {
                0 => {
                    l.remove(at);
                }
                1 => {
                    let dup = l[at].clone();
                    l.insert(at, dup);
                }
                2 => {
                    let bytes = mutate(&mut rng, l[at].as_bytes());
                    l[at] = String::from_utf8_lossy(&bytes).into_owned();
                }
                3 => l[at] = l[at].replace('"', ""),
                _ => l[at] = l[at].replace(|c: char| c.is_ascii_digit(), "9"),
            }
        }
        match tandem::config::parse(
            &l.join("\n"),
            Path::new("tandem.toml"),
            tandem::config::DirChecks::Off,
        ) {
            Ok(_) => ok += 1,
            Err(e) => {
                let shown = e.to_string();
                assert!(!shown.trim().is_empty());
                refused += 1;
            }
        }
    }
    eprintln!("configurations: {ok} accepted, {refused} refused of 3000 mutated");
    assert!(refused > 0);
}

/// Mutations aimed at the ways out of the fuzzed module directory (`up` and
/// `abs` are symlinks to outside it, `file` and `sub/secret` to files there).
fn hostile_mutations() -> Vec<WireMutation> {
    let p = |s: &str| s.as_bytes().to_vec();
    let time = Time { secs: 1, nanos: 0 };
    let mut out = Vec::new();
    for target in [
        "up/secret",
        "abs/secret",
        "file",
        "sub/secret",
        "up/dir/file",
        "new",
    ] {
        out.push(WireMutation::Write {
            path: Some(p(target)),
            offset: 0,
            data: b"changed".to_vec(),
            sync: true,
        });
        out.push(WireMutation::SetAttr {
            path: Some(p(target)),
            attrs: WireAttrs {
                mode: Some(0o777),
                uid: Some(1),
                gid: Some(1),
                size: Some(0),
                atime: Some(time),
                mtime: Some(time),
            },
        });
        out.push(WireMutation::SetXattr {
            path: Some(p(target)),
            name: p("user.x"),
            value: p("y"),
            flags: 0,
        });
        out.push(WireMutation::Unlink { path: p(target) });
        out.push(WireMutation::Link {
            existing: p(target),
            path: p("hard"),
        });
        out.push(WireMutation::Rename {
            from: p(target),
            to: p("moved"),
            flags: 0,
        });
        out.push(WireMutation::Rename {
            from: p("sub"),
            to: p(target),
            flags: 0,
        });
        out.push(WireMutation::Reconcile {
            path: p(target),
            entry: Some(Entry {
                kind: EntryKind::File,
                mode: 0o600,
                uid: 0,
                gid: 0,
                size: 1,
                atime: time,
                mtime: time,
                xattrs: Vec::new(),
                links: 1,
            }),
        });
        out.push(WireMutation::Reconcile {
            path: p(target),
            entry: None,
        });
    }
    out.push(WireMutation::Create {
        path: p("up/made"),
        mode: libc::S_IFREG | 0o644,
        umask: 0o022,
        rdev: 0,
        uid: 0,
        gid: 0,
    });
    out.push(WireMutation::Mkdir {
        path: p("abs/made"),
        mode: 0o755,
        umask: 0,
        uid: 0,
        gid: 0,
    });
    out.push(WireMutation::Symlink {
        path: p("sub/link"),
        target: p("/"),
        uid: 0,
        gid: 0,
    });
    out.push(WireMutation::Rmdir { path: p("up/dir") });
    out.push(WireMutation::Fallocate {
        path: Some(p("file")),
        offset: 0,
        length: 4096,
        mode: 0,
    });
    out
}

/// The fuzz targets' starting inputs (see `scripts/fuzz.sh`), made from the
/// current protocol so they never go stale; written out when
/// `TANDEM_FUZZ_SEEDS` names a directory.
#[test]
fn fuzz_seeds_are_valid_inputs() {
    let mut seeds: Vec<(&str, String, Vec<u8>)> = Vec::new();
    let mut all = Vec::new();
    for (i, m) in messages().iter().enumerate() {
        for (c, compression) in [Compression::Off, Compression::Zstd { level: 1 }]
            .into_iter()
            .enumerate()
        {
            let mut out = Vec::new();
            frame::encode(m, compression, &mut out).unwrap();
            all.extend_from_slice(&out);
            seeds.push(("frame", format!("message-{i}-{c}"), out));
        }
    }
    seeds.push(("frame", "all".into(), all));
    for (i, mutation) in hostile_mutations().into_iter().enumerate() {
        let m = Message::Mutate {
            seq: i as u64,
            dir: 0,
            resync: i % 2 == 0,
            mutation,
            times: vec![(b"up".to_vec(), Time { secs: 2, nanos: 3 })],
        };
        let mut out = Vec::new();
        frame::encode(&m, Compression::Off, &mut out).unwrap();
        let (back, _) = frame::decode(&out).unwrap().unwrap();
        assert_eq!(back, m);
        seeds.push(("apply", format!("mutation-{i}"), out));
    }
    let beat = sample_beat();
    seeds.push((
        "heartbeat",
        "beat".into(),
        postcard::to_allocvec(&beat).unwrap(),
    ));
    // Two nodes asking for one lease, with time between the asks.
    let mut asks = Vec::new();
    for (step, node, want, serving) in [
        (0u8, "node1", true, true),
        (50, "node2", true, false),
        (60, "node1", false, true),
        (1, "node2", true, true),
        (200, "node1", true, false),
    ] {
        let ask = Ask {
            cluster: "c".into(),
            node: node.into(),
            module: "app".into(),
            want,
            generation: step as u64,
            serving,
            nonce: 1,
        };
        let body = postcard::to_allocvec(&ask).unwrap();
        asks.push(step);
        asks.push(u8::try_from(body.len()).unwrap());
        asks.extend_from_slice(&body);
    }
    seeds.push(("witness", "two-nodes".into(), asks));
    for (i, probe) in [
        "GET /primary/app HTTP/1.1\r\nHost: lb\r\n\r\n",
        "HEAD /secondary/app HTTP/1.0\r\n\r\n",
        "OPTIONS /health HTTP/1.1\r\n\r\n",
        "GET /app HTTP/1.1\n",
    ]
    .iter()
    .enumerate()
    {
        seeds.push((
            "lb_request",
            format!("probe-{i}"),
            probe.as_bytes().to_vec(),
        ));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for name in [
        "config/tandem.toml",
        "config/podman/podman.toml",
        "config/podman/podman-lb.toml",
    ] {
        if let Ok(text) = std::fs::read(root.join(name)) {
            seeds.push(("config", name.replace('/', "-"), text));
        }
    }
    assert!(seeds.iter().any(|(t, ..)| *t == "config"));
    if let Some(dir) = std::env::var_os("TANDEM_FUZZ_SEEDS") {
        for (target, name, bytes) in &seeds {
            let d = Path::new(&dir).join(target);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(name), bytes).unwrap();
        }
    }
}
