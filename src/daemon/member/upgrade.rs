//! `tandem upgrade`: this daemon hands its serving modules to the next
//! release in the same process, the application running throughout (see
//! `daemon::handover`); and the other side, a daemon going on from an image.
//!
//! The old daemon, once the new program answered that it reads this
//! image's version: stops reading every mount (requests under way finish,
//! new ones wait in the kernel), flushes each served module's changes to
//! the peer and ends its link, writes the image and execs the new program.
//! The new one opens the primary side's link again, and only once the peer
//! follows again (or the peer timeout passed) reads the mounts again: the
//! applications saw a pause. A new program that cannot go on gives the
//! sessions back to the old one; one that dies leaves them to the guard,
//! and the peer takes over as after any failure.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{Managed, ThisNode};
use crate::control::Response;
use crate::daemon::handover::{self, GuardImage, Image, ModuleImage, Program};
use crate::fs::{CountingSink, MountConfig};

/// How long requests under way may take to finish before a hand-over.
const DRAIN: Duration = Duration::from_secs(5);

/// Hands every served module to `program`. Returns only if nothing was
/// handed over (why, for the operator); otherwise this process runs the new
/// program, or, failing that, the guard's cleanup follows its end.
pub(super) fn upgrade(
    node: &ThisNode,
    modules: &mut [Managed],
    program: &Path,
    reply: &mpsc::Sender<Response>,
) -> Response {
    let software = match handover::preflight(program) {
        Ok(s) => s,
        Err(e) => return Response::error(e.to_string()),
    };
    let previous = match handover::this_program() {
        Ok(fd) => fd,
        Err(e) => return Response::error(format!("opening this daemon's own program: {e}")),
    };
    let t0 = Instant::now();
    let served: Vec<usize> = (0..modules.len())
        .filter(|&i| !modules[i].mounts.is_empty())
        .collect();
    // Nothing is read from any mount from here on, or nothing is handed over.
    let mut frozen: Vec<(usize, usize)> = Vec::new();
    for &i in &served {
        for k in 0..modules[i].mounts.len() {
            if let Err(e) = modules[i].mounts[k].freeze(DRAIN) {
                for &(i, k) in &frozen {
                    modules[i].mounts[k].thaw();
                }
                return Response::error(format!("module {}: {e}", modules[i].cfg.name));
            }
            frozen.push((i, k));
        }
    }
    let drained = t0.elapsed();
    let mut waited = Vec::new();
    for &i in &served {
        let m = &mut modules[i];
        m.fence.armed.store(false, Ordering::SeqCst);
        *m.fence.rep.lock() = None;
        // What the drain and the modules before already waited counts
        // against the peer timeout.
        let within = node
            .settings
            .replication
            .peer_timeout
            .saturating_sub(t0.elapsed());
        m.flushed = m.close_primary(
            Some(within),
            true,
            "this daemon hands over to its next release",
        ) == Some(true);
        waited.push(t0.elapsed());
        m.sinks.clear();
    }
    for m in modules.iter() {
        for d in &m.base {
            let _ = d.log.flush();
        }
    }
    let guard = node.guard.lock().take().map(|g| {
        let (pipe, pid) = g.hand_over();
        GuardImage { pipe, pid }
    });
    let image = Image {
        protocol: handover::PROTOCOL.highest,
        software: crate::versions::SOFTWARE.into(),
        node: node.me.name.clone(),
        now_ms: node.now(),
        guard,
        previous: handover::leak(previous),
        previous_args: std::env::args_os()
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
        modules: served
            .iter()
            .zip(&waited)
            .map(|(&i, waited)| {
                let m = &mut modules[i];
                m.note(format!(
                    "handing over to tandem {software} ({})",
                    program.display()
                ));
                ModuleImage {
                    name: m.cfg.name.clone(),
                    machine: m.machine.clone(),
                    app_running: m.app_running,
                    flushed: m.flushed,
                    waited_ms: waited.as_millis() as u64,
                    roots: m.base.iter().map(|d| d.root.as_raw_fd()).collect(),
                    sessions: m.mounts.drain(..).map(|mt| mt.hand_over()).collect(),
                }
            })
            .collect(),
    };
    let fds = image.fds();
    let written = handover::keep_across_exec(&fds, true)
        .map_err(handover::HandoverError::Descriptors)
        .and_then(|()| handover::write(&image));
    let e = match written {
        Ok(memfd) => {
            let memfd = handover::leak(memfd);
            tracing::info!(
                "handing over to tandem {software} ({}): {} modules, requests drained in {} ms",
                program.display(),
                image.modules.len(),
                drained.as_millis()
            );
            let _ = reply.send(Response {
                ok: true,
                messages: vec![format!(
                    "handing over to tandem {software} ({}); requests drained in {} ms",
                    program.display(),
                    drained.as_millis()
                )],
                ..Response::default()
            });
            // Time for the answer to leave through the control socket (the
            // command polls the status anyway).
            std::thread::sleep(Duration::from_millis(5));
            let args = handover::arguments(memfd);
            let e = handover::exec(Program::Path(program), &args, None);
            tracing::error!("{e}; going on with this release");
            handover::exec(
                Program::Fd(image.previous),
                &args,
                Some((handover::BACK, &e.to_string())),
            )
        }
        Err(e) => e,
    };
    // The links are closed and the mounts handed out: this process cannot
    // serve on. Its end wakes the guard, which stops the application here;
    // the peer takes over.
    tracing::error!("hand-over failed: {e}; exiting so that the peer takes over");
    std::process::exit(crate::exit::EXIT_FAILURE as i32);
}

