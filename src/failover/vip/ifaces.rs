//! The host's interfaces as the VIP code needs them: index, hardware address
//! and addresses with their prefixes (from getifaddrs).

use std::collections::BTreeMap;
use std::ffi::CStr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Iface {
    pub name: String,
    pub index: u32,
    pub mac: Option<[u8; 6]>,
    pub addrs: Vec<(IpAddr, u8)>,
}

pub fn list() -> std::io::Result<Vec<Iface>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: `head` is a valid place for the list's address; the list it gets is freed once, by
    // freeifaddrs below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut out: BTreeMap<String, Iface> = BTreeMap::new();
    let mut p = head;
    while !p.is_null() {
        // SAFETY: `p` is a non-null node of the list getifaddrs returned, which stays allocated
        // until freeifaddrs below; nothing borrowed from it outlives the loop.
        let ifa = unsafe { &*p };
        p = ifa.ifa_next;
        // SAFETY: `ifa_name` points to the interface's NUL-terminated name inside the list, copied
        // out here before the list is freed.
        let name = unsafe { CStr::from_ptr(ifa.ifa_name) }
            .to_string_lossy()
            .into_owned();
        let e = out.entry(name.clone()).or_insert_with(|| Iface {
            // SAFETY: `ifa_name` is the list's NUL-terminated name, valid until freeifaddrs.
            index: unsafe { libc::if_nametoindex(ifa.ifa_name) },
            name,
            ..Iface::default()
        });
        if ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: `ifa_addr` is not null (checked above) and points to a socket address inside the
        // list.
        match i32::from(unsafe { (*ifa.ifa_addr).sa_family }) {
            libc::AF_PACKET => {
                // SAFETY: an AF_PACKET entry's `ifa_addr` points to a sockaddr_ll (packet(7))
                // inside the list, which outlives `ll`.
                let ll = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_ll) };
                if ll.sll_halen == 6 {
                    let mut mac = [0u8; 6];
                    mac.copy_from_slice(&ll.sll_addr[..6]);
                    e.mac = Some(mac);
                }
            }
            libc::AF_INET => {
                // SAFETY: an AF_INET entry's `ifa_addr` points to a sockaddr_in inside the list,
                // which outlives `a`.
                let a = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
                let prefix = if ifa.ifa_netmask.is_null() {
                    32
                } else {
                    // SAFETY: an AF_INET entry's `ifa_netmask`, not null here, points to a
                    // sockaddr_in inside the list.
                    let m = unsafe { &*(ifa.ifa_netmask as *const libc::sockaddr_in) };
                    u32::from_be(m.sin_addr.s_addr).count_ones() as u8
                };
                e.addrs.push((IpAddr::V4(ip), prefix));
            }
            libc::AF_INET6 => {
                // SAFETY: an AF_INET6 entry's `ifa_addr` points to a sockaddr_in6 inside the list,
                // which outlives `a`.
                let a = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
                let prefix = if ifa.ifa_netmask.is_null() {
                    128
                } else {
                    // SAFETY: an AF_INET6 entry's `ifa_netmask`, not null here, points to a
                    // sockaddr_in6 inside the list.
                    let m = unsafe { &*(ifa.ifa_netmask as *const libc::sockaddr_in6) };
                    u128::from_be_bytes(m.sin6_addr.s6_addr).count_ones() as u8
                };
                e.addrs.push((IpAddr::V6(ip), prefix));
            }
            _ => {}
        }
    }
    // SAFETY: `head` is the list getifaddrs returned, freed once here; nothing borrowed from it is
    // used after.
    unsafe { libc::freeifaddrs(head) };
    Ok(out.into_values().collect())
}

/// `a` and `b` share their first `prefix` bits.
pub fn same_subnet(a: IpAddr, b: IpAddr, prefix: u8) -> bool {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let bits = u32::from(prefix.min(32));
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits)
            };
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let bits = u32::from(prefix.min(128));
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - bits)
            };
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

