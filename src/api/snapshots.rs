//! A module's snapshots through the API: listed and compared with a monitor
//! token; taken, restored and deleted with an admin one. Each becomes the
//! `Request::Snapshot` the command line sends, carried out on this node or
//! relayed to the peer (each node holds its own snapshots).

use std::sync::Arc;

use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use super::Api;
use super::routes::{
    Fields, Refusal, blame, body_fields, error, json_response, known, monitor_only, read_body, run,
};
use super::tokens::{Entry, Role};
use crate::control::{Request, Response as Answer, SnapshotOp, Status};
use crate::replication::snapshot::check_name;

type Response = hyper::Response<super::body::Body>;

fn refuse((status, why): Refusal) -> Response {
    error(status, why)
}

fn bad(why: String) -> Refusal {
    (StatusCode::BAD_REQUEST, why)
}

/// `/api/modules/{m}/snapshots/...`, `rest` being what follows `snapshots`.
pub(super) async fn handle(
    api: &Arc<Api>,
    who: &Entry,
    method: &Method,
    m: &str,
    rest: &[&str],
    req: hyper::Request<hyper::body::Incoming>,
) -> Response {
    let commands = matches!(
        (method, rest),
        (&Method::POST, [] | [_, "restore" | "rollback"]) | (&Method::DELETE, [_])
    );
    if commands && who.role != Role::Admin {
        return monitor_only(who);
    }
    let query = req.uri().query().map(str::to_string);
    let query = query.as_deref();
    let result = match (method, rest) {
        (&Method::GET, []) => list(api, m, query).await,
        (&Method::POST, []) => create(api, who, m, req).await,
        (&Method::GET, [name, "diff"]) => diff(api, m, name, query).await,
        (&Method::POST, [name, "restore"]) => restore(api, who, m, name, req).await,
        (&Method::POST, [name, "rollback"]) => rollback(api, who, m, name, req).await,
        (&Method::DELETE, [name]) => delete(api, who, m, name, query).await,
        (_, []) => Err(not_allowed(
            "GET lists a module's snapshots, POST takes one",
        )),
        (_, [_]) => Err(not_allowed("a snapshot is deleted with DELETE")),
        (_, [_, "diff"]) => Err(not_allowed("a diff is a GET")),
        (_, [_, "restore"]) => Err(not_allowed("a restore is POSTed")),
        (_, [_, "rollback"]) => Err(not_allowed("a rollback is POSTed")),
        _ => Err(error(
            StatusCode::NOT_FOUND,
            format!("no such endpoint: {}", req.uri().path()),
        )),
    };
    result.unwrap_or_else(|r| r)
}

type Handled = Result<Response, Response>;

fn not_allowed(why: &str) -> Response {
    error(StatusCode::METHOD_NOT_ALLOWED, why)
}

/// `GET .../snapshots[?node=]`: the snapshots a node holds, oldest first.
async fn list(api: &Arc<Api>, m: &str, query: Option<&str>) -> Handled {
    let p = params(query, &["node"]).map_err(refuse)?;
    let node = node_of(api, get(&p, "node"), "query parameter").map_err(refuse)?;
    module(api, m).await?;
    let a = on(api, &node, snapshot(m, SnapshotOp::List {})).await;
    if !a.ok {
        return Err(conflict(a));
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"node": node, "module": m, "snapshots": a.data.unwrap_or_else(|| json!([]))}),
    ))
}

/// `POST .../snapshots` `{"name"?, "node"?}`: takes one.
async fn create(
    api: &Arc<Api>,
    who: &Entry,
    m: &str,
    req: hyper::Request<hyper::body::Incoming>,
) -> Handled {
    let body = read_body(req).await?;
    let (node, op) = parse_body("create", None, &body).map_err(refuse)?;
    let node = node_of(api, node, "field").map_err(refuse)?;
    module(api, m).await?;
    let SnapshotOp::Create { name } = &op else {
        unreachable!("decoded as create")
    };
    let named = name.as_ref().map(|n| format!(" {n}")).unwrap_or_default();
    audit(api, who, m, format!("snapshot create{named} on {node}"));
    let a = on(api, &node, snapshot(m, op)).await;
    if !a.ok {
        return Err(conflict(a));
    }
    Ok(done(a, "snapshot"))
}

