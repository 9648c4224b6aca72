//! Runs a module's application scripts (`start_prim`, `stop_prim`, …) with a
//! timeout, the module's context in the environment, and the output kept
//! for the module's log. A script that hangs is killed with its children.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What a script is run with.
#[derive(Clone, Debug)]
pub struct Context {
    pub module: String,
    /// `prim` or `second`.
    pub role: &'static str,
    pub node: String,
    pub peer: String,
    /// The module's directories, separated by ':'.
    pub dirs: String,
}

impl Context {
    pub fn new(module: &str, role: &'static str, node: &str, peer: &str, dirs: &[PathBuf]) -> Self {
        Context {
            module: module.into(),
            role,
            node: node.into(),
            peer: peer.into(),
            dirs: dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(":"),
        }
    }
}

/// Why a script did not succeed; the text names the script and its path.
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    #[error("{what} {}: cannot run: {source}", path.display())]
    CannotRun {
        what: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {}: killed after its timeout of {} s", path.display(), timeout.as_secs_f64())]
    TimedOut {
        what: String,
        path: PathBuf,
        timeout: Duration,
    },
    #[error("{what} {}: {source}", path.display())]
    Wait {
        what: String,
        path: PathBuf,
        source: std::io::Error,
    },
    /// It ran and exited with an error: `said` is the last line it wrote.
    #[error("{what} {} failed ({status}){}", path.display(), said.as_ref().map_or(String::new(), |l| format!(": {l}")))]
    Failed {
        what: String,
        path: PathBuf,
        status: std::process::ExitStatus,
        said: Option<String>,
    },
}

#[derive(Debug)]
pub struct Ran {
    pub output: String,
    pub took: Duration,
}

