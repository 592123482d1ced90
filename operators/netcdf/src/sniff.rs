//! What a file that libnetcdf will not open is instead, from its first
//! bytes. The files people point uqcast at by mistake each carry a
//! signature: the ZIP archive the CDS sends when one request yields several
//! NetCDF files, GRIB (the CDS's other format), an error page saved in
//! place of the data, an interrupted download.

use std::io::Read;
use std::path::Path;

/// Bytes read to judge a file: enough for every signature below and for
/// text to be told from binary with some confidence.
const HEAD: usize = 64;

const ZIP: &str = "a ZIP archive: the CDS packs several NetCDF files into one .zip (a request \
                   mixing instantaneous and accumulated variables, say); unzip it and read the \
                   .nc files inside";
const GRIB: &str = "GRIB, not NetCDF: ask the CDS for data_format \"netcdf\", or convert it \
                    (ecCodes' grib_to_netcdf)";

/// What the file at `path` is, where its first bytes say it is something
/// other than NetCDF; `None` where they do not (a damaged NetCDF file, or
/// one that cannot be read at all).
pub fn not_netcdf(path: &Path) -> Option<&'static str> {
    let mut head = Vec::with_capacity(HEAD);
    std::fs::File::open(path)
        .ok()?
        .take(HEAD as u64)
        .read_to_end(&mut head)
        .ok()?;
    kind(&head)
}

/// As [`not_netcdf`], from a file's first bytes (up to [`HEAD`]).
pub fn kind(head: &[u8]) -> Option<&'static str> {
    match head {
        [] => Some("an empty file: an interrupted download?"),
        [b'P', b'K', 3, 4, ..] => Some(ZIP),
        [b'G', b'R', b'I', b'B', ..] => Some(GRIB),
        [b'P', b'A', b'R', b'1', ..] => {
            Some("a Parquet file: a Parquet table is named by its .parquet file or folder")
        }
        [0x1f, 0x8b, ..] => Some("gzip-compressed: decompress it first"),
        // NetCDF's and HDF5's signatures both hold bytes outside text.
        _ if head
            .iter()
            .all(|&b| b.is_ascii_graphic() || b.is_ascii_whitespace()) =>
        {
            Some("text, not NetCDF: an error message saved in place of the data?")
        }
        _ => None,
    }
}

/// For a folder with no NetCDF files: which downloads it holds instead
/// (ZIP archives, GRIB files), and what to do; empty where it holds none.
pub fn downloads_hint(dir: &Path) -> String {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return String::new();
    };
    let (mut zips, mut gribs) = (0usize, 0usize);
    for path in entries.filter_map(|e| e.ok()).map(|e| e.path()) {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or_default()
            .to_ascii_lowercase();
        match ext.as_str() {
            "zip" => zips += 1,
            "grib" | "grb" | "grib2" | "grb2" => gribs += 1,
            _ => {}
        }
    }
    let mut found = Vec::new();
    if zips > 0 {
        found.push(format!("{zips} .zip file(s), {ZIP}"));
    }
    if gribs > 0 {
        found.push(format!("{gribs} GRIB file(s), {GRIB}"));
    }
    if found.is_empty() {
        return String::new();
    }
    format!(" (it holds {})", found.join("; and "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_usual_wrong_files_are_named_and_netcdf_is_not() {
        assert_eq!(kind(b"PK\x03\x04\x14\x00"), Some(ZIP));
        assert_eq!(kind(b"GRIB\x00\x00\x42\x01"), Some(GRIB));
        assert!(kind(b"PAR1\x15\x04").unwrap().contains("Parquet"));
        assert!(kind(b"\x1f\x8b\x08\x00").unwrap().contains("gzip"));
        assert!(kind(b"").unwrap().contains("empty"));
        assert!(
            kind(b"{\"message\": \"Request too large\"}")
                .unwrap()
                .contains("text")
        );
        // Classic NetCDF (CDF\x01, \x02, \x05) and HDF5 (NetCDF4) are left
        // to libnetcdf's own word.
        for head in [
            &b"CDF\x01\x00\x00\x00\x04"[..],
            b"CDF\x02\x00\x00\x00\x00",
            b"CDF\x05\x00\x00\x00\x00",
            b"\x89HDF\r\n\x1a\n\x00\x00",
        ] {
            assert_eq!(kind(head), None, "{head:?}");
        }
    }

    #[test]
    fn a_folder_of_downloads_says_what_it_holds() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(downloads_hint(dir.path()), "");
        std::fs::write(dir.path().join("a.zip"), b"PK\x03\x04").unwrap();
        std::fs::write(dir.path().join("b.ZIP"), b"PK\x03\x04").unwrap();
        std::fs::write(dir.path().join("c.grib"), b"GRIB").unwrap();
        let hint = downloads_hint(dir.path());
        assert!(
            hint.starts_with(" (it holds 2 .zip file(s), a ZIP archive"),
            "{hint}"
        );
        assert!(
            hint.contains("; and 1 GRIB file(s), GRIB, not NetCDF"),
            "{hint}"
        );
    }
}
