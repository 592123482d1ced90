//! The walk that makes HDF5 read, through the ranged driver, every byte
//! libnetcdf reads to open and describe a NetCDF4 file: every object's
//! header, every attribute (by both of HDF5's indexes, and its value, which
//! reaches the global heap for variable-length ones and references), the
//! values of every variable of at most one dimension (the coordinates),
//! and the whole chunk index of every other variable, which it returns.

#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_char, c_int, c_void};

use super::ChunkedVariable;
use crate::hdf5_ffi::*;

/// Deeper group nesting than this is not walked (a link cycle).
const MAX_DEPTH: usize = 32;
/// A variable of at most one dimension is read whole only up to this size.
const MAX_COORDINATE_BYTES: u64 = 256 << 20;
/// A variable with more chunks than this is not indexed.
const MAX_CHUNKS: u64 = 10_000_000;

/// Why a walk stopped, in words: HDF5 could not read something (the file
/// is damaged, or a fetch failed), or the file has a layout this reading
/// does not plan. Either way the object is downloaded instead.
#[derive(Debug)]
pub struct Stop(pub String);

/// Walks the file at `name` (opened with `fapl`): the chunked variables.
pub fn walk(name: &CStr, fapl: Hid) -> Result<Vec<ChunkedVariable>, Stop> {
    // SAFETY: every identifier is checked before use and closed by its
    // Handle; buffers passed to HDF5 are sized as each call requires.
    unsafe {
        let file = Handle::open(H5Fopen(name.as_ptr(), H5F_ACC_RDONLY, fapl), H5Fclose)
            .ok_or_else(|| Stop("HDF5 cannot open it".into()))?;
        let root = Handle::open(H5Oopen(file.0, c"/".as_ptr(), H5P_DEFAULT), H5Oclose)
            .ok_or_else(|| Stop("no root group".into()))?;
        let mut found = Vec::new();
        visit(&root, "", 0, &mut found)?;
        Ok(found)
    }
}

/// Reads `object`'s attributes, then its values or chunk index (a
/// variable) or its members (a group), `path` naming it.
unsafe fn visit(
    object: &Handle,
    path: &str,
    depth: usize,
    found: &mut Vec<ChunkedVariable>,
) -> Result<(), Stop> {
    // SAFETY (whole body): as in `walk`.
    unsafe {
        read_attributes(object.0, path)?;
        match H5Iget_type(object.0) {
            H5I_GROUP if depth < MAX_DEPTH => {
                for name in names(object.0, H5Literate, path)? {
                    let c = CString::new(name.as_str()).map_err(|_| Stop(name.clone()))?;
                    let child = Handle::open(H5Oopen(object.0, c.as_ptr(), H5P_DEFAULT), H5Oclose)
                        .ok_or_else(|| Stop(format!("{path}/{name}: cannot open")))?;
                    visit(&child, &format!("{path}/{name}"), depth + 1, found)?;
                }
                Ok(())
            }
            H5I_GROUP => Err(Stop(format!("{path}: groups nested too deep"))),
            H5I_DATASET => variable(object.0, path, found),
            _ => Ok(()),
        }
    }
}

/// The names an iteration (links of a group, attributes of an object)
/// visits, by name and, where HDF5 tracks it, by creation order: the two
/// indexes libnetcdf looks things up by.
unsafe fn names(
    object: Hid,
    iterate: unsafe extern "C" fn(Hid, c_int, c_int, *mut u64, LinkVisitor, *mut c_void) -> Herr,
    path: &str,
) -> Result<Vec<String>, Stop> {
    unsafe extern "C" fn collect(
        _: Hid,
        name: *const c_char,
        _: *const c_void,
        data: *mut c_void,
    ) -> Herr {
        // SAFETY: `data` is the Vec passed below; `name` a C string.
        unsafe {
            let names = &mut *data.cast::<Vec<String>>();
            names.push(CStr::from_ptr(name).to_string_lossy().into_owned());
        }
        0
    }
    let mut by_name: Vec<String> = Vec::new();
    let mut by_creation: Vec<String> = Vec::new();
    // SAFETY: the callbacks get the Vecs, which outlive the calls.
    unsafe {
        let data = (&mut by_name as *mut Vec<String>).cast::<c_void>();
        if iterate(
            object,
            H5_INDEX_NAME,
            H5_ITER_INC,
            std::ptr::null_mut(),
            collect,
            data,
        ) < 0
        {
            return Err(Stop(format!("{path}: cannot list its members")));
        }
        // Fails where creation order is not tracked, which is not an error.
        let data = (&mut by_creation as *mut Vec<String>).cast::<c_void>();
        iterate(
            object,
            H5_INDEX_CRT_ORDER,
            H5_ITER_INC,
            std::ptr::null_mut(),
            collect,
            data,
        );
    }
    Ok(by_name)
}

