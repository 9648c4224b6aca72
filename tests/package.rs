//! The Debian package, installed as an operator installs it on a fresh Debian 12.
//!
//! `scripts/package.sh` packages the binary of this run; `debootstrap` makes a
//! clean Debian 12 root from the mirror this machine's apt uses (kept as a
//! tarball in the build directory, so that later runs unpack it in seconds: every
//! run starts from the pristine tarball); apt installs the package there, its
//! dependencies from the same mirror, the only traffic leaving the machine. Then:
//! the binary runs, the example configuration validates, the unit passes
//! `systemd-analyze verify`, the manual pages and completions are in place;
//! `apt-get remove` leaves /etc/tandem/tandem.toml alone, `apt-get purge` nothing
//! at all, even after the daemon's state, credentials and an enabled unit.
//!
//! Root, debootstrap and the mirror are required: without them the test fails,
//! it never skips. Each phase prints its duration.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use nix::mount::{MntFlags, MsFlags};

/// Debian 12, the release tandem is built and packaged on.
const SUITE: &str = "bookworm";

/// The link `systemctl enable tandem` makes (the unit is `WantedBy=multi-user.target`).
const ENABLED: &str = "etc/systemd/system/multi-user.target.wants/tandem.service";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The build directory of this run: where the binary is, the package is built
/// and the pristine root is cached.
fn target_dir() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_tandem"));
    bin.parent()
        .and_then(Path::parent)
        .expect("the binary is in TARGET/release")
        .to_path_buf()
}

/// A line on stderr that the test harness does not capture, so that the
/// durations show in a passing run too.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "package test: {line}");
}

fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let v = f();
    say(&format!("{what}: {:.1} s", start.elapsed().as_secs_f64()));
    v
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs `cmd` to its end and fails the test with its output unless it succeeded.
fn run(cmd: &mut Command) -> Output {
    let o = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?}: {}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        text(&o.stdout),
        text(&o.stderr)
    );
    o
}

/// The URI of the Debian archive that apt on this machine installs Debian 12
/// from, in one-line (`sources.list`, `*.list`) or deb822 (`*.sources`) form.
fn debian_mirror() -> String {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<_> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
        more.sort();
        files.extend(more);
    }
    for file in files {
        let Ok(content) = std::fs::read_to_string(&file) else {
            continue;
        };
        let found = match file.extension().and_then(|e| e.to_str()) {
            Some("sources") => deb822_mirror(&content),
            Some("list") => one_line_mirror(&content),
            _ if file.ends_with("sources.list") => one_line_mirror(&content),
            _ => None,
        };
        if let Some(uri) = found {
            return uri;
        }
    }
    panic!("apt on this machine has no source for Debian 12 ({SUITE}) to debootstrap from");
}

fn one_line_mirror(content: &str) -> Option<String> {
    content.lines().find_map(|line| {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace().peekable();
        if words.next() != Some("deb") {
            return None;
        }
        if words.peek().is_some_and(|w| w.starts_with('[')) {
            // Options: up to the word that closes them.
            for w in words.by_ref() {
                if w.ends_with(']') {
                    break;
                }
            }
        }
        let uri = words.next()?;
        (words.next() == Some(SUITE)).then(|| uri.to_string())
    })
}

fn deb822_mirror(content: &str) -> Option<String> {
    content.split("\n\n").find_map(|stanza| {
        let field = |name: &str| {
            stanza
                .lines()
                .filter(|l| !l.starts_with('#'))
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(|v| v.split_whitespace().map(str::to_string).collect::<Vec<_>>())
                .unwrap_or_default()
        };
        let enabled = field("Enabled").first().is_none_or(|v| v != "no");
        (enabled
            && field("Types").iter().any(|t| t == "deb")
            && field("Suites").iter().any(|s| s == SUITE))
        .then(|| field("URIs").into_iter().next())
        .flatten()
    })
}

