//! Checks for single values, shared by all sections. Each reports its own error and
//! returns `None` when the value is unusable.

use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use toml::Spanned;

use super::super::raw::{Int, List, Str};
use super::super::report::{Report, Span};

/// Field paths: `join("module[0]", "dirs")` → `module[0].dirs`.
pub(super) fn join(base: &str, key: &str) -> String {
    format!("{base}.{key}")
}

pub(super) fn index(base: &str, i: usize) -> String {
    format!("{base}[{i}]")
}

/// A value that must be present; `section` locates the error when it is not.
pub(super) fn required<'a, T>(
    r: &mut Report,
    value: &'a Option<Spanned<T>>,
    field: &str,
    section: &Option<Span>,
) -> Option<&'a Spanned<T>> {
    if value.is_none() {
        r.error(field, section.clone(), "is required");
    }
    value.as_ref()
}

/// Names end up in file paths and URLs, hence the narrow alphabet and no `.`/`..`.
pub(super) fn name(r: &mut Report, value: &Str, field: &str) -> Option<String> {
    let s = value.get_ref();
    let alphabet = s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if !(1..=64).contains(&s.len()) || !alphabet {
        r.error(
            field,
            Some(value.span()),
            format!("{s:?} must be 1 to 64 characters from A-Z a-z 0-9 _ . -"),
        );
        return None;
    }
    if s == "." || s == ".." {
        r.error(
            field,
            Some(value.span()),
            format!("{s:?} is not a usable name"),
        );
        return None;
    }
    Some(s.clone())
}

/// An integer in `min..=max`, or `default` when absent.
pub(super) fn int(
    r: &mut Report,
    value: &Option<Int>,
    field: &str,
    default: i64,
    min: i64,
    max: i64,
) -> Option<i64> {
    let Some(value) = value else {
        return Some(default);
    };
    let v = *value.get_ref();
    if (min..=max).contains(&v) {
        return Some(v);
    }
    let message = if max == i64::MAX {
        format!("must be at least {min} (got {v})")
    } else {
        format!("must be between {min} and {max} (got {v})")
    };
    r.error(field, Some(value.span()), message);
    None
}

pub(super) fn port(r: &mut Report, value: &Option<Int>, field: &str, default: u16) -> Option<u16> {
    int(r, value, field, default.into(), 1, 65535).map(|p| p as u16)
}

/// One of `options`, or `default` when absent.
pub(super) fn choice<T: Copy>(
    r: &mut Report,
    value: &Option<Str>,
    field: &str,
    options: &[(&str, T)],
    default: T,
) -> Option<T> {
    let Some(value) = value else {
        return Some(default);
    };
    let found = options.iter().find(|(text, _)| *text == value.get_ref());
    if found.is_none() {
        let names: Vec<String> = options.iter().map(|(t, _)| format!("{t:?}")).collect();
        r.error(
            field,
            Some(value.span()),
            format!("{:?} is not one of {}", value.get_ref(), names.join(", ")),
        );
    }
    found.map(|(_, v)| *v)
}

/// Text parsed with its `FromStr`, whose error message is reported as is.
pub(super) fn parsed<T: FromStr<Err: std::fmt::Display>>(
    r: &mut Report,
    value: &Str,
    field: &str,
) -> Option<T> {
    value
        .get_ref()
        .parse()
        .map_err(|e: T::Err| r.error(field, Some(value.span()), e.to_string()))
        .ok()
}

/// An IP address; host names are not accepted where name resolution could fail
/// exactly when the value is needed.
pub(super) fn ip(r: &mut Report, value: &Str, field: &str) -> Option<IpAddr> {
    value
        .get_ref()
        .parse()
        .map_err(|_| {
            r.error(
                field,
                Some(value.span()),
                format!("{:?} is not an IP address", value.get_ref()),
            )
        })
        .ok()
}

/// Each element of a list checked with `check`; `None` if any element failed.
pub(super) fn each<T>(
    r: &mut Report,
    list: &List,
    field: &str,
    mut check: impl FnMut(&mut Report, &Str, &str) -> Option<T>,
) -> Option<Vec<T>> {
    let before = r.count();
    let items: Vec<Option<T>> = list
        .get_ref()
        .iter()
        .enumerate()
        .map(|(i, item)| check(r, item, &index(field, i)))
        .collect();
    if r.count() > before {
        return None;
    }
    items.into_iter().collect()
}

pub(super) fn non_empty(r: &mut Report, list: &List, field: &str, why: &str) -> bool {
    if list.get_ref().is_empty() {
        r.error(field, Some(list.span()), format!("must not be empty {why}"));
        return false;
    }
    true
}

/// Reports the second occurrence of any value that appears twice.
pub(super) fn unique<T: PartialEq>(r: &mut Report, list: &List, field: &str, values: &[T]) {
    for (i, v) in values.iter().enumerate() {
        if let Some(first) = values[..i].iter().position(|w| w == v) {
            let item = &list.get_ref()[i];
            r.error(
                index(field, i),
                Some(item.span()),
                format!("{:?} repeats {}", item.get_ref(), index(field, first)),
            );
        }
    }
}

/// An absolute path without `..`, so that what is checked is what is used.
pub(super) fn abs_path(r: &mut Report, value: &Str, field: &str) -> Option<PathBuf> {
    normal_abs_path(value.get_ref())
        .map_err(|problem| {
            let message = format!("{:?} {problem}", value.get_ref());
            r.error(field, Some(value.span()), message)
        })
        .ok()
}

/// The path with `.` components and repeated or trailing `/` removed, or why it is unusable.
pub(super) fn normal_abs_path(s: &str) -> Result<PathBuf, &'static str> {
    let path = Path::new(s);
    if s.contains('\0') {
        Err("must not contain a NUL character")
    } else if !path.is_absolute() {
        Err("must be an absolute path")
    } else if path.components().any(|c| c == Component::ParentDir) {
        Err("must not contain '..'")
    } else {
        Ok(path.components().collect())
    }
}

/// Linux network interface name rules.
pub(super) fn interface(r: &mut Report, value: &Str, field: &str) -> Option<String> {
    let s = value.get_ref();
    let bad_char = s
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
    if !(1..=15).contains(&s.len()) || bad_char || s == "." || s == ".." {
        r.error(
            field,
            Some(value.span()),
            format!("{s:?} is not an interface name (1 to 15 characters, no '/', ':' or spaces)"),
        );
        return None;
    }
    Some(s.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> Str {
        Spanned::new(0..1, text.to_string())
    }

    #[test]
    fn paths_are_normalised_and_checked() {
        let mut r = Report::new("");
        assert_eq!(
            abs_path(&mut r, &s("/a//b/./c/"), "f"),
            Some(PathBuf::from("/a/b/c"))
        );
        assert_eq!(abs_path(&mut r, &s("a/b"), "f"), None);
        assert_eq!(abs_path(&mut r, &s("/a/../b"), "f"), None);
        assert_eq!(r.count(), 2);
    }

    #[test]
    fn names() {
        let mut r = Report::new("");
        assert!(name(&mut r, &s("node-1_a.b"), "f").is_some());
        for bad in ["", "a b", "..", "é", &"x".repeat(65)] {
            assert!(name(&mut r, &s(bad), "f").is_none(), "{bad}");
        }
    }
}
