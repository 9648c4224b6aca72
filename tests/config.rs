//! The configuration file as an operator meets it: the reference file, defaults, and
//! one rejected example per rule, each checked for the field path and line it reports.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tandem::config::{
    self, Ack, Check, Compression, ConfigError, ConfigErrors, Failover, Host, ProcessMatch, Quorum,
    Settings,
};

const MINIMAL: &str = r#"[cluster]
name = "c"

[[node]]
name = "a"
address = "10.0.0.1"

[[node]]
name = "b"
address = "10.0.0.2"

[[module]]
name = "m"
dirs = ["/srv/m"]
vip = ["192.168.1.100/24"]
"#;

const ORIGIN: &str = "/etc/tandem/test.toml";

fn reference_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/tandem.toml")
}

/// Parses without the checks on disk, which most rules do not involve.
fn parse(text: &str) -> Result<Settings, ConfigErrors> {
    config::parse(text, Path::new(ORIGIN), config::DirChecks::Off)
}

fn errors(text: &str) -> Vec<ConfigError> {
    match parse(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => {
            assert_eq!(e.file, Path::new(ORIGIN));
            e.errors
        }
    }
}

fn render(errors: &[ConfigError]) -> String {
    errors.iter().map(|e| format!("  {e}\n")).collect()
}

/// 1-based line of the only line of `text` that contains `needle`.
fn line(text: &str, needle: &str) -> usize {
    let hits: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(
        hits.len(),
        1,
        "{needle:?} must be on exactly one line of:\n{text}"
    );
    hits[0]
}

/// Asserts that `text` is rejected with exactly one error, on `field`, located on the
/// line containing `at` (or on no line), whose message contains `says`.
#[track_caller]
fn rejects(text: &str, field: &str, at: Option<&str>, says: &str) {
    rejects_at(text, field, at.map(|needle| line(text, needle)), says);
}

#[track_caller]
fn rejects_at(text: &str, field: &str, line: Option<usize>, says: &str) {
    let errors = errors(text);
    assert_eq!(
        errors.len(),
        1,
        "expected one error, got:\n{}in:\n{text}",
        render(&errors)
    );
    let e = &errors[0];
    assert_eq!(e.field, field, "{e}");
    assert_eq!(e.line, line, "{e}");
    assert!(e.message.contains(says), "{e:?} should say {says:?}");
}

/// MINIMAL with `extra` lines added to `[cluster]`.
fn cluster(extra: &str) -> String {
    edit("name = \"c\"\n", &format!("name = \"c\"\n{extra}\n"))
}

/// MINIMAL with `extra` lines added to the second node.
fn node_b(extra: &str) -> String {
    edit(
        "address = \"10.0.0.2\"\n",
        &format!("address = \"10.0.0.2\"\n{extra}\n"),
    )
}

/// MINIMAL with `extra` appended: lines of module `m`, or further sections.
fn append(extra: &str) -> String {
    format!("{MINIMAL}{extra}\n")
}

fn edit(from: &str, to: &str) -> String {
    assert!(MINIMAL.contains(from), "{from:?}");
    MINIMAL.replacen(from, to, 1)
}

// ---------------------------------------------------------------------------------------
// Whole files

#[test]
fn reference_file_passes_without_dir_checks() {
    let s =
        config::load(&reference_path(), config::DirChecks::Off).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.cluster.name, "podman-ha");
    assert!(matches!(&s.cluster.quorum, Quorum::Witness(w) if w.to_string() == "10.0.0.3:7402"));
    assert_eq!(s.cluster.preferred_primary.as_deref(), Some("node1"));
    assert_eq!(s.nodes[1].heartbeat.len(), 2);
    assert_eq!(s.modules.len(), 2);
    let podman = s.module("podman").unwrap();
    assert_eq!(podman.checkers.len(), 6);
    assert!(
        matches!(&podman.failover, Failover::Vip { addresses, interface: Some(i), .. } if addresses.len() == 2 && i == "eth0")
    );
    assert_eq!(
        s.module("reports").unwrap().failover,
        Failover::Lb {
            port: 9453,
            tls: false
        }
    );
}

#[test]
fn reference_file_on_a_node_checks_its_directories() {
    match config::load(&reference_path(), tandem::cli::on_disk()) {
        Ok(_) => {} // only if this machine happens to have every directory
        Err(e) => {
            assert!(!e.errors.is_empty());
            for error in &e.errors {
                assert!(error.field.contains(".dirs["), "{error}");
                assert!(
                    error.message.contains("does not exist")
                        || error.message.contains("not a directory")
                );
            }
        }
    }
}

#[test]
fn reference_file_with_existing_directories_passes_dir_checks() {
    let text = std::fs::read_to_string(reference_path()).unwrap();
    let settings = parse(&text).unwrap_or_else(|e| panic!("{e}"));
    let root = tempfile::tempdir().unwrap();
    let mut rewritten = text.clone();
    for dir in settings.modules.iter().flat_map(|m| &m.dirs) {
        let real = root.path().join(dir.strip_prefix("/").unwrap());
        std::fs::create_dir_all(&real).unwrap();
        let quoted = format!("{:?}", dir.display().to_string());
        assert!(rewritten.contains(&quoted), "{quoted}");
        rewritten = rewritten.replace(&quoted, &format!("{:?}", real.display().to_string()));
    }
    let file = root.path().join("tandem.toml");
    std::fs::write(&file, &rewritten).unwrap();
    let s = config::load(&file, tandem::cli::on_disk()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        s.modules[0].dirs[0],
        root.path().join("var/lib/containers/storage/volumes/app")
    );
}

/// The reference file is also the example the Debian package installs as
/// /etc/tandem/tandem.toml and claims to explain every setting: every section the
/// parser accepts (src/config/decode.rs) and every field of its tables
/// (src/config/raw.rs) must be in it, set or shown commented out. Read from the
/// sources, so a new setting without its explanation fails here.
#[test]
fn reference_file_shows_every_section_and_field() {
    let src = |p: &str| std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(p));
    let reference = std::fs::read_to_string(reference_path()).unwrap();
    let decode = src("src/config/decode.rs").unwrap();
    let sections = decode
        .lines()
        .find_map(|l| l.strip_prefix("const SECTIONS: &str = \""))
        .and_then(|l| l.strip_suffix("\";"))
        .expect("decode.rs lists the sections it accepts");
    let mut missing = Vec::new();
    for name in sections.split(", ") {
        let tables = [format!("[{name}]"), format!("[[{name}]]")];
        if !reference.lines().any(|l| tables.iter().any(|t| l == t)) {
            missing.push(name.to_string());
        }
    }
    // Fields of every table (the Raw* structs) but the file's root (RawConfig,
    // whose fields are the sections above); a field holding a table of its own
    // is a sub-table header.
    let raw = src("src/config/raw.rs").unwrap();
    let mut table = None;
    for line in raw.lines() {
        if let Some(rest) = line.strip_prefix("pub(super) struct ") {
            table = rest
                .strip_suffix(" {")
                .filter(|t| t.starts_with("Raw") && *t != "RawConfig");
            continue;
        }
        let Some(t) = table else { continue };
        if line == "}" {
            table = None;
            continue;
        }
        let Some((field, ty)) = line
            .trim()
            .strip_prefix("pub ")
            .and_then(|f| f.split_once(": "))
        else {
            continue;
        };
        let shown = if ty.contains("Raw") {
            reference
                .lines()
                .any(|l| l.ends_with(&format!(".{field}]")) || l.ends_with(&format!(".{field}]]")))
        } else {
            reference.lines().any(|l| {
                let l = l.trim_start_matches(['#', ' ']);
                l.starts_with(&format!("{field} = "))
            })
        };
        if !shown {
            missing.push(format!("{t}.{field}"));
        }
    }
    assert!(
        missing.is_empty(),
        "config/tandem.toml lacks {missing:?}: show each with what it does and its default"
    );
}

