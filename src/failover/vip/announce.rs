//! Telling the LAN that an address moved: a gratuitous ARP for IPv4 (on a
//! raw packet socket), an unsolicited neighbour advertisement for IPv6 (on a
//! raw ICMPv6 socket; the kernel fills in the checksum). Neighbours update the
//! entry they hold for the address to this node's hardware address.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;

use crate::sock;

const ETH_P_ARP: u16 = 0x0806;

/// A broadcast ARP request whose sender and target are both `ip`.
pub fn garp_frame(mac: [u8; 6], ip: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    f.extend_from_slice(&1u16.to_be_bytes()); // Ethernet
    f.extend_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    f.extend_from_slice(&[6, 4]);
    f.extend_from_slice(&1u16.to_be_bytes()); // request
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ip.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&ip.octets());
    f
}

/// An unsolicited neighbour advertisement for `ip` (override set), with the
/// target link-layer address option. The checksum is left to the kernel.
pub fn na_message(mac: [u8; 6], ip: Ipv6Addr) -> Vec<u8> {
    let mut m = Vec::with_capacity(32);
    m.extend_from_slice(&[136, 0, 0, 0]);
    m.extend_from_slice(&0x2000_0000u32.to_be_bytes());
    m.extend_from_slice(&ip.octets());
    m.extend_from_slice(&[2, 1]);
    m.extend_from_slice(&mac);
    m
}

fn check(r: isize) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

pub fn send_garp(index: u32, mac: [u8; 6], ip: Ipv4Addr) -> io::Result<()> {
    let fd = sock::socket(
        libc::AF_PACKET,
        libc::SOCK_RAW,
        i32::from(ETH_P_ARP.to_be()),
    )?;
    // SAFETY: sockaddr_ll is plain data (integers and byte arrays): all-zero bytes are a valid
    // value.
    let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sa.sll_family = libc::AF_PACKET as u16;
    sa.sll_protocol = ETH_P_ARP.to_be();
    sa.sll_ifindex = index as i32;
    sa.sll_halen = 6;
    sa.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    let f = garp_frame(mac, ip);
    // SAFETY: `f` is a live frame passed with its length, `sa` a sockaddr_ll living across the call
    // passed with its size; `fd` is an open packet socket we own.
    check(unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            f.as_ptr().cast(),
            f.len(),
            0,
            (&sa as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    })
}

pub fn send_na(index: u32, mac: [u8; 6], ip: Ipv6Addr) -> io::Result<()> {
    let fd = sock::socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6)?;
    let set = |opt: i32, v: i32| sock::set(&fd, libc::IPPROTO_IPV6, opt, &v);
    // Neighbour discovery messages are only accepted with hop limit 255.
    set(libc::IPV6_MULTICAST_HOPS, 255)?;
    set(libc::IPV6_MULTICAST_IF, index as i32)?;
    // From the moved address itself.
    // SAFETY: sockaddr_in6 is plain data (integers and byte arrays): all-zero bytes are a valid
    // value.
    let mut src: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    src.sin6_family = libc::AF_INET6 as u16;
    src.sin6_addr.s6_addr = ip.octets();
    // SAFETY: `src` is a sockaddr_in6 living across the call, passed with its size; `fd` is an open
    // socket we own.
    check(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&src as *const libc::sockaddr_in6).cast(),
            std::mem::size_of::<libc::sockaddr_in6>() as u32,
        )
    } as isize)?;
    // SAFETY: sockaddr_in6 is plain data (integers and byte arrays): all-zero bytes are a valid
    // value.
    let mut dst: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    dst.sin6_family = libc::AF_INET6 as u16;
    dst.sin6_addr.s6_addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1).octets();
    dst.sin6_scope_id = index;
    let m = na_message(mac, ip);
    // SAFETY: `m` is a live message passed with its length, `dst` a sockaddr_in6 living across the
    // call passed with its size; `fd` is an open socket we own.
    check(unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            m.as_ptr().cast(),
            m.len(),
            0,
            (&dst as *const libc::sockaddr_in6).cast(),
            std::mem::size_of::<libc::sockaddr_in6>() as u32,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_follow_the_wire_formats() {
        let mac = [2, 0, 0, 0, 0, 9];
        let f = garp_frame(mac, Ipv4Addr::new(10, 0, 0, 100));
        assert_eq!(f.len(), 42);
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &mac);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 1], "a request");
        assert_eq!(&f[22..28], &mac, "sender hardware address");
        assert_eq!(&f[28..32], &[10, 0, 0, 100], "sender address");
        assert_eq!(&f[38..42], &[10, 0, 0, 100], "target address");
        let n = na_message(mac, "fd00::64".parse().unwrap());
        assert_eq!(n.len(), 32);
        assert_eq!(n[0], 136);
        assert_eq!(n[4] & 0x20, 0x20, "override");
        assert_eq!(n[4] & 0x40, 0, "not solicited");
        assert_eq!(&n[24..26], &[2, 1]);
        assert_eq!(&n[26..32], &mac);
    }
}
