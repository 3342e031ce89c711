//! [`Allocator`]: mimalloc, told to keep the memory it frees, for programs that run the model on
//! the CPU.
//!
//! Every pass of the network allocates tensors of megabytes (a forward pass at 8 x 256 produces
//! 262 MB of logits). glibc's `malloc` serves such sizes with `mmap` and gives them back with
//! `munmap`, so each pass faults in fresh zeroed pages: 10 % of a burn-flex forward pass was in
//! the kernel's page-fault path (perf, docs/benchmarks.md). mimalloc with purging off reuses the
//! pages instead (forward 8 x 256: 1,090 ms with glibc's allocator, 873 ms with this one, same
//! binary otherwise). The memory a program has held stays held until it exits: the price.
//!
//! ```no_run
//! #[global_allocator]
//! static ALLOCATOR: mdm::Allocator = mdm::Allocator;
//! ```

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicBool, Ordering};

/// mimalloc with purging of freed memory off (set at the first allocation).
#[derive(Debug, Default, Clone, Copy)]
pub struct Allocator;

static TUNED: AtomicBool = AtomicBool::new(false);

/// `mi_option_purge_delay` in mimalloc 3's `mi_option_e` (`libmimalloc-sys` 0.1.49, pinned in
/// Cargo.toml, builds mimalloc 3): `-1` never purges.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn tune() {
    if !TUNED.swap(true, Ordering::Relaxed) {
        // SAFETY: sets one integer option; it neither allocates nor needs initialisation.
        unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, -1) };
    }
}

// SAFETY: every call is forwarded to mimalloc's own `GlobalAlloc`.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        tune();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        tune();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn purging_is_off_once_the_allocator_has_run() {
        super::tune();
        // SAFETY: reads one integer option.
        let delay = unsafe { libmimalloc_sys::mi_option_get(super::PURGE_DELAY) };
        assert_eq!(delay, -1);
    }
}
