//! What each path answers. Every command goes through the control layer
//! (`Api::commands`) as the command line's do, and into the module's log
//! with the token's name.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use super::body::Body;
use super::tokens::{Entry, Role};
use super::{Api, MAX_HEAD, OPENAPI};
use crate::control::{Request, Response as Answer, Status};

type Response = hyper::Response<Body>;

/// The console's page, assets included: it works with no network beyond
/// the node.
const CONSOLE: &str = include_str!("console.html");
/// How long reading a request's body may take.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the events stream looks for news, and says it is alive.
const EVENTS_EVERY: Duration = Duration::from_secs(1);
const EVENTS_KEEPALIVE: Duration = Duration::from_secs(15);

pub(super) fn json_response(status: StatusCode, v: &Value) -> Response {
    hyper::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("cache-control", "no-store")
        .body(Body::full(v.to_string()))
        .expect("a valid response")
}

pub(super) fn error(status: StatusCode, why: impl Into<String>) -> Response {
    json_response(status, &json!({"error": why.into()}))
}

pub(super) async fn handle(
    api: &Arc<Api>,
    req: hyper::Request<hyper::body::Incoming>,
    from: SocketAddr,
) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    match (&method, segments.as_slice()) {
        (&Method::GET, [""] | ["index.html"]) => {
            return hyper::Response::builder()
                .header("content-type", "text/html; charset=utf-8")
                .header("cache-control", "no-store")
                // The page runs its own script and talks to this origin only.
                .header(
                    "content-security-policy",
                    "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'",
                )
                .body(Body::full(CONSOLE))
                .expect("a valid response");
        }
        (&Method::GET, ["api", "openapi.json"]) => {
            return hyper::Response::builder()
                .header("content-type", "application/json")
                .body(Body::full(OPENAPI))
                .expect("a valid response");
        }
        _ => {}
    }
    let who = match authenticate(api, req.headers()) {
        Ok(e) => e,
        Err(why) => {
            tracing::debug!("api: {method} {path} from {from}: {why}");
            return unauthorised(why);
        }
    };
    match (&method, segments.as_slice()) {
        (&Method::GET, ["metrics"]) => {
            let st = local_status(api).await;
            let held = super::snapshots::held(api, &st).await;
            hyper::Response::builder()
                .header(
                    "content-type",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )
                .body(Body::full(api.metrics.render(&st, &held)))
                .expect("a valid response")
        }
        (&Method::GET, ["api", "status"]) => json_response(StatusCode::OK, &both(api).await),
        (&Method::GET, ["api", "events"]) => events(api),
        (&Method::GET, ["api", "history"]) => json_response(StatusCode::OK, &history(api).await),
        (&Method::GET, ["api", "modules", m]) => {
            let st = local_status(api).await;
            match st.modules.iter().find(|x| x.name == *m) {
                Some(x) => json_response(StatusCode::OK, &json!(x)),
                None => error(StatusCode::NOT_FOUND, format!("no module named {m:?}")),
            }
        }
        (&Method::GET, ["api", "modules", m, "log"]) => {
            // `?node=NAME`: that node's log (relayed to the peer).
            let node = query(&req, "node").unwrap_or_else(|| api.node.clone());
            if node != api.node && node != api.peer_name {
                return error(
                    StatusCode::NOT_FOUND,
                    format!("no node named {node:?} ({} or {})", api.node, api.peer_name),
                );
            }
            let log = Request::Log {
                module: m.to_string(),
            };
            let a = if node == api.node {
                run(api, log).await
            } else {
                run(
                    api,
                    Request::On {
                        node: node.clone(),
                        request: Box::new(log),
                    },
                )
                .await
            };
            match (a.ok, known(api, m).await) {
                (_, false) => error(StatusCode::NOT_FOUND, format!("no module named {m:?}")),
                (true, true) => json_response(
                    StatusCode::OK,
                    &json!({"node": node, "module": m, "lines": a.messages}),
                ),
                (false, true) => error(StatusCode::CONFLICT, a.error.unwrap_or_default()),
            }
        }
        // Before the commands: `snapshots` is not one.
        (_, ["api", "modules", m, "snapshots", rest @ ..]) => {
            super::snapshots::handle(api, &who, &method, m, rest, req).await
        }
        (&Method::POST, ["api", "modules", m, cmd]) => {
            if who.role != Role::Admin {
                return monitor_only(&who);
            }
            let (m, cmd) = (m.to_string(), cmd.to_string());
            command(api, &who, Some(&m), &cmd, req).await
        }
        // Maintenance of every module at once.
        (&Method::POST, ["api", "maintenance"]) => {
            if who.role != Role::Admin {
                return monitor_only(&who);
            }
            command(api, &who, None, "maintenance", req).await
        }
        (_, ["api", "maintenance"]) => error(StatusCode::METHOD_NOT_ALLOWED, "commands are POSTed"),
        (_, ["metrics"] | ["api", "status" | "events" | "history"])
        | (_, ["api", "modules", _] | ["api", "modules", _, "log"]) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not answered here"),
        ),
        (_, ["api", "modules", _, _]) => {
            error(StatusCode::METHOD_NOT_ALLOWED, "commands are POSTed")
        }
        _ => error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}")),
    }
}

