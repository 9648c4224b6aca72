//! Behaviour of the mount that a bare directory also shows: bytes survive
//! unmount and remount, concurrent writers, mmap, O_DIRECT, O_SYNC, locks,
//! special files and permissions for other users.

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::Arc;

use common::{TestMount, cpath, errno, tempdir};

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    common::noise(seed, len)
}

#[test]
fn unmount_and_remount_keep_every_byte() {
    let t = tempdir();
    std::fs::write(t.path().join("before"), b"there before the mount").unwrap();
    let mut m = TestMount::new(t.path());
    assert!(common::is_tandem_mount(&m.dir));
    // The mount shows what was there, under the same path.
    assert_eq!(
        std::fs::read(m.dir.join("before")).unwrap(),
        b"there before the mount"
    );
    let big = pattern(1, 3 << 20);
    std::fs::write(m.dir.join("big"), &big).unwrap();
    std::fs::create_dir_all(m.dir.join("a/b/c")).unwrap();
    std::fs::write(m.dir.join("a/b/c/small"), b"x").unwrap();
    m.unmount();
    assert!(!common::is_tandem_mount(t.path()));
    assert_eq!(std::fs::read(t.path().join("big")).unwrap(), big);
    assert_eq!(std::fs::read(t.path().join("a/b/c/small")).unwrap(), b"x");

    // Remount, change, unmount again: the bare directory keeps the last state.
    let mut m = TestMount::new(t.path());
    assert_eq!(std::fs::read(m.dir.join("big")).unwrap(), big);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(m.dir.join("big"))
        .unwrap();
    f.seek(SeekFrom::Start(1 << 20)).unwrap();
    f.write_all(&[0xAB; 4096]).unwrap();
    f.sync_all().unwrap();
    drop(f);
    std::fs::remove_file(m.dir.join("before")).unwrap();
    let seen = m.take_seen();
    assert!(seen.contains(&"write big".to_string()), "{seen:?}");
    assert!(seen.contains(&"fsync big".to_string()), "{seen:?}");
    assert!(seen.contains(&"unlink before".to_string()), "{seen:?}");
    m.unmount();
    let mut expect = big.clone();
    expect[1 << 20..(1 << 20) + 4096].fill(0xAB);
    assert_eq!(std::fs::read(t.path().join("big")).unwrap(), expect);
    assert!(!t.path().join("before").exists());
}

