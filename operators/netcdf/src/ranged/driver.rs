//! An HDF5 virtual file driver that reads a file it does not have by byte
//! range, through a fetch function, and remembers every block it fetched.
//!
//! HDF5 reads a file only through its driver, so opening a file with this
//! one and walking it (see [`super::walk`]) fetches exactly the bytes HDF5
//! needs for what the walk asks, in [`BLOCK`]-sized blocks. It is read-only
//! and serves one file at a time: the walk's [`Source`], installed on the
//! I/O thread for the walk's duration.

#![allow(unsafe_code)]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, c_uint, c_ulong, c_void};
use std::ops::Range;
use std::sync::OnceLock;

use crate::hdf5_ffi::{H5FD_FLMAP_DICHOTOMY, H5FDregister, Haddr, Herr, Hid};

/// The unit of fetching. HDF5's metadata reads are a few hundred bytes to a
/// few KiB and cluster (libnetcdf writes a file's metadata together), so a
/// block serves many reads with one request.
pub const BLOCK: u64 = 64 * 1024;

/// Fetches byte ranges of the file, each range's bytes in order; `Err` is
/// why it could not (a network error, in words).
pub type Fetch = Box<dyn FnMut(&[Range<u64>]) -> Result<Vec<Vec<u8>>, String> + Send>;

/// The file a walk reads: its size, the blocks fetched so far, and the
/// first fetch failure (HDF5 reports only that its read failed).
pub struct Source {
    size: u64,
    blocks: BTreeMap<u64, Vec<u8>>,
    fetch: Fetch,
    pub failure: Option<String>,
}

impl Source {
    /// A file of `size` bytes whose first bytes are already known (`seed`).
    pub fn new(size: u64, seed: &[u8], fetch: Fetch) -> Self {
        let mut blocks = BTreeMap::new();
        // Only whole blocks (or the file's last, short one) are kept.
        for (i, block) in seed.chunks(BLOCK as usize).enumerate() {
            let start = i as u64 * BLOCK;
            if block.len() as u64 == BLOCK.min(size.saturating_sub(start)) {
                blocks.insert(i as u64, block.to_vec());
            }
        }
        Self {
            size,
            blocks,
            fetch,
            failure: None,
        }
    }

    /// The blocks fetched, coalesced into runs: (offset, bytes).
    pub fn into_parts(self) -> Vec<(u64, Vec<u8>)> {
        let mut parts: Vec<(u64, Vec<u8>)> = Vec::new();
        for (index, block) in self.blocks {
            let start = index * BLOCK;
            match parts.last_mut() {
                Some((offset, bytes)) if *offset + bytes.len() as u64 == start => {
                    bytes.extend_from_slice(&block);
                }
                _ => parts.push((start, block)),
            }
        }
        parts
    }

    /// Fills `out` with the bytes at `addr`, fetching the blocks it lacks;
    /// bytes past the end of the file read as zeros, as from a POSIX file.
    fn read(&mut self, addr: u64, out: &mut [u8]) -> Result<(), String> {
        out.fill(0);
        let end = (addr + out.len() as u64).min(self.size);
        if addr >= end {
            return Ok(());
        }
        let wanted = addr / BLOCK..(end - 1) / BLOCK + 1;
        let missing: Vec<u64> = wanted
            .clone()
            .filter(|b| !self.blocks.contains_key(b))
            .collect();
        if !missing.is_empty() {
            self.fetch_blocks(&missing)?;
        }
        for index in wanted {
            let block = &self.blocks[&index];
            let block_start = index * BLOCK;
            let from = addr.max(block_start);
            let to = end.min(block_start + block.len() as u64);
            out[(from - addr) as usize..(to - addr) as usize].copy_from_slice(
                &block[(from - block_start) as usize..(to - block_start) as usize],
            );
        }
        Ok(())
    }

