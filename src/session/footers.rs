//! Damaged local Parquet files, named: a check of every file's footer
//! before DataFusion reads it, and after a table fails to register or a
//! query fails, the file that explains it (DataFusion's errors name the
//! table's location, or nothing).
//!
//! The parquet crate (59.3) computes where the metadata starts as
//! `file length − 8 − metadata length` without checking that the file is
//! that long, so a file whose footer claims more metadata than it holds (a
//! damaged length field, or a file cut at its start) ends the process with
//! an arithmetic-overflow panic in builds with overflow checks, and in other
//! builds asks the store for a range before the file's start. Reading the
//! last 8 bytes of each file first turns every such file into an error that
//! names it.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use parquet::file::reader::ChunkReader;

use super::TableArg;

/// "PAR1" at both ends of a plain file; "PARE" ends a file with an
/// encrypted footer.
const MAGIC: &[u8; 4] = b"PAR1";
const MAGIC_ENCRYPTED: &[u8; 4] = b"PARE";
/// Leading magic + metadata length + trailing magic.
const SMALLEST: u64 = 4 + 4 + 4;

/// Checks the footer of `location` (a `.parquet` file) or of every
/// `.parquet` file below it. That is every file DataFusion may read there,
/// and a few it may not (those in folders that are not `key=value`
/// partitions): a damaged one of those is named too, rather than guessed at.
pub fn check(location: &Path) -> Result<()> {
    for file in parquet_files(location)? {
        check_file(&file)?;
    }
    Ok(())
}

/// The first file below `location` whose metadata the parquet crate
/// cannot read, with its error: DataFusion's error for a table names the
/// table's location, not the file, so a failed registration asks this.
pub fn first_unreadable(location: &Path) -> Option<(PathBuf, String)> {
    parquet_files(location).ok()?.into_iter().find_map(|path| {
        let cause = match File::open(&path) {
            Ok(file) => unreadable(file)?,
            Err(e) => e.to_string(),
        };
        Some((path, cause))
    })
}

/// Why the metadata of one Parquet file (a local file, or an object's
/// bytes) does not read, or `None` when it does. Beyond the footer's
/// Thrift: the Arrow schema stored in its key-value metadata and the page
/// index (where a file has one), both of which DataFusion decodes. arrow's
/// IPC decoder panics on some damaged schemas (a float of an unknown
/// precision); the panic is the cause. Call it off the main thread: the
/// panic hook reports panics there before they are caught.
pub fn unreadable<R: ChunkReader + 'static>(reader: R) -> Option<String> {
    use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
    use parquet::file::metadata::PageIndexPolicy;
    let options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional);
    let read = move || {
        ParquetRecordBatchReaderBuilder::try_new_with_options(reader, options)
            .map(drop)
            .map_err(|e| e.to_string())
    };
    match caught(read) {
        Ok(read) => read.err(),
        Err(panic) => Some(format!("its metadata does not decode: {panic}")),
    }
}

/// `f`'s result, or what it said if it panicked.
fn caught<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    catch_unwind(AssertUnwindSafe(f)).map_err(|panic| panic_message(panic.as_ref()))
}

/// What a caught panic said.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "the parquet crate panicked".into())
}

/// The first file below `location` that does not decode to its last row,
/// with why. [`damaged_file`] asks this, on a blocking thread (it reads
/// every file whole).
pub fn first_undecodable(location: &Path) -> Option<(PathBuf, String)> {
    parquet_files(location).ok()?.into_iter().find_map(|path| {
        let cause = match File::open(&path) {
            Ok(file) => undecodable(file)?,
            Err(e) => e.to_string(),
        };
        Some((path, cause))
    })
}

/// Why one Parquet file (a local file, or an object's bytes) does not
/// decode to its last row, or `None` when it does. The parquet crate
/// trusts a page header's sizes, and a damaged one ends the task reading
/// it in a panic ("range end out of bounds") that DataFusion reports
/// without the file; here the panic is the cause.
pub fn undecodable<R: ChunkReader + 'static>(reader: R) -> Option<String> {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let decode = move || -> Result<(), String> {
        let batches = ParquetRecordBatchReaderBuilder::try_new(reader)
            .and_then(|b| b.build())
            .map_err(|e| e.to_string())?;
        for batch in batches {
            batch.map_err(|e| e.to_string())?;
        }
        Ok(())
    };
    caught(decode).and_then(|decoded| decoded).err()
}

