//! NetCDF3 step reads without libnetcdf.
//!
//! A classic file stores every value uncompressed and big-endian, at
//! offsets its header gives ([`Layout`]). Through libnetcdf, every step
//! read ran on the one NetCDF I/O thread, so the partitions of a scan took
//! turns at copying and byte-swapping their steps. Here each partition
//! reads its own bytes with positioned reads (which need no lock) and
//! decodes them on its own thread.
//!
//! Anything this does not handle returns `None`, and the step is read
//! through libnetcdf as before, which reports a damaged file as it always
//! did: a variable the header does not list with the expected element
//! size, a step past the records written, a read that comes up short.

use std::fs::File;
use std::io::BufReader;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::cf::RawSample;
use crate::classic::{Layout, StoredVariable};

/// A classic file open for positioned reads, with its header's layout.
#[derive(Debug)]
pub struct ClassicFile {
    file: File,
    layout: Layout,
}

impl ClassicFile {
    /// `None` when `path` is not a classic file or its header does not read
    /// (libnetcdf then reads it, and says what is wrong).
    pub fn open(path: &Path) -> Option<Self> {
        let file = File::open(path).ok()?;
        let layout = Layout::read(BufReader::new(&file)).ok()??;
        // Data the header places past the file's end (a damaged header, a
        // cut download) is libnetcdf's to report; this also bounds every
        // span read below by the file's size.
        if layout.data_end() > file.metadata().ok()?.len() {
            return None;
        }
        Some(Self { file, layout })
    }

    /// The stored values of `variable` over `extents` (one range per
    /// dimension, row-major), or `None` where this path does not apply
    /// (module docs).
    pub fn read<T: RawSample>(&self, variable: &str, extents: &[Range<usize>]) -> Option<Vec<T>> {
        let v = self.layout.variables.iter().find(|v| v.name == variable)?;
        let element = size_of::<T>();
        if v.element != element as u64 || v.shape.len() != extents.len() || extents.is_empty() {
            return None;
        }
        let lengths = self.lengths(v);
        let inside = extents
            .iter()
            .zip(&lengths)
            .all(|(r, &n)| r.start <= r.end && r.end as u64 <= n);
        if !inside {
            return None;
        }
        let count: usize = extents.iter().map(|r| r.len()).product();
        let mut out = Vec::with_capacity(count);
        if count == 0 {
            return Some(out);
        }
        // Bytes from one index of the first dimension to the next: a record,
        // or one slab of the other dimensions.
        let inner: u64 = lengths[1..].iter().product::<u64>() * element as u64;
        let stride = if v.is_record {
            self.layout.record_size
        } else {
            inner
        };
        let rows = Rows::new(&lengths[1..], &extents[1..], element);
        for index in extents[0].clone() {
            let at = (index as u64)
                .checked_mul(stride)
                .and_then(|o| o.checked_add(v.begin))
                .and_then(|o| o.checked_add(rows.first))?;
            crate::scratch::with_buffer(rows.span, |span| {
                self.file.read_exact_at(span, at).ok()?;
                rows.decode(span, &mut out);
                Some(())
            })?;
        }
        Some(out)
    }

    /// Each dimension's length, the record dimension's the records written.
    fn lengths(&self, v: &StoredVariable) -> Vec<u64> {
        let mut lengths = v.shape.clone();
        if v.is_record {
            lengths[0] = self.layout.records;
        }
        lengths
    }
}

/// The runs along the last dimension that a slab of one first-dimension
/// index reads, as offsets into the one span of bytes that holds them all.
/// One read per step: for a slab of whole rows the span is exactly the
/// slab; for a narrower one it also holds the cells between its rows.
struct Rows {
    /// Where the span starts, from the start of the first index's data.
    first: u64,
    span: usize,
    /// Each run's offset into the span, in row-major order.
    runs: Vec<usize>,
    run_bytes: usize,
    element: usize,
}

