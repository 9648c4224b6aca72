//! The witness: a third party that grants, per module, one renewable lease at
//! a time. With `quorum = "witness"` a node that cannot see its peer serves
//! only while it holds the module's lease, so two nodes cut off from each
//! other never both serve. The serving node renews its lease all the time, so
//! after a cut it keeps it and the other cannot get it; an isolated primary
//! cannot renew and stops serving well before the witness would let the other
//! node have the lease.
//!
//! Requests and answers are UDP datagrams signed like heartbeats (HMAC-SHA256
//! under the cluster's heartbeat key), each answer tied to its request by a
//! nonce, so neither can be forged or replayed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;

use super::heartbeat::{Key, open_speaking, seal_with};
use super::{Book, LeaseQuorum};
use crate::versions::{Range, Speaks};

/// Why the witness, or a node's client of it, cannot run.
#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    #[error("witness: cannot bind {addr}: {why}")]
    Bind {
        addr: SocketAddr,
        why: std::io::Error,
    },
    /// The saved state cannot be read, or is not the witness's.
    #[error("witness state {}: {why}", path.display())]
    State { path: PathBuf, why: String },
    /// The state cannot be kept: answers that rely on it are not given.
    #[error("cannot save the state to {}: {why}", path.display())]
    Save { path: PathBuf, why: std::io::Error },
    /// The client's socket cannot be opened.
    #[error("witness client: {0}")]
    Socket(std::io::Error),
}

const ASK: [u8; 2] = *b"TQ";
const ANSWER: [u8; 2] = *b"TA";

/// The witness protocol's versions this release speaks. Each side sends
/// its range and release after the message, where a release before
/// ranges stops reading.
pub const PROTOCOL: Range = Range::new(1, 1);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ask {
    pub cluster: String,
    pub node: String,
    pub module: String,
    /// Take or keep the lease (`false`: give it back).
    pub want: bool,
    /// The asker's data generation, remembered as the newest while it holds
    /// the lease and serves.
    pub generation: u64,
    pub serving: bool,
    pub nonce: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub module: String,
    pub nonce: u64,
    pub granted: bool,
    pub holder: Option<String>,
    /// How long the lease lasts from the moment the witness received the ask.
    pub lease_ms: u64,
    /// The generation of the last node that served with the lease (0: none
    /// yet): a node that finds its own data older must not serve alone.
    pub newest: u64,
}

struct Lease {
    holder: String,
    until: Instant,
}

/// The witness's leases: pure, so the rules are tested without a network.
pub struct Leases {
    term: Duration,
    held: HashMap<(String, String), Lease>,
    newest: HashMap<(String, String), u64>,
    /// No lease is granted before then: a witness that just (re)started
    /// does not know who held one, and the holder still relies on it.
    quiet_until: Option<Instant>,
}

impl Leases {
    pub fn new(term: Duration) -> Self {
        Leases {
            term,
            held: HashMap::new(),
            newest: HashMap::new(),
            quiet_until: None,
        }
    }

    /// Grants nothing until `until` (a whole term after a start).
    pub fn quiet_until(&mut self, until: Instant) {
        self.quiet_until = Some(until);
    }

    pub fn ask(&mut self, a: &Ask, now: Instant) -> Answer {
        let key = (a.cluster.clone(), a.module.clone());
        let current = self.held.get(&key).filter(|l| l.until > now);
        let quiet = self.quiet_until.is_some_and(|q| now < q);
        let granted = match current {
            _ if quiet && a.want => false,
            Some(l) if l.holder != a.node => false,
            Some(_) | None if a.want => {
                self.held.insert(
                    key.clone(),
                    Lease {
                        holder: a.node.clone(),
                        until: now + self.term,
                    },
                );
                if a.serving {
                    self.newest.insert(key.clone(), a.generation);
                }
                true
            }
            Some(_) => {
                // Given back by its holder: free at once.
                self.held.remove(&key);
                false
            }
            None => false,
        };
        Answer {
            module: a.module.clone(),
            nonce: a.nonce,
            granted,
            holder: self
                .held
                .get(&key)
                .filter(|l| l.until > now)
                .map(|l| l.holder.clone()),
            lease_ms: self.term.as_millis() as u64,
            newest: self.newest.get(&key).copied().unwrap_or(0),
        }
    }
}

