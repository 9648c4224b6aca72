//! Health checks of the application where it is served: a process (pid file
//! or name), a TCP connect, an HTTP status, a script, an interface, the
//! witness. Each runs on its own thread every `interval` while the module is
//! served here and checks are not suspended; a failure is reported to the
//! cluster manager, which restarts the application locally up to `restarts`
//! times in `window`, then hands the module to the peer.

use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::config::{Check, Checker, HostPort, HttpUrl, ProcessMatch};

use super::scripts;

/// Why a check failed, as the module's log says it: each names what it
/// looked at.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The `http` check's runtime could not be made.
    #[error("http check: {0}")]
    HttpRuntime(#[source] std::io::Error),
    /// The `http` check's client could not be made (its CA, say).
    #[error("http check: {0}")]
    HttpClient(crate::webclient::ClientError),
    #[error("pid file {path}: {source}")]
    PidFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pid file {path}: {text:?} is not a pid")]
    NotAPid { path: PathBuf, text: String },
    #[error("process {pid} from {path} is not running")]
    NotRunning { pid: i32, path: PathBuf },
    #[error("no process named {0:?}")]
    NoProcess(String),
    #[error("tcp {target}: {source}")]
    Tcp {
        target: HostPort,
        #[source]
        source: std::io::Error,
    },
    /// No answer from the server (said as `webclient::describe` says it).
    #[error("{url}: {}", crate::webclient::describe(.source))]
    Http {
        url: HttpUrl,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url}: status {got}, expected {expected}")]
    Status {
        url: HttpUrl,
        got: u16,
        expected: u16,
    },
    #[error(transparent)]
    Script(#[from] crate::failover::scripts::ScriptError),
    #[error("interface {name}: {source}")]
    InterfaceUnread {
        name: String,
        #[source]
        source: std::io::Error,
    },
    /// The interface is not up (its operstate).
    #[error("interface {name} is {state}")]
    InterfaceDown { name: String, state: String },
    #[error("the witness does not answer")]
    Witness,
}

/// What an `http` check asks with: a client, and a runtime of its own on
/// the checker's thread (no thread more).
pub struct Http {
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
}

/// Where the system keeps the CAs it trusts (Debian's ca-certificates).
const SYSTEM_CAS: &str = "/etc/ssl/certs/ca-certificates.crt";

impl Http {
    /// `ca`: what https servers are checked against (else the system's).
    pub fn new(ca: Option<&Path>) -> Result<Http, CheckError> {
        let system = Path::new(SYSTEM_CAS);
        let ca = ca.or(system.exists().then_some(system));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(CheckError::HttpRuntime)?;
        let client = crate::webclient::client(ca, None).map_err(CheckError::HttpClient)?;
        Ok(Http { rt, client })
    }

    /// The status of a GET of `url`, within `timeout`.
    fn status(&self, url: &HttpUrl, timeout: Duration) -> Result<u16, CheckError> {
        // Made inside the runtime: the request's timer needs it.
        let answer = self
            .rt
            .block_on(async {
                self.client
                    .get(url.to_string())
                    .header("user-agent", "tandem-check")
                    .timeout(timeout)
                    .send()
                    .await
            })
            .map_err(|source| CheckError::Http {
                url: url.clone(),
                source,
            })?;
        Ok(answer.status().as_u16())
    }
}

/// Runs one check once. Err says what failed, for the module's log. `http`
/// is the checker's own for `http` checks (made here if none).
pub fn probe(
    check: &Check,
    timeout: Duration,
    ctx: &scripts::Context,
    witness_ok: &dyn Fn() -> bool,
    http: Option<&Http>,
) -> Result<(), CheckError> {
    match check {
        Check::Process(ProcessMatch::Pidfile(p)) => pidfile_alive(p),
        Check::Process(ProcessMatch::Name(n)) => {
            if process_named(n) {
                Ok(())
            } else {
                Err(CheckError::NoProcess(n.clone()))
            }
        }
        Check::Tcp(hp) => connect(&hp.host.to_string(), hp.port, timeout)
            .map(drop)
            .map_err(|source| CheckError::Tcp {
                target: hp.clone(),
                source,
            }),
        Check::Http {
            url,
            expect_status,
            ca,
        } => {
            let owned;
            let http = match http {
                Some(h) => h,
                None => {
                    owned = Http::new(ca.as_deref())?;
                    &owned
                }
            };
            let got = http.status(url, timeout)?;
            if got == *expect_status {
                Ok(())
            } else {
                Err(CheckError::Status {
                    url: url.clone(),
                    got,
                    expected: *expect_status,
                })
            }
        }
        Check::Script(p) => scripts::run("check", p, ctx, timeout)
            .map(drop)
            .map_err(CheckError::Script),
        Check::Interface(name) => {
            let state = std::fs::read_to_string(format!("/sys/class/net/{name}/operstate"))
                .map_err(|source| CheckError::InterfaceUnread {
                    name: name.clone(),
                    source,
                })?;
            match state.trim() {
                "up" | "unknown" => Ok(()),
                s => Err(CheckError::InterfaceDown {
                    name: name.clone(),
                    state: s.to_string(),
                }),
            }
        }
        Check::Witness => {
            if witness_ok() {
                Ok(())
            } else {
                Err(CheckError::Witness)
            }
        }
    }
}

fn pidfile_alive(p: &Path) -> Result<(), CheckError> {
    let text = std::fs::read_to_string(p).map_err(|source| CheckError::PidFile {
        path: p.to_path_buf(),
        source,
    })?;
    let pid: i32 = text.trim().parse().map_err(|_| CheckError::NotAPid {
        path: p.to_path_buf(),
        text: text.trim().to_string(),
    })?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Gone, or a zombie: dead either way.
    let alive = !stat.is_empty()
        && stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z'));
    if pid > 0 && alive {
        Ok(())
    } else {
        Err(CheckError::NotRunning {
            pid,
            path: p.to_path_buf(),
        })
    }
}

fn process_named(name: &str) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.filter_map(Result::ok).any(|e| {
        e.file_name()
            .to_str()
            .is_some_and(|s| s.bytes().all(|b| b.is_ascii_digit()))
            && std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == name)
    })
}

