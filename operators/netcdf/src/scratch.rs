//! A byte buffer kept per thread between step reads.
//!
//! Every step read needs a buffer the size of its stored bytes (an
//! inflated chunk, a classic file's span of rows). A fresh one is zeroed
//! by the allocator or by `vec!` and faulted in page by page, which cost
//! a tenth of a scan; one kept per thread is zeroed once.

use std::cell::RefCell;

/// Buffers larger than this are dropped after use, not kept.
const KEPT_BYTES: usize = 64 << 20;

thread_local! {
    static BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with a buffer of `len` bytes (its contents are whatever the
/// thread's last read left there).
pub fn with_buffer<R>(len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
    let mut buffer = BUFFER.take();
    if buffer.len() < len {
        buffer.resize(len, 0);
    }
    let result = f(&mut buffer[..len]);
    if buffer.len() <= KEPT_BYTES {
        BUFFER.set(buffer);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_is_kept_and_reused_on_its_thread() {
        let first = with_buffer(16, |b| {
            b.fill(7);
            b.as_ptr() as usize
        });
        let (second, seen) = with_buffer(8, |b| (b.as_ptr() as usize, b.to_vec()));
        assert_eq!(first, second);
        assert_eq!(seen, vec![7; 8]);
        // Larger than kept: used, then dropped.
        with_buffer(KEPT_BYTES + 1, |b| assert_eq!(b.len(), KEPT_BYTES + 1));
        with_buffer(4, |b| assert_eq!(b.len(), 4));
    }
}
