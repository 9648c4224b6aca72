//! Replication frames as the peer's reader takes them off the TLS stream:
//! one buffer holding any number of frames. Each decoded message must encode
//! again to a frame that decodes to the same message, and every path it names
//! is either refused or stays below the module's root. The look ahead
//! (`frame::peek`) takes any bytes and agrees with the decoder where it
//! decodes.

#![no_main]

use std::path::Component;

use libfuzzer_sys::fuzz_target;
use tandem::replication::frame::{self, Compression};
use tandem::replication::wire::{Message, WireMutation, checked_path};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((msg, used))) = frame::decode(rest) {
        assert!(
            used > 0 && used <= rest.len(),
            "used {used} of {}",
            rest.len()
        );
        let (peeked, trailing, peek_used) = frame::peek(rest).expect("a decoded frame peeks");
        assert_eq!(peek_used, used);
        if let (Some(m), 0) = (peeked, trailing) {
            assert_eq!(m, msg);
        }
        assert!(frame::is_whole(rest));
        for p in paths(&msg) {
            if let Ok(path) = checked_path(p) {
                assert!(
                    path.components().all(|c| matches!(c, Component::Normal(_))),
                    "{path:?} leaves the root"
                );
            }
        }
        for compression in [Compression::Off, Compression::Zstd { level: 1 }] {
            let mut again = Vec::new();
            frame::encode(&msg, compression, &mut again).expect("a decoded message encodes");
            let (back, n) = frame::decode(&again).expect("decodes").expect("whole");
            assert_eq!(n, again.len());
            assert_eq!(back, msg);
        }
        rest = &rest[used..];
    }
    let _ = frame::peek(rest);
});

fn paths(m: &Message) -> Vec<&[u8]> {
    let Message::Mutate {
        mutation, times, ..
    } = m
    else {
        return Vec::new();
    };
    let mut out: Vec<&[u8]> = times.iter().map(|(p, _)| p.as_slice()).collect();
    match mutation {
        WireMutation::Write { path: Some(p), .. } => out.push(p),
        WireMutation::Rename { from, to, .. } => {
            out.push(from);
            out.push(to);
        }
        _ => {}
    }
    out
}
