//! Truncation check for classic NetCDF (CDF-1, CDF-2, CDF-5) files.
//!
//! libnetcdf zero-fills reads past the end of a classic file, so a truncated
//! download would silently read as zeros. The header records where every
//! variable's data begins and how large it is; the data must end within the
//! file. This parses just enough of the header (big-endian, 4-byte padded)
//! to compute that end.

use std::io::{BufReader, Read};
use std::path::Path;

use crate::error::{NetcdfError, Result};

const NC_DIMENSION: u32 = 0x0A;
const NC_VARIABLE: u32 = 0x0B;
const NC_ATTRIBUTE: u32 = 0x0C;
const STREAMING: u64 = 0xFFFF_FFFF;

struct Header<R> {
    input: R,
    version: u8,
}

impl<R: Read> Header<R> {
    fn u32(&mut self) -> std::io::Result<u32> {
        let mut b = [0; 4];
        self.input.read_exact(&mut b)?;
        Ok(u32::from_be_bytes(b))
    }
    fn u64(&mut self) -> std::io::Result<u64> {
        let mut b = [0; 8];
        self.input.read_exact(&mut b)?;
        Ok(u64::from_be_bytes(b))
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
    fn skip_padded(&mut self, n: u64) -> std::io::Result<()> {
        let padded = n.div_ceil(4) * 4;
        std::io::copy(&mut (&mut self.input).take(padded), &mut std::io::sink())?;
        Ok(())
    }
    fn name(&mut self) -> std::io::Result<()> {
        let n = self.count()?;
        self.skip_padded(n)
    }
    fn list_len(&mut self, tag: u32) -> std::io::Result<u64> {
        let found = self.u32()?;
        let n = self.count()?;
        if found == 0 || found == tag {
            Ok(n)
        } else {
            Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("unexpected header tag {found:#x}"),
            ))
        }
    }
    fn attributes(&mut self) -> std::io::Result<()> {
        for _ in 0..self.list_len(NC_ATTRIBUTE)? {
            self.name()?;
            let size = type_size(self.u32()?)?;
            let n = self.count()?;
            self.skip_padded(n * size)?;
        }
        Ok(())
    }
}

fn type_size(nc_type: u32) -> std::io::Result<u64> {
    Ok(match nc_type {
        1 | 2 | 7 => 1,
        3 | 8 => 2,
        4 | 5 | 9 => 4,
        6 | 10 | 11 => 8,
        other => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("unknown type {other}"),
            ));
        }
    })
}

/// The byte offset where a classic file's data ends, or `None` if `path` is
/// not a classic file (NetCDF4/HDF5 files are checked by HDF5 itself).
fn data_end(path: &Path) -> std::io::Result<Option<u64>> {
    let mut input = BufReader::new(std::fs::File::open(path)?);
    let mut magic = [0u8; 4];
    if input.read_exact(&mut magic).is_err()
        || &magic[..3] != b"CDF"
        || !matches!(magic[3], 1 | 2 | 5)
    {
        return Ok(None);
    }
    let mut h = Header {
        input,
        version: magic[3],
    };
    let numrecs = h.count()?;
    let mut dims = Vec::new();
    for _ in 0..h.list_len(NC_DIMENSION)? {
        h.name()?;
        dims.push(h.count()?);
    }
    h.attributes()?;
    // (begin, bytes of one record or of the whole variable, is_record)
    let mut vars = Vec::new();
    for _ in 0..h.list_len(NC_VARIABLE)? {
        h.name()?;
        let ndims = h.count()?;
        let mut shape = Vec::new();
        for _ in 0..ndims {
            let id = h.count()? as usize;
            shape.push(*dims.get(id).ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, "bad dimension id")
            })?);
        }
        h.attributes()?;
        let size = type_size(h.u32()?)?;
        let _vsize = h.count()?;
        let begin = h.offset()?;
        let is_record = shape.first() == Some(&0);
        let elements: u64 = shape.iter().skip(usize::from(is_record)).product();
        vars.push((begin, elements * size, is_record));
    }
    let padded = |n: u64| n.div_ceil(4) * 4;
    let record_vars: Vec<_> = vars.iter().filter(|v| v.2).collect();
    // One record variable is stored unpadded; several are each padded to 4 bytes.
    let recsize: u64 = match record_vars.as_slice() {
        [only] => only.1,
        many => many.iter().map(|v| padded(v.1)).sum(),
    };
    let numrecs = if numrecs == STREAMING { 0 } else { numrecs };
    let end = vars
        .iter()
        .map(|&(begin, bytes, is_record)| match (is_record, numrecs) {
            (false, _) => begin + bytes,
            (true, 0) => begin,
            (true, n) => begin + (n - 1) * recsize + bytes,
        })
        .max()
        .unwrap_or(0);
    Ok(Some(end))
}

/// Fails if a classic file is shorter than its header says.
pub fn check_complete(path: &Path) -> Result<()> {
    let Some(end) = data_end(path).map_err(|e| NetcdfError::CorruptHeader {
        path: path.to_path_buf(),
        problem: if e.kind() == std::io::ErrorKind::UnexpectedEof {
            "ends inside the header".into()
        } else {
            e.to_string()
        },
    })?
    else {
        return Ok(());
    };
    let len = std::fs::metadata(path)
        .map_err(|source| NetcdfError::Io {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    if len < end {
        return Err(NetcdfError::Truncated {
            path: path.to_path_buf(),
            expected: end,
            found: len,
        });
    }
    Ok(())
}