#[test]
fn concurrent_writers_from_several_threads() {
    let t = tempdir();
    let m = TestMount::new(t.path());
    let dir = Arc::new(m.dir.clone());
    const THREADS: u64 = 8;
    const BLOCK: usize = 64 * 1024;
    const BLOCKS: u64 = 24;
    std::fs::File::create(dir.join("shared")).unwrap();
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let dir = dir.clone();
            std::thread::spawn(move || {
                // Each thread owns a file, and interleaved blocks of a shared file.
                let own = pattern(100 + t, BLOCK * 8);
                std::fs::write(dir.join(format!("own-{t}")), &own).unwrap();
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(dir.join("shared"))
                    .unwrap();
                for b in 0..BLOCKS {
                    let off = (b * THREADS + t) * BLOCK as u64;
                    std::os::unix::fs::FileExt::write_all_at(&f, &pattern(off, BLOCK), off)
                        .unwrap();
                }
                f.sync_data().unwrap();
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let writes = m
        .take_seen()
        .iter()
        .filter(|s| s.starts_with("write "))
        .count();
    assert!(
        writes as u64 >= THREADS * (BLOCKS + 1),
        "sink saw {writes} writes"
    );
    drop(m);
    let shared = std::fs::read(t.path().join("shared")).unwrap();
    assert_eq!(shared.len(), (THREADS * BLOCKS) as usize * BLOCK);
    for i in 0..THREADS * BLOCKS {
        let off = i as usize * BLOCK;
        assert!(
            shared[off..off + BLOCK] == pattern(i * BLOCK as u64, BLOCK)[..],
            "block {i} of shared differs"
        );
    }
    for th in 0..THREADS {
        assert_eq!(
            std::fs::read(t.path().join(format!("own-{th}"))).unwrap(),
            pattern(100 + th, BLOCK * 8)
        );
    }
}

#[test]
fn mmap_o_direct_and_o_sync_behave_as_on_the_bare_directory() {
    let t = tempdir();
    let m = TestMount::new(t.path());

    // Shared writable mapping: stores reach the file through the mount.
    let path = m.dir.join("mapped");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    f.set_len(8192).unwrap();
    // SAFETY: `f` is open and 8192 bytes long (set_len above), so mapping 8192 bytes of it is
    // valid; MAP_FAILED is checked before any use; the 12 bytes copied at offset 4096 lie inside
    // the mapping, which is synced and unmapped once, and not used after.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            8192,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(&f),
            0,
        );
        assert_ne!(p, libc::MAP_FAILED, "mmap: errno {}", errno());
        std::ptr::copy_nonoverlapping(b"mapped bytes".as_ptr(), (p as *mut u8).add(4096), 12);
        assert_eq!(libc::msync(p, 8192, libc::MS_SYNC), 0);
        libc::munmap(p, 8192);
    }
    drop(f);
    assert_eq!(&std::fs::read(&path).unwrap()[4096..4108], b"mapped bytes");
    let seen = m.take_seen();
    assert!(
        seen.contains(&"write mapped".to_string()),
        "mmap stores must reach the sink: {seen:?}"
    );

    // O_DIRECT with aligned buffers.
    let layout = std::alloc::Layout::from_size_align(8192, 4096).unwrap();
    // SAFETY: the layout's size is not zero.
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
    assert!(!ptr.is_null(), "out of memory");
    // SAFETY: `ptr` is a live, zeroed allocation of 8192 bytes (not null, checked above), used only
    // through `buf` until it is freed below.
    let buf = unsafe { std::slice::from_raw_parts_mut(ptr, 8192) };
    buf.copy_from_slice(&pattern(7, 8192));
    let mut d = std::fs::OpenOptions::new()
        .write(true)
        .read(true)
        .create(true)
        .custom_flags(libc::O_DIRECT)
        .open(m.dir.join("direct"))
        .unwrap();
    d.write_all(buf).unwrap();
    d.seek(SeekFrom::Start(0)).unwrap();
    buf.fill(0);
    d.read_exact(buf).unwrap();
    assert_eq!(&buf[..], &pattern(7, 8192)[..]);
    // SAFETY: `buf`'s memory came from alloc_zeroed with this layout; it is freed once, here, and
    // `buf` is not used after.
    unsafe { std::alloc::dealloc(buf.as_mut_ptr(), layout) };
    drop(d);

    // O_SYNC writes: each one durable before it returns, and marked so for the sink.
    let mut s = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .custom_flags(libc::O_SYNC)
        .open(m.dir.join("sync"))
        .unwrap();
    s.write_all(b"durable").unwrap();
    drop(s);
    let seen = m.take_seen();
    assert!(
        seen.iter().any(|l| l == "write sync (sync)"),
        "an O_SYNC write must reach the sink marked durable: {seen:?}"
    );
    drop(m);
    assert_eq!(
        std::fs::read(t.path().join("direct")).unwrap(),
        pattern(7, 8192)
    );
    assert_eq!(std::fs::read(t.path().join("sync")).unwrap(), b"durable");
}

