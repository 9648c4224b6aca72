//! The raw sockets tandem opens itself (ICMP echo, ARP, neighbour
//! advertisements, rtnetlink, the dual-stack health listener): created
//! close-on-exec and owned, options set with their errors kept.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

pub fn socket(domain: i32, kind: i32, proto: i32) -> io::Result<OwnedFd> {
    // SAFETY: socket takes no pointer.
    let fd = unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socket succeeded, so `fd` is a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// setsockopt with a value of type `T` (an int, a timeval…).
pub fn set<T>(fd: &OwnedFd, level: i32, opt: i32, value: &T) -> io::Result<()> {
    // SAFETY: `value` is a live &T passed with size_of::<T>(), so the kernel reads within it; `fd`
    // is open (borrowed from its owner).
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