#[test]
fn minimal_file_gets_the_documented_defaults() {
    let s = parse(MINIMAL).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.cluster.quorum, Quorum::None);
    assert_eq!(s.cluster.preferred_primary, None);
    assert_eq!(s.cluster.maintenance_alert_after, Duration::from_secs(3600));
    assert_eq!(s.nodes[0].address, Host::Ip("10.0.0.1".parse().unwrap()));
    assert_eq!(s.nodes[0].heartbeat, vec![s.nodes[0].address.clone()]);
    assert_eq!(s.heartbeat.port, 7400);
    assert_eq!(s.heartbeat.interval, Duration::from_millis(200));
    assert_eq!(s.heartbeat.timeout, Duration::from_millis(3000));
    assert_eq!(s.replication.port, 7401);
    assert_eq!(s.replication.peer_timeout, Duration::from_millis(5000));
    assert_eq!(s.replication.compression, Compression::Auto);
    assert_eq!(s.replication.chunk_size, 64 * 1024);
    assert_eq!(s.replication.async_max_lag, 64 << 20);
    assert_eq!(s.daemon.state_dir, Path::new("/var/lib/tandem"));
    assert_eq!(s.daemon.socket, Path::new("/run/tandem/tandem.sock"));
    assert_eq!(s.daemon.tls_dir, Path::new("/etc/tandem/tls"));
    let m = &s.modules[0];
    assert_eq!(m.ack, Ack::Durable);
    assert!(m.exclude.is_empty() && m.checkers.is_empty());
    assert_eq!(m.scripts.timeout, Duration::from_secs(60));
    assert_eq!(m.scripts.start_prim, None);
}

#[test]
fn checker_defaults_and_kinds() {
    let text = append(
        r#"[[module.checker]]
kind = "http"
url = "https://app.lan:8443/ready"
[[module.checker]]
kind = "process"
name = "conmon""#,
    );
    let s = parse(&text).unwrap_or_else(|e| panic!("{e}"));
    let checkers = &s.modules[0].checkers;
    assert!(
        matches!(&checkers[0].check, Check::Http { url, expect_status: 200, .. } if url.port == 8443 && url.https)
    );
    assert_eq!(checkers[0].interval, Duration::from_millis(1000));
    assert_eq!(checkers[0].timeout, Duration::from_millis(1000));
    assert_eq!(checkers[0].restarts, 3);
    assert_eq!(checkers[0].window, Duration::from_secs(300));
    assert_eq!(
        checkers[1].check,
        Check::Process(ProcessMatch::Name("conmon".into()))
    );
}

#[test]
fn lb_port_defaults_to_the_health_crates_port() {
    let text = edit("vip = [\"192.168.1.100/24\"]", "failover = \"lb\"");
    let s = parse(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        s.modules[0].failover,
        Failover::Lb {
            port: lb_health::DEFAULT_PORT,
            tls: false
        }
    );
}

#[test]
fn summary_names_what_matters() {
    let s = config::load(&reference_path(), config::DirChecks::Off).unwrap();
    let summary = s.summary();
    for expected in [
        "podman-ha",
        "node1 at 10.0.0.1",
        "node2 at 10.0.0.2",
        "witness 10.0.0.3:7402",
        "every 200 ms",
        "3000 ms",
        "module podman: /var/lib/containers/storage/volumes/app, /srv/app/config",
        "ack durable",
        "vip 192.168.1.100/24, fd00::100/64 on eth0",
        "module reports: /srv/reports",
        "ack received",
        "port 9453",
    ] {
        assert!(
            summary.contains(expected),
            "{expected:?} missing from:\n{summary}"
        );
    }
    assert!(summary.lines().count() >= 8);
}

// ---------------------------------------------------------------------------------------
// Reading and decoding

#[test]
fn missing_file_names_the_file() {
    let path = Path::new("/nonexistent/tandem/x.toml");
    let e = config::load(path, tandem::cli::on_disk()).unwrap_err();
    assert_eq!(e.file, path);
    assert_eq!(e.errors.len(), 1);
    assert_eq!(e.errors[0].field, "");
    assert_eq!(e.errors[0].line, None);
    assert_eq!(
        e.errors[0].message,
        "cannot read /nonexistent/tandem/x.toml: No such file or directory"
    );
    assert!(
        e.to_string()
            .starts_with("/nonexistent/tandem/x.toml: cannot read"),
        "{e}"
    );
}

#[test]
fn unreadable_file_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let e = config::load(dir.path(), tandem::cli::on_disk()).unwrap_err(); // a directory, not a file
    assert_eq!(e.errors.len(), 1);
    assert!(
        e.errors[0]
            .message
            .starts_with(&format!("cannot read {}", dir.path().display()))
    );
}

#[test]
fn syntax_error_reports_its_line() {
    let text = edit("address = \"10.0.0.2\"", "address = \"10.0.0.2");
    let errors = errors(&text);
    assert_eq!(errors.len(), 1, "{}", render(&errors));
    assert_eq!(errors[0].line, Some(line(&text, "address = \"10.0.0.2")));

    let text = append("[heartbeat]\nport = = 3");
    let errors = self::errors(&text);
    assert_eq!(errors.len(), 1, "{}", render(&errors));
    assert_eq!(errors[0].line, Some(line(&text, "port = = 3")));
}

#[test]
fn unknown_fields_are_reported_with_their_path() {
    rejects(
        &node_b("adress = \"x\""),
        "node[1].adress",
        Some("adress"),
        "unknown field `adress`",
    );
    rejects(
        &append("[daemon]\nsock = \"/x\""),
        "daemon.sock",
        Some("sock ="),
        "unknown field",
    );
    rejects(
        &append("[module.scripts]\nstart = \"/x\""),
        "module[0].scripts.start",
        Some("start ="),
        "unknown field",
    );
    rejects(
        &append("[[module.checker]]\nkind = \"tcp\"\naddress = \"h:1\"\nevery = 3"),
        "module[0].checker[0].every",
        Some("every"),
        "unknown field",
    );
    rejects(
        &append("[witness]\nx = 1"),
        "witness",
        Some("[witness]"),
        "unknown section",
    );
}

