//! The README's first command, end to end: `scripts/demo.sh` keeps a real
//! Podman container available on two servers (network namespaces) through
//! the vendor's four steps. The demo checks after each step that no
//! acknowledged write is missing, that the container runs on exactly one
//! server and that the virtual IP answers from it, and runs `tandem verify`;
//! this test runs it with the binary under test and checks that it passed and
//! left nothing behind — also when interrupted.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Instant;

fn demo() -> Command {
    let mut c = Command::new("bash");
    c.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/demo.sh"))
        .env("TANDEM_DEMO_BIN", common::tandem_bin())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// What a demo run made that could outlive it: its directory, mounts below
/// it, namespaces named after its process, processes running from it.
fn leftovers(pid: u32, base: &str) -> Vec<String> {
    let mut out = Vec::new();
    if !base.is_empty() && std::path::Path::new(base).exists() {
        out.push(format!("{base} exists"));
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    out.extend(
        mounts
            .lines()
            .filter(|l| !base.is_empty() && l.contains(base))
            .map(|l| format!("mount {l}")),
    );
    let ns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    out.extend(
        String::from_utf8_lossy(&ns.stdout)
            .lines()
            .filter(|l| l.starts_with(&format!("tdm{pid}")))
            .map(|l| format!("namespace {l}")),
    );
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(p.path().join("cmdline"))
            && !base.is_empty()
            && String::from_utf8_lossy(&cmd).contains(base)
        {
            out.push(format!("process {}", String::from_utf8_lossy(&cmd)));
        }
    }
    out
}

/// Runs the demo; returns its output lines as they come, its directory,
/// and its exit status. With `interrupt_at`, sends SIGINT once a line
/// containing it is printed.
fn run(interrupt_at: Option<&str>) -> (u32, String, Vec<String>, std::process::ExitStatus) {
    let mut child = demo().spawn().unwrap();
    let pid = child.id();
    let err = child.stderr.take().unwrap();
    let errors = std::thread::spawn(move || {
        BufReader::new(err)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let mut lines = Vec::new();
    let mut base = String::new();
    for line in BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
    {
        eprintln!("demo: {line}");
        if let Some(b) = line.strip_prefix("working in ") {
            base = b.trim().to_string();
        }
        if interrupt_at.is_some_and(|s| line.contains(s)) {
            // SAFETY: kill takes no pointer; `pid` is the demo's, our child, not reaped until the
            // wait below.
            unsafe { libc::kill(pid as i32, libc::SIGINT) };
        }
        lines.push(line);
    }
    let status = child.wait().unwrap();
    for e in errors.join().unwrap() {
        eprintln!("demo stderr: {e}");
        lines.push(e);
    }
    (pid, base, lines, status)
}

#[test]
fn the_demo_keeps_a_real_container_available_through_the_four_steps() {
    common::require_fuse();
    // Interrupted in the middle (Ctrl-C): everything it made is gone.
    let (pid, base, _, status) = run(Some("step 2:"));
    assert!(!status.success(), "an interrupted demo exited 0");
    assert!(!base.is_empty(), "the demo did not say where it works");
    let left = leftovers(pid, &base);
    assert!(left.is_empty(), "left after Ctrl-C: {left:#?}");

    let started = Instant::now();
    let (pid, base, lines, status) = run(None);
    let text = lines.join("\n");
    assert!(status.success(), "the demo failed:\n{text}");
    assert!(text.contains("all steps succeeded"), "{text}");
    // A container that exits at once: two restarts in place, then server 2.
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("moved to server 2") && l.contains("after 2 restarts")),
        "{text}"
    );
    for step in ["step 1:", "step 2:", "step 3:", "step 4:"] {
        assert!(text.contains(step), "{step} missing:\n{text}");
    }
    // The checks ran after every step (and once more after verify).
    let checked = lines.iter().filter(|l| l.starts_with("checked:")).count();
    assert!(checked >= 6, "{checked} checks:\n{text}");
    assert!(text.contains("identical"), "verify:\n{text}");
    assert!(text.contains("resync shipped"), "{text}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("the container runs on server 2") && l.contains(" ms")),
        "{text}"
    );
    let left = leftovers(pid, &base);
    assert!(left.is_empty(), "left after the demo: {left:#?}");
    eprintln!("demo took {:?}", started.elapsed());
}
