//! The HTTPS API of a real two-node cluster on loopback: tokens and roles,
//! the commands of the command line and their refusals, the log, history,
//! events and metrics, the OpenAPI document checked against the running
//! server, and clients that hold connections idle or send too much.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::{Cluster, Options};
use common::wait_until;
use serde_json::{Value, json};

struct Client {
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
    base: String,
}

impl Client {
    /// Over TLS, trusting the cluster's CA: the node's certificate names its
    /// address.
    fn new(c: &Cluster, n: usize) -> Client {
        let port = c.api.expect("the API is on")[n - 1];
        let ca = c.path("tls/ca.pem");
        Client {
            rt: tokio::runtime::Runtime::new().unwrap(),
            http: tandem::webclient::client(Some(&ca), None).unwrap(),
            base: format!("https://127.0.0.{n}:{port}"),
        }
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, String) {
        self.rt.block_on(async {
            let mut r = self
                .http
                .request(method.parse().unwrap(), format!("{}{path}", self.base))
                .timeout(Duration::from_secs(20));
            if let Some(t) = token {
                r = r.header("authorization", format!("Bearer {t}"));
            }
            if let Some(b) = body {
                r = r
                    .header("content-type", "application/json")
                    .body(b.to_string());
            }
            let a = r.send().await.unwrap();
            (a.status().as_u16(), a.text().await.unwrap())
        })
    }

    fn get(&self, path: &str, token: &str) -> (u16, Value) {
        let (s, t) = self.call("GET", path, Some(token), None);
        (s, serde_json::from_str(&t).unwrap_or(Value::String(t)))
    }

    fn post(&self, path: &str, token: &str, body: &str) -> (u16, Value) {
        let (s, t) = self.call("POST", path, Some(token), Some(body));
        (s, serde_json::from_str(&t).unwrap_or(Value::String(t)))
    }
}

