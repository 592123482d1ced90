//! The layout of a classic NetCDF (CDF-1, CDF-2, CDF-5) file, from its header.
//!
//! The header (big-endian, 4-byte padded) records where every variable's
//! data begins and how large it is. Two uses: libnetcdf zero-fills reads
//! past the end of a classic file, so a truncated download would silently
//! read as zeros unless the data's end is checked against the file's size;
//! and a file in an object store can be inspected from its header and its
//! coordinates' bytes alone, fetched by range ([`Layout::coordinate_ranges`]).

use std::io::{BufReader, Read};
use std::ops::Range;
use std::path::Path;

use crate::error::{NetcdfError, Result};

const NC_DIMENSION: u32 = 0x0A;
const NC_VARIABLE: u32 = 0x0B;
const NC_ATTRIBUTE: u32 = 0x0C;
const STREAMING: u64 = 0xFFFF_FFFF;

/// Where a classic file's header ends and each variable's data lies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Bytes of the header; data starts at or after this offset.
    pub header_len: u64,
    pub variables: Vec<StoredVariable>,
    /// Records written (0 for a file written in streaming mode).
    pub records: u64,
    /// Bytes from one record to the next.
    pub record_size: u64,
    /// Where the data ends (checked in [`Layout::read`] to fit a u64).
    data_end: u64,
}

/// One variable's place in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredVariable {
    pub name: String,
    /// Each dimension's length; a record variable's first is 0 (the
    /// records written are [`Layout::records`]).
    pub shape: Vec<u64>,
    /// Bytes of one value.
    pub element: u64,
    /// Offset of its data (of its first record's, for a record variable).
    pub begin: u64,
    /// Bytes of its data (of one record's, for a record variable).
    pub bytes: u64,
    pub is_record: bool,
}

struct Header<R> {
    input: R,
    version: u8,
    read: u64,
}