impl Rows {
    /// `lengths` and `extents` of the dimensions after the first.
    fn new(lengths: &[u64], extents: &[Range<usize>], element: usize) -> Self {
        let rank = lengths.len();
        // Bytes from one index of dimension d to the next.
        let mut strides = vec![element as u64; rank];
        for d in (0..rank.saturating_sub(1)).rev() {
            strides[d] = strides[d + 1] * lengths[d + 1];
        }
        let offset = |index: &[usize]| -> u64 {
            index
                .iter()
                .zip(&strides)
                .map(|(&i, &s)| i as u64 * s)
                .sum()
        };
        let run = extents.last().map_or(1, |r| r.len());
        let mut offsets = Vec::new();
        crate::runs::for_each_run_start(extents, |index| offsets.push(offset(index)));
        let first = offsets[0];
        let run_bytes = run * element;
        let end = offsets[offsets.len() - 1] + run_bytes as u64;
        Self {
            first,
            span: (end - first) as usize,
            runs: offsets.iter().map(|&o| (o - first) as usize).collect(),
            run_bytes,
            element,
        }
    }

    /// Appends the values of every run in `span` to `out`.
    fn decode<T: RawSample>(&self, span: &[u8], out: &mut Vec<T>) {
        match self.element {
            1 => self.decode_n::<T, 1>(span, out),
            2 => self.decode_n::<T, 2>(span, out),
            4 => self.decode_n::<T, 4>(span, out),
            _ => self.decode_n::<T, 8>(span, out),
        }
    }

