//! `[cluster]`: name, quorum, preferred primary and how long maintenance
//! may last before it is reported.

use std::time::Duration;

use super::super::net::{HostPort, HttpUrl};
use super::super::raw::{List, RawCluster, Section, Str};
use super::super::report::{Report, Span};
use super::super::settings::{Cluster, Etcd, Quorum};
use super::fields;

pub(super) fn cluster(
    r: &mut Report,
    section: &Section<RawCluster>,
    node_names: Option<&[String]>,
) -> Option<Cluster> {
    let raw = section.value.as_ref()?;
    let before = r.count();
    let name = fields::required(r, &raw.name, "cluster.name", &section.span)
        .and_then(|v| fields::name(r, v, "cluster.name"));
    let quorum = quorum(r, raw);
    // Up to a year: longer is a forgotten maintenance, not a threshold.
    let alert_after = fields::int(
        r,
        &raw.maintenance_alert_after_s,
        "cluster.maintenance_alert_after_s",
        MAINTENANCE_ALERT_AFTER_S,
        1,
        365 * 24 * 3600,
    );
    if let (Some(preferred), Some(names)) = (&raw.preferred_primary, node_names) {
        if !names.contains(preferred.get_ref()) {
            r.error(
                "cluster.preferred_primary",
                Some(preferred.span()),
                format!(
                    "{:?} is not a node; the nodes are {}",
                    preferred.get_ref(),
                    names.join(" and ")
                ),
            );
        }
    }
    (r.count() == before).then(|| Cluster {
        name: name.expect("validated"),
        quorum: quorum.expect("validated"),
        preferred_primary: raw.preferred_primary.as_ref().map(|p| p.get_ref().clone()),
        maintenance_alert_after: Duration::from_secs(alert_after.expect("validated") as u64),
    })
}

/// How long maintenance may stay on before it is reported (an hour: an
/// upgrade of both nodes, not a cluster left without failover).
const MAINTENANCE_ALERT_AFTER_S: i64 = 3600;

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    None,
    Ping,
    Witness,
    Etcd,
}

const KINDS: [(&str, Kind); 4] = [
    ("none", Kind::None),
    ("ping", Kind::Ping),
    ("witness", Kind::Witness),
    ("etcd", Kind::Etcd),
];

fn quorum(r: &mut Report, raw: &RawCluster) -> Option<Quorum> {
    let kind = fields::choice(r, &raw.quorum, "cluster.quorum", &KINDS, Kind::None)?;
    let chosen = raw.quorum.as_ref().map_or("none", |q| q.get_ref().as_str());
    // A quorum setting that has no effect would let an operator believe the cluster is
    // protected against split brain when it is not, so it is an error, not a no-op.
    let unused = |r: &mut Report, field: &str, span: Span, wanted: &str| {
        r.error(
            field,
            Some(span),
            format!("is only used with cluster.quorum = {wanted:?}, but quorum is {chosen:?}"),
        )
    };
    if let (Some(v), false) = (&raw.ping, kind == Kind::Ping) {
        unused(r, "cluster.ping", v.span(), "ping");
    }
    if let (Some(v), false) = (&raw.witness, kind == Kind::Witness) {
        unused(r, "cluster.witness", v.span(), "witness");
    }
    for (field, v) in [
        ("cluster.etcd", raw.etcd.as_ref().map(|v| v.span())),
        ("cluster.etcd_ca", raw.etcd_ca.as_ref().map(|v| v.span())),
        (
            "cluster.etcd_cert",
            raw.etcd_cert.as_ref().map(|v| v.span()),
        ),
        ("cluster.etcd_key", raw.etcd_key.as_ref().map(|v| v.span())),
        (
            "cluster.etcd_user",
            raw.etcd_user.as_ref().map(|v| v.span()),
        ),
        (
            "cluster.etcd_password_file",
            raw.etcd_password_file.as_ref().map(|v| v.span()),
        ),
    ] {
        if let (Some(span), false) = (v, kind == Kind::Etcd) {
            unused(r, field, span, "etcd");
        }
    }
    let quorum_span = raw.quorum.as_ref().map(|q| q.span());
    let missing = |r: &mut Report, field: &str, what: &str| {
        r.error(
            field,
            quorum_span.clone(),
            format!("is required when cluster.quorum = {chosen:?}: {what}"),
        )
    };
    match kind {
        Kind::None => Some(Quorum::None),
        Kind::Ping => {
            let Some(list) = &raw.ping else {
                missing(r, "cluster.ping", "the addresses to ping");
                return None;
            };
            if !fields::non_empty(r, list, "cluster.ping", "when cluster.quorum = \"ping\"") {
                return None;
            }
            let ips = fields::each(r, list, "cluster.ping", fields::ip)?;
            fields::unique(r, list, "cluster.ping", &ips);
            Some(Quorum::Ping(ips))
        }
        Kind::Witness => {
            let Some(witness) = &raw.witness else {
                missing(r, "cluster.witness", "the witness address as host:port");
                return None;
            };
            fields::parsed::<HostPort>(r, witness, "cluster.witness").map(Quorum::Witness)
        }
        Kind::Etcd => {
            let Some(list) = &raw.etcd else {
                missing(r, "cluster.etcd", "the etcd endpoint URLs");
                return None;
            };
            if !fields::non_empty(r, list, "cluster.etcd", "when cluster.quorum = \"etcd\"") {
                return None;
            }
            let urls = fields::each(r, list, "cluster.etcd", |r, item, field| {
                fields::parsed::<HttpUrl>(r, item, field)
            })?;
            fields::unique(r, list, "cluster.etcd", &urls);
            etcd(r, raw, list, urls).map(Quorum::Etcd)
        }
    }
}

