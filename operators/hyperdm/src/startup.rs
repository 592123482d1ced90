//! Process settings for CPU training and sampling, made once at start-up.
//!
//! Three costs showed up in profiles and benches of training and sampling
//! that have nothing to do with the arithmetic:
//! - **Page faults.** An update allocates and frees the same few-megabyte
//!   tensors (activations, gradients, the hyper-network's `[K, P]` outputs)
//!   thousands of times. glibc's defaults hand such blocks back to the kernel
//!   (mmap above a sliding threshold, heap trimming above 128 KiB), so each
//!   update faulted its pages in again: 11% of an update, with the TLB
//!   shootdowns they cause. [`keep_freed_memory`] keeps them for reuse; the
//!   peak footprint is unchanged. A NetCDF scan's per-step arrays are the
//!   same case: without it a one-partition NetCDF3 scan ran at less than
//!   half the speed on a VM whose page faults were slow. A `SELECT *` that
//!   holds more than one 64 MiB heap of batches at once needs `TOP_PAD`
//!   as well: without it the scan bench's `SELECT *` ran at 40–50% of the
//!   speed (operators/netcdf/README.md; the bench calls this too). Peak
//!   memory with and without `TOP_PAD`: the demo 246–251 MB either way,
//!   the training and sampling benches within 5 MB, a sort of the whole
//!   bench table 528 MB against 500.
//! - **Thread-count lookups.** candle asks for its thread count on every
//!   matmul. Unless `RAYON_NUM_THREADS` is set, the answer comes from
//!   `num_cpus::get_physical`, which parses `/proc/cpuinfo` each time: 6.5%
//!   of an update. [`pin_thread_count`] sets the variable to candle's own
//!   answer, so the count is unchanged and looked up for free.
//! - **candle's element-wise pool.** candle splits element-wise operations
//!   of 64 k elements or more over a pool of its own, one caller at a
//!   time, whose idle worker spins before it sleeps. uqcast runs
//!   independent work side by side instead, one piece per thread: sampling
//!   members (`HyperDm::predict_each`), and in training HyperDM's networks,
//!   ensemble members and row shards (`model/*_side_by_side.rs`). The
//!   pool's worker then takes a core from them while their operations
//!   queue for it. [`prepare`] sets `CANDLE_NUM_THREADS=1` (no pool
//!   worker) unless the user set it: the U-Net sampling bench took 1.39 s
//!   instead of 2.49 s, and the 20-update training bench of one network
//!   76 ms instead of 236 ms.
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

/// Room kept at the top of each heap. A thread's arena grows in heaps of
/// 64 MiB, and glibc unmaps a whole heap once nothing in it is in use
/// unless this much room would remain: holding more than one heap of a
/// scan's batches (e.g. `SELECT *` collected) made every later step fault
/// its pages in again.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TOP_PAD: i32 = 64 << 20;

/// Every setting. Call first thing in `main`, before any thread starts.
pub fn prepare() {
    keep_freed_memory();
    pin_thread_count();
    set_if_unset("CANDLE_NUM_THREADS", "1");
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
                && libc::mallopt(libc::M_TOP_PAD, TOP_PAD) == 1
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
    set_if_unset(
        "RAYON_NUM_THREADS",
        &candle_core::utils::get_num_threads().to_string(),
    );
}

/// Sets an environment variable the user has not set. Must run before any
/// other thread exists.
fn set_if_unset(name: &str, value: &str) {
    if std::env::var_os(name).is_none() {
        // SAFETY: `prepare` is documented to run first in `main`, before any
        // other thread exists, so nothing can read the environment while it
        // changes.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var(name, value);
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
