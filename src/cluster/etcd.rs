//! `quorum = "etcd"`: the module leases of the witness, kept in an existing
//! etcd cluster through its v3 JSON API.
//!
//! Each node keeps one etcd lease alive (TTL: the heartbeat timeout plus two
//! intervals, at least etcd's two seconds). Holding a module means owning the
//! key `/tandem/CLUSTER/MODULE/holder`, attached to that lease, created only
//! when absent; so when a holder is cut off from etcd, its key lives on until
//! the TTL runs out, long after the holder stopped relying on it (two
//! intervals after its last successful renewal). The generation last served
//! with the lease is kept in `/tandem/CLUSTER/MODULE/newest`, written only by
//! the holder, and outlives every node.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use super::{Book, LeaseQuorum};
use crate::config::HttpUrl;

pub struct Client {
    endpoints: Vec<HttpUrl>,
    cluster: String,
    node: String,
    ttl_s: u64,
    validity: Duration,
    book: Book,
}

impl Client {
    /// `term`: how long a lease outlives its last renewal (rounded up to
    /// whole seconds, at least two); `validity`: how long after a successful
    /// renewal this node relies on it, well short of that.
    pub fn new(
        endpoints: Vec<HttpUrl>,
        cluster: &str,
        node: &str,
        term: Duration,
        validity: Duration,
        interval: Duration,
    ) -> Result<Arc<Self>, String> {
        if let Some(u) = endpoints.iter().find(|u| u.https) {
            return Err(format!(
                "cluster.etcd: {u}: https endpoints are not supported in this version \
                 (give etcd a plain http client URL on a trusted network)"
            ));
        }
        Ok(Arc::new(Client {
            endpoints,
            cluster: cluster.into(),
            node: node.into(),
            ttl_s: term.as_millis().div_ceil(1000).max(2) as u64,
            validity,
            book: Book::new(interval),
        }))
    }

    /// Renews the lease and the wanted keys every interval, on its own
    /// thread, until `stop`; then relies on no lease.
    pub fn spawn(self: Arc<Self>, stop: &crate::stop::Stop) -> std::io::Result<()> {
        let stop2 = stop.clone();
        stop.thread("etcd-quorum", move || {
            let mut api = Api {
                endpoints: self.endpoints.clone(),
                current: 0,
                // A slow answer is still safe (what is relied on counts
                // from before the request); a lost one is not waited for
                // past the time it could still help.
                timeout: self.validity.max(Duration::from_millis(200)),
            };
            let mut lease = None;
            let mut failing = false;
            while !stop2.is_stopped() {
                let t0 = Instant::now();
                match self.round(&mut api, &mut lease, t0) {
                    Ok(()) => {
                        *self.book.last_answer.lock() = Some(t0);
                        if failing {
                            tracing::info!("etcd answers again");
                            failing = false;
                        }
                    }
                    Err(e) => {
                        if !failing {
                            tracing::warn!("etcd: {e}");
                            failing = true;
                        }
                    }
                }
                stop2.sleep(self.book.interval.saturating_sub(t0.elapsed()));
            }
            // No more renewals: nothing is relied on any longer, and the
            // leases run out in etcd.
            for h in self.book.state.lock().values_mut() {
                h.until = None;
            }
        })
    }

    fn key(&self, module: &str, what: &str) -> String {
        format!("/tandem/{}/{module}/{what}", self.cluster)
    }

    /// One renewal: the node's lease, then every module's key. `t0` is taken
    /// before the renewal is sent, so what is relied on never outlasts it.
    fn round(&self, api: &mut Api, lease: &mut Option<i64>, t0: Instant) -> Result<(), String> {
        let alive = match *lease {
            Some(id) => api.keepalive(id)?,
            None => false,
        };
        if !alive {
            *lease = Some(api.grant(self.ttl_s)?);
        }
        let id = lease.expect("granted above");
        let wanted: Vec<(String, bool, u64, bool)> = self
            .book
            .state
            .lock()
            .iter()
            .map(|(m, h)| (m.clone(), h.want, h.generation, h.serving))
            .collect();
        for (module, want, generation, serving) in wanted {
            let (holder, newest) = if want {
                self.take(api, &module, id)?
            } else {
                self.give_back(api, &module)?
            };
            let mine = holder.as_deref() == Some(self.node.as_str());
            let newest = if mine
                && serving
                && generation != newest
                && self.set_newest(api, &module, generation)?
            {
                generation
            } else {
                newest
            };
            let mut s = self.book.state.lock();
            let h = s.entry(module).or_default();
            h.holder = holder;
            h.newest = newest;
            // Asked to give it back meanwhile: not relied on.
            h.until = (mine && h.want).then_some(t0 + self.validity);
        }
        Ok(())
    }

