//! The hand-over of a serving daemon to its next release in the same
//! process (`tandem upgrade`): what the old daemon leaves the new one (an
//! [`Image`] in a memory file, and the descriptors it names, kept open
//! across `execve`), and the exec itself.
//!
//! Exec in place keeps the process id — the service manager and the guard
//! see one daemon throughout — and the kernel holds the applications'
//! requests while neither program reads the mounts. The image is a protocol
//! of its own: versioned like the others, and checked with the new program
//! (`tandem handover-check`) before anything stops.

use std::ffi::{CString, OsString};
use std::io::{Read, Seek, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cluster::machine::Machine;
use crate::fs::handover::SessionImage;
use crate::versions::Range;

/// The versions of the image this release reads and writes.
pub const PROTOCOL: Range = Range::new(1, 1);

/// The argument that tells a daemon to go on from an image.
pub const ARG: &str = "--handover-fd";

/// What the old daemon leaves the new one.
#[derive(Debug, Serialize, Deserialize)]
pub struct Image {
    /// The version of this image.
    pub protocol: u8,
    /// The release that wrote it.
    pub software: String,
    pub node: String,
    /// The old daemon's logical clock (ms since it started), continued.
    pub now_ms: u64,
    /// The guard process, kept: its pipe and its process id.
    pub guard: Option<GuardImage>,
    /// The old daemon's program, to go back to if the new one cannot go on,
    /// and its command line (without the image's descriptor).
    pub previous: RawFd,
    pub previous_args: Vec<String>,
    /// Modules served here, mounts and all.
    pub modules: Vec<ModuleImage>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct GuardImage {
    pub pipe: RawFd,
    pub pid: i32,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ModuleImage {
    pub name: String,
    pub machine: Machine,
    pub app_running: bool,
    /// The peer confirmed every change before the link closed: the new
    /// daemon's link tells it that the stream goes on.
    pub flushed: bool,
    /// How long the mounts had been frozen once this module's peer
    /// confirmed (ms): what is left of the peer timeout is all the new
    /// daemon waits for it.
    #[serde(default)]
    pub waited_ms: u64,
    /// The real directories, opened before they were mounted over.
    pub roots: Vec<RawFd>,
    pub sessions: Vec<SessionImage>,
}

impl Image {
    /// Every descriptor the image names.
    pub fn fds(&self) -> Vec<RawFd> {
        let mut out = vec![self.previous];
        out.extend(self.guard.as_ref().map(|g| g.pipe));
        for m in &self.modules {
            out.extend(&m.roots);
            for s in &m.sessions {
                out.extend(s.fds());
            }
        }
        out
    }
}

/// Why a hand-over could not go on.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("{path}: {source}")]
    Program {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} does not answer `tandem handover-check` ({why}): not a tandem that can take over"
    )]
    NotTandem { path: PathBuf, why: String },
    #[error(
        "{path} (tandem {software}) reads hand-overs {theirs}, this daemon writes {ours}: \
         upgrade in two steps, or restart the daemon (the application then moves to the peer)"
    )]
    Versions {
        path: PathBuf,
        software: String,
        ours: Range,
        theirs: Range,
    },
    #[error("the image: {0}")]
    Image(String),
    #[error("descriptors: {0}")]
    Descriptors(#[source] std::io::Error),
    #[error("exec {path}: {source}")]
    Exec {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What `tandem handover-check` prints: the program's release and the
/// versions of the image it reads.
#[derive(Debug, Serialize, Deserialize)]
pub struct Check {
    pub software: String,
    pub handover: Range,
}

/// `tandem handover-check`.
pub fn check_json() -> String {
    serde_json::to_string(&Check {
        software: crate::versions::SOFTWARE.to_string(),
        handover: PROTOCOL,
    })
    .expect("serialisable")
}

/// Asks `program` which image versions it reads; its release when it reads
/// this one.
pub fn preflight(program: &Path) -> Result<String, HandoverError> {
    let not = |why: String| HandoverError::NotTandem {
        path: program.to_path_buf(),
        why,
    };
    let meta = std::fs::metadata(program).map_err(|source| HandoverError::Program {
        path: program.to_path_buf(),
        source,
    })?;
    if !meta.is_file() {
        return Err(not("not a file".into()));
    }
    let mut child = std::process::Command::new(program)
        .arg("handover-check")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|source| HandoverError::Program {
            path: program.to_path_buf(),
            source,
        })?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(not("no answer within 10 s".into()));
            }
            Err(e) => return Err(not(e.to_string())),
        }
    };
    let mut out = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    if !status.success() {
        return Err(not(format!("exit status {status}")));
    }
    let c: Check = serde_json::from_str(out.trim()).map_err(|e| not(e.to_string()))?;
    if c.handover.shared(PROTOCOL).is_err() {
        return Err(HandoverError::Versions {
            path: program.to_path_buf(),
            software: c.software,
            ours: PROTOCOL,
            theirs: c.handover,
        });
    }
    Ok(c.software)
}

