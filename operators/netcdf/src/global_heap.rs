//! The one damage known to make HDF5 1.10 loop without end: a global heap
//! collection (signature `GCOL`, where a NetCDF4 file keeps its dimension
//! lists) holding an object header of index 0 and size 0. HDF5 walks a
//! collection object by object, each next object at this one's start plus
//! its size; one of size 0 is its own next, forever (`H5HG_read`, under
//! `H5DSget_num_scales` while libnetcdf opens the file). Every loop found
//! by damaging files at random was this one.
//!
//! The watchdog ([`crate::fatal`]) asks this once a call has computed for
//! a few seconds, so a looping file is named at once rather than after the
//! whole CPU-time limit, and a file read quickly is never scanned.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

const SIGNATURE: &[u8; 4] = b"GCOL";
/// HDF5's superblock signature, at byte 0, 512, 1024, 2048, …
const SUPERBLOCK: &[u8; 8] = b"\x89HDF\r\n\x1a\n";
/// Collections HDF5 makes hold 4 KiB and more; a larger size than this
/// is not walked (HDF5 would not have read it either).
const LARGEST: u64 = 64 << 20;
/// Bytes scanned at a time.
const BLOCK: usize = 1 << 20;

/// Where the file at `path` has a collection HDF5 walks without end: the
/// collection's byte offset and the offending object's. `None` where it
/// has none, or cannot be read.
pub fn endless_collection(path: &Path) -> Option<(u64, u64)> {
    let file = File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    let lengths = size_of_lengths(&file, len);
    let mut reader = &file;
    // The file offset of `window[0]`; the last 3 bytes of each block lead
    // the next, for a signature across the two.
    let (mut window, mut window_start) = (Vec::with_capacity(BLOCK + 3), 0u64);
    loop {
        let kept = window.len().min(SIGNATURE.len() - 1);
        window_start += (window.len() - kept) as u64;
        window.drain(..window.len() - kept);
        let read = (&mut reader)
            .take(BLOCK as u64)
            .read_to_end(&mut window)
            .ok()?;
        if read == 0 {
            return None;
        }
        for at in find_all(&window, SIGNATURE) {
            let offset = window_start + at as u64;
            if let Some(object) = walk_at(&file, len, offset, lengths) {
                return Some((offset, object));
            }
        }
    }
}

/// The offsets of `needle` in `haystack`.
fn find_all<'a>(haystack: &'a [u8], needle: &'a [u8]) -> impl Iterator<Item = usize> + 'a {
    haystack
        .windows(needle.len())
        .enumerate()
        .filter(move |(_, w)| *w == needle)
        .map(|(i, _)| i)
}

/// The width of a length in this file (its superblock's "size of
/// lengths"), 8 where the superblock is not found.
fn size_of_lengths(file: &File, len: u64) -> usize {
    let mut at = 0u64;
    while at + 16 <= len {
        let mut head = [0u8; 16];
        if file.read_exact_at(&mut head, at).is_err() {
            break;
        }
        if &head[..8] == SUPERBLOCK {
            // Versions 0 and 1 keep it at byte 14, 2 and 3 at byte 10.
            let width = match head[8] {
                0 | 1 => head[14],
                _ => head[10],
            };
            return match width {
                2 | 4 | 8 => usize::from(width),
                _ => 8,
            };
        }
        at = if at == 0 { 512 } else { at * 2 };
    }
    8
}

/// Reads the collection whose signature is at `offset` and walks it; the
/// looping object's offset, if one loops.
fn walk_at(file: &File, len: u64, offset: u64, lengths: usize) -> Option<u64> {
    let header = 8 + lengths;
    let mut head = vec![0u8; header];
    file.read_exact_at(&mut head, offset).ok()?;
    // Version 1 is the only one HDF5 writes or reads.
    if head[4] != 1 {
        return None;
    }
    let size = little_endian(&head[8..]);
    if size < header as u64 || size > LARGEST || offset + size > len {
        return None;
    }
    let mut collection = vec![0u8; size as usize];
    file.read_exact_at(&mut collection, offset).ok()?;
    endless_object(&collection, lengths).map(|at| offset + at as u64)
}