/// Opens and reads every attribute of `object`.
unsafe fn read_attributes(object: Hid, path: &str) -> Result<(), Stop> {
    // SAFETY (whole body): as in `walk`.
    unsafe {
        for name in names(object, H5Aiterate2, path)? {
            let unreadable = || Stop(format!("{path} attribute {name}: cannot read"));
            let c = CString::new(name.as_str()).map_err(|_| unreadable())?;
            let attribute = Handle::open(H5Aopen(object, c.as_ptr(), H5P_DEFAULT), H5Aclose)
                .ok_or_else(unreadable)?;
            let datatype =
                Handle::open(H5Aget_type(attribute.0), H5Tclose).ok_or_else(unreadable)?;
            let space = Handle::open(H5Aget_space(attribute.0), H5Sclose).ok_or_else(unreadable)?;
            let read = |buf: *mut c_void| H5Aread(attribute.0, datatype.0, buf);
            read_values(datatype.0, space.0, u64::MAX, read).ok_or_else(unreadable)?;
        }
        Ok(())
    }
}

/// Reads all values of a dataspace `space` of type `datatype` with `read`,
/// then frees what HDF5 allocated for variable-length values; `None` if the
/// read fails or the values are larger than `limit` bytes.
unsafe fn read_values(
    datatype: Hid,
    space: Hid,
    limit: u64,
    read: impl FnOnce(*mut c_void) -> Herr,
) -> Option<()> {
    // SAFETY (whole body): as in `walk`.
    unsafe {
        let points = u64::try_from(H5Sget_simple_extent_npoints(space)).ok()?;
        let bytes = points.checked_mul(H5Tget_size(datatype) as u64)?;
        if bytes > limit {
            return None;
        }
        // u64 words: aligned for any element type.
        let mut buf = vec![0u64; (bytes as usize).div_ceil(8).max(1)];
        let ptr = buf.as_mut_ptr().cast::<c_void>();
        if read(ptr) < 0 {
            return None;
        }
        // A no-op for values without variable-length parts.
        H5Dvlen_reclaim(datatype, space, H5P_DEFAULT, ptr);
        Some(())
    }
}

/// A variable: read whole if it has at most one dimension; else its chunk
/// index, every chunk looked up once, added to `found`.
unsafe fn variable(dataset: Hid, path: &str, found: &mut Vec<ChunkedVariable>) -> Result<(), Stop> {
    // SAFETY (whole body): as in `walk`.
    unsafe {
        let unreadable = |what: &str| Stop(format!("{path}: cannot read its {what}"));
        let space =
            Handle::open(H5Dget_space(dataset), H5Sclose).ok_or_else(|| unreadable("shape"))?;
        let rank = usize::try_from(H5Sget_simple_extent_ndims(space.0))
            .map_err(|_| unreadable("shape"))?;
        if rank <= 1 {
            let datatype =
                Handle::open(H5Dget_type(dataset), H5Tclose).ok_or_else(|| unreadable("type"))?;
            if H5Dget_storage_size(dataset) > MAX_COORDINATE_BYTES {
                return Err(Stop(format!(
                    "{path}: a one-dimensional variable too large to fetch"
                )));
            }
            let read = |buf| H5Dread(dataset, datatype.0, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf);
            return read_values(datatype.0, space.0, MAX_COORDINATE_BYTES, read)
                .ok_or_else(|| unreadable("values"));
        }
        let mut dims = vec![0u64; rank];
        if H5Sget_simple_extent_dims(space.0, dims.as_mut_ptr(), std::ptr::null_mut()) < 0 {
            return Err(unreadable("shape"));
        }
        let plist = Handle::open(H5Dget_create_plist(dataset), H5Pclose)
            .ok_or_else(|| unreadable("layout"))?;
        if H5Pget_layout(plist.0) != H5D_CHUNKED {
            return Err(Stop(format!("{path}: not stored in chunks")));
        }
        let mut shape = vec![0u64; rank];
        if H5Pget_chunk(plist.0, rank as c_int, shape.as_mut_ptr()) != rank as c_int
            || shape.contains(&0)
        {
            return Err(unreadable("chunk shape"));
        }
        let per_side: Vec<u64> = dims
            .iter()
            .zip(&shape)
            .map(|(d, s)| d.div_ceil(*s))
            .collect();
        if per_side
            .iter()
            .try_fold(1u64, |n, &k| n.checked_mul(k))
            .is_none_or(|n| n > MAX_CHUNKS)
        {
            return Err(Stop(format!("{path}: too many chunks")));
        }
        let mut chunks = Vec::new();
        let mut index = vec![0u64; rank];
        'chunks: while !dims.contains(&0) {
            let offset: Vec<u64> = index.iter().zip(&shape).map(|(i, s)| i * s).collect();
            let (mut filters, mut addr, mut size) = (0, 0, 0);
            if H5Dget_chunk_info_by_coord(
                dataset,
                offset.as_ptr(),
                &mut filters,
                &mut addr,
                &mut size,
            ) < 0
            {
                return Err(unreadable("chunk index"));
            }
            // An unwritten chunk reads as the fill value, from no bytes.
            if addr != HADDR_UNDEF && size > 0 {
                chunks.push((offset[0], addr..addr + size));
            }
            for d in (0..rank).rev() {
                index[d] += 1;
                if index[d] < per_side[d] {
                    continue 'chunks;
                }
                index[d] = 0;
            }
            break;
        }
        found.push(ChunkedVariable {
            name: path.trim_start_matches('/').to_string(),
            steps_per_chunk: shape[0],
            chunks,
        });
        Ok(())
    }
}