impl<R: Read> Header<R> {
    fn bytes<const N: usize>(&mut self) -> std::io::Result<[u8; N]> {
        let mut b = [0; N];
        self.input.read_exact(&mut b)?;
        self.read += N as u64;
        Ok(b)
    }
    fn u32(&mut self) -> std::io::Result<u32> {
        self.bytes::<4>().map(u32::from_be_bytes)
    }
    fn u64(&mut self) -> std::io::Result<u64> {
        self.bytes::<8>().map(u64::from_be_bytes)
    }
    /// NON_NEG: 4 bytes, 8 in CDF-5.
    fn count(&mut self) -> std::io::Result<u64> {
        if self.version == 5 {
            self.u64()
        } else {
            self.u32().map(u64::from)
        }
    }
    /// OFFSET: 4 bytes in CDF-1, 8 otherwise.
    fn offset(&mut self) -> std::io::Result<u64> {
        if self.version == 1 {
            self.u32().map(u64::from)
        } else {
            self.u64()
        }
    }
    fn padded(&mut self, n: u64) -> std::io::Result<Vec<u8>> {
        let padded = n.div_ceil(4) * 4;
        let mut b = Vec::new();
        (&mut self.input).take(padded).read_to_end(&mut b)?;
        if (b.len() as u64) < padded {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.read += padded;
        b.truncate(n as usize);
        Ok(b)
    }
    fn name(&mut self) -> std::io::Result<String> {
        let n = self.count()?;
        if n > 1 << 20 {
            return Err(invalid(format!("a name of {n} bytes")));
        }
        // Names are UTF-8 in every classic format; the netcdf crate panics
        // on one that is not, so a damaged name is refused here, before
        // libnetcdf opens the file.
        String::from_utf8(self.padded(n)?).map_err(|e| {
            // Its first characters, control characters escaped: one line.
            let shown: String = String::from_utf8_lossy(e.as_bytes())
                .chars()
                .take(40)
                .collect();
            invalid(format!("a name of {n} bytes that is not UTF-8: {shown:?}"))
        })
    }
    fn list_len(&mut self, tag: u32) -> std::io::Result<u64> {
        let found = self.u32()?;
        let n = self.count()?;
        if found == 0 || found == tag {
            Ok(n)
        } else {
            Err(invalid(format!("unexpected header tag {found:#x}")))
        }
    }
    fn attributes(&mut self) -> std::io::Result<()> {
        for _ in 0..self.list_len(NC_ATTRIBUTE)? {
            self.name()?;
            let size = type_size(self.u32()?)?;
            let n = self.count()?;
            let bytes = n
                .checked_mul(size)
                .ok_or_else(|| invalid("attribute size".into()))?;
            let padded = padded(bytes)?;
            let skipped = std::io::copy(&mut (&mut self.input).take(padded), &mut std::io::sink())?;
            if skipped < padded {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.read += padded;
        }
        Ok(())
    }
}

fn invalid(problem: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, problem)
}

/// `n` rounded up to the header's 4-byte alignment.
fn padded(n: u64) -> std::io::Result<u64> {
    n.div_ceil(4)
        .checked_mul(4)
        .ok_or_else(|| invalid(format!("a size of {n} bytes")))
}

fn type_size(nc_type: u32) -> std::io::Result<u64> {
    Ok(match nc_type {
        1 | 2 | 7 => 1,
        3 | 8 => 2,
        4 | 5 | 9 => 4,
        6 | 10 | 11 => 8,
        other => return Err(invalid(format!("unknown type {other}"))),
    })
}

impl Layout {
    /// The layout of the classic file whose bytes `input` reads from the
    /// start, or `None` if it is not a classic file (NetCDF4/HDF5). An
    /// `UnexpectedEof` error: `input` ends inside the header.
    pub fn read(input: impl Read) -> std::io::Result<Option<Self>> {
        let mut h = Header {
            input,
            version: 0,
            read: 0,
        };
        let magic = match h.bytes::<4>() {
            Ok(m) if &m[..3] == b"CDF" && matches!(m[3], 1 | 2 | 5) => m,
            _ => return Ok(None),
        };
        h.version = magic[3];
        let records = h.count()?;
        let mut dims = Vec::new();
        for _ in 0..h.list_len(NC_DIMENSION)? {
            h.name()?;
            dims.push(h.count()?);
        }
        h.attributes()?;
        let mut variables = Vec::new();
        for _ in 0..h.list_len(NC_VARIABLE)? {
            let name = h.name()?;
            let ndims = h.count()?;
            let mut shape = Vec::new();
            for _ in 0..ndims {
                let id = h.count()? as usize;
                shape.push(
                    *dims
                        .get(id)
                        .ok_or_else(|| invalid(format!("{name}: bad dimension id {id}")))?,
                );
            }
            h.attributes()?;
            let size = type_size(h.u32()?)?;
            let _vsize = h.count()?;
            let begin = h.offset()?;
            let is_record = shape.first() == Some(&0);
            let elements = shape
                .iter()
                .skip(usize::from(is_record))
                .try_fold(1u64, |n, &d| n.checked_mul(d))
                .and_then(|n| n.checked_mul(size))
                .ok_or_else(|| invalid(format!("{name}: size overflows")))?;
            variables.push(StoredVariable {
                name,
                shape,
                element: size,
                begin,
                bytes: elements,
                is_record,
            });
        }
        let record_vars: Vec<_> = variables.iter().filter(|v| v.is_record).collect();
        // One record variable is stored unpadded; several are each padded to 4 bytes.
        let record_size: u64 = match record_vars.as_slice() {
            [only] => only.bytes,
            many => many.iter().try_fold(0u64, |sum, v| {
                sum.checked_add(padded(v.bytes)?)
                    .ok_or_else(|| invalid("the record size overflows".into()))
            })?,
        };
        let records = if records == STREAMING { 0 } else { records };
        // Computed, not walked record by record: a corrupt record count (a
        // flipped bit makes billions) must end in an error, not in a loop
        // or an allocation that size.
        let mut data_end = h.read;
        for v in &variables {
            let end = if v.is_record && records > 0 {
                (records - 1)
                    .checked_mul(record_size)
                    .and_then(|to_last| v.begin.checked_add(to_last))
                    .and_then(|last| last.checked_add(v.bytes))
            } else if v.is_record {
                Some(v.begin)
            } else {
                v.begin.checked_add(v.bytes)
            };
            let end = end.ok_or_else(|| {
                invalid(format!(
                    "{}: its data would end past 2^64 bytes ({records} records)",
                    v.name
                ))
            })?;
            data_end = data_end.max(end);
        }
        Ok(Some(Self {
            header_len: h.read,
            variables,
            records,
            record_size,
            data_end,
        }))
    }

    /// The byte offset where the data ends.
    pub fn data_end(&self) -> u64 {
        self.data_end
    }

    /// The byte ranges of `v`'s data: one, or one per record. Callers first
    /// check [`Layout::data_end`] against the file's size, which bounds the
    /// records.
    fn extent(&self, v: &StoredVariable) -> Vec<Range<u64>> {
        if !v.is_record {
            return std::iter::once(v.begin..v.begin + v.bytes).collect();
        }
        (0..self.records)
            .map(|r| {
                let start = v.begin + r * self.record_size;
                start..start + v.bytes
            })
            .collect()
    }

