//! Socket creation and the generic socket calls: netlink bind/send/recv, integer and timeout
//! socket options, raw `getsockopt` buffers (x_tables GET_INFO/GET_ENTRIES) and classic BPF
//! filters.

use super::cvt;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// `socket(2)` with `SOCK_CLOEXEC` added; the descriptor is owned from the start.
pub fn socket(domain: i32, ty: i32, protocol: i32) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) takes no pointers; the result is checked before use.
    let fd = cvt(unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, protocol) })?;
    // SAFETY: `fd` was just returned by socket(2), is open and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A `sockaddr_nl` for the kernel (pid 0) with no groups.
fn kernel_netlink_address() -> libc::sockaddr_nl {
    // SAFETY: sockaddr_nl is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    addr
}

/// A netlink socket of `protocol` (`NETLINK_ROUTE`, `NETLINK_NETFILTER`, ...), bound with a port id
/// chosen by the kernel.
pub fn netlink_socket(protocol: i32) -> io::Result<OwnedFd> {
    let fd = socket(libc::AF_NETLINK, libc::SOCK_RAW, protocol)?;
    let addr = kernel_netlink_address();
    // SAFETY: `addr` is a valid sockaddr_nl and the length given is its size.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    })?;
    Ok(fd)
}

/// Sends one datagram to the kernel end of a netlink socket.
pub fn netlink_send(fd: BorrowedFd<'_>, bytes: &[u8]) -> io::Result<usize> {
    let addr = kernel_netlink_address();
    // SAFETY: `bytes` and `addr` are valid for the lengths given and outlive the call.
    let sent = cvt(unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            bytes.as_ptr().cast(),
            bytes.len(),
            0,
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    })?;
    Ok(sent as usize)
}

/// `recv(2)` into `buf` with `flags` (0 or `MSG_DONTWAIT`); one call, EINTR is the caller's.
pub fn recv(fd: BorrowedFd<'_>, buf: &mut [u8], flags: i32) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the duration of the call.
    let n = cvt(unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), flags) })?;
    Ok(n as usize)
}

/// `setsockopt(2)` with a value passed by reference.
fn setsockopt<T>(fd: BorrowedFd<'_>, level: i32, name: i32, value: &T) -> io::Result<()> {
    // SAFETY: `value` points at a live `T` of exactly the length given; the kernel copies it.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// An `int` socket option: `SO_RCVBUF`, `SO_RCVBUFFORCE`, `NETLINK_ADD_MEMBERSHIP`,
/// `NETLINK_EXT_ACK`, ...
pub fn set_int_option(fd: BorrowedFd<'_>, level: i32, name: i32, value: i32) -> io::Result<()> {
    setsockopt(fd, level, name, &value)
}

/// `SO_RCVTIMEO`: a blocking receive fails with EAGAIN after `timeout` (whole seconds and
/// microseconds).
pub fn set_receive_timeout(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<()> {
    let value = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &value)
}

/// `SO_ATTACH_FILTER`: attaches a classic BPF program (the kernel copies it).
pub fn attach_filter(fd: BorrowedFd<'_>, program: &[libc::sock_filter]) -> io::Result<()> {
    let len = u16::try_from(program.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "BPF program too long"))?;
    let prog = libc::sock_fprog {
        len,
        // The kernel only reads through this pointer.
        filter: program.as_ptr().cast_mut(),
    };
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &prog)
}

/// `getsockopt(2)` into a byte buffer whose leading bytes may carry a request (x_tables
/// `IPT_SO_GET_INFO`/`GET_ENTRIES` put the table name there). Returns the length the kernel wrote.
pub fn getsockopt_bytes(
    fd: BorrowedFd<'_>,
    level: i32,
    name: i32,
    buf: &mut [u8],
) -> io::Result<usize> {
    let mut len = libc::socklen_t::try_from(buf.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "option buffer too large"))?;
    // SAFETY: `buf` is valid for reads and writes of `len` bytes; the kernel updates `len`.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    })?;
    Ok(len as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_netlink_socket_round_trips_a_request_through_the_kernel() {
        assert_eq!(
            super::super::process::effective_uid(),
            0,
            "this test needs root (it dumps links in a fresh network namespace)"
        );
        // A scratch thread in its own, new network namespace: only its loopback is seen.
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
            dump_links_in_this_namespace();
        })
        .join()
        .unwrap();
    }

    fn dump_links_in_this_namespace() {
        let fd = netlink_socket(libc::NETLINK_ROUTE).expect("netlink socket");
        set_int_option(fd.as_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, 1 << 16).unwrap();
        set_receive_timeout(fd.as_fd(), Duration::from_secs(2)).unwrap();
        // nlmsghdr (16) + ifinfomsg (16): RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP.
        let mut req = vec![0u8; 32];
        req[0..4].copy_from_slice(&32u32.to_ne_bytes());
        req[4..6].copy_from_slice(&libc::RTM_GETLINK.to_ne_bytes());
        let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
        req[6..8].copy_from_slice(&flags.to_ne_bytes());
        req[8..12].copy_from_slice(&7u32.to_ne_bytes());
        assert_eq!(netlink_send(fd.as_fd(), &req).unwrap(), 32);
        let mut buf = vec![0u8; 32 * 1024];
        let n = recv(fd.as_fd(), &mut buf, 0).unwrap();
        assert!(n >= 16, "reply of {n} bytes");
        assert_eq!(u32::from_ne_bytes(buf[8..12].try_into().unwrap()), 7);
    }

    #[test]
    fn errors_are_the_kernel_errno() {
        let err = socket(libc::AF_NETLINK, libc::SOCK_RAW, 9999).unwrap_err();
        assert!(err.raw_os_error().is_some(), "{err}");
        let fd = netlink_socket(libc::NETLINK_ROUTE).unwrap();
        let mut buf = [0u8; 4];
        let err = getsockopt_bytes(fd.as_fd(), libc::SOL_SOCKET, -1, &mut buf).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOPROTOOPT));
        // Nothing queued: a non-blocking read says EAGAIN.
        let err = recv(fd.as_fd(), &mut buf, libc::MSG_DONTWAIT).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EAGAIN));
    }
}