#[test]
fn locks_fifos_and_special_files() {
    let t = tempdir();
    let m = TestMount::new(t.path());
    let path = m.dir.join("locked");
    std::fs::write(&path, b"x").unwrap();

    // flock and POSIX locks conflict between processes as on a bare file.
    let holder = std::fs::File::open(&path).unwrap();
    // SAFETY: flock takes no pointer; `holder` is open.
    assert_eq!(
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&holder), libc::LOCK_EX) },
        0
    );
    let out = Command::new("flock")
        .args(["-n", "-E", "42"])
        .arg(&path)
        .arg("true")
        .status()
        .unwrap();
    assert_eq!(
        out.code(),
        Some(42),
        "a second exclusive flock must be refused"
    );
    drop(holder);
    // Another test's fork may briefly share the descriptor before its exec closes
    // it, so the lock is free "soon", not necessarily at once.
    let free = common::wait_until(5, || {
        let out = Command::new("flock")
            .args(["-n", "-E", "42"])
            .arg(&path)
            .arg("true")
            .status()
            .unwrap();
        out.code() == Some(0)
    });
    assert!(free, "the lock is free once the holder closed");

    // A FIFO created through the mount carries data between processes.
    let fifo = m.dir.join("pipe");
    // SAFETY: the CString from cpath lives until the end of the statement, past the call.
    assert_eq!(unsafe { libc::mkfifo(cpath(&fifo).as_ptr(), 0o600) }, 0);
    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::write(fifo, b"through the fifo").unwrap())
    };
    assert_eq!(std::fs::read(&fifo).unwrap(), b"through the fifo");
    writer.join().unwrap();
    assert_eq!(
        std::fs::symlink_metadata(&fifo).unwrap().mode() & libc::S_IFMT,
        libc::S_IFIFO
    );

    // A character device node (root may create one; the mount allows devices).
    let null = m.dir.join("null");
    let rdev = libc::makedev(1, 3);
    // SAFETY: the CString from cpath lives until the end of the statement, past the call.
    assert_eq!(
        unsafe { libc::mknod(cpath(&null).as_ptr(), libc::S_IFCHR | 0o666, rdev) },
        0,
        "errno {}",
        errno()
    );
    std::fs::write(&null, b"discarded").unwrap();
    assert_eq!(std::fs::metadata(&null).unwrap().rdev(), rdev);
    let seen = m.take_seen();
    assert!(
        seen.contains(&"create pipe".to_string()) && seen.contains(&"create null".to_string()),
        "{seen:?}"
    );
}

#[test]
fn other_users_get_the_permissions_of_the_bare_directory() {
    let t = tempdir();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let m = TestMount::new(t.path());
    let secret = m.dir.join("secret");
    std::fs::write(&secret, b"root only").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let open_dir = m.dir.join("open");
    std::fs::create_dir(&open_dir).unwrap();
    std::fs::set_permissions(&open_dir, std::fs::Permissions::from_mode(0o777)).unwrap();

    let nobody = |cmd: &str| {
        Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap()
    };
    // Reading a 0600 root file is refused, as on the bare directory.
    let out = nobody(&format!("cat {}", secret.display()));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{out:?}"
    );
    // Creating in a 0755 root directory is refused.
    let out = nobody(&format!("touch {}/x", m.dir.display()));
    assert!(!out.status.success());
    // Creating in a 0777 directory works and the file belongs to the creator.
    let out = nobody(&format!(
        "umask 027; echo hi > {}/mine; mkdir {}/sub",
        open_dir.display(),
        open_dir.display()
    ));
    assert!(out.status.success(), "{out:?}");
    let md = std::fs::metadata(open_dir.join("mine")).unwrap();
    assert_eq!(
        (md.uid(), md.gid(), md.mode() & 0o777),
        (65534, 65534, 0o640)
    );
    let md = std::fs::metadata(open_dir.join("sub")).unwrap();
    assert_eq!(
        (md.uid(), md.gid(), md.mode() & 0o777),
        (65534, 65534, 0o750)
    );
    drop(m);
    // The bare directory agrees after unmount.
    let md = std::fs::metadata(t.path().join("open/mine")).unwrap();
    assert_eq!((md.uid(), md.gid()), (65534, 65534));
}

#[test]
fn writes_to_a_hard_link_name_the_link_that_still_exists() {
    let t = tempdir();
    let m = TestMount::new(t.path());
    std::fs::write(m.dir.join("a"), b"1").unwrap();
    std::fs::hard_link(m.dir.join("a"), m.dir.join("b")).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(m.dir.join("b"))
        .unwrap();
    std::fs::remove_file(m.dir.join("a")).unwrap();
    m.take_seen();
    f.write_all(b"22").unwrap();
    drop(f);
    assert_eq!(m.take_seen(), vec!["write b".to_string()]);
    std::fs::remove_file(m.dir.join("b")).unwrap();
}

