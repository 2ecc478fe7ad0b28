//! Memory the agent maps itself: [`ReleasableBuffer`], a zeroed anonymous mapping whose leading
//! pages can be handed back to the kernel while the rest is still in use, and [`trim_heap`],
//! which returns the allocator's free memory to the kernel.
//!
//! Both exist for iptables-legacy: `IPT_SO_GET_ENTRIES` copies a whole table in one call (50 MB
//! for 10,000 kube-proxy Services), and the decoder reads it once, front to back. Giving back each
//! page once it is decoded keeps the blob and the rules decoded from it from being resident
//! together.

use super::cvt;
use std::io;
use std::ptr::NonNull;

/// The page size (4096 when the kernel does not say).
fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size)
        .ok()
        .filter(|s| *s > 0)
        .unwrap_or(4096)
}

/// A zeroed, private, anonymous mapping of a fixed length. [`ReleasableBuffer::release_before`]
/// gives pages at its front back to the kernel: they stay mapped and read as zeros afterwards, so
/// no access is ever out of bounds, only stale.
pub struct ReleasableBuffer {
    ptr: NonNull<u8>,
    len: usize,
    /// Bytes at the front already handed back (a multiple of the page size).
    released: usize,
    page: usize,
}

// SAFETY: the buffer owns its mapping exclusively; access goes through `&self`/`&mut self`.
unsafe impl Send for ReleasableBuffer {}
// SAFETY: shared access only reads.
unsafe impl Sync for ReleasableBuffer {}

impl ReleasableBuffer {
    /// Maps `len` zeroed bytes (at least one page is mapped for `len == 0`).
    pub fn new(len: usize) -> io::Result<ReleasableBuffer> {
        let page = page_size();
        let map_len = len.max(1);
        // SAFETY: a fresh anonymous private mapping; the kernel picks the address. MAP_FAILED is
        // checked before the pointer is used.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(addr.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned a null mapping"))?;
        Ok(ReleasableBuffer {
            ptr,
            len,
            released: 0,
            page,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping is `len` bytes (at least), readable, initialised (zero-filled or
        // written), and lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` makes this the only borrow.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// Gives every whole page before `offset` back to the kernel; they read as zeros from now
    /// on. Bytes from `offset` on are untouched. Calls that would release nothing new are free.
    pub fn release_before(&mut self, offset: usize) {
        let upto = (offset.min(self.len) / self.page) * self.page;
        if upto <= self.released {
            return;
        }
        // SAFETY: `[released, upto)` lies inside the mapping and is page-aligned (the mapping
        // starts on a page); `&mut self` guarantees no slice of the buffer is borrowed. On a
        // private anonymous mapping MADV_DONTNEED only drops the pages' contents.
        let rc = unsafe {
            libc::madvise(
                self.ptr.as_ptr().add(self.released).cast(),
                upto - self.released,
                libc::MADV_DONTNEED,
            )
        };
        // A refusal only means the memory stays resident until the buffer is dropped.
        if cvt(rc).is_ok() {
            self.released = upto;
        }
    }
}

impl Drop for ReleasableBuffer {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`; nothing borrows it any more.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len.max(1));
        }
    }
}

/// Hands the allocator's free memory back to the kernel (glibc's `malloc_trim`). Called after a
/// large, short-lived decode so that the agent's resident memory follows what it holds, not its
/// peak.
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resident_pages(buffer: &ReleasableBuffer) -> usize {
        let page = page_size();
        let pages = buffer.len().div_ceil(page);
        let mut vec = vec![0u8; pages];
        // SAFETY: `vec` has one byte per page of the mapping, as mincore requires.
        let rc = unsafe {
            libc::mincore(
                buffer.ptr.as_ptr().cast(),
                buffer.len(),
                vec.as_mut_ptr().cast(),
            )
        };
        assert_eq!(rc, 0, "mincore: {}", io::Error::last_os_error());
        vec.iter().filter(|b| *b & 1 == 1).count()
    }

    #[test]
    fn released_pages_leave_memory_and_read_as_zeros_the_rest_is_kept() {
        let page = page_size();
        let mut buffer = ReleasableBuffer::new(8 * page + 100).unwrap();
        buffer.as_mut_slice().fill(0xab);
        assert_eq!(resident_pages(&buffer), 9);
        // Not page-aligned: only the three whole pages before it go.
        buffer.release_before(3 * page + 17);
        assert_eq!(resident_pages(&buffer), 6);
        let bytes = buffer.as_slice();
        assert!(bytes[..3 * page].iter().all(|b| *b == 0));
        assert!(bytes[3 * page..].iter().all(|b| *b == 0xab));
        // Releasing less than before changes nothing; past the end releases whole pages only.
        buffer.release_before(page);
        buffer.release_before(usize::MAX);
        assert_eq!(buffer.as_slice()[8 * page..], [0xab; 100]);
    }

    #[test]
    fn an_empty_buffer_is_valid() {
        let mut buffer = ReleasableBuffer::new(0).unwrap();
        assert!(buffer.is_empty());
        assert!(buffer.as_slice().is_empty());
        buffer.release_before(10);
        trim_heap();
    }
}