    /// Fetches the blocks `missing` (sorted), one range per run of them.
    fn fetch_blocks(&mut self, missing: &[u64]) -> Result<(), String> {
        let mut runs: Vec<Range<u64>> = Vec::new();
        for &b in missing {
            match runs.last_mut() {
                Some(run) if run.end == b => run.end = b + 1,
                _ => runs.push(b..b + 1),
            }
        }
        let ranges: Vec<Range<u64>> = runs
            .iter()
            .map(|r| r.start * BLOCK..(r.end * BLOCK).min(self.size))
            .collect();
        let fetched = (self.fetch)(&ranges)?;
        for ((run, range), bytes) in runs.iter().zip(&ranges).zip(fetched) {
            if bytes.len() as u64 != range.end - range.start {
                return Err(format!(
                    "bytes {}..{}: {} bytes came back",
                    range.start,
                    range.end,
                    bytes.len()
                ));
            }
            for (block, part) in run.clone().zip(bytes.chunks(BLOCK as usize)) {
                self.blocks.insert(block, part.to_vec());
            }
        }
        Ok(())
    }
}

thread_local! {
    /// The file being walked on this thread; the driver's files read it.
    pub static SOURCE: RefCell<Option<Source>> = const { RefCell::new(None) };
}

/// HDF5's public part of an open file, which the library fills in.
#[repr(C)]
struct PublicFile {
    driver_id: Hid,
    cls: *const DriverClass,
    fileno: c_ulong,
    access_flags: c_uint,
    feature_flags: c_ulong,
    maxaddr: Haddr,
    base_addr: Haddr,
    threshold: u64,
    alignment: u64,
    paged_aggr: bool,
}

/// An open file of this driver: HDF5's part first, as the library requires.
#[repr(C)]
struct RangedFile {
    public: PublicFile,
    eoa: Haddr,
    eof: Haddr,
}

type FilePtr = *mut RangedFile;

/// `H5FD_class_t` of HDF5 1.10, field for field.
#[repr(C)]
pub struct DriverClass {
    name: *const c_char,
    maxaddr: Haddr,
    fc_degree: c_int,
    terminate: Option<unsafe extern "C" fn() -> Herr>,
    sb_size: Option<unsafe extern "C" fn(FilePtr) -> u64>,
    sb_encode: Option<unsafe extern "C" fn(FilePtr, *mut c_char, *mut u8) -> Herr>,
    sb_decode: Option<unsafe extern "C" fn(FilePtr, *const c_char, *const u8) -> Herr>,
    fapl_size: usize,
    fapl_get: Option<unsafe extern "C" fn(FilePtr) -> *mut c_void>,
    fapl_copy: Option<unsafe extern "C" fn(*const c_void) -> *mut c_void>,
    fapl_free: Option<unsafe extern "C" fn(*mut c_void) -> Herr>,
    dxpl_size: usize,
    dxpl_copy: Option<unsafe extern "C" fn(*const c_void) -> *mut c_void>,
    dxpl_free: Option<unsafe extern "C" fn(*mut c_void) -> Herr>,
    open: Option<unsafe extern "C" fn(*const c_char, c_uint, Hid, Haddr) -> FilePtr>,
    close: Option<unsafe extern "C" fn(FilePtr) -> Herr>,
    cmp: Option<unsafe extern "C" fn(FilePtr, FilePtr) -> c_int>,
    query: Option<unsafe extern "C" fn(FilePtr, *mut c_ulong) -> Herr>,
    get_type_map: Option<unsafe extern "C" fn(FilePtr, *mut c_int) -> Herr>,
    alloc: Option<unsafe extern "C" fn(FilePtr, c_int, Hid, u64) -> Haddr>,
    free: Option<unsafe extern "C" fn(FilePtr, c_int, Hid, Haddr, u64) -> Herr>,
    get_eoa: Option<unsafe extern "C" fn(FilePtr, c_int) -> Haddr>,
    set_eoa: Option<unsafe extern "C" fn(FilePtr, c_int, Haddr) -> Herr>,
    get_eof: Option<unsafe extern "C" fn(FilePtr, c_int) -> Haddr>,
    get_handle: Option<unsafe extern "C" fn(FilePtr, Hid, *mut *mut c_void) -> Herr>,
    read: Option<unsafe extern "C" fn(FilePtr, c_int, Hid, Haddr, usize, *mut c_void) -> Herr>,
    write: Option<unsafe extern "C" fn(FilePtr, c_int, Hid, Haddr, usize, *const c_void) -> Herr>,
    flush: Option<unsafe extern "C" fn(FilePtr, Hid, bool) -> Herr>,
    truncate: Option<unsafe extern "C" fn(FilePtr, Hid, bool) -> Herr>,
    lock: Option<unsafe extern "C" fn(FilePtr, bool) -> Herr>,
    unlock: Option<unsafe extern "C" fn(FilePtr) -> Herr>,
    fl_map: [c_int; 7],
}