#[test]
fn explicit_times_and_xattrs_are_set_on_the_real_file() {
    let t = tempdir();
    let m = TestMount::new(t.path());
    let f = m.dir.join("timed");
    std::fs::write(&f, b"x").unwrap();
    let ts = [
        libc::timespec {
            tv_sec: 1_000_000_123,
            tv_nsec: 456,
        },
        libc::timespec {
            tv_sec: 1_000_000_789,
            tv_nsec: 12,
        },
    ];
    // SAFETY: the CString from cpath lives until the end of the statement, and `ts` holds the two
    // timespecs utimensat reads.
    assert_eq!(
        unsafe { libc::utimensat(libc::AT_FDCWD, cpath(&f).as_ptr(), ts.as_ptr(), 0) },
        0
    );
    let check = |p: &std::path::Path| {
        let md = std::fs::symlink_metadata(p).unwrap();
        assert_eq!((md.atime(), md.atime_nsec()), (1_000_000_123, 456));
        assert_eq!((md.mtime(), md.mtime_nsec()), (1_000_000_789, 12));
    };
    check(&f);
    // A symlink's own times (utimensat with AT_SYMLINK_NOFOLLOW).
    let l = m.dir.join("link");
    std::os::unix::fs::symlink("timed", &l).unwrap();
    // SAFETY: the CString from cpath lives until the end of the statement, and `ts` holds the two
    // timespecs utimensat reads.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            cpath(&l).as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(rc, 0, "errno {}", errno());
    check(&l);
    let name = std::ffi::CString::new("user.k").unwrap();
    // SAFETY: the path (until the end of the statement) and `name` are NUL-terminated, and the
    // value is 2 bytes long, as passed.
    let rc = unsafe {
        libc::setxattr(
            cpath(&f).as_ptr(),
            name.as_ptr(),
            b"v1".as_ptr().cast(),
            2,
            0,
        )
    };
    assert_eq!(rc, 0, "errno {}", errno());
    // XATTR_CREATE on an existing attribute fails as on the bare file.
    // SAFETY: the path (until the end of the statement) and `name` are NUL-terminated, and the
    // value is 2 bytes long, as passed.
    let rc = unsafe {
        libc::setxattr(
            cpath(&f).as_ptr(),
            name.as_ptr(),
            b"v2".as_ptr().cast(),
            2,
            libc::XATTR_CREATE,
        )
    };
    assert_eq!((rc, errno()), (-1, libc::EEXIST));
    drop(m);
    check(&t.path().join("timed"));
    check(&t.path().join("link"));
    let mut v = [0u8; 8];
    // SAFETY: the path (until the end of the statement) and `name` are NUL-terminated, and `v`
    // holds the 8 bytes passed.
    let n = unsafe {
        libc::getxattr(
            cpath(&t.path().join("timed")).as_ptr(),
            name.as_ptr(),
            v.as_mut_ptr().cast(),
            8,
        )
    };
    assert_eq!(&v[..n as usize], b"v1");
}

#[test]
fn a_reader_with_cached_pages_sees_every_later_write() {
    use std::os::unix::fs::FileExt;
    let t = tempdir();
    let m = TestMount::new(t.path());
    let path = m.dir.join("shared");
    std::fs::write(&path, vec![b'a'; 64 * 1024]).unwrap();
    let reader = std::fs::File::open(&path).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    reader.read_exact_at(&mut buf, 0).unwrap();
    assert!(buf.iter().all(|b| *b == b'a'));
    // A writer changes the middle and extends the file while the reader keeps
    // its descriptor (and the kernel its cached pages).
    let writer = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    writer.write_all_at(&[b'b'; 4096], 8192).unwrap();
    writer.write_all_at(&[b'c'; 100], 64 * 1024).unwrap();
    let mut again = vec![0u8; 64 * 1024 + 100];
    reader.read_exact_at(&mut again, 0).unwrap();
    assert!(
        again[8192..12288].iter().all(|b| *b == b'b'),
        "reader saw stale cached pages"
    );
    assert!(again[..8192].iter().all(|b| *b == b'a'));
    assert!(again[64 * 1024..].iter().all(|b| *b == b'c'));
    // And the writer reads its own writes.
    let mut own = [0u8; 4096];
    writer.read_exact_at(&mut own, 8192).unwrap();
    assert!(own.iter().all(|b| *b == b'b'));
}

