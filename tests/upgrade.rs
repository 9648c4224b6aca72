//! A rolling upgrade: an older release of tandem (built from the commit
//! below) and this one run a cluster together under an application that
//! logs every write it was told is done — the new node follows the old one,
//! takes over from it, is followed by it, and each fails over to the other
//! when killed — and no acknowledged write is lost, and `verify` finds both
//! copies identical. Then the old node is upgraded too and the two speak the
//! newest protocol.

mod common;

use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::wait_until;

/// The release before protocol ranges (main before them): it speaks only
/// protocol 3 on the link and says nothing of its versions.
const OLDER: &str = "97565d813ae033e59496cd81e351c942d6cef7e2";

const NEW_LINK: u64 = 5;
const OLD_LINK: u64 = 3;

/// The application is held still, both copies compared, then let go.
fn verify_identical(c: &Cluster, on: usize) {
    std::fs::write(c.path("hold"), b"").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let mut last = String::new();
    let same = wait_until(20, || {
        let o = c.tandem(on, &["verify", "app"]);
        last = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        o.status.code() == Some(0)
    });
    assert!(same, "verify on node{on}: {last}");
    std::fs::remove_file(c.path("hold")).unwrap();
}

/// The link's protocol and the peer's release, as node `n`'s status says
/// (absent from an older release's status).
fn link(c: &Cluster, n: usize) -> (Option<u64>, Option<String>) {
    let st = c.status(n).expect("status");
    let r = &st["modules"][0]["replication"];
    (
        r["protocol"].as_u64(),
        r["peer_version"].as_str().map(str::to_string),
    )
}

/// Kills node `n`'s daemon (kill -9), waits for its twin to serve with every
/// acknowledged write, then starts it again and waits for it to follow.
fn fail_over_from(c: &mut Cluster, n: usize) {
    let twin = 3 - n;
    c.signal(n, libc::SIGKILL);
    let killed = Instant::now();
    assert!(
        wait_until(10, || !c.path(&format!("side{n}/app.pid")).exists()),
        "the guard did not stop node{n}'s application\n{}",
        c.log_text(n)
    );
    assert!(
        wait_until(20, || c.state(twin) == "ALONE"),
        "node{twin} did not take over from node{n}: {}\n{}",
        c.state(twin),
        c.log_text(twin)
    );
    eprintln!(
        "node{twin} took over {} ms after kill -9 of node{n}",
        killed.elapsed().as_millis()
    );
    c.wait_app_writes(twin);
    c.assert_acks_kept(twin);
    c.start(n);
    if n == 1 {
        c.wait_states("SECOND", "PRIM", 60);
    } else {
        c.wait_states("PRIM", "SECOND", 60);
    }
    c.wait_app_writes(twin);
}

#[test]
fn an_older_release_and_this_one_replicate_swap_and_fail_over_both_ways() {
    let older = common::older::release(OLDER);
    let mut c = Cluster::new();
    c.bins[0] = older.clone();

    // 1. The new SECOND follows the old PRIM.
    c.start(1);
    c.start(2);
    c.wait_states("PRIM", "SECOND", 60);
    c.wait_app_writes(1);
    assert_eq!(link(&c, 2), (Some(OLD_LINK), None), "new SECOND, old PRIM");
    let st = c.status(2).unwrap();
    assert_eq!(st["nodes"]["peer_version"], serde_json::Value::Null);
    assert_eq!(
        st["nodes"]["version"].as_str(),
        Some(env!("CARGO_PKG_VERSION"))
    );
    // A resync after the new SECOND was killed, while the old PRIM writes.
    c.signal(2, libc::SIGKILL);
    c.wait_app_writes(1);
    c.start(2);
    c.wait_states("PRIM", "SECOND", 60);
    c.assert_acks_kept(2);
    verify_identical(&c, 1);

    // 2. swap: the new node serves, the old one follows it.
    let o = c.tandem(1, &["swap", "app"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    c.wait_states("SECOND", "PRIM", 60);
    c.wait_app_writes(2);
    c.assert_acks_kept(2);
    assert_eq!(link(&c, 2), (Some(OLD_LINK), None), "new PRIM, old SECOND");
    verify_identical(&c, 2);
    c.assert_acks_kept(1);

    // 3. Failover by kill -9, both ways.
    fail_over_from(&mut c, 2);
    fail_over_from(&mut c, 1);
    verify_identical(&c, 2);
    c.assert_acks_kept(1);

    // 4. The old node is upgraded too (a clean stop hands over first): the
    // two speak the newest protocol and know each other's release.
    c.signal(1, libc::SIGTERM);
    c.bins[0] = common::tandem_bin().into();
    c.start(1);
    c.wait_states("SECOND", "PRIM", 60);
    c.wait_app_writes(2);
    let mine = Some(env!("CARGO_PKG_VERSION").to_string());
    assert!(
        wait_until(10, || link(&c, 2) == (Some(NEW_LINK), mine.clone())
            && link(&c, 1) == (Some(NEW_LINK), mine.clone())),
        "{:?} {:?}",
        link(&c, 1),
        link(&c, 2)
    );
    assert!(wait_until(10, || {
        let st = c.status(1).unwrap();
        st["nodes"]["peer_version"].as_str() == mine.as_deref()
    }));
    verify_identical(&c, 2);
    c.assert_acks_kept(1);
    c.assert_acks_kept(2);
    c.assert_never_both();
}
