//! What a reader other than uqcast sees of a run's output (DuckDB, Spark,
//! pyarrow; README "Reading the output elsewhere"): the Parquet types
//! themselves, not the Arrow schema uqcast also writes into each footer,
//! which only Arrow-based readers take; the folders; and the statistics
//! those readers skip files by.

use std::path::Path;

use chrono::NaiveDateTime;
use parquet::basic::{LogicalType, Repetition, TimeUnit, Type};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::file::statistics::Statistics;
use parquet::schema::types::ColumnDescriptor;

/// Checks the forecast and flags tables under a run's `out`.
pub(crate) fn assert_readable_elsewhere(out: &Path) {
    let forecast = out.join("forecast");
    let steps = files_below(&forecast);
    assert!(!steps.is_empty(), "no forecast files under {forecast:?}");
    for (year, month, name) in &steps {
        // `t2m_YYYYMMDDTHHMM.parquet` in its valid time's month folder.
        let time = name
            .strip_prefix("t2m_")
            .and_then(|n| n.strip_suffix(".parquet"))
            .and_then(|t| NaiveDateTime::parse_from_str(t, "%Y%m%dT%H%M").ok())
            .unwrap_or_else(|| panic!("{name} is not named by its valid time"));
        assert_eq!(
            (year.as_str(), month.as_str()),
            (&name[4..8], &name[8..10]),
            "{name} is not in its month's folder"
        );
        let file = forecast.join(format!("year={year}/month={month}/{name}"));
        assert_eq!(
            columns(&file),
            [
                "init_time INT64 timestamp(µs, UTC) REQUIRED",
                "valid_time INT64 timestamp(µs, UTC) REQUIRED",
                "latitude DOUBLE REQUIRED",
                "longitude DOUBLE REQUIRED",
                "t2m FLOAT REQUIRED",
                "t2m_mean FLOAT REQUIRED",
                "t2m_au FLOAT REQUIRED",
                "t2m_eu FLOAT REQUIRED",
            ],
            "{file:?}"
        );
        // Every row group says it holds that one time, so a reader skips
        // the file for another time without reading a row of it.
        let micros = time.and_utc().timestamp_micros();
        assert_eq!(valid_time_ranges(&file), vec![(micros, micros)], "{file:?}");
    }

    let flags = out.join("flags");
    let months = files_below(&flags);
    assert!(!months.is_empty(), "no flags files under {flags:?}");
    for (year, month, name) in &months {
        assert_eq!(name, &format!("flags_{year}{month}.parquet"));
        let file = flags.join(format!("year={year}/month={month}/{name}"));
        assert_eq!(
            columns(&file),
            [
                "valid_time INT64 timestamp(µs, UTC) REQUIRED",
                "tile_lat DOUBLE REQUIRED",
                "tile_lon DOUBLE REQUIRED",
                "cells INT64 REQUIRED",
                "mean_eu DOUBLE REQUIRED",
                "max_eu DOUBLE REQUIRED",
                "frac_above DOUBLE REQUIRED",
                "eu_threshold DOUBLE REQUIRED",
                "flagged BOOLEAN REQUIRED",
            ],
            "{file:?}"
        );
    }
}

/// `(year, month, file name)` of every file below `root`, which must all
/// be `year=YYYY/month=MM/NAME`: a reader that takes Hive partitions finds
/// no other file there (a run's hidden temporaries are gone when it ends).
fn files_below(root: &Path) -> Vec<(String, String, String)> {
    let mut files: Vec<(String, String, String)> = crate::pipeline::walk_all(root)
        .iter()
        .map(|p| {
            let relative = p.strip_prefix(root).unwrap();
            let parts: Vec<&str> = relative.iter().map(|s| s.to_str().unwrap()).collect();
            let folder = |part: &str, key: &str, digits: usize| {
                part.strip_prefix(key)
                    .filter(|v| v.len() == digits && v.bytes().all(|b| b.is_ascii_digit()))
                    .unwrap_or_else(|| panic!("{relative:?} is not under year=YYYY/month=MM"))
                    .to_string()
            };
            match parts.as_slice() {
                [year, month, name] => (
                    folder(year, "year=", 4),
                    folder(month, "month=", 2),
                    name.to_string(),
                ),
                _ => panic!("{relative:?} is not under year=YYYY/month=MM"),
            }
        })
        .collect();
    files.sort();
    files
}

/// Each column as any Parquet reader types it: name, physical type, the
/// logical type where there is one, repetition.
fn columns(file: &Path) -> Vec<String> {
    let reader = SerializedFileReader::new(std::fs::File::open(file).unwrap()).unwrap();
    let schema = reader.metadata().file_metadata().schema_descr_ptr();
    schema.columns().iter().map(|c| describe(c)).collect()
}

fn describe(column: &ColumnDescriptor) -> String {
    let logical = match column.logical_type_ref() {
        None => String::new(),
        Some(LogicalType::Timestamp(t)) => {
            let unit = match t.unit {
                TimeUnit::MILLIS => "ms",
                TimeUnit::MICROS => "µs",
                TimeUnit::NANOS => "ns",
            };
            let zone = if t.is_adjusted_to_u_t_c {
                "UTC"
            } else {
                "local"
            };
            format!(" timestamp({unit}, {zone})")
        }
        Some(other) => format!(" {other:?}"),
    };
    let repetition = match column.self_type().get_basic_info().repetition() {
        Repetition::REQUIRED => "REQUIRED",
        Repetition::OPTIONAL => "OPTIONAL",
        Repetition::REPEATED => "REPEATED",
    };
    let physical: Type = column.physical_type();
    format!("{} {physical}{logical} {repetition}", column.name())
}

/// The (min, max) of `valid_time` each row group's statistics give.
fn valid_time_ranges(file: &Path) -> Vec<(i64, i64)> {
    let reader = SerializedFileReader::new(std::fs::File::open(file).unwrap()).unwrap();
    reader
        .metadata()
        .row_groups()
        .iter()
        .map(|group| {
            let column = group
                .columns()
                .iter()
                .find(|c| c.column_descr().name() == "valid_time")
                .expect("a valid_time column");
            match column.statistics() {
                Some(Statistics::Int64(s)) => (*s.min_opt().unwrap(), *s.max_opt().unwrap()),
                other => panic!("{file:?}: valid_time statistics {other:?}"),
            }
        })
        .collect()
}
