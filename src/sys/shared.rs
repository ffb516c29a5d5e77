//! Memory shared between processes: an mmap()able BPF map's value, mapped MAP_SHARED so a
//! master and the workers it forks see the same bytes (and a BPF program reads them too).
//!
//! The memory is handed out only as atomics at checked, aligned offsets: other processes
//! and the kernel write it concurrently, and any bit pattern is a valid atomic integer.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64};

const PAGE: usize = 4096;

pub(crate) struct SharedMemory {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping lives as long as the value and is only accessed through atomics, so
// sharing or sending it between threads is as safe as sharing the atomics themselves.
unsafe impl Send for SharedMemory {}
// SAFETY: as above.
unsafe impl Sync for SharedMemory {}

impl SharedMemory {
    /// Maps `len` bytes (rounded up to whole pages) of `fd` read-write and shared.
    pub(crate) fn map(fd: BorrowedFd<'_>, len: usize) -> io::Result<SharedMemory> {
        let len = len.div_ceil(PAGE) * PAGE;
        // SAFETY: a new mapping chosen by the kernel; nothing else refers to that range.
        let mem = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if mem == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(mem as *mut u8).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        Ok(SharedMemory { ptr, len })
    }

    fn at<T>(&self, offset: usize) -> *const T {
        let size = std::mem::size_of::<T>();
        assert!(offset % size == 0 && offset + size <= self.len, "offset {offset} of a {}-byte mapping", self.len);
        // SAFETY: offset + size is within the mapping (checked above).
        unsafe { self.ptr.as_ptr().add(offset) as *const T }
    }

    /// The 32-bit word at `offset` (a multiple of 4 inside the mapping; panics otherwise).
    pub(crate) fn u32_at(&self, offset: usize) -> &AtomicU32 {
        // SAFETY: in bounds and aligned (at() checks; the mapping is page-aligned); every
        // bit pattern is a valid AtomicU32; the mapping outlives the borrow of self.
        unsafe { &*self.at::<AtomicU32>(offset) }
    }

    pub(crate) fn i32_at(&self, offset: usize) -> &AtomicI32 {
        // SAFETY: as in u32_at.
        unsafe { &*self.at::<AtomicI32>(offset) }
    }

    /// The 64-bit word at `offset` (a multiple of 8 inside the mapping; panics otherwise).
    pub(crate) fn u64_at(&self, offset: usize) -> &AtomicU64 {
        // SAFETY: as in u32_at.
        unsafe { &*self.at::<AtomicU64>(offset) }
    }
}

impl Drop for SharedMemory {
    fn drop(&mut self) {
        // SAFETY: the mapping made in map() with this length; no borrow of it outlives self.
        unsafe { libc::munmap(self.ptr.as_ptr() as *mut libc::c_void, self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "offset 6")]
    fn a_misaligned_offset_is_refused() {
        let f = std::fs::OpenOptions::new().read(true).write(true).open("/dev/zero").unwrap();
        let m = SharedMemory::map(std::os::fd::AsFd::as_fd(&f), 64).unwrap();
        m.u32_at(0).store(7, std::sync::atomic::Ordering::Relaxed);
        m.u32_at(6);
    }
}
