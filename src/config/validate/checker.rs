//! `[[module.checker]]`: health checks that restart the application locally, then fail
//! over. Each kind takes its own fields; fields of another kind are refused.

use toml::Spanned;

use super::super::net::{HostPort, HttpUrl};
use super::super::raw::{RawChecker, Str};
use super::super::report::Report;
use super::super::settings::{Check, Checker, ProcessMatch, Quorum};
use super::fields::{self, join};
use super::network::{millis, seconds};

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Process,
    Tcp,
    Http,
    Script,
    Interface,
    Witness,
}

const INTERVAL_MS: i64 = 1000;
const TIMEOUT_MS: i64 = 1000;
const RESTARTS: i64 = 3;
const WINDOW_S: i64 = 300;
const EXPECT_STATUS: i64 = 200;

/// Each kind with the kind-specific fields it takes.
const KINDS: [(&str, Kind, &[&str]); 6] = [
    ("process", Kind::Process, &["pidfile", "name"]),
    ("tcp", Kind::Tcp, &["address"]),
    ("http", Kind::Http, &["url", "expect_status", "ca"]),
    ("script", Kind::Script, &["path"]),
    ("interface", Kind::Interface, &["interface"]),
    ("witness", Kind::Witness, &[]),
];

pub(super) fn checker(
    r: &mut Report,
    spanned: &Spanned<RawChecker>,
    base: &str,
    quorum: Option<&Quorum>,
) -> Option<Checker> {
    let raw = spanned.get_ref();
    let before = r.count();
    let field = |key: &str| join(base, key);
    let check = check(r, spanned, base, quorum);
    let interval = fields::int(
        r,
        &raw.interval_ms,
        &field("interval_ms"),
        INTERVAL_MS,
        100,
        i64::MAX,
    );
    let timeout = fields::int(
        r,
        &raw.timeout_ms,
        &field("timeout_ms"),
        TIMEOUT_MS,
        50,
        i64::MAX,
    );
    if let (Some(i), Some(t)) = (interval, timeout) {
        if t > i {
            let span = raw
                .timeout_ms
                .as_ref()
                .or(raw.interval_ms.as_ref())
                .map(|v| v.span());
            r.error(
                field("timeout_ms"),
                span,
                format!("{t} must not exceed interval_ms ({i}), so that checks never overlap"),
            );
        }
    }
    let restarts = fields::int(
        r,
        &raw.restarts,
        &field("restarts"),
        RESTARTS,
        0,
        u32::MAX.into(),
    );
    let window = fields::int(r, &raw.window_s, &field("window_s"), WINDOW_S, 1, i64::MAX);
    (r.count() == before).then(|| Checker {
        check: check.expect("validated"),
        interval: millis(interval),
        timeout: millis(timeout),
        restarts: restarts.expect("validated") as u32,
        window: seconds(window),
    })
}

fn check(
    r: &mut Report,
    spanned: &Spanned<RawChecker>,
    base: &str,
    quorum: Option<&Quorum>,
) -> Option<Check> {
    let raw = spanned.get_ref();
    let field = |key: &str| join(base, key);
    let Some(kind_value) = &raw.kind else {
        let names: Vec<_> = KINDS.iter().map(|(n, ..)| *n).collect();
        r.error(
            field("kind"),
            Some(spanned.span()),
            format!("is required: one of {}", names.join(", ")),
        );
        return None;
    };
    let kinds: Vec<(&str, Kind)> = KINDS.iter().map(|(n, k, _)| (*n, *k)).collect();
    // The default is never used: `kind` is present.
    let kind = fields::choice(r, &raw.kind, &field("kind"), &kinds, Kind::Witness)?;
    let (name, _, allowed) = KINDS.iter().find(|(_, k, _)| *k == kind).expect("listed");
    for (key, span) in raw.kind_fields() {
        if !allowed.contains(&key) {
            r.error(
                field(key),
                Some(span),
                format!("is not used by kind = {name:?}"),
            );
        }
    }
    let needed = |r: &mut Report, value: &Option<Str>, key: &str| {
        if value.is_none() {
            r.error(
                field(key),
                Some(kind_value.span()),
                format!("is required for kind = {name:?}"),
            );
        }
        value.clone()
    };
    match kind {
        Kind::Process => match (&raw.pidfile, &raw.name) {
            (Some(pidfile), None) => {
                fields::abs_path(r, pidfile, &field("pidfile")).map(ProcessMatch::Pidfile)
            }
            (None, Some(process))
                if process.get_ref().is_empty() || process.get_ref().contains('\0') =>
            {
                r.error(
                    field("name"),
                    Some(process.span()),
                    "must be a non-empty process name",
                );
                None
            }
            (None, Some(process)) => Some(ProcessMatch::Name(process.get_ref().clone())),
            (Some(_), Some(process)) => {
                r.error(
                    field("name"),
                    Some(process.span()),
                    "set either pidfile or name, not both",
                );
                None
            }
            (None, None) => {
                r.error(
                    field("pidfile"),
                    Some(kind_value.span()),
                    "kind = \"process\" needs pidfile or name",
                );
                None
            }
        }
        .map(Check::Process),
        Kind::Tcp => {
            let address = needed(r, &raw.address, "address")?;
            fields::parsed::<HostPort>(r, &address, &field("address")).map(Check::Tcp)
        }
        Kind::Http => {
            let url = needed(r, &raw.url, "url")?;
            let url = fields::parsed::<HttpUrl>(r, &url, &field("url"));
            let status = fields::int(
                r,
                &raw.expect_status,
                &field("expect_status"),
                EXPECT_STATUS,
                100,
                599,
            );
            let ca = raw.ca.as_ref().and_then(|v| {
                let p = fields::abs_path(r, v, &field("ca"))?;
                if url.as_ref().is_some_and(|u| !u.https) {
                    r.error(
                        field("ca"),
                        Some(v.span()),
                        "is only used with an https:// url",
                    );
                    return None;
                }
                Some(p)
            });
            Some(Check::Http {
                url: url?,
                expect_status: status? as u16,
                ca,
            })
        }
        Kind::Script => {
            let path = needed(r, &raw.path, "path")?;
            fields::abs_path(r, &path, &field("path")).map(Check::Script)
        }
        Kind::Interface => {
            let interface = needed(r, &raw.interface, "interface")?;
            fields::interface(r, &interface, &field("interface")).map(Check::Interface)
        }
        Kind::Witness => match quorum {
            // The third party that grants leases: a witness or etcd.
            Some(Quorum::Witness(_) | Quorum::Etcd(_)) | None => Some(Check::Witness),
            Some(other) => {
                r.error(
                    field("kind"),
                    Some(kind_value.span()),
                    format!(
                        "\"witness\" needs cluster.quorum = \"witness\" or \"etcd\" (it is {:?})",
                        other.kind()
                    ),
                );
                None
            }
        },
    }
}