/// TLS and authentication for etcd: all or nothing of each pair, and a CA
/// exactly when the URLs are https.
fn etcd(r: &mut Report, raw: &RawCluster, list: &List, urls: Vec<HttpUrl>) -> Option<Etcd> {
    let before = r.count();
    let https = urls[0].https;
    if urls.iter().any(|u| u.https != https) {
        r.error(
            "cluster.etcd",
            Some(list.span()),
            "mixes http:// and https:// endpoints: give them all one scheme",
        );
    }
    let path = |r: &mut Report, v: &Option<Str>, field: &str| {
        v.as_ref().and_then(|v| fields::abs_path(r, v, field))
    };
    let ca = path(r, &raw.etcd_ca, "cluster.etcd_ca");
    let cert = path(r, &raw.etcd_cert, "cluster.etcd_cert");
    let key = path(r, &raw.etcd_key, "cluster.etcd_key");
    let password = path(r, &raw.etcd_password_file, "cluster.etcd_password_file");
    match (&raw.etcd_ca, https) {
        (None, true) => r.error(
            "cluster.etcd_ca",
            Some(list.span()),
            "is required with https:// endpoints: the CA that signed etcd's certificates",
        ),
        (Some(v), false) => r.error(
            "cluster.etcd_ca",
            Some(v.span()),
            "is only used with https:// endpoints, and cluster.etcd gives http://",
        ),
        _ => {}
    }
    if let (Some(v), false) = (raw.etcd_cert.as_ref().or(raw.etcd_key.as_ref()), https) {
        r.error(
            if raw.etcd_cert.is_some() {
                "cluster.etcd_cert"
            } else {
                "cluster.etcd_key"
            },
            Some(v.span()),
            "is only used with https:// endpoints, and cluster.etcd gives http://",
        );
    }
    let pair = |r: &mut Report, a: &Option<Str>, an: &str, b: &Option<Str>, bn: &str| {
        if let (Some(v), None) = (a, b) {
            r.error(an, Some(v.span()), format!("needs {bn} too"));
        }
    };
    pair(
        r,
        &raw.etcd_cert,
        "cluster.etcd_cert",
        &raw.etcd_key,
        "cluster.etcd_key",
    );
    pair(
        r,
        &raw.etcd_key,
        "cluster.etcd_key",
        &raw.etcd_cert,
        "cluster.etcd_cert",
    );
    pair(
        r,
        &raw.etcd_user,
        "cluster.etcd_user",
        &raw.etcd_password_file,
        "cluster.etcd_password_file",
    );
    pair(
        r,
        &raw.etcd_password_file,
        "cluster.etcd_password_file",
        &raw.etcd_user,
        "cluster.etcd_user",
    );
    let user = raw.etcd_user.as_ref().and_then(|u| {
        let s = u.get_ref();
        if s.is_empty() || s.len() > 128 || s.chars().any(char::is_control) {
            r.error(
                "cluster.etcd_user",
                Some(u.span()),
                "must be 1 to 128 printable characters",
            );
            return None;
        }
        Some(s.clone())
    });
    (r.count() == before).then(|| Etcd {
        urls,
        ca,
        cert: cert.zip(key),
        user: user.zip(password),
    })
}