/// Runs `script` (named `what` in messages) and waits up to `timeout`.
/// Ok only for exit status 0.
pub fn run(
    what: &str,
    script: &Path,
    ctx: &Context,
    timeout: Duration,
) -> Result<Ran, ScriptError> {
    let started = Instant::now();
    let mut cmd = Command::new(script);
    cmd.env("TANDEM_MODULE", &ctx.module)
        .env("TANDEM_ROLE", ctx.role)
        .env("TANDEM_NODE", &ctx.node)
        .env("TANDEM_PEER", &ctx.peer)
        .env("TANDEM_DIRS", &ctx.dirs)
        .env("TANDEM_SCRIPT", what)
        // The service manager's socket and watchdog are the daemon's: an
        // application (podman, say) must not report to them in its name.
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout kills whatever it started too.
        .process_group(0);
    let mut child = cmd.spawn().map_err(|source| ScriptError::CannotRun {
        what: what.into(),
        path: script.into(),
        source,
    })?;
    // Both pipes are read here while the script runs, so a chatty script
    // never blocks on a full pipe; an application it leaves running in the
    // background (holding the pipes) holds up the answer by 200 ms at most.
    let mut pipes: Vec<OwnedFd> = [
        child.stdout.take().map(OwnedFd::from),
        child.stderr.take().map(OwnedFd::from),
    ]
    .into_iter()
    .flatten()
    .collect();
    for p in &pipes {
        // SAFETY: F_GETFL and F_SETFL take no pointer; `p` is a pipe owned by `pipes`, open for
        // both calls.
        unsafe {
            let fl = libc::fcntl(p.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(p.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
    }
    let mut buf = Vec::new();
    let pid = child.id() as i32;
    let mut status = None;
    let mut grace = None;
    loop {
        read_ready(&mut pipes, &mut buf, Duration::from_millis(10));
        if status.is_none() {
            status = match child.try_wait() {
                Ok(Some(s)) => Some(Ok(s)),
                Ok(None) if started.elapsed() >= timeout => {
                    // SAFETY: kill takes no pointer; the script leads its own process group
                    // (process_group(0)), and the child is not reaped yet, so the group id -pid is
                    // still its.
                    unsafe { libc::kill(-pid, libc::SIGKILL) };
                    let _ = child.wait();
                    Some(Err(ScriptError::TimedOut {
                        what: what.into(),
                        path: script.into(),
                        timeout,
                    }))
                }
                Ok(None) => None,
                Err(source) => Some(Err(ScriptError::Wait {
                    what: what.into(),
                    path: script.into(),
                    source,
                })),
            };
        }
        if status.is_some() {
            let until = *grace.get_or_insert_with(|| Instant::now() + Duration::from_millis(200));
            if pipes.is_empty() || Instant::now() >= until {
                break;
            }
        }
    }
    let status = status.expect("the loop ends with a status");
    let output = String::from_utf8_lossy(&buf).into_owned();
    let took = started.elapsed();
    match status? {
        s if s.success() => Ok(Ran { output, took }),
        status => Err(ScriptError::Failed {
            what: what.into(),
            path: script.into(),
            status,
            said: (!output.trim().is_empty()).then(|| last_line(&output).to_string()),
        }),
    }
}

/// Output kept of one run (the log shows its last line).
const MAX_OUTPUT: usize = 1 << 20;

/// Waits up to `wait` for output, reads what is there, and drops the pipes
/// that reached their end.
fn read_ready(pipes: &mut Vec<OwnedFd>, buf: &mut Vec<u8>, wait: Duration) {
    let mut fds: Vec<libc::pollfd> = pipes
        .iter()
        .map(|p| libc::pollfd {
            fd: p.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `fds` is a live Vec of fds.len() pollfds, each naming a pipe of `pipes`, which stay
    // open across the call.
    let n = unsafe {
        libc::poll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            wait.as_millis() as i32,
        )
    };
    if n <= 0 {
        return;
    }
    let mut ended = Vec::new();
    for (i, f) in fds.iter().enumerate() {
        if f.revents == 0 {
            continue;
        }
        let mut chunk = [0u8; 4096];
        // A bounded read per call: a script that writes without end is
        // still killed at its timeout.
        for _ in 0..16 {
            // SAFETY: `chunk` is a live array passed with its length; `f.fd` is a pipe of `pipes`,
            // dropped only after this loop.
            let r = unsafe { libc::read(f.fd, chunk.as_mut_ptr().cast(), chunk.len()) };
            if r > 0 {
                if buf.len() < MAX_OUTPUT {
                    buf.extend_from_slice(&chunk[..r as usize]);
                }
                continue;
            }
            let e = std::io::Error::last_os_error().kind();
            if r < 0 && e == std::io::ErrorKind::Interrupted {
                continue;
            }
            if r == 0 || e != std::io::ErrorKind::WouldBlock {
                ended.push(i);
            }
            break;
        }
    }
    for i in ended.into_iter().rev() {
        pipes.remove(i);
    }
}

fn last_line(s: &str) -> &str {
    s.trim().lines().last().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &Path, name: &str, body: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    fn ctx() -> Context {
        Context {
            module: "app".into(),
            role: "prim",
            node: "node1".into(),
            peer: "node2".into(),
            dirs: "/srv/a:/srv/b".into(),
        }
    }

    #[test]
    fn scripts_see_their_context_and_their_output_is_kept() {
        let d = tempfile::tempdir().unwrap();
        let s = script(
            d.path(),
            "start",
            "echo \"$TANDEM_MODULE $TANDEM_ROLE $TANDEM_NODE $TANDEM_PEER $TANDEM_DIRS $TANDEM_SCRIPT\"; echo oops >&2",
        );
        let r = run("start_prim", &s, &ctx(), Duration::from_secs(5)).unwrap();
        assert!(
            r.output
                .contains("app prim node1 node2 /srv/a:/srv/b start_prim"),
            "{}",
            r.output
        );
        assert!(r.output.contains("oops"));
    }

    #[test]
    fn a_failing_script_reports_its_status_and_last_words() {
        let d = tempfile::tempdir().unwrap();
        let s = script(d.path(), "bad", "echo 'port 80 in use'; exit 3");
        let e = run("start_prim", &s, &ctx(), Duration::from_secs(5))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("exit status: 3") && e.contains("port 80 in use"),
            "{e}"
        );
        let e = run(
            "stop_prim",
            &d.path().join("missing"),
            &ctx(),
            Duration::from_secs(5),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("missing") && e.contains("cannot run"), "{e}");
    }

    #[test]
    fn a_script_that_leaves_the_application_running_returns_at_once() {
        let d = tempfile::tempdir().unwrap();
        let pidfile = d.path().join("app.pid");
        let s = script(
            d.path(),
            "start",
            &format!("echo starting; sleep 30 & echo $! > {}", pidfile.display()),
        );
        let t = Instant::now();
        let r = run("start_prim", &s, &ctx(), Duration::from_secs(10)).unwrap();
        assert!(t.elapsed() < Duration::from_secs(3));
        assert!(r.output.contains("starting"));
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // SAFETY: kill takes no pointer, and signal 0 only asks whether `pid` exists.
        assert_eq!(
            unsafe { libc::kill(pid, 0) },
            0,
            "the application keeps running"
        );
        // SAFETY: kill takes no pointer; `pid` is the background sleep the script started, alive
        // just above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }

    #[test]
    fn a_hanging_script_is_killed_at_its_timeout_with_its_children() {
        let d = tempfile::tempdir().unwrap();
        let pidfile = d.path().join("child.pid");
        let s = script(
            d.path(),
            "hang",
            &format!("sleep 300 & echo $! > {}; wait", pidfile.display()),
        );
        let t = Instant::now();
        let e = run("start_prim", &s, &ctx(), Duration::from_millis(300))
            .unwrap_err()
            .to_string();
        assert!(e.contains("timeout"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        // Gone, or a zombie waiting for whoever adopted it to reap it.
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let alive = !state.is_empty()
            && state
                .rsplit(')')
                .next()
                .is_some_and(|rest| !rest.trim_start().starts_with('Z'));
        assert!(!alive, "the script's child must be gone: {state}");
    }

    #[test]
    fn a_script_that_writes_without_end_is_killed_and_what_it_said_is_bounded() {
        let d = tempfile::tempdir().unwrap();
        let s = script(d.path(), "chatty", "yes tandem");
        let t = Instant::now();
        let e = run("start_prim", &s, &ctx(), Duration::from_millis(300))
            .unwrap_err()
            .to_string();
        assert!(e.contains("timeout"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));
        // Much more than a pipe holds goes through whole, both streams.
        let s = script(
            d.path(),
            "long",
            "head -c 300000 /dev/zero | tr '\\0' a; echo; echo end >&2",
        );
        let r = run("start_prim", &s, &ctx(), Duration::from_secs(10)).unwrap();
        assert_eq!(r.output.matches('a').count(), 300_000);
        assert!(r.output.contains("end"));
    }
}