/// `tandem witness`: answers asks on `listen` until the process ends.
///
/// The newest generation of each module is kept in `state` (a JSON file), so
/// a witness that restarts still tells a node booting alone with old data
/// that it must not serve.
pub async fn serve(
    listen: SocketAddr,
    key: Key,
    cluster: String,
    term: Duration,
    state: &Path,
) -> Result<(), WitnessError> {
    let mut leases = Leases::new(term);
    leases.quiet_until(Instant::now() + term);
    for (module, g) in load_newest(state)? {
        leases.newest.insert((cluster.clone(), module), g);
    }
    let sock = UdpSocket::bind(listen)
        .await
        .map_err(|why| WitnessError::Bind { addr: listen, why })?;
    tracing::info!(
        "witness for cluster {cluster} on {listen}, leases of {} ms, state in {}",
        term.as_millis(),
        state.display()
    );
    let mut buf = vec![0u8; 4096];
    let mut dropped = 0u64;
    // Each node's release, as it last said: logged when it changes.
    let mut releases: HashMap<String, Option<Speaks>> = HashMap::new();
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("witness: receive: {e}");
                continue;
            }
        };
        let (ask, speaks): (Ask, _) = match open_speaking(&key, ASK, &buf[..n]) {
            Ok(a) => a,
            Err(e) => {
                dropped += 1;
                if dropped % 100 == 1 {
                    tracing::warn!(
                        "witness: dropped a request from {from}: {e} ({dropped} so far)"
                    );
                }
                continue;
            }
        };
        if ask.cluster != cluster {
            continue;
        }
        if releases.get(&ask.node) != Some(&speaks) {
            match speaks.as_ref() {
                Some(s) => match PROTOCOL.shared(s.range) {
                    Ok(_) => tracing::info!(
                        "node {} runs tandem {} (witness protocol {})",
                        ask.node,
                        s.software,
                        s.range
                    ),
                    Err(e) => tracing::error!("node {}: {e}", ask.node),
                },
                None => tracing::info!("node {} runs a release before protocol ranges", ask.node),
            }
            releases.insert(ask.node.clone(), speaks);
        }
        let before = leases
            .held
            .get(&(ask.cluster.clone(), ask.module.clone()))
            .filter(|l| l.until > Instant::now())
            .map(|l| l.holder.clone());
        let newest_before = leases
            .newest
            .get(&(ask.cluster.clone(), ask.module.clone()))
            .copied();
        let answer = leases.ask(&ask, Instant::now());
        if newest_before.unwrap_or(0) != answer.newest {
            // Kept before the holder is told, so what it relies on survives
            // a restart of the witness; unsaved, it is not told at all.
            let all = leases
                .newest
                .iter()
                .map(|((_, m), g)| (m.clone(), *g))
                .collect();
            if let Err(e) = save_newest(state, &all) {
                tracing::error!("witness: {e}; not answering");
                continue;
            }
        }
        if answer.holder != before {
            tracing::info!(
                "module {}: lease {}",
                ask.module,
                answer
                    .holder
                    .as_ref()
                    .map_or("free".to_string(), |h| format!("held by {h}"))
            );
        }
        let _ = sock
            .send_to(
                &seal_with(&key, ANSWER, &(&answer, &Speaks::this(PROTOCOL))),
                from,
            )
            .await;
    }
}

fn load_newest(path: &Path) -> Result<HashMap<String, u64>, WitnessError> {
    let state = |why: &dyn std::fmt::Display| WitnessError::State {
        path: path.into(),
        why: why.to_string(),
    };
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| state(&e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HashMap::new()),
        Err(e) => Err(state(&e)),
    }
}

/// Written to a temporary file, synced, then renamed over the old one: a
/// crash leaves the old state or the new one, never half of one.
fn save_newest(path: &Path, newest: &HashMap<String, u64>) -> Result<(), WitnessError> {
    use std::io::Write;
    let err = |why| WitnessError::Save {
        path: path.into(),
        why,
    };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(&serde_json::to_vec(newest).expect("a map of numbers"))
        .map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(err)?;
    }
    Ok(())
}

/// A node's side: asks for the leases it wants and knows which it holds.
pub struct Client {
    key: Key,
    cluster: String,
    node: String,
    witness: SocketAddr,
    /// How long after an ask a granted lease is relied on: well short of the
    /// witness's term, so this node stops relying on it first.
    validity: Duration,
    book: Book,
    /// Asks not answered yet, by module and nonce: only an answer to one of
    /// them counts (no replays).
    pending: Mutex<HashMap<(String, u64), Instant>>,
    /// What the witness last said it speaks (its release).
    witness_speaks: Mutex<Option<Speaks>>,
}

impl Client {
    pub fn new(
        key: Key,
        cluster: &str,
        node: &str,
        witness: SocketAddr,
        validity: Duration,
        interval: Duration,
    ) -> Arc<Self> {
        Arc::new(Client {
            key,
            cluster: cluster.into(),
            node: node.into(),
            witness,
            validity,
            book: Book::new(interval),
            pending: Mutex::new(HashMap::new()),
            witness_speaks: Mutex::new(None),
        })
    }