#[test]
fn wrong_types_are_reported_with_their_path() {
    rejects(
        &append("[heartbeat]\nport = \"7400\""),
        "heartbeat.port",
        Some("port ="),
        "invalid type",
    );
    rejects(
        &append("exclude = \"*.tmp\""),
        "module[0].exclude",
        Some("exclude"),
        "invalid type",
    );
    rejects(
        &append("[replication]\nchunk_size_kib = 6.5"),
        "replication.chunk_size_kib",
        Some("6.5"),
        "invalid type",
    );
    rejects(
        &edit(
            "[[node]]\nname = \"a\"\naddress = \"10.0.0.1\"\n\n[[node]]",
            "[node]",
        ),
        "node",
        Some("[node]"),
        "[[node]]",
    );
}

#[test]
fn all_errors_are_reported_at_once() {
    let text = r#"[cluster]
name = "c"
quorum = "majority"

[[node]]
name = "a"
address = "10.0.0.1"

[[node]]
name = "b"
address = "10.0.0.300"

[heartbeat]
timeout_ms = 100

[daemon]
socket = "/run/t.sock"
colour = "blue"

[[module]]
name = "m"
dirs = ["srv/m"]
vip = ["192.168.1.100/24"]
"#;
    let errors = errors(text);
    let got: Vec<(&str, Option<usize>)> =
        errors.iter().map(|e| (e.field.as_str(), e.line)).collect();
    assert_eq!(
        got,
        [
            ("cluster.quorum", Some(3)),
            ("node[1].address", Some(11)),
            ("heartbeat.timeout_ms", Some(14)),
            ("daemon.colour", Some(18)),
            ("module[0].dirs[0]", Some(22)),
        ],
        "{}",
        render(&errors)
    );
}

#[test]
fn errors_display_as_file_line_field_message() {
    let text = append("[heartbeat]\nport = 0");
    let e = parse(&text).unwrap_err();
    let n = line(&text, "port = 0");
    assert_eq!(
        e.to_string(),
        format!("{ORIGIN}:{n}: heartbeat.port: must be between 1 and 65535 (got 0)")
    );
    let two = parse(&append("[heartbeat]\nport = 0\ninterval_ms = 1")).unwrap_err();
    assert_eq!(two.to_string().lines().count(), 2);
    assert!(
        two.to_string()
            .lines()
            .all(|l| l.starts_with(&format!("{ORIGIN}:")))
    );
}

// ---------------------------------------------------------------------------------------
// [cluster]

#[test]
fn cluster_name_rules() {
    rejects(
        &edit("name = \"c\"\n", ""),
        "cluster.name",
        Some("[cluster]"),
        "is required",
    );
    rejects(
        &edit("[cluster]\nname = \"c\"\n", ""),
        "cluster.name",
        None,
        "is required",
    );
    rejects(
        &edit("name = \"c\"", "name = \"my cluster\""),
        "cluster.name",
        Some("my cluster"),
        "1 to 64",
    );
    rejects(
        &edit("name = \"c\"", &format!("name = \"{}\"", "x".repeat(65))),
        "cluster.name",
        Some("xxx"),
        "1 to 64",
    );
}

#[test]
fn quorum_must_be_known() {
    rejects(
        &cluster("quorum = \"majority\""),
        "cluster.quorum",
        Some("majority"),
        "\"witness\"",
    );
}

#[test]
fn quorum_witness_needs_a_witness() {
    rejects(
        &cluster("quorum = \"witness\""),
        "cluster.witness",
        Some("quorum ="),
        "is required",
    );
    rejects(
        &cluster("quorum = \"witness\"\nwitness = \"10.0.0.3\""),
        "cluster.witness",
        Some("witness = "),
        "no port",
    );
    rejects(
        &cluster("quorum = \"witness\"\nwitness = \"fd00::3:7402\""),
        "cluster.witness",
        Some("witness = "),
        "brackets",
    );
    let ok = parse(&cluster(
        "quorum = \"witness\"\nwitness = \"[fd00::3]:7402\"",
    ))
    .unwrap();
    assert!(matches!(ok.cluster.quorum, Quorum::Witness(w) if w.port == 7402));
}

#[test]
fn quorum_ping_needs_addresses() {
    rejects(
        &cluster("quorum = \"ping\""),
        "cluster.ping",
        Some("quorum ="),
        "is required",
    );
    rejects(
        &cluster("quorum = \"ping\"\nping = []"),
        "cluster.ping",
        Some("ping = []"),
        "must not be empty",
    );
    rejects(
        &cluster("quorum = \"ping\"\nping = [\"10.0.0.254\", \"gateway\"]"),
        "cluster.ping[1]",
        Some("ping = "),
        "not an IP address",
    );
    let ok = parse(&cluster(
        "quorum = \"ping\"\nping = [\"10.0.0.254\", \"fd00::1\"]",
    ))
    .unwrap();
    assert_eq!(
        ok.cluster.quorum,
        Quorum::Ping(vec![
            "10.0.0.254".parse().unwrap(),
            "fd00::1".parse().unwrap()
        ])
    );
}

#[test]
fn a_module_prefers_one_of_the_nodes() {
    rejects(
        &append("preferred_primary = \"node9\""),
        "module[0].preferred_primary",
        Some("node9"),
        "is not a node",
    );
}

#[test]
fn quorum_etcd_needs_urls() {
    rejects(
        &cluster("quorum = \"etcd\""),
        "cluster.etcd",
        Some("quorum ="),
        "is required",
    );
    rejects(
        &cluster("quorum = \"etcd\"\netcd = [\"http://10.0.0.5:2379\",\n  \"10.0.0.6:2379\"]"),
        "cluster.etcd[1]",
        Some("10.0.0.6"),
        "http://",
    );
    rejects(
        &cluster("quorum = \"etcd\"\netcd = [\"https://10.0.0.5:2379\"]"),
        "cluster.etcd_ca",
        Some("https://10.0.0.5"),
        "is required with https:// endpoints",
    );
}

#[test]
fn etcd_over_tls_with_a_client_certificate_and_a_user() {
    let text = cluster(
        "quorum = \"etcd\"\netcd = [\"https://10.0.0.5:2379\", \"https://[fd00::5]:2379\"]\n\
         etcd_ca = \"/etc/tandem/etcd/ca.pem\"\netcd_cert = \"/etc/tandem/etcd/node.pem\"\n\
         etcd_key = \"/etc/tandem/etcd/node.key\"\netcd_user = \"tandem\"\n\
         etcd_password_file = \"/etc/tandem/etcd/password\"",
    );
    let s = parse(&text).unwrap_or_else(|e| panic!("{e}"));
    let tandem::config::Quorum::Etcd(e) = &s.cluster.quorum else {
        panic!("{:?}", s.cluster.quorum)
    };
    assert_eq!(e.urls.len(), 2);
    assert_eq!(
        e.ca.as_deref(),
        Some(std::path::Path::new("/etc/tandem/etcd/ca.pem"))
    );
    assert_eq!(
        e.cert,
        Some((
            "/etc/tandem/etcd/node.pem".into(),
            "/etc/tandem/etcd/node.key".into()
        ))
    );
    assert_eq!(
        e.user,
        Some(("tandem".into(), "/etc/tandem/etcd/password".into()))
    );
}

