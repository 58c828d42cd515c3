//! A global allocator that counts heap use of the bench process, so that a
//! section can report the peak memory and the allocations of in-process
//! code.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

/// Wraps the system allocator with three counters.
pub struct CountingAllocator;

static LIVE_BYTES: AtomicU64 = AtomicU64::new(0);
static PEAK_BYTES: AtomicU64 = AtomicU64::new(0);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

fn record_alloc(size: usize) {
    ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    let live = LIVE_BYTES.fetch_add(size as u64, Ordering::Relaxed) + size as u64;
    PEAK_BYTES.fetch_max(live, Ordering::Relaxed);
}

fn record_dealloc(size: usize) {
    LIVE_BYTES.fetch_sub(size as u64, Ordering::Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged, so `System`'s guarantees carry over; the counters only read
// sizes.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract for `layout`.
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() {
            record_alloc(layout.size());
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: `pointer` was allocated by `System` with `layout`, as the caller guarantees.
        unsafe { System.dealloc(pointer, layout) };
        record_dealloc(layout.size());
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let pointer = unsafe { System.alloc_zeroed(layout) };
        if !pointer.is_null() {
            record_alloc(layout.size());
        }
        pointer
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract.
        let moved = unsafe { System.realloc(pointer, layout, new_size) };
        if !moved.is_null() {
            record_dealloc(layout.size());
            record_alloc(new_size);
        }
        moved
    }
}

/// Heap use since the last [`Snapshot::start`].
pub struct Snapshot {
    live_at_start: u64,
    allocations_at_start: u64,
}

impl Snapshot {
    /// Starts a measurement: the peak restarts from the bytes live now.
    pub fn start() -> Snapshot {
        let live = LIVE_BYTES.load(Ordering::Relaxed);
        PEAK_BYTES.store(live, Ordering::Relaxed);
        Snapshot {
            live_at_start: live,
            allocations_at_start: ALLOCATIONS.load(Ordering::Relaxed),
        }
    }

    /// Peak heap bytes above those live at the start.
    pub fn peak_growth(&self) -> u64 {
        PEAK_BYTES
            .load(Ordering::Relaxed)
            .saturating_sub(self.live_at_start)
    }

    /// Heap bytes still live above those at the start.
    pub fn live_growth(&self) -> u64 {
        LIVE_BYTES
            .load(Ordering::Relaxed)
            .saturating_sub(self.live_at_start)
    }

    pub fn allocations(&self) -> u64 {
        ALLOCATIONS.load(Ordering::Relaxed) - self.allocations_at_start
    }
}
