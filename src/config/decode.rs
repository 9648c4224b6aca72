//! TOML text → [`RawConfig`]. Each section is decoded on its own so that a wrong type or
//! an unknown field in one section does not hide the problems in the others.

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::raw::{RawConfig, Section};
use super::report::{Report, Span};

const SECTIONS: &str = "cluster, node, heartbeat, replication, daemon, api, module";

/// Returns `None` on a syntax error: the rest of the document cannot be trusted then.
pub(super) fn decode(text: &str, report: &mut Report) -> Option<RawConfig> {
    let root = match DeTable::parse_recoverable(text) {
        (root, errors) if errors.is_empty() => root.into_inner(),
        (_, errors) => {
            // Recovery produces follow-on errors; the earliest one is the real cause.
            let first = errors
                .iter()
                .min_by_key(|e| e.span().map_or(usize::MAX, |s| s.start))
                .expect("errors is not empty");
            report.error("", first.span(), one_line(first.message()));
            return None;
        }
    };

    let mut raw = RawConfig {
        cluster: Section::absent(),
        nodes: Some(Vec::new()),
        heartbeat: Section::absent(),
        replication: Section::absent(),
        daemon: Section::absent(),
        api: Section::absent(),
        modules: Some(Vec::new()),
    };
    for (key, value) in root {
        let name = key.get_ref().as_ref();
        match name {
            "cluster" => raw.cluster = section(name, value, report),
            "heartbeat" => raw.heartbeat = section(name, value, report),
            "replication" => raw.replication = section(name, value, report),
            "daemon" => raw.daemon = section(name, value, report),
            "api" => raw.api = section(name, value, report),
            "node" => raw.nodes = sections(name, value, report),
            "module" => raw.modules = sections(name, value, report),
            _ => report.error(
                name,
                Some(key.span()),
                format!("unknown section, expected one of: {SECTIONS}"),
            ),
        }
    }
    Some(raw)
}

fn section<'de, T: Deserialize<'de>>(
    field: &str,
    value: Spanned<DeValue<'de>>,
    report: &mut Report,
) -> Section<T> {
    let span = value.span();
    let tree = value.clone();
    match T::deserialize(ValueDeserializer::from(value)) {
        Ok(v) => Section {
            span: Some(span),
            value: Some(v),
        },
        Err(e) => {
            let at = e.span().unwrap_or(span.clone());
            let path = field_at(&tree, at.start, field);
            report.error(path, Some(at), one_line(e.message()));
            Section {
                span: Some(span),
                value: None,
            }
        }
    }
}

/// An array of tables such as `[[module]]`, each element decoded separately.
fn sections<'de, T: Deserialize<'de>>(
    field: &str,
    value: Spanned<DeValue<'de>>,
    report: &mut Report,
) -> Option<Vec<Section<T>>> {
    let span = value.span();
    match value.into_inner() {
        DeValue::Array(items) => Some(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| section(&format!("{field}[{i}]"), item.clone(), report))
                .collect(),
        ),
        _ => {
            report.error(
                field,
                Some(span),
                format!("must be an array of tables: write [[{field}]] once per {field}"),
            );
            None
        }
    }
}

/// The path of the deepest key or value covering byte `at`. A table opened by a
/// `[header]` spans only its header, so every entry is visited rather than pruning the
/// search by the parent's span.
fn field_at(value: &Spanned<DeValue<'_>>, at: usize, base: &str) -> String {
    let mut best = (usize::MAX, base.to_string());
    visit(value.get_ref(), at, base, &mut best);
    best.1
}

fn visit(value: &DeValue<'_>, at: usize, path: &str, best: &mut (usize, String)) {
    match value {
        DeValue::Table(table) => {
            for (key, child) in table.iter() {
                let child_path = format!("{path}.{}", key.get_ref());
                consider(key.span(), at, &child_path, best);
                consider(child.span(), at, &child_path, best);
                visit(child.get_ref(), at, &child_path, best);
            }
        }
        DeValue::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                let child_path = format!("{path}[{i}]");
                consider(child.span(), at, &child_path, best);
                visit(child.get_ref(), at, &child_path, best);
            }
        }
        _ => {}
    }
}

fn consider(span: Span, at: usize, path: &str, best: &mut (usize, String)) {
    let covers = span.contains(&at) || (span.is_empty() && span.start == at);
    // `<=`: a child visited after its parent wins a tie.
    if covers && span.len() <= best.0 {
        *best = (span.len(), path.to_string());
    }
}

fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_errors(text: &str) -> Vec<(String, Option<usize>)> {
        let mut report = Report::new(text);
        decode(text, &mut report);
        report
            .into_errors()
            .into_iter()
            .map(|e| (e.field, e.line))
            .collect()
    }

    #[test]
    fn nested_unknown_field_gets_its_path() {
        let text = "[[module]]\nname = \"a\"\n[[module]]\nname = \"b\"\n[module.scripts]\nprestrat = \"/x\"\n";
        assert_eq!(
            decode_errors(text),
            [("module[1].scripts.prestrat".to_string(), Some(6))]
        );
    }

    #[test]
    fn each_section_reports_its_own_shape_error() {
        let text = "[heartbeat]\nport = \"x\"\n[daemon]\nsocket = 3\n[bogus]\n";
        assert_eq!(
            decode_errors(text),
            [
                ("heartbeat.port".to_string(), Some(2)),
                ("daemon.socket".to_string(), Some(4)),
                ("bogus".to_string(), Some(5)),
            ]
        );
    }

    #[test]
    fn node_written_as_single_table() {
        assert_eq!(
            decode_errors("[node]\nname = \"a\"\n"),
            [("node".to_string(), Some(1))]
        );
    }
}
