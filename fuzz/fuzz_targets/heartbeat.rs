//! Heartbeat datagrams as a node's receiver takes them. Unsigned input must
//! be dropped; input signed with the cluster's key (a broken or hostile node
//! that holds it) is parsed safely, and an accepted heartbeat is never
//! accepted twice.

#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use ring::hmac;
use tandem::cluster::heartbeat::{Dropped, Heartbeats, Key};

const SECRET: [u8; 32] = [7; 32];

fuzz_target!(|data: &[u8]| {
    let key = Key::new(&SECRET);
    let receiver = || {
        Heartbeats::new(
            key.clone(),
            "c",
            "node2",
            "node1",
            Vec::new(),
            Duration::from_millis(100),
        )
    };
    // As it came: nobody without the key gets a heartbeat believed.
    assert!(
        receiver().check(data).is_err(),
        "an unsigned datagram was taken"
    );
    // Signed, after the header a heartbeat has.
    let mut datagram = b"TB\x01".to_vec();
    datagram.extend_from_slice(data);
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &SECRET), &datagram);
    datagram.extend_from_slice(tag.as_ref());
    let r = receiver();
    match r.check(&datagram) {
        Ok(beat) => {
            assert_eq!((beat.cluster.as_str(), beat.node.as_str()), ("c", "node1"));
            assert_eq!(r.check(&datagram), Err(Dropped::Replayed));
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
