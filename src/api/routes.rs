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

fn json_response(status: StatusCode, v: &Value) -> Response {
    hyper::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("cache-control", "no-store")
        .body(Body::full(v.to_string()))
        .expect("a valid response")
}

fn error(status: StatusCode, why: impl Into<String>) -> Response {
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
            hyper::Response::builder()
                .header(
                    "content-type",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )
                .body(Body::full(api.metrics.render(&st)))
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
        (&Method::POST, ["api", "modules", m, cmd]) => {
            if who.role != Role::Admin {
                return error(
                    StatusCode::FORBIDDEN,
                    format!(
                        "token {:?} has the monitor role: it reads, it does not command",
                        who.name
                    ),
                );
            }
            let (m, cmd) = (m.to_string(), cmd.to_string());
            command(api, &who, &m, &cmd, req).await
        }
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
async fn run(api: &Arc<Api>, req: Request) -> Answer {
    let c = api.commands.clone();
    tokio::task::spawn_blocking(move || c(req))
        .await
        .unwrap_or_else(|e| Answer::error(format!("internal error: {e}")))
}

async fn local_status(api: &Arc<Api>) -> Status {
    run(api, Request::Status {})
        .await
        .status
        .unwrap_or_default()
}

async fn known(api: &Arc<Api>, module: &str) -> bool {
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
        Some(Err(e)) => Value::String(e),
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

/// The modules' changes of state on both nodes, oldest first, from their
/// logs.
async fn history(api: &Arc<Api>) -> Value {
    let b = both(api).await;
    let mut out = Vec::new();
    for (node, st) in b["nodes"].as_object().into_iter().flatten() {
        for m in st["modules"].as_array().into_iter().flatten() {
            let name = m["name"].as_str().unwrap_or_default();
            let lines = run(
                api,
                Request::On {
                    node: node.clone(),
                    request: Box::new(Request::Log {
                        module: name.into(),
                    }),
                },
            )
            .await;
            for l in lines.messages {
                if let Some(e) = transition(&l) {
                    out.push(json!({"at": e.0, "node": node, "module": name, "from": e.1, "to": e.2, "why": e.3}));
                }
            }
        }
    }
    out.sort_by(|a, b| a["at"].as_str().cmp(&b["at"].as_str()));
    json!({"events": out})
}

/// `TIME From -> To: why` from a module's log.
fn transition(line: &str) -> Option<(String, String, String, String)> {
    let (at, rest) = line.split_once(' ')?;
    let (states, why) = rest.split_once(": ")?;
    let (from, to) = states.split_once(" -> ")?;
    let name = |s: &str| {
        s.to_ascii_uppercase()
            .parse::<crate::cluster::machine::State>()
            .ok()
            .map(|s| s.name().to_string())
    };
    Some((at.into(), name(from)?, name(to)?, why.into()))
}

/// A command on module `m`, asked by `who`.
async fn command(
    api: &Arc<Api>,
    who: &Entry,
    m: &str,
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
    if !known(api, m).await {
        return error(StatusCode::NOT_FOUND, format!("no module named {m:?}"));
    }
    let (node, request) = match request {
        Request::On { node, request } if node != api.node => {
            if node != api.peer_name {
                return error(
                    StatusCode::NOT_FOUND,
                    format!("no node named {node:?} ({} or {})", api.node, api.peer_name),
                );
            }
            (node.clone(), Request::On { node, request })
        }
        Request::On { request, .. } => (api.node.clone(), *request),
        r => (api.node.clone(), r),
    };
    (api.audit)(
        Some(m),
        format!(
            "api: {cmd} on {node}, asked with token {:?} ({})",
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

async fn read_body(req: hyper::Request<hyper::body::Incoming>) -> Result<Bytes, Response> {
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

type Refusal = (StatusCode, String);

/// The control request a command's body asks for; a refusal names the
/// field at fault.
fn parse_command(module: &str, cmd: &str, body: &[u8]) -> Result<Request, Refusal> {
    let bad = |why: String| (StatusCode::BAD_REQUEST, why);
    let fields: serde_json::Map<String, Value> = if body.iter().all(u8::is_ascii_whitespace) {
        Default::default()
    } else {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(o)) => o,
            Ok(_) => return Err(bad("the body must be a JSON object".into())),
            Err(e) => return Err(bad(format!("the body is not JSON: {e}"))),
        }
    };
    let allowed: &[&str] = match cmd {
        "prim" => &["force", "node"],
        "verify" => &["repair", "node"],
        "resolve" => &["keep", "node"],
        "checker" => &["on", "node"],
        "start" | "stop" | "restart" | "swap" | "second" | "resync" => &["node"],
        _ => {
            return Err((
                StatusCode::NOT_FOUND,
                format!(
                    "no command {cmd:?}: start, stop, restart, swap, prim, second, resync, \
                     verify, resolve or checker"
                ),
            ));
        }
    };
    if let Some(k) = fields.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(bad(format!(
            "field {k:?} is not taken by {cmd} (it takes {})",
            allowed.join(", ")
        )));
    }
    let flag = |name: &str| -> Result<Option<bool>, Refusal> {
        match fields.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(bad(format!(
                "field {name:?} must be true or false, not {v}"
            ))),
        }
    };
    let text = |name: &str| -> Result<Option<String>, Refusal> {
        match fields.get(name) {
            None => Ok(None),
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
            Some(v) => Err(bad(format!(
                "field {name:?} must be a node's name, not {v}"
            ))),
        }
    };
    let module = module.to_string();
    let r = match cmd {
        "start" => Request::Start {
            module: Some(module),
        },
        "stop" => Request::Stop {
            module: Some(module),
        },
        "restart" => Request::Restart { module },
        "swap" => Request::Swap { module },
        "second" => Request::Second { module },
        "resync" => Request::FullSync { module },
        "prim" => Request::Prim {
            module,
            force: flag("force")?.unwrap_or(false),
        },
        "verify" => Request::Verify {
            module,
            repair: flag("repair")?.unwrap_or(false),
        },
        "resolve" => Request::Resolve {
            module,
            keep: text("keep")?.ok_or_else(|| {
                bad("field \"keep\" is required: the node whose data is kept".into())
            })?,
        },
        "checker" => Request::Checker {
            module,
            on: flag("on")?.ok_or_else(|| bad("field \"on\" is required: true or false".into()))?,
        },
        _ => unreachable!("refused above"),
    };
    Ok(match text("node")? {
        Some(node) => Request::On {
            node,
            request: Box::new(r),
        },
        None => r,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_become_control_requests_and_bad_ones_name_the_field() {
        assert_eq!(
            parse_command("app", "swap", b"").unwrap(),
            Request::Swap {
                module: "app".into()
            }
        );
        assert_eq!(
            parse_command("app", "prim", br#"{"force": true}"#).unwrap(),
            Request::Prim {
                module: "app".into(),
                force: true
            }
        );
        assert_eq!(
            parse_command("app", "checker", br#"{"on": false, "node": "node2"}"#).unwrap(),
            Request::On {
                node: "node2".into(),
                request: Box::new(Request::Checker {
                    module: "app".into(),
                    on: false
                }),
            }
        );
        let (s, why) = parse_command("app", "prim", br#"{"force": "yes"}"#).unwrap_err();
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(why.contains("\"force\""), "{why}");
        let (_, why) = parse_command("app", "resolve", b"{}").unwrap_err();
        assert!(why.contains("\"keep\""), "{why}");
        let (_, why) = parse_command("app", "swap", br#"{"forse": true}"#).unwrap_err();
        assert!(why.contains("\"forse\""), "{why}");
        let (_, why) = parse_command("app", "swap", b"{nope").unwrap_err();
        assert!(why.contains("not JSON"), "{why}");
        let (s, _) = parse_command("app", "explode", b"").unwrap_err();
        assert_eq!(s, StatusCode::NOT_FOUND);
    }

    #[test]
    fn transitions_are_read_from_the_log() {
        let t = transition("2026-12-05T17:00:00.123Z Second -> Prim: the peer is gone").unwrap();
        assert_eq!(t.1, "SECOND");
        assert_eq!(t.2, "PRIM");
        assert_eq!(t.3, "the peer is gone");
        assert!(transition("2026-12-05T17:00:00.123Z start_prim done in 3 ms").is_none());
    }
}