    /// The byte ranges of every variable of at most one dimension (the
    /// coordinates, and scalars): with the header, all that inspecting the
    /// file reads.
    pub fn coordinate_ranges(&self) -> Vec<Range<u64>> {
        self.variables
            .iter()
            .filter(|v| v.shape.len() <= 1)
            .flat_map(|v| self.extent(v))
            .filter(|r| !r.is_empty())
            .collect()
    }
}

/// Fails if a classic file is shorter than its header says.
pub fn check_complete(path: &Path) -> Result<()> {
    let corrupt = |e: std::io::Error| NetcdfError::CorruptHeader {
        path: path.to_path_buf(),
        problem: if e.kind() == std::io::ErrorKind::UnexpectedEof {
            "ends inside the header".into()
        } else {
            e.to_string()
        },
    };
    let io = |source| NetcdfError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let Some(layout) = Layout::read(BufReader::new(file)).map_err(corrupt)? else {
        return Ok(());
    };
    let end = layout.data_end();
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len < end {
        return Err(NetcdfError::Truncated {
            path: path.to_path_buf(),
            expected: end,
            found: len,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writer::{Encoding, Grid, GridVariable, write_era5};

    /// A two-step NetCDF3 (CDF-2) file's bytes.
    fn cdf2_bytes(dir: &Path) -> Vec<u8> {
        let path = dir.join("f.nc");
        let grid = Grid {
            latitude: vec![1.0, 0.0],
            longitude: vec![0.0, 1.0, 2.0],
            times: vec![0, 6 * 3_600_000_000],
            era5t_from: None,
        };
        let t2m = GridVariable::new("t2m", "K", "2 metre temperature", vec![280.0; 12]);
        write_era5(&path, Encoding::Nc3, grid, vec![t2m]).unwrap();
        std::fs::read(path).unwrap()
    }

    /// A flipped bit in the record count claims two billion records: the
    /// file is found short at once, with no walk over the records.
    #[test]
    fn a_corrupt_record_count_is_found_short_not_walked() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = cdf2_bytes(dir.path());
        let sound = Layout::read(&bytes[..]).unwrap().unwrap();
        assert_eq!(sound.records, 2);
        assert_eq!(sound.data_end(), bytes.len() as u64);
        bytes[4..8].copy_from_slice(&0x7FFF_FFF0u32.to_be_bytes());
        let layout = Layout::read(&bytes[..]).unwrap().unwrap();
        assert_eq!(layout.records, 0x7FFF_FFF0);
        assert_eq!(
            layout.data_end(),
            sound.data_end() + (0x7FFF_FFF0 - 2) * sound.record_size
        );
        let path = dir.path().join("flipped.nc");
        std::fs::write(&path, &bytes).unwrap();
        let err = check_complete(&path).unwrap_err();
        assert!(
            matches!(err, NetcdfError::Truncated { found, .. } if found == bytes.len() as u64),
            "{err}"
        );
    }

    /// A name whose bytes are not UTF-8 (the netcdf crate panics on one) is
    /// a corrupt header, shown escaped on one line.
    #[test]
    fn a_name_that_is_not_utf8_is_a_corrupt_header() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = cdf2_bytes(dir.path());
        let at = bytes.windows(9).position(|w| w == b"longitude").unwrap();
        bytes[at + 1] = 0xff;
        bytes[at + 2] = b'\n';
        let err = Layout::read(&bytes[..]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "a name of 9 bytes that is not UTF-8: \"l\u{fffd}\\ngitude\""
        );
    }

    proptest::proptest! {
        /// Any bytes of a header overwritten: an error, not a classic file,
        /// or a layout whose every coordinate range lies inside its data,
        /// never a panic.
        #[test]
        fn a_damaged_header_reads_as_an_error_or_a_consistent_layout(
            damage in proptest::collection::vec((0usize..400, proptest::num::u8::ANY), 1..8)
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut bytes = cdf2_bytes(dir.path());
            for (at, value) in damage {
                let at = at % bytes.len();
                bytes[at] = value;
            }
            if let Ok(Some(layout)) = Layout::read(&bytes[..])
                && layout.data_end() <= bytes.len() as u64
            {
                for r in layout.coordinate_ranges() {
                    proptest::prop_assert!(r.start <= r.end && r.end <= layout.data_end());
                }
            }
        }
    }

    /// A CDF-5 header whose record count puts the data past 2^64 bytes is
    /// corrupt, and said so, naming the variable.
    #[test]
    fn data_past_two_to_the_64_is_a_corrupt_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cdf5.nc");
        let file = path.clone();
        crate::io_thread::run(move || {
            let mut f = netcdf::create_with(&file, netcdf::Options::_64BIT_DATA).unwrap();
            f.add_unlimited_dimension("time").unwrap();
            f.add_dimension("x", 1000).unwrap();
            f.add_variable::<f64>("t2m", &["time", "x"]).unwrap();
            f.enddef().unwrap();
            f.variable_mut("t2m")
                .unwrap()
                .put_values(&[0.0; 1000], (0..1, ..))
                .unwrap();
            f.close().unwrap();
        });
        let mut bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..4], b"CDF\x05");
        bytes[4..12].copy_from_slice(&0x7FFF_FFFF_FFFF_FFF0u64.to_be_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let err = check_complete(&path).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}: corrupt or truncated NetCDF header: t2m: its data would end past 2^64 \
                 bytes (9223372036854775792 records)",
                path.display()
            )
        );
    }
}
