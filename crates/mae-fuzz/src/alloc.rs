//! A counting global allocator: the live bytes of the whole process and their peak since the
//! start of the current case.
//!
//! The counters are process-wide (a reader may allocate on threads of its own), so cases must
//! run one at a time: [`crate::harness`] holds a lock around each case, and a test binary that
//! runs several targets serialises them (tests/smoke.rs). Install it in each binary with
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOC: mae_fuzz::CountingAlloc = mae_fuzz::CountingAlloc;
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The system allocator, counting live bytes and their peak.
pub struct CountingAlloc;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// The largest single allocation since the start of the case.
static LARGEST: AtomicUsize = AtomicUsize::new(0);
/// Every byte ever allocated; only ever grows (tells whether the allocator is installed).
static TOTAL: AtomicUsize = AtomicUsize::new(0);

fn added(size: usize) {
    let live = LIVE.fetch_add(size, Ordering::Relaxed) + size;
    PEAK.fetch_max(live, Ordering::Relaxed);
    LARGEST.fetch_max(size, Ordering::Relaxed);
    TOTAL.fetch_add(size, Ordering::Relaxed);
}

fn removed(size: usize) {
    LIVE.fetch_sub(size, Ordering::Relaxed);
    let _ = CHARGED.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| Some(c.saturating_sub(size)));
}

/// Refuses a request when the bytes charged to the case would pass the hard cap; else charges
/// `charge` bytes for it.
fn refused(charge: usize) -> bool {
    if CHARGED.load(Ordering::Relaxed).saturating_add(charge) > HARD_CAP.load(Ordering::Relaxed) {
        return true;
    }
    CHARGED.fetch_add(charge, Ordering::Relaxed);
    false
}

// SAFETY: every call is forwarded unchanged to `System`; the counters are plain atomics and
// allocate nothing.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if refused(layout.size()) {
            return std::ptr::null_mut();
        }
        let p = System.alloc(layout);
        if !p.is_null() {
            added(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if refused(layout.size() / ZEROED_DISCOUNT) {
            return std::ptr::null_mut();
        }
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            added(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        removed(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if refused(new_size) {
            return std::ptr::null_mut();
        }
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            // Counted as a new block then the old one freed: realloc may copy, so both are
            // live for a moment.
            added(new_size);
            removed(layout.size());
        }
        p
    }
}

/// Live bytes now.
pub fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// Starts measuring a case: resets the peak to the live bytes now and returns them (the
/// baseline for [`peak_since`]).
pub fn start_case() -> usize {
    let live = LIVE.load(Ordering::Relaxed);
    PEAK.store(live, Ordering::Relaxed);
    LARGEST.store(0, Ordering::Relaxed);
    CHARGED.store(0, Ordering::Relaxed);
    live
}

/// The largest single allocation since [`start_case`].
pub fn largest() -> usize {
    LARGEST.load(Ordering::Relaxed)
}

/// The most bytes live at once since [`start_case`] returned `baseline`, above that baseline.
pub fn peak_since(baseline: usize) -> usize {
    PEAK.load(Ordering::Relaxed).saturating_sub(baseline)
}

/// Whether [`CountingAlloc`] is this process's global allocator: an allocation must move the
/// counters.
pub fn is_installed() -> bool {
    let before = TOTAL.load(Ordering::Relaxed);
    let probe = std::hint::black_box(vec![0u8; 64]);
    drop(probe);
    TOTAL.load(Ordering::Relaxed) > before
}

/// Bytes charged to a case beyond which allocations are refused (which ends the process, as
/// any failed allocation does): a guard for the machine, far above every target's limit.
static HARD_CAP: AtomicUsize = AtomicUsize::new(usize::MAX);

/// A large zeroed block is fresh pages from the kernel, which take memory only once written:
/// against the hard cap it counts for this fraction of its size (so that a reader asking for
/// 4 GiB of zeros and failing after a few KiB is reported as over-allocation, not aborted).
/// The peak counts it in full.
const ZEROED_DISCOUNT: usize = 8;

/// Sets the bytes a case may be charged before allocations are refused (`usize::MAX`: none).
pub fn set_hard_cap(bytes: usize) {
    HARD_CAP.store(bytes, Ordering::Relaxed);
}

/// Bytes allocated since the start of the case, the big zeroed blocks discounted, never below
/// zero (frees of blocks from before the case, or of discounted ones, only make it lenient).
static CHARGED: AtomicUsize = AtomicUsize::new(0);
