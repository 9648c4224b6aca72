//! Health checks of the application where it is served: a process (pid file
//! or name), a TCP connect, an HTTP status, a script, an interface, the
//! witness. Each runs on its own thread every `interval` while the module is
//! served here and checks are not suspended; a failure is reported to the
//! cluster manager, which restarts the application locally up to `restarts`
//! times in `window`, then hands the module to the peer.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::config::{Check, Checker, ProcessMatch};

use super::scripts;

/// Runs one check once. Err says what failed, for the module's log.
pub fn probe(
    check: &Check,
    timeout: Duration,
    ctx: &scripts::Context,
    witness_ok: &dyn Fn() -> bool,
) -> Result<(), String> {
    match check {
        Check::Process(ProcessMatch::Pidfile(p)) => pidfile_alive(p),
        Check::Process(ProcessMatch::Name(n)) => {
            if process_named(n) {
                Ok(())
            } else {
                Err(format!("no process named {n:?}"))
            }
        }
        Check::Tcp(hp) => connect(&hp.host.to_string(), hp.port, timeout)
            .map(drop)
            .map_err(|e| format!("tcp {hp}: {e}")),
        Check::Http { url, expect_status } => {
            if url.https {
                return Err(format!(
                    "http check of https://{}:{}{}: https is not checked by this version",
                    url.host, url.port, url.path
                ));
            }
            let got = http_status(&url.host.to_string(), url.port, &url.path, timeout)
                .map_err(|e| format!("http://{}:{}{}: {e}", url.host, url.port, url.path))?;
            if got == *expect_status {
                Ok(())
            } else {
                Err(format!(
                    "http://{}:{}{}: status {got}, expected {expect_status}",
                    url.host, url.port, url.path
                ))
            }
        }
        Check::Script(p) => scripts::run("check", p, ctx, timeout).map(drop),
        Check::Interface(name) => {
            let state = std::fs::read_to_string(format!("/sys/class/net/{name}/operstate"))
                .map_err(|e| format!("interface {name}: {e}"))?;
            match state.trim() {
                "up" | "unknown" => Ok(()),
                s => Err(format!("interface {name} is {s}")),
            }
        }
        Check::Witness => {
            if witness_ok() {
                Ok(())
            } else {
                Err("the witness does not answer".into())
            }
        }
    }
}

fn pidfile_alive(p: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(p).map_err(|e| format!("pid file {}: {e}", p.display()))?;
    let pid: i32 = text
        .trim()
        .parse()
        .map_err(|_| format!("pid file {}: {:?} is not a pid", p.display(), text.trim()))?;
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
        Err(format!("process {pid} from {} is not running", p.display()))
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

fn http_status(host: &str, port: u16, path: &str, timeout: Duration) -> std::io::Result<u16> {
    let mut s = connect(host, port, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    // One write: a server may answer (and close) after the request line.
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: tandem-check\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes())?;
    let mut head = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        let k = s.read(&mut head[n..])?;
        if k == 0 {
            break;
        }
        n += k;
    }
    let line = String::from_utf8_lossy(&head[..n]);
    line.split_whitespace()
        .nth(1)
        .filter(|_| line.starts_with("HTTP/"))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {line:?}")))
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
    stop.thread(format!("check-{module}"), move || {
        while !stop2.sleep(c.interval) {
            if !active.load(Ordering::Relaxed) {
                continue;
            }
            if let Err(why) = probe(&c.check, c.timeout, &ctx, &*witness_ok) {
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

    fn ctx() -> scripts::Context {
        scripts::Context {
            module: "app".into(),
            role: "prim",
            node: "node1".into(),
            peer: "node2".into(),
            dirs: String::new(),
        }
    }

    fn run(c: &Check) -> Result<(), String> {
        probe(c, Duration::from_millis(500), &ctx(), &|| true)
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
        assert!(e.contains("not running"), "{e}");
        std::fs::write(&p, "garbage").unwrap();
        assert!(
            run(&Check::Process(ProcessMatch::Pidfile(p)))
                .unwrap_err()
                .contains("not a pid")
        );
        let me = std::fs::read_to_string("/proc/self/comm").unwrap();
        assert!(run(&Check::Process(ProcessMatch::Name(me.trim().into()))).is_ok());
        assert!(
            run(&Check::Process(ProcessMatch::Name(
                "no-such-process-x".into()
            )))
            .is_err()
        );
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
        };
        assert!(run(&http("/ok")).is_ok());
        let e = run(&http("/busy")).unwrap_err();
        assert!(e.contains("status 503, expected 200"), "{e}");
        let free = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert!(
            run(&Check::Tcp(HostPort {
                host: host.clone(),
                port: free
            }))
            .is_err()
        );
        let e = run(&Check::Http {
            url: HttpUrl {
                https: false,
                host,
                port: free,
                path: "/".into(),
            },
            expect_status: 200,
        })
        .unwrap_err();
        assert!(e.contains(&format!("http://127.0.0.1:{free}/")), "{e}");
    }

    #[test]
    fn script_interface_and_witness_checks() {
        assert!(run(&Check::Interface("lo".into())).is_ok());
        assert!(run(&Check::Interface("nosuchif0".into())).is_err());
        assert!(
            probe(&Check::Witness, Duration::from_millis(10), &ctx(), &|| {
                false
            })
            .is_err()
        );
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("check.sh");
        std::fs::write(&p, "#!/bin/sh\nexit 1\n").unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        assert!(run(&Check::Script(p.clone())).is_err());
        std::fs::write(&p, "#!/bin/sh\nexit 0\n").unwrap();
        assert!(run(&Check::Script(p)).is_ok());
    }
}