#[test]
fn etcd_tls_settings_come_in_pairs_and_match_the_scheme() {
    rejects(
        &cluster(
            "quorum = \"etcd\"\netcd = [\"https://a:2379\", \"http://b:2379\"]\netcd_ca = \"/ca.pem\"",
        ),
        "cluster.etcd",
        Some("https://a"),
        "mixes http:// and https://",
    );
    rejects(
        &cluster("quorum = \"etcd\"\netcd = [\"http://a:2379\"]\netcd_ca = \"/ca.pem\""),
        "cluster.etcd_ca",
        Some("/ca.pem"),
        "only used with https://",
    );
    rejects(
        &cluster(
            "quorum = \"etcd\"\netcd = [\"https://a:2379\"]\netcd_ca = \"/ca.pem\"\netcd_cert = \"/c.pem\"",
        ),
        "cluster.etcd_cert",
        Some("/c.pem"),
        "needs cluster.etcd_key too",
    );
    rejects(
        &cluster("quorum = \"etcd\"\netcd = [\"http://a:2379\"]\netcd_user = \"root\""),
        "cluster.etcd_user",
        Some("root"),
        "needs cluster.etcd_password_file too",
    );
    rejects(
        &cluster("quorum = \"witness\"\nwitness = \"w:1\"\netcd_ca = \"/ca.pem\""),
        "cluster.etcd_ca",
        Some("/ca.pem"),
        "only used with cluster.quorum = \"etcd\"",
    );
}

#[test]
fn quorum_settings_of_another_mode_are_refused() {
    rejects(
        &cluster("witness = \"10.0.0.3:7402\""),
        "cluster.witness",
        Some("witness ="),
        "only used with",
    );
    rejects(
        &cluster("quorum = \"witness\"\nwitness = \"w:1\"\nping = [\"10.0.0.254\"]"),
        "cluster.ping",
        Some("ping ="),
        "only used with cluster.quorum = \"ping\"",
    );
}

#[test]
fn maintenance_alert_after_is_a_positive_number_of_seconds() {
    let s = parse(&cluster("maintenance_alert_after_s = 600")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.cluster.maintenance_alert_after, Duration::from_secs(600));
    rejects(
        &cluster("maintenance_alert_after_s = 0"),
        "cluster.maintenance_alert_after_s",
        Some("maintenance_alert_after_s = 0"),
        "between 1 and 31536000 (got 0)",
    );
    rejects(
        &cluster("maintenance_alert_after_s = 99999999999"),
        "cluster.maintenance_alert_after_s",
        Some("99999999999"),
        "between 1 and 31536000",
    );
    rejects(
        &cluster("maintenance_alert_after_s = \"1h\""),
        "cluster.maintenance_alert_after_s",
        Some("\"1h\""),
        "expected i64",
    );
}

#[test]
fn preferred_primary_must_be_a_node() {
    rejects(
        &cluster("preferred_primary = \"node3\""),
        "cluster.preferred_primary",
        Some("node3"),
        "not a node",
    );
    assert_eq!(
        parse(&cluster("preferred_primary = \"b\""))
            .unwrap()
            .cluster
            .preferred_primary
            .as_deref(),
        Some("b")
    );
}

// ---------------------------------------------------------------------------------------
// [[node]]

#[test]
fn exactly_two_nodes() {
    let one = edit("[[node]]\nname = \"b\"\naddress = \"10.0.0.2\"\n", "");
    rejects(&one, "node", Some("[[node]]"), "exactly two");
    let three = node_b("\n[[node]]\nname = \"z\"\naddress = \"10.0.0.9\"");
    let errors = errors(&three);
    assert_eq!(errors.len(), 1, "{}", render(&errors));
    assert_eq!(
        (errors[0].field.as_str(), errors[0].line),
        ("node", Some(line(&three, "name = \"z\"") - 1))
    );
}

#[test]
fn node_fields_are_checked() {
    let second_header = line(MINIMAL, "name = \"b\"") - 1;
    rejects_at(
        &edit("name = \"b\"\n", ""),
        "node[1].name",
        Some(second_header),
        "is required",
    );
    rejects_at(
        &edit("address = \"10.0.0.2\"\n", ""),
        "node[1].address",
        Some(second_header),
        "is required",
    );
    rejects(
        &edit("name = \"b\"", "name = \"b/c\""),
        "node[1].name",
        Some("b/c"),
        "1 to 64",
    );
    rejects(
        &edit("name = \"b\"", "name = \"..\""),
        "node[1].name",
        Some("\"..\""),
        "not a usable name",
    );
    rejects_at(
        &edit("name = \"b\"", "name = \"a\""),
        "node[1].name",
        Some(second_header + 1),
        "is also node[0].name",
    );
    rejects(
        &edit("address = \"10.0.0.2\"", "address = \"10.0.0.256\""),
        "node[1].address",
        Some("10.0.0.256"),
        "neither",
    );
    let named = edit("address = \"10.0.0.2\"", "address = \"Node-B.lan\"");
    assert_eq!(
        parse(&named).unwrap().nodes[1].address,
        Host::Name("node-b.lan".into())
    );
    let v6 = edit("address = \"10.0.0.1\"", "address = \"fd00::1\"").replace("10.0.0.2", "fd00::2");
    assert_eq!(
        parse(&v6).unwrap().nodes[1].address,
        Host::Ip("fd00::2".parse().unwrap())
    );
}

#[test]
fn nodes_must_not_share_an_address() {
    let text = edit("address = \"10.0.0.2\"", "address = \"10.0.0.1\"");
    rejects_at(
        &text,
        "node[1].address",
        Some(line(MINIMAL, "10.0.0.2")),
        "is also node[0].address",
    );
}

#[test]
fn heartbeat_paths_are_ip_addresses() {
    rejects(
        &node_b("heartbeat = [\"10.0.0.2\", \"hb.lan\"]"),
        "node[1].heartbeat[1]",
        Some("hb.lan"),
        "not an IP address",
    );
    rejects(
        &node_b("heartbeat = []"),
        "node[1].heartbeat",
        Some("heartbeat = []"),
        "must not be empty",
    );
    rejects(
        &node_b("heartbeat = [\"10.0.0.2\", \"10.0.0.2\"]"),
        "node[1].heartbeat[1]",
        Some("heartbeat ="),
        "repeats node[1].heartbeat[0]",
    );
}