#[test]
fn a_file_whose_name_ends_in_deleted_is_still_named() {
    let t = tempdir();
    let m = TestMount::new(t.path());
    std::fs::write(m.dir.join("f (deleted)"), b"1").unwrap();
    m.take_seen();
    std::fs::write(m.dir.join("f (deleted)"), b"22").unwrap();
    let seen = m.take_seen();
    assert!(seen.contains(&"write f (deleted)".to_string()), "{seen:?}");
}

#[test]
fn thousands_of_cached_inodes_do_not_exhaust_descriptors() {
    let t = tempdir();
    for i in 0..5000 {
        std::fs::write(t.path().join(format!("f{i}")), b"x").unwrap();
    }
    let m = TestMount::new(t.path());
    // Each looked-up inode holds a descriptor in the daemon (this process).
    let open: Vec<_> = (0..5000)
        .map(|i| std::fs::metadata(m.dir.join(format!("f{i}"))).unwrap())
        .collect();
    assert_eq!(open.len(), 5000);
    std::fs::write(m.dir.join("after"), b"still works").unwrap();
    assert_eq!(std::fs::read(m.dir.join("after")).unwrap(), b"still works");
}

/// Runs `cmd` in a shell as uid/gid 65534 with umask 077.
fn as_nobody(cmd: &str) -> std::process::Output {
    Command::new("sh")
        .arg("-c")
        .arg(format!("umask 077; {cmd}"))
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap()
}

#[test]
fn access_control_lists_work_as_on_the_bare_directory() {
    let bare = tempdir();
    let covered = tempdir();
    let m = TestMount::new(covered.path());
    for root in [bare.path(), m.dir.as_path()] {
        let shared = root.join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o700)).unwrap();
        // nobody gets in only through the ACL, and new files inherit a default ACL
        // that ignores nobody's umask 077.
        let st = Command::new("setfacl")
            .args([
                "-m",
                "u:nobody:rwx",
                "-m",
                "d:u::rwx,d:g::rwx,d:o::r-x,d:u:nobody:rwx",
            ])
            .arg(&shared)
            .status()
            .unwrap();
        assert!(st.success());
        let secret = root.join("secret");
        std::fs::write(&secret, b"s").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
        let st = Command::new("setfacl")
            .args(["-m", "u:nobody:---"])
            .arg(&secret)
            .status()
            .unwrap();
        assert!(st.success());
    }
    for root in [bare.path(), m.dir.as_path()] {
        let shared = root.join("shared");
        let out = as_nobody(&format!(
            "echo hi > {0}/mine && mkdir {0}/sub",
            shared.display()
        ));
        assert!(out.status.success(), "{}: {out:?}", root.display());
        // The named-user entry denies what "other" would allow.
        let out = as_nobody(&format!("cat {}", root.join("secret").display()));
        assert!(!out.status.success(), "{}: ACL must deny", root.display());
    }
    let mode = |p: std::path::PathBuf| std::fs::metadata(p).unwrap().mode() & 0o7777;
    assert_eq!(
        mode(m.dir.join("shared/mine")),
        mode(bare.path().join("shared/mine"))
    );
    assert_eq!(
        mode(m.dir.join("shared/sub")),
        mode(bare.path().join("shared/sub"))
    );
    assert_eq!(
        mode(m.dir.join("shared/mine")) & 0o070,
        0o060,
        "default ACL, not umask 077"
    );
    let acl = |p: std::path::PathBuf| {
        String::from_utf8(
            Command::new("getfacl")
                .args(["-c", "-n"])
                .arg(p)
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap()
    };
    assert_eq!(
        acl(m.dir.join("shared/sub")),
        acl(bare.path().join("shared/sub"))
    );
}

/// Holds every fsync of a file named `held` until released.
#[derive(Default)]
struct HoldingSink {
    released: parking_lot::Mutex<bool>,
    cv: parking_lot::Condvar,
    holding: std::sync::atomic::AtomicUsize,
}

impl tandem::fs::MutationSink for HoldingSink {
    fn apply(
        &self,
        m: &tandem::fs::Mutation<'_>,
        local: tandem::fs::LocalApply<'_>,
    ) -> Result<(), tandem::fs::Errno> {
        if let tandem::fs::Mutation::Fsync { path: Some(p), .. } = m
            && p.ends_with("held")
        {
            self.holding
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut r = self.released.lock();
            while !*r {
                self.cv.wait(&mut r);
            }
        }
        local()
    }
}

