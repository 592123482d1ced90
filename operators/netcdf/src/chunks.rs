//! NetCDF4 step reads that inflate outside libnetcdf.
//!
//! libnetcdf inflates a NetCDF4 variable's zlib chunks inside its calls,
//! and every call runs on the one I/O thread, so two partitions of a scan
//! could only overlap their decoding with each other's inflation. Here the
//! I/O thread only fetches each chunk's stored (filtered) bytes through
//! HDF5's direct chunk read; the partition's own thread then inflates them,
//! undoes the byte shuffle and copies the step's cells out.
//!
//! Only the layout the CDS and `uqcast synth` write takes this path: a
//! chunked little-endian variable whose filters are shuffle then deflate,
//! or deflate alone, every chunk written. Anything else (contiguous
//! storage, other filters, an unwritten chunk, a chunk that does not
//! inflate to its size) returns `None`, and the step is read through
//! libnetcdf, which then reports a damaged file as it always did.

#![allow(unsafe_code)]

use std::ffi::{CString, c_int, c_uint};
use std::io::Read;
use std::ops::Range;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::cf::RawSample;
use crate::hdf5_ffi::*;

/// The stored bytes of every chunk one step's hyperslab touches.
#[derive(Debug)]
pub struct RawChunks {
    /// Chunk shape, one length per dimension.
    shape: Vec<usize>,
    shuffled: bool,
    /// Each chunk's first index per dimension, and its deflated bytes.
    chunks: Vec<(Vec<usize>, Vec<u8>)>,
}

/// Whether `path` starts with the HDF5 signature (NetCDF4 files do).
pub fn is_hdf5(path: &Path) -> bool {
    let mut head = [0u8; 8];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| head == *b"\x89HDF\r\n\x1a\n")
}

/// On the I/O thread: the stored chunks of `variable` that `extents`
/// touches, for elements of `element` bytes; `None` where this path does
/// not apply (module docs).
pub fn read(
    path: &Path,
    variable: &str,
    extents: &[Range<usize>],
    element: usize,
) -> Option<RawChunks> {
    let name = CString::new(path.as_os_str().as_bytes()).ok()?;
    let dataset_name = CString::new(variable).ok()?;
    // SAFETY: every identifier is checked before use and closed by its
    // Handle; buffers passed to HDF5 are sized as each call requires.
    unsafe {
        let file = Handle::open(
            H5Fopen(name.as_ptr(), H5F_ACC_RDONLY, H5P_DEFAULT),
            H5Fclose,
        )?;
        let dataset = Handle::open(
            H5Dopen2(file.0, dataset_name.as_ptr(), H5P_DEFAULT),
            H5Dclose,
        )?;
        let datatype = Handle::open(H5Dget_type(dataset.0), H5Tclose)?;
        if H5Tget_size(datatype.0) != element || H5Tget_order(datatype.0) != H5T_ORDER_LE {
            return None;
        }
        let plist = Handle::open(H5Dget_create_plist(dataset.0), H5Pclose)?;
        if H5Pget_layout(plist.0) != H5D_CHUNKED {
            return None;
        }
        let mut dims = [0u64; 8];
        let rank = H5Pget_chunk(plist.0, dims.len() as c_int, dims.as_mut_ptr());
        if rank != extents.len() as c_int {
            return None;
        }
        let shape: Vec<usize> = dims[..extents.len()].iter().map(|&d| d as usize).collect();
        if shape.contains(&0) {
            return None;
        }
        let filters: Vec<c_int> = (0..H5Pget_nfilters(plist.0).max(0) as c_uint)
            .map(|i| {
                let (mut flags, mut count, mut config) = (0, 0usize, 0);
                H5Pget_filter2(
                    plist.0,
                    i,
                    &mut flags,
                    &mut count,
                    std::ptr::null_mut(),
                    0,
                    std::ptr::null_mut(),
                    &mut config,
                )
            })
            .collect();
        let shuffled = match filters.as_slice() {
            [H5Z_FILTER_SHUFFLE, H5Z_FILTER_DEFLATE] => true,
            [H5Z_FILTER_DEFLATE] => false,
            _ => return None,
        };
        // No chunk is stored in more bytes than its file has: a damaged
        // chunk index claiming more must not become an allocation that size.
        let file_len = std::fs::metadata(path).ok()?.len();
        let mut chunks = Vec::new();
        for start in chunk_starts(extents, &shape) {
            let offset: Vec<u64> = start.iter().map(|&s| s as u64).collect();
            let mut bytes = 0u64;
            if H5Dget_chunk_storage_size(dataset.0, offset.as_ptr(), &mut bytes) < 0
                || bytes == 0
                || bytes > file_len
            {
                return None;
            }
            // Not zeroed first: that cost the I/O thread as much as the read.
            let len = usize::try_from(bytes).ok()?;
            let mut buf = Vec::<u8>::with_capacity(len);
            let mut skipped = 0u32;
            let read = H5Dread_chunk(
                dataset.0,
                H5P_DEFAULT,
                offset.as_ptr(),
                &mut skipped,
                buf.as_mut_ptr(),
            );
            if read < 0 || skipped != 0 {
                return None;
            }
            // A successful read wrote the chunk's whole stored size.
            buf.set_len(len);
            chunks.push((start, buf));
        }
        Some(RawChunks {
            shape,
            shuffled,
            chunks,
        })
    }
}