pub(super) fn monitor_only(who: &Entry) -> Response {
    error(
        StatusCode::FORBIDDEN,
        format!(
            "token {:?} has the monitor role: it reads, it does not command",
            who.name
        ),
    )
}

/// The value of `name` in the request's query.
fn query(req: &hyper::Request<hyper::body::Incoming>, name: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| v.to_string())
    })
}

/// The token's entry, or the answer that refuses the request.
fn authenticate(api: &Api, headers: &hyper::HeaderMap) -> Result<Entry, &'static str> {
    let Some(value) = headers.get("authorization") else {
        return Err("no token: send Authorization: Bearer TOKEN");
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match token.and_then(|t| api.tokens.check(t)) {
        Some(e) => Ok(e),
        None => Err("the token is not valid (revoked, or never issued)"),
    }
}

fn unauthorised(why: &str) -> Response {
    let mut r = error(StatusCode::UNAUTHORIZED, why);
    r.headers_mut().insert(
        "www-authenticate",
        hyper::header::HeaderValue::from_static("Bearer realm=\"tandem\""),
    );
    r
}

/// A control request carried out on this node, off the runtime's threads.
pub(super) async fn run(api: &Arc<Api>, req: Request) -> Answer {
    let c = api.commands.clone();
    tokio::task::spawn_blocking(move || c.handle(req))
        .await
        .unwrap_or_else(|e| Answer::error(format!("internal error: {e}")))
}

async fn local_status(api: &Arc<Api>) -> Status {
    run(api, Request::Status {})
        .await
        .status
        .unwrap_or_default()
}

pub(super) async fn known(api: &Arc<Api>, module: &str) -> bool {
    local_status(api)
        .await
        .modules
        .iter()
        .any(|m| m.name == module)
}

/// Both nodes' status: this node's now, the peer's as last fetched.
async fn both(api: &Arc<Api>) -> Value {
    let mine = local_status(api).await;
    let peer = match api.peer_status() {
        Some(Ok(st)) => json!(st),
        _ => Value::Null,
    };
    let peer_error = match api.peer_status() {
        Some(Err(e)) => Value::String(e.to_string()),
        None => Value::String("asking the peer".into()),
        Some(Ok(_)) => Value::Null,
    };
    json!({
        "node": api.node,
        "peer": api.peer_name,
        "nodes": { &api.node: mine, &api.peer_name: peer },
        "peer_error": peer_error,
    })
}

/// Status as server-sent events: the whole of `both` when it changes, a
/// comment now and then so that proxies keep the stream open.
fn events(api: &Arc<Api>) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let api2 = api.clone();
    api.stop.spawn("api-events", async move {
        let mut last = String::new();
        let mut quiet = Duration::ZERO;
        loop {
            let now = both(&api2).await.to_string();
            let frame = if now != last {
                quiet = Duration::ZERO;
                format!("event: status\ndata: {now}\n\n")
            } else if quiet >= EVENTS_KEEPALIVE {
                quiet = Duration::ZERO;
                ": alive\n\n".to_string()
            } else {
                String::new()
            };
            if !frame.is_empty() && tx.send(Bytes::from(frame)).await.is_err() {
                return;
            }
            last = now;
            tokio::time::sleep(EVENTS_EVERY).await;
            quiet += EVENTS_EVERY;
        }
    });
    hyper::Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-store")
        .body(Body::Stream(rx))
        .expect("a valid response")
}

