//! Health endpoints that cloud and on-premises load balancers probe to find the node
//! that serves a tandem module. GET and HEAD:
//!
//! - `/primary/{module}`: 200 only while this node serves the module with
//!   quorum and its application started; 503 otherwise;
//! - `/secondary/{module}`: 200 while this node is an up-to-date SECOND;
//!   with `?lag=BYTES`, also while it lacks no more than that many bytes;
//! - `/var/modules/{module}/ready.txt`: the vendor's path, 200 when serving, 404
//!   otherwise, so existing load-balancer settings keep working;
//! - `/health`: 200 and every module's state while the daemon's main loop runs;
//! - `/liveness`: 200 while the main loop runs;
//! - `/readiness`: 200 while every module is served here or up to date here.
//!
//! OPTIONS is answered 204 with the methods allowed (some probes use it).
//!
//! "Runs" means the main loop called [`Health::beat`] within the liveness
//! window: a hung daemon stops answering 200 even though its socket still
//! accepts connections. HTTP is hyper's; the crate needs only tokio and
//! hyper, so it can be embedded on its own.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

/// Default port of the endpoints (`lb_port`).
pub const DEFAULT_PORT: u16 = 9453;
/// The path a load balancer probes to find the serving node.
pub const PRIMARY_PATH: &str = "/primary/{module}";
/// Connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 256;
/// Connections served at once from one address: a client holding idle
/// connections, or sending huge requests, cannot take the others' places.
/// Load balancers probe with one connection at a time per prober.
const PER_ADDRESS: usize = 8;
/// From accepting a connection to holding its request's head (a TLS
/// handshake included): probes send theirs at once, idle connections are
/// cut off.
const REQUEST_LINE_TIMEOUT: Duration = Duration::from_secs(1);
/// A probe's whole exchange.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections the kernel completes before the endpoint accepts them. A
/// flood that is accepted and turned away still passes through this queue:
/// with the usual 128 it fills, the kernel drops the next SYN, and a probe
/// waits a whole SYN retransmission (1 s, a cloud probe's whole timeout).
/// The kernel caps it at `net.core.somaxconn`.
pub const BACKLOG: i32 = 4096;

/// A listener for the endpoints on `addr`, with [`BACKLOG`].
pub fn listener(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let s = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    s.set_reuseaddr(true)?;
    s.bind(addr)?;
    s.listen(BACKLOG as u32)
}

/// Largest request head read: probes send a few hundred bytes.
const MAX_HEAD: usize = 16 << 10;
/// The methods the endpoints answer.
const ALLOW: &str = "GET, HEAD, OPTIONS";

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
    /// As SECOND: the bytes it lacks, as the serving peer last said.
    pub lag: Option<u64>,
}

pub struct Health {
    node: String,
    liveness: Duration,
    inner: Mutex<Inner>,
}