    fn decode_n<T: RawSample, const N: usize>(&self, span: &[u8], out: &mut Vec<T>) {
        for &at in &self.runs {
            let run = &span[at..at + self.run_bytes];
            out.extend(run.chunks_exact(N).map(T::from_be));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io_thread;
    use crate::reader::libnetcdf_values as through_libnetcdf;

    /// What a test file holds: its format, and whether its time dimension
    /// is unlimited (records) or fixed.
    #[derive(Clone, Copy, Debug)]
    struct Form {
        format: Format,
        records: bool,
        /// A second record variable, so records are padded to 4 bytes.
        companion: bool,
    }

    /// CDF-1, CDF-2 and CDF-5.
    #[derive(Clone, Copy, Debug)]
    enum Format {
        Classic,
        Offset64,
        Data64,
    }

    impl Format {
        fn options(self) -> netcdf::Options {
            match self {
                Self::Classic => netcdf::Options::CLASSIC,
                Self::Offset64 => netcdf::Options::_64BIT_OFFSET,
                Self::Data64 => netcdf::Options::_64BIT_DATA,
            }
        }
    }

    /// Odd lengths, so a record of one int16 variable is not a multiple of 4.
    const DIMS: [usize; 4] = [3, 2, 5, 7];

    /// `v(time, expver, lat, lon)` of type `T`, every value distinct.
    fn write<T>(path: &Path, form: Form, value: fn(usize) -> T)
    where
        T: RawSample + netcdf::NcTypeDescriptor,
    {
        let path = path.to_path_buf();
        io_thread::run(move || {
            let mut file = netcdf::create_with(&path, form.format.options()).unwrap();
            if form.records {
                file.add_unlimited_dimension("time").unwrap();
            } else {
                file.add_dimension("time", DIMS[0]).unwrap();
            }
            for (name, len) in ["expver", "lat", "lon"].iter().zip(&DIMS[1..]) {
                file.add_dimension(name, *len).unwrap();
            }
            let dims = ["time", "expver", "lat", "lon"];
            file.add_variable::<T>("v", &dims).unwrap();
            if form.companion {
                file.add_variable::<i8>("c", &dims).unwrap();
            }
            file.enddef().unwrap();
            let n: usize = DIMS.iter().product();
            let values: Vec<T> = (0..n).map(value).collect();
            file.variable_mut("v")
                .unwrap()
                .put_values(&values, DIMS.map(|n| 0..n).to_vec())
                .unwrap();
            if form.companion {
                let c: Vec<i8> = (0..n).map(|i| (i % 100) as i8).collect();
                file.variable_mut("c")
                    .unwrap()
                    .put_values(&c, DIMS.map(|n| 0..n).to_vec())
                    .unwrap();
            }
            file.close().unwrap();
        });
    }

    /// Whole steps, one expver slice, slabs inside the grid, a single cell,
    /// several steps at once.
    fn slabs() -> Vec<Vec<Range<usize>>> {
        let [t, e, y, x] = DIMS;
        let mut out: Vec<Vec<Range<usize>>> =
            (0..t).map(|s| vec![s..s + 1, 0..e, 0..y, 0..x]).collect();
        out.push(vec![1..2, 1..2, 0..y, 0..x]);
        out.push(vec![2..3, 0..e, 1..4, 2..6]);
        out.push(vec![0..1, 1..2, 4..5, 6..7]);
        out.push(vec![0..3, 0..e, 2..5, 0..3]);
        out
    }

    fn same_as_libnetcdf<T>(form: Form, value: fn(usize) -> T)
    where
        T: RawSample + netcdf::NcTypeDescriptor + PartialEq + std::fmt::Debug,
    {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.nc");
        write(&path, form, value);
        let file = ClassicFile::open(&path).expect("a classic file");
        for extents in slabs() {
            let got = file.read::<T>("v", &extents);
            let got = got.unwrap_or_else(|| panic!("{form:?} {extents:?}: not read directly"));
            assert_eq!(
                got,
                through_libnetcdf::<T>(&path, &extents),
                "{form:?} {extents:?}"
            );
        }
    }

    #[test]
    fn direct_reads_equal_libnetcdf_reads() {
        for format in [Format::Classic, Format::Offset64, Format::Data64] {
            for (records, companion) in [(true, false), (true, true), (false, false)] {
                let form = Form {
                    format,
                    records,
                    companion,
                };
                same_as_libnetcdf::<i16>(form, |i| (i as i16) * 97 - 3000);
                same_as_libnetcdf::<f32>(form, |i| i as f32 * 0.25 - 10.0);
                same_as_libnetcdf::<f64>(form, |i| i as f64 * 1e-3 + 1e6);
                same_as_libnetcdf::<i8>(form, |i| (i % 250) as i8);
            }
        }
    }

    /// What it leaves to libnetcdf: a step past the records written, a
    /// variable it does not list, the wrong element size or rank, a file
    /// whose data are cut short, and files that are not classic.
    #[test]
    fn what_it_leaves_to_libnetcdf() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.nc");
        let form = Form {
            format: Format::Offset64,
            records: true,
            companion: false,
        };
        write(&path, form, |i| i as i16);
        let file = ClassicFile::open(&path).unwrap();
        let [t, e, y, x] = DIMS;
        let step = |s: usize| vec![s..s + 1, 0..e, 0..y, 0..x];
        assert!(file.read::<i16>("v", &step(t - 1)).is_some());
        assert!(
            file.read::<i16>("v", &step(t)).is_none(),
            "past the records"
        );
        assert!(
            file.read::<i16>("w", &step(0)).is_none(),
            "no such variable"
        );
        assert!(file.read::<f32>("v", &step(0)).is_none(), "wrong size");
        assert!(file.read::<i16>("v", &step(0)[1..]).is_none(), "wrong rank");

        // Cut short before opening: not opened; after: the read comes up short.
        let length = std::fs::metadata(&path).unwrap().len();
        let cut = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        cut.set_len(length - 10).unwrap();
        assert!(file.read::<i16>("v", &step(0)).is_some());
        assert!(file.read::<i16>("v", &step(t - 1)).is_none(), "cut short");
        assert!(ClassicFile::open(&path).is_none());

        let hdf5 = dir.path().join("v4.nc");
        std::fs::write(&hdf5, b"\x89HDF\r\n\x1a\n").unwrap();
        assert!(ClassicFile::open(&hdf5).is_none());
        assert!(ClassicFile::open(&dir.path().join("missing.nc")).is_none());
    }
}
