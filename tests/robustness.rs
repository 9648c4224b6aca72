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
use tandem::replication::wire::{Message, Time, WireMutation, checked_path};

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

#[test]
fn mutated_heartbeats_and_witness_messages_are_dropped() {
    let key = Key::new(&[7u8; 32]);
    let mut rng = StdRng::seed_from_u64(18);
    let beat = Beat {
        cluster: "c".into(),
        node: "node1".into(),
        boot: 1,
        seq: 2,
        sent_ms: 3,
        modules: vec![("app".into(), PeerView::default())],
    };
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
    tandem::config::parse_with(&text, Path::new("tandem.toml"), false).unwrap();
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
        match tandem::config::parse_with(&l.join("\n"), Path::new("tandem.toml"), false) {
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
