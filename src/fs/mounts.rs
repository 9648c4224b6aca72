//! Reading the mount table: is a directory already covered by a tandem mount, is
//! that mount alive or left stale by a killed process, and cleaning it up.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// The source name tandem mounts carry in the mount table (type `fuse`).
pub const SOURCE: &str = "tandem";

impl MountEntry {
    pub fn is_tandem(&self) -> bool {
        (self.fstype == "fuse" || self.fstype == "fuse.tandem") && self.source == SOURCE
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_point: PathBuf,
    pub fstype: String,
    pub source: String,
}

/// Undoes the octal escapes (`\040` for a space…) of /proc/self/mountinfo.
fn unescape(field: &str) -> OsString {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    OsString::from_vec(out)
}

/// Parses mountinfo text (see proc(5)): field 5 is the mount point, and after the
/// "-" separator come the type and the source.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            Some(MountEntry {
                mount_point: PathBuf::from(unescape(fields.get(4)?)),
                fstype: (*fields.get(sep + 1)?).to_string(),
                source: (*fields.get(sep + 2)?).to_string(),
            })
        })
        .collect()
}

pub fn mounts() -> std::io::Result<Vec<MountEntry>> {
    Ok(parse_mountinfo(&std::fs::read_to_string(
        "/proc/self/mountinfo",
    )?))
}

/// Tandem mounts whose mount point is `dir` (several if stale ones are stacked).
pub fn tandem_mounts_at(all: &[MountEntry], dir: &Path) -> usize {
    all.iter()
        .filter(|m| m.is_tandem() && m.mount_point == dir)
        .count()
}

/// The tandem mount that `dir` sits strictly inside, if any.
pub fn enclosing_tandem_mount<'a>(all: &'a [MountEntry], dir: &Path) -> Option<&'a Path> {
    all.iter()
        .filter(|m| m.is_tandem() && m.mount_point != dir && dir.starts_with(&m.mount_point))
        .map(|m| m.mount_point.as_path())
        .next()
}

/// A FUSE mount whose serving process died answers every request with ENOTCONN.
/// `statfs` always reaches the file system (stat may be answered from the
/// kernel's attribute cache for a while after the process died).
pub fn is_stale(dir: &Path) -> bool {
    nix::sys::statfs::statfs(dir).err() == Some(nix::errno::Errno::ENOTCONN)
}

/// Detaches the mount on top of `dir`.
pub fn detach(dir: &Path) -> std::io::Result<()> {
    umount(dir, libc::MNT_DETACH)
}

pub fn umount(dir: &Path, flags: i32) -> std::io::Result<()> {
    nix::mount::umount2(dir, nix::mount::MntFlags::from_bits_retain(flags))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
95 22 0:50 / /srv/my\\040data rw,nosuid,nodev,relatime shared:60 - fuse tandem rw,user_id=0,group_id=0,default_permissions,allow_other
96 95 0:51 / /srv/my\\040data/inner rw shared:61 - tmpfs tmpfs rw
";

    #[test]
    fn parses_mount_points_with_escaped_spaces() {
        let m = parse_mountinfo(SAMPLE);
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].mount_point, PathBuf::from("/srv/my data"));
        assert!(m[1].is_tandem());
        assert!(!m[2].is_tandem());
        assert_eq!(m[0].fstype, "ext4");
    }

    #[test]
    fn finds_tandem_mounts_at_and_around_a_dir() {
        let m = parse_mountinfo(SAMPLE);
        assert_eq!(tandem_mounts_at(&m, Path::new("/srv/my data")), 1);
        assert_eq!(tandem_mounts_at(&m, Path::new("/srv")), 0);
        assert_eq!(
            enclosing_tandem_mount(&m, Path::new("/srv/my data/inner/x")),
            Some(Path::new("/srv/my data"))
        );
        assert_eq!(enclosing_tandem_mount(&m, Path::new("/srv/my data")), None);
        assert_eq!(enclosing_tandem_mount(&m, Path::new("/srv/my datax")), None);
    }
}