/// Writes the image to a memory file that survives `execve`.
pub fn write(image: &Image) -> Result<OwnedFd, HandoverError> {
    let name = CString::new("tandem-handover").expect("no NUL");
    // SAFETY: `name` is a valid C string living across the call; no flags:
    // the descriptor is meant to survive exec.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), 0) };
    if fd < 0 {
        return Err(HandoverError::Descriptors(std::io::Error::last_os_error()));
    }
    // SAFETY: just created, owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut f = std::fs::File::from(fd);
    serde_json::to_writer(&mut f, image).map_err(|e| HandoverError::Image(e.to_string()))?;
    f.flush().map_err(HandoverError::Descriptors)?;
    f.rewind().map_err(HandoverError::Descriptors)?;
    Ok(f.into())
}

/// Reads the image the previous daemon left in descriptor `fd` (left open:
/// a daemon that cannot go on passes it back, see [`fall_back`]).
pub fn read(fd: RawFd) -> Result<Image, HandoverError> {
    use std::os::unix::fs::FileExt;
    // SAFETY: F_GETFD only reads flags.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(HandoverError::Image(format!("descriptor {fd} is not open")));
    }
    // SAFETY: borrowed for the reads below only, never closed here.
    let f = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f
            .read_at(&mut buf, bytes.len() as u64)
            .map_err(|e| HandoverError::Image(e.to_string()))?;
        if n == 0 {
            break;
        }
        bytes.extend_from_slice(&buf[..n]);
    }
    let image: Image =
        serde_json::from_slice(&bytes).map_err(|e| HandoverError::Image(e.to_string()))?;
    if PROTOCOL
        .shared(Range::new(image.protocol, image.protocol))
        .is_err()
    {
        return Err(HandoverError::Image(format!(
            "written in version {} by tandem {}; this release reads {PROTOCOL}",
            image.protocol, image.software
        )));
    }
    Ok(image)
}

/// Set in the environment of a previous program taken back: it does not
/// fall back again, and says why it was taken back.
pub const BACK: &str = "TANDEM_HANDOVER_BACK";

/// This program cannot go on from `image`: the previous one takes its
/// sessions back (with the same command line and image). Returns only if
/// that is impossible — this is already the previous program, or its exec
/// failed — with why.
pub fn fall_back(image: &Image, image_fd: RawFd, why: &str) -> HandoverError {
    if std::env::var_os(BACK).is_some() {
        return HandoverError::Image(format!("taken back and still failing: {why}"));
    }
    tracing::error!(
        "cannot go on from the previous daemon's sessions ({why}): giving them back to it"
    );
    eprintln!(
        "tandem: cannot go on from the previous daemon's sessions ({why}): giving them back to it"
    );
    let args = with_image(image.previous_args.iter().map(OsString::from), image_fd);
    exec(Program::Fd(image.previous), &args, Some((BACK, why)))
}