/// The program this daemon was started from, as it is on disk now (a
/// package upgrade replaced it under the same name).
pub(super) fn installed_program() -> Result<std::path::PathBuf, NoProgram> {
    let exe = std::env::current_exe().map_err(NoProgram)?;
    let text = exe.to_string_lossy();
    Ok(match text.strip_suffix(" (deleted)") {
        Some(p) => std::path::PathBuf::from(p),
        None => exe,
    })
}

/// This daemon's own program cannot be found.
#[derive(Debug, thiserror::Error)]
#[error("this daemon's program: {0}")]
pub(super) struct NoProgram(#[source] std::io::Error);

/// Why a module handed over could not serve again.
#[derive(Debug, thiserror::Error)]
pub(super) enum TakeOverError {
    #[error(transparent)]
    Primary(#[from] super::executor::PromoteError),
    #[error(transparent)]
    Session(#[from] crate::fs::ResumeError),
    #[error(transparent)]
    Clients(#[from] crate::failover::vip::VipError),
}

impl Managed {
    /// Serves again what the previous daemon handed over: the link to the
    /// peer first, then (once the peer follows, or after the peer timeout)
    /// the mounts, read again from where the previous daemon stopped.
    pub(super) fn take_over(
        &mut self,
        node: &ThisNode,
        image: &ModuleImage,
        until: Instant,
    ) -> Result<(), TakeOverError> {
        let t0 = Instant::now();
        let rep = self.open_primary(node, self.flushed)?;
        // No call waits on the peer longer than the peer timeout in all
        // (`until`, shared by the modules): a peer that did not confirm
        // before is not waited for again (it resyncs once it answers).
        let deadline = if image.flushed { until } else { Instant::now() };
        let mut followed = false;
        while Instant::now() < deadline {
            let st = rep.status();
            if st.peer == "connected" {
                followed = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        for (i, s) in image.sessions.iter().cloned().enumerate() {
            let sink = Arc::new(CountingSink::wrapping(rep.sink(i as u32)));
            // SAFETY: the image's descriptors were inherited for this, and
            // each session's are taken once.
            let m = unsafe { crate::fs::resume(s, sink.clone(), &MountConfig::default()) }?;
            self.mounts.push(m);
            self.sinks.push(sink);
        }
        if self.app_running {
            self.take_clients(node)?;
            if let Some(v) = self.vips.as_mut()
                && let Err(e) = v.announce(&node.stop)
            {
                self.note(format!("announcing the virtual addresses: {e}"));
            }
            node.health
                .set_serving(&self.cfg.name, self.machine.state.serving());
            self.checks.from = Instant::now();
        }
        self.note(format!(
            "took over from the previous daemon: serving again in {} ms{}",
            t0.elapsed().as_millis(),
            if followed {
                ", the peer following"
            } else {
                "; the peer did not follow in time (it resyncs)"
            }
        ));
        Ok(())
    }
}

/// Duplicates of the real directories' descriptors a module's image hands
/// over: the numbers themselves stay open until the take-over is done, so
/// that a start that fails before can give them back (see `fall_back`).
pub(super) fn roots(m: &ModuleImage) -> std::io::Result<Vec<OwnedFd>> {
    m.roots.iter().map(|&fd| handover::duplicate(fd)).collect()
}