#[test]
fn heartbeat_paths_pair_up_between_nodes() {
    rejects(
        &node_b("heartbeat = [\"10.0.0.2\", \"192.168.10.2\"]"),
        "node[1].heartbeat",
        Some("heartbeat ="),
        "has 2 path(s) but node[0].heartbeat has 1",
    );
    rejects(
        &node_b("heartbeat = [\"fd00::2\"]"),
        "node[1].heartbeat[0]",
        Some("fd00::2"),
        "different IP families",
    );
    rejects(
        &node_b("heartbeat = [\"10.0.0.1\"]"),
        "node[1].heartbeat[0]",
        Some("heartbeat = [\"10.0.0.1\"]"),
        "is also node[0].address",
    );
    let two = edit(
        "address = \"10.0.0.1\"\n",
        "address = \"10.0.0.1\"\nheartbeat = [\"10.0.0.1\", \"192.168.10.1\"]\n",
    )
    .replace(
        "address = \"10.0.0.2\"\n",
        "address = \"10.0.0.2\"\nheartbeat = [\"10.0.0.2\", \"192.168.10.2\"]\n",
    );
    let s = parse(&two).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        s.nodes[1].heartbeat[1],
        Host::Ip("192.168.10.2".parse().unwrap())
    );
}

// ---------------------------------------------------------------------------------------
// [heartbeat], [replication], [daemon]

#[test]
fn heartbeat_ranges() {
    rejects(
        &append("[heartbeat]\nport = 0"),
        "heartbeat.port",
        Some("port = 0"),
        "between 1 and 65535",
    );
    rejects(
        &append("[heartbeat]\nport = 65536"),
        "heartbeat.port",
        Some("65536"),
        "between 1 and 65535",
    );
    rejects(
        &append("[heartbeat]\ninterval_ms = 49"),
        "heartbeat.interval_ms",
        Some("49"),
        "at least 50",
    );
    rejects(
        &append("[heartbeat]\ntimeout_ms = 299"),
        "heartbeat.timeout_ms",
        Some("299"),
        "at least 300",
    );
}

#[test]
fn heartbeat_timeout_must_exceed_twice_the_interval() {
    let text = append("[heartbeat]\ninterval_ms = 500\ntimeout_ms = 1000");
    rejects(
        &text,
        "heartbeat.timeout_ms",
        Some("timeout_ms"),
        "more than twice heartbeat.interval_ms (500)",
    );
    // With the default timeout of 3000 ms, the interval is what makes it too short.
    let text = append("[heartbeat]\ninterval_ms = 1500");
    rejects(
        &text,
        "heartbeat.timeout_ms",
        Some("[heartbeat]"),
        "the default 3000 must be more than twice",
    );
    let ok = parse(&append("[heartbeat]\ninterval_ms = 500\ntimeout_ms = 1001")).unwrap();
    assert_eq!(ok.heartbeat.timeout, Duration::from_millis(1001));
}

#[test]
fn replication_rules() {
    rejects(
        &append("[replication]\nport = 7400"),
        "replication.port",
        Some("port = 7400"),
        "is also heartbeat.port",
    );
    let text = append("[heartbeat]\nport = 7000\n[replication]\nport = 7000");
    rejects_at(
        &text,
        "replication.port",
        Some(line(&text, "[replication]") + 1),
        "is also heartbeat.port",
    );
    rejects(
        &append("[replication]\npeer_timeout_ms = 99"),
        "replication.peer_timeout_ms",
        Some("99"),
        "at least 100",
    );
    rejects(
        &append("[replication]\ncompression = \"lz4\""),
        "replication.compression",
        Some("lz4"),
        "is not one of \"auto\", \"zstd\", \"off\"",
    );
    for bad in [2, 8192] {
        let text = append(&format!("[replication]\nchunk_size_kib = {bad}"));
        rejects(
            &text,
            "replication.chunk_size_kib",
            Some("chunk_size_kib"),
            "between 4 and 4096",
        );
    }
    rejects(
        &append("[replication]\nchunk_size_kib = 48"),
        "replication.chunk_size_kib",
        Some("48"),
        "power of two",
    );
    rejects(
        &append("[replication]\nasync_max_lag_mib = 0"),
        "replication.async_max_lag_mib",
        Some("async_max_lag_mib"),
        "between 1 and 1048576",
    );
    for bad in ["5XB", "-1", "fast", "1.5GiB"] {
        rejects(
            &append(&format!("[replication]\nresync_max_rate = \"{bad}\"")),
            "replication.resync_max_rate",
            Some(bad),
            "is not a rate",
        );
    }
    let ok = parse(&append(
        "[replication]\ncompression = \"off\"\nchunk_size_kib = 4096\nresync_max_rate = \"50MiB\"",
    ))
    .unwrap();
    assert_eq!(
        (
            ok.replication.compression,
            ok.replication.chunk_size,
            ok.replication.resync_max_rate
        ),
        (Compression::Off, 4 << 20, 50 << 20)
    );
    let default = parse(&append("")).unwrap();
    assert_eq!(default.replication.resync_max_rate, 0, "no cap by default");
    assert_eq!(default.replication.resync_min_rate, 12 << 20);
    rejects(
        &append("[replication]\nresync_min_rate = \"5XB\""),
        "replication.resync_min_rate",
        Some("5XB"),
        "is not a rate",
    );
    rejects(
        &append("[replication]\nresync_max_rate = \"10MiB\"\nresync_min_rate = \"20MiB\""),
        "replication.resync_min_rate",
        Some("20MiB"),
        "the minimum cannot exceed the cap",
    );
    let ok = parse(&append(
        "[replication]\nresync_max_rate = \"8MiB\"\nresync_min_rate = \"0\"",
    ))
    .unwrap();
    assert_eq!(ok.replication.resync_min_rate, 0);
}

#[test]
fn daemon_paths_must_be_absolute() {
    for key in ["state_dir", "socket", "tls_dir"] {
        let text = append(&format!("[daemon]\n{key} = \"var/lib/x\""));
        rejects(
            &text,
            &format!("daemon.{key}"),
            Some("var/lib/x"),
            "must be an absolute path",
        );
    }
    rejects(
        &append("[daemon]\nstate_dir = \"/var/../x\""),
        "daemon.state_dir",
        Some("/var/../x"),
        "'..'",
    );
    let ok = parse(&append("[daemon]\nstate_dir = \"/data/tandem/\"")).unwrap();
    assert_eq!(ok.daemon.state_dir, Path::new("/data/tandem"));
}

// ---------------------------------------------------------------------------------------
// [[module]]

/// A second module `n` moved by a load balancer, with `dirs`.
fn second_module(dirs: &str) -> String {
    append(&format!(
        "\n[[module]]\nname = \"n\"\nfailover = \"lb\"\ndirs = {dirs}"
    ))
}

