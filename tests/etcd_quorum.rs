//! `quorum = "etcd"` against a real etcd (Debian's etcd-server) on loopback,
//! started by the test: one holder at a time, a lease given back is free at
//! once, a holder that stops renewing loses it only after its TTL, the newest
//! generation survives every client, and an etcd that goes away leaves no
//! node believing it holds a lease; and the same over TLS with client
//! certificates and etcd's users, as production clusters run.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{etcd_args, free_port};
use tandem::cluster::LeaseQuorum;
use tandem::cluster::etcd::{Client, EtcdError};
use tandem::stop::Stop;

struct Etcd {
    child: Child,
    dir: tempfile::TempDir,
    url: String,
    /// With TLS: the CA, and a client certificate and key it signed.
    tls: Option<Tls>,
}

#[derive(Clone)]
struct Tls {
    ca: std::path::PathBuf,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
}

/// The client runs on this runtime, as in the daemon.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Runtime::new().unwrap())
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn etcd() -> Etcd {
    start_etcd(false)
}

/// A CA, etcd's server certificate for 127.0.0.1, and a client's.
fn certificates(dir: &std::path::Path) -> (Tls, Tls) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = params.self_signed(&ca_key).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let issuer = rcgen::Issuer::new(params, ca_key);
    let issue = |name: &str, sans: Vec<String>| {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(sans).unwrap();
        // No common name: etcd's JSON gateway refuses a password login
        // from a client certificate that names a user.
        params.distinguished_name = rcgen::DistinguishedName::new();
        let cert = params.signed_by(&key, &issuer).unwrap();
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        Tls {
            ca: ca_file.clone(),
            cert: c,
            key: k,
        }
    };
    (
        issue("server", vec!["127.0.0.1".into()]),
        issue("client", vec!["node1".into()]),
    )
}

fn start_etcd(tls: bool) -> Etcd {
    let dir = tempfile::tempdir().unwrap();
    let (client, peer) = (free_port(false), free_port(false));
    let scheme = if tls { "https" } else { "http" };
    let url = format!("{scheme}://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let mut cmd = Command::new("etcd");
    let mut client_tls = None;
    if tls {
        let (server, client) = certificates(dir.path());
        cmd.arg("--cert-file")
            .arg(&server.cert)
            .arg("--key-file")
            .arg(&server.key)
            .arg("--trusted-ca-file")
            .arg(&server.ca)
            .arg("--client-cert-auth");
        client_tls = Some(client);
    }
    let child = etcd_args(&mut cmd, &dir.path().join("data"), &url, &url, &peer_url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcd (Debian's etcd-server) must be installed: run scripts/install-deps.sh");
    let e = Etcd {
        child,
        dir,
        url,
        tls: client_tls,
    };
    assert!(
        wait(10, || std::net::TcpStream::connect(("127.0.0.1", client))
            .is_ok()),
        "etcd did not start"
    );
    e
}

/// Waits until `f` holds, up to `secs` seconds, looking every 20 ms: the
/// leases' timings are measured in hundreds of ms.
fn wait(secs: u64, f: impl FnMut() -> bool) -> bool {
    common::wait_until_every(secs, Duration::from_millis(20), f)
}

fn client(e: &Etcd, node: &str) -> Arc<Client> {
    stoppable(e, node).0
}

/// A client and what stops its renewals.
fn stoppable(e: &Etcd, node: &str) -> (Arc<Client>, Stop) {
    let settings = tandem::config::Etcd {
        urls: vec![e.url.parse().unwrap()],
        ca: None,
        cert: None,
        user: None,
    };
    with(&settings, node).unwrap()
}

fn with(settings: &tandem::config::Etcd, node: &str) -> Result<(Arc<Client>, Stop), EtcdError> {
    let ms = Duration::from_millis;
    let c = Client::new(settings, "t", node, ms(1000), ms(200), ms(100))?;
    let stop = Stop::new();
    c.clone().spawn(&stop, runtime().handle());
    Ok((c, stop))
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

/// etcd as production runs it: TLS, client certificates required, users
/// with passwords. A client with all of it holds the lease; one with a
/// wrong password or no client certificate never does, and says why.
#[test]
fn over_tls_with_a_client_certificate_and_a_user_the_lease_works_and_nothing_less_does() {
    // The clients say why they are refused in their log.
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let e = start_etcd(true);
    let tls = e.tls.clone().unwrap();
    let etcdctl = |args: &[&str]| {
        let o = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", e.url))
            .arg(format!("--cacert={}", tls.ca.display()))
            .arg(format!("--cert={}", tls.cert.display()))
            .arg(format!("--key={}", tls.key.display()))
            .args(args)
            .output()
            .expect(
                "etcdctl (Debian's etcd-client) must be installed: run scripts/install-deps.sh",
            );
        assert!(
            o.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    etcdctl(&["user", "add", "root:rootpw"]);
    etcdctl(&["user", "add", "tandem:s3cret"]);
    etcdctl(&["role", "add", "tandem"]);
    etcdctl(&[
        "role",
        "grant-permission",
        "tandem",
        "--prefix=true",
        "readwrite",
        "/tandem/",
    ]);
    etcdctl(&["user", "grant-role", "tandem", "tandem"]);
    etcdctl(&["auth", "enable"]);
    let password = e.dir.path().join("password");
    std::fs::write(&password, "s3cret\n").unwrap();
    let wrong = e.dir.path().join("wrong");
    std::fs::write(&wrong, "guess\n").unwrap();
    let settings = |cert: bool, pw: &std::path::Path| tandem::config::Etcd {
        urls: vec![e.url.parse().unwrap()],
        ca: Some(tls.ca.clone()),
        cert: cert.then(|| (tls.cert.clone(), tls.key.clone())),
        user: Some(("tandem".into(), pw.to_path_buf())),
    };

    let (good, _s1) = with(&settings(true, &password), "node1").unwrap();
    good.want("app", true, 4, true);
    assert!(
        wait(10, || good.holds("app")),
        "the client with everything never got the lease"
    );
    assert!(wait(5, || good.newest("app") == 4));

    let (bad_pw, _s2) = with(&settings(true, &wrong), "node2").unwrap();
    let (no_cert, _s3) = with(&settings(false, &password), "node2").unwrap();
    bad_pw.want("app", true, 1, false);
    no_cert.want("app", true, 1, false);
    std::thread::sleep(Duration::from_millis(1500));
    for c in [&bad_pw, &no_cert] {
        assert!(!c.answering(), "etcd answered a client it must refuse");
        assert!(!c.holds("app"));
    }
    assert!(
        good.holds("app"),
        "the good client lost the lease meanwhile"
    );
    // A CA file that is not one is refused at once, naming the file.
    let mut broken = settings(true, &password);
    broken.ca = Some(password.clone());
    let err = with(&broken, "node3").err().unwrap();
    assert!(matches!(err, EtcdError::Config(_)), "{err}");
    assert!(
        err.to_string().contains(&password.display().to_string()),
        "{err}"
    );
}