/// `GET .../snapshots/{name}/diff[?to=][&node=]`: what changed from the
/// snapshot to another (or to now).
async fn diff(api: &Arc<Api>, m: &str, name: &str, query: Option<&str>) -> Handled {
    let from = url_name(name).map_err(refuse)?;
    let p = params(query, &["to", "node"]).map_err(refuse)?;
    let to = get(&p, "to");
    if to.as_deref() == Some("") {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "query parameter \"to\" must name a snapshot (without it, the snapshot is compared \
             with now)",
        ));
    }
    let node = node_of(api, get(&p, "node"), "query parameter").map_err(refuse)?;
    module(api, m).await?;
    let op = SnapshotOp::Diff {
        from: from.clone(),
        to: to.clone(),
    };
    let a = on(api, &node, snapshot(m, op)).await;
    if !a.ok {
        let mut named = vec![(String::new(), from)];
        named.extend(to.map(|t| ("query parameter \"to\": ".to_string(), t)));
        return Err(refused(api, m, &node, a, &named).await);
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "node": node, "module": m, "from": from, "to": to,
            "changes": a.data.unwrap_or_else(|| json!([])),
        }),
    ))
}

/// `POST .../snapshots/{name}/restore` `{"to", "node"?}`: the snapshot's
/// tree written into a new directory.
async fn restore(
    api: &Arc<Api>,
    who: &Entry,
    m: &str,
    name: &str,
    req: hyper::Request<hyper::body::Incoming>,
) -> Handled {
    on_named(api, who, m, name, req, "restore", "restored").await
}

/// `POST .../snapshots/{name}/rollback` (`{"node"}` optional): that node's
/// copy back to the snapshot, refused unless the module is stopped there.
async fn rollback(
    api: &Arc<Api>,
    who: &Entry,
    m: &str,
    name: &str,
    req: hyper::Request<hyper::body::Incoming>,
) -> Handled {
    on_named(api, who, m, name, req, "rollback", "rolled_back").await
}

/// A command on the snapshot `name` from a POSTed body (`verb`), audited,
/// carried out on its node; the answer's data under `key`.
async fn on_named(
    api: &Arc<Api>,
    who: &Entry,
    m: &str,
    name: &str,
    req: hyper::Request<hyper::body::Incoming>,
    verb: &str,
    key: &str,
) -> Handled {
    let name = url_name(name).map_err(refuse)?;
    let body = read_body(req).await?;
    let (node, op) = parse_body(verb, Some(&name), &body).map_err(refuse)?;
    let node = node_of(api, node, "field").map_err(refuse)?;
    module(api, m).await?;
    let what = match &op {
        SnapshotOp::Restore { to, .. } => format!("snapshot restore {name} into {to} on {node}"),
        _ => format!("snapshot {verb} to {name} on {node}"),
    };
    audit(api, who, m, what);
    let a = on(api, &node, snapshot(m, op)).await;
    if !a.ok {
        return Err(refused(api, m, &node, a, &[(String::new(), name)]).await);
    }
    Ok(done(a, key))
}

/// `DELETE .../snapshots/{name}[?node=]`.
async fn delete(api: &Arc<Api>, who: &Entry, m: &str, name: &str, query: Option<&str>) -> Handled {
    let name = url_name(name).map_err(refuse)?;
    let p = params(query, &["node"]).map_err(refuse)?;
    let node = node_of(api, get(&p, "node"), "query parameter").map_err(refuse)?;
    module(api, m).await?;
    audit(api, who, m, format!("snapshot delete {name} on {node}"));
    let op = SnapshotOp::Delete { name: name.clone() };
    let a = on(api, &node, snapshot(m, op)).await;
    if !a.ok {
        return Err(refused(api, m, &node, a, &[(String::new(), name)]).await);
    }
    Ok(done(a, "snapshot"))
}

fn snapshot(m: &str, op: SnapshotOp) -> Request {
    Request::Snapshot {
        module: m.to_string(),
        op,
    }
}

/// `req` carried out on `node`: here, or relayed to the peer.
async fn on(api: &Arc<Api>, node: &str, req: Request) -> Answer {
    if node == api.node {
        run(api, req).await
    } else {
        let node = node.to_string();
        let request = Box::new(req);
        run(api, Request::On { node, request }).await
    }
}

async fn module(api: &Arc<Api>, m: &str) -> Result<(), Response> {
    if known(api, m).await {
        Ok(())
    } else {
        Err(error(
            StatusCode::NOT_FOUND,
            format!("no module named {m:?}"),
        ))
    }
}

fn audit(api: &Api, who: &Entry, m: &str, what: String) {
    (api.audit)(
        Some(m),
        format!(
            "api: {what}, asked with token {:?} ({})",
            who.name, who.role
        ),
    );
}