    /// Asks every `interval` for the wanted leases, gives back the others,
    /// until `stop`.
    pub async fn run(self: Arc<Self>, stop: crate::stop::Stop) -> Result<(), WitnessError> {
        let interval = self.book.interval;
        let bind: SocketAddr = if self.witness.is_ipv4() {
            "0.0.0.0:0".parse().expect("literal")
        } else {
            "[::]:0".parse().expect("literal")
        };
        let sock = Arc::new(UdpSocket::bind(bind).await.map_err(WitnessError::Socket)?);
        let me = self.clone();
        let rx = sock.clone();
        stop.spawn("witness-answers", async move { me.receive(rx).await });
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut nonce = crate::changelog::random_id().unwrap_or(1);
        let mut warned = false;
        loop {
            tick.tick().await;
            let asks: Vec<Ask> = {
                let s = self.book.state.lock();
                let mut pending = self.pending.lock();
                let now = Instant::now();
                pending.retain(|_, t| now.duration_since(*t) < Duration::from_secs(10));
                s.iter()
                    .map(|(m, h)| {
                        nonce = nonce.wrapping_add(1);
                        pending.insert((m.clone(), nonce), now);
                        Ask {
                            cluster: self.cluster.clone(),
                            node: self.node.clone(),
                            module: m.clone(),
                            want: h.want,
                            generation: h.generation,
                            serving: h.serving,
                            nonce,
                        }
                    })
                    .collect()
            };
            for a in asks {
                match sock
                    .send_to(
                        &seal_with(&self.key, ASK, &(&a, &Speaks::this(PROTOCOL))),
                        self.witness,
                    )
                    .await
                {
                    Ok(_) => warned = false,
                    Err(e) if !warned => {
                        tracing::warn!("witness {}: {e}", self.witness);
                        warned = true;
                    }
                    Err(_) => {}
                }
            }
        }
    }

    async fn receive(self: Arc<Self>, sock: Arc<UdpSocket>) {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                continue;
            };
            if from != self.witness {
                continue;
            }
            let Ok((a, speaks)) = open_speaking::<Answer>(&self.key, ANSWER, &buf[..n]) else {
                continue;
            };
            *self.witness_speaks.lock() = speaks;
            // Only an answer to an ask still outstanding counts (no replays).
            let Some(sent) = self.pending.lock().remove(&(a.module.clone(), a.nonce)) else {
                continue;
            };
            let mut s = self.book.state.lock();
            let Some(h) = s.get_mut(&a.module) else {
                continue;
            };
            *self.book.last_answer.lock() = Some(Instant::now());
            h.holder = a.holder.clone();
            h.newest = a.newest;
            if a.granted && h.want {
                let until = sent + self.validity.min(Duration::from_millis(a.lease_ms / 2));
                h.until = Some(h.until.map_or(until, |u| u.max(until)));
            } else if !a.granted {
                h.until = None;
            }
        }
    }
}

impl LeaseQuorum for Client {
    fn book(&self) -> &Book {
        &self.book
    }