/// The modules' changes of state on both nodes, oldest first, as each
/// node recorded them.
async fn history(api: &Arc<Api>) -> Value {
    let b = both(api).await;
    let mut out = Vec::new();
    for (node, st) in b["nodes"].as_object().into_iter().flatten() {
        for m in st["modules"].as_array().into_iter().flatten() {
            let name = m["name"].as_str().unwrap_or_default();
            let a = run(
                api,
                Request::On {
                    node: node.clone(),
                    request: Box::new(Request::History {
                        module: name.into(),
                    }),
                },
            )
            .await;
            for t in a.transitions {
                out.push(json!({"at": t.at, "node": node, "module": name, "from": t.from.name(), "to": t.to.name(), "why": t.why}));
            }
        }
    }
    out.sort_by(|a, b| a["at"].as_str().cmp(&b["at"].as_str()));
    json!({"events": out})
}

/// A command on module `m` (every module with `None`), asked by `who`.
async fn command(
    api: &Arc<Api>,
    who: &Entry,
    m: Option<&str>,
    cmd: &str,
    req: hyper::Request<hyper::body::Incoming>,
) -> Response {
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let request = match parse_command(m, cmd, &body) {
        Ok(r) => r,
        Err((status, why)) => return error(status, why),
    };
    if let Some(m) = m
        && !known(api, m).await
    {
        return error(StatusCode::NOT_FOUND, format!("no module named {m:?}"));
    }
    let node = match &request {
        Request::On { node, .. } if *node != api.node && *node != api.peer_name => {
            return error(
                StatusCode::NOT_FOUND,
                format!("no node named {node:?} ({} or {})", api.node, api.peer_name),
            );
        }
        Request::On { node, .. } => node.clone(),
        _ => api.node.clone(),
    };
    // The log says which way maintenance was switched.
    let asked = match &request {
        Request::On { request, .. } => request.as_ref(),
        r => r,
    };
    let what = match asked {
        Request::Maintenance { on, .. } => format!("{cmd} {}", if *on { "on" } else { "off" }),
        _ => cmd.to_string(),
    };
    (api.audit)(
        m,
        format!(
            "api: {what} on {node}, asked with token {:?} ({})",
            who.name, who.role
        ),
    );
    let a = run(api, request).await;
    if a.ok {
        json_response(StatusCode::OK, &json!({"ok": true, "messages": a.messages}))
    } else {
        let why = a.error.unwrap_or_else(|| a.messages.join("; "));
        error(StatusCode::CONFLICT, why)
    }
}

pub(super) async fn read_body(
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<Bytes, Response> {
    let limited = http_body_util::Limited::new(req.into_body(), MAX_HEAD);
    match tokio::time::timeout(BODY_TIMEOUT, limited.collect()).await {
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            "the body did not arrive in time",
        )),
        Ok(Err(_)) => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {MAX_HEAD} bytes"),
        )),
        Ok(Ok(c)) => Ok(c.to_bytes()),
    }
}

pub(super) type Refusal = (StatusCode, String);
pub(super) type Fields = serde_json::Map<String, Value>;

/// The commands a URL names, each with the tag `control::Request` knows it
/// by.
const COMMANDS: [(&str, &str); 12] = [
    ("start", "start"),
    ("stop", "stop"),
    ("restart", "restart"),
    ("swap", "swap"),
    ("prim", "prim"),
    ("second", "second"),
    ("resync", "full_sync"),
    ("verify", "verify"),
    ("resolve", "resolve"),
    ("checker", "checker"),
    ("maintenance", "maintenance"),
    ("pace", "resync_pace"),
];

/// The control request a command's body asks for, decoded by
/// `control::Request` itself (the URL gives the command and the module, or
/// every module); a refusal names the field at fault.
fn parse_command(module: Option<&str>, cmd: &str, body: &[u8]) -> Result<Request, Refusal> {
    let bad = |why: String| (StatusCode::BAD_REQUEST, why);
    let Some(&(_, tag)) = COMMANDS.iter().find(|(c, _)| *c == cmd) else {
        return Err((
            StatusCode::NOT_FOUND,
            format!(
                "no command {cmd:?}: start, stop, restart, swap, prim, second, resync, \
                 verify, resolve, checker, maintenance or pace"
            ),
        ));
    };
    let fields = body_fields(body)?;
    if let Some(k) = ["cmd", "module"].iter().find(|k| fields.contains_key(**k)) {
        return Err(bad(format!(
            "field {k:?} is not taken by {cmd}: the URL names the command and the module"
        )));
    }
    if fields.contains_key("asked") {
        return Err(bad(
            "field \"asked\" is set by a node relaying maintenance to its peer, not by a client"
                .into(),
        ));
    }
    let decode = |f: &Fields| serde_json::from_value::<Request>(tagged(module, tag, f.clone()));
    let request = decode(&fields).map_err(|e| bad(blame(cmd, &fields, &e, decode)))?;
    match unnamed(&request) {
        Some(k) => Err(bad(format!("field {k:?} must be a node's name, not \"\""))),
        None => Ok(request),
    }
}

