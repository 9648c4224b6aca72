//! An older release of tandem, built from a commit of this repository and
//! kept in the build directory: the other half of a mixed-version cluster.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The build directory this test binary came from (`…/release/deps/x` →
/// `…`).
fn target_dir() -> PathBuf {
    Path::new(super::tandem_bin())
        .ancestors()
        .nth(2)
        .expect("the binary lies in TARGET/release")
        .to_path_buf()
}

fn run(cmd: &mut Command, what: &str) {
    let o = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        o.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The `tandem` binary of `commit`, built once (its sources from `git
/// archive`, its own build directory under this one) and reused after.
pub fn release(commit: &str) -> PathBuf {
    let base = target_dir().join(format!("older-{commit}"));
    let bin = base.join("target/release/tandem");
    let lock = std::fs::File::create(target_dir().join(format!("older-{commit}.lock"))).unwrap();
    // One build at a time, whichever test process asks first.
    let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("lock");
    if bin.exists() {
        return bin;
    }
    let t0 = Instant::now();
    let src = base.join("src");
    let _ = std::fs::remove_dir_all(&src);
    std::fs::create_dir_all(&src).unwrap();
    let repo = env!("CARGO_MANIFEST_DIR");
    let archive = Command::new("git")
        .args(["-C", repo, "archive", "--format=tar", commit])
        .output()
        .expect("git");
    assert!(
        archive.status.success(),
        "git archive {commit}: {} (the test needs this repository's history)",
        String::from_utf8_lossy(&archive.stderr)
    );
    let tar = base.join("src.tar");
    std::fs::write(&tar, &archive.stdout).unwrap();
    run(
        Command::new("tar").arg("-xf").arg(&tar).arg("-C").arg(&src),
        "unpacking the older release",
    );
    run(
        Command::new(option_env!("CARGO").unwrap_or("cargo"))
            .args(["build", "--release", "--bin", "tandem"])
            .current_dir(&src)
            .env("CARGO_TARGET_DIR", base.join("target")),
        &format!("building tandem at {commit}"),
    );
    eprintln!(
        "built tandem at {commit} in {:.0} s",
        t0.elapsed().as_secs_f64()
    );
    bin
}