#[test]
fn at_least_one_module() {
    let text = edit(
        "[[module]]\nname = \"m\"\ndirs = [\"/srv/m\"]\nvip = [\"192.168.1.100/24\"]\n",
        "",
    );
    rejects(&text, "module", None, "at least one [[module]]");
}

#[test]
fn at_most_32_modules() {
    let mut text = MINIMAL.to_string();
    for i in 1..=32 {
        text.push_str(&format!(
            "\n[[module]]\nname = \"m{i}\"\ndirs = [\"/srv/m{i}\"]\nfailover = \"lb\"\n"
        ));
    }
    rejects_at(
        &text,
        "module[32]",
        Some(line(&text, "name = \"m32\"") - 1),
        "at most 32 modules",
    );
    let fewer = text[..text.find("\n[[module]]\nname = \"m32\"").unwrap()].to_string();
    assert_eq!(parse(&fewer).unwrap().modules.len(), 32);
}

#[test]
fn module_names() {
    rejects(
        &edit("name = \"m\"", "name = \"my app\""),
        "module[0].name",
        Some("my app"),
        "1 to 64",
    );
    let header = line(MINIMAL, "name = \"m\"") - 1;
    rejects_at(
        &edit("name = \"m\"\n", ""),
        "module[0].name",
        Some(header),
        "is required",
    );
    let text = second_module("[\"/srv/n\"]").replace("name = \"n\"", "name = \"m\"");
    rejects_at(
        &text,
        "module[1].name",
        Some(line(&text, "failover = \"lb\"") - 1),
        "is also module[0].name",
    );
}

#[test]
fn module_dirs_rules() {
    let header = line(MINIMAL, "name = \"m\"") - 1;
    rejects_at(
        &edit("dirs = [\"/srv/m\"]\n", ""),
        "module[0].dirs",
        Some(header),
        "is required",
    );
    rejects(
        &edit("dirs = [\"/srv/m\"]", "dirs = []"),
        "module[0].dirs",
        Some("dirs = []"),
        "must not be empty",
    );
    rejects(
        &edit("dirs = [\"/srv/m\"]", "dirs = [\"/srv/m\", \"srv/x\"]"),
        "module[0].dirs[1]",
        Some("dirs ="),
        "must be an absolute path",
    );
    rejects(
        &edit("dirs = [\"/srv/m\"]", "dirs = [\"/\"]"),
        "module[0].dirs[0]",
        Some("dirs ="),
        "root directory",
    );
    rejects(
        &edit("dirs = [\"/srv/m\"]", "dirs = [\"//\"]"),
        "module[0].dirs[0]",
        Some("dirs ="),
        "root directory",
    );
}

#[test]
fn nested_dirs_across_modules_are_rejected() {
    let text = second_module("[\"/srv/m/sub\"]");
    let errors = errors(&text);
    assert_eq!(errors.len(), 1, "{}", render(&errors));
    assert_eq!(
        errors[0].to_string(),
        format!(
            "{}: module[1].dirs[0]: \"/srv/m/sub\" sits inside module[0].dirs[0] \"/srv/m\"",
            line(&text, "/srv/m/sub")
        )
    );
    let text = second_module("[\"/srv\"]");
    rejects(
        &text,
        "module[1].dirs[0]",
        Some("[\"/srv\"]"),
        "\"/srv\" contains module[0].dirs[0] \"/srv/m\"",
    );
    let text = second_module("[\"/srv/m/\"]");
    rejects(
        &text,
        "module[1].dirs[0]",
        Some("/srv/m/"),
        "is the same directory as module[0].dirs[0]",
    );
    // Only whole path components count: /srv/mm is not inside /srv/m.
    assert!(parse(&second_module("[\"/srv/mm\"]")).is_ok());
}

#[test]
fn nested_dirs_within_a_module_are_rejected() {
    let text = edit(
        "dirs = [\"/srv/m\"]",
        "dirs = [\n  \"/srv/m/a\",\n  \"/srv/m\",\n]",
    );
    rejects(
        &text,
        "module[0].dirs[1]",
        Some("\"/srv/m\","),
        "\"/srv/m\" contains module[0].dirs[0] \"/srv/m/a\"",
    );
}

#[test]
fn exclude_patterns() {
    rejects(
        &append("exclude = [\"*.tmp\", \"\"]"),
        "module[0].exclude[1]",
        Some("exclude"),
        "must not be empty",
    );
    rejects(
        &append("exclude = [\"/tmp\"]"),
        "module[0].exclude[0]",
        Some("exclude"),
        "not absolute",
    );
    rejects(
        &append("exclude = [\"a\\u0000b\"]"),
        "module[0].exclude[0]",
        Some("exclude"),
        "NUL",
    );
    let ok = parse(&append("exclude = [\"*.tmp\", \"cache/\"]")).unwrap();
    assert_eq!(ok.modules[0].exclude, ["*.tmp", "cache/"]);
}

#[test]
fn ack_values() {
    rejects(
        &append("ack = \"sync\""),
        "module[0].ack",
        Some("ack"),
        "\"durable\", \"received\", \"async\"",
    );
    assert_eq!(
        parse(&append("ack = \"async\"")).unwrap().modules[0].ack,
        Ack::Async
    );
}

#[test]
fn failover_vip_needs_addresses() {
    let header = line(MINIMAL, "name = \"m\"") - 1;
    let no_vip = edit("vip = [\"192.168.1.100/24\"]\n", "");
    rejects_at(
        &no_vip,
        "module[0].vip",
        Some(header),
        "is required when failover = \"vip\" (the default)",
    );
    let explicit = edit("vip = [\"192.168.1.100/24\"]", "failover = \"vip\"");
    rejects(
        &explicit,
        "module[0].vip",
        Some("failover"),
        "is required when failover = \"vip\"",
    );
    rejects(
        &edit("vip = [\"192.168.1.100/24\"]", "vip = []"),
        "module[0].vip",
        Some("vip = []"),
        "must not be empty",
    );
}

#[test]
fn vip_addresses_need_a_prefix() {
    let vip = |v: &str| edit("vip = [\"192.168.1.100/24\"]", &format!("vip = [{v}]"));
    rejects(
        &vip("\"192.168.1.100\""),
        "module[0].vip[0]",
        Some("vip ="),
        "prefix length",
    );
    rejects(
        &vip("\"192.168.1.100/33\""),
        "module[0].vip[0]",
        Some("vip ="),
        "between 1 and 32",
    );
    rejects(
        &vip("\"fd00::1/24\", \"fd00::1/129\""),
        "module[0].vip[1]",
        Some("vip ="),
        "between 1 and 128",
    );
    rejects(
        &vip("\"10.0.0.1/24\""),
        "module[0].vip[0]",
        Some("vip ="),
        "belongs to node[0]",
    );
    rejects(
        &vip("\"10.9.0.1/24\", \"10.9.0.1/16\""),
        "module[0].vip[1]",
        Some("vip ="),
        "repeats module[0].vip[0]",
    );
    let ok = parse(&vip("\"192.168.1.100/24\", \"fd00::100/64\"")).unwrap();
    let Failover::Vip {
        addresses,
        interface,
        announce,
    } = &ok.modules[0].failover
    else {
        panic!("not vip")
    };
    assert_eq!(addresses[1].addr, "fd00::100".parse::<IpAddr>().unwrap());
    assert_eq!((addresses[1].prefix, interface), (64, &None));
    assert_eq!(
        (announce.count, announce.interval, announce.refresh),
        (5, Duration::from_millis(200), Some(Duration::from_secs(10))),
        "defaults: a burst of 5 at 200 ms, then every 10 s"
    );
}