/// A directory holding a Debian root. Dropping it unmounts whatever is still
/// mounted below it (its /proc and /dev/pts, or what a debootstrap cut short
/// left), on success and on failure alike, and only then removes it: removing
/// the tree with the host's /dev/pts bound inside would reach into the host.
struct Root {
    dir: PathBuf,
}

impl Root {
    /// A root at `dir`, after clearing what an earlier run killed midway left there.
    fn at(dir: PathBuf) -> Root {
        let root = Root { dir };
        root.clear();
        root
    }

    fn clear(&self) {
        let left = unmount_below(&self.dir);
        assert!(
            left.is_empty(),
            "{} still has mounts {left:?}: not removing it",
            self.dir.display()
        );
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("cannot remove {}: {e}", self.dir.display()),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel.trim_start_matches('/'))
    }

    /// What apt and the package's scripts need: processes, and terminals for
    /// dpkg's output (the host's, bound: the root's /dev/ptmx is the host's
    /// device).
    fn mount_kernel_file_systems(&self) {
        nix::mount::mount(
            Some("proc"),
            &self.path("proc"),
            Some("proc"),
            MsFlags::empty(),
            None::<&str>,
        )
        .expect("mount proc in the root");
        nix::mount::mount(
            Some("/dev/pts"),
            &self.path("dev/pts"),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .expect("bind /dev/pts into the root");
    }

    /// `path` as it is stored in the root, relative to it: Debian 12's /lib is
    /// a link to usr/lib, so the package's /lib/systemd/system/tandem.service is
    /// usr/lib/systemd/system/tandem.service on disk.
    fn resolve(&self, path: &str) -> String {
        let top = std::fs::canonicalize(&self.dir).unwrap();
        let stored = self.path(path);
        // The directory's links resolved, not the file's own if it is one.
        let real = std::fs::canonicalize(stored.parent().unwrap())
            .unwrap()
            .join(stored.file_name().unwrap());
        assert!(real.starts_with(&top), "{path} leads out of the root");
        real.strip_prefix(&top)
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }

    /// Whether `path` is in the root, as a link too (its target is the root's,
    /// not the host's).
    fn has(&self, path: &str) -> bool {
        self.path(path).symlink_metadata().is_ok()
    }

    /// `ARGS` run inside the root, with a clean environment.
    fn chroot(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("chroot");
        cmd.arg(&self.dir)
            .args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", "/root")
            .env("LC_ALL", "C")
            .env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    }

    /// `ARGS` run inside the root; fails the test unless they succeed.
    fn run(&self, args: &[&str]) -> Output {
        run(&mut self.chroot(args))
    }

    /// Every path in the root, relative to it, but the kernel's file systems,
    /// /tmp, systemd's runtime files (`systemd-analyze` leaves some), and the
    /// package managers' own records, caches and logs, which change with every
    /// install.
    fn files(&self) -> BTreeSet<String> {
        const IGNORED: &[&str] = &[
            "proc",
            "dev",
            "sys",
            "tmp",
            "run/systemd",
            "var/lib/dpkg",
            "var/lib/apt",
            "var/cache/apt",
            "var/cache/debconf",
            "var/cache/ldconfig",
            "var/cache/man",
            "var/log",
            "etc/ld.so.cache",
        ];
        let mut out = BTreeSet::new();
        let mut todo = vec![self.dir.clone()];
        while let Some(dir) = todo.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let entry = entry.unwrap();
                let rel = entry
                    .path()
                    .strip_prefix(&self.dir)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                if IGNORED.contains(&rel.as_str()) {
                    continue;
                }
                if entry.file_type().unwrap().is_dir() {
                    todo.push(entry.path());
                }
                out.insert(rel);
            }
        }
        out
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let left = unmount_below(&self.dir);
        if left.is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            say(&format!(
                "left {} in place: still mounted {left:?}",
                self.dir.display()
            ));
        }
    }
}