/// Why no interface can take an address; said with the address.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PickError {
    /// The configured `vip_interface` is not on this host.
    #[error("interface {0} does not exist")]
    NoSuchInterface(String),
    #[error("no interface has an address in {vip}/{prefix}: set vip_interface")]
    NoneInSubnet { vip: IpAddr, prefix: u8 },
    /// Which one is meant cannot be told: the interfaces are named.
    #[error(
        "several interfaces hold {vip}/{prefix} ({}): set vip_interface",
        .names.join(", ")
    )]
    Several {
        vip: IpAddr,
        prefix: u8,
        names: Vec<String>,
    },
}

/// The interface for `vip/prefix`: `named` if given, else the one holding
/// an address (other than the VIP itself) in the VIP's subnet.
pub fn pick(
    ifaces: &[Iface],
    vip: IpAddr,
    prefix: u8,
    named: Option<&str>,
) -> Result<Iface, PickError> {
    if let Some(n) = named {
        return ifaces
            .iter()
            .find(|i| i.name == n)
            .cloned()
            .ok_or_else(|| PickError::NoSuchInterface(n.to_string()));
    }
    let found: Vec<&Iface> = ifaces
        .iter()
        .filter(|i| {
            i.addrs
                .iter()
                .any(|(a, _)| *a != vip && same_subnet(*a, vip, prefix))
        })
        .collect();
    match found.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(PickError::NoneInSubnet { vip, prefix }),
        many => Err(PickError::Several {
            vip,
            prefix,
            names: many.iter().map(|i| i.name.clone()).collect(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_and_the_interface_holding_one() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(same_subnet(ip("10.1.2.3"), ip("10.1.2.200"), 24));
        assert!(!same_subnet(ip("10.1.2.3"), ip("10.1.3.3"), 24));
        assert!(same_subnet(ip("10.1.2.3"), ip("10.9.9.9"), 0));
        assert!(same_subnet(ip("fd00::1"), ip("fd00::ffff"), 64));
        assert!(!same_subnet(ip("fd00::1"), ip("fd01::1"), 64));
        assert!(!same_subnet(ip("10.0.0.1"), ip("::1"), 0));
        let ifs = vec![
            Iface {
                name: "lo".into(),
                index: 1,
                mac: None,
                addrs: vec![(ip("127.0.0.1"), 8)],
            },
            Iface {
                name: "eth0".into(),
                index: 2,
                mac: Some([2, 0, 0, 0, 0, 1]),
                addrs: vec![(ip("10.1.2.3"), 24), (ip("fd00::3"), 64)],
            },
        ];
        assert_eq!(pick(&ifs, ip("10.1.2.100"), 24, None).unwrap().name, "eth0");
        assert_eq!(pick(&ifs, ip("fd00::100"), 64, None).unwrap().name, "eth0");
        let e = pick(&ifs, ip("192.168.0.1"), 24, None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no interface has an address in 192.168.0.1/24: set vip_interface"
        );
        assert_eq!(
            pick(&ifs, ip("192.168.0.1"), 24, Some("lo")).unwrap().index,
            1
        );
        assert_eq!(
            pick(&ifs, ip("192.168.0.1"), 24, Some("nope0")).unwrap_err(),
            PickError::NoSuchInterface("nope0".into())
        );
        let mut twice = ifs.clone();
        twice[0].addrs.push((ip("10.1.2.4"), 24));
        let e = pick(&twice, ip("10.1.2.100"), 24, None).unwrap_err();
        assert!(
            matches!(&e, PickError::Several { names, .. } if names.len() == 2),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            "several interfaces hold 10.1.2.100/24 (lo, eth0): set vip_interface"
        );
        // The real host has at least a loopback.
        let real = list().unwrap();
        assert!(real.iter().any(|i| i.name == "lo" && i.index > 0));
    }
}
