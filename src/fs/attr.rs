//! Converting the real inode's `stat` into what the kernel caches for the mount.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::fuse::{FileAttr, FileType, INodeNo};

pub fn kind_of(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

pub fn kind_of_dirent(d_type: u8) -> Option<FileType> {
    Some(match d_type {
        libc::DT_DIR => FileType::Directory,
        libc::DT_LNK => FileType::Symlink,
        libc::DT_CHR => FileType::CharDevice,
        libc::DT_BLK => FileType::BlockDevice,
        libc::DT_FIFO => FileType::NamedPipe,
        libc::DT_SOCK => FileType::Socket,
        libc::DT_REG => FileType::RegularFile,
        _ => return None,
    })
}

/// A file time as SystemTime; times outside what SystemTime holds are clamped
/// to the epoch rather than taking a worker thread down.
pub fn time(sec: i64, nsec: i64) -> SystemTime {
    let t = if sec >= 0 {
        UNIX_EPOCH.checked_add(Duration::new(sec as u64, nsec as u32))
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(sec.unsigned_abs()))
            .and_then(|t| t.checked_add(Duration::from_nanos(nsec as u64)))
    };
    t.unwrap_or(UNIX_EPOCH)
}

pub fn to_timespec(t: SystemTime) -> libc::timespec {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => libc::timespec {
            tv_sec: d.as_secs() as i64,
            tv_nsec: d.subsec_nanos() as i64,
        },
        Err(e) => {
            let d = e.duration();
            let (mut s, mut n) = (-(d.as_secs() as i64), -(d.subsec_nanos() as i64));
            if n < 0 {
                s -= 1;
                n += 1_000_000_000;
            }
            libc::timespec {
                tv_sec: s,
                tv_nsec: n,
            }
        }
    }
}

pub fn file_attr(id: u64, st: &libc::stat) -> FileAttr {
    FileAttr {
        ino: INodeNo(id),
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: time(st.st_atime, st.st_atime_nsec),
        mtime: time(st.st_mtime, st.st_mtime_nsec),
        ctime: time(st.st_ctime, st.st_ctime_nsec),
        kind: kind_of(st.st_mode),
        perm: (st.st_mode & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timespec_round_trips_before_and_after_the_epoch() {
        for (s, n) in [
            (0i64, 0i64),
            (1_700_000_000, 123_456_789),
            (-5, 250_000_000),
            (-1, 999_999_999),
        ] {
            let t = time(s, n);
            let ts = to_timespec(t);
            assert_eq!((ts.tv_sec, ts.tv_nsec), (s, n), "for {s}.{n}");
        }
    }

    #[test]
    fn extreme_times_do_not_panic() {
        let _ = time(i64::MIN, 0);
        let _ = time(i64::MAX, 999_999_999);
    }

    #[test]
    fn file_types_map_from_mode_bits() {
        assert_eq!(kind_of(libc::S_IFDIR | 0o755), FileType::Directory);
        assert_eq!(kind_of(libc::S_IFLNK | 0o777), FileType::Symlink);
        assert_eq!(kind_of(libc::S_IFIFO), FileType::NamedPipe);
        assert_eq!(kind_of(libc::S_IFREG | 0o644), FileType::RegularFile);
        assert_eq!(kind_of_dirent(libc::DT_UNKNOWN), None);
    }
}
