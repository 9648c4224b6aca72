//! The modules keep to their layers: no two depend on each other, directly or
//! through others, at the top level or inside `replication/`
//! (`scripts/layers.py`, which CI runs through this test). And every `unsafe`
//! of the workspace says why it is sound (`scripts/unsafe-check.py`, run here
//! too).

use std::path::Path;
use std::process::Command;

fn layers(src: &Path) -> std::process::Output {
    Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/layers.py"))
        .env("TANDEM_SRC", src)
        .output()
        .expect("python3 runs")
}

#[test]
fn no_module_depends_on_one_that_depends_on_it() {
    let o = layers(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("top-level modules: no circle"), "{out}");
    assert!(out.contains("replication/: no circle"), "{out}");
    // The check sees the dependencies it is about.
    assert!(out.contains("daemon -> "), "{out}");
    assert!(out.contains("session -> "), "{out}");
}

#[test]
fn a_circle_is_found_and_named() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path();
    let write = |p: &str, text: &str| {
        let p = src.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    write("lib.rs", "pub mod a;\npub mod b;\npub mod replication;\n");
    write("a.rs", "use crate::b::Thing;\n");
    write("b/mod.rs", "pub fn f() { crate::a::g() }\n");
    write("replication/mod.rs", "pub mod x;\npub mod y;\n");
    write("replication/x.rs", "use super::y::Y;\n");
    write(
        "replication/y.rs",
        "use super::{x::X, z};\n#[cfg(test)]\nmod tests { use crate::a::A; }\n",
    );
    let o = layers(src);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success(), "{out}");
    assert!(
        out.contains("circle between top-level modules: a <-> b"),
        "{out}"
    );
    assert!(
        out.contains("circle between replication/: x <-> y"),
        "{out}"
    );
    // Unit tests may reach anywhere: no circle replication <-> a.
    assert!(!out.contains("replication <->"), "{out}");
}

fn unsafe_check(root: &Path) -> std::process::Output {
    Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/unsafe-check.py"
        ))
        .env("TANDEM_ROOT", root)
        .output()
        .expect("python3 runs")
}

#[test]
fn every_unsafe_says_why_it_is_sound() {
    let o = unsafe_check(Path::new(env!("CARGO_MANIFEST_DIR")));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "unsafe without a SAFETY comment (path:line):\n{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.contains("unsafe sites, each with its SAFETY comment"),
        "{out}"
    );
}

#[test]
fn an_unsafe_without_its_comment_is_found_and_named() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    let write = |p: &str, text: &str| {
        let p = root.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    write(
        "src/lib.rs",
        r#"#![deny(unsafe_code)]
// A comment may say unsafe, and so may "an unsafe string" or r"a raw unsafe one".
fn bare() -> i32 {
    unsafe { libc::getpid() }
}

fn explained() -> i32 {
    // SAFETY: getpid takes no pointer and cannot fail,
    // whatever the state of the process.
    unsafe { libc::getpid() }
}

fn continued() {
    assert_eq!(
        // SAFETY: kill takes no pointer; signal 0 only asks.
        unsafe { libc::kill(1, 0) },
        0
    );
    // SAFETY: the statement's comment may stand above its first line.
    let _n = std::cmp::max(
        unsafe { libc::getpid() },
        0,
    );
    let _far = std::cmp::max(
        0,
        unsafe { libc::getpid() },
    );
}

/// Reads `p`.
///
/// # Safety
///
/// `p` must be valid for reads.
#[inline]
unsafe fn documented(p: *const u8) -> u8 {
    // SAFETY: the caller promises `p` is valid for reads.
    unsafe { *p }
}

// A lifetime is no char literal: 'a
fn lifetime<'a>(s: &'a str) -> char {
    let _ = 'x';
    s.chars().next().unwrap_or('\'')
}

unsafe fn undocumented() {}

struct P(*mut u8);
unsafe impl Send for P {}

// SAFETY: P owns the pointer alone.
unsafe impl Sync for P {}
"#,
    );
    write(
        "tests/t.rs",
        "#[test]\nfn t() {\n\n    // SAFETY: a blank line parts the comment from it.\n\n    unsafe { libc::getpid() };\n}\n",
    );
    write("target/debug/build/x.rs", "fn f() { unsafe { g() } }\n");
    let o = unsafe_check(root);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success(), "{out}");
    let found: Vec<&str> = out.lines().filter(|l| l.contains(".rs:")).collect();
    assert_eq!(
        found,
        [
            "src/lib.rs:4",
            "src/lib.rs:26",
            "src/lib.rs:47",
            "src/lib.rs:50",
            "tests/t.rs:6"
        ],
        "{out}"
    );
    assert!(out.contains("5 of 11 unsafe sites"), "{out}");
}
