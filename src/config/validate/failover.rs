//! `failover` of a module: a virtual address on the LAN, or a health endpoint for a load
//! balancer; and the checks between modules that this implies.

use super::super::net::IpPrefix;
use super::super::raw::{Int, RawModule, Section};
use super::super::report::{Report, Span};
use super::super::settings::{Announce, Failover, Module};
use super::fields::{self, index, join};
use super::module::Context;

const LB_PORT: u16 = lb_health::DEFAULT_PORT;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Vip,
    Lb,
}

pub(super) fn failover(
    r: &mut Report,
    raw: &RawModule,
    section: &Section<RawModule>,
    base: &str,
    ctx: &Context,
) -> Option<Failover> {
    let field = |key: &str| join(base, key);
    let mode = fields::choice(
        r,
        &raw.failover,
        &field("failover"),
        &[("vip", Mode::Vip), ("lb", Mode::Lb)],
        Mode::Vip,
    )?;
    // Settings of the other mode would silently do nothing; say so instead.
    let unused = |r: &mut Report, key: &str, span: Option<Span>, wanted: &str| {
        if let Some(span) = span {
            r.error(
                field(key),
                Some(span),
                format!("is only used with failover = {wanted:?}"),
            );
        }
    };
    let failover_span = raw
        .failover
        .as_ref()
        .map(|v| v.span())
        .or(section.span.clone());
    match mode {
        Mode::Vip => {
            unused(r, "lb_port", raw.lb_port.as_ref().map(|v| v.span()), "lb");
            unused(r, "lb_tls", raw.lb_tls.as_ref().map(|v| v.span()), "lb");
            let count = fields::int(r, &raw.vip_announce, &field("vip_announce"), 5, 1, 100);
            let interval = fields::int(
                r,
                &raw.vip_announce_interval_ms,
                &field("vip_announce_interval_ms"),
                200,
                10,
                10_000,
            );
            let refresh = fields::int(r, &raw.vip_refresh_s, &field("vip_refresh_s"), 10, 0, 3600);
            let interface = raw
                .vip_interface
                .as_ref()
                .map(|v| fields::interface(r, v, &field("vip_interface")));
            let Some(list) = &raw.vip else {
                let default = if raw.failover.is_none() {
                    " (the default)"
                } else {
                    ""
                };
                r.error(
                    field("vip"),
                    failover_span,
                    format!("is required when failover = \"vip\"{default}"),
                );
                return None;
            };
            if !fields::non_empty(r, list, &field("vip"), "when failover = \"vip\"") {
                return None;
            }
            let addresses = fields::each(r, list, &field("vip"), fields::parsed::<IpPrefix>)?;
            let ips: Vec<_> = addresses.iter().map(|a| a.addr).collect();
            fields::unique(r, list, &field("vip"), &ips);
            if let Some(nodes) = ctx.nodes {
                for (i, ip) in ips.iter().enumerate() {
                    let node_ip = nodes.iter().enumerate().find(|(_, n)| {
                        n.address.ip() == Some(*ip)
                            || n.heartbeat.iter().any(|h| h.ip() == Some(*ip))
                    });
                    if let Some((n, _)) = node_ip {
                        r.error(
                            index(&field("vip"), i),
                            Some(list.get_ref()[i].span()),
                            format!("{ip} belongs to node[{n}]; a virtual address must be one no node owns"),
                        );
                    }
                }
            }
            Some(Failover::Vip {
                addresses,
                interface: match interface {
                    Some(i) => Some(i?),
                    None => None,
                },
                announce: Announce {
                    count: count? as u32,
                    interval: std::time::Duration::from_millis(interval? as u64),
                    refresh: match refresh? {
                        0 => None,
                        s => Some(std::time::Duration::from_secs(s as u64)),
                    },
                },
            })
        }
        Mode::Lb => {
            unused(r, "vip", raw.vip.as_ref().map(|v| v.span()), "vip");
            for (key, span) in [
                (
                    "vip_interface",
                    raw.vip_interface.as_ref().map(|v| v.span()),
                ),
                ("vip_announce", raw.vip_announce.as_ref().map(|v| v.span())),
                (
                    "vip_announce_interval_ms",
                    raw.vip_announce_interval_ms.as_ref().map(|v| v.span()),
                ),
                (
                    "vip_refresh_s",
                    raw.vip_refresh_s.as_ref().map(|v| v.span()),
                ),
            ] {
                unused(r, key, span, "vip");
            }
            let port = fields::port(r, &raw.lb_port, &field("lb_port"), LB_PORT)?;
            let span = raw.lb_port.as_ref().map(Int::span).or(section.span.clone());
            for (other, taken) in &ctx.ports {
                if port == *taken {
                    r.error(
                        field("lb_port"),
                        span.clone(),
                        format!("{port} is also {other}"),
                    );
                }
            }
            Some(Failover::Lb {
                port,
                tls: raw.lb_tls.as_ref().is_some_and(|t| *t.get_ref()),
            })
        }
    }
}

/// One address cannot be moved with two modules that may be served by different nodes.
pub(super) fn unique_vips(
    r: &mut Report,
    sections: &[Section<RawModule>],
    modules: &[Option<Module>],
) {
    let mut seen: Vec<(String, std::net::IpAddr)> = Vec::new();
    for (m, (section, module)) in sections.iter().zip(modules).enumerate() {
        let (
            Some(raw),
            Some(Module {
                failover: Failover::Vip { addresses, .. },
                ..
            }),
        ) = (&section.value, module)
        else {
            continue;
        };
        let list = raw.vip.as_ref().expect("a valid vip module has vip");
        let mut mine = Vec::new();
        for (v, addr) in addresses.iter().enumerate() {
            let field = index(&join(&index("module", m), "vip"), v);
            if let Some((other, _)) = seen.iter().find(|(_, ip)| *ip == addr.addr) {
                r.error(
                    &field,
                    Some(list.get_ref()[v].span()),
                    format!("{} is also {other}", addr.addr),
                );
            }
            mine.push((field, addr.addr));
        }
        seen.extend(mine);
    }
}

/// Modules may share a health port (one server answers for all of them) but
/// then not disagree on whether it speaks TLS.
pub(super) fn shared_lb_ports(
    r: &mut Report,
    sections: &[Section<RawModule>],
    modules: &[Option<Module>],
) {
    let mut seen: Vec<(usize, u16, bool)> = Vec::new();
    for (m, module) in modules.iter().enumerate() {
        let Some(Module {
            failover: Failover::Lb { port, tls },
            ..
        }) = module
        else {
            continue;
        };
        if let Some((other, _, _)) = seen.iter().find(|(_, p, t)| p == port && t != tls) {
            let raw = sections[m]
                .value
                .as_ref()
                .expect("a valid module has a section");
            let span = raw
                .lb_tls
                .as_ref()
                .map(|t| t.span())
                .or(raw.lb_port.as_ref().map(Int::span))
                .or(sections[m].span.clone());
            r.error(
                join(&index("module", m), "lb_tls"),
                span,
                format!(
                    "port {port} is shared with module[{other}], which {} TLS: modules on one \
                     health port must agree",
                    if *tls { "does not use" } else { "uses" }
                ),
            );
        }
        seen.push((m, *port, *tls));
    }
}