struct Inner {
    beat: Instant,
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
                modules: BTreeMap::new(),
            }),
        })
    }

    /// The main loop is alive.
    pub fn beat(&self) {
        self.lock().beat = Instant::now();
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
        if method == "OPTIONS" {
            return reply(204, String::new());
        }
        if method != "GET" && method != "HEAD" {
            return reply(405, format!(r#"{{"error":"method {method} not allowed"}}"#));
        }
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        let path = path.split('#').next().unwrap_or("");
        // `?lag=BYTES`: a SECOND further behind than that is not healthy.
        let lag = match query.split('&').find_map(|kv| kv.strip_prefix("lag=")) {
            None => None,
            Some(v) => match v.parse::<u64>() {
                Ok(n) => Some(n),
                Err(_) => {
                    return reply(
                        400,
                        format!(
                            r#"{{"error":"lag={} is not a number of bytes"}}"#,
                            escape(v)
                        ),
                    );
                }
            },
        };
        let inner = self.lock();
        let alive = inner.beat.elapsed() < self.liveness;
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
                    let yes = match (*role, lag) {
                        ("primary", _) => m.serving,
                        (_, None) => m.uptodate,
                        (_, Some(max)) => m.uptodate || m.lag.is_some_and(|l| l <= max),
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

/// Answers probes on `listener` until `stop` resolves, then lets the probes
/// under way finish (each within `PROBE_TIMEOUT`). Each connection is
/// wrapped by `wrap` first (a TLS acceptor, say, or [`plain`]).
pub async fn serve<S, F, Fut>(
    listener: TcpListener,
    health: Arc<Health>,
    wrap: F,
    stop: impl std::future::Future<Output = ()>,
) where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = std::io::Result<S>> + Send + 'static,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let wrap = Arc::new(wrap);
    // Probes are few and short: a flood of connections is turned away rather
    // than allowed to take the daemon's descriptors or the probers' places.
    let slots = Arc::new(Slots::default());
    let mut probes = tokio::task::JoinSet::new();
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = &mut stop => break,
            Some(_) = probes.join_next(), if !probes.is_empty() => continue,
        };
        let Ok((tcp, from)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Some(slot) = slots.take(from.ip()) else {
            drop(tcp);
            continue;
        };
        let (h, wrap) = (health.clone(), wrap.clone());
        probes.spawn(async move {
            let _ = tokio::time::timeout(PROBE_TIMEOUT, async move {
                tcp.set_nodelay(true).ok();
                // The handshake (with TLS) and the request line share one deadline.
                let deadline = tokio::time::Instant::now() + REQUEST_LINE_TIMEOUT;
                let Ok(Ok(stream)) = tokio::time::timeout_at(deadline, wrap(tcp)).await else {
                    return;
                };
                handle(stream, &h, deadline).await
            })
            .await;
            drop(slot);
        });
    }
    drop(listener);
    while probes.join_next().await.is_some() {}
}

/// Connections held, in all and per client address: a server that takes
/// a connection only with a slot cannot be filled by one client.
pub struct Slots {
    limits: (usize, usize),
    held: Mutex<(usize, std::collections::HashMap<std::net::IpAddr, usize>)>,
}

impl Default for Slots {
    fn default() -> Self {
        Slots::new(MAX_CONNECTIONS, PER_ADDRESS)
    }
}

/// A connection's place, given back when dropped.
pub struct Slot {
    slots: Arc<Slots>,
    ip: std::net::IpAddr,
}

impl Slots {
    /// At most `all` connections, and `per_address` from one address.
    pub fn new(all: usize, per_address: usize) -> Slots {
        Slots {
            limits: (all, per_address),
            held: Mutex::new(Default::default()),
        }
    }

    /// A place for a connection from `ip`, or none when full.
    pub fn take(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<Slot> {
        // An IPv4 client of a dual-stack socket is the same client.
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
            v4 => v4,
        };
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let mine = held.1.get(&ip).copied().unwrap_or(0);
        if held.0 >= self.limits.0 || mine >= self.limits.1 {
            return None;
        }
        held.0 += 1;
        held.1.insert(ip, mine + 1);
        Some(Slot {
            slots: self.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.slots.held.lock().unwrap_or_else(|e| e.into_inner());
        held.0 -= 1;
        if let Some(n) = held.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                held.1.remove(&self.ip);
            }
        }
    }
}

/// Plain HTTP: no wrapping.
pub async fn plain(tcp: tokio::net::TcpStream) -> std::io::Result<tokio::net::TcpStream> {
    Ok(tcp)
}

/// Answers the one request a probe's connection carries (HTTP/1.1 by
/// hyper): its head must have arrived by `deadline`, or the connection is
/// closed; a head larger than `MAX_HEAD` is refused.
pub async fn handle<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    stream: S,
    health: &Arc<Health>,
    deadline: tokio::time::Instant,
) {
    let h = health.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let r = respond(&h, req.method(), req.uri());
        async move { Ok::<_, std::convert::Infallible>(r) }
    });
    let wait = deadline.saturating_duration_since(tokio::time::Instant::now());
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(wait.max(Duration::from_millis(1)))
        .max_buf_size(MAX_HEAD)
        // One request per connection: load balancers open one per probe.
        .keep_alive(false)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    let _ = conn.await;
}