    /// Creates the holder key if absent, or takes back one this node left
    /// under an older lease (a restart); returns the holder and the newest.
    /// A key already held under this lease costs a read, not a write.
    fn take(
        &self,
        api: &mut Api,
        module: &str,
        lease: i64,
    ) -> Result<(Option<String>, u64), String> {
        let (holder, newest) = (self.key(module, "holder"), self.key(module, "newest"));
        let read = json!([{"request_range": {"key": b64(&holder)}}, {"request_range": {"key": b64(&newest)}}]);
        let r = api.txn(json!([]), read.clone(), json!([]))?;
        let kvs = ranges(&r);
        let newest_g = generation(kvs.get(1));
        let (owner, owner_lease) = match kvs.first() {
            Some(Some((v, l))) => (Some(v.clone()), *l),
            _ => (None, 0),
        };
        let mine = owner.as_deref() == Some(self.node.as_str());
        if mine && owner_lease == lease || owner.is_some() && !mine {
            return Ok((owner, newest_g));
        }
        let put = json!({"request_put": {"key": b64(&holder), "value": b64(&self.node), "lease": lease.to_string()}});
        // Absent: created only if still absent. Ours under an older lease:
        // moved to this one only if still ours.
        let compare = if owner.is_none() {
            json!([{"key": b64(&holder), "result": "EQUAL", "target": "CREATE", "create_revision": "0"}])
        } else {
            json!([{"key": b64(&holder), "result": "EQUAL", "target": "VALUE", "value": b64(&self.node)}])
        };
        let r = api.txn(compare, json!([put]), read)?;
        if succeeded(&r) {
            return Ok((Some(self.node.clone()), newest_g));
        }
        let kvs = ranges(&r);
        Ok((
            kvs.first().cloned().flatten().map(|(v, _)| v),
            generation(kvs.get(1)),
        ))
    }

    fn give_back(&self, api: &mut Api, module: &str) -> Result<(Option<String>, u64), String> {
        let (holder, newest) = (self.key(module, "holder"), self.key(module, "newest"));
        let r = api.txn(
            json!([{"key": b64(&holder), "result": "EQUAL", "target": "VALUE", "value": b64(&self.node)}]),
            json!([{"request_delete_range": {"key": b64(&holder)}}, {"request_range": {"key": b64(&newest)}}]),
            json!([{"request_range": {"key": b64(&holder)}}, {"request_range": {"key": b64(&newest)}}]),
        )?;
        let kvs = ranges(&r);
        if succeeded(&r) {
            return Ok((None, generation(kvs.first())));
        }
        Ok((
            kvs.first().cloned().flatten().map(|(v, _)| v),
            generation(kvs.get(1)),
        ))
    }

    /// Only while this node's key holds the module.
    fn set_newest(&self, api: &mut Api, module: &str, g: u64) -> Result<bool, String> {
        let (holder, newest) = (self.key(module, "holder"), self.key(module, "newest"));
        let r = api.txn(
            json!([{"key": b64(&holder), "result": "EQUAL", "target": "VALUE", "value": b64(&self.node)}]),
            json!([{"request_put": {"key": b64(&newest), "value": b64(&g.to_string())}}]),
            json!([]),
        )?;
        Ok(succeeded(&r))
    }
}

impl LeaseQuorum for Client {
    fn book(&self) -> &Book {
        &self.book
    }

    fn kind(&self) -> &'static str {
        "etcd"
    }
}

fn b64(s: &str) -> String {
    B64.encode(s)
}

fn succeeded(r: &Value) -> bool {
    r["succeeded"].as_bool().unwrap_or(false)
}

