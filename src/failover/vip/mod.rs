//! VIP mode: the module's virtual addresses follow the serving node. Taken
//! through rtnetlink on the configured interface (or the one holding the
//! subnet), then announced — gratuitous ARP for IPv4, unsolicited neighbour
//! advertisement for IPv6 — in a burst, then periodically while held.
//! Released before the application stops.

pub mod announce;
pub mod ifaces;
pub mod netlink;

use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{Announce, IpPrefix};

/// Why the module's addresses cannot be taken here; each names what failed.
#[derive(Debug, thiserror::Error)]
pub enum VipError {
    #[error("listing interfaces: {0}")]
    List(#[source] std::io::Error),
    /// No interface of this host can take the address.
    #[error("vip {vip}: {source}")]
    NoInterface {
        vip: IpPrefix,
        #[source]
        source: ifaces::PickError,
    },
    /// The kernel refused the address (those added before were removed).
    #[error("adding {taken}: {source}")]
    Add {
        taken: Taken,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the announcer: {0}")]
    Announcer(#[source] std::io::Error),
}

/// One address taken on one interface (what the guard must give back).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Taken {
    pub index: u32,
    pub interface: String,
    pub addr: IpAddr,
    pub prefix: u8,
    #[serde(default)]
    pub mac: Option<[u8; 6]>,
}

impl std::fmt::Display for Taken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} on {}", self.addr, self.prefix, self.interface)
    }
}

pub struct Vips {
    module: String,
    addresses: Vec<IpPrefix>,
    interface: Option<String>,
    announce: Announce,
    /// The announcer's own stop.
    announcer: Option<crate::stop::Stop>,
    /// The addresses held, shared with the fencer, which may drop them.
    fence: VipFence,
}

/// Drops the addresses from another thread than the one that owns the
/// [`Vips`] (the fencer, when the owner is busy): the announcer falls
/// silent and the addresses go. The owner's later release finds them gone.
#[derive(Clone, Default)]
pub struct VipFence {
    inner: std::sync::Arc<FenceInner>,
}

#[derive(Default)]
struct FenceInner {
    muted: std::sync::atomic::AtomicBool,
    taken: parking_lot::Mutex<Vec<Taken>>,
}

impl VipFence {
    /// Silences the announcer and removes the addresses; returns what failed.
    pub fn drop_all(&self) -> Vec<String> {
        self.inner
            .muted
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let taken = std::mem::take(&mut *self.inner.taken.lock());
        remove_all(&taken)
    }