/// A body's fields: a JSON object, or nothing at all.
pub(super) fn body_fields(body: &[u8]) -> Result<Fields, Refusal> {
    let bad = |why: String| (StatusCode::BAD_REQUEST, why);
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Fields::default());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err(bad("the body must be a JSON object".into())),
        Err(e) => Err(bad(format!("the body is not JSON: {e}"))),
    }
}

/// The request as `control::Request` reads it: the body's fields with the
/// command's tag and the module (none: every module), inside `on` when the
/// body names a node.
fn tagged(module: Option<&str>, tag: &str, mut fields: Fields) -> Value {
    let node = fields.remove("node");
    fields.insert("cmd".into(), tag.into());
    if let Some(module) = module {
        fields.insert("module".into(), module.into());
    }
    match node {
        None => Value::Object(fields),
        Some(node) => json!({"cmd": "on", "node": node, "request": fields}),
    }
}

/// Serde's refusal, with the body's field at fault named: the fields of an
/// internally tagged enum are decoded from a buffered copy, so a wrong type
/// says what was expected but not where. The field at fault is the one
/// without which the refusal changes (serde stops at the first, in the
/// order tried here).
pub(super) fn blame<T>(
    cmd: &str,
    fields: &Fields,
    e: &serde_json::Error,
    decode: impl Fn(&Fields) -> serde_json::Result<T>,
) -> String {
    let why = e.to_string();
    let at_fault = fields.keys().find(|k| {
        let mut rest = fields.clone();
        rest.remove(k.as_str());
        decode(&rest).map_or_else(|e| e.to_string() != why, |_| true)
    });
    match at_fault {
        Some(k) => format!("field {k:?} of {cmd}: {why}"),
        None => format!("{cmd}: {why}"),
    }
}

