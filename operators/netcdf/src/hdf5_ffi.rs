//! The HDF5 1.10 C functions uqcast calls itself, beside libnetcdf: direct
//! chunk reads ([`crate::chunks`]) and walks of files read by range
//! ([`crate::ranged`]). HDF5 comes with libnetcdf, which links it.

#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_uint, c_void};

pub type Hid = i64;
pub type Herr = c_int;
pub type Haddr = u64;

pub const H5P_DEFAULT: Hid = 0;
pub const H5S_ALL: Hid = 0;
pub const H5E_DEFAULT: Hid = 0;
pub const H5F_ACC_RDONLY: c_uint = 0;
pub const H5D_CHUNKED: c_int = 2;
pub const H5T_ORDER_LE: c_int = 0;
pub const H5Z_FILTER_DEFLATE: c_int = 1;
pub const H5Z_FILTER_SHUFFLE: c_int = 2;
pub const H5I_GROUP: c_int = 2;
pub const H5I_DATASET: c_int = 5;
pub const H5_INDEX_NAME: c_int = 0;
pub const H5_INDEX_CRT_ORDER: c_int = 1;
pub const H5_ITER_INC: c_int = 0;
pub const HADDR_UNDEF: Haddr = u64::MAX;
/// `H5FD_FLMAP_DICHOTOMY`: the POSIX driver's free-list map.
pub const H5FD_FLMAP_DICHOTOMY: [c_int; 7] = [1, 1, 1, 3, 3, 1, 1];

pub type LinkVisitor = unsafe extern "C" fn(Hid, *const c_char, *const c_void, *mut c_void) -> Herr;

unsafe extern "C" {
    pub static H5P_CLS_FILE_ACCESS_ID_g: Hid;
    pub fn H5open() -> Herr;
    pub fn H5Eset_auto2(stack: Hid, func: *const c_void, data: *mut c_void) -> Herr;
    pub fn H5FDregister(class: *const crate::ranged::driver::DriverClass) -> Hid;
    pub fn H5Fopen(name: *const c_char, flags: c_uint, fapl: Hid) -> Hid;
    pub fn H5Fclose(file: Hid) -> Herr;
    pub fn H5Pcreate(class: Hid) -> Hid;
    pub fn H5Pset_driver(plist: Hid, driver: Hid, info: *const c_void) -> Herr;
    pub fn H5Oopen(loc: Hid, name: *const c_char, lapl: Hid) -> Hid;
    pub fn H5Oclose(object: Hid) -> Herr;
    pub fn H5Iget_type(id: Hid) -> c_int;
    pub fn H5Literate(
        group: Hid,
        index: c_int,
        order: c_int,
        idx: *mut u64,
        visit: LinkVisitor,
        data: *mut c_void,
    ) -> Herr;
    pub fn H5Aiterate2(
        object: Hid,
        index: c_int,
        order: c_int,
        idx: *mut u64,
        visit: LinkVisitor,
        data: *mut c_void,
    ) -> Herr;
    pub fn H5Aopen(object: Hid, name: *const c_char, aapl: Hid) -> Hid;
    pub fn H5Aclose(attribute: Hid) -> Herr;
    pub fn H5Aget_type(attribute: Hid) -> Hid;
    pub fn H5Aget_space(attribute: Hid) -> Hid;
    pub fn H5Aread(attribute: Hid, mem_type: Hid, buf: *mut c_void) -> Herr;
    pub fn H5Dopen2(file: Hid, name: *const c_char, dapl: Hid) -> Hid;
    pub fn H5Dclose(dataset: Hid) -> Herr;
    pub fn H5Dget_create_plist(dataset: Hid) -> Hid;
    pub fn H5Dget_type(dataset: Hid) -> Hid;
    pub fn H5Dget_space(dataset: Hid) -> Hid;
    pub fn H5Dget_storage_size(dataset: Hid) -> u64;
    pub fn H5Dread(
        dataset: Hid,
        mem_type: Hid,
        mem_space: Hid,
        file_space: Hid,
        dxpl: Hid,
        buf: *mut c_void,
    ) -> Herr;
    pub fn H5Dvlen_reclaim(datatype: Hid, space: Hid, dxpl: Hid, buf: *mut c_void) -> Herr;
    pub fn H5Dget_chunk_storage_size(dataset: Hid, offset: *const u64, bytes: *mut u64) -> Herr;
    pub fn H5Dget_chunk_info_by_coord(
        dataset: Hid,
        offset: *const u64,
        filters: *mut c_uint,
        addr: *mut Haddr,
        size: *mut u64,
    ) -> Herr;
    pub fn H5Dread_chunk(
        dataset: Hid,
        dxpl: Hid,
        offset: *const u64,
        filters: *mut u32,
        buf: *mut u8,
    ) -> Herr;
    pub fn H5Pclose(plist: Hid) -> Herr;
    pub fn H5Pget_layout(plist: Hid) -> c_int;
    pub fn H5Pget_chunk(plist: Hid, max_rank: c_int, dims: *mut u64) -> c_int;
    pub fn H5Pget_nfilters(plist: Hid) -> c_int;
    pub fn H5Pget_filter2(
        plist: Hid,
        index: c_uint,
        flags: *mut c_uint,
        cd_count: *mut usize,
        cd_values: *mut c_uint,
        name_len: usize,
        name: *mut c_char,
        config: *mut c_uint,
    ) -> c_int;
    pub fn H5Sclose(space: Hid) -> Herr;
    pub fn H5Sget_simple_extent_ndims(space: Hid) -> c_int;
    pub fn H5Sget_simple_extent_dims(space: Hid, dims: *mut u64, max: *mut u64) -> c_int;
    pub fn H5Sget_simple_extent_npoints(space: Hid) -> i64;
    pub fn H5Tclose(datatype: Hid) -> Herr;
    pub fn H5Tget_size(datatype: Hid) -> usize;
    pub fn H5Tget_order(datatype: Hid) -> c_int;
}

/// An HDF5 identifier closed on drop by its own close function.
pub struct Handle(pub Hid, unsafe extern "C" fn(Hid) -> Herr);

impl Handle {
    pub fn open(id: Hid, close: unsafe extern "C" fn(Hid) -> Herr) -> Option<Self> {
        (id >= 0).then_some(Self(id, close))
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: `self.0` is a valid identifier of the kind `self.1` closes.
        unsafe { (self.1)(self.0) };
    }
}

/// Turns HDF5's error printer off on the calling thread (HDF5 set up first
/// if it is not yet). Probes that fail by design (libnetcdf looks for the
/// quantize attributes of every NetCDF4 variable; ERA5 files have none)
/// would each print a stack.
pub fn silence_errors() {
    // SAFETY: library set-up and a null printer: no pointer is read.
    unsafe {
        H5open();
        H5Eset_auto2(H5E_DEFAULT, std::ptr::null(), std::ptr::null_mut());
    }
}
