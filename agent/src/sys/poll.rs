//! The one `poll(2)` helper: wait until any of a few descriptors is readable, at most a timeout.

use nix::poll::{PollFd, PollFlags, PollTimeout};
use std::io;
use std::os::fd::BorrowedFd;
use std::time::Duration;

/// Waits up to `timeout` (whole milliseconds, truncated; zero does not block) for `POLLIN` on any
/// of `fds`. Returns, per descriptor in order, whether it has an event (readable, error or hang
/// up). EINTR counts as a wakeup with nothing ready; spurious wakeups are the callers' to absorb.
pub fn wait_readable(fds: &[BorrowedFd<'_>], timeout: Duration) -> io::Result<Vec<bool>> {
    let mut pfds: Vec<PollFd<'_>> = fds
        .iter()
        .map(|fd| PollFd::new(*fd, PollFlags::POLLIN))
        .collect();
    let millis = timeout.as_millis().min(i32::MAX as u128) as i32;
    let timeout = PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX);
    match nix::poll::poll(&mut pfds, timeout) {
        Ok(_) => Ok(pfds
            .iter()
            .map(|p| p.revents().is_some_and(|r| !r.is_empty()))
            .collect()),
        Err(nix::errno::Errno::EINTR) => Ok(vec![false; fds.len()]),
        Err(errno) => Err(io::Error::from(errno)),
    }
}

/// [`wait_readable`] on one descriptor: true when it has an event.
pub fn wait_one(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<bool> {
    Ok(wait_readable(&[fd], timeout)?
        .first()
        .copied()
        .unwrap_or(false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;
    use std::time::Instant;

    #[test]
    fn reports_which_descriptor_is_readable_and_honours_the_timeout() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let (c, _d) = UnixStream::pair().unwrap();
        let started = Instant::now();
        let ready = wait_readable(&[b.as_fd(), c.as_fd()], Duration::from_millis(50)).unwrap();
        assert_eq!(ready, vec![false, false]);
        assert!(
            started.elapsed() >= Duration::from_millis(45),
            "{:?}",
            started.elapsed()
        );
        a.write_all(b"x").unwrap();
        let ready = wait_readable(&[c.as_fd(), b.as_fd()], Duration::from_secs(5)).unwrap();
        assert_eq!(ready, vec![false, true]);
        assert!(wait_one(b.as_fd(), Duration::ZERO).unwrap());
        assert!(!wait_one(c.as_fd(), Duration::ZERO).unwrap());
    }
}