/// A name left empty (serde takes "", no node is called that).
fn unnamed(r: &Request) -> Option<&'static str> {
    match r {
        Request::On { node, .. } if node.is_empty() => Some("node"),
        Request::On { request, .. } => unnamed(request),
        Request::Resolve { keep, .. } if keep.is_empty() => Some("keep"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(cmd: &str, body: &str) -> (StatusCode, String) {
        parse_command(Some("app"), cmd, body.as_bytes()).unwrap_err()
    }

    #[test]
    fn bodies_become_control_requests_and_bad_ones_name_the_field() {
        assert_eq!(
            parse_command(Some("app"), "swap", b"").unwrap(),
            Request::Swap {
                module: "app".into()
            }
        );
        assert_eq!(
            parse_command(Some("app"), "prim", br#"{"force": true}"#).unwrap(),
            Request::Prim {
                module: "app".into(),
                force: true
            }
        );
        assert_eq!(
            parse_command(Some("app"), "checker", br#"{"on": false, "node": "node2"}"#).unwrap(),
            Request::On {
                node: "node2".into(),
                request: Box::new(Request::Checker {
                    module: "app".into(),
                    on: false
                }),
            }
        );
        let (s, why) = refused("prim", r#"{"force": "yes"}"#);
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(why.contains("\"force\""), "{why}");
        let (_, why) = refused("resolve", "{}");
        assert!(why.contains("`keep`"), "{why}");
        let (_, why) = refused("swap", r#"{"forse": true}"#);
        assert!(why.contains("\"forse\""), "{why}");
        let (_, why) = refused("swap", "{nope");
        assert!(why.contains("not JSON"), "{why}");
        let (s, _) = refused("explode", "");
        assert_eq!(s, StatusCode::NOT_FOUND);
    }

    #[test]
    fn every_command_of_the_url_is_a_request() {
        for (cmd, tag) in COMMANDS {
            let body = match cmd {
                "resolve" => r#"{"keep": "node1"}"#,
                "checker" | "maintenance" => r#"{"on": true}"#,
                "pace" => r#"{"paused": true}"#,
                _ => "",
            };
            let r = parse_command(Some("app"), cmd, body.as_bytes()).unwrap();
            let back = serde_json::to_value(&r).unwrap();
            assert_eq!(
                (back["cmd"].as_str(), back["module"].as_str()),
                (Some(tag), Some("app"))
            );
        }
        assert_eq!(
            parse_command(Some("app"), "resync", b"").unwrap(),
            Request::FullSync {
                module: "app".into()
            }
        );
    }

    #[test]
    fn a_resync_is_paced_by_rate_and_pause_and_bad_values_are_named() {
        assert_eq!(
            parse_command(
                Some("app"),
                "pace",
                br#"{"rate": 1048576, "paused": false}"#
            )
            .unwrap(),
            Request::ResyncPace {
                module: "app".into(),
                rate: Some(1 << 20),
                paused: Some(false),
            }
        );
        refused_as(
            "pace",
            r#"{"rate": -1}"#,
            "field \"rate\" of pace: invalid value",
        );
        refused_as(
            "pace",
            r#"{"rate": "5XB"}"#,
            "field \"rate\" of pace: invalid type",
        );
        refused_as("pace", r#"{"paused": "yes"}"#, "field \"paused\" of pace");
        refused_as(
            "pace",
            r#"{"pause": true}"#,
            "field \"pause\" of pace: unknown field",
        );
    }

    #[test]
    fn maintenance_is_asked_for_a_module_or_every_module_and_the_relay_field_is_refused() {
        assert_eq!(
            parse_command(None, "maintenance", br#"{"on": true}"#).unwrap(),
            Request::Maintenance {
                module: None,
                on: true,
                asked: None
            }
        );
        assert_eq!(
            parse_command(
                Some("app"),
                "maintenance",
                br#"{"on": false, "node": "node2"}"#
            )
            .unwrap(),
            Request::On {
                node: "node2".into(),
                request: Box::new(Request::Maintenance {
                    module: Some("app".into()),
                    on: false,
                    asked: None
                }),
            }
        );
        refused_as("maintenance", "{}", "maintenance: missing field `on`");
        let (s, why) = parse_command(
            None,
            "maintenance",
            br#"{"on": true, "asked": {"node": "node1", "at_ms": 1}}"#,
        )
        .unwrap_err();
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(why.starts_with("field \"asked\" is set by a node"), "{why}");
    }

    /// Refused with 400, the reason starting with `start`.
    fn refused_as(cmd: &str, body: &str, start: &str) {
        let (s, why) = refused(cmd, body);
        assert_eq!(s, StatusCode::BAD_REQUEST, "{why}");
        assert!(why.starts_with(start), "{why}");
    }

    #[test]
    fn the_decoder_names_what_it_refuses() {
        // Wrong types: the field named, with serde's reason.
        let wrong = r#"{"repair": 1}"#;
        refused_as("verify", wrong, "field \"repair\" of verify: invalid type");
        assert!(refused("verify", wrong).1.contains("expected a boolean"));
        let wrong = r#"{"on": true, "node": 2}"#;
        refused_as("checker", wrong, "field \"node\" of checker: invalid type");
        let wrong = r#"{"node": "node2", "on": "off"}"#;
        refused_as("checker", wrong, "field \"on\" of checker: invalid type");
        let wrong = r#"{"keep": ["node1"]}"#;
        refused_as("resolve", wrong, "field \"keep\" of resolve: invalid type");
        // Unknown fields, also beside good ones and under a node.
        let unknown = r#"{"force": true, "forse": true}"#;
        refused_as(
            "prim",
            unknown,
            "field \"forse\" of prim: unknown field `forse`",
        );
        let unknown = r#"{"node": "node2", "all": true}"#;
        refused_as(
            "start",
            unknown,
            "field \"all\" of start: unknown field `all`",
        );
        // Missing fields.
        refused_as(
            "checker",
            r#"{"node": "node2"}"#,
            "checker: missing field `on`",
        );
        // What the URL says is not said again in the body.
        refused_as(
            "swap",
            r#"{"module": "other"}"#,
            "field \"module\" is not taken",
        );
        refused_as("swap", r#"{"cmd": "status"}"#, "field \"cmd\" is not taken");
        // Empty names.
        refused_as(
            "swap",
            r#"{"node": ""}"#,
            "field \"node\" must be a node's name",
        );
        refused_as(
            "resolve",
            r#"{"keep": ""}"#,
            "field \"keep\" must be a node's name",
        );
        refused_as("swap", "[1]", "the body must be a JSON object");
        // Unknown commands, the requests the URL does not command among
        // them: named, with the list.
        for cmd in ["explode", "status", "log", "history", "on", "full_sync"] {
            let (s, why) = refused(cmd, "");
            assert_eq!(s, StatusCode::NOT_FOUND, "{cmd}");
            assert!(
                why.starts_with(&format!("no command {cmd:?}: start")),
                "{why}"
            );
        }
    }
}