pub use crate::fs::handover::{duplicate, keep_across_exec};

/// This daemon's command line with the image's descriptor in place of any
/// earlier one.
pub fn arguments(image_fd: RawFd) -> Vec<OsString> {
    with_image(std::env::args_os(), image_fd)
}

/// `args` with the image's descriptor in place of any earlier one.
pub fn with_image(args: impl IntoIterator<Item = OsString>, image_fd: RawFd) -> Vec<OsString> {
    let given = args;
    let mut args: Vec<OsString> = Vec::new();
    let mut skip = false;
    for a in given {
        if skip {
            skip = false;
            continue;
        }
        if a == ARG {
            skip = true;
            continue;
        }
        args.push(a);
    }
    args.push(ARG.into());
    args.push(image_fd.to_string().into());
    args
}

/// Replaces this process with `program` (a path, or a descriptor of the
/// program with `fd`), with one variable of the environment `set`; returns
/// only on failure.
pub fn exec(program: Program<'_>, args: &[OsString], set: Option<(&str, &str)>) -> HandoverError {
    let cargs: Vec<CString> = args
        .iter()
        .map(|a| CString::new(a.as_bytes()).expect("arguments have no NUL"))
        .collect();
    let mut argv: Vec<*const libc::c_char> = cargs.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let set = set.map(|(k, v)| (OsString::from(k), OsString::from(v)));
    let cenv: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| set.as_ref().is_none_or(|(sk, _)| sk != k))
        .chain(set.clone())
        .map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).expect("environment has no NUL")
        })
        .collect();
    let mut envp: Vec<*const libc::c_char> = cenv.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    let path = match program {
        Program::Path(p) => {
            let c = CString::new(p.as_os_str().as_bytes()).expect("path has no NUL");
            // SAFETY: every pointer is a NUL-terminated string that lives
            // across the call, and both arrays end with a null pointer.
            unsafe { libc::execve(c.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
            p.to_path_buf()
        }
        Program::Fd(fd) => {
            // SAFETY: as above; `fd` is an open descriptor of a program.
            unsafe { libc::fexecve(fd, argv.as_ptr(), envp.as_ptr()) };
            PathBuf::from(format!("descriptor {fd}"))
        }
    };
    HandoverError::Exec {
        path,
        source: std::io::Error::last_os_error(),
    }
}

pub enum Program<'a> {
    Path(&'a Path),
    Fd(RawFd),
}

/// A descriptor of the running program, to go back to.
pub fn this_program() -> std::io::Result<OwnedFd> {
    Ok(std::fs::File::open("/proc/self/exe")?.into())
}

/// Keeps the raw number of a descriptor that must outlive this process image.
pub fn leak(fd: OwnedFd) -> RawFd {
    let n = fd.as_raw_fd();
    std::mem::forget(fd);
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_carries_one_image_descriptor() {
        let args = arguments(7);
        assert_eq!(args.iter().filter(|a| *a == ARG).count(), 1);
        assert_eq!(args.last().unwrap(), "7");
    }

    #[test]
    fn an_image_round_trips_through_a_memory_file() {
        let image = Image {
            protocol: 1,
            software: "x".into(),
            node: "a".into(),
            now_ms: 1234,
            guard: None,
            previous: 3,
            previous_args: vec![],
            modules: vec![],
        };
        let fd = write(&image).unwrap();
        let back = read(fd.as_raw_fd()).unwrap();
        assert_eq!(back.now_ms, 1234);
        assert_eq!(back.node, "a");
    }

    #[test]
    fn an_image_of_another_version_is_refused() {
        let image = Image {
            protocol: 9,
            software: "9.0".into(),
            node: "a".into(),
            now_ms: 0,
            guard: None,
            previous: 3,
            previous_args: vec![],
            modules: vec![],
        };
        let fd = write(&image).unwrap();
        let e = read(fd.as_raw_fd()).unwrap_err().to_string();
        assert!(e.contains("version 9"), "{e}");
    }
}
