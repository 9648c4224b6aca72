//! Health endpoints that cloud and on-premises load balancers probe to find the node
//! that serves a tandem module. GET and HEAD:
//!
//! - `/primary/{module}`: 200 only while this node serves the module with
//!   quorum and its application started; 503 otherwise;
//! - `/secondary/{module}`: 200 while this node is an up-to-date SECOND;
//! - `/var/modules/{module}/ready.txt`: the vendor's path, 200 when serving, 404
//!   otherwise, so existing load-balancer settings keep working;
//! - `/health`: 200 and every module's state while the daemon's main loop runs;
//! - `/liveness`: 200 while the main loop runs;
//! - `/readiness`: 200 while every module is served here or up to date here.
//!
//! "Runs" means the main loop called [`Health::beat`] within the liveness
//! window: a hung daemon stops answering 200 even though its socket still
//! accepts connections. The crate needs only tokio, so it can be embedded on
//! its own.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

/// Default port of the endpoints (`lb_port`).
pub const DEFAULT_PORT: u16 = 9453;
/// The path a load balancer probes to find the serving node.
pub const PRIMARY_PATH: &str = "/primary/{module}";
/// Connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 64;
/// A probe's whole exchange (TLS handshake included).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the endpoints say about one module on this node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModuleHealth {
    /// STOP, WAIT, SECOND, PRIM or ALONE.
    pub state: String,
    pub generation: u64,
    /// Serves with quorum and its application started.
    pub serving: bool,
    /// An up-to-date SECOND.
    pub uptodate: bool,
}

pub struct Health {
    node: String,
    liveness: Duration,
    inner: Mutex<Inner>,
}