/// Each `response_range` of a transaction, in order: the first key's value
/// and lease, or `None` when the key is absent.
fn ranges(r: &Value) -> Vec<Option<(String, i64)>> {
    r["responses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.get("response_range"))
        .map(|rr| {
            let kv = rr["kvs"].as_array()?.first()?;
            let v = B64.decode(kv["value"].as_str().unwrap_or("")).ok()?;
            let lease = number(&kv["lease"]).unwrap_or(0);
            Some((String::from_utf8_lossy(&v).into_owned(), lease))
        })
        .collect()
}

fn generation(kv: Option<&Option<(String, i64)>>) -> u64 {
    kv.cloned()
        .flatten()
        .and_then(|(v, _)| v.parse().ok())
        .unwrap_or(0)
}

/// etcd's JSON gives 64-bit numbers as strings.
fn number(v: &Value) -> Option<i64> {
    v.as_str().and_then(|s| s.parse().ok()).or(v.as_i64())
}

/// The v3 JSON gateway over plain HTTP/1.1, one connection per call, trying
/// the endpoints in turn.
struct Api {
    endpoints: Vec<HttpUrl>,
    current: usize,
    timeout: Duration,
}

impl Api {
    fn grant(&mut self, ttl_s: u64) -> Result<i64, String> {
        let r = self.call("/v3/lease/grant", &json!({"TTL": ttl_s.to_string()}))?;
        number(&r["ID"]).ok_or_else(|| format!("lease grant: no ID in {r}"))
    }

    /// Whether the lease is still alive (renewed).
    fn keepalive(&mut self, id: i64) -> Result<bool, String> {
        let r = self.call("/v3/lease/keepalive", &json!({"ID": id.to_string()}))?;
        Ok(number(&r["result"]["TTL"]).unwrap_or(0) > 0)
    }

    fn txn(&mut self, compare: Value, success: Value, failure: Value) -> Result<Value, String> {
        self.call(
            "/v3/kv/txn",
            &json!({"compare": compare, "success": success, "failure": failure}),
        )
    }

    fn call(&mut self, path: &str, body: &Value) -> Result<Value, String> {
        let mut errors = Vec::new();
        for _ in 0..self.endpoints.len() {
            let ep = &self.endpoints[self.current];
            match post(ep, path, body, self.timeout) {
                Ok(v) => return Ok(v),
                Err(e) => {
                    errors.push(format!("{ep}: {e}"));
                    self.current = (self.current + 1) % self.endpoints.len();
                }
            }
        }
        Err(errors.join("; "))
    }
}

fn post(ep: &HttpUrl, path: &str, body: &Value, timeout: Duration) -> Result<Value, String> {
    let host = ep.host.to_string();
    let addr = (host.trim_start_matches('[').trim_end_matches(']'), ep.port)
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("the name resolves to no address")?;
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let body = body.to_string();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}:{}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        ep.port,
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.take(1 << 20)
        .read_to_end(&mut raw)
        .map_err(|e| e.to_string())?;
    let (status, body) = parse_response(&raw)?;
    let v: Option<Value> = serde_json::Deserializer::from_slice(&body)
        .into_iter()
        .next()
        .and_then(Result::ok);
    if status != 200 {
        let why = v
            .as_ref()
            .and_then(|v| {
                v["error"]
                    .as_str()
                    .or(v["message"].as_str())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned());
        return Err(format!("{path}: HTTP {status}: {why}"));
    }
    let v = v.ok_or_else(|| format!("{path}: the answer is not JSON"))?;
    if let Some(e) = v.get("error") {
        return Err(format!("{path}: {e}"));
    }
    Ok(v)
}

/// Status and body of an HTTP/1.1 answer, chunked or not.
fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("an incomplete HTTP answer")?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("a malformed status line")?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let mut body = &raw[end + 4..];
    if !chunked {
        return Ok((status, body.to_vec()));
    }
    let mut out = Vec::new();
    loop {
        let eol = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("a truncated chunk")?;
        let size = std::str::from_utf8(&body[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
            .ok_or("a malformed chunk size")?;
        body = &body[eol + 2..];
        if size == 0 || body.len() < size {
            // A stream cut short still carries its complete first message.
            out.extend_from_slice(&body[..size.min(body.len())]);
            return Ok((status, out));
        }
        out.extend_from_slice(&body[..size]);
        body = body.get(size + 2..).unwrap_or(&[]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_whole_or_chunked() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n{\"a\":1}";
        assert_eq!(parse_response(plain).unwrap(), (200, b"{\"a\":1}".to_vec()));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                        4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(chunked).unwrap(),
            (200, b"{\"a\":1}".to_vec())
        );
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse_response(b"garbage\r\n\r\n").is_err());
    }

    #[test]
    fn transaction_ranges_give_values_and_leases_in_order() {
        let r = json!({"responses": [
            {"response_range": {"kvs": [{"key": "x", "value": b64("node2"), "lease": "77"}]}},
            {"response_range": {}},
            {"response_put": {}},
        ]});
        assert_eq!(ranges(&r), vec![Some(("node2".into(), 77)), None]);
        assert_eq!(generation(ranges(&r).get(1)), 0);
        let r = json!({"responses": [{"response_range": {"kvs": [{"value": b64("42")}]}}]});
        assert_eq!(generation(ranges(&r).first()), 42);
        assert!(!succeeded(&json!({})), "etcd leaves out a false");
    }

    #[test]
    fn https_endpoints_are_refused_at_start() {
        let e = Client::new(
            vec!["https://127.0.0.1:2379".parse().unwrap()],
            "c",
            "node1",
            Duration::from_secs(3),
            Duration::from_millis(400),
            Duration::from_millis(200),
        )
        .err()
        .unwrap();
        assert!(e.contains("https://127.0.0.1:2379"), "{e}");
    }
}
