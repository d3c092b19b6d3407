//! How full the ring buffer is: the bytes the kernel wrote that the daemon has not read.
//!
//! aya's `RingBuf` keeps its positions to itself, so this maps the ring's two position
//! pages a second time, read-only (the kernel allows any read-only mapping of a ring
//! buffer; only the consumer page may be writable): the consumer position on the first
//! page, the producer's on the second. Their difference is the backlog. Reading it costs
//! two loads, done once a second by the daemon, never per record.
use std::{
    os::fd::RawFd,
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

#[derive(Debug)]
pub(crate) struct RingFill {
    pages: NonNull<libc::c_void>,
    page: usize,
}

// SAFETY: the mapping is read-only, owned by this value alone, and only read through
// atomic loads.
unsafe impl Send for RingFill {}
// SAFETY: as above: shared reads are atomic loads.
unsafe impl Sync for RingFill {}

impl RingFill {
    /// Maps the position pages of the ring buffer map `fd`.
    pub(crate) fn map(fd: RawFd) -> std::io::Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .map_err(|_| std::io::Error::other("page size unknown"))?;
        // SAFETY: a new shared read-only mapping of two pages of a ring buffer map; the
        // kernel checks the offset and length against the map, and the mapping keeps the
        // map alive on its own.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * page,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let pages = NonNull::new(addr).ok_or_else(|| std::io::Error::other("mmap gave null"))?;
        Ok(Self { pages, page })
    }

    /// Bytes written by the programs and not yet consumed (records and their headers).
    pub(crate) fn used_bytes(&self) -> u64 {
        let consumer = self.pages.as_ptr().cast::<u64>();
        // SAFETY: both pages are mapped for as long as `self` lives; each position is an
        // aligned u64 at the start of its page, which the kernel updates atomically.
        let (consumer, producer) = unsafe {
            (
                AtomicU64::from_ptr(consumer).load(Ordering::Acquire),
                AtomicU64::from_ptr(consumer.byte_add(self.page)).load(Ordering::Acquire),
            )
        };
        producer.saturating_sub(consumer)
    }
}

impl Drop for RingFill {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`, never used after this.
        unsafe { libc::munmap(self.pages.as_ptr(), 2 * self.page) };
    }
}