#[test]
fn requests_go_on_while_an_fsync_waits_and_the_mount_ends_cleanly() {
    common::require_fuse();
    let t = tempdir();
    let sink = Arc::new(HoldingSink::default());
    let (m, _) = tandem::fs::mount(t.path(), sink.clone(), &Default::default()).unwrap();
    let dir = m.dir().to_path_buf();
    std::fs::write(dir.join("held"), b"x").unwrap();
    let held = {
        let f = std::fs::File::open(dir.join("held")).unwrap();
        std::thread::spawn(move || f.sync_all())
    };
    assert!(
        common::wait_until_every(10, std::time::Duration::from_millis(1), || sink
            .holding
            .load(std::sync::atomic::Ordering::SeqCst)
            != 0),
        "the fsync never arrived"
    );
    // Another caller's requests, fsyncs included, are served meanwhile.
    for i in 0..200 {
        let p = dir.join(format!("f{i}"));
        std::fs::write(&p, pattern(i, 5000)).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), pattern(i, 5000));
        if i % 20 == 0 {
            std::fs::File::open(&p).unwrap().sync_all().unwrap();
        }
    }
    assert!(!held.is_finished(), "the held fsync returned early");
    *sink.released.lock() = true;
    sink.cv.notify_all();
    held.join().unwrap().unwrap();
    // Unmounting with workers idle returns promptly.
    let started = std::time::Instant::now();
    assert_eq!(m.unmount().unwrap(), tandem::fs::Unmounted::Clean);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(
        std::fs::read(t.path().join("f199")).unwrap(),
        pattern(199, 5000)
    );
}

#[test]
fn a_mount_unmounted_from_outside_ends_its_session() {
    common::require_fuse();
    let t = tempdir();
    let sink = Arc::new(common::RecordingSink::default());
    let (m, _) = tandem::fs::mount(t.path(), sink, &Default::default()).unwrap();
    // Make every worker serve a request so that some wait as followers.
    for i in 0..50 {
        std::fs::write(m.dir().join(format!("f{i}")), b"x").unwrap();
    }
    // A child that another test forks may hold a copy of a descriptor into
    // the mount until it execs: the mount is busy for that moment.
    assert!(
        common::wait_until(10, || Command::new("umount")
            .arg(m.dir())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success()),
        "umount kept failing"
    );
    assert!(
        common::wait_until_every(10, std::time::Duration::from_millis(10), || m.is_finished()),
        "the session did not end"
    );
    assert_eq!(m.unmount().unwrap(), tandem::fs::Unmounted::Clean);
}

/// Large writes may be answered before they reach the real file: every request
/// that follows must still find them there (reads through another descriptor,
/// the sink's record), also when the caller's buffer is not page-aligned and
/// the kernel splits each write into a large request and a small one.
#[test]
fn writes_answered_early_are_seen_by_every_later_request() {
    use std::os::unix::fs::FileExt;
    let t = tempdir();
    let m = TestMount::new(t.path());
    let path = m.dir.join("stream");
    let writer = std::fs::File::create(&path).unwrap();
    let reader = std::fs::File::open(&path).unwrap();
    let len = (1 << 20) + 100;
    let mut unaligned = vec![0u8; len + 16];
    let mut back = vec![0u8; len];
    for i in 0..48u64 {
        let block = pattern(i, len);
        unaligned[16..].copy_from_slice(&block);
        let at = i * len as u64;
        writer.write_all_at(&unaligned[16..], at).unwrap();
        reader.read_exact_at(&mut back, at).unwrap();
        assert!(back == block, "block {i} read back stale");
        assert_eq!(reader.metadata().unwrap().len(), at + len as u64);
    }
    let writes = m
        .take_seen()
        .iter()
        .filter(|s| *s == "write stream")
        .count();
    assert!(writes >= 48, "the sink saw {writes} writes");
    drop((writer, reader));
    drop(m);
    let real = std::fs::read(t.path().join("stream")).unwrap();
    for i in 0..48u64 {
        let at = (i as usize) * len;
        assert!(real[at..at + len] == pattern(i, len), "block {i} lost");
    }
}

/// Fails every write to a file named `doomed` from 4 MiB on, without applying it.
struct FailingSink;