/// The mount points at or below `dir`, from this process's mount table.
fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    table
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        // The table writes a space in a path as \040; the roots' paths have none.
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// Unmounts everything at or below `dir`, deepest first (detached if busy);
/// returns what is still mounted.
fn unmount_below(dir: &Path) -> Vec<PathBuf> {
    for _ in 0..3 {
        let mut mounts = mounts_below(dir);
        if mounts.is_empty() {
            break;
        }
        mounts.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for m in mounts {
            if nix::mount::umount2(&m, MntFlags::empty()).is_err() {
                let _ = nix::mount::umount2(&m, MntFlags::MNT_DETACH);
            }
        }
    }
    mounts_below(dir)
}

/// The pristine Debian 12 root as a tarball, made by debootstrap on the first
/// run (minbase with systemd, for `systemd-analyze`), apt's downloads removed.
fn pristine_tarball(target: &Path) -> PathBuf {
    let tarball = target.join("debian-root.tar");
    if tarball.exists() {
        say(&format!("using the cached root {}", tarball.display()));
        return tarball;
    }
    let mirror = debian_mirror();
    say(&format!(
        "no cached root: debootstrap {SUITE} from {mirror}"
    ));
    let root = Root::at(target.join("debian-root.new"));
    let o = Command::new("debootstrap")
        .args(["--variant=minbase", "--include=systemd", SUITE])
        .arg(&root.dir)
        .arg(&mirror)
        .output()
        .expect("debootstrap is installed (scripts/install-deps.sh)");
    assert!(
        o.status.success(),
        "debootstrap from {mirror} failed ({}): the mirror must be reachable\n{}\n{}",
        o.status,
        text(&o.stdout),
        text(&o.stderr)
    );
    assert!(
        unmount_below(&root.dir).is_empty(),
        "debootstrap left mounts behind"
    );
    root.run(&["apt-get", "clean"]);
    let partial = target.join("debian-root.tar.part");
    run(Command::new("tar")
        .arg("--numeric-owner")
        .arg("-C")
        .arg(&root.dir)
        .arg("-cf")
        .arg(&partial)
        .arg("."));
    std::fs::rename(&partial, &tarball).unwrap();
    tarball
}

/// The package of this run's binary, built by scripts/package.sh into `out`.
fn build_package(out: &Path) -> PathBuf {
    let _ = std::fs::remove_dir_all(out);
    let o = run(Command::new(repo().join("scripts/package.sh"))
        .arg("--bin")
        .arg(env!("CARGO_BIN_EXE_tandem"))
        .arg("--out")
        .arg(out));
    for line in text(&o.stdout).lines() {
        say(&format!("package.sh: {line}"));
    }
    let debs: Vec<PathBuf> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    assert_eq!(debs.len(), 1, "one package in {}: {debs:?}", out.display());
    let name = debs[0].file_name().unwrap().to_string_lossy().into_owned();
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        name.starts_with(&format!("tandem_{version}-")) && name.ends_with("_amd64.deb"),
        "{name} is not tandem_{version}-REVISION_amd64.deb"
    );
    debs[0].clone()
}

fn field(deb: &Path, name: &str) -> String {
    let o = run(Command::new("dpkg-deb").arg("-f").arg(deb).arg(name));
    text(&o.stdout).trim().to_string()
}

/// Paths new in `after` compared with `before`.
fn added(before: &BTreeSet<String>, after: &BTreeSet<String>) -> BTreeSet<String> {
    after.difference(before).cloned().collect()
}

fn set(paths: &[&str]) -> BTreeSet<String> {
    paths.iter().map(|p| p.to_string()).collect()
}

