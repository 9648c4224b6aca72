//! The load-balancer templates under cloud/ and the configuration examples
//! under config/ agree with the code: the health port and path they probe
//! are the ones the daemon serves by default, and every example passes
//! `tandem config check`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn read(p: &str) -> String {
    std::fs::read_to_string(root().join(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// `/primary/` from the documented `/primary/{module}`.
fn primary_prefix() -> &'static str {
    lb_health::PRIMARY_PATH.trim_end_matches("{module}")
}

#[test]
fn every_provider_template_probes_the_default_port_and_the_primary_path() {
    let port = lb_health::DEFAULT_PORT.to_string();
    for provider in ["aws", "azure", "gcp"] {
        let tf = read(&format!("cloud/{provider}/main.tf"));
        let readme = read(&format!("cloud/{provider}/README.md"));
        // The health port variable defaults to the daemon's lb_port.
        let var = tf
            .split("variable \"health_port\"")
            .nth(1)
            .unwrap_or_else(|| panic!("{provider}: no health_port variable"));
        let default = var
            .lines()
            .find_map(|l| l.trim().strip_prefix("default"))
            .and_then(|l| l.trim().strip_prefix('='))
            .map(str::trim)
            .unwrap_or_else(|| panic!("{provider}: health_port has no default"));
        assert_eq!(default, port, "{provider}: health_port");
        assert!(
            tf.contains(&format!("\"{}${{var.module_name}}\"", primary_prefix())),
            "{provider}: the check's path is not {}<module>",
            primary_prefix()
        );
        assert!(
            tf.contains("var.health_port"),
            "{provider}: the port is not used"
        );
        assert!(
            readme.contains(&port),
            "{provider}: README does not name {port}"
        );
        assert!(readme.contains(primary_prefix()), "{provider}: README path");
    }
    let cfg = read("cloud/haproxy/haproxy.cfg");
    assert!(cfg.contains(&format!("port {port}")), "haproxy: check port");
    assert!(
        cfg.contains(&format!("uri {}app", primary_prefix())),
        "haproxy: check path"
    );
    assert!(cfg.contains("inter 500ms") && cfg.contains("fall 2") && cfg.contains("rise 1"));
    let overview = read("cloud/README.md");
    assert!(overview.contains(&port) && overview.contains(primary_prefix()));
}

#[test]
fn haproxy_accepts_its_configuration() {
    let o = Command::new("haproxy")
        .arg("-c")
        .arg("-f")
        .arg(root().join("cloud/haproxy/haproxy.cfg"))
        .output()
        .expect("haproxy (Debian's haproxy) must be installed: run scripts/install-deps.sh");
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn the_configuration_examples_pass_the_check() {
    for (file, failover) in [
        ("config/vip.toml", "failover vip 192.168.1.100/24"),
        (
            "config/cloud-lb.toml",
            &*format!("load balancer health on port {}", lb_health::DEFAULT_PORT),
        ),
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_tandem"))
            .args(["config", "check", "--skip-dir-checks"])
            .arg(root().join(file))
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "{file}: {out}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(out.starts_with("OK"), "{file}: {out}");
        assert!(out.contains(failover), "{file}: {out}");
    }
}
