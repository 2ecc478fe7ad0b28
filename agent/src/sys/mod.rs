//! Every system call the agent makes, behind small safe functions. This module owns all of the
//! crate's `unsafe` code (the crate root denies it everywhere else): sockets are `OwnedFd`s from the
//! moment they exist, every call borrows them as `BorrowedFd`, and nothing closes a descriptor by
//! hand. Each `unsafe` block says why it is sound in a `// SAFETY:` comment.
//!
//! - [`socket`]: socket creation, netlink bind/send/recv, socket options (int, timeout, raw
//!   getsockopt buffers such as x_tables GET_INFO/GET_ENTRIES, classic BPF filters);
//! - [`packet`]: `AF_PACKET` bind, `recvfrom`/`sendto` with `sockaddr_ll`, bound ifindex,
//!   `PACKET_STATISTICS`;
//! - [`poll`]: the one `poll(2)` helper;
//! - [`process`]: `setns(2)` into a network namespace, the effective user id;
//! - [`file`]: advisory `flock(2)` locks;
//! - [`memory`]: anonymous mappings whose front pages can be given back while the rest is read
//!   (x_tables entry blobs), and trimming the allocator's free memory.

pub mod file;
pub mod memory;
pub mod packet;
pub mod poll;
pub mod process;
pub mod socket;

use std::io;

/// Turns a libc return value into `io::Result`: negative is the thread's errno.
fn cvt<T: PartialOrd + Default>(rc: T) -> io::Result<T> {
    if rc < T::default() {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}