#[test]
fn the_package_installs_on_a_fresh_debian_12_and_purging_it_leaves_nothing() {
    assert_eq!(
        nix::unistd::geteuid().as_raw(),
        0,
        "this test makes a Debian root and mounts in it: run it as root"
    );
    let total = Instant::now();
    let target = target_dir();
    let work = target.join("package-test");
    std::fs::create_dir_all(&work).unwrap();

    let deb = timed("scripts/package.sh", || build_package(&work.join("out")));
    let tarball = timed("pristine root", || pristine_tarball(&target));

    let root = Root::at(work.join("root"));
    timed("unpack the root", || {
        std::fs::create_dir_all(&root.dir).unwrap();
        run(Command::new("tar")
            .arg("--numeric-owner")
            .arg("-C")
            .arg(&root.dir)
            .arg("-xf")
            .arg(&tarball));
        root.mount_kernel_file_systems();
    });

    // What the package needs comes first, so that everything the install itself
    // adds is the package's own. man-db: a server has it, minbase does not, and
    // `systemd-analyze verify` reads the unit's Documentation= pages with it.
    let depends = field(&deb, "Depends");
    let recommends = field(&deb, "Recommends");
    timed("dependencies from the mirror", || {
        root.run(&["apt-get", "update", "-q"]);
        root.run(&[
            "apt-get",
            "satisfy",
            "-y",
            "-q",
            &format!("{depends}, {recommends}, man-db"),
        ]);
    });
    // The example's module directories exist on a node that holds their data.
    let example = std::fs::read_to_string(repo().join("config/tandem.toml")).unwrap();
    let settings = tandem::config::parse(
        &example,
        Path::new("config/tandem.toml"),
        tandem::config::DirChecks::Off,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    for dir in settings.modules.iter().flat_map(|m| &m.dirs) {
        std::fs::create_dir_all(root.path(&dir.to_string_lossy())).unwrap();
    }
    std::fs::copy(&deb, root.path("tmp").join(deb.file_name().unwrap())).unwrap();
    let pristine = root.files();

    let install = || {
        root.run(&[
            "sh",
            "-c",
            "cd /tmp && apt-get install -y -q ./tandem_*.deb",
        ]);
    };
    timed("apt-get install ./tandem_*.deb", install);
    let installed = added(&pristine, &root.files());
    let listed: BTreeSet<String> = text(&root.run(&["dpkg", "-L", "tandem"]).stdout)
        .lines()
        .filter(|p| *p != "/.")
        .map(|p| root.resolve(p))
        .collect();
    assert_eq!(
        installed,
        listed.difference(&pristine).cloned().collect(),
        "the install made exactly the package's files"
    );

    timed("checks of the installed package", || {
        let v = root.run(&["tandem", "--version"]);
        assert_eq!(
            text(&v.stdout).trim(),
            format!("tandem {}", env!("CARGO_PKG_VERSION"))
        );

        assert_eq!(
            std::fs::read_to_string(root.path("etc/tandem/tandem.toml")).unwrap(),
            example,
            "/etc/tandem/tandem.toml is config/tandem.toml"
        );
        let check = root.run(&["tandem", "config", "check", "/etc/tandem/tandem.toml"]);
        assert!(
            text(&check.stdout).starts_with("OK\n"),
            "{}",
            text(&check.stdout)
        );
        let conffiles = text(
            &root
                .run(&["dpkg-query", "-W", "-f=${Conffiles}", "tandem"])
                .stdout,
        );
        assert!(
            conffiles.contains("/etc/tandem/tandem.toml "),
            "not a conffile: {conffiles}"
        );

        let unit = "/lib/systemd/system/tandem.service";
        let unit_text = std::fs::read_to_string(root.path(unit)).unwrap();
        assert!(
            unit_text.contains("\nExecStart=/usr/bin/tandem "),
            "{unit_text}"
        );
        assert!(!unit_text.contains("/usr/local/"), "{unit_text}");
        let verify = root.run(&["systemd-analyze", "verify", unit]);
        let remarks = text(&verify.stderr);
        assert!(
            !remarks.contains("tandem"),
            "systemd-analyze has remarks: {remarks}"
        );
        // Neither enabled nor started: the example names no real nodes.
        assert!(!root.has(ENABLED));

        for page in [
            "tandem",
            "tandem-daemon",
            "tandem-config-check",
            "tandem-token-create",
        ] {
            let w = root.run(&["man", "-w", page]);
            assert_eq!(
                text(&w.stdout).trim(),
                format!("/usr/share/man/man1/{page}.1.gz")
            );
        }
        for hidden in ["tandem-guard", "tandem-generate", "tandem-help"] {
            assert!(!root.has(&format!("usr/share/man/man1/{hidden}.1.gz")));
        }
        let man = root.run(&["sh", "-c", "man tandem-daemon | cat"]);
        assert!(
            text(&man.stdout).contains("--role"),
            "{}",
            text(&man.stdout)
        );

        for file in [
            "usr/share/bash-completion/completions/tandem",
            "usr/share/zsh/vendor-completions/_tandem",
            "usr/share/fish/vendor_completions.d/tandem.fish",
        ] {
            let script = std::fs::read_to_string(root.path(file)).unwrap();
            assert!(
                script.contains("swap") && script.contains("daemon"),
                "{file}"
            );
            assert!(!script.contains("guard"), "{file} offers a hidden command");
        }
        root.run(&[
            "bash",
            "-n",
            "/usr/share/bash-completion/completions/tandem",
        ]);

        for example in [
            "podman/start_prim",
            "podman/podman.toml",
            "monitoring/alerts.yml",
            "monitoring/grafana-dashboard.json",
        ] {
            assert!(root.has(&format!("usr/share/doc/tandem/examples/{example}")));
        }
        assert!(root.has("usr/share/doc/tandem/copyright"));
        assert!(root.has("usr/share/doc/tandem/changelog.Debian.gz"));
    });

    timed("apt-get remove", || {
        root.run(&["apt-get", "remove", "-y", "-q", "tandem"])
    });
    assert_eq!(
        added(&pristine, &root.files()),
        set(&["etc/tandem", "etc/tandem/tandem.toml"]),
        "remove keeps the configuration and nothing else"
    );

    // Again, now as a node that ran: credentials, an API token, the unit enabled,
    // the socket's directory. Remove keeps the first two; purge takes all.
    timed("apt-get install again", install);
    timed("a node's state", || {
        root.run(&["tandem", "init"]);
        root.run(&["tandem", "token", "create", "grafana", "--role", "monitor"]);
        root.run(&["systemctl", "enable", "tandem"]);
        assert!(root.has(ENABLED));
        std::fs::create_dir_all(root.path("run/tandem")).unwrap();
    });
    timed("apt-get remove", || {
        root.run(&["apt-get", "remove", "-y", "-q", "tandem"])
    });
    let kept = added(&pristine, &root.files());
    let unexpected: Vec<_> = kept
        .iter()
        .filter(|p| !p.starts_with("etc/tandem") && !p.starts_with("var/lib/tandem"))
        .collect();
    assert!(
        unexpected.is_empty(),
        "remove keeps only the configuration and the state: {unexpected:?}"
    );
    assert!(kept.contains("etc/tandem/tls/ca.pem"), "{kept:?}");
    assert!(kept.contains("var/lib/tandem/api-tokens.json"), "{kept:?}");

    timed("apt-get purge", || {
        root.run(&["apt-get", "purge", "-y", "-q", "tandem"])
    });
    assert_eq!(
        added(&pristine, &root.files()),
        BTreeSet::new(),
        "purge leaves nothing"
    );
    let status = root.chroot(&["dpkg", "-s", "tandem"]).output().unwrap();
    assert!(!status.status.success(), "dpkg still knows tandem");

    drop(root);
    say(&format!(
        "total: {:.1} s (Installed-Size: {} KiB)",
        total.elapsed().as_secs_f64(),
        field(&deb, "Installed-Size")
    ));
}