/// A command's success: its messages and what it returned, under `key`.
fn done(a: Answer, key: &str) -> Response {
    let mut v = json!({"ok": true, "messages": a.messages});
    v[key] = a.data.unwrap_or(Value::Null);
    json_response(StatusCode::OK, &v)
}

fn conflict(a: Answer) -> Response {
    error(
        StatusCode::CONFLICT,
        a.error.unwrap_or_else(|| a.messages.join("; ")),
    )
}

/// A refusal: 404 when a snapshot it names (each with what named it) is
/// not on that node, else 409 with the node's reason. The list is asked
/// only after a refusal, as it reads the whole store.
async fn refused(
    api: &Arc<Api>,
    m: &str,
    node: &str,
    a: Answer,
    named: &[(String, String)],
) -> Response {
    let listed = on(api, node, snapshot(m, SnapshotOp::List {})).await;
    if let Some(held) = listed
        .data
        .as_ref()
        .and_then(Value::as_array)
        .filter(|_| listed.ok)
    {
        let there = |name: &str| {
            held.iter().any(|s| {
                s["name"] == name || s["id"].as_u64().is_some_and(|id| id.to_string() == name)
            })
        };
        if let Some((how, name)) = named.iter().find(|(_, n)| !there(n)) {
            return error(
                StatusCode::NOT_FOUND,
                format!("{how}module {m} has no snapshot {name:?} on {node}"),
            );
        }
    }
    conflict(a)
}

/// The node asked (`node` of the query or the body: `how`), this one by
/// default.
fn node_of(api: &Api, node: Option<String>, how: &str) -> Result<String, Refusal> {
    match node {
        None => Ok(api.node.clone()),
        Some(n) if n.is_empty() => Err(bad(format!(
            "{how} \"node\" must be a node's name, not \"\""
        ))),
        Some(n) if n != api.node && n != api.peer_name => Err((
            StatusCode::NOT_FOUND,
            format!("no node named {n:?} ({} or {})", api.node, api.peer_name),
        )),
        Some(n) => Ok(n),
    }
}

/// The body of a create or a restore (`verb`), decoded by `SnapshotOp`
/// itself, with the node it is for; `name` is the snapshot the URL names.
/// A refusal names the field at fault.
fn parse_body(
    verb: &str,
    name: Option<&str>,
    body: &[u8],
) -> Result<(Option<String>, SnapshotOp), Refusal> {
    let what = format!("snapshot {verb}");
    let mut fields = body_fields(body)?;
    if let Some(k) = ["cmd", "module", "verb", "op"]
        .iter()
        .find(|k| fields.contains_key(**k))
    {
        return Err(bad(format!(
            "field {k:?} is not taken by {what}: the URL names the module and what is done"
        )));
    }
    if name.is_some() && fields.contains_key("name") {
        return Err(bad(format!(
            "field \"name\" is not taken by {what}: the URL names the snapshot"
        )));
    }
    let node = match fields.remove("node") {
        None => None,
        Some(Value::String(n)) => Some(n),
        Some(v) => {
            return Err(bad(format!(
                "field \"node\" of {what}: invalid type: {v}, expected a node's name"
            )));
        }
    };
    let decode = |f: &Fields| {
        let mut f = f.clone();
        f.insert("verb".into(), verb.into());
        if let Some(n) = name {
            f.insert("name".into(), n.into());
        }
        serde_json::from_value::<SnapshotOp>(Value::Object(f))
    };
    let op = decode(&fields).map_err(|e| bad(blame(&what, &fields, &e, decode)))?;
    match &op {
        SnapshotOp::Create { name: Some(n) } => {
            check_name(n).map_err(|e| bad(format!("field \"name\": {e}")))?;
        }
        SnapshotOp::Restore { to, .. } if !to.starts_with('/') => {
            // The daemon would resolve it against its own directory.
            return Err(bad(format!(
                "field \"to\" must be an absolute path, not {to:?}"
            )));
        }
        _ => {}
    }
    Ok((node, op))
}

/// The snapshot's name in the URL, decoded.
fn url_name(s: &str) -> Result<String, Refusal> {
    match decoded(s) {
        Some(n) if !n.is_empty() => Ok(n),
        _ => Err(bad(format!(
            "the snapshot's name in the URL is not valid: {s:?}"
        ))),
    }
}