struct Inner {
    beat: Instant,
    /// The main loop runs something with a deadline of its own (a script
    /// killed at its timeout) until then: not hung.
    busy_until: Option<Instant>,
    modules: BTreeMap<String, ModuleHealth>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Health {
    /// `liveness`: how long after the last [`beat`](Self::beat) the daemon
    /// still counts as running.
    pub fn new(node: &str, liveness: Duration) -> Arc<Self> {
        Arc::new(Health {
            node: node.into(),
            liveness,
            inner: Mutex::new(Inner {
                beat: Instant::now(),
                busy_until: None,
                modules: BTreeMap::new(),
            }),
        })
    }

    /// The main loop is alive.
    pub fn beat(&self) {
        let mut i = self.lock();
        i.beat = Instant::now();
        i.busy_until = None;
    }

    /// The main loop starts something that ends within `at_most` (a script
    /// with a timeout): it counts as alive until then.
    pub fn busy(&self, at_most: Duration) {
        self.lock().busy_until = Some(Instant::now() + at_most);
    }

    pub fn set(&self, module: &str, h: ModuleHealth) {
        self.lock().modules.insert(module.into(), h);
    }

    /// Flips `/primary/{module}` at once (before the application stops,
    /// after it started), without waiting for the next full update.
    pub fn set_serving(&self, module: &str, serving: bool) {
        if let Some(m) = self.lock().modules.get_mut(module) {
            m.serving = serving;
        }
    }

    pub fn serving(&self, module: &str) -> bool {
        self.lock().modules.get(module).is_some_and(|m| m.serving)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The answer to `method path` (the body is dropped for HEAD by the
    /// server). Pure, apart from reading the clock.
    pub fn answer(&self, method: &str, path: &str) -> Reply {
        if method != "GET" && method != "HEAD" {
            return reply(405, format!(r#"{{"error":"method {method} not allowed"}}"#));
        }
        let path = path.split(['?', '#']).next().unwrap_or("");
        let inner = self.lock();
        let alive = inner.beat.elapsed() < self.liveness
            || inner.busy_until.is_some_and(|t| Instant::now() < t);
        let module_json = |name: &str, m: &ModuleHealth| {
            format!(
                r#"{{"module":"{}","node":"{}","state":"{}","generation":"{:016x}","serving":{},"uptodate":{},"alive":{alive}}}"#,
                escape(name),
                escape(&self.node),
                escape(&m.state),
                m.generation,
                m.serving && alive,
                m.uptodate && alive,
            )
        };
        let alive_body = format!(r#"{{"node":"{}","alive":{alive}}}"#, escape(&self.node));
        let ok = |yes: bool| if yes { 200 } else { 503 };
        let segments: Vec<&str> = path.split('/').collect();
        match segments.as_slice() {
            ["", "health"] => {
                let list: Vec<String> = inner
                    .modules
                    .iter()
                    .map(|(n, m)| module_json(n, m))
                    .collect();
                reply(
                    ok(alive),
                    format!(
                        r#"{{"node":"{}","alive":{alive},"modules":[{}]}}"#,
                        escape(&self.node),
                        list.join(",")
                    ),
                )
            }
            ["", "liveness"] => reply(ok(alive), alive_body),
            ["", "readiness"] => {
                let ready = alive
                    && !inner.modules.is_empty()
                    && inner.modules.values().all(|m| m.serving || m.uptodate);
                reply(ok(ready), alive_body)
            }
            ["", role @ ("primary" | "secondary"), name] => match inner.modules.get(*name) {
                None => not_found(name),
                Some(m) => {
                    let yes = if *role == "primary" {
                        m.serving
                    } else {
                        m.uptodate
                    };
                    reply(ok(yes && alive), module_json(name, m))
                }
            },
            ["", "var", "modules", name, "ready.txt"] => match inner.modules.get(*name) {
                Some(m) if m.serving && alive => reply(200, "ready\n".into()),
                Some(_) => reply(404, "not ready\n".into()),
                None => not_found(name),
            },
            _ => reply(404, r#"{"error":"no such endpoint"}"#.into()),
        }
    }
}

fn reply(status: u16, body: String) -> Reply {
    Reply { status, body }
}

fn not_found(module: &str) -> Reply {
    reply(
        404,
        format!(r#"{{"error":"no module named {}"}}"#, escape(module)),
    )
}

/// JSON string escaping of what a request may carry.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Accepts probes until the task is dropped. With `tls`, each connection is
/// wrapped by it first (a TLS acceptor, say).
pub async fn serve<S, F, Fut>(listener: TcpListener, health: Arc<Health>, wrap: F)
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = std::io::Result<S>> + Send + 'static,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let wrap = Arc::new(wrap);
    // Probes are few and short: a flood of connections is turned away rather
    // than allowed to take the daemon's descriptors.
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(tcp);
            continue;
        };
        let (h, wrap) = (health.clone(), wrap.clone());
        tokio::spawn(async move {
            let _ = tokio::time::timeout(PROBE_TIMEOUT, async move {
                tcp.set_nodelay(true).ok();
                let stream = wrap(tcp).await?;
                connection(stream, &h).await
            })
            .await;
            drop(slot);
        });
    }
}

/// Plain HTTP: no wrapping.
pub async fn plain(tcp: tokio::net::TcpStream) -> std::io::Result<tokio::net::TcpStream> {
    Ok(tcp)
}

/// One request per connection (load balancers open one per probe).
async fn connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    health: &Health,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > 8192 {
            return respond(&mut s, false, &reply(431, String::new())).await;
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, path, version) = (parts.next(), parts.next(), parts.next());
    let Some((method, path)) = method
        .zip(path)
        .filter(|_| version.is_some_and(|v| v.starts_with("HTTP/1.")))
    else {
        return respond(
            &mut s,
            false,
            &reply(400, r#"{"error":"bad request"}"#.into()),
        )
        .await;
    };
    let r = health.answer(method, path);
    respond(&mut s, method == "HEAD", &r).await
}

async fn respond<S: AsyncWrite + Unpin>(s: &mut S, head: bool, r: &Reply) -> std::io::Result<()> {
    let reason = match r.status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let kind = if r.body.starts_with('{') {
        "application/json"
    } else {
        "text/plain"
    };
    let mut out = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        r.status,
        r.body.len()
    );
    if !head {
        out.push_str(&r.body);
    }
    s.write_all(out.as_bytes()).await?;
    s.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health() -> Arc<Health> {
        let h = Health::new("node1", Duration::from_millis(200));
        h.set(
            "app",
            ModuleHealth {
                state: "PRIM".into(),
                generation: 0xabc,
                serving: true,
                uptodate: false,
            },
        );
        h.set(
            "db",
            ModuleHealth {
                state: "SECOND".into(),
                generation: 1,
                serving: false,
                uptodate: true,
            },
        );
        h
    }

    #[test]
    fn primary_secondary_and_the_vendor_path_follow_the_module_state() {
        let h = health();
        assert_eq!(h.answer("GET", "/primary/app").status, 200);
        assert_eq!(h.answer("HEAD", "/primary/app").status, 200);
        assert_eq!(h.answer("GET", "/primary/db").status, 503);
        assert_eq!(h.answer("GET", "/secondary/db").status, 200);
        assert_eq!(h.answer("GET", "/secondary/app").status, 503);
        assert_eq!(h.answer("GET", "/var/modules/app/ready.txt").status, 200);
        assert_eq!(h.answer("GET", "/var/modules/db/ready.txt").status, 404);
        assert_eq!(h.answer("GET", "/primary/nope").status, 404);
        assert_eq!(h.answer("GET", "/primary/app?x=1").status, 200);
        let body = h.answer("GET", "/primary/app").body;
        assert!(body.contains(r#""state":"PRIM""#), "{body}");
        assert!(body.contains(r#""node":"node1""#), "{body}");
        assert!(
            body.contains(r#""generation":"0000000000000abc""#),
            "{body}"
        );
        assert_eq!(h.answer("POST", "/primary/app").status, 405);
        assert_eq!(h.answer("GET", "/elsewhere").status, 404);
        assert_eq!(h.answer("GET", "/readiness").status, 200);
        // Demotion flips the endpoint at once.
        h.set_serving("app", false);
        assert_eq!(h.answer("GET", "/primary/app").status, 503);
        assert_eq!(h.answer("GET", "/readiness").status, 503);
        assert_eq!(h.answer("GET", "/var/modules/app/ready.txt").status, 404);
    }

    #[test]
    fn a_main_loop_that_stops_beating_stops_every_200() {
        let h = health();
        h.beat();
        assert_eq!(h.answer("GET", "/health").status, 200);
        assert_eq!(h.answer("GET", "/liveness").status, 200);
        std::thread::sleep(Duration::from_millis(250));
        for p in [
            "/health",
            "/liveness",
            "/readiness",
            "/primary/app",
            "/secondary/db",
        ] {
            assert_eq!(h.answer("GET", p).status, 503, "{p}");
        }
        assert_eq!(h.answer("GET", "/var/modules/app/ready.txt").status, 404);
        h.beat();
        assert_eq!(h.answer("GET", "/primary/app").status, 200);
        // A script with a timeout runs: alive until that timeout, not after.
        h.busy(Duration::from_millis(400));
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(h.answer("GET", "/liveness").status, 200);
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(h.answer("GET", "/liveness").status, 503);
    }

    #[test]
    fn what_a_request_carries_is_escaped_in_the_json() {
        let h = health();
        let r = h.answer("GET", "/primary/a\"b");
        assert_eq!(r.status, 404);
        assert!(r.body.contains(r#"a\"b"#), "{}", r.body);
    }

    #[tokio::test]
    async fn the_server_answers_get_and_head_and_refuses_garbage() {
        let h = health();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(serve(l, h.clone(), plain));
        let ask = |req: &'static [u8]| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(req).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let get = ask(b"GET /primary/app HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(get.starts_with("HTTP/1.1 200 OK\r\n"), "{get}");
        assert!(get.ends_with(r#""alive":true}"#), "{get}");
        let head = ask(b"HEAD /primary/db HTTP/1.0\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
        assert!(head.ends_with("\r\n\r\n"), "HEAD has no body: {head}");
        let bad = ask(b"garbage\r\n\r\n").await;
        assert!(bad.starts_with("HTTP/1.1 400 "), "{bad}");
        let mut huge = b"GET /".to_vec();
        huge.extend(std::iter::repeat_n(b'a', 9000));
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(&huge).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 431 "), "{out}");
    }
}
