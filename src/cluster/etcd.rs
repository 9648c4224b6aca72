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

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use super::{Book, LeaseQuorum};
use crate::config::HttpUrl;
use crate::stop::Stop;

/// Why etcd could not be used: this node's settings, or no endpoint that
/// gave a usable answer.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// The settings name something that cannot be used (CA, certificate,
    /// password file).
    #[error("{0}")]
    Config(String),
    /// Every endpoint failed, each for its own reason.
    #[error("{}", join(.0))]
    Unanswered(Vec<(HttpUrl, EndpointError)>),
    /// An answer without what a request always gets.
    #[error("{what}: no {field} in {answer}")]
    Malformed {
        what: &'static str,
        field: &'static str,
        answer: String,
    },
}

/// Why one endpoint gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// No answer: not reachable, or not in time.
    #[error("{0}")]
    Unreachable(String),
    /// The token was refused: taken again at once.
    #[error("{path}: {why}")]
    TokenRefused { path: &'static str, why: String },
    /// etcd did not authenticate this node's user.
    #[error("as user {user}: {why}")]
    Login {
        user: String,
        why: Box<EndpointError>,
    },
    #[error("no token in the answer")]
    NoToken,
    #[error("{path}: HTTP {status}: {why}")]
    Status {
        path: &'static str,
        status: u16,
        why: String,
    },
    #[error("{path}: the answer is not JSON")]
    NotJson { path: &'static str },
    /// etcd answered with an error.
    #[error("{path}: {error}")]
    Refused { path: &'static str, error: String },
}

fn join(errors: &[(HttpUrl, EndpointError)]) -> String {
    let each: Vec<String> = errors.iter().map(|(ep, e)| format!("{ep}: {e}")).collect();
    each.join("; ")
}

pub struct Client {
    endpoints: Vec<HttpUrl>,
    http: reqwest::Client,
    /// etcd's user and password.
    auth: Option<(String, String)>,
    cluster: String,
    node: String,
    ttl_s: u64,
    validity: Duration,
    book: Book,
}

impl Client {
    /// `term`: how long a lease outlives its last renewal (rounded up to
    /// whole seconds, at least two); `validity`: how long after a successful
    /// renewal this node relies on it, well short of that. The CA, client
    /// certificate and password files are read here: errors name them.
    pub fn new(
        etcd: &crate::config::Etcd,
        cluster: &str,
        node: &str,
        term: Duration,
        validity: Duration,
        interval: Duration,
    ) -> Result<Arc<Self>, EtcdError> {
        let http = crate::webclient::client(etcd.ca.as_deref(), etcd.cert.as_ref())
            .map_err(|e| EtcdError::Config(format!("cluster.etcd: {e}")))?;
        let auth = match &etcd.user {
            None => None,
            Some((user, file)) => {
                let password = std::fs::read_to_string(file).map_err(|e| {
                    EtcdError::Config(format!(
                        "cluster.etcd_password_file {}: {e}",
                        file.display()
                    ))
                })?;
                Some((
                    user.clone(),
                    password.trim_end_matches(['\r', '\n']).to_string(),
                ))
            }
        };
        Ok(Arc::new(Client {
            endpoints: etcd.urls.clone(),
            http,
            auth,
            cluster: cluster.into(),
            node: node.into(),
            ttl_s: term.as_millis().div_ceil(1000).max(2) as u64,
            validity,
            book: Book::new(interval),
        }))
    }

    /// Renews the lease and the wanted keys every interval, as a task on
    /// `rt`, until `stop`; then relies on no lease.
    pub fn spawn(self: Arc<Self>, stop: &Stop, rt: &tokio::runtime::Handle) {
        let stop2 = stop.clone();
        stop.watched_task(rt, "etcd-quorum", async move {
            let mut api = Api {
                http: self.http.clone(),
                endpoints: self.endpoints.clone(),
                current: 0,
                // A slow answer is still safe (what is relied on counts
                // from before the request); a lost one is not waited for
                // past the time it could still help.
                timeout: self.validity.max(Duration::from_millis(200)),
                auth: self.auth.clone(),
                token: None,
            };
            let mut lease = None;
            let mut failing = false;
            while !stop2.is_stopped() {
                let t0 = Instant::now();
                match self.round(&mut api, &mut lease, t0).await {
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
                tokio::select! {
                    () = tokio::time::sleep(self.book.interval.saturating_sub(t0.elapsed())) => {}
                    () = stop2.stopped() => {}
                }
            }
            // No more renewals: nothing is relied on any longer, and the
            // leases run out in etcd.
            for h in self.book.state.lock().values_mut() {
                h.until = None;
            }
        });
    }

    fn key(&self, module: &str, what: &str) -> String {
        format!("/tandem/{}/{module}/{what}", self.cluster)
    }

    /// One renewal: the node's lease, then every module's key. `t0` is taken
    /// before the renewal is sent, so what is relied on never outlasts it.
    async fn round(
        &self,
        api: &mut Api,
        lease: &mut Option<i64>,
        t0: Instant,
    ) -> Result<(), EtcdError> {
        let alive = match *lease {
            Some(id) => api.keepalive(id).await?,
            None => false,
        };
        if !alive {
            *lease = Some(api.grant(self.ttl_s).await?);
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
                self.take(api, &module, id).await?
            } else {
                self.give_back(api, &module).await?
            };
            let mine = holder.as_deref() == Some(self.node.as_str());
            let newest = if mine
                && serving
                && generation != newest
                && self.set_newest(api, &module, generation).await?
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
    async fn take(
        &self,
        api: &mut Api,
        module: &str,
        lease: i64,
    ) -> Result<(Option<String>, u64), EtcdError> {
        let (holder, newest) = (self.key(module, "holder"), self.key(module, "newest"));
        let read = json!([{"request_range": {"key": b64(&holder)}}, {"request_range": {"key": b64(&newest)}}]);
        let r = api.txn(json!([]), read.clone(), json!([])).await?;
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
        let r = api.txn(compare, json!([put]), read).await?;
        if succeeded(&r) {
            return Ok((Some(self.node.clone()), newest_g));
        }
        let kvs = ranges(&r);
        Ok((
            kvs.first().cloned().flatten().map(|(v, _)| v),
            generation(kvs.get(1)),
        ))
    }

    async fn give_back(
        &self,
        api: &mut Api,
        module: &str,
    ) -> Result<(Option<String>, u64), EtcdError> {
        let (holder, newest) = (self.key(module, "holder"), self.key(module, "newest"));
        let r = api.txn(
            json!([{"key": b64(&holder), "result": "EQUAL", "target": "VALUE", "value": b64(&self.node)}]),
            json!([{"request_delete_range": {"key": b64(&holder)}}, {"request_range": {"key": b64(&newest)}}]),
            json!([{"request_range": {"key": b64(&holder)}}, {"request_range": {"key": b64(&newest)}}]),
        )
        .await?;
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
    async fn set_newest(&self, api: &mut Api, module: &str, g: u64) -> Result<bool, EtcdError> {
        let (holder, newest) = (self.key(module, "holder"), self.key(module, "newest"));
        let r = api.txn(
            json!([{"key": b64(&holder), "result": "EQUAL", "target": "VALUE", "value": b64(&self.node)}]),
            json!([{"request_put": {"key": b64(&newest), "value": b64(&g.to_string())}}]),
            json!([]),
        )
        .await?;
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

/// The v3 JSON gateway, trying the endpoints in turn; with etcd's
/// authentication, a token taken when needed and again when it expires.
struct Api {
    http: reqwest::Client,
    endpoints: Vec<HttpUrl>,
    current: usize,
    timeout: Duration,
    auth: Option<(String, String)>,
    token: Option<String>,
}

impl Api {
    async fn grant(&mut self, ttl_s: u64) -> Result<i64, EtcdError> {
        let r = self
            .call("/v3/lease/grant", &json!({"TTL": ttl_s.to_string()}))
            .await?;
        number(&r["ID"]).ok_or_else(|| EtcdError::Malformed {
            what: "lease grant",
            field: "ID",
            answer: r.to_string(),
        })
    }

    /// Whether the lease is still alive (renewed).
    async fn keepalive(&mut self, id: i64) -> Result<bool, EtcdError> {
        let r = self
            .call("/v3/lease/keepalive", &json!({"ID": id.to_string()}))
            .await?;
        Ok(number(&r["result"]["TTL"]).unwrap_or(0) > 0)
    }

    async fn txn(
        &mut self,
        compare: Value,
        success: Value,
        failure: Value,
    ) -> Result<Value, EtcdError> {
        self.call(
            "/v3/kv/txn",
            &json!({"compare": compare, "success": success, "failure": failure}),
        )
        .await
    }

    async fn call(&mut self, path: &'static str, body: &Value) -> Result<Value, EtcdError> {
        let mut errors = Vec::new();
        for _ in 0..self.endpoints.len() {
            let ep = self.endpoints[self.current].clone();
            let mut r = self.authorised(&ep, path, body).await;
            if let Err(EndpointError::TokenRefused { .. }) = r {
                self.token = None;
                r = self.authorised(&ep, path, body).await;
            }
            match r {
                Ok(v) => return Ok(v),
                Err(e) => {
                    errors.push((ep, e));
                    self.current = (self.current + 1) % self.endpoints.len();
                }
            }
        }
        Err(EtcdError::Unanswered(errors))
    }

    /// The call, with a token first if etcd wants one.
    async fn authorised(
        &mut self,
        ep: &HttpUrl,
        path: &'static str,
        body: &Value,
    ) -> Result<Value, EndpointError> {
        if let (Some((user, password)), None) = (&self.auth, &self.token) {
            let r = post(
                &self.http,
                ep,
                "/v3/auth/authenticate",
                &json!({"name": user, "password": password}),
                None,
                self.timeout,
            )
            .await;
            let login = |why| EndpointError::Login {
                user: user.clone(),
                why: Box::new(why),
            };
            let r = r.map_err(login)?;
            let token = r["token"]
                .as_str()
                .ok_or_else(|| login(EndpointError::NoToken))?;
            self.token = Some(token.to_string());
        }
        post(
            &self.http,
            ep,
            path,
            body,
            self.token.as_deref(),
            self.timeout,
        )
        .await
    }
}

async fn post(
    http: &reqwest::Client,
    ep: &HttpUrl,
    path: &'static str,
    body: &Value,
    token: Option<&str>,
    timeout: Duration,
) -> Result<Value, EndpointError> {
    let mut req = http
        .post(format!("{}{path}", ep.origin()))
        .timeout(timeout)
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(t) = token {
        req = req.header("authorization", t);
    }
    let other = |e: reqwest::Error| EndpointError::Unreachable(crate::webclient::describe(&e));
    let answer = req.send().await.map_err(other)?;
    let status = answer.status().as_u16();
    let bytes = answer.bytes().await.map_err(other)?;
    let v: Option<Value> = serde_json::Deserializer::from_slice(&bytes)
        .into_iter()
        .next()
        .and_then(Result::ok);
    let error = v.as_ref().and_then(|v| {
        v["error"]
            .as_str()
            .or(v["message"].as_str())
            .map(str::to_string)
    });
    // etcd says so with gRPC's code 16 (unauthenticated), over HTTP 401.
    let unauthenticated = status == 401 || v.as_ref().is_some_and(|v| v["code"] == 16);
    if unauthenticated && token.is_some() {
        return Err(EndpointError::TokenRefused {
            path,
            why: error.unwrap_or_default(),
        });
    }
    if status != 200 {
        let why = error.unwrap_or_else(|| {
            String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned()
        });
        return Err(EndpointError::Status { path, status, why });
    }
    let v = v.ok_or(EndpointError::NotJson { path })?;
    if let Some(e) = v.get("error") {
        return Err(EndpointError::Refused {
            path,
            error: e.to_string(),
        });
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
