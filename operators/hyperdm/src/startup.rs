//! Process settings for CPU training and sampling, made once at start-up.
//!
//! Two costs showed up in perf profiles of a HyperDM training update that
//! have nothing to do with the arithmetic:
//! - **Page faults.** An update allocates and frees the same few-megabyte
//!   tensors (activations, gradients, the hyper-network's `[K, P]` outputs)
//!   thousands of times. glibc's defaults hand such blocks back to the kernel
//!   (mmap above a sliding threshold, heap trimming above 128 KiB), so each
//!   update faulted its pages in again: 11% of an update, with the TLB
//!   shootdowns they cause. [`keep_freed_memory`] keeps them for reuse; the
//!   peak footprint is unchanged.
//! - **Thread-count lookups.** candle asks for its thread count on every
//!   matmul. Unless `RAYON_NUM_THREADS` is set, the answer comes from
//!   `num_cpus::get_physical`, which parses `/proc/cpuinfo` each time: 6.5%
//!   of an update. [`pin_thread_count`] sets the variable to candle's own
//!   answer, so the count is unchanged and looked up for free.
//!
//! These are the workspace's only `unsafe` blocks (the lint is `deny`, not
//! `forbid`, for them).

/// Largest block served from the heap instead of its own mmap. glibc
/// refuses more than half its 64 MiB heap size; larger tensors stay mmapped.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: i32 = 32 << 20;

/// Free memory at the top of the heap kept rather than returned.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: i32 = 1 << 30;

/// Both settings. Call first thing in `main`, before any thread starts.
pub fn prepare() {
    keep_freed_memory();
    pin_thread_count();
}

/// Returns whether the allocator took the settings (always false off glibc,
/// where this does nothing).
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt changes two allocator parameters. It takes plain
        // integers, touches no memory of ours and may be called at any time
        // (glibc takes the arena lock).
        #[allow(unsafe_code)]
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Sets `RAYON_NUM_THREADS` to the count candle would pick, unless the user
/// set it. Must run before any other thread exists.
fn pin_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let threads = candle_core::utils::get_num_threads();
        // SAFETY: `prepare` is documented to run first in `main`, before any
        // other thread exists, so nothing can read the environment while it
        // changes.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_accepts_the_allocator_settings() {
        assert!(super::keep_freed_memory());
    }
}
