//! Adding and removing an interface address through rtnetlink
//! (RTM_NEWADDR / RTM_DELADDR), the kernel interface `ip addr` uses.

use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;

const NLMSG_ERROR: u16 = 2;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_FLAGS: u16 = 8;
/// No duplicate address detection: the address is usable (and announced) at
/// once, as a moved address must be.
const IFA_F_NODAD: u32 = 0x02;

/// Adds `addr/prefix` to interface `index`. `Ok(false)`: it was there already.
pub fn add(index: u32, addr: IpAddr, prefix: u8) -> io::Result<bool> {
    match request(&message(
        RTM_NEWADDR,
        NLM_F_CREATE | NLM_F_EXCL,
        index,
        addr,
        prefix,
    )) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Removes `addr/prefix` from interface `index`. `Ok(false)`: it was not there.
pub fn remove(index: u32, addr: IpAddr, prefix: u8) -> io::Result<bool> {
    match request(&message(RTM_DELADDR, 0, index, addr, prefix)) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => Ok(false),
        Err(e) => Err(e),
    }
}

fn attr(buf: &mut Vec<u8>, kind: u16, data: &[u8]) {
    let len = 4 + data.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(data);
    buf.resize(buf.len().next_multiple_of(4), 0);
}

/// nlmsghdr + ifaddrmsg + attributes.
fn message(kind: u16, flags: u16, index: u32, addr: IpAddr, prefix: u8) -> Vec<u8> {
    let (family, bytes) = match addr {
        IpAddr::V4(a) => (libc::AF_INET as u8, a.octets().to_vec()),
        IpAddr::V6(a) => (libc::AF_INET6 as u8, a.octets().to_vec()),
    };
    let mut m = vec![0u8; 16];
    m[4..6].copy_from_slice(&kind.to_ne_bytes());
    m[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_ACK | flags).to_ne_bytes());
    m[8..12].copy_from_slice(&1u32.to_ne_bytes());
    // ifaddrmsg: family, prefix length, flags, scope (universe), index.
    m.extend_from_slice(&[family, prefix, 0, 0]);
    m.extend_from_slice(&index.to_ne_bytes());
    attr(&mut m, IFA_LOCAL, &bytes);
    attr(&mut m, IFA_ADDRESS, &bytes);
    if addr.is_ipv6() {
        attr(&mut m, IFA_FLAGS, &IFA_F_NODAD.to_ne_bytes());
    }
    let len = m.len() as u32;
    m[0..4].copy_from_slice(&len.to_ne_bytes());
    m
}

/// Sends one request and reads the kernel's acknowledgement.
fn request(msg: &[u8]) -> io::Result<()> {
    let fd = crate::sock::socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE)?;
    // SAFETY: sockaddr_nl is plain data (integers): all-zero bytes are a valid value.
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: `msg` is a live slice passed with its length, `sa` a sockaddr_nl living across the
    // call passed with its size; `fd` is an open netlink socket we own.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&sa as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let tv = libc::timeval {
        tv_sec: 2,
        tv_usec: 0,
    };
    crate::sock::set(&fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)?;
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: `buf` is a live array passed with its length; `fd` is open.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        if n < 20 {
            return Err(io::Error::other("a short netlink answer"));
        }
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        if kind == NLMSG_ERROR {
            let code = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
            return if code == 0 {
                Ok(())
            } else {
                Err(io::Error::from_raw_os_error(-code))
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_the_address_prefix_and_interface() {
        let m = message(
            RTM_NEWADDR,
            NLM_F_CREATE,
            7,
            "10.1.2.3".parse().unwrap(),
            24,
        );
        assert_eq!(
            u32::from_ne_bytes(m[0..4].try_into().unwrap()) as usize,
            m.len()
        );
        assert_eq!(m.len(), 16 + 8 + 8 + 8);
        assert_eq!(&m[16..20], &[libc::AF_INET as u8, 24, 0, 0]);
        assert_eq!(u32::from_ne_bytes(m[20..24].try_into().unwrap()), 7);
        assert_eq!(&m[28..32], &[10, 1, 2, 3]);
        let m6 = message(RTM_DELADDR, 0, 3, "fd00::5".parse().unwrap(), 64);
        assert_eq!(m6.len(), 16 + 8 + 20 + 20 + 8);
        assert_eq!(m6[17], 64);
    }
}