// SAFETY: the class is immutable; its one pointer is to a static string.
unsafe impl Sync for DriverClass {}

/// The largest address, as the POSIX driver has it (a signed 64-bit offset).
const MAX_ADDR: Haddr = (1 << 63) - 1;
const H5F_CLOSE_WEAK: c_int = 1;
const H5FD_FEAT_AGGREGATE_METADATA: c_ulong = 0x1;
const H5FD_FEAT_ACCUMULATE_METADATA: c_ulong = 0x2 | 0x4;
const H5FD_FEAT_DATA_SIEVE: c_ulong = 0x8;
const H5FD_FEAT_AGGREGATE_SMALLDATA: c_ulong = 0x10;
const H5FD_FEAT_DEFAULT_VFD_COMPATIBLE: c_ulong = 0x8000;

static CLASS: DriverClass = DriverClass {
    name: c"uqcast-ranged".as_ptr(),
    maxaddr: MAX_ADDR,
    fc_degree: H5F_CLOSE_WEAK,
    terminate: None,
    sb_size: None,
    sb_encode: None,
    sb_decode: None,
    fapl_size: 0,
    fapl_get: None,
    fapl_copy: None,
    fapl_free: None,
    dxpl_size: 0,
    dxpl_copy: None,
    dxpl_free: None,
    open: Some(open),
    close: Some(close),
    cmp: None,
    query: Some(query),
    get_type_map: None,
    alloc: None,
    free: None,
    get_eoa: Some(get_eoa),
    set_eoa: Some(set_eoa),
    get_eof: Some(get_eof),
    get_handle: None,
    read: Some(read),
    write: Some(write),
    flush: None,
    truncate: None,
    lock: None,
    unlock: None,
    fl_map: H5FD_FLMAP_DICHOTOMY,
};

/// The driver's identifier, registered with HDF5 on first use.
pub fn driver_id() -> Option<Hid> {
    static ID: OnceLock<Hid> = OnceLock::new();
    // SAFETY: CLASS is a valid, 'static H5FD_class_t.
    let id = *ID.get_or_init(|| unsafe { H5FDregister(&CLASS) });
    (id >= 0).then_some(id)
}

unsafe extern "C" fn open(
    _name: *const c_char,
    _flags: c_uint,
    _fapl: Hid,
    _max: Haddr,
) -> FilePtr {
    let Some(size) = SOURCE.with(|s| s.try_borrow().ok()?.as_ref().map(|s| s.size)) else {
        return std::ptr::null_mut();
    };
    // SAFETY: zero is a valid value of every field of PublicFile; HDF5
    // fills them in after `open` returns.
    let public = unsafe { std::mem::zeroed::<PublicFile>() };
    Box::into_raw(Box::new(RangedFile {
        public,
        eoa: 0,
        eof: size,
    }))
}

unsafe extern "C" fn close(file: FilePtr) -> Herr {
    // SAFETY: `file` came from `open`'s Box::into_raw and is closed once.
    drop(unsafe { Box::from_raw(file) });
    0
}

unsafe extern "C" fn query(_file: FilePtr, flags: *mut c_ulong) -> Herr {
    // The POSIX driver's features, so HDF5 reads through this driver in
    // the same pieces it reads a local copy in (libnetcdf's reads later).
    if !flags.is_null() {
        // SAFETY: HDF5 passes a valid pointer when non-null.
        unsafe {
            *flags = H5FD_FEAT_AGGREGATE_METADATA
                | H5FD_FEAT_ACCUMULATE_METADATA
                | H5FD_FEAT_DATA_SIEVE
                | H5FD_FEAT_AGGREGATE_SMALLDATA
                | H5FD_FEAT_DEFAULT_VFD_COMPATIBLE;
        }
    }
    0
}

unsafe extern "C" fn get_eoa(file: FilePtr, _type: c_int) -> Haddr {
    // SAFETY: `file` is an open file of this driver.
    unsafe { (*file).eoa }
}

unsafe extern "C" fn set_eoa(file: FilePtr, _type: c_int, addr: Haddr) -> Herr {
    // SAFETY: as above.
    unsafe { (*file).eoa = addr };
    0
}

unsafe extern "C" fn get_eof(file: FilePtr, _type: c_int) -> Haddr {
    // SAFETY: as above.
    unsafe { (*file).eof }
}

