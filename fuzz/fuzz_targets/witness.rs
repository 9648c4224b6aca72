//! The witness's side: asks as signed datagrams, decoded by the real path and
//! answered by the real lease table, with time moving on between asks. Whatever
//! the asks say, two nodes never hold one module's lease at once.

#![no_main]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use ring::hmac;
use tandem::cluster::heartbeat::{Key, open_with};
use tandem::cluster::witness::{Ask, Leases};

const SECRET: [u8; 32] = [9; 32];
const TERM: Duration = Duration::from_millis(100);

fuzz_target!(|data: &[u8]| {
    let key = Key::new(&SECRET);
    let signer = hmac::Key::new(hmac::HMAC_SHA256, &SECRET);
    let mut leases = Leases::new(TERM);
    let start = Instant::now();
    let mut now = start;
    // Who was last granted each lease, and when; cleared when given back.
    let mut held: HashMap<(String, String), (String, Instant)> = HashMap::new();
    let mut rest = data;
    while !rest.is_empty() {
        // Each ask: one byte of elapsed time, one of length, then the body.
        let (step, len, body) = match rest {
            [s, l, body @ ..] => (*s, *l as usize, body),
            _ => break,
        };
        let body = &body[..len.min(body.len())];
        rest = &rest[2 + body.len()..];
        now += Duration::from_millis(step as u64);
        let mut datagram = b"TQ\x01".to_vec();
        datagram.extend_from_slice(body);
        let tag = hmac::sign(&signer, &datagram);
        datagram.extend_from_slice(tag.as_ref());
        let Ok(ask) = open_with::<Ask>(&key, *b"TQ", &datagram) else {
            continue;
        };
        let answer = leases.ask(&ask, now);
        assert_eq!((answer.nonce, &answer.module), (ask.nonce, &ask.module));
        let lease = (ask.cluster.clone(), ask.module.clone());
        if answer.granted {
            assert_eq!(answer.holder.as_deref(), Some(ask.node.as_str()));
            if let Some((other, at)) = held.get(&lease) {
                assert!(
                    other == &ask.node || now >= *at + TERM,
                    "{} granted while {other} held the lease",
                    ask.node
                );
            }
            if ask.serving {
                assert_eq!(answer.newest, ask.generation);
            }
            held.insert(lease, (ask.node.clone(), now));
        } else if !ask.want && held.get(&lease).is_some_and(|(n, _)| n == &ask.node) {
            held.remove(&lease);
        }
    }
});