/// The first index of every chunk of `shape` that `extents` touches, in
/// row-major order.
fn chunk_starts(extents: &[Range<usize>], shape: &[usize]) -> Vec<Vec<usize>> {
    let mut starts = vec![vec![]];
    for (range, &side) in extents.iter().zip(shape) {
        if range.is_empty() {
            return vec![];
        }
        let firsts: Vec<usize> = (range.start / side..=(range.end - 1) / side)
            .map(|k| k * side)
            .collect();
        starts = starts
            .into_iter()
            .flat_map(|prefix| {
                firsts.iter().map(move |&f| {
                    let mut next = prefix.clone();
                    next.push(f);
                    next
                })
            })
            .collect();
    }
    starts
}

/// The most bytes deflate inflates one byte to (zlib's technical notes).
const MAX_INFLATION: usize = 1032;

/// Off the I/O thread: the values of `extents` (row-major), or `None` when
/// a chunk does not inflate to its size (damaged: libnetcdf then says so).
pub fn assemble<T: RawSample>(raw: &RawChunks, extents: &[Range<usize>]) -> Option<Vec<T>> {
    let chunk_values: usize = raw.shape.iter().product();
    let chunk_bytes = chunk_values.checked_mul(size_of::<T>())?;
    // Deflate expands by at most 1032:1; a damaged chunk shape claiming
    // more must not become a buffer that size.
    let stored_max = raw.chunks.iter().map(|(_, s)| s.len()).max().unwrap_or(0);
    if chunk_bytes
        > stored_max
            .saturating_mul(MAX_INFLATION)
            .saturating_add(1024)
    {
        return None;
    }
    let out_shape: Vec<usize> = extents.iter().map(|r| r.len()).collect();
    let mut out = vec![T::default(); out_shape.iter().product()];
    crate::scratch::with_buffer(chunk_bytes, |inflated| {
        let mut zlib = flate2::Decompress::new(true);
        for (start, stored) in &raw.chunks {
            zlib.reset(true);
            // A chunk must end its stream exactly at its size: a longer or
            // shorter one is damaged.
            let ended = zlib.decompress(stored, inflated, flate2::FlushDecompress::Finish);
            if !matches!(ended, Ok(flate2::Status::StreamEnd))
                || zlib.total_out() != chunk_bytes as u64
            {
                return None;
            }
            let chunk = Chunk {
                bytes: inflated,
                shuffled: raw.shuffled,
                start,
                shape: &raw.shape,
            };
            copy_overlap(&chunk, extents, &out_shape, &mut out);
        }
        Some(())
    })?;
    Some(out)
}

/// One inflated chunk: its bytes (still shuffled if `shuffled`), first
/// index and shape.
struct Chunk<'a> {
    bytes: &'a [u8],
    shuffled: bool,
    start: &'a [usize],
    shape: &'a [usize],
}

