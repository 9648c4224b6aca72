//! The replicated directories: each must exist (unless checks on disk are disabled), and
//! no two may overlap, since one file cannot belong to two modules.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use super::super::DirChecks;
use super::super::raw::{RawModule, Section, Str};
use super::super::report::{Report, Span};
use super::fields::{self, index, join};

pub(super) fn dir(r: &mut Report, value: &Str, field: &str, checks: DirChecks) -> Option<PathBuf> {
    let path = fields::abs_path(r, value, field)?;
    let problem = if path == Path::new("/") {
        Some("must not be the root directory".to_string())
    } else if let DirChecks::On { is_stale_mount } = checks {
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_dir() => None,
            Ok(_) => Some("is not a directory".to_string()),
            Err(e) if e.kind() == ErrorKind::NotFound => Some("does not exist".to_string()),
            // A tandem mount left by a killed daemon: the next one removes it.
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) && is_stale_mount(&path) => None,
            Err(e) => Some(format!("cannot be checked: {e}")),
        }
    } else {
        None
    };
    match problem {
        Some(problem) => {
            r.error(
                field,
                Some(value.span()),
                format!("{:?} {problem}", value.get_ref()),
            );
            None
        }
        None => Some(path),
    }
}

/// Compares every pair of directories, across and within modules, by their normalised
/// paths. Each overlap is reported once, on the later directory.
pub(super) fn overlaps(r: &mut Report, modules: &[Section<RawModule>]) {
    struct Dir<'a> {
        field: String,
        span: Span,
        text: &'a str,
        path: PathBuf,
    }
    let mut seen: Vec<Dir> = Vec::new();
    for (m, section) in modules.iter().enumerate() {
        let Some(list) = section.value.as_ref().and_then(|v| v.dirs.as_ref()) else {
            continue;
        };
        for (d, value) in list.get_ref().iter().enumerate() {
            let Ok(path) = fields::normal_abs_path(value.get_ref()) else {
                continue; // already reported
            };
            let dir = Dir {
                field: index(&join(&index("module", m), "dirs"), d),
                span: value.span(),
                text: value.get_ref(),
                path,
            };
            for other in &seen {
                let relation = if dir.path == other.path {
                    "is the same directory as"
                } else if dir.path.starts_with(&other.path) {
                    "sits inside"
                } else if other.path.starts_with(&dir.path) {
                    "contains"
                } else {
                    continue;
                };
                r.error(
                    &dir.field,
                    Some(dir.span.clone()),
                    format!("{:?} {relation} {} {:?}", dir.text, other.field, other.text),
                );
            }
            seen.push(dir);
        }
    }
}
