//! A global allocator for the broker binary that keeps a malicious length prefix from aborting
//! the process.
//!
//! The `kafka-protocol` crate decodes an array by first calling `Vec::with_capacity(n)` with
//! the element count read off the wire (kafka-protocol-rs pull requests 152, 161 and 200 are
//! open about it). A 20-byte request can announce two billion elements; the allocation of
//! hundreds of GiB fails and Rust aborts the process before the decoder notices that the
//! bytes are missing. [`LazyLargeAllocations`] serves every allocation of 1 GiB or more with
//! an anonymous `MAP_NORESERVE` mapping: the kernel reserves address space, not memory, so
//! the request fails to decode and the untouched mapping is returned, costing nothing. Smaller
//! allocations go to the system allocator unchanged.

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations at least this large are mapped lazily. No legitimate request decodes into a
/// single buffer this large: frames are capped at `socket_request_max_bytes` (100 MiB).
pub const LAZY_ALLOCATION_BYTES_MIN: usize = 1 << 30;

/// See the module docs. Install with `#[global_allocator]` in a binary.
#[derive(Debug, Default, Clone, Copy)]
pub struct LazyLargeAllocations;

const PAGE_BYTES: usize = 4096;

fn is_lazy(layout: &Layout) -> bool {
    layout.size() >= LAZY_ALLOCATION_BYTES_MIN && layout.align() <= PAGE_BYTES
}

// SAFETY: every allocation is served either by `System` (and returned to it) or by an
// anonymous mapping of at least `layout.size()` bytes, page aligned, which satisfies any
// alignment up to a page; `is_lazy` routes each layout the same way on alloc and dealloc.
unsafe impl GlobalAlloc for LazyLargeAllocations {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !is_lazy(&layout) {
            // SAFETY: forwarded with the caller's guarantees.
            return unsafe { System.alloc(layout) };
        }
        // SAFETY: an anonymous private mapping; no file or existing memory is involved.
        let pointer = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                layout.size(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if pointer == libc::MAP_FAILED {
            std::ptr::null_mut()
        } else {
            pointer.cast()
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !is_lazy(&layout) {
            // SAFETY: forwarded with the caller's guarantees.
            return unsafe { System.alloc_zeroed(layout) };
        }
        // SAFETY: as `alloc`; anonymous mappings are zero-filled.
        unsafe { self.alloc(layout) }
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        if !is_lazy(&layout) {
            // SAFETY: the pointer came from `System` with this layout.
            return unsafe { System.dealloc(pointer, layout) };
        }
        // SAFETY: the pointer is a mapping of `layout.size()` bytes made by `alloc`.
        unsafe {
            libc::munmap(pointer.cast(), layout.size());
        }
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees a valid layout for the new size.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if !is_lazy(&layout) && !is_lazy(&new_layout) {
            // SAFETY: forwarded with the caller's guarantees.
            return unsafe { System.realloc(pointer, layout, new_size) };
        }
        // SAFETY: a fresh allocation, the overlap copied, the old one released with its layout.
        unsafe {
            let moved = self.alloc(new_layout);
            if !moved.is_null() {
                std::ptr::copy_nonoverlapping(pointer, moved, layout.size().min(new_size));
                self.dealloc(pointer, layout);
            }
            moved
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_allocations_cost_only_address_space() {
        let allocator = LazyLargeAllocations;
        let layout = Layout::from_size_align(512 << 30, 8).unwrap();
        // SAFETY: the layout is non-zero; the memory is written once and released.
        unsafe {
            let pointer = allocator.alloc(layout);
            assert!(!pointer.is_null());
            *pointer = 7;
            let pointer = allocator.realloc(pointer, layout, 16);
            assert_eq!(*pointer, 7);
            allocator.dealloc(pointer, Layout::from_size_align(16, 8).unwrap());
        }
    }
}
