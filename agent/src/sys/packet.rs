//! `AF_PACKET` calls: bind to an interface, `recvfrom`/`sendto` with a `sockaddr_ll`, the bound
//! ifindex (`getsockname`) and `PACKET_STATISTICS`. Sockets come from [`super::socket::socket`].

use super::cvt;
use super::socket::getsockopt_bytes;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

const PACKET_STATISTICS: i32 = 6;

/// An all-zero `sockaddr_ll` with the family set.
fn sockaddr_ll() -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as libc::c_ushort;
    sll
}

const SLL_LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;

/// Binds a packet socket to `ifindex` for frames of `protocol` (host order: `ETH_P_ALL`, ...).
pub fn bind(fd: BorrowedFd<'_>, ifindex: u32, protocol: u16) -> io::Result<()> {
    let mut sll = sockaddr_ll();
    sll.sll_protocol = protocol.to_be();
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: `sll` is a valid sockaddr_ll and the length given is its size.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            SLL_LEN,
        )
    })?;
    Ok(())
}

/// Receives one frame into `buf` with `flags`: (length, `sll_pkttype`).
pub fn recv_from(fd: BorrowedFd<'_>, buf: &mut [u8], flags: i32) -> io::Result<(usize, u8)> {
    let mut sll = sockaddr_ll();
    let mut len = SLL_LEN;
    // SAFETY: `buf` is valid for writes of its length; `sll`/`len` describe a writable
    // sockaddr_ll the kernel fills in (it never writes more than `len`).
    let n = cvt(unsafe {
        libc::recvfrom(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            flags,
            (&mut sll as *mut libc::sockaddr_ll).cast(),
            &mut len,
        )
    })?;
    Ok((n as usize, sll.sll_pkttype))
}

/// Sends `frame` out of `ifindex` to the link-layer address `dest` (6 bytes), `protocol` in host
/// order.
pub fn send_to(
    fd: BorrowedFd<'_>,
    frame: &[u8],
    ifindex: u32,
    protocol: u16,
    dest: [u8; 6],
) -> io::Result<usize> {
    let mut sll = sockaddr_ll();
    sll.sll_protocol = protocol.to_be();
    sll.sll_ifindex = ifindex as i32;
    sll.sll_halen = 6;
    sll.sll_addr[..6].copy_from_slice(&dest);
    // SAFETY: `frame` and `sll` are valid for the lengths given and outlive the call.
    let n = cvt(unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&sll as *const libc::sockaddr_ll).cast(),
            SLL_LEN,
        )
    })?;
    Ok(n as usize)
}

/// The ifindex the socket is bound to now (`getsockname`); -1 once the device was unregistered.
pub fn bound_ifindex(fd: BorrowedFd<'_>) -> io::Result<i32> {
    let mut sll = sockaddr_ll();
    let mut len = SLL_LEN;
    // SAFETY: `sll`/`len` describe a writable sockaddr_ll the kernel fills in up to `len`.
    cvt(unsafe {
        libc::getsockname(
            fd.as_raw_fd(),
            (&mut sll as *mut libc::sockaddr_ll).cast(),
            &mut len,
        )
    })?;
    Ok(sll.sll_ifindex)
}

/// `PACKET_STATISTICS` (`struct tpacket_stats`): (packets, drops) since the last read; reading
/// resets them.
pub fn statistics(fd: BorrowedFd<'_>) -> io::Result<(u32, u32)> {
    let mut raw = [0u8; 8];
    getsockopt_bytes(fd, libc::SOL_PACKET, PACKET_STATISTICS, &mut raw)?;
    let packets = u32::from_ne_bytes([raw[0], raw[1], raw[2], raw[3]]);
    let drops = u32::from_ne_bytes([raw[4], raw[5], raw[6], raw[7]]);
    Ok((packets, drops))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::socket::{attach_filter, socket};
    use std::os::fd::AsFd;

    #[test]
    fn a_packet_socket_binds_reports_its_ifindex_and_fails_cleanly_on_a_down_link() {
        assert_eq!(
            crate::sys::process::effective_uid(),
            0,
            "this test needs root (AF_PACKET in a fresh network namespace)"
        );
        // A scratch thread in a new network namespace whose only link, lo (ifindex 1), is down.
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
            let fd = socket(libc::AF_PACKET, libc::SOCK_RAW, 0).expect("packet socket");
            let accept_nothing = [libc::sock_filter {
                code: 0x06, // BPF_RET | BPF_K
                jt: 0,
                jf: 0,
                k: 0,
            }];
            attach_filter(fd.as_fd(), &accept_nothing).unwrap();
            bind(fd.as_fd(), 1, 0x0003).unwrap();
            assert_eq!(bound_ifindex(fd.as_fd()).unwrap(), 1);
            assert_eq!(statistics(fd.as_fd()).unwrap(), (0, 0));
            let mut buf = [0u8; 64];
            // Bound to a down link: ENETDOWN is reported once, then nothing is queued.
            let err = recv_from(fd.as_fd(), &mut buf, libc::MSG_DONTWAIT).unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::ENETDOWN), "{err}");
            let err = recv_from(fd.as_fd(), &mut buf, libc::MSG_DONTWAIT).unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EAGAIN), "{err}");
            let err = send_to(fd.as_fd(), &[0u8; 60], 1, 0x0806, [0xff; 6]).unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::ENETDOWN), "{err}");
            // No such interface: a clear errno, nothing half-done.
            let err = bind(fd.as_fd(), 999_999, 0x0003).unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::ENODEV), "{err}");
        })
        .join()
        .unwrap();
    }
}