impl tandem::fs::MutationSink for FailingSink {
    fn apply(
        &self,
        m: &tandem::fs::Mutation<'_>,
        local: tandem::fs::LocalApply<'_>,
    ) -> Result<(), tandem::fs::Errno> {
        if let tandem::fs::Mutation::Write {
            path: Some(p),
            offset,
            ..
        } = m
            && p.ends_with("doomed")
            && *offset >= 4 << 20
        {
            return Err(tandem::fs::Errno::EIO);
        }
        local()
    }
}

/// A write answered before it was applied and then failed is never lost: the
/// next write, fsync or close through the same descriptor reports it, and a
/// close by another process sharing the descriptor does not swallow it.
#[test]
fn a_failed_write_that_was_answered_early_is_reported() {
    use std::os::unix::fs::FileExt;
    common::require_fuse();
    let t = tempdir();
    let (m, _) = tandem::fs::mount(t.path(), Arc::new(FailingSink), &Default::default()).unwrap();
    // Page-aligned, so that the kernel sends each write as one request.
    let backing = vec![7u8; (1 << 20) + 4096];
    let start = backing.as_ptr().align_offset(4096);
    let block = &backing[start..start + (1 << 20)];
    let eio = |r: &std::io::Result<()>| {
        r.as_ref().err().and_then(|e| e.raw_os_error()) == Some(libc::EIO)
    };

    // Reported by a later write, or by close.
    let f = std::fs::File::create(m.dir().join("doomed")).unwrap();
    let results: Vec<_> = (0..8u64).map(|i| f.write_all_at(block, i << 20)).collect();
    for (i, r) in results[..4].iter().enumerate() {
        assert!(r.is_ok(), "write {i}: {r:?}");
    }
    let first = results.iter().position(|r| r.is_err());
    // SAFETY: into_raw_fd takes the open descriptor out of `f`, so it is closed once, here.
    let closed = unsafe { libc::close(std::os::fd::IntoRawFd::into_raw_fd(f)) };
    let close_eio = closed == -1 && errno() == libc::EIO;
    // Writes answered while write 4 is still being applied cannot know of
    // its failure yet (as many as there are workers), so it may surface at
    // any later write, or at close.
    match first {
        Some(i) => assert!(eio(&results[i]), "write {i}: {:?}", results[i]),
        None => assert!(close_eio, "no write and not close reported the failure"),
    }

    // Reported by fsync.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(m.dir().join("doomed"))
        .unwrap();
    let written = f.write_all_at(block, 5 << 20);
    // A child inherits the descriptor and closes its copy at exec.
    assert!(Command::new("true").status().unwrap().success());
    assert!(
        eio(&written) || eio(&f.sync_all()),
        "neither the write nor fsync reported the failure"
    );
    drop(f);
    assert_eq!(
        std::fs::read(t.path().join("doomed")).unwrap()[..4 << 20],
        vec![7u8; 4 << 20][..]
    );
    m.unmount().unwrap();
}

