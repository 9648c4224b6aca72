//! `[cluster]`: name, quorum and preferred primary.

use super::super::net::{HostPort, HttpUrl};
use super::super::raw::{RawCluster, Section};
use super::super::report::{Report, Span};
use super::super::settings::{Cluster, Quorum};
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
    })
}

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
    if let (Some(v), false) = (&raw.etcd, kind == Kind::Etcd) {
        unused(r, "cluster.etcd", v.span(), "etcd");
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
                let url = fields::parsed::<HttpUrl>(r, item, field)?;
                if url.https {
                    r.error(
                        field,
                        Some(item.span()),
                        format!(
                            "{url}: https is not supported for etcd in this version: give a \
                             plain http:// client URL on a trusted network"
                        ),
                    );
                    return None;
                }
                Some(url)
            })?;
            fields::unique(r, list, "cluster.etcd", &urls);
            Some(Quorum::Etcd(urls))
        }
    }
}