/// HDF5's walk over a collection's objects (`collection` from its
/// signature to its end): the offset of an object that is its own next.
pub fn endless_object(collection: &[u8], lengths: usize) -> Option<usize> {
    let object_header = 8 + lengths;
    let end = collection.len();
    let mut p = 8 + lengths;
    while p < end {
        if p + object_header > end {
            // Too little left for an object header: free space to the end.
            return None;
        }
        let index = u16::from_le_bytes([collection[p], collection[p + 1]]);
        let size = little_endian(&collection[p + 8..p + 8 + lengths]);
        let need = if index > 0 {
            (object_header as u64).saturating_add(size.div_ceil(8).saturating_mul(8))
        } else {
            size
        };
        if need == 0 {
            return Some(p);
        }
        p = p.saturating_add(usize::try_from(need).unwrap_or(usize::MAX));
    }
    None
}

fn little_endian(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .rev()
        .fold(0u64, |value, &b| (value << 8) | u64::from(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A collection of `size` bytes (lengths of 8 bytes) with the given
    /// objects (index, data size; data bytes 0x11) and the rest as free
    /// space (index 0).
    fn collection(size: usize, objects: &[(u16, u64)]) -> Vec<u8> {
        let mut c = vec![0u8; size];
        c[..4].copy_from_slice(SIGNATURE);
        c[4] = 1;
        c[8..16].copy_from_slice(&(size as u64).to_le_bytes());
        let mut p = 16;
        for &(index, data) in objects {
            c[p..p + 2].copy_from_slice(&index.to_le_bytes());
            c[p + 8..p + 16].copy_from_slice(&data.to_le_bytes());
            c[p + 16..p + 16 + data as usize].fill(0x11);
            p += 16 + data.div_ceil(8) as usize * 8;
        }
        let free = (size - p) as u64;
        c[p + 8..p + 16].copy_from_slice(&free.to_le_bytes());
        c
    }

    /// A well-formed collection ends in its free space; an object of index
    /// 0 and size 0 is found where HDF5 would stop on it forever; data of
    /// an unaligned size is padded to 8 bytes as HDF5 pads it.
    #[test]
    fn the_walk_finds_the_object_that_is_its_own_next() {
        let good = collection(4096, &[(1, 12), (2, 16), (3, 5)]);
        assert_eq!(endless_object(&good, 8), None);
        let mut bad = good.clone();
        // Object 2's header zeroed: index 0, size 0, at 16 + 16 + 16.
        bad[48..64].fill(0);
        assert_eq!(endless_object(&bad, 8), Some(48));
        // An index-0 object with a size is free space: skipped, not a loop.
        let mut free = good;
        free[48..50].fill(0);
        assert_eq!(endless_object(&free, 8), None);
    }

    /// Across the file: the collection and the object are named by their
    /// byte offsets, also where the signature straddles two blocks.
    #[test]
    fn a_file_is_scanned_for_every_collection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.nc");
        let mut bytes = vec![7u8; BLOCK - 2];
        let mut bad = collection(4096, &[(1, 8)]);
        bad[40..56].fill(0);
        bytes.extend(&bad);
        std::fs::write(&path, &bytes).unwrap();
        let at = (BLOCK - 2) as u64;
        assert_eq!(endless_collection(&path), Some((at, at + 40)));
        // A good collection, and one whose size runs past the file's end.
        bytes.truncate(BLOCK - 2);
        bytes.extend(collection(4096, &[(1, 8)]));
        bytes.extend(&bad[..100]);
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(endless_collection(&path), None);
        assert_eq!(endless_collection(&dir.path().join("missing.nc")), None);
    }
}