/// The HTTP answer to `method uri`.
fn respond(
    health: &Health,
    method: &hyper::Method,
    uri: &hyper::Uri,
) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let r = health.answer(method.as_str(), path);
    let kind = if r.body.starts_with('{') {
        "application/json"
    } else {
        "text/plain"
    };
    let mut b = hyper::Response::builder()
        .status(r.status)
        .header("content-type", kind)
        .header("cache-control", "no-store");
    if r.status == 204 || r.status == 405 {
        b = b.header("allow", ALLOW);
    }
    b.body(http_body_util::Full::new(bytes::Bytes::from(r.body)))
        .expect("a valid status and headers")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn health() -> Arc<Health> {
        health_within(Duration::from_millis(200))
    }

    /// [`health`] with a main loop that counts as running for `liveness`
    /// after each beat.
    fn health_within(liveness: Duration) -> Arc<Health> {
        let h = Health::new("node1", liveness);
        h.set(
            "app",
            ModuleHealth {
                state: "PRIM".into(),
                generation: 0xabc,
                serving: true,
                uptodate: false,
                lag: None,
            },
        );
        h.set(
            "db",
            ModuleHealth {
                state: "SECOND".into(),
                generation: 1,
                serving: false,
                uptodate: true,
                lag: Some(0),
            },
        );
        h
    }

    #[test]
    fn a_secondary_behind_is_healthy_only_under_the_lag_asked() {
        let h = health();
        let behind = |lag| ModuleHealth {
            state: "SECOND".into(),
            generation: 1,
            serving: false,
            uptodate: false,
            lag,
        };
        h.set("db", behind(Some(5000)));
        assert_eq!(h.answer("GET", "/secondary/db").status, 503);
        assert_eq!(h.answer("GET", "/secondary/db?lag=4999").status, 503);
        assert_eq!(h.answer("GET", "/secondary/db?lag=5000").status, 200);
        assert_eq!(
            h.answer("HEAD", "/secondary/db?x=1&lag=1048576").status,
            200
        );
        assert_eq!(h.answer("GET", "/secondary/db?lag=lots").status, 400);
        // A primary is never a healthy secondary, whatever the lag.
        assert_eq!(h.answer("GET", "/secondary/app?lag=99999999").status, 503);
        // Nothing heard from the peer: the lag is unknown.
        h.set("db", behind(None));
        assert_eq!(h.answer("GET", "/secondary/db?lag=99999999").status, 503);
        assert_eq!(h.answer("OPTIONS", "/secondary/db").status, 204);
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
    }

    #[test]
    fn what_a_request_carries_is_escaped_in_the_json() {
        let h = health();
        let r = h.answer("GET", "/primary/a\"b");
        assert_eq!(r.status, 404);
        assert!(r.body.contains(r#"a\"b"#), "{}", r.body);
    }

    #[tokio::test]
    async fn a_stopped_server_answers_the_probes_under_way_and_takes_no_more() {
        let h = health_within(Duration::from_secs(10));
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(l, h.clone(), plain, async move {
            let _ = stop_rx.await;
        }));
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /primary/app HT").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        stop_tx.send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!server.is_finished(), "a probe under way is waited for");
        s.write_all(b"TP/1.1\r\n\r\n").await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        tokio::time::timeout(Duration::from_secs(2), server)
            .await
            .expect("the server ends with its last probe")
            .unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn the_server_answers_get_and_head_and_refuses_garbage() {
        let h = health();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(serve(l, h.clone(), plain, std::future::pending()));
        let ask = |req: &'static [u8]| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(req).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let get = ask(b"GET /primary/app HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(get.starts_with("HTTP/1.1 200 OK\r\n"), "{get}");
        let options = ask(b"OPTIONS /primary/app HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(options.starts_with("HTTP/1.1 204 "), "{options}");
        assert!(
            options.contains("allow: GET, HEAD, OPTIONS\r\n"),
            "{options}"
        );
        let post = ask(b"POST /primary/app HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").await;
        assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
        assert!(get.ends_with(r#""alive":true}"#), "{get}");
        let head = ask(b"HEAD /primary/db HTTP/1.0\r\n\r\n").await;
        assert!(
            head.starts_with("HTTP/1.") && head[8..].starts_with(" 503 "),
            "{head}"
        );
        assert!(head.ends_with("\r\n\r\n"), "HEAD has no body: {head}");
        let bad = ask(b"garbage\r\n\r\n").await;
        assert!(bad.starts_with("HTTP/1.1 400 "), "{bad}");
        let mut huge = b"GET /".to_vec();
        huge.extend(std::iter::repeat_n(b'a', 20000));
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(&huge).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(
            out.starts_with("HTTP/1.1 414 ") || out.starts_with("HTTP/1.1 431 "),
            "{out}"
        );
    }

    /// Random and mutated requests: every one gets one well-formed answer
    /// (or, closed early, none), never a panic.
    #[tokio::test]
    async fn mutated_requests_get_a_well_formed_answer() {
        let h = health();
        let base: &[&[u8]] = &[
            b"GET /primary/app HTTP/1.1\r\nHost: x\r\n\r\n",
            b"HEAD /var/modules/app/ready.txt HTTP/1.0\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\n\r\n",
        ];
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..3000 {
            let mut req = base[i % base.len()].to_vec();
            for _ in 0..1 + next() % 4 {
                let at = (next() as usize) % (req.len() + 1);
                match next() % 4 {
                    0 if at < req.len() => req[at] = next() as u8,
                    1 => req.insert(at, next() as u8),
                    2 => req.truncate(at),
                    _ => {
                        let long = std::iter::repeat_n(b'/', (next() % 9000) as usize);
                        req.splice(at..at, long);
                    }
                }
            }
            let (mut client, server) = tokio::io::duplex(1 << 20);
            client.write_all(&req).await.unwrap();
            client.shutdown().await.unwrap();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
            handle(server, &h, deadline).await;
            let mut out = Vec::new();
            client.read_to_end(&mut out).await.unwrap();
            let out = String::from_utf8_lossy(&out);
            if out.is_empty() {
                continue;
            }
            let status: u16 = out
                .strip_prefix("HTTP/1.")
                .and_then(|r| r.get(2..5))
                .and_then(|c| c.parse().ok())
                .unwrap_or_else(|| panic!("{:?} got {out:?}", String::from_utf8_lossy(&req)));
            assert!(
                [200, 204, 400, 404, 405, 414, 431, 501, 503, 505].contains(&status),
                "{out}"
            );
            let (head, body) = out.split_once("\r\n\r\n").expect("a header block");
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |n| n.parse().unwrap());
            let head_request = req.starts_with(b"HEAD ");
            assert!(
                body.len() == length || head_request && body.is_empty(),
                "{out}"
            );
        }
    }

    /// One address holds many idle connections and sends requests with
    /// 1 MiB of headers; a prober at another address must keep being
    /// answered within a second. The endpoint runs on a runtime of its own,
    /// as it does in its own process, and the prober on a thread of its own:
    /// what is measured is the endpoint's fairness, not how the attack's
    /// tasks crowd the prober's.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn probes_are_answered_while_a_client_holds_idle_connections_and_sends_huge_headers() {
        let h = health();
        let server = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        // Bound on its runtime, with the endpoint's listen backlog.
        let (bound, addr) = tokio::sync::oneshot::channel();
        let served = h.clone();
        server.spawn(async move {
            let l = listener("127.0.0.1:0".parse().unwrap()).unwrap();
            let _ = bound.send(l.local_addr().unwrap());
            serve(l, served, plain, std::future::pending()).await
        });
        let addr = addr.await.unwrap();
        let beating = h.clone();
        server.spawn(async move {
            loop {
                beating.beat();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let from = move |ip: &str| {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            async move {
                let s = tokio::net::TcpSocket::new_v4().unwrap();
                s.bind((ip, 0).into()).unwrap();
                s.connect(addr).await
            }
        };
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut attack = Vec::new();
        // 120 idle connections, reopened as they are cut off.
        for _ in 0..120 {
            let stop = stop.clone();
            attack.push(tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Ok(mut s) = from("127.0.0.66").await {
                        let mut b = [0u8; 64];
                        let _ = tokio::time::timeout(Duration::from_secs(3), s.read(&mut b)).await;
                    } else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }));
        }
        // 50 senders of requests with 1 MiB of headers, over and over.
        for _ in 0..50 {
            let stop = stop.clone();
            attack.push(tokio::spawn(async move {
                let mut head = b"GET /primary/app HTTP/1.1\r\nX-Big: ".to_vec();
                head.extend(std::iter::repeat_n(b'a', 1 << 20));
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Ok(mut s) = from("127.0.0.66").await {
                        let _ =
                            tokio::time::timeout(Duration::from_secs(3), s.write_all(&head)).await;
                    } else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let slow = tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut slow = Vec::new();
            for _ in 0..32 {
                let t0 = Instant::now();
                let probe = (|| {
                    let limit = Duration::from_secs(1);
                    let mut s = std::net::TcpStream::connect_timeout(&addr, limit)?;
                    s.set_read_timeout(Some(
                        limit
                            .saturating_sub(t0.elapsed())
                            .max(Duration::from_millis(1)),
                    ))?;
                    s.write_all(b"GET /primary/app HTTP/1.1\r\nHost: lb\r\n\r\n")?;
                    let mut out = String::new();
                    s.read_to_string(&mut out)?;
                    Ok::<_, std::io::Error>(out)
                })();
                match probe {
                    Ok(out)
                        if out.starts_with("HTTP/1.1 200 ")
                            && t0.elapsed() <= Duration::from_secs(1) => {}
                    other => slow.push(format!("{:?} after {:?}", other, t0.elapsed())),
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            slow
        })
        .await
        .unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for a in attack {
            a.abort();
        }
        server.shutdown_background();
        assert!(
            slow.is_empty(),
            "{} of 32 probes failed: {slow:?}",
            slow.len()
        );
    }
}
