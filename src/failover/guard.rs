//! The guard: a small process the daemon starts and keeps told, over a pipe,
//! what this node serves. When the daemon dies without saying goodbye (kill
//! -9, a crash, the OOM killer), the kernel closes the pipe; the guard wakes
//! at once, runs `stop_prim` for every module that was served here and takes
//! the dead mounts away — so a dead daemon never leaves a serving node next to
//! the twin that takes over.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

use std::os::unix::process::CommandExt;

use serde::{Deserialize, Serialize};

use super::scripts::{self, Context};

/// What to undo for one served module.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Duty {
    pub module: String,
    pub stop_prim: Option<PathBuf>,
    pub node: String,
    pub peer: String,
    pub dirs: Vec<PathBuf>,
    pub timeout_ms: u64,
    /// Virtual addresses this node holds (or is about to) for the module.
    #[serde(default)]
    pub vips: Vec<super::vip::Taken>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Note {
    Duties(Vec<Duty>),
    /// The daemon ends cleanly: nothing to do.
    Bye,
}

pub struct Guard {
    pipe: std::io::PipeWriter,
    /// `None` for a guard an earlier program of this process started (a
    /// hand-over): still this process's child, waited for by its id.
    child: Option<Child>,
    pid: i32,
    last: Option<Vec<Duty>>,
}

impl Guard {
    /// Starts `tandem guard` in a process group of its own (a signal meant
    /// for the daemon's group does not reach it).
    pub fn spawn() -> std::io::Result<Guard> {
        // Close-on-exec: no script or application the daemon starts holds the
        // write end, so the daemon's death alone closes it.
        let (rd, wr) = std::io::pipe()?;
        let exe = std::env::current_exe()?;
        let child = Command::new(exe)
            .arg("guard")
            .stdin(Stdio::from(rd))
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()?;
        Ok(Guard {
            pipe: wr,
            pid: child.id() as i32,
            child: Some(child),
            last: None,
        })
    }

    /// The guard an earlier program of this process started, as handed over:
    /// its pipe's write end and its process id.
    ///
    /// # Safety
    /// `pipe` was inherited for this purpose and nothing else owns it.
    pub unsafe fn adopt(pipe: std::os::fd::RawFd, pid: i32) -> Guard {
        use std::os::fd::FromRawFd;
        Guard {
            // SAFETY: the caller's contract.
            pipe: unsafe { std::io::PipeWriter::from_raw_fd(pipe) },
            child: None,
            pid,
            // Told again at once: the same duties, from this program.
            last: None,
        }
    }

    /// Its pipe and process id, for the next program of this process; the
    /// pipe stays open (the guard must not wake).
    pub fn hand_over(self) -> (std::os::fd::RawFd, i32) {
        use std::os::fd::IntoRawFd;
        let pid = self.pid;
        // Never waited for here: the next program does.
        std::mem::forget(self.child);
        (self.pipe.into_raw_fd(), pid)
    }

    /// Tells the guard what this node serves now (only when it changed).
    pub fn update(&mut self, duties: Vec<Duty>) {
        if self.last.as_ref() == Some(&duties) {
            return;
        }
        if let Err(e) = send(&mut self.pipe, &Note::Duties(duties.clone())) {
            tracing::error!("guard: {e}; a crash of this daemon would not be cleaned up");
        }
        self.last = Some(duties);
    }

    /// Adds (or replaces) one module's duty at once: told before the module
    /// is mounted and its application started, not after.
    pub fn include(&mut self, duty: Duty) {
        let mut all = self.last.clone().unwrap_or_default();
        all.retain(|d| d.module != duty.module);
        all.push(duty);
        self.update(all);
    }

    /// The daemon ends cleanly.
    pub fn bye(mut self) {
        let _ = send(&mut self.pipe, &Note::Bye);
        drop(self.pipe);
        match self.child.as_mut() {
            Some(c) => {
                let _ = c.wait();
            }
            None => {
                let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(self.pid), None);
            }
        }
    }
}

fn send(w: &mut impl Write, n: &Note) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(n).expect("serialisable");
    line.push(b'\n');
    w.write_all(&line)
}

/// `tandem guard`: waits for the daemon's notes on stdin until it closes.
pub fn run() -> ExitCode {
    let mut duties: Vec<Duty> = Vec::new();
    let mut bye = false;
    let stdin = std::io::stdin();
    for line in BufReader::new(stdin.lock()).lines() {
        let Ok(line) = line else { break };
        match serde_json::from_str::<Note>(&line) {
            Ok(Note::Duties(d)) => duties = d,
            Ok(Note::Bye) => bye = true,
            Err(e) => eprintln!("tandem guard: ignoring a bad note: {e}"),
        }
    }
    if bye || duties.is_empty() {
        return ExitCode::SUCCESS;
    }
    eprintln!(
        "tandem guard: the daemon died while serving {}: stopping them here",
        duties
            .iter()
            .map(|d| d.module.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    // Clients first: the addresses go before anything else, so no client
    // reaches this node while the twin takes over.
    for d in &duties {
        for e in super::vip::remove_all(&d.vips) {
            eprintln!("tandem guard: {}: {e}", d.module);
        }
    }
    for d in &duties {
        clean(d);
    }
    ExitCode::SUCCESS
}

fn clean(d: &Duty) {
    if let Some(script) = &d.stop_prim {
        let ctx = Context::new(&d.module, "prim", &d.node, &d.peer, &d.dirs);
        match scripts::run(
            "stop_prim",
            script,
            &ctx,
            Duration::from_millis(d.timeout_ms),
        ) {
            Ok(r) => eprintln!(
                "tandem guard: {}: stop_prim done in {} ms",
                d.module,
                r.took.as_millis()
            ),
            Err(e) => eprintln!("tandem guard: {}: {e}", d.module),
        }
    }
    for dir in &d.dirs {
        // The daemon served these mounts; they are dead now. Stacked ones too.
        let stacked = || {
            crate::fs::mounts::mounts()
                .map(|all| crate::fs::mounts::tandem_mounts_at(&all, dir))
                .unwrap_or(0)
        };
        while stacked() > 0 {
            if let Err(e) = crate::fs::mounts::detach(dir) {
                eprintln!(
                    "tandem guard: {}: unmounting {}: {e}",
                    d.module,
                    dir.display()
                );
                break;
            }
        }
    }
}