unsafe extern "C" fn read(
    file: FilePtr,
    _type: c_int,
    _dxpl: Hid,
    addr: Haddr,
    size: usize,
    buf: *mut c_void,
) -> Herr {
    // SAFETY: `file` is an open file of this driver.
    let eoa = unsafe { (*file).eoa };
    if addr.checked_add(size as u64).is_none_or(|end| end > eoa) || buf.is_null() {
        return -1;
    }
    // SAFETY: HDF5 passes a buffer of `size` bytes.
    let out = unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), size) };
    let done = SOURCE.with(|s| {
        let Ok(mut slot) = s.try_borrow_mut() else {
            return false;
        };
        let Some(source) = slot.as_mut() else {
            return false;
        };
        match source.read(addr, out) {
            Ok(()) => true,
            Err(e) => {
                source.failure.get_or_insert(e);
                false
            }
        }
    });
    if done { 0 } else { -1 }
}

unsafe extern "C" fn write(
    _file: FilePtr,
    _type: c_int,
    _dxpl: Hid,
    _addr: Haddr,
    _size: usize,
    _buf: *const c_void,
) -> Herr {
    // Files are opened read-only; HDF5 never writes one.
    -1
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source over `data` that counts the ranges it was asked for.
    fn source(
        data: Vec<u8>,
        seed: usize,
        asked: std::sync::Arc<std::sync::Mutex<Vec<Range<u64>>>>,
    ) -> Source {
        let size = data.len() as u64;
        let seed_bytes = data[..seed].to_vec();
        Source::new(
            size,
            &seed_bytes,
            Box::new(move |ranges| {
                asked.lock().unwrap().extend(ranges.iter().cloned());
                Ok(ranges
                    .iter()
                    .map(|r| data[r.start as usize..r.end as usize].to_vec())
                    .collect())
            }),
        )
    }

    /// Reads come back as the file's bytes, fetching each missing block
    /// once (runs of blocks in one range), none of the seed's, and zeros
    /// past the end of the file.
    #[test]
    fn reads_fetch_missing_blocks_once() {
        let b = BLOCK as usize;
        let data: Vec<u8> = (0..3 * b + 100).map(|i| (i % 251) as u8).collect();
        let asked = std::sync::Arc::default();
        let mut s = source(data.clone(), b + 7, std::sync::Arc::clone(&asked));
        let mut out = vec![0u8; 10];
        s.read(5, &mut out).unwrap();
        assert_eq!(out, data[5..15]);
        assert!(asked.lock().unwrap().is_empty(), "the seed's first block");

        let mut out = vec![0u8; b + 50];
        s.read(BLOCK + 10, &mut out).unwrap();
        assert_eq!(out, data[b + 10..2 * b + 60]);
        assert_eq!(*asked.lock().unwrap(), vec![BLOCK..3 * BLOCK]);

        let mut out = vec![1u8; 200];
        s.read(3 * BLOCK, &mut out).unwrap();
        assert_eq!(out[..100], data[3 * b..]);
        assert!(out[100..].iter().all(|&x| x == 0), "past the end: zeros");
        assert_eq!(asked.lock().unwrap().len(), 2);
        assert_eq!(asked.lock().unwrap()[1], 3 * BLOCK..3 * BLOCK + 100);

        s.read(BLOCK + 1, &mut [0u8; 4]).unwrap();
        assert_eq!(asked.lock().unwrap().len(), 2, "fetched once");
        let parts = s.into_parts();
        assert_eq!(parts.len(), 1, "blocks 0..4 form one run");
        assert_eq!(parts[0], (0, data));
    }

    /// A fetch that fails, or returns the wrong length, is an error.
    #[test]
    fn failed_and_short_fetches_are_errors() {
        let mut s = Source::new(4 * BLOCK, &[], Box::new(|_| Err("connection reset".into())));
        let e = s.read(0, &mut [0u8; 8]).unwrap_err();
        assert_eq!(e, "connection reset");
        let mut s = Source::new(4 * BLOCK, &[], Box::new(|_| Ok(vec![vec![0u8; 3]])));
        let e = s.read(0, &mut [0u8; 8]).unwrap_err();
        assert_eq!(e, format!("bytes 0..{BLOCK}: 3 bytes came back"));
    }
}