    fn kind(&self) -> &'static str {
        "witness"
    }

    fn release(&self) -> Option<String> {
        self.witness_speaks
            .lock()
            .as_ref()
            .map(|s| s.software.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(node: &str, want: bool) -> Ask {
        Ask {
            cluster: "c".into(),
            node: node.into(),
            module: "app".into(),
            want,
            generation: 7,
            serving: true,
            nonce: 1,
        }
    }

    #[test]
    fn asks_of_a_release_before_ranges_and_of_this_one_are_both_read() {
        let key = Key::new(b"0123456789abcdef0123456789abcdef");
        let old = seal_with(&key, ASK, &ask("node1", true));
        let (a, speaks) = open_speaking::<Ask>(&key, ASK, &old).unwrap();
        assert_eq!((a, speaks), (ask("node1", true), None));
        let new = seal_with(&key, ASK, &(ask("node1", true), Speaks::this(PROTOCOL)));
        let (a, speaks) = open_speaking::<Ask>(&key, ASK, &new).unwrap();
        assert_eq!(a, ask("node1", true));
        assert_eq!(speaks.map(|s| s.range), Some(PROTOCOL));
        // What a release before ranges reads of it: the ask, whole.
        let o: Ask = crate::cluster::heartbeat::open_with(&key, ASK, &new).unwrap();
        assert_eq!(o, ask("node1", true));
    }

    #[test]
    fn one_holder_at_a_time_until_its_lease_runs_out() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut l = Leases::new(Duration::from_millis(500));
        assert!(l.ask(&ask("node1", true), ms(0)).granted);
        let a = l.ask(&ask("node2", true), ms(100));
        assert!(!a.granted);
        assert_eq!(a.holder.as_deref(), Some("node1"));
        // Renewed: still node1's.
        assert!(l.ask(&ask("node1", true), ms(400)).granted);
        assert!(!l.ask(&ask("node2", true), ms(800)).granted);
        // node1 went silent: free after its last renewal plus the lease.
        assert!(!l.ask(&ask("node2", true), ms(899)).granted);
        let a = l.ask(&ask("node2", true), ms(901));
        assert!(a.granted);
        assert_eq!(a.newest, 7);
        assert!(!l.ask(&ask("node1", true), ms(950)).granted);
    }

    #[test]
    fn a_witness_that_just_started_grants_nothing_for_a_term() {
        let t0 = Instant::now();
        let mut l = Leases::new(Duration::from_millis(500));
        l.quiet_until(t0 + Duration::from_millis(500));
        let a = l.ask(&ask("node2", true), t0 + Duration::from_millis(100));
        assert!(!a.granted && a.holder.is_none());
        assert!(
            l.ask(&ask("node2", true), t0 + Duration::from_millis(501))
                .granted
        );
    }

    #[test]
    fn the_newest_generation_is_the_last_served_one() {
        let t0 = Instant::now();
        let mut l = Leases::new(Duration::from_millis(500));
        // node2 served generation 7, then vanished.
        assert_eq!(l.ask(&ask("node2", true), t0).newest, 7);
        // node1 boots alone with older data: it gets the lease (nobody holds
        // it) but learns that the newest data is not its own.
        let mut old = ask("node1", true);
        old.generation = 3;
        old.serving = false;
        let a = l.ask(&old, t0 + Duration::from_secs(1));
        assert!(a.granted);
        assert_eq!(
            a.newest, 7,
            "a node that does not serve does not overwrite it"
        );
    }

    #[test]
    fn a_lease_given_back_is_free_at_once_and_asking_without_wanting_takes_nothing() {
        let t0 = Instant::now();
        let mut l = Leases::new(Duration::from_millis(500));
        assert!(!l.ask(&ask("node2", false), t0).granted);
        assert_eq!(l.ask(&ask("node2", false), t0).holder, None);
        assert!(l.ask(&ask("node1", true), t0).granted);
        assert!(
            !l.ask(&ask("node2", false), t0).granted,
            "not node2's to give"
        );
        assert!(!l.ask(&ask("node1", false), t0).granted);
        assert!(l.ask(&ask("node2", true), t0).granted);
    }

    #[tokio::test]
    async fn the_client_holds_a_lease_only_while_the_witness_grants_it() {
        let key = || Key::new(b"0123456789abcdef0123456789abcdef");
        let addr = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let state = tempfile::tempdir().unwrap();
        let file = state.path().join("witness.json");
        tokio::spawn(async move {
            serve(addr, key(), "c".into(), Duration::from_millis(400), &file).await
        });
        let ms = Duration::from_millis;
        let a = Client::new(key(), "c", "node1", addr, ms(100), ms(20));
        let b = Client::new(key(), "c", "node2", addr, ms(100), ms(20));
        let stop = crate::stop::Stop::new();
        tokio::spawn(a.clone().run(stop.clone()));
        tokio::spawn(b.clone().run(stop.clone()));
        a.want("app", true, 1, true);
        let until = Instant::now() + Duration::from_secs(3);
        while !a.holds("app") && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(a.holds("app"));
        b.want("app", true, 1, false);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!b.holds("app"));
        assert_eq!(b.holder("app").as_deref(), Some("node1"));
        // node1 gives it back: node2 gets it, node1 no longer holds it.
        a.want("app", false, 1, false);
        let until = Instant::now() + Duration::from_secs(3);
        while !b.holds("app") && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(b.holds("app") && !a.holds("app"));
        // Each end says its release.
        assert_eq!(a.release().as_deref(), Some(crate::versions::SOFTWARE));
        // A forged answer changes nothing.
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let forged = seal_with(
            &Key::new(b"not the cluster key at all......"),
            ANSWER,
            &Answer {
                module: "app".into(),
                nonce: 0,
                granted: true,
                holder: Some("node1".into()),
                lease_ms: 100_000,
                newest: 0,
            },
        );
        s.send_to(&forged, addr).unwrap();
        assert!(!a.holds("app"));
        // The newest generation served (node2's 1) outlives the witness.
        assert_eq!(
            load_newest(&state.path().join("witness.json")).unwrap(),
            HashMap::from([("app".to_string(), 1)])
        );
    }

    #[test]
    fn the_saved_state_is_read_back_and_a_corrupt_one_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("w.json");
        assert!(load_newest(&p).unwrap().is_empty());
        let m = HashMap::from([("app".to_string(), 42), ("db".to_string(), 7)]);
        save_newest(&p, &m).unwrap();
        assert_eq!(load_newest(&p).unwrap(), m);
        std::fs::write(&p, b"{not json").unwrap();
        let e = load_newest(&p).unwrap_err();
        assert!(matches!(e, WitnessError::State { .. }), "{e}");
        assert!(e.to_string().contains("w.json"), "{e}");
    }
}
