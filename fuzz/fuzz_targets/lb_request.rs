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
        },
    );
    // More than the server reads before it answers or refuses.
    let data = &data[..data.len().min(64 << 10)];
    let reply = RUNTIME.block_on(async {
        let (mut client, mut server) = tokio::io::duplex(1 << 20);
        client.write_all(data).await.unwrap();
        client.shutdown().await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        lb_health::handle(&mut server, &health, deadline)
            .await
            .unwrap();
        drop(server);
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).await.unwrap();
        reply
    });
    if reply.is_empty() {
        // Only a client that never finished its request line goes unanswered.
        assert!(!data.contains(&b'\n') && data.len() <= 8192 + 1024);
        return;
    }
    let text = String::from_utf8(reply).expect("answers are text");
    let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
    assert!(head.starts_with("HTTP/1.1 "), "{head}");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .expect("a length")
        .parse()
        .unwrap();
    let line = data.split(|&b| b == b'\n').next().unwrap_or_default();
    let head_request = String::from_utf8_lossy(line).split_whitespace().next() == Some("HEAD");
    // HEAD is answered without the body, when the request line is valid.
    assert!(
        body.len() == length || (head_request && body.is_empty()),
        "{text}"
    );
});
