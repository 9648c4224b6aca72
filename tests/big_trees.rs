//! A tree with more files than the daemon may hold descriptors, walked
//! through the mount. A process of its own: it lowers its open-file limit.

mod common;

use std::io::Read;
use std::os::unix::fs::MetadataExt;

use common::{TestMount, tempdir};

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn a_tree_of_more_files_than_descriptors_is_walked_and_changed_through_the_mount() {
    // The mount holds a descriptor per inode the kernel caches: with 4,096
    // at most, 30,000 files would exhaust them (EMFILE on every call).
    let limit = libc::rlimit {
        rlim_cur: 4096,
        rlim_max: 4096,
    };
    // SAFETY: `limit` is a live rlimit for the kernel to read.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
    let t = tempdir();
    for d in 0..10 {
        let dir = t.path().join(format!("d{d}"));
        std::fs::create_dir(&dir).unwrap();
        for i in 0..3000 {
            std::fs::write(dir.join(format!("f{i}")), format!("{d}/{i}")).unwrap();
        }
    }
    let m = TestMount::new(t.path());
    let mut most = 0;
    for round in 0..2 {
        for d in 0..10 {
            for i in 0..3000 {
                let p = m.dir.join(format!("d{d}/f{i}"));
                let md = std::fs::metadata(&p)
                    .unwrap_or_else(|e| panic!("round {round}: stat {}: {e}", p.display()));
                assert_eq!(md.size(), format!("{d}/{i}").len() as u64);
                if i % 500 == 0 {
                    let mut s = String::new();
                    std::fs::File::open(&p)
                        .unwrap()
                        .read_to_string(&mut s)
                        .unwrap();
                    assert_eq!(s, format!("{d}/{i}"));
                }
            }
            most = most.max(open_descriptors());
        }
    }
    assert!(
        most < 4096,
        "{most} descriptors open at most, the limit is 4096"
    );
    // Still a working mount: a file made, renamed and read back, and one
    // looked up long ago (its node forgotten by now) changed.
    std::fs::write(m.dir.join("d0/new"), b"new").unwrap();
    std::fs::rename(m.dir.join("d0/new"), m.dir.join("d9/new")).unwrap();
    assert_eq!(std::fs::read(m.dir.join("d9/new")).unwrap(), b"new");
    std::fs::write(m.dir.join("d0/f1"), b"changed").unwrap();
    assert_eq!(std::fs::read(t.path().join("d0/f1")).unwrap(), b"changed");
    let seen = m.take_seen();
    assert!(seen.contains(&"write d0/f1".to_string()), "{seen:?}");
}