fn connect(host: &str, port: u16, timeout: Duration) -> std::io::Result<TcpStream> {
    let mut last = std::io::Error::other("no address");
    for addr in (host, port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// One checker's thread: probes while `active`, reports failures by `fail`,
/// until `stop`.
pub fn spawn(
    module: String,
    c: Checker,
    ctx: scripts::Context,
    active: Arc<AtomicBool>,
    witness_ok: Arc<dyn Fn() -> bool + Send + Sync>,
    fail: impl Fn(String) + Send + 'static,
    stop: &crate::stop::Stop,
) -> std::io::Result<()> {
    let stop2 = stop.clone();
    let http = match &c.check {
        Check::Http { ca, .. } => Some(Http::new(ca.as_deref()).map_err(std::io::Error::other)?),
        _ => None,
    };
    stop.thread(format!("check-{module}"), move || {
        while !stop2.sleep(c.interval) {
            if !active.load(Ordering::Relaxed) {
                continue;
            }
            if let Err(why) = probe(&c.check, c.timeout, &ctx, &*witness_ok, http.as_ref()) {
                // Checked again in case serving ended meanwhile.
                if active.load(Ordering::Relaxed) {
                    fail(format!("{} check: {why}", c.check.kind()));
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Host, HostPort, HttpUrl};
    use std::io::{Read, Write};

    fn ctx() -> scripts::Context {
        scripts::Context {
            module: "app".into(),
            role: "prim",
            node: "node1".into(),
            peer: "node2".into(),
            dirs: String::new(),
        }
    }

    fn run(c: &Check) -> Result<(), CheckError> {
        probe(c, Duration::from_millis(500), &ctx(), &|| true, None)
    }

    #[test]
    fn process_checks_follow_the_pid_file_and_the_name() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("app.pid");
        std::fs::write(&p, std::process::id().to_string()).unwrap();
        assert!(run(&Check::Process(ProcessMatch::Pidfile(p.clone()))).is_ok());
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        std::fs::write(&p, pid.to_string()).unwrap();
        let e = run(&Check::Process(ProcessMatch::Pidfile(p.clone()))).unwrap_err();
        assert!(matches!(e, CheckError::NotRunning { .. }), "{e}");
        assert_eq!(
            e.to_string(),
            format!("process {pid} from {} is not running", p.display())
        );
        std::fs::write(&p, "garbage").unwrap();
        let e = run(&Check::Process(ProcessMatch::Pidfile(p.clone()))).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("pid file {}: \"garbage\" is not a pid", p.display())
        );
        let me = std::fs::read_to_string("/proc/self/comm").unwrap();
        assert!(run(&Check::Process(ProcessMatch::Name(me.trim().into()))).is_ok());
        let e = run(&Check::Process(ProcessMatch::Name(
            "no-such-process-x".into(),
        )))
        .unwrap_err();
        assert_eq!(e.to_string(), "no process named \"no-such-process-x\"");
    }

    #[test]
    fn tcp_and_http_checks_talk_to_a_real_server() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let mut s = s.unwrap();
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]);
                let status = if req.starts_with("GET /ok ") {
                    "200 OK"
                } else {
                    "503 Busy"
                };
                let _ = write!(s, "HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
            }
        });
        let host = Host::Ip("127.0.0.1".parse().unwrap());
        assert!(
            run(&Check::Tcp(HostPort {
                host: host.clone(),
                port
            }))
            .is_ok()
        );
        let http = |path: &str| Check::Http {
            url: HttpUrl {
                https: false,
                host: host.clone(),
                port,
                path: path.into(),
            },
            expect_status: 200,
            ca: None,
        };
        assert!(run(&http("/ok")).is_ok());
        let e = run(&http("/busy")).unwrap_err();
        assert!(matches!(e, CheckError::Status { got: 503, .. }), "{e}");
        assert_eq!(
            e.to_string(),
            format!("http://127.0.0.1:{port}/busy: status 503, expected 200")
        );
        let free = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = run(&Check::Tcp(HostPort {
            host: host.clone(),
            port: free,
        }))
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("tcp 127.0.0.1:{free}: ")),
            "{e}"
        );
        let e = run(&Check::Http {
            url: HttpUrl {
                https: false,
                host,
                port: free,
                path: "/".into(),
            },
            expect_status: 200,
            ca: None,
        })
        .unwrap_err();
        assert!(matches!(e, CheckError::Http { .. }), "{e}");
        assert!(
            e.to_string()
                .starts_with(&format!("http://127.0.0.1:{free}/: ")),
            "{e}"
        );
    }

    #[test]
    fn script_interface_and_witness_checks() {
        assert!(run(&Check::Interface("lo".into())).is_ok());
        assert!(matches!(
            run(&Check::Interface("nosuchif0".into())),
            Err(CheckError::InterfaceUnread { .. })
        ));
        assert!(matches!(
            probe(
                &Check::Witness,
                Duration::from_millis(10),
                &ctx(),
                &|| false,
                None
            ),
            Err(CheckError::Witness)
        ));
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("check.sh");
        std::fs::write(&p, "#!/bin/sh\nexit 1\n").unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        assert!(matches!(
            run(&Check::Script(p.clone())),
            Err(CheckError::Script(_))
        ));
        std::fs::write(&p, "#!/bin/sh\nexit 0\n").unwrap();
        assert!(run(&Check::Script(p)).is_ok());
    }

    /// An https server on IPv6 loopback, its certificate from a CA of the
    /// test's own: checked with that CA, refused without it.
    #[test]
    fn https_checks_verify_the_server_against_the_ca_given() {
        use std::io::Read as _;
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["::1".to_string()]).unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
        let l = std::net::TcpListener::bind("[::1]:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let server = Arc::new(server);
        std::thread::spawn(move || {
            for tcp in l.incoming() {
                let Ok(mut tcp) = tcp else { continue };
                let mut conn = rustls::ServerConnection::new(server.clone()).unwrap();
                let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
                let mut buf = [0u8; 2048];
                let Ok(n) = tls.read(&mut buf) else { continue };
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                // The Host header keeps the brackets of an IPv6 address.
                let status = if req.contains(&format!("host: [::1]:{port}"))
                    || req.contains(&format!("Host: [::1]:{port}"))
                {
                    "200 OK"
                } else {
                    "400 Bad Host"
                };
                let _ = std::io::Write::write_all(
                    &mut tls,
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                );
                conn.send_close_notify();
                let _ = conn.complete_io(&mut tcp);
            }
        });
        let check = |ca: Option<std::path::PathBuf>| Check::Http {
            url: format!("https://[::1]:{port}/health").parse().unwrap(),
            expect_status: 200,
            ca,
        };
        run(&check(Some(ca_file))).unwrap();
        let e = run(&check(None)).unwrap_err().to_string();
        assert!(e.contains(&format!("https://[::1]:{port}/health")), "{e}");
        assert!(e.to_lowercase().contains("certificate"), "{e}");
    }
}
