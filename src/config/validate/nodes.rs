//! The two `[[node]]` sections, and what they must not share.

use super::super::net::Host;
use super::super::raw::{RawNode, Section, Str};
use super::super::report::{Report, Span};
use super::super::settings::Node;
use super::fields::{self, index, join};

/// The names of the nodes, when every `[[node]]` section could be read.
pub(super) fn node_names(sections: &[Section<RawNode>]) -> Option<Vec<String>> {
    sections
        .iter()
        .map(|s| Some(s.value.as_ref()?.name.as_ref()?.get_ref().clone()))
        .collect()
}

pub(super) fn nodes(r: &mut Report, sections: &[Section<RawNode>]) -> Option<[Node; 2]> {
    if sections.len() != 2 {
        let span = sections
            .get(2)
            .or(sections.last())
            .and_then(|s| s.span.clone());
        r.error(
            "node",
            span,
            format!(
                "exactly two [[node]] sections are required (found {})",
                sections.len()
            ),
        );
    }
    let nodes: Vec<Option<Node>> = sections
        .iter()
        .enumerate()
        .map(|(i, s)| node(r, s, &index("node", i)))
        .collect();
    match (&nodes[..], sections) {
        ([Some(a), Some(b)], [sa, sb]) => {
            let (ra, rb) = (sa.value.as_ref()?, sb.value.as_ref()?);
            let before = r.count();
            compare(r, (a, ra), (b, rb), &sb.span);
            (r.count() == before).then(|| [a.clone(), b.clone()])
        }
        _ => None,
    }
}

fn node(r: &mut Report, section: &Section<RawNode>, base: &str) -> Option<Node> {
    let raw = section.value.as_ref()?;
    let before = r.count();
    let name = fields::required(r, &raw.name, &join(base, "name"), &section.span)
        .and_then(|v| fields::name(r, v, &join(base, "name")));
    let address = fields::required(r, &raw.address, &join(base, "address"), &section.span)
        .and_then(|v| fields::parsed::<Host>(r, v, &join(base, "address")));
    let heartbeat = match &raw.heartbeat {
        None => address.clone().map(|a| vec![a]),
        Some(list) => {
            let field = join(base, "heartbeat");
            // Heartbeats must not depend on name resolution, which may be what failed.
            let ips = fields::non_empty(r, list, &field, "(leave it out to use the address)")
                .then(|| fields::each(r, list, &field, fields::ip))
                .flatten();
            if let Some(ips) = &ips {
                fields::unique(r, list, &field, ips);
            }
            ips.map(|ips| ips.into_iter().map(Host::Ip).collect())
        }
    };
    (r.count() == before).then(|| Node {
        name: name.expect("validated"),
        address: address.expect("validated"),
        heartbeat: heartbeat.expect("validated"),
    })
}

/// Checks between the two nodes, reported on the second one.
fn compare(
    r: &mut Report,
    (a, ra): (&Node, &RawNode),
    (b, rb): (&Node, &RawNode),
    b_span: &Option<Span>,
) {
    let span_of = |v: &Option<Str>| v.as_ref().map(|v| v.span()).or(b_span.clone());
    if a.name == b.name {
        r.error(
            "node[1].name",
            span_of(&rb.name),
            format!("{:?} is also node[0].name", b.name),
        );
    }
    if a.address == b.address {
        r.error(
            "node[1].address",
            span_of(&rb.address),
            format!(
                "{} is also node[0].address; the nodes need their own addresses",
                b.address
            ),
        );
    }
    // Heartbeat paths are paired by position: path i of one node talks to path i of the other.
    let path = |raw: &RawNode, node: &str, i: usize| match &raw.heartbeat {
        Some(list) => (
            index(&join(node, "heartbeat"), i),
            Some(list.get_ref()[i].span()),
        ),
        None => (
            join(node, "address"),
            raw.address.as_ref().map(|v| v.span()),
        ),
    };
    if a.heartbeat.len() != b.heartbeat.len() {
        let span = rb
            .heartbeat
            .as_ref()
            .map(|v| v.span())
            .or(span_of(&rb.address));
        r.error(
            "node[1].heartbeat",
            span,
            format!(
                "has {} path(s) but node[0].heartbeat has {}; paths are paired by position",
                b.heartbeat.len(),
                a.heartbeat.len()
            ),
        );
    }
    for (i, (ha, hb)) in a.heartbeat.iter().zip(&b.heartbeat).enumerate() {
        if let (Some(ia), Some(ib)) = (ha.ip(), hb.ip()) {
            if ia.is_ipv4() != ib.is_ipv4() {
                let (field, span) = path(rb, "node[1]", i);
                r.error(
                    field,
                    span,
                    format!("{ib} and its partner {ia} on node[0] are of different IP families"),
                );
            }
        }
    }
    // With both lists left to default this is the address check above.
    let both_default = ra.heartbeat.is_none() && rb.heartbeat.is_none();
    for (i, hb) in b.heartbeat.iter().enumerate().filter(|_| !both_default) {
        if let Some(j) = a.heartbeat.iter().position(|ha| ha == hb) {
            let (field, span) = path(rb, "node[1]", i);
            let (other, _) = path(ra, "node[0]", j);
            r.error(
                field,
                span,
                format!("{hb} is also {other}; each node needs its own heartbeat addresses"),
            );
        }
    }
}
