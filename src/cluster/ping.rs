//! `quorum = "ping"`: a node that cannot see its peer may serve while one of
//! the configured addresses (the default gateway, say) answers ICMP echo. The
//! vendor's rule: it keeps a node that lost its network from serving, but two
//! nodes cut off only from each other both still reach the gateway.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Sends one echo request to `addr` and waits up to `timeout` for its reply.
pub fn echo(addr: IpAddr, id: u16, seq: u16, timeout: Duration) -> std::io::Result<bool> {
    let (domain, proto, kind) = match addr {
        IpAddr::V4(_) => (libc::AF_INET, libc::IPPROTO_ICMP, 8u8),
        IpAddr::V6(_) => (libc::AF_INET6, libc::IPPROTO_ICMPV6, 128u8),
    };
    let sock = crate::sock::socket(domain, libc::SOCK_RAW, proto)?;
    let mut pkt = [0u8; 16];
    pkt[0] = kind;
    pkt[4..6].copy_from_slice(&id.to_be_bytes());
    pkt[6..8].copy_from_slice(&seq.to_be_bytes());
    pkt[8..16].copy_from_slice(b"tandem\0\0");
    if addr.is_ipv4() {
        // The kernel fills the checksum in for ICMPv6 only.
        let sum = checksum(&pkt);
        pkt[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    let dest = socket2_addr(SocketAddr::new(addr, 0));
    // SAFETY: `pkt` is a live 16-byte array passed with its length; `dest.0` is the
    // sockaddr_storage socket2_addr filled in and `dest.1` the length of the address written at its
    // start; `sock` is an open socket we own.
    let sent = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            pkt.as_ptr().cast(),
            pkt.len(),
            0,
            (&dest.0 as *const libc::sockaddr_storage).cast(),
            dest.1,
        )
    };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let end = Instant::now() + timeout;
    let mut buf = [0u8; 1500];
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        let mut pfd = libc::pollfd {
            fd: sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is one live pollfd (nfds 1) naming `sock`, which is open.
        let r = unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as i32) };
        if r <= 0 {
            continue;
        }
        // SAFETY: sockaddr_storage is plain data (integers and byte arrays): all-zero bytes are a
        // valid value.
        let mut from: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut flen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: `buf` is a live array passed with its length, and `from` a sockaddr_storage
        // passed with its size in `flen`, so the kernel writes within both; `sock` is open.
        let n = unsafe {
            libc::recvfrom(
                sock.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&mut from as *mut libc::sockaddr_storage).cast(),
                &mut flen,
            )
        };
        if n <= 0 {
            continue;
        }
        let data = &buf[..n as usize];
        // IPv4 raw sockets hand over the IP header too.
        let icmp = if addr.is_ipv4() {
            let ihl = usize::from(data[0] & 0x0f) * 4;
            if data.len() < ihl + 8 {
                continue;
            }
            &data[ihl..]
        } else {
            data
        };
        let reply = if addr.is_ipv4() { 0 } else { 129 };
        if icmp.len() >= 8
            && icmp[0] == reply
            && icmp[4..6] == id.to_be_bytes()
            && icmp[6..8] == seq.to_be_bytes()
        {
            return Ok(true);
        }
    }
}

fn checksum(b: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in b.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn socket2_addr(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data (integers and byte arrays): all-zero bytes are a valid
    // value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match a {
        SocketAddr::V4(v) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is made to hold any socket address: it is larger than a
            // sockaddr_in and at least as aligned, so the write stays inside `ss`.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: 0,
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v.ip().octets(),
                },
                sin6_scope_id: v.scope_id(),
            };
            // SAFETY: sockaddr_storage is made to hold any socket address: it is larger than a
            // sockaddr_in6 and at least as aligned, so the write stays inside `ss`.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// Pings the addresses every `interval` on a thread of its own until
/// `stop`; quorum holds while one of them answered within `within`.
pub struct Pinger {
    last_ok: Mutex<Option<Instant>>,
    within: Duration,
}

impl Pinger {
    pub fn spawn(
        addrs: Vec<IpAddr>,
        interval: Duration,
        within: Duration,
        stop: &crate::stop::Stop,
    ) -> std::io::Result<Arc<Pinger>> {
        let p = Arc::new(Pinger {
            last_ok: Mutex::new(None),
            within,
        });
        let me = p.clone();
        let id = (std::process::id() & 0xffff) as u16;
        let stop2 = stop.clone();
        stop.thread("ping", move || {
            let mut seq = 0u16;
            let mut warned = false;
            while !stop2.is_stopped() {
                let started = Instant::now();
                seq = seq.wrapping_add(1);
                let ok = addrs.iter().any(|a| match echo(*a, id, seq, interval) {
                    Ok(ok) => ok,
                    Err(e) => {
                        if !warned {
                            tracing::warn!("ping {a}: {e}");
                            warned = true;
                        }
                        false
                    }
                });
                if ok {
                    *me.last_ok.lock() = Some(Instant::now());
                }
                stop2.sleep(interval.saturating_sub(started.elapsed()));
            }
        })?;
        Ok(p)
    }

    pub fn ok(&self) -> bool {
        self.last_ok
            .lock()
            .is_some_and(|t| t.elapsed() < self.within)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_answers_and_the_checksum_is_right() {
        // The example of RFC 1071: the ones' complement sum of these words.
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
        assert!(echo("127.0.0.1".parse().unwrap(), 7, 1, Duration::from_secs(2)).unwrap());
        assert!(echo("::1".parse().unwrap(), 7, 2, Duration::from_secs(2)).unwrap());
    }

    #[test]
    fn the_pinger_holds_quorum_only_while_an_address_answers() {
        let p = Pinger::spawn(
            vec!["127.0.0.1".parse().unwrap()],
            Duration::from_millis(50),
            Duration::from_millis(300),
            &crate::stop::Stop::new(),
        )
        .unwrap();
        let end = Instant::now() + Duration::from_secs(3);
        while !p.ok() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(p.ok());
        // In a network namespace of its own whose loopback is down, nothing
        // answers (the thread enters it; the namespace is removed after).
        let ns = format!("tdmping{}", std::process::id());
        let ip = |args: &[&str]| {
            let o = std::process::Command::new("ip")
                .args(args)
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        };
        ip(&["netns", "add", &ns]);
        let path = format!("/run/netns/{ns}");
        let r = std::thread::spawn(move || {
            let f = std::fs::File::open(&path).unwrap();
            // SAFETY: setns takes no pointer; `f` keeps the namespace file open across the call,
            // and only this thread of the test enters the namespace.
            assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
            echo(
                "127.0.0.1".parse().unwrap(),
                7,
                3,
                Duration::from_millis(200),
            )
        })
        .join()
        .unwrap();
        ip(&["netns", "del", &ns]);
        assert!(!matches!(r, Ok(true)), "{r:?}");
    }
}