/// A mount handed over to a new session (as a new daemon takes it after
/// `execve`) keeps serving the descriptors an application holds open — a
/// writer fsyncing throughout, a reader and a directory stream — with no
/// failed call; requests made while nobody reads wait and are answered by
/// the new session; the inode numbers stay.
#[test]
fn a_mount_handed_over_keeps_open_files_and_numbers() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};
    let t = tempdir();
    std::fs::create_dir(t.path().join("sub")).unwrap();
    for i in 0..20 {
        std::fs::write(t.path().join(format!("sub/f{i}")), b"x").unwrap();
    }
    let mut m = TestMount::new(t.path());
    let dir = m.dir.clone();
    let ino_before = std::fs::metadata(dir.join("sub/f3")).unwrap().ino();
    std::fs::write(dir.join("read-me"), pattern(7, 1 << 20)).unwrap();
    let mut reader = std::fs::File::open(dir.join("read-me")).unwrap();
    let mut head = vec![0u8; 4096];
    reader.read_exact(&mut head).unwrap();
    let mut listing = std::fs::read_dir(dir.join("sub")).unwrap();
    let first = listing.next().unwrap().unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let log = dir.join("log");
    let writer = {
        let (stop, log) = (stop.clone(), log.clone());
        std::thread::spawn(move || {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .unwrap();
            let (mut n, mut longest) = (0u64, Duration::ZERO);
            while !stop.load(Ordering::SeqCst) {
                let t0 = Instant::now();
                f.write_all(format!("record {n}\n").as_bytes())
                    .expect("write");
                f.sync_data().expect("fdatasync");
                longest = longest.max(t0.elapsed());
                n += 1;
            }
            (n, longest)
        })
    };
    std::thread::sleep(Duration::from_millis(200));

    let old = m.mounted.take().unwrap();
    old.freeze(Duration::from_secs(5)).expect("freeze");
    let image = old.hand_over();
    assert!(image.files.len() >= 2, "open files in the image: {image:?}");
    assert!(
        !image.dirs.is_empty(),
        "the directory stream is in the image"
    );
    // Nobody reads now: a request waits.
    let waiting = {
        let dir = dir.clone();
        std::thread::spawn(move || std::fs::metadata(dir.join("sub/f5")).map(|m| m.len()))
    };
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !waiting.is_finished(),
        "answered while nobody read the session"
    );
    let sink = Arc::new(common::RecordingSink::default());
    // SAFETY: the image's descriptors belong to the abandoned session, whose
    // workers stay parked and never close them.
    let new =
        unsafe { tandem::fs::resume(image, sink.clone(), &tandem::fs::MountConfig::default()) }
            .expect("resume");
    assert_eq!(waiting.join().unwrap().unwrap(), 1);
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::SeqCst);
    let (records, longest) = writer.join().unwrap();
    assert!(records > 10, "{records} records");
    eprintln!("{records} records, longest write+fdatasync {longest:?}");

    // The old descriptors go on through the new session.
    reader.read_exact(&mut head).unwrap();
    assert_eq!(head, pattern(7, 1 << 20)[4096..8192]);
    let rest: Vec<String> = listing
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(rest.len() + 1, 20, "first {first:?}, then {rest:?}");
    assert_eq!(
        std::fs::metadata(dir.join("sub/f3")).unwrap().ino(),
        ino_before
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.lines().count() as u64, records);
    assert!(
        sink.seen.lock().iter().any(|s| s == "write log"),
        "the new session's sink sees the writes"
    );
    // A directory entry holds its stream open, which would keep the mount busy.
    drop((reader, first));
    m.mounted = Some(new);
    m.unmount();
    assert_eq!(
        std::fs::read_to_string(t.path().join("log"))
            .unwrap()
            .lines()
            .count() as u64,
        records
    );
}

#[test]
fn an_idle_mount_has_no_worker_and_serves_again_at_once() {
    let t = tempdir();
    let m = TestMount::new(t.path());
    let mounted = m.mounted.as_ref().unwrap();
    std::fs::write(m.dir.join("f"), b"first").unwrap();
    // At rest the workers end, the last about two seconds after its last request.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while mounted.workers() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(mounted.workers(), 0, "workers left at rest");
    // The next request is served (the watcher starts a worker), and so is a
    // burst of writers from several threads, which needs more than one.
    assert_eq!(std::fs::read(m.dir.join("f")).unwrap(), b"first");
    assert!(mounted.workers() >= 1);
    let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    std::thread::scope(|s| {
        for i in 0..8u64 {
            let dir = m.dir.clone();
            s.spawn(move || {
                let mut f = std::fs::File::create(dir.join(format!("w{i}"))).unwrap();
                for j in 0..40u64 {
                    f.write_all(&pattern(i * 100 + j, 64 << 10)).unwrap();
                    f.sync_data().unwrap();
                }
            });
        }
        let most = most.clone();
        s.spawn(move || {
            for _ in 0..200 {
                most.fetch_max(mounted.workers(), std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        });
    });
    for i in 0..8u64 {
        let got = std::fs::read(m.dir.join(format!("w{i}"))).unwrap();
        let want: Vec<u8> = (0..40u64)
            .flat_map(|j| pattern(i * 100 + j, 64 << 10))
            .collect();
        assert!(got == want, "w{i} differs");
    }
    assert!(
        most.load(std::sync::atomic::Ordering::Relaxed) >= 2,
        "one worker served eight writers"
    );
}
