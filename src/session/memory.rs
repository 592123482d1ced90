//! How much memory a query's sorts, aggregations and joins may hold.
//!
//! DataFusion's default pool has no limit: a sort of a year of 0.25° steps
//! (1.5 billion rows) grows until the kernel kills the process, which then
//! ends without a word. With a limit, sorts and aggregations spill to
//! temporary files and finish; what cannot spill (the build side of a hash
//! join) fails with DataFusion's "Resources exhausted" error, printed as
//! any other. The limit is [`LIMIT_VAR`] GB, or half of the memory this
//! process may use (the machine's, its cgroup's limit or its `ulimit -v`, whichever
//! is lowest): DataFusion counts
//! the large buffers only, and the process holds models and reads besides.

use std::num::NonZeroUsize;
use std::sync::Arc;

use datafusion::execution::memory_pool::{FairSpillPool, MemoryPool, TrackConsumersPool};

/// The environment variable that sets the limit, in GB (10⁹ bytes).
pub const LIMIT_VAR: &str = "UQCAST_QUERY_MEMORY_GB";
/// The share of the process's memory a query may hold unless set.
const DEFAULT_SHARE: f64 = 0.5;
/// Used where neither the cgroup nor /proc says how much memory there is.
const FALLBACK_BYTES: u64 = 4_000_000_000;

/// The limit in bytes: [`LIMIT_VAR`], or the default; an error says what is
/// wrong with the value.
pub fn limit_bytes() -> Result<u64, String> {
    match std::env::var(LIMIT_VAR) {
        Err(std::env::VarError::NotPresent) => Ok(default_limit()),
        Ok(value) => value
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|gb| gb.is_finite() && *gb > 0.0)
            .map(|gb| (gb * 1e9) as u64)
            .filter(|&bytes| bytes > 0)
            .ok_or_else(|| format!("{LIMIT_VAR}={value}: not a number of GB above 0")),
        Err(std::env::VarError::NotUnicode(value)) => {
            Err(format!("{LIMIT_VAR}={value:?}: not a number of GB above 0"))
        }
    }
}

/// The pool a local query session draws from (an executor's tasks get
/// theirs from Ballista, sized by the same limit). Spilling operators share
/// it fairly; an error names the five largest consumers.
pub fn pool() -> Arc<dyn MemoryPool> {
    // A bad value stopped the command in `main` already.
    let limit = limit_bytes().unwrap_or_else(|_| default_limit());
    let top = NonZeroUsize::new(5).unwrap_or(NonZeroUsize::MIN);
    Arc::new(TrackConsumersPool::new(
        FairSpillPool::new(limit as usize),
        top,
    ))
}

/// An amount of memory for a message: "3.2 GB", "48 MB", "12 kB".
pub fn amount(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.1} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.0} MB", b / 1e6)
    } else {
        format!("{:.0} kB", b / 1e3)
    }
}

/// The limit unless [`LIMIT_VAR`] is set.
fn default_limit() -> u64 {
    (process_memory() as f64 * DEFAULT_SHARE) as u64
}

/// The memory this process may use, in bytes: the machine's, or less where
/// its cgroup's limit or its address-space limit (`ulimit -v`) is lower.
pub fn process_memory() -> u64 {
    let machine = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| mem_total(&text))
        .unwrap_or(FALLBACK_BYTES);
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok());
    [cgroup, address_space_limit()]
        .into_iter()
        .flatten()
        .fold(machine, u64::min)
}

/// The process's address-space limit (`ulimit -v`), where one is set. The
/// allocator fails beyond it however much memory the machine has free.
fn address_space_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    soft_address_space(&limits)
}

/// The soft "Max address space" of a /proc/self/limits text, in bytes;
/// `None` where it is unlimited or absent.
fn soft_address_space(limits: &str) -> Option<u64> {
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max address space"))?;
    line.trim_start_matches("Max address space")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `MemTotal` of a /proc/meminfo text, in bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_space_limit_is_read_from_proc_limits() {
        let limited = "Limit                     Soft Limit           Hard Limit           Units     \n\
                       Max address space         4294967296           unlimited            bytes     \n";
        assert_eq!(soft_address_space(limited), Some(4_294_967_296));
        let unlimited =
            "Max address space         unlimited            unlimited            bytes     \n";
        assert_eq!(soft_address_space(unlimited), None);
        assert_eq!(soft_address_space("Max open files 1024 1024 files\n"), None);
    }

    #[test]
    fn amounts_read_in_the_unit_that_shows_them() {
        assert_eq!(amount(3_240_000_000), "3.2 GB");
        assert_eq!(amount(48_400_000), "48 MB");
        assert_eq!(amount(12_345), "12 kB");
    }

    #[test]
    fn the_machine_memory_is_read_from_meminfo() {
        let text = "MemTotal:       24683664 kB\nMemFree:         1000 kB\n";
        assert_eq!(mem_total(text), Some(24_683_664 * 1024));
        assert_eq!(mem_total("MemFree: 1 kB\n"), None);
        assert!(process_memory() > 0);
    }
}