fn token(c: &Cluster, n: usize, name: &str, role: &str) -> String {
    let o = c.tandem(n, &["token", "create", name, "--role", role]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

fn cluster() -> Cluster {
    let mut c = Cluster::build_opts(
        None,
        &Options {
            quorum: "none",
            api: true,
            ..Options::default()
        },
    );
    c.start_both(30);
    c
}

#[test]
fn tokens_roles_commands_and_refusals_through_the_api() {
    let c = cluster();
    let admin = token(&c, 1, "ops", "admin");
    let monitor = token(&c, 1, "grafana", "monitor");
    let api = Client::new(&c, 1);

    // No token, a wrong one, a revoked one: 401, nothing done.
    assert_eq!(api.call("GET", "/api/status", None, None).0, 401);
    assert_eq!(api.get("/api/status", "tdm_guess").0, 401);
    let gone = token(&c, 1, "gone", "admin");
    assert!(c.tandem(1, &["token", "revoke", "gone"]).status.success());
    assert_eq!(api.post("/api/modules/app/swap", &gone, "").0, 401);
    // The page and the document need none.
    let (s, page) = api.call("GET", "/", None, None);
    assert_eq!(s, 200);
    assert!(page.contains("<title>tandem</title>"));

    // A monitor reads everything: both nodes, the log, history, metrics.
    assert!(
        wait_until(10, || !api.get("/api/status", &monitor).1["nodes"]["node2"]
            .is_null()),
        "the peer's status never came"
    );
    let (s, st) = api.get("/api/status", &monitor);
    assert_eq!(s, 200);
    assert_eq!(st["nodes"]["node1"]["modules"][0]["state"], "PRIM");
    assert_eq!(st["nodes"]["node2"]["modules"][0]["state"], "SECOND");
    let (s, log) = api.get("/api/modules/app/log", &monitor);
    assert_eq!(s, 200);
    assert!(!log["lines"].as_array().unwrap().is_empty());
    let (s, peer_log) = api.get("/api/modules/app/log?node=node2", &monitor);
    assert_eq!((s, peer_log["node"].clone()), (200, json!("node2")));
    let (s, metrics) = api.call("GET", "/metrics", Some(&monitor), None);
    assert_eq!(s, 200);
    assert!(
        metrics.contains(r#"tandem_module_state{module="app",state="PRIM"} 1"#),
        "{metrics}"
    );
    for name in [
        "tandem_heartbeats_received_total",
        "tandem_heartbeat_rtt_seconds{",
        "tandem_replication_ack_wait_seconds_bucket{",
        "tandem_replication_flushes_total{",
        "tandem_replication_acks_total{",
        "tandem_script_duration_seconds_bucket{",
    ] {
        assert!(metrics.contains(name), "no {name} in\n{metrics}");
    }
    assert!(metrics.ends_with("# EOF\n"));
    // The shipped alert rules and dashboard use only what a node serves.
    let served: std::collections::HashSet<&str> = metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    for file in ["alerts.yml", "grafana-dashboard.json"] {
        let path = format!("{}/config/monitoring/{file}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap();
        let mut used = 0;
        for (i, _) in text.match_indices("tandem_") {
            let name: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            assert!(
                served.contains(name.as_str()),
                "{file} uses {name}, which no node serves"
            );
            used += 1;
        }
        assert!(used >= 8, "{file}: only {used} metrics used");
    }
    // ... and commands nothing.
    let (s, e) = api.post("/api/modules/app/swap", &monitor, "");
    assert_eq!(s, 403, "{e}");
    assert!(e["error"].as_str().unwrap().contains("monitor"));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!((c.state(1), c.state(2)), ("PRIM".into(), "SECOND".into()));

    // Bad input: named, and nothing done.
    let (s, e) = api.post("/api/modules/nope/swap", &admin, "");
    assert_eq!(s, 404, "{e}");
    let (s, e) = api.post("/api/modules/app/prim", &admin, r#"{"force": "yes"}"#);
    assert_eq!(s, 400);
    assert!(e["error"].as_str().unwrap().contains("\"force\""), "{e}");
    let (s, e) = api.post("/api/modules/app/swap", &admin, "{not json");
    assert_eq!(s, 400, "{e}");
    let (s, e) = api.post("/api/modules/app/explode", &admin, "");
    assert_eq!(s, 404, "{e}");
    // A command the cluster refuses: 409 with its reason.
    let (s, e) = api.post("/api/modules/app/resolve", &admin, r#"{"keep": "node1"}"#);
    assert_eq!(s, 409, "{e}");
    assert!(!e["error"].as_str().unwrap().is_empty());
    let (s, _) = api.call("DELETE", "/api/status", Some(&admin), None);
    assert_eq!(s, 405);
    assert_eq!((c.state(1), c.state(2)), ("PRIM".into(), "SECOND".into()));

    // An admin swaps: the module moves, and the log says who asked.
    let (s, r) = api.post("/api/modules/app/swap", &admin, "");
    assert_eq!(s, 200, "{r}");
    c.wait_states("SECOND", "PRIM", 30);
    let lines = api.get("/api/modules/app/log", &monitor).1["lines"].to_string();
    assert!(
        lines.contains(r#"api: swap on node1, asked with token \"ops\" (admin)"#),
        "{lines}"
    );
    let (_, h) = api.get("/api/history", &monitor);
    let events = h["events"].as_array().unwrap();
    assert!(
        events
            .iter()
            .any(|e| e["node"] == "node2" && e["to"] == "PRIM"),
        "{h}"
    );
    // Commands go to the other node too.
    let (s, r) = api.post("/api/modules/app/swap", &admin, r#"{"node": "node2"}"#);
    assert_eq!(s, 200, "{r}");
    c.wait_states("PRIM", "SECOND", 30);
}

/// The command line's side: `status` as one table of both nodes, `--json`
/// where it reports, and a module log that outlives the daemon.
#[test]
fn status_is_one_table_and_the_log_outlives_a_restart() {
    let mut c = cluster();
    let o = c.tandem(1, &["status"]);
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    let rows: Vec<Vec<&str>> = text
        .lines()
        .skip_while(|l| !l.starts_with("NODE"))
        .take_while(|l| !l.is_empty())
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|w| !w.is_empty())
                .collect()
        })
        .collect();
    assert_eq!(
        rows[0],
        [
            "NODE",
            "MODULE",
            "ROLE",
            "STATE",
            "UP TO DATE",
            "DIRTY",
            "RESYNC"
        ],
        "{text}"
    );
    assert_eq!(
        rows[1][..5],
        ["node1", "app", "primary", "PRIM", "-"],
        "{text}"
    );
    assert_eq!(
        rows[2][..5],
        ["node2", "app", "secondary", "SECOND", "yes"],
        "{text}"
    );

    let before = token(&c, 1, "before", "monitor");
    let o = c.tandem(1, &["token", "list", "--json"]);
    let list: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(list[0]["name"], "before");
    assert_eq!(list[0]["role"], "monitor");
    assert!(!String::from_utf8_lossy(&o.stdout).contains(&before[4..]));

    let o = c.tandem(1, &["resync", "app", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let last: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(last["peer"], "connected");
    assert_eq!(last["module"], "app");
    assert!(last["resync"]["bytes_done"].is_u64());

    let o = c.tandem(1, &["log", "app", "--json"]);
    let lines: Vec<Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        !lines.is_empty()
            && lines
                .iter()
                .all(|l| l["module"] == "app" && l["line"].is_string())
    );
    let first = lines[0]["line"].as_str().unwrap().to_string();

    // The daemon stops and comes back: its earlier lines are still there.
    c.signal(1, libc::SIGTERM);
    c.start(1);
    assert!(wait_until(20, || {
        let o = c.tandem(1, &["log", "app"]);
        let t = String::from_utf8_lossy(&o.stdout).to_string();
        t.contains(&first) && t.lines().count() > lines.len()
    }));
}

#[test]
fn events_stream_the_status_and_idle_or_huge_clients_stall_nobody() {
    let c = cluster();
    let monitor = token(&c, 1, "watch", "monitor");
    let api = Arc::new(Client::new(&c, 1));
    let port = c.api.unwrap()[0];

    // The events stream starts with the whole status.
    let first = api.rt.block_on(async {
        let mut r = api
            .http
            .get(format!("{}/api/events", api.base))
            .header("authorization", format!("Bearer {monitor}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let mut got = Vec::new();
        while !String::from_utf8_lossy(&got).contains("\n\n") {
            let chunk = tokio::time::timeout(Duration::from_secs(5), r.chunk())
                .await
                .expect("an event within 5 s")
                .unwrap()
                .expect("the stream stays open");
            got.extend_from_slice(&chunk);
        }
        String::from_utf8(got).unwrap()
    });
    assert!(first.starts_with("event: status\ndata: {"), "{first}");

    // 200 connections held idle from one address, and requests with 1 MiB
    // of headers, while a client elsewhere asks the API and the health
    // endpoint: every answer within 1 s.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let attackers: Vec<_> = (0..5)
        .map(|k| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let mut held = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if k == 0 {
                        // Huge heads, over and over.
                        if let Some(mut s) = connect_from(&rt, port) {
                            use std::io::Write;
                            let mut big = b"GET /api/status HTTP/1.1\r\nX-Big: ".to_vec();
                            big.extend(std::iter::repeat_n(b'a', 1 << 20));
                            let _ = s.write_all(&big);
                        }
                    } else if held.len() < 50 {
                        held.extend(connect_from(&rt, port));
                    } else {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let lb = c.lb_port(1);
    let mut slow = Vec::new();
    let (mut api_times, mut probe_times) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        let t0 = Instant::now();
        let (s, _) = api.get("/api/status", &monitor);
        let took = t0.elapsed();
        api_times.push(took);
        if s != 200 || took > Duration::from_secs(1) {
            slow.push(format!("api {s} in {took:?}"));
        }
        let t0 = Instant::now();
        let probe = common::cluster::http_status(lb, "/primary/app");
        let took = t0.elapsed();
        probe_times.push(took);
        if probe != Some(200) || took > Duration::from_secs(1) {
            slow.push(format!("probe {probe:?} in {took:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for a in attackers {
        a.join().unwrap();
    }
    api_times.sort();
    probe_times.sort();
    eprintln!(
        "while 200 connections were held idle: API median {:?}, max {:?}; probes median {:?}, max {:?}",
        api_times[10], api_times[19], probe_times[10], probe_times[19]
    );
    assert!(slow.is_empty(), "{slow:?}");
}

/// A connection from 127.0.0.66 (not the client's address), or none.
fn connect_from(rt: &tokio::runtime::Runtime, port: u16) -> Option<std::net::TcpStream> {
    rt.block_on(async {
        let s = tokio::net::TcpSocket::new_v4().ok()?;
        s.bind(([127, 0, 0, 66], 0).into()).ok()?;
        let c = tokio::time::timeout(
            Duration::from_secs(1),
            s.connect(([127, 0, 0, 1], port).into()),
        )
        .await
        .ok()?
        .ok()?;
        let c = c.into_std().ok()?;
        c.set_nonblocking(false).ok()?;
        Some(c)
    })
}

/// Maintenance through the API: for every module or one, on this node or
/// the other, refused to a monitor and for bad input, shown in the status
/// of both nodes and in `/metrics`, overdue past its configured time.
#[test]
fn maintenance_through_the_api_status_and_metrics() {
    let mut c = Cluster::build_opts(
        None,
        &Options {
            quorum: "none",
            api: true,
            cluster_extra: "maintenance_alert_after_s = 2",
            ..Options::default()
        },
    );
    c.start_both(30);
    let admin = token(&c, 1, "ops", "admin");
    let monitor = token(&c, 1, "mon", "monitor");
    let api = Client::new(&c, 1);
    let metric = |name: &str| -> Option<String> {
        let (_, m) = api.call("GET", "/metrics", Some(&monitor), None);
        m.lines()
            .find(|l| l.starts_with(name))
            .map(|l| l.rsplit(' ').next().unwrap().to_string())
    };
    assert_eq!(
        metric(r#"tandem_maintenance{module="app"}"#).as_deref(),
        Some("0")
    );
    assert_eq!(
        metric("tandem_maintenance_alert_after_seconds").as_deref(),
        Some("2")
    );

    let (s, e) = api.post("/api/maintenance", &monitor, r#"{"on": true}"#);
    assert_eq!(s, 403, "{e}");
    let (s, e) = api.post("/api/modules/nope/maintenance", &admin, r#"{"on": true}"#);
    assert_eq!(s, 404, "{e}");
    let (s, e) = api.post("/api/modules/app/maintenance", &admin, r#"{"on": "yes"}"#);
    assert_eq!(s, 400);
    assert!(e["error"].as_str().unwrap().contains("\"on\""), "{e}");
    let (s, e) = api.post(
        "/api/maintenance",
        &admin,
        r#"{"on": true, "asked": {"node": "node2", "at_ms": 1}}"#,
    );
    assert_eq!(s, 400, "{e}");
    assert_eq!(
        api.call("GET", "/api/maintenance", Some(&admin), None).0,
        405
    );
    let on = |n: usize| c.status(n).unwrap()["modules"][0]["cluster"]["maintenance"].clone();
    assert_eq!(
        (on(1)["on"].clone(), on(2)["on"].clone()),
        (json!(false), json!(false))
    );

    let (s, a) = api.post("/api/maintenance", &admin, r#"{"on": true}"#);
    assert_eq!(s, 200, "{a}");
    let said = a["messages"].to_string();
    assert!(said.contains("module app: maintenance on"), "{said}");
    assert!(wait_until(10, || on(1)["peer_agrees"] == true
        && on(2)["peer_agrees"] == true));
    let (_, st) = api.get("/api/status", &monitor);
    for n in ["node1", "node2"] {
        let m = &st["nodes"][n]["modules"][0]["cluster"]["maintenance"];
        if m.is_null() {
            continue; // the peer's status, as last fetched, may be older
        }
        assert_eq!(m["by"], "node1", "{st}");
    }
    assert_eq!(
        metric(r#"tandem_maintenance{module="app"}"#).as_deref(),
        Some("1")
    );
    assert!(
        wait_until(10, || metric(r#"tandem_maintenance_overdue{module="app"}"#)
            .as_deref()
            == Some("1")),
        "not overdue after 2 s"
    );
    assert_ne!(
        metric(r#"tandem_maintenance_seconds{module="app"}"#).as_deref(),
        Some("0")
    );
    assert!(on(1)["overdue"] == true);
    let log = c.tandem(1, &["log", "app"]);
    let log = String::from_utf8_lossy(&log.stdout);
    assert!(
        log.contains("api: maintenance on on node1, asked with token \"ops\""),
        "{log}"
    );

    // Off for the module, asked on node2 through node1's API.
    let (s, a) = api.post(
        "/api/modules/app/maintenance",
        &admin,
        r#"{"on": false, "node": "node2"}"#,
    );
    assert_eq!(s, 200, "{a}");
    assert!(wait_until(10, || on(1)["on"] == false && on(2)["on"] == false));
    assert_eq!(on(2)["by"], "node2");
    assert_eq!(
        metric(r#"tandem_maintenance{module="app"}"#).as_deref(),
        Some("0")
    );
    assert_eq!(
        metric(r#"tandem_maintenance_overdue{module="app"}"#).as_deref(),
        Some("0")
    );
    assert_eq!((c.state(1), c.state(2)), ("PRIM".into(), "SECOND".into()));
}

/// The document the server serves is the one in the repository, and every
/// operation it lists answers, with a monitor and an admin token, a status
/// it documents and a body its schema allows.
#[test]
fn the_running_server_keeps_to_its_openapi_document() {
    let c = cluster();
    let admin = token(&c, 1, "ops", "admin");
    let monitor = token(&c, 1, "mon", "monitor");
    let api = Client::new(&c, 1);
    let (s, served) = api.call("GET", "/api/openapi.json", None, None);
    assert_eq!(s, 200);
    let doc: Value = serde_json::from_str(&served).unwrap();
    let kept: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/api/openapi.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(doc, kept);
    let mut checked = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            // Every command is tried with a harmless one (verify), unknown
            // ones too; the others as they are.
            let cases: Vec<(String, Option<&str>)> = match path.as_str() {
                "/api/modules/{module}/{command}" => vec![
                    ("/api/modules/app/verify".into(), Some("{}")),
                    ("/api/modules/app/verify".into(), Some(r#"{"repair": 1}"#)),
                    ("/api/modules/nope/verify".into(), Some("{}")),
                    ("/api/modules/app/nope".into(), Some("{}")),
                ],
                p => vec![
                    (p.replace("{module}", "app"), None),
                    (p.replace("{module}", "nope"), None),
                ],
            };
            for (url, body) in cases {
                for tok in [None, Some(monitor.as_str()), Some(admin.as_str())] {
                    if path == "/api/events" && tok.is_some() {
                        continue; // a stream: checked in its own test
                    }
                    let (status, text) = api.call(&method.to_uppercase(), &url, tok, body);
                    let spec = &op["responses"][status.to_string()];
                    assert!(
                        spec.is_object(),
                        "{method} {url} with {tok:?}: status {status} is not documented: {text}"
                    );
                    if let Some(schema) = spec["content"]["application/json"]["schema"].as_object()
                    {
                        let v: Value = serde_json::from_str(&text)
                            .unwrap_or_else(|e| panic!("{method} {url}: not JSON ({e}): {text}"));
                        let mut errors = Vec::new();
                        conforms(&doc, &Value::Object(schema.clone()), &v, "$", &mut errors);
                        assert!(
                            errors.is_empty(),
                            "{method} {url} {status}: {errors:?}\n{text}"
                        );
                    }
                    checked += 1;
                }
            }
        }
    }
    assert!(checked >= 30, "only {checked} requests checked");
}

/// The subset of JSON Schema the document uses.
fn conforms(doc: &Value, schema: &Value, v: &Value, at: &str, errors: &mut Vec<String>) {
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.trim_start_matches("#/components/schemas/");
        return conforms(doc, &doc["components"]["schemas"][name], v, at, errors);
    }
    if v.is_null() && schema["nullable"] == true {
        return;
    }
    if let Some(all) = schema["allOf"].as_array() {
        for s in all {
            conforms(doc, s, v, at, errors);
        }
    }
    let ok = match schema["type"].as_str() {
        Some("object") => v.is_object(),
        Some("array") => v.is_array(),
        Some("string") => v.is_string(),
        Some("integer") => v.is_i64() || v.is_u64(),
        Some("boolean") => v.is_boolean(),
        _ => true,
    };
    if !ok {
        errors.push(format!("{at}: {v} is not {}", schema["type"]));
        return;
    }
    if let Some(e) = schema["enum"].as_array()
        && !e.contains(v)
    {
        errors.push(format!("{at}: {v} is not one of {e:?}"));
    }
    for r in schema["required"].as_array().into_iter().flatten() {
        if v.get(r.as_str().unwrap()).is_none() {
            errors.push(format!("{at}: {r} is missing"));
        }
    }
    if let (Some(props), Some(o)) = (schema["properties"].as_object(), v.as_object()) {
        for (k, val) in o {
            match props.get(k) {
                Some(s) => conforms(doc, s, val, &format!("{at}.{k}"), errors),
                None if schema["additionalProperties"] == false => {
                    errors.push(format!("{at}: {k} is not documented"))
                }
                None => {}
            }
        }
    }
    if let (Some(extra), Some(o)) = (schema["additionalProperties"].as_object(), v.as_object()) {
        for (k, val) in o {
            conforms(
                doc,
                &Value::Object(extra.clone()),
                val,
                &format!("{at}.{k}"),
                errors,
            );
        }
    }
    if let (Some(items), Some(a)) = (schema.get("items"), v.as_array()) {
        for (i, x) in a.iter().enumerate() {
            conforms(doc, items, x, &format!("{at}[{i}]"), errors);
        }
    }
}
