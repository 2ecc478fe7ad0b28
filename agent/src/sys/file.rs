//! Advisory file locks (`flock(2)`) on open files: the xtables lock iptables uses, and the
//! journal's lock between its writers.

use super::cvt;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// How a lock is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockKind {
    Shared,
    Exclusive,
}

/// Takes `kind` of lock on `fd`, waiting for it (`blocking`) or failing at once with
/// `WouldBlock`. A wait interrupted by a signal is retried.
pub fn flock(fd: BorrowedFd<'_>, kind: LockKind, blocking: bool) -> io::Result<()> {
    let mut op = match kind {
        LockKind::Shared => libc::LOCK_SH,
        LockKind::Exclusive => libc::LOCK_EX,
    };
    if !blocking {
        op |= libc::LOCK_NB;
    }
    loop {
        // SAFETY: `fd` is an open descriptor borrowed for the duration of the call.
        match cvt(unsafe { libc::flock(fd.as_raw_fd(), op) }) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other.map(|_| ()),
        }
    }
}

/// Releases a lock taken with [`flock`] (closing the file releases it too).
pub fn unlock(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: `fd` is an open descriptor borrowed for the duration of the call.
    cvt(unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_UN) }).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn an_exclusive_lock_keeps_a_second_one_out_until_released() {
        let path = std::env::temp_dir().join(format!("netmend-flock-{}", std::process::id()));
        let a = std::fs::File::create(&path).unwrap();
        let b = std::fs::File::open(&path).unwrap();
        flock(a.as_fd(), LockKind::Exclusive, false).unwrap();
        let err = flock(b.as_fd(), LockKind::Shared, false).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        unlock(a.as_fd()).unwrap();
        flock(b.as_fd(), LockKind::Shared, false).unwrap();
        let _ = std::fs::remove_file(path);
    }
}
