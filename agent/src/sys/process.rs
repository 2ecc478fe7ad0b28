//! Process-wide calls: `setns(2)` into a network namespace and the effective user id.

use std::io;
use std::os::fd::AsFd;

/// Moves the calling thread into the network namespace `ns` (an open `/run/netns/NAME` or
/// `/proc/PID/ns/net`). EINVAL: not a network namespace; EPERM: needs CAP_SYS_ADMIN.
pub fn enter_network_namespace(ns: impl AsFd) -> io::Result<()> {
    nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
}

/// The effective user id of the process.
pub fn effective_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_is_not_a_namespace_is_refused() {
        let not_ns = std::fs::File::open("/proc/self/status").unwrap();
        let err = enter_network_namespace(&not_ns).unwrap_err();
        // EINVAL as root, EPERM without CAP_SYS_ADMIN: never success.
        assert!(
            matches!(err.raw_os_error(), Some(libc::EINVAL) | Some(libc::EPERM)),
            "{err}"
        );
    }

    #[test]
    fn entering_the_current_namespace_from_a_scratch_thread_works_as_root() {
        if effective_uid() != 0 {
            panic!("this test needs root (setns into a network namespace)");
        }
        std::thread::spawn(|| {
            let ns = std::fs::File::open("/proc/thread-self/ns/net").unwrap();
            enter_network_namespace(&ns).unwrap();
        })
        .join()
        .unwrap();
    }
}