    fn muted(&self) -> bool {
        self.inner.muted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Vips {
    pub fn new(
        module: &str,
        addresses: Vec<IpPrefix>,
        interface: Option<String>,
        announce: Announce,
    ) -> Self {
        Vips {
            module: module.into(),
            addresses,
            interface,
            announce,
            announcer: None,
            fence: VipFence::default(),
        }
    }

    /// The handle that drops these addresses from another thread.
    pub fn fence(&self) -> VipFence {
        self.fence.clone()
    }

    /// Where each address would go; an error names the address.
    pub fn plan(&self) -> Result<Vec<Taken>, VipError> {
        let all = ifaces::list().map_err(VipError::List)?;
        self.addresses
            .iter()
            .map(|a| {
                let i = ifaces::pick(&all, a.addr, a.prefix, self.interface.as_deref())
                    .map_err(|source| VipError::NoInterface { vip: *a, source })?;
                Ok(Taken {
                    index: i.index,
                    interface: i.name,
                    addr: a.addr,
                    prefix: a.prefix,
                    mac: i.mac,
                })
            })
            .collect()
    }

    /// The module's addresses on an interface of this host that this daemon
    /// did not take.
    fn strays(&self) -> Vec<Taken> {
        let Ok(all) = ifaces::list() else {
            return Vec::new();
        };
        let taken = self.taken();
        let mut out = Vec::new();
        for a in &self.addresses {
            if taken.iter().any(|t| t.addr == a.addr) {
                continue;
            }
            for i in &all {
                for (ip, prefix) in i.addrs.iter().filter(|(ip, _)| *ip == a.addr) {
                    out.push(Taken {
                        index: i.index,
                        interface: i.name.clone(),
                        addr: *ip,
                        prefix: *prefix,
                        mac: i.mac,
                    });
                }
            }
        }
        out
    }

    /// The module's addresses already on an interface of this host, which
    /// this daemon did not put there (checked at start: reported, not taken
    /// over silently).
    pub fn present(&self) -> Vec<String> {
        self.strays()
            .iter()
            .map(|s| format!("{} is already on {}", s.addr, s.interface))
            .collect()
    }

    /// Removes the module's addresses found on this host that this daemon
    /// did not take: left by a daemon that died together with its guard. Once
    /// the peer serves the module they can only draw its clients here.
    /// Returns a line for each address removed or that could not be.
    pub fn remove_strays(&self) -> Vec<String> {
        self.strays()
            .into_iter()
            .map(|s| match netlink::remove(s.index, s.addr, s.prefix) {
                Ok(_) => format!("{}/{} removed from {}", s.addr, s.prefix, s.interface),
                Err(e) => format!(
                    "{}/{} on {}: cannot remove: {e}",
                    s.addr, s.prefix, s.interface
                ),
            })
            .collect()
    }

    pub fn taken(&self) -> Vec<Taken> {
        self.fence.inner.taken.lock().clone()
    }

    /// Adds every address of `plan` (one already there is managed from now
    /// on, and removed at release: it must not stay behind on a node that no
    /// longer serves). All or nothing: on an error the addresses added are
    /// removed again.
    pub fn take(&mut self, plan: Vec<Taken>) -> Result<(), VipError> {
        if !self.taken().is_empty() {
            return Ok(());
        }
        self.fence
            .inner
            .muted
            .store(false, std::sync::atomic::Ordering::SeqCst);
        for t in plan {
            if let Err(source) = netlink::add(t.index, t.addr, t.prefix) {
                self.release();
                return Err(VipError::Add { taken: t, source });
            }
            self.fence.inner.taken.lock().push(t);
        }
        Ok(())
    }

    /// Tells the LAN, once the application listens: a burst, then a
    /// refresh, until released or `stop`.
    pub fn announce(&mut self, stop: &crate::stop::Stop) -> Result<(), VipError> {
        let list = self.taken();
        if self.announcer.is_some() || list.is_empty() {
            return Ok(());
        }
        let own = stop.child();
        let (a, module) = (self.announce, self.module.clone());
        let (fence, s) = (self.fence.clone(), own.clone());
        own.thread("vip-announce", move || {
            announcer(&module, &list, a, &s, &fence)
        })
        .map_err(VipError::Announcer)?;
        self.announcer = Some(own);
        Ok(())
    }

    /// Stops announcing, then removes the addresses; returns what failed.
    /// An address that could not be removed stays listed (and with the
    /// guard), so it is tried again rather than forgotten.
    pub fn release(&mut self) -> Vec<String> {
        if let Some(own) = self.announcer.take() {
            // It wakes at once; a netlink call under way ends first.
            own.join(Duration::from_secs(5));
        }
        let mut errors = Vec::new();
        self.fence.inner.taken.lock().retain(|t| {
            match netlink::remove(t.index, t.addr, t.prefix) {
                Ok(_) => false,
                Err(e) => {
                    errors.push(format!("removing {t}: {e}"));
                    true
                }
            }
        });
        errors
    }
}

/// Removes `taken` (the guard calls this for a dead daemon too).
pub fn remove_all(taken: &[Taken]) -> Vec<String> {
    taken
        .iter()
        .filter_map(|t| {
            netlink::remove(t.index, t.addr, t.prefix)
                .err()
                .map(|e| format!("removing {t}: {e}"))
        })
        .collect()
}

/// Sends one announcement for each address.
pub fn announce_once(module: &str, taken: &[Taken]) {
    for t in taken {
        let Some(mac) = t.mac else {
            continue;
        };
        let r = match t.addr {
            IpAddr::V4(ip) => announce::send_garp(t.index, mac, ip),
            IpAddr::V6(ip) => announce::send_na(t.index, mac, ip),
        };
        if let Err(e) = r {
            tracing::warn!(module, "announcing {t}: {e}");
        }
    }
}

/// The burst, then a refresh every `a.refresh`, until `stop` is dropped.
fn announcer(
    module: &str,
    taken: &[Taken],
    a: Announce,
    stop: &crate::stop::Stop,
    fence: &VipFence,
) {
    // A fenced node claims the addresses no more.
    let announce = || {
        if !fence.muted() {
            announce_once(module, taken);
        }
    };
    for i in 0..a.count {
        if i > 0 && stop.sleep(a.interval) {
            return;
        }
        announce();
    }
    let Some(every) = a.refresh else {
        return;
    };
    while !stop.sleep(every) {
        announce();
    }
}
