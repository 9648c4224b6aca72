//! `exclude`: paths of a module that are not replicated (the application's
//! caches, temporary and lock files). Patterns are globs, matched relative to
//! each replicated directory:
//!
//! - without a `/` (`*.tmp`, `core`): the name of a file or directory at any
//!   depth;
//! - with a `/` inside (`logs/*.gz`, `var/**/cache`): the path from the
//!   directory's root; `*` stays within one name, `**` crosses directories;
//! - ending in `/` (`cache/`): directories only.
//!
//! An excluded directory excludes everything below it. Pure: no I/O.

use std::path::Path;

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

/// The compiled patterns of one module.
#[derive(Clone, Debug)]
pub struct Exclude {
    patterns: Vec<String>,
    /// Matched against a name, against a path from the root; each for any
    /// kind of entry and for directories only.
    name: GlobSet,
    path: GlobSet,
    name_dir: GlobSet,
    path_dir: GlobSet,
}

impl Default for Exclude {
    fn default() -> Self {
        Exclude::new(&[]).expect("no patterns")
    }
}

/// What is wrong with a pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadPattern {
    #[error("matches nothing: a pattern needs a name before its final /")]
    Empty,
    #[error("{0}")]
    Glob(globset::ErrorKind),
}

/// A pattern of a list, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{pattern:?}: {why}")]
pub struct BadPatterns {
    pub pattern: String,
    pub why: BadPattern,
}

/// How a pattern reads; the error says what is wrong with it.
fn glob(pattern: &str) -> Result<(Glob, bool, bool), BadPattern> {
    let dir_only = pattern.ends_with('/');
    let body = pattern.trim_end_matches('/');
    if body.is_empty() {
        return Err(BadPattern::Empty);
    }
    let anchored = body.contains('/');
    let g = GlobBuilder::new(body)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map_err(|e| BadPattern::Glob(e.kind().clone()))?;
    Ok((g, anchored, dir_only))
}

/// Checks one pattern (for the configuration's report).
pub fn check(pattern: &str) -> Result<(), BadPattern> {
    glob(pattern).map(|_| ())
}

impl Exclude {
    pub fn new(patterns: &[String]) -> Result<Exclude, BadPatterns> {
        let mut sets: [GlobSetBuilder; 4] = std::array::from_fn(|_| GlobSetBuilder::new());
        for p in patterns {
            let (g, anchored, dir_only) = glob(p).map_err(|why| BadPatterns {
                pattern: p.clone(),
                why,
            })?;
            sets[anchored as usize * 2 + dir_only as usize].add(g);
        }
        let [name, name_dir, path, path_dir] = sets.map(|b| b.build().expect("checked globs"));
        Ok(Exclude {
            patterns: patterns.to_vec(),
            name,
            path,
            name_dir,
            path_dir,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// Whether some pattern is for directories only: then whether a path is
    /// excluded depends on its kind.
    pub fn by_kind(&self) -> bool {
        !self.name_dir.is_empty() || !self.path_dir.is_empty()
    }

    /// Whether `rel` (relative to a replicated directory; `is_dir`: it is a
    /// directory) is excluded, itself or through a directory above it.
    pub fn excluded(&self, rel: &Path, is_dir: bool) -> bool {
        if self.is_empty() || rel.as_os_str().is_empty() {
            return false;
        }
        let mut at = Some(rel);
        let mut dir = is_dir;
        while let Some(p) = at.filter(|p| !p.as_os_str().is_empty()) {
            if self.matches(p, dir) {
                return true;
            }
            at = p.parent();
            dir = true;
        }
        false
    }

    fn matches(&self, p: &Path, dir: bool) -> bool {
        let name = p.file_name().map(Path::new).unwrap_or(p);
        self.name.is_match(name)
            || self.path.is_match(p)
            || dir && (self.name_dir.is_match(name) || self.path_dir.is_match(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(p: &[&str]) -> Exclude {
        Exclude::new(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn names_match_at_any_depth_and_paths_from_the_root() {
        let e = ex(&["*.tmp", "logs/*.gz", "var/**/cache"]);
        assert!(e.excluded(Path::new("a.tmp"), false));
        assert!(e.excluded(Path::new("x/y/a.tmp"), false));
        assert!(!e.excluded(Path::new("a.tmpx"), false));
        assert!(e.excluded(Path::new("logs/old.gz"), false));
        assert!(!e.excluded(Path::new("x/logs/old.gz"), false), "anchored");
        assert!(
            !e.excluded(Path::new("logs/sub/old.gz"), false),
            "* stays in a name"
        );
        assert!(e.excluded(Path::new("var/a/b/cache"), true));
        assert!(
            e.excluded(Path::new("var/cache/f"), false),
            "below an excluded dir"
        );
        assert!(!e.excluded(Path::new(""), true), "the root never");
    }

    #[test]
    fn a_trailing_slash_excludes_directories_and_what_they_hold() {
        let e = ex(&["cache/"]);
        assert!(e.by_kind());
        assert!(e.excluded(Path::new("cache"), true));
        assert!(
            !e.excluded(Path::new("cache"), false),
            "a file named cache stays"
        );
        assert!(e.excluded(Path::new("a/cache/b/c"), false));
        assert!(!e.excluded(Path::new("a/cachex/b"), false));
    }

    #[test]
    fn bad_patterns_are_refused_with_the_reason() {
        assert!(
            check("[a-").unwrap_err().to_string().contains("unclosed"),
            "{:?}",
            check("[a-")
        );
        assert_eq!(check("/"), Err(BadPattern::Empty));
        let e = Exclude::new(&["ok".into(), "{a".into()]).unwrap_err();
        assert_eq!(e.pattern, "{a");
        assert!(e.to_string().contains("\"{a\""), "{e}");
    }
}