impl Chunk<'_> {
    /// Decodes the `out.len()` values from flat index `from` on. Shuffle
    /// stores every value's first byte, then every second byte, …: value
    /// `i`'s byte `b` is at `b × values + i`, so the run is read from one
    /// slice per byte, in order, instead of first unshuffling the chunk.
    fn decode_run<T: RawSample>(&self, from: usize, out: &mut [T]) {
        match size_of::<T>() {
            1 => self.decode_run_n::<T, 1>(from, out),
            2 => self.decode_run_n::<T, 2>(from, out),
            4 => self.decode_run_n::<T, 4>(from, out),
            _ => self.decode_run_n::<T, 8>(from, out),
        }
    }

    fn decode_run_n<T: RawSample, const N: usize>(&self, from: usize, out: &mut [T]) {
        debug_assert_eq!(size_of::<T>(), N);
        let run = out.len();
        if self.shuffled {
            let values = self.bytes.len() / N;
            let planes: [&[u8]; N] =
                std::array::from_fn(|b| &self.bytes[b * values + from..][..run]);
            for (k, value) in out.iter_mut().enumerate() {
                let le: [u8; N] = std::array::from_fn(|b| planes[b][k]);
                *value = T::from_le(&le);
            }
        } else {
            let bytes = &self.bytes[from * N..][..run * N];
            for (value, le) in out.iter_mut().zip(bytes.chunks_exact(N)) {
                *value = T::from_le(le);
            }
        }
    }
}

