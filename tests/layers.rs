//! The modules keep to their layers: no two depend on each other, directly or
//! through others, at the top level or inside `replication/`
//! (`scripts/layers.py`, which CI runs through this test).

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
