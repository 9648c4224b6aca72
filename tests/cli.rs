//! The `tandem` command as an operator uses it: mount in the foreground, bad
//! input, stale mounts after kill -9, the daemon with status and stop.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::{LOOPBACK_NODES, is_tandem_mount, tandem, tandem_bin, tempdir, wait_until};

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn spawn_mount(dir: &Path, extra: &[&str]) -> Child {
    common::require_fuse();
    let child = Command::new(tandem_bin())
        .arg("mount")
        .args(extra)
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let up = || is_tandem_mount(dir) && !tandem::fs::mounts::is_stale(dir);
    assert!(
        wait_until(10, up),
        "tandem mount {} did not come up",
        dir.display()
    );
    child
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill takes no pointer; `child` is ours and not reaped yet, so its pid is still its.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

#[test]
fn mount_prints_mutations_and_unmounts_on_sigterm() {
    let t = tempdir();
    std::fs::write(t.path().join("kept"), b"old").unwrap();
    let child = spawn_mount(t.path(), &["--print-mutations"]);
    std::fs::write(t.path().join("new"), b"hello").unwrap();
    std::fs::rename(t.path().join("new"), t.path().join("renamed")).unwrap();
    signal(&child, libc::SIGTERM);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!is_tandem_mount(t.path()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines.contains(&"create new mode=100666 umask=022"),
        "{lines:?}"
    );
    assert!(lines.contains(&"write new @0+5"), "{lines:?}");
    assert!(lines.contains(&"rename new -> renamed"), "{lines:?}");
    assert!(stderr(&out).contains("unmounted"), "{}", stderr(&out));
    assert_eq!(std::fs::read(t.path().join("renamed")).unwrap(), b"hello");
    assert_eq!(std::fs::read(t.path().join("kept")).unwrap(), b"old");
}

#[test]
fn bad_directories_are_refused_with_exit_code_2_and_nothing_mounted() {
    let t = tempdir();
    let missing = t.path().join("missing");
    let o = tandem(&["mount", missing.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("no such directory") && stderr(&o).contains("missing"),
        "{}",
        stderr(&o)
    );

    let file = t.path().join("file");
    std::fs::write(&file, b"").unwrap();
    let o = tandem(&["mount", file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("not a directory"), "{}", stderr(&o));
    assert_eq!(stderr(&o).lines().count(), 1, "one line: {}", stderr(&o));

    // Already mounted by a running tandem, and a directory inside that mount.
    let covered = t.path().join("covered");
    std::fs::create_dir_all(covered.join("inner")).unwrap();
    let child = spawn_mount(&covered, &[]);
    let o = tandem(&["mount", covered.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("already mounted"), "{}", stderr(&o));
    let o = tandem(&["mount", covered.join("inner").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("inside the tandem mount"),
        "{}",
        stderr(&o)
    );
    let all = tandem::fs::mounts::mounts().unwrap();
    assert_eq!(
        tandem::fs::mounts::tandem_mounts_at(&all, &covered),
        1,
        "nothing more was mounted"
    );
    signal(&child, libc::SIGTERM);
    assert!(child.wait_with_output().unwrap().status.success());
}

#[test]
fn a_mount_killed_with_sigkill_is_cleaned_up_by_the_next_mount() {
    let t = tempdir();
    let mut child = spawn_mount(t.path(), &[]);
    std::fs::write(t.path().join("data"), b"written before the crash").unwrap();
    signal(&child, libc::SIGKILL);
    child.wait().unwrap();
    // The kernel keeps the dead mount: every access fails with ENOTCONN.
    assert!(is_tandem_mount(t.path()));
    assert!(tandem::fs::mounts::is_stale(t.path()));

    let child = spawn_mount(t.path(), &[]);
    assert_eq!(
        std::fs::read(t.path().join("data")).unwrap(),
        b"written before the crash"
    );
    signal(&child, libc::SIGINT);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(
        stderr(&out).contains("removed 1 stale mount"),
        "{}",
        stderr(&out)
    );
    assert!(!is_tandem_mount(t.path()));
    assert_eq!(
        std::fs::read(t.path().join("data")).unwrap(),
        b"written before the crash"
    );
}

#[test]
fn unmount_while_a_file_is_open_waits_for_it_and_keeps_the_data() {
    let t = tempdir();
    let child = spawn_mount(t.path(), &[]);
    let mut f = std::fs::File::create(t.path().join("open")).unwrap();
    signal(&child, libc::SIGTERM);
    // The mount is detached: the open file still works through it.
    std::thread::sleep(Duration::from_millis(300));
    std::io::Write::write_all(&mut f, b"late write").unwrap();
    drop(f);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!is_tandem_mount(t.path()));
    assert_eq!(std::fs::read(t.path().join("open")).unwrap(), b"late write");
}

#[test]
fn cluster_verbs_without_a_daemon_say_so_and_fail() {
    let t = tempdir();
    let socket = t.path().join("none.sock");
    for args in [
        vec!["swap", "app"],
        vec!["prim", "app"],
        vec!["second", "app"],
        vec!["resolve", "app", "--keep", "node1"],
        vec!["log", "app"],
        vec!["restart", "app"],
    ] {
        let mut full = vec!["--socket", socket.to_str().unwrap()];
        full.extend(&args);
        let o = tandem(&full);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(
            stderr(&o).contains("is `tandem daemon` running"),
            "{args:?}: {}",
            stderr(&o)
        );
    }
    let o = tandem(&["frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn config_check_reports_missing_files() {
    let o = tandem(&["config", "check", "/nonexistent/tandem.toml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("/nonexistent/tandem.toml"),
        "{}",
        stderr(&o)
    );
}

fn write_config(dir: &Path, app: &Path, db: &Path, socket: &Path) -> std::path::PathBuf {
    let cfg = format!(
        r#"
[cluster]
name = "test"

{LOOPBACK_NODES}
[daemon]
socket = "{}"
state_dir = "{}"

[[module]]
name = "app"
dirs = ["{}"]
failover = "lb"

[[module]]
name = "db"
dirs = ["{}"]
failover = "lb"
"#,
        socket.display(),
        dir.join("state").display(),
        app.display(),
        db.display()
    );
    let path = dir.join("tandem.toml");
    std::fs::write(&path, cfg).unwrap();
    path
}

#[test]
fn daemon_mounts_modules_reports_status_and_stops_them() {
    let t = tempdir();
    let (app, db) = (t.path().join("app"), t.path().join("db"));
    std::fs::create_dir(&app).unwrap();
    std::fs::create_dir(&db).unwrap();
    let socket = t.path().join("ctl.sock");
    let cfg = write_config(t.path(), &app, &db, &socket);
    let cfg_s = cfg.to_str().unwrap();
    let o = tandem(&["config", "check", cfg_s]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("OK"));

    common::require_fuse();
    let mut daemon = Command::new(tandem_bin())
        .args(["--config", cfg_s, "daemon", "--role", "local"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        wait_until(15, || is_tandem_mount(&app)
            && is_tandem_mount(&db)
            && socket.exists()),
        "daemon did not mount"
    );
    let mode = std::fs::metadata(&socket)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .unwrap();
    assert_eq!(mode, 0o600, "the control socket is root-only");

    std::fs::write(app.join("f"), vec![1u8; 10_000]).unwrap();
    let o = tandem(&["--config", cfg_s, "status", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let modules = st["modules"].as_array().unwrap();
    assert_eq!(modules.len(), 2);
    assert_eq!(modules[0]["name"], "app");
    assert_eq!(modules[0]["state"], "started");
    assert_eq!(modules[0]["dirs"][0]["bytes_written"], 10_000);

    // Role changes belong to the cluster manager, not to a fixed-role daemon.
    let o = tandem(&["--config", cfg_s, "swap", "app"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("fixed --role"), "{}", stderr(&o));

    // A second daemon on the same socket is refused.
    let o = tandem(&["--config", cfg_s, "daemon", "--role", "local"]);
    assert_eq!(o.status.code(), Some(2));

    // Unknown module: clear error, nothing changes.
    let o = tandem(&["--config", cfg_s, "stop", "nosuch"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("no module named \"nosuch\""),
        "{}",
        stderr(&o)
    );
    assert!(is_tandem_mount(&app) && is_tandem_mount(&db));

    let o = tandem(&["--config", cfg_s, "stop", "app"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!is_tandem_mount(&app));
    assert!(is_tandem_mount(&db));
    assert_eq!(std::fs::read(app.join("f")).unwrap(), vec![1u8; 10_000]);
    let o = tandem(&["--config", cfg_s, "start", "app"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(is_tandem_mount(&app));

    signal(&daemon, libc::SIGTERM);
    let status = daemon.wait().unwrap();
    assert!(status.success());
    assert!(!is_tandem_mount(&app) && !is_tandem_mount(&db));
    assert!(!socket.exists());
    let mut lines = Vec::new();
    if let Some(err) = daemon.stderr.take() {
        lines = BufReader::new(err).lines().map_while(Result::ok).collect();
    }
    assert!(lines.iter().any(|l| l.contains("mounted")), "{lines:?}");
}

#[test]
fn daemon_refuses_bad_configurations_and_mounts_nothing() {
    let t = tempdir();
    let app = t.path().join("app");
    std::fs::create_dir(&app).unwrap();
    let missing = t.path().join("gone");
    let socket = t.path().join("ctl.sock");
    // The second module's directory does not exist.
    let cfg = write_config(t.path(), &app, &missing, &socket);
    let o = tandem(&["--config", cfg.to_str().unwrap(), "daemon"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("module[1].dirs[0]"), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(missing.to_str().unwrap()),
        "{}",
        stderr(&o)
    );
    assert!(!is_tandem_mount(&app), "nothing may be mounted");
    assert!(!socket.exists());

    // Nested directories across modules.
    let inner = app.join("inner");
    std::fs::create_dir(&inner).unwrap();
    let cfg = write_config(t.path(), &app, &inner, &socket);
    let o = tandem(&["--config", cfg.to_str().unwrap(), "daemon"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("inside"), "{}", stderr(&o));
    assert!(!is_tandem_mount(&app));

    // A configuration file that does not exist.
    let o = tandem(&["--config", "/nonexistent/tandem.toml", "daemon"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("/nonexistent/tandem.toml"),
        "{}",
        stderr(&o)
    );
}