#[test]
fn vip_announcements_are_bounded() {
    let ok = parse(&append(
        "vip_announce = 3\nvip_announce_interval_ms = 50\nvip_refresh_s = 0",
    ))
    .unwrap();
    let Failover::Vip { announce, .. } = &ok.modules[0].failover else {
        panic!("not vip")
    };
    assert_eq!(
        (announce.count, announce.interval, announce.refresh),
        (3, Duration::from_millis(50), None)
    );
    rejects(
        &append("vip_announce = 0"),
        "module[0].vip_announce",
        Some("vip_announce"),
        "between 1 and 100",
    );
    rejects(
        &append("vip_announce_interval_ms = 5"),
        "module[0].vip_announce_interval_ms",
        Some("vip_announce_interval_ms"),
        "between 10 and 10000",
    );
    rejects(
        &append("vip_refresh_s = 4000"),
        "module[0].vip_refresh_s",
        Some("vip_refresh_s"),
        "between 0 and 3600",
    );
    let two = edit("vip = [\"192.168.1.100/24\"]", "failover = \"lb\"")
        + "\n[[module]]\nname = \"n\"\ndirs = [\"/srv/n\"]\nfailover = \"lb\"\nlb_tls = true";
    rejects(&two, "module[1].lb_tls", Some("lb_tls"), "must agree");
    rejects(
        &append("lb_tls = true"),
        "module[0].lb_tls",
        Some("lb_tls"),
        "only used with failover = \"lb\"",
    );
}

#[test]
fn vip_cannot_serve_two_modules() {
    let text =
        append("\n[[module]]\nname = \"n\"\ndirs = [\"/srv/n\"]\nvip = [\"192.168.1.100/32\"]");
    rejects(
        &text,
        "module[1].vip[0]",
        Some("/32"),
        "is also module[0].vip[0]",
    );
}

#[test]
fn vip_interface_names() {
    for bad in ["", "eth0/1", "eth 0", "averyveryverylongname"] {
        let text = append(&format!("vip_interface = \"{bad}\""));
        rejects(
            &text,
            "module[0].vip_interface",
            Some("vip_interface"),
            "interface name",
        );
    }
    let ok = parse(&append("vip_interface = \"br-lan.10\"")).unwrap();
    assert!(
        matches!(&ok.modules[0].failover, Failover::Vip { interface: Some(i), .. } if i == "br-lan.10")
    );
}

#[test]
fn failover_modes_refuse_each_others_settings() {
    rejects(
        &append("lb_port = 9000"),
        "module[0].lb_port",
        Some("lb_port"),
        "only used with failover = \"lb\"",
    );
    let lb = |extra: &str| {
        edit(
            "vip = [\"192.168.1.100/24\"]",
            &format!("failover = \"lb\"\n{extra}"),
        )
    };
    rejects(
        &lb("vip = [\"192.168.1.100/24\"]"),
        "module[0].vip",
        Some("vip ="),
        "only used with failover = \"vip\"",
    );
    rejects(
        &lb("vip_interface = \"eth0\""),
        "module[0].vip_interface",
        Some("vip_interface"),
        "only used with",
    );
    rejects(
        &append("failover = \"dns\""),
        "module[0].failover",
        Some("dns"),
        "\"vip\", \"lb\"",
    );
}

#[test]
fn lb_port_rules() {
    let lb = |extra: &str| {
        edit(
            "vip = [\"192.168.1.100/24\"]",
            &format!("failover = \"lb\"\n{extra}"),
        )
    };
    rejects(
        &lb("lb_port = 0"),
        "module[0].lb_port",
        Some("lb_port"),
        "between 1 and 65535",
    );
    rejects(
        &lb("lb_port = 7401"),
        "module[0].lb_port",
        Some("lb_port"),
        "7401 is also replication.port",
    );
    rejects(
        &lb("lb_port = 7400"),
        "module[0].lb_port",
        Some("lb_port"),
        "7400 is also heartbeat.port",
    );
    // The default lb_port collides with a replication port moved onto it.
    let text = lb("") + "[replication]\nport = 9453\n";
    let header = line(MINIMAL, "name = \"m\"") - 1;
    rejects_at(
        &text,
        "module[0].lb_port",
        Some(header),
        "9453 is also replication.port",
    );
    let ok = parse(&lb("lb_port = 8080\nlb_tls = true")).unwrap();
    assert_eq!(
        ok.modules[0].failover,
        Failover::Lb {
            port: 8080,
            tls: true
        }
    );
}

#[test]
fn scripts_must_be_absolute() {
    for key in [
        "prestart",
        "start_prim",
        "stop_prim",
        "start_both",
        "stop_both",
        "poststop",
    ] {
        let text = append(&format!("[module.scripts]\n{key} = \"start.sh\""));
        rejects(
            &text,
            &format!("module[0].scripts.{key}"),
            Some("start.sh"),
            "must be an absolute path",
        );
    }
    rejects(
        &append("[module.scripts]\ntimeout_s = 0"),
        "module[0].scripts.timeout_s",
        Some("timeout_s"),
        "at least 1",
    );
    // Existence is not checked: scripts are often installed after the configuration.
    let ok = parse(&append(
        "[module.scripts]\nstart_prim = \"/nonexistent/start.sh\"\ntimeout_s = 5",
    ))
    .unwrap();
    assert_eq!(
        ok.modules[0].scripts.start_prim.as_deref(),
        Some(Path::new("/nonexistent/start.sh"))
    );
    assert_eq!(ok.modules[0].scripts.timeout, Duration::from_secs(5));
}

// ---------------------------------------------------------------------------------------
// [[module.checker]]

fn checker(lines: &str) -> String {
    append(&format!("[[module.checker]]\n{lines}"))
}

#[test]
fn checker_kind_is_required_and_known() {
    rejects(
        &checker("interval_ms = 1000"),
        "module[0].checker[0].kind",
        Some("[[module.checker]]"),
        "is required",
    );
    rejects(
        &checker("kind = \"ping\""),
        "module[0].checker[0].kind",
        Some("ping"),
        "\"process\", \"tcp\"",
    );
}

