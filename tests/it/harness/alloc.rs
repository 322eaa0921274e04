//! The test binary's global allocator: the system's, noting the largest
//! single allocation each thread makes, for the tests that bound a
//! decoder's allocations ([`reset_max_alloc`], then [`max_alloc`] on the
//! same thread).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct TrackingAlloc;

thread_local! {
    static MAX_ALLOC: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for TrackingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = MAX_ALLOC.try_with(|m| m.set(m.get().max(layout.size())));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = MAX_ALLOC.try_with(|m| m.set(m.get().max(new_size)));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: TrackingAlloc = TrackingAlloc;

/// Starts a new measurement on this thread.
pub fn reset_max_alloc() {
    MAX_ALLOC.with(|m| m.set(0));
}

/// The largest single allocation this thread made since [`reset_max_alloc`].
pub fn max_alloc() -> usize {
    MAX_ALLOC.with(|m| m.get())
}
