//! What a hostile peer can make a SECOND do: every mutation that decodes is
//! applied by the real applier to a module directory holding symlinks that
//! point out of it (relative and absolute). Nothing outside the directory may
//! change, whatever the paths say.

#![no_main]

use std::fs;
use std::os::unix::fs::{OpenOptionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use tandem::replication::applier::Applier;
use tandem::replication::frame;
use tandem::replication::wire::Message;

/// A sandbox made once per run: `root` is the module's directory, `outside`
/// what must stay as it is.
struct Sandbox {
    root: PathBuf,
    outside: PathBuf,
    before: Vec<(PathBuf, Vec<u8>, u32)>,
}

static SANDBOX: LazyLock<Sandbox> = LazyLock::new(|| {
    let base = std::env::temp_dir().join(format!("tandem-fuzz-apply-{}", std::process::id()));
    fs::create_dir_all(&base).unwrap();
    private_tmpfs(&base);
    let (root, outside) = (base.join("root"), base.join("outside"));
    fs::create_dir_all(outside.join("dir")).unwrap();
    fs::write(outside.join("secret"), b"keep me").unwrap();
    fs::write(outside.join("dir/file"), b"and me").unwrap();
    fs::create_dir_all(&root).unwrap();
    let before = snapshot(&outside);
    Sandbox {
        root,
        outside,
        before,
    }
});

/// A small tmpfs over `base`, `nodev` and seen by this process alone: the
/// device nodes a peer may create cannot reach a real device, space runs out
/// at 64 MiB, and the mount goes away with the process.
fn private_tmpfs(base: &Path) {
    use std::ffi::CString;
    let c = |s: &str| CString::new(s).unwrap();
    let at = CString::new(base.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: plain system calls on valid C strings; the fuzz loop runs on this thread.
    unsafe {
        assert_eq!(
            libc::unshare(libc::CLONE_NEWNS),
            0,
            "unshare: {}",
            std::io::Error::last_os_error()
        );
        let none = c("none");
        let root = c("/");
        assert_eq!(
            libc::mount(
                none.as_ptr(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null()
            ),
            0
        );
        let (tmpfs, opts) = (c("tmpfs"), c("size=64m,mode=0755"));
        let flags = libc::MS_NODEV | libc::MS_NOSUID;
        let r = libc::mount(
            tmpfs.as_ptr(),
            at.as_ptr(),
            tmpfs.as_ptr(),
            flags,
            opts.as_ptr().cast(),
        );
        assert_eq!(
            r,
            0,
            "mount tmpfs on {}: {}",
            base.display(),
            std::io::Error::last_os_error()
        );
    }
}

/// Every entry below `dir`: path, contents (files) or target (links), mode.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>, u32)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let mut entries: Vec<_> = fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            let m = fs::symlink_metadata(&p).unwrap();
            let content = if m.is_dir() {
                todo.push(p.clone());
                Vec::new()
            } else if m.is_symlink() {
                fs::read_link(&p)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes()
            } else {
                fs::read(&p).unwrap()
            };
            out.push((p, content, m.mode()));
        }
    }
    out
}

/// The module's directory as each round starts: empty but for ways out.
fn reset(root: &Path, outside: &Path) {
    let _ = fs::remove_dir_all(root);
    fs::create_dir_all(root.join("sub")).unwrap();
    symlink("../outside", root.join("up")).unwrap();
    symlink(outside, root.join("abs")).unwrap();
    symlink("../../outside/secret", root.join("sub/secret")).unwrap();
    symlink(outside.join("dir/file"), root.join("file")).unwrap();
}

fuzz_target!(|data: &[u8]| {
    let s = &*SANDBOX;
    reset(&s.root, &s.outside);
    let root = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(&s.root)
        .unwrap();
    let mut applier = Applier::new(vec![root.into()]);
    let mut rest = data;
    while let Ok(Some((msg, used))) = frame::decode(rest) {
        rest = &rest[used..];
        let Message::Mutate {
            dir,
            resync,
            mutation,
            times,
            ..
        } = msg
        else {
            continue;
        };
        let _ = applier.apply(dir, &mutation, resync, &times);
    }
    let _ = applier.settle_times();
    drop(applier);
    assert_eq!(
        snapshot(&s.outside),
        s.before,
        "the peer changed something outside the module"
    );
});