#[test]
fn checker_kind_fields() {
    rejects(
        &checker("kind = \"process\""),
        "module[0].checker[0].pidfile",
        Some("kind"),
        "pidfile or name",
    );
    rejects(
        &checker("kind = \"process\"\npidfile = \"/run/a.pid\"\nname = \"app\""),
        "module[0].checker[0].name",
        Some("name = \"app\""),
        "not both",
    );
    rejects(
        &checker("kind = \"process\"\npidfile = \"run/a.pid\""),
        "module[0].checker[0].pidfile",
        Some("run/a.pid"),
        "absolute",
    );
    rejects(
        &checker("kind = \"tcp\""),
        "module[0].checker[0].address",
        Some("kind"),
        "is required for kind = \"tcp\"",
    );
    rejects(
        &checker("kind = \"tcp\"\naddress = \"127.0.0.1\""),
        "module[0].checker[0].address",
        Some("127.0.0.1"),
        "no port",
    );
    rejects(
        &checker("kind = \"http\""),
        "module[0].checker[0].url",
        Some("kind"),
        "is required",
    );
    rejects(
        &checker("kind = \"http\"\nurl = \"ftp://x/\""),
        "module[0].checker[0].url",
        Some("ftp"),
        "http://",
    );
    rejects(
        &checker("kind = \"http\"\nurl = \"http://x/\"\nexpect_status = 600"),
        "module[0].checker[0].expect_status",
        Some("600"),
        "between 100 and 599",
    );
    rejects(
        &checker("kind = \"script\"\npath = \"check.sh\""),
        "module[0].checker[0].path",
        Some("check.sh"),
        "absolute",
    );
    rejects(
        &checker("kind = \"interface\""),
        "module[0].checker[0].interface",
        Some("kind"),
        "is required",
    );
    rejects(
        &checker("kind = \"interface\"\ninterface = \"eth 0\""),
        "module[0].checker[0].interface",
        Some("eth 0"),
        "interface name",
    );
}

#[test]
fn checker_fields_of_another_kind_are_refused() {
    rejects(
        &checker("kind = \"tcp\"\naddress = \"127.0.0.1:80\"\nurl = \"http://x/\""),
        "module[0].checker[0].url",
        Some("url"),
        "is not used by kind = \"tcp\"",
    );
    let text = cluster("quorum = \"witness\"\nwitness = \"w.lan:7402\"")
        + "[[module.checker]]\nkind = \"witness\"\npath = \"/x\"\n";
    rejects(
        &text,
        "module[0].checker[0].path",
        Some("path"),
        "is not used by kind = \"witness\"",
    );
}

#[test]
fn witness_checker_needs_a_witness() {
    rejects(
        &checker("kind = \"witness\""),
        "module[0].checker[0].kind",
        Some("kind"),
        "cluster.quorum = \"witness\"",
    );
    let text = cluster("quorum = \"witness\"\nwitness = \"w.lan:7402\"")
        + "[[module.checker]]\nkind = \"witness\"\n";
    assert_eq!(
        parse(&text).unwrap().modules[0].checkers[0].check,
        Check::Witness
    );
}

#[test]
fn checker_timing() {
    let tcp = |extra: &str| {
        checker(&format!(
            "kind = \"tcp\"\naddress = \"127.0.0.1:80\"\n{extra}"
        ))
    };
    rejects(
        &tcp("interval_ms = 99"),
        "module[0].checker[0].interval_ms",
        Some("99"),
        "at least 100",
    );
    rejects(
        &tcp("timeout_ms = 49"),
        "module[0].checker[0].timeout_ms",
        Some("49"),
        "at least 50",
    );
    rejects(
        &tcp("interval_ms = 500\ntimeout_ms = 800"),
        "module[0].checker[0].timeout_ms",
        Some("800"),
        "must not exceed interval_ms (500)",
    );
    rejects(
        &tcp("restarts = -1"),
        "module[0].checker[0].restarts",
        Some("-1"),
        "between 0 and",
    );
    rejects(
        &tcp("window_s = 0"),
        "module[0].checker[0].window_s",
        Some("window_s"),
        "at least 1",
    );
    let ok = parse(&tcp(
        "restarts = 0\nwindow_s = 60\ninterval_ms = 200\ntimeout_ms = 150",
    ))
    .unwrap();
    let c = &ok.modules[0].checkers[0];
    assert_eq!(
        (c.restarts, c.window, c.timeout),
        (0, Duration::from_secs(60), Duration::from_millis(150))
    );
}

#[test]
fn second_checker_gets_its_own_index() {
    let text = checker(
        "kind = \"tcp\"\naddress = \"127.0.0.1:80\"\n[[module.checker]]\nkind = \"http\"\nurl = \"gopher://x\"",
    );
    rejects(&text, "module[0].checker[1].url", Some("gopher"), "http://");
}

// ---------------------------------------------------------------------------------------
// Directories on disk

fn with_dirs(dirs: &[&Path]) -> String {
    let list: Vec<String> = dirs
        .iter()
        .map(|d| format!("{:?}", d.display().to_string()))
        .collect();
    edit(
        "dirs = [\"/srv/m\"]",
        &format!("dirs = [\n{}\n]", list.join(",\n")),
    )
}

#[test]
fn existing_dirs_pass_the_disk_checks() {
    let root = tempfile::tempdir().unwrap();
    let (a, b) = (root.path().join("a"), root.path().join("b"));
    std::fs::create_dir(&a).unwrap();
    std::fs::create_dir(&b).unwrap();
    let file = root.path().join("tandem.toml");
    std::fs::write(&file, with_dirs(&[&a, &b])).unwrap();
    let s = config::load(&file, tandem::cli::on_disk()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.modules[0].dirs, [a, b]);
}

#[test]
fn missing_dirs_fail_the_disk_checks_only() {
    let root = tempfile::tempdir().unwrap();
    let (a, missing, file) = (
        root.path().join("a"),
        root.path().join("missing"),
        root.path().join("f"),
    );
    std::fs::create_dir(&a).unwrap();
    std::fs::write(&file, b"").unwrap();
    let text = with_dirs(&[&a, &missing, &file]);
    let e = config::parse(&text, Path::new(ORIGIN), tandem::cli::on_disk()).unwrap_err();
    let got: Vec<(&str, Option<usize>)> = e
        .errors
        .iter()
        .map(|e| (e.field.as_str(), e.line))
        .collect();
    let missing_line = line(&text, &missing.display().to_string());
    let file_line = line(&text, &format!("{}\"", file.display()));
    assert_eq!(
        got,
        [
            ("module[0].dirs[1]", Some(missing_line)),
            ("module[0].dirs[2]", Some(file_line))
        ],
        "{e}"
    );
    assert!(e.errors[0].message.ends_with("does not exist"), "{e}");
    assert!(e.errors[1].message.ends_with("is not a directory"), "{e}");
    assert!(config::parse(&text, Path::new(ORIGIN), config::DirChecks::Off).is_ok());
}
