//! The `[[module]]` sections: what is replicated, how writes are acknowledged and the
//! application scripts. How clients are moved is in `failover`.

use std::path::PathBuf;

use super::super::raw::{RawModule, RawScripts, Section, Str};
use super::super::report::Report;
use super::super::settings::{Ack, Module, Node, Quorum, Scripts};
use super::fields::{self, index, join};
use super::{checker, dirs, failover, network};

const MAX_MODULES: usize = 32;
const SCRIPT_TIMEOUT_S: i64 = 60;

/// What the modules are checked against; `None` where that section is itself invalid,
/// so that one mistake does not cause a cascade of follow-up errors.
pub(super) struct Context<'a> {
    pub checks: super::super::DirChecks,
    pub quorum: Option<&'a Quorum>,
    pub nodes: Option<&'a [Node; 2]>,
    /// Ports already taken, with the field that takes them.
    pub ports: Vec<(&'static str, u16)>,
}

pub(super) fn modules(
    r: &mut Report,
    sections: &[Section<RawModule>],
    ctx: &Context,
) -> Option<Vec<Module>> {
    let before = r.count();
    if sections.is_empty() {
        r.error("module", None, "at least one [[module]] is required");
    }
    if sections.len() > MAX_MODULES {
        r.error(
            index("module", MAX_MODULES),
            sections[MAX_MODULES].span.clone(),
            format!(
                "at most {MAX_MODULES} modules are supported (found {})",
                sections.len()
            ),
        );
    }
    let modules: Vec<Option<Module>> = sections
        .iter()
        .enumerate()
        .map(|(i, s)| module(r, s, &index("module", i), ctx))
        .collect();
    unique_names(r, sections);
    failover::unique_vips(r, sections, &modules);
    failover::shared_lb_ports(r, sections, &modules);
    dirs::overlaps(r, sections);
    if r.count() > before {
        return None;
    }
    modules.into_iter().collect()
}

fn module(
    r: &mut Report,
    section: &Section<RawModule>,
    base: &str,
    ctx: &Context,
) -> Option<Module> {
    let raw = section.value.as_ref()?;
    let before = r.count();
    let field = |key: &str| join(base, key);
    let name = fields::required(r, &raw.name, &field("name"), &section.span)
        .and_then(|v| fields::name(r, v, &field("name")));
    let dirs = fields::required(r, &raw.dirs, &field("dirs"), &section.span).and_then(|list| {
        fields::non_empty(
            r,
            list,
            &field("dirs"),
            "(a module replicates at least one directory)",
        )
        .then(|| {
            fields::each(r, list, &field("dirs"), |r, v, f| {
                dirs::dir(r, v, f, ctx.checks)
            })
        })
        .flatten()
    });
    let exclude = match &raw.exclude {
        None => Some(Vec::new()),
        Some(list) => fields::each(r, list, &field("exclude"), exclude_pattern),
    };
    let ack = fields::choice(
        r,
        &raw.ack,
        &field("ack"),
        &[
            ("durable", Ack::Durable),
            ("received", Ack::Received),
            ("async", Ack::Async),
        ],
        Ack::Durable,
    );
    let failover = failover::failover(r, raw, section, base, ctx);
    let scripts = scripts(r, raw.scripts.as_ref(), &field("scripts"));
    let snapshots = super::snapshots::policy(r, raw.snapshots.as_ref(), &field("snapshots"));
    // Collected before combining so that every checker is checked.
    let checkers: Option<Vec<_>> = raw
        .checker
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, c)| checker::checker(r, c, &index(&field("checker"), i), ctx.quorum))
        .collect::<Vec<_>>()
        .into_iter()
        .collect();
    if let (Some(p), Some(nodes)) = (&raw.preferred_primary, ctx.nodes)
        && !nodes.iter().any(|n| n.name == *p.get_ref())
    {
        r.error(
            field("preferred_primary"),
            Some(p.span()),
            format!(
                "{:?} is not a node; the nodes are {} and {}",
                p.get_ref(),
                nodes[0].name,
                nodes[1].name
            ),
        );
    }
    (r.count() == before).then(|| Module {
        name: name.expect("validated"),
        dirs: dirs.expect("validated"),
        exclude: exclude.expect("validated"),
        ack: ack.expect("validated"),
        failover: failover.expect("validated"),
        scripts: scripts.expect("validated"),
        checkers: checkers.expect("validated"),
        preferred_primary: raw.preferred_primary.as_ref().map(|p| p.get_ref().clone()),
        snapshots: snapshots.expect("validated"),
    })
}

/// Patterns are matched relative to each replicated directory.
fn exclude_pattern(r: &mut Report, value: &Str, field: &str) -> Option<String> {
    let s = value.get_ref();
    let problem = if s.is_empty() {
        "must not be empty"
    } else if s.contains('\0') {
        "must not contain a NUL character"
    } else if s.starts_with('/') {
        "must be relative to the module's directories, not absolute"
    } else {
        match crate::config::exclude::check(s) {
            Ok(()) => return Some(s.clone()),
            Err(e) => {
                r.error(
                    field,
                    Some(value.span()),
                    format!("{s:?} is not a pattern: {e}"),
                );
                return None;
            }
        }
    };
    r.error(field, Some(value.span()), format!("{s:?} {problem}"));
    None
}

fn scripts(r: &mut Report, raw: Option<&RawScripts>, base: &str) -> Option<Scripts> {
    let default = RawScripts::default();
    let raw = raw.unwrap_or(&default);
    // Only absoluteness is checked: scripts are often installed after the config.
    let mut path = |value: &Option<Str>, key: &str| -> Option<Option<PathBuf>> {
        match value {
            None => Some(None),
            Some(v) => fields::abs_path(r, v, &join(base, key)).map(Some),
        }
    };
    let prestart = path(&raw.prestart, "prestart");
    let start_prim = path(&raw.start_prim, "start_prim");
    let stop_prim = path(&raw.stop_prim, "stop_prim");
    let start_both = path(&raw.start_both, "start_both");
    let stop_both = path(&raw.stop_both, "stop_both");
    let poststop = path(&raw.poststop, "poststop");
    let timeout = fields::int(
        r,
        &raw.timeout_s,
        &join(base, "timeout_s"),
        SCRIPT_TIMEOUT_S,
        1,
        i64::MAX,
    );
    Some(Scripts {
        prestart: prestart?,
        start_prim: start_prim?,
        stop_prim: stop_prim?,
        start_both: start_both?,
        stop_both: stop_both?,
        poststop: poststop?,
        timeout: network::seconds(Some(timeout?)),
    })
}

fn unique_names(r: &mut Report, sections: &[Section<RawModule>]) {
    let names: Vec<Option<&Str>> = sections
        .iter()
        .map(|s| s.value.as_ref().and_then(|v| v.name.as_ref()))
        .collect();
    for (j, name) in names.iter().enumerate() {
        let Some(name) = name else { continue };
        if let Some(i) = names[..j]
            .iter()
            .position(|n| n.is_some_and(|n| n.get_ref() == name.get_ref()))
        {
            r.error(
                join(&index("module", j), "name"),
                Some(name.span()),
                format!("{:?} is also module[{i}].name", name.get_ref()),
            );
        }
    }
}