/// Whether a failed query's error is one a damaged Parquet file gives: the
/// parquet crate's own error, as DataFusion ("Parquet error") or arrow
/// ("Parquet argument error": a dictionary index out of bounds, a zstd page
/// that does not decompress) wraps it, or a task that panicked in it.
pub fn from_damaged_parquet(e: &anyhow::Error) -> bool {
    let text = format!("{e:#}");
    ["Parquet error", "Parquet argument error", "panicked"]
        .iter()
        .any(|mark| text.contains(mark))
}

/// After a query over `tables` failed with `e`: DataFusion's error names
/// no file, so when it is one a damaged Parquet file gives, this names the
/// first Parquet file (or `s3://` object) of the tables that does not
/// decode. `None` for any other error, or one no file explains.
pub async fn damaged_file(tables: &[TableArg], e: &anyhow::Error) -> Option<anyhow::Error> {
    if !from_damaged_parquet(e) {
        return None;
    }
    for t in tables {
        let found = match super::s3::S3Location::parse(&t.location) {
            Ok(Some(remote)) => super::s3::first_damaged(&remote, undecodable).await,
            Ok(None) if super::is_parquet(&t.location) => {
                let location = PathBuf::from(&t.location);
                tokio::task::spawn_blocking(move || first_undecodable(&location))
                    .await
                    .ok()
                    .flatten()
                    .map(|(file, cause)| (file.display().to_string(), cause))
            }
            _ => None,
        };
        if let Some((file, cause)) = found {
            return Some(anyhow::anyhow!(
                "table '{}': {file}: not readable as Parquet (a damaged page?): {cause}",
                t.name
            ));
        }
    }
    None
}

/// `ran`, the outcome of a query over `tables`, with a damaged Parquet
/// file named in place of DataFusion's error when one explains it.
pub async fn naming_damaged<T>(tables: &[TableArg], ran: Result<T>) -> Result<T> {
    match ran {
        Err(e) => Err(damaged_file(tables, &e).await.unwrap_or(e)),
        ok => ok,
    }
}

fn parquet_files(location: &Path) -> Result<Vec<PathBuf>> {
    if !location.is_dir() {
        return Ok(vec![location.to_path_buf()]);
    }
    let mut files = super::files_below(location)?;
    files.retain(|p| {
        p.extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
    });
    Ok(files)
}

fn check_file(path: &Path) -> Result<()> {
    let mut file = File::open(path).with_context(|| format!("{}", path.display()))?;
    // Where the last 8 bytes start says how long the file is: one call
    // fewer per file, over a table of thousands.
    let len = match file.seek(SeekFrom::End(-8)) {
        Ok(start) => start + 8,
        Err(_) => file
            .metadata()
            .with_context(|| format!("{}", path.display()))?
            .len(),
    };
    let mut tail = [0u8; 8];
    if len >= SMALLEST {
        file.read_exact(&mut tail)
            .with_context(|| format!("{}: cannot read the footer", path.display()))?;
    }
    match footer_problem(len, &tail, "file") {
        Some(problem) => bail!("{}: {problem}", path.display()),
        None => Ok(()),
    }
}