/// Percent-encoded text, decoded (`None`: a bad escape, or not UTF-8).
fn decoded(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The query's parameters, each one of `allowed`, at most once: a typo is
/// refused rather than ignored.
fn params(
    query: Option<&str>,
    allowed: &[&'static str],
) -> Result<Vec<(&'static str, String)>, Refusal> {
    let mut out: Vec<(&'static str, String)> = Vec::new();
    for kv in query.unwrap_or("").split('&').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let k = decoded(k).unwrap_or_else(|| k.to_string());
        let Some(&key) = allowed.iter().find(|a| **a == k) else {
            return Err(bad(format!(
                "query parameter {k:?} is not taken here (only {})",
                allowed.join(", ")
            )));
        };
        if out.iter().any(|(x, _)| *x == key) {
            return Err(bad(format!("query parameter {k:?} is given twice")));
        }
        let v = decoded(v).ok_or_else(|| {
            bad(format!(
                "query parameter {k:?}: {v:?} is not valid percent-encoding"
            ))
        })?;
        out.push((key, v));
    }
    Ok(out)
}

fn get(p: &[(&'static str, String)], key: &str) -> Option<String> {
    p.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone())
}

/// The bytes each module's snapshots hold on this node, for `/metrics`
/// (listed only where there are snapshots: a list reads the store).
pub(super) async fn held(api: &Arc<Api>, st: &Status) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for m in &st.modules {
        let Some(s) = &m.snapshots else {
            continue;
        };
        if s.count == 0 {
            out.push((m.name.clone(), 0));
            continue;
        }
        let a = run(api, snapshot(&m.name, SnapshotOp::List {})).await;
        if let Some(l) = a.data.as_ref().and_then(Value::as_array).filter(|_| a.ok) {
            let bytes = l.iter().filter_map(|s| s["bytes"].as_u64()).sum();
            out.push((m.name.clone(), bytes));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_become_snapshot_requests_and_bad_ones_name_the_field() {
        assert_eq!(
            parse_body("create", None, b"").unwrap(),
            (None, SnapshotOp::Create { name: None })
        );
        assert_eq!(
            parse_body(
                "create",
                None,
                br#"{"name": "before-upgrade", "node": "node2"}"#
            )
            .unwrap(),
            (
                Some("node2".into()),
                SnapshotOp::Create {
                    name: Some("before-upgrade".into())
                }
            )
        );
        assert_eq!(
            parse_body("restore", Some("s1"), br#"{"to": "/srv/old"}"#).unwrap(),
            (
                None,
                SnapshotOp::Restore {
                    name: "s1".into(),
                    to: "/srv/old".into()
                }
            )
        );
        let refused = |verb, name, body: &str, start: &str| {
            let (s, why) = parse_body(verb, name, body.as_bytes()).unwrap_err();
            assert_eq!(s, StatusCode::BAD_REQUEST, "{why}");
            assert!(why.starts_with(start), "{why}");
        };
        refused(
            "create",
            None,
            r#"{"nme": "x"}"#,
            "field \"nme\" of snapshot create: unknown field `nme`",
        );
        refused(
            "create",
            None,
            r#"{"name": 3}"#,
            "field \"name\" of snapshot create: invalid type",
        );
        refused(
            "create",
            None,
            r#"{"name": "a/b"}"#,
            "field \"name\": snapshot name",
        );
        refused(
            "restore",
            Some("s1"),
            "{}",
            "snapshot restore: missing field `to`",
        );
        refused(
            "restore",
            Some("s1"),
            r#"{"to": "rel/dir"}"#,
            "field \"to\" must be an absolute path",
        );
        refused(
            "restore",
            Some("s1"),
            r#"{"to": "/x", "name": "s2"}"#,
            "field \"name\" is not taken by snapshot restore",
        );
        refused(
            "restore",
            Some("s1"),
            r#"{"to": "/x", "node": 2}"#,
            "field \"node\" of snapshot restore: invalid type",
        );
        refused(
            "create",
            None,
            r#"{"module": "b"}"#,
            "field \"module\" is not taken",
        );
        refused("create", None, "[]", "the body must be a JSON object");
    }

    #[test]
    fn queries_take_only_their_parameters_decoded() {
        assert_eq!(
            params(Some("to=a%3Ab&node=node2"), &["to", "node"]).unwrap(),
            [("to", "a:b".to_string()), ("node", "node2".to_string())]
        );
        assert!(params(None, &["node"]).unwrap().is_empty());
        let (s, why) = params(Some("tto=x"), &["to", "node"]).unwrap_err();
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(
            why.starts_with("query parameter \"tto\" is not taken"),
            "{why}"
        );
        assert!(params(Some("to=a&to=b"), &["to"]).is_err());
        assert!(params(Some("to=%zz"), &["to"]).is_err());
        assert!(params(Some("to=%+f"), &["to"]).is_err());
        assert_eq!(decoded("manual-1").as_deref(), Some("manual-1"));
        assert_eq!(decoded("%"), None);
    }
}
