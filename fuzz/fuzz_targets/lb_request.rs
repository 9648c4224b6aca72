//! A load balancer's probe, or anything else that connects to the health
//! port: whatever arrives, the answer is one well-formed HTTP response whose
//! length is what it says, or nothing.

#![no_main]

use std::sync::LazyLock;
use std::time::Duration;

use lb_health::{Health, ModuleHealth};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
});

fuzz_target!(|data: &[u8]| {
    let health = Health::new("node1", Duration::from_secs(3600));
    health.set(
        "app",
        ModuleHealth {
            state: "PRIM".into(),
            generation: 3,
            serving: true,
            uptodate: false,
            lag: None,
        },
    );
    // More than the server reads before it answers or refuses.
    let data = &data[..data.len().min(64 << 10)];
    let reply = RUNTIME.block_on(async {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        client.write_all(data).await.unwrap();
        client.shutdown().await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        lb_health::handle(server, &health, deadline).await;
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).await.unwrap();
        reply
    });
    if reply.is_empty() {
        // A request that never completed its head goes unanswered.
        return;
    }
    let text = String::from_utf8(reply).expect("answers are text");
    let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
    assert!(head.starts_with("HTTP/1."), "{head}");
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_string)
        })
        .map_or(0, |n| n.parse().unwrap());
    // Empty lines before the request line are skipped (RFC 9112, 2.2).
    let line = data
        .split(|&b| b == b'\n')
        .find(|l| !l.is_empty() && *l != b"\r")
        .unwrap_or_default();
    let head_request = String::from_utf8_lossy(line).split_whitespace().next() == Some("HEAD");
    // HEAD is answered without the body.
    assert!(
        body.len() == length || (head_request && body.is_empty()),
        "{text}"
    );
});