/// What is wrong with a Parquet file (or object: `holder`) of `len` bytes
/// whose last 8 bytes are `tail`, as far as those tell; `None` if nothing.
pub fn footer_problem(len: u64, tail: &[u8; 8], holder: &str) -> Option<String> {
    if len < SMALLEST {
        return Some(format!(
            "not a Parquet file: {len} bytes, fewer than the {SMALLEST} of an empty one"
        ));
    }
    let magic = &tail[4..];
    if magic != MAGIC && magic != MAGIC_ENCRYPTED {
        return Some("not a Parquet file or cut short: it does not end in PAR1".into());
    }
    let metadata_len = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
    (metadata_len + SMALLEST > len).then(|| {
        format!(
            "corrupt Parquet footer: it gives {metadata_len} bytes of metadata, the {holder} \
             holds {len} bytes in all"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn footer(metadata_len: u32, magic: &[u8; 4]) -> Vec<u8> {
        let mut v = metadata_len.to_le_bytes().to_vec();
        v.extend_from_slice(magic);
        v
    }

    #[test]
    fn a_footer_that_fits_its_file_passes() {
        let dir = tempfile::tempdir().unwrap();
        // PAR1, 10 bytes of "metadata", length 10, PAR1: 22 bytes.
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&[0; 10]);
        bytes.extend(footer(10, MAGIC));
        check(&file_with(dir.path(), "ok.parquet", &bytes)).unwrap();
        // Exactly one byte short of its claimed metadata.
        let mut short = MAGIC.to_vec();
        short.extend_from_slice(&[0; 9]);
        short.extend(footer(10, MAGIC));
        let e = check(&file_with(dir.path(), "short.parquet", &short)).unwrap_err();
        assert!(
            e.to_string()
                .contains("short.parquet: corrupt Parquet footer: it gives 10 bytes of metadata, the file holds 21 bytes"),
            "{e}"
        );
    }

    #[test]
    fn each_kind_of_damage_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let cases: [(&str, Vec<u8>, &str); 5] = [
            ("empty.parquet", Vec::new(), "0 bytes, fewer than the 12"),
            (
                "tiny.parquet",
                b"PAR1".to_vec(),
                "4 bytes, fewer than the 12",
            ),
            // Long enough to read a footer's 8 bytes from, not a file.
            (
                "eight.parquet",
                b"PAR1PAR1".to_vec(),
                "8 bytes, fewer than the 12",
            ),
            (
                "cut.parquet",
                [MAGIC.as_slice(), &[7; 20]].concat(),
                "does not end in PAR1",
            ),
            (
                "huge.parquet",
                [MAGIC.as_slice(), &[0; 4], &footer(u32::MAX, MAGIC)].concat(),
                "4294967295 bytes of metadata",
            ),
        ];
        for (name, bytes, needle) in cases {
            let e = check(&file_with(dir.path(), name, &bytes)).unwrap_err();
            let message = e.to_string();
            assert!(
                message.contains(name) && message.contains(needle),
                "{message}"
            );
        }
    }

    #[test]
    fn a_directory_is_checked_below_but_only_its_parquet_files() {
        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join("year=2020");
        std::fs::create_dir(&part).unwrap();
        // A writer's temporary and other files are not read as the table.
        file_with(&part, ".t2m.parquet.tmp-1", b"junk");
        file_with(&part, "notes.txt", b"junk");
        check(dir.path()).unwrap();
        file_with(&part, "bad.parquet", b"junk");
        let e = check(dir.path()).unwrap_err();
        assert!(e.to_string().contains("year=2020/bad.parquet"), "{e}");
    }

    #[test]
    fn a_linked_folder_is_checked_as_its_files() {
        let (dir, elsewhere) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::os::unix::fs::symlink(elsewhere.path(), dir.path().join("year=2021")).unwrap();
        check(dir.path()).unwrap();
        file_with(elsewhere.path(), "bad.parquet", b"junk");
        let e = check(dir.path()).unwrap_err();
        assert!(e.to_string().contains("year=2021/bad.parquet"), "{e}");
    }
}

#[cfg(test)]
mod damaged_pages {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int32Array, RecordBatch};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use parquet::arrow::ArrowWriter;
    use parquet::file::reader::{FileReader, SerializedFileReader};

    use super::*;

    /// 10,000 rows of `i % 100`, uncompressed: the column is a dictionary
    /// of 100 values and 7-bit indices, bit-packed because no value repeats
    /// in a row.
    fn dictionary_file(path: &Path) {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int32, false)]));
        let values = Int32Array::from_iter_values((0..10_000).map(|i| i % 100));
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(values)]).unwrap();
        let mut writer = ArrowWriter::try_new(File::create(path).unwrap(), schema, None).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
    }

    /// Sets the last 64 bytes of the column's chunk (inside its data page's
    /// indices) to 0xFF: every index there reads as 127, past the
    /// dictionary's 100 values.
    fn damage_indices(path: &Path) {
        let reader = SerializedFileReader::new(File::open(path).unwrap()).unwrap();
        let column = reader.metadata().row_group(0).column(0);
        let (start, len) = column.byte_range();
        let mut bytes = std::fs::read(path).unwrap();
        let end = usize::try_from(start + len).unwrap();
        bytes[end - 64..end].fill(0xFF);
        std::fs::write(path, bytes).unwrap();
    }

    fn table(location: &Path) -> TableArg {
        TableArg {
            name: "t".into(),
            location: location.display().to_string(),
        }
    }

    #[tokio::test]
    async fn a_damaged_page_is_named_after_a_parquet_error() {
        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join("year=2020");
        std::fs::create_dir(&part).unwrap();
        for name in ["a.parquet", "b.parquet"] {
            dictionary_file(&part.join(name));
        }
        let parquet_error = || anyhow::anyhow!("Parquet error: dictionary index out of bounds");
        // Every file decodes: nothing to name, so the caller keeps its error.
        assert!(first_undecodable(dir.path()).is_none());
        assert!(
            damaged_file(&[table(dir.path())], &parquet_error())
                .await
                .is_none()
        );

        damage_indices(&part.join("b.parquet"));
        let (file, cause) = first_undecodable(dir.path()).unwrap();
        assert!(file.ends_with("year=2020/b.parquet"), "{}", file.display());
        assert!(cause.contains("dictionary index out of bounds"), "{cause}");
        let named = damaged_file(&[table(dir.path())], &parquet_error())
            .await
            .unwrap()
            .to_string();
        assert!(
            named.starts_with("table 't': ")
                && named.contains("year=2020/b.parquet: not readable as Parquet (a damaged page?)"),
            "{named}"
        );
        // The same through `naming_damaged`, and a task's panic counts too.
        let ran: Result<()> = Err(anyhow::anyhow!("Join Error: task 7 panicked"));
        let e = naming_damaged(&[table(dir.path())], ran).await.unwrap_err();
        assert!(e.to_string().contains("b.parquet"), "{e}");
    }

    #[test]
    fn a_damaged_arrow_schema_is_named_at_registration() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.parquet");
        dictionary_file(&file);
        assert!(first_unreadable(dir.path()).is_none());
        // The Arrow schema travels base64-encoded in the footer's key-value
        // metadata: one character that is not base64 leaves the Thrift
        // footer readable and the schema not.
        let reader = SerializedFileReader::new(File::open(&file).unwrap()).unwrap();
        let encoded = reader
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .and_then(|kv| kv.iter().find(|e| e.key == "ARROW:schema"))
            .and_then(|e| e.value.clone())
            .unwrap();
        let mut bytes = std::fs::read(&file).unwrap();
        let at = bytes
            .windows(encoded.len())
            .position(|w| w == encoded.as_bytes())
            .unwrap();
        bytes[at + encoded.len() / 2] = b'!';
        std::fs::write(&file, bytes).unwrap();
        assert!(SerializedFileReader::new(File::open(&file).unwrap()).is_ok());
        let (named, cause) = first_unreadable(dir.path()).unwrap();
        assert_eq!(named, file);
        assert!(cause.contains("ARROW:schema"), "{cause}");
    }

    #[tokio::test]
    async fn other_errors_and_other_tables_are_left_as_they_were() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.parquet");
        dictionary_file(&file);
        damage_indices(&file);
        // An error no damaged file gives does not send anyone reading files.
        let divide = anyhow::anyhow!("Arrow error: Divide by zero error");
        assert!(damaged_file(&[table(&file)], &divide).await.is_none());
        // NetCDF and bucket tables are not read as Parquet here.
        let parquet_error = anyhow::anyhow!("Parquet error: EOF");
        let others = [
            table(Path::new("/data/era5/*.nc")),
            table(Path::new("s3://b/t.parquet")),
        ];
        assert!(damaged_file(&others, &parquet_error).await.is_none());
        let e = naming_damaged::<()>(&others, Err(parquet_error))
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "Parquet error: EOF");
    }
}
