//! `quorum = "etcd"` against a real etcd (Debian's etcd-server) on loopback,
//! started by the test: one holder at a time, a lease given back is free at
//! once, a holder that stops renewing loses it only after its TTL, the newest
//! generation survives every client, and an etcd that goes away leaves no
//! node believing it holds a lease.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem::cluster::LeaseQuorum;
use tandem::cluster::etcd::Client;
use tandem::stop::Stop;

struct Etcd {
    child: Child,
    _dir: tempfile::TempDir,
    url: String,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn etcd() -> Etcd {
    let dir = tempfile::tempdir().unwrap();
    let (client, peer) = (free_port(), free_port());
    let url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let child = Command::new("etcd")
        .args(["--name", "t", "--data-dir"])
        .arg(dir.path().join("data"))
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("t={peer_url}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcd (Debian's etcd-server) must be installed: run scripts/install-deps.sh");
    let e = Etcd {
        child,
        _dir: dir,
        url,
    };
    assert!(
        wait(10, || std::net::TcpStream::connect(("127.0.0.1", client))
            .is_ok()),
        "etcd did not start"
    );
    e
}

fn wait(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < until {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

fn client(e: &Etcd, node: &str) -> Arc<Client> {
    stoppable(e, node).0
}

/// A client and what stops its renewals.
fn stoppable(e: &Etcd, node: &str) -> (Arc<Client>, Stop) {
    let ms = Duration::from_millis;
    let c = Client::new(
        vec![e.url.parse().unwrap()],
        "t",
        node,
        ms(1000),
        ms(200),
        ms(100),
    )
    .unwrap();
    let stop = Stop::new();
    c.clone().spawn(&stop).unwrap();
    (c, stop)
}

#[test]
fn one_holder_at_a_time_and_the_newest_generation_outlives_the_nodes() {
    let e = etcd();
    let a = client(&e, "node1");
    let (b, b_renewals) = stoppable(&e, "node2");
    a.want("app", true, 5, true);
    assert!(wait(10, || a.holds("app")), "node1 never got the lease");
    assert!(wait(5, || a.newest("app") == 5));
    b.want("app", true, 3, false);
    assert!(wait(5, || b.holder("app").as_deref() == Some("node1")));
    std::thread::sleep(Duration::from_millis(500));
    assert!(!b.holds("app"), "two holders");
    assert!(b.answering());
    assert_eq!(b.newest("app"), 5, "node2 learns that its data is older");

    // Given back: node2 has it at once, not after the TTL.
    a.want("app", false, 5, false);
    let given = Instant::now();
    assert!(wait(5, || b.holds("app")));
    assert!(given.elapsed() < Duration::from_millis(1500));
    assert!(!a.holds("app"));
    // node2 did not serve: the newest generation is still node1's.
    assert_eq!(b.newest("app"), 5);
    b.want("app", true, 9, true);
    assert!(wait(5, || b.newest("app") == 9));

    // node2 stops renewing (cut off or dead): it stops relying on the lease
    // at once, and node1 gets it only when etcd let it run out (two seconds,
    // etcd's shortest lease).
    a.want("app", true, 9, false);
    assert!(b_renewals.join(Duration::from_secs(5)).late.is_empty());
    let stopped = Instant::now();
    assert!(!b.holds("app"));
    assert!(wait(10, || a.holds("app")));
    assert!(
        stopped.elapsed() >= Duration::from_millis(1500),
        "node1 got the lease {} ms after node2's last renewal",
        stopped.elapsed().as_millis()
    );
    // A new client (a restarted node) reads the newest generation from etcd.
    let c = client(&e, "node3");
    c.want("app", false, 0, false);
    assert!(wait(5, || c.newest("app") == 9));
    assert_eq!(c.holder("app").as_deref(), Some("node1"));
}

#[test]
fn when_etcd_goes_away_nobody_holds_a_lease() {
    let mut e = etcd();
    let a = client(&e, "node1");
    a.want("db", true, 1, true);
    assert!(wait(10, || a.holds("db")));
    let _ = e.child.kill();
    let _ = e.child.wait();
    // Relied on for two intervals after the last renewal, no longer.
    assert!(wait(2, || !a.holds("db")));
    assert!(wait(2, || !a.answering()));
}

#[test]
fn a_restarted_node_takes_back_the_key_it_left_under_its_old_lease() {
    let e = etcd();
    let (old, old_renewals) = stoppable(&e, "node1");
    old.want("app", true, 2, true);
    assert!(wait(10, || old.holds("app")));
    assert!(old_renewals.join(Duration::from_secs(5)).late.is_empty());
    // The same node, restarted before its old lease ran out.
    let new = client(&e, "node1");
    new.want("app", true, 2, true);
    assert!(wait(5, || new.holds("app")));
    let other = client(&e, "node2");
    other.want("app", true, 1, false);
    // Past the old lease's TTL the key is still held, under the new lease.
    std::thread::sleep(Duration::from_millis(3000));
    assert!(new.holds("app"));
    assert!(!other.holds("app"));
    assert_eq!(other.holder("app").as_deref(), Some("node1"));
}