/// Copies the part of one chunk inside `extents` into `out`, one run
/// along the last dimension at a time.
fn copy_overlap<T: RawSample>(
    chunk: &Chunk,
    extents: &[Range<usize>],
    out_shape: &[usize],
    out: &mut [T],
) {
    let (start, shape) = (chunk.start, chunk.shape);
    let rank = shape.len();
    let overlap: Vec<Range<usize>> = (0..rank)
        .map(|d| extents[d].start.max(start[d])..extents[d].end.min(start[d] + shape[d]))
        .collect();
    let run = overlap[rank - 1].len();
    crate::runs::for_each_run_start(&overlap, |index| {
        let (mut src, mut dst) = (0, 0);
        for d in 0..rank {
            src = src * shape[d] + (index[d] - start[d]);
            dst = dst * out_shape[d] + (index[d] - extents[d].start);
        }
        chunk.decode_run(src, &mut out[dst..dst + run]);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io_thread;
    use crate::reader::libnetcdf_values as through_libnetcdf;

    /// How a test variable is stored.
    #[derive(Clone, Copy, Debug)]
    struct Storage {
        chunk: [usize; 3],
        deflate: Option<bool>,
        big_endian: bool,
    }

    const DIMS: [usize; 3] = [3, 23, 37];

    /// A test value for cell `i`: distinct across a variable's cells
    /// where the type has room (u8 repeats every 251).
    trait Sample: RawSample + PartialEq + std::fmt::Debug {
        fn nth(i: usize) -> Self;
    }

    macro_rules! sample_from_i16 {
        ($($t:ty),*) => {$(
            impl Sample for $t {
                fn nth(i: usize) -> Self {
                    ((i % 30_000) as i16 - 15_000).into()
                }
            }
        )*};
    }
    sample_from_i16!(i16, f32, f64);

    impl Sample for u8 {
        fn nth(i: usize) -> Self {
            (i % 251) as u8
        }
    }

    /// A NetCDF4 file with `v(time, lat, lon)` of type `T` stored as
    /// `storage`, every value distinct; written on the NetCDF I/O thread.
    fn write<T: Sample>(path: &Path, storage: Storage) {
        let path = path.to_path_buf();
        io_thread::run(move || {
            let mut file = netcdf::create(&path).unwrap();
            for (name, len) in ["time", "lat", "lon"].iter().zip(DIMS) {
                file.add_dimension(name, len).unwrap();
            }
            let mut v = file
                .add_variable::<T>("v", &["time", "lat", "lon"])
                .unwrap();
            v.set_chunking(&storage.chunk).unwrap();
            if let Some(shuffle) = storage.deflate {
                v.set_compression(4, shuffle).unwrap();
            }
            if storage.big_endian {
                v.set_endianness(netcdf::Endianness::Big).unwrap();
            }
            let n: usize = DIMS.iter().product();
            let values: Vec<T> = (0..n).map(T::nth).collect();
            v.put_values(&values, ..).unwrap();
        });
    }

    fn direct<T: RawSample>(path: &Path, extents: &[Range<usize>]) -> Option<Vec<T>> {
        let (p, e) = (path.to_path_buf(), extents.to_vec());
        let raw = io_thread::run(move || read(&p, "v", &e, size_of::<T>()))?;
        assemble(&raw, extents)
    }

    /// Every step, and slabs that start and end inside chunks, on chunk
    /// edges, and past the last (partial) chunk.
    fn slabs() -> Vec<Vec<Range<usize>>> {
        let mut out = Vec::new();
        for t in 0..DIMS[0] {
            out.push(vec![t..t + 1, 0..DIMS[1], 0..DIMS[2]]);
        }
        out.push(vec![1..2, 5..17, 3..36]);
        out.push(vec![2..3, 22..23, 36..37]);
        out.push(vec![0..3, 10..20, 8..16]);
        out
    }

    fn same_as_libnetcdf<T: Sample>(storage: Storage) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.nc");
        write::<T>(&path, storage);
        assert!(is_hdf5(&path));
        for extents in slabs() {
            let got = direct::<T>(&path, &extents);
            let got = got.unwrap_or_else(|| panic!("{storage:?} {extents:?}: not read directly"));
            assert_eq!(
                got,
                through_libnetcdf::<T>(&path, &extents),
                "{storage:?} {extents:?}"
            );
        }
    }

    #[test]
    fn direct_reads_equal_libnetcdf_reads() {
        for chunk in [[1, 23, 37], [1, 10, 8], [2, 7, 37], [3, 23, 1]] {
            for deflate in [Some(true), Some(false)] {
                let storage = Storage {
                    chunk,
                    deflate,
                    big_endian: false,
                };
                // Every element size: 4, 2, 8 and 1 bytes.
                same_as_libnetcdf::<f32>(storage);
                same_as_libnetcdf::<i16>(storage);
                same_as_libnetcdf::<f64>(storage);
                same_as_libnetcdf::<u8>(storage);
            }
        }
    }

    #[test]
    fn other_layouts_are_left_to_libnetcdf() {
        let dir = tempfile::tempdir().unwrap();
        let whole = vec![0..1, 0..DIMS[1], 0..DIMS[2]];
        for (name, storage) in [
            (
                "no filter",
                Storage {
                    chunk: [1, 23, 37],
                    deflate: None,
                    big_endian: false,
                },
            ),
            (
                "big-endian",
                Storage {
                    chunk: [1, 23, 37],
                    deflate: Some(true),
                    big_endian: true,
                },
            ),
        ] {
            let path = dir.path().join(format!("{name}.nc"));
            write::<f32>(&path, storage);
            assert!(direct::<f32>(&path, &whole).is_none(), "{name}");
        }
        // Not HDF5 at all.
        let classic = dir.path().join("classic.nc");
        std::fs::write(&classic, b"CDF\x01\0\0\0\0").unwrap();
        assert!(!is_hdf5(&classic));
    }

    /// A chunk whose deflated bytes are damaged does not inflate: `None`,
    /// so the step is read through libnetcdf, which reports the file.
    #[test]
    fn a_damaged_chunk_is_left_to_libnetcdf() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.nc");
        let storage = Storage {
            chunk: [1, 23, 37],
            deflate: Some(true),
            big_endian: false,
        };
        write::<f32>(&path, storage);
        let whole = vec![1..2, 0..DIMS[1], 0..DIMS[2]];
        let (p, e) = (path.clone(), whole.clone());
        let mut raw = io_thread::run(move || read(&p, "v", &e, 4)).unwrap();
        let stored = &mut raw.chunks[0].1;
        let middle = stored.len() / 2;
        stored[middle..middle + 8].fill(0xA5);
        assert!(assemble::<f32>(&raw, &whole).is_none());
    }

    /// A chunk shape larger than deflate could inflate the chunk's bytes to
    /// (a damaged chunk index) is left to libnetcdf, not allocated: 4 TiB
    /// here.
    #[test]
    fn a_chunk_its_bytes_cannot_fill_is_left_to_libnetcdf() {
        let raw = RawChunks {
            shape: vec![1, 1 << 20, 1 << 20],
            shuffled: false,
            chunks: vec![(vec![0, 0, 0], vec![0x78, 0x9c, 3, 0, 0, 0, 0, 1])],
        };
        assert!(assemble::<f32>(&raw, &[0..1, 0..2, 0..2]).is_none());
    }

    #[test]
    fn chunks_touched_by_a_slab_in_row_major_order() {
        let starts = chunk_starts(&[3..4, 5..25, 0..10], &[1, 10, 8]);
        assert_eq!(
            starts,
            vec![
                vec![3, 0, 0],
                vec![3, 0, 8],
                vec![3, 10, 0],
                vec![3, 10, 8],
                vec![3, 20, 0],
                vec![3, 20, 8],
            ]
        );
        assert!(chunk_starts(&[0..0, 0..4], &[1, 4]).is_empty());
    }
}
