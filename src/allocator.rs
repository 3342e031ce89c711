//! [`Allocator`]: mimalloc, told to keep the memory it frees, for programs that run the model on
//! the CPU.
//!
//! Every pass of the network allocates tensors of megabytes (a forward pass at 8 x 256 produces
//! 262 MB of logits). glibc's `malloc` serves such sizes with `mmap` and gives them back with
//! `munmap`, so each pass faults in fresh zeroed pages: 10 % of a burn-flex forward pass was in
//! the kernel's page-fault path (perf, docs/benchmarks.md). mimalloc with purging off reuses the
//! pages instead (forward 8 x 256: 1,090 ms with glibc's allocator, 873 ms with this one, same
//! binary otherwise). The memory a program has held stays held until it exits: the price, except
//! around a model's load ([`Allocator::purging`]), whose conversions free gigabytes that the
//! passes after it never ask for again: there freed memory goes back to the system as it is
//! freed, and what the threads still hold once it ends.
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
        set_purge_delay(-1);
    }
}

fn set_purge_delay(milliseconds: std::os::raw::c_long) {
    // SAFETY: sets one integer option; it neither allocates nor needs initialisation.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, milliseconds) };
}

/// Gives back the free memory of every thread of rayon's pool and of the caller's.
fn collect_everywhere() {
    // SAFETY: `mi_collect` frees what mimalloc holds unused; it is thread-safe.
    rayon::broadcast(|_| unsafe { libmimalloc_sys::mi_collect(true) });
    // SAFETY: as above.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

impl Allocator {
    /// Runs `f` (a model's load: conversions on load free as much as they keep) with purging on,
    /// freed memory given back to the system at once, then gives back what the pool's threads and
    /// the caller still hold and turns purging off again for the passes that follow. Where the
    /// program's allocator is another, `f` runs as it is (nothing of mimalloc's to give back).
    ///
    /// ```no_run
    /// # fn load() -> Vec<u8> { Vec::new() }
    /// let model = mdm::Allocator::purging(load);
    /// ```
    pub fn purging<R>(f: impl FnOnce() -> R) -> R {
        tune();
        set_purge_delay(0);
        let out = f();
        collect_everywhere();
        set_purge_delay(-1);
        out
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
        // on while a load runs, off again after it
        let during = super::Allocator::purging(|| {
            // SAFETY: as above.
            unsafe { libmimalloc_sys::mi_option_get(super::PURGE_DELAY) }
        });
        assert_eq!(during, 0);
        // SAFETY: as above.
        let after = unsafe { libmimalloc_sys::mi_option_get(super::PURGE_DELAY) };
        assert_eq!(after, -1);
    }
}
