//! The NetCDF table against real files written by libnetcdf.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{Float32Type, Float64Type, TimestampMicrosecondType};
use datafusion::catalog::TableProvider;
use datafusion::prelude::{SessionConfig, SessionContext};
use uqcast_netcdf::inspect::FileInfo;
use uqcast_netcdf::spec::TableHeaders;
use uqcast_netcdf::{
    Encoding, Era5TableProvider, FileNames, Grid, GridVariable, LocalCopies, NetcdfError,
    write_era5,
};

const HOUR: i64 = 3_600_000_000;
/// 2020-01-01T00:00Z in microseconds.
const T0: i64 = 1_577_836_800_000_000;

/// A 3-step field on a descending-latitude grid with two missing cells.
struct Fixture {
    latitude: Vec<f64>,
    longitude: Vec<f64>,
    times: Vec<i64>,
    t2m: Vec<f32>,
}

impl Fixture {
    fn new(steps: usize, first_step: usize) -> Self {
        let latitude = vec![60.0, 57.5, 55.0, 52.5];
        let longitude = vec![350.0, 352.5, 355.0, 357.5, 359.0];
        let times: Vec<i64> = (0..steps)
            .map(|s| T0 + (first_step + s) as i64 * 6 * HOUR)
            .collect();
        let mut t2m = Vec::new();
        for s in 0..steps {
            for (i, lat) in latitude.iter().enumerate() {
                for (j, _) in longitude.iter().enumerate() {
                    t2m.push(
                        250.0 + (first_step + s) as f32 + 0.5 * i as f32 + 0.1 * j as f32
                            - (*lat as f32 - 55.0),
                    );
                }
            }
        }
        let cells = latitude.len() * longitude.len();
        t2m[1] = f32::NAN; // step 0, lat 60, lon 352.5
        if steps > 1 {
            t2m[cells + 7] = f32::NAN; // step 1, lat 57.5, lon 355
        }
        Self {
            latitude,
            longitude,
            times,
            t2m,
        }
    }

    fn write(&self, path: &Path, encoding: Encoding) {
        let grid = Grid {
            latitude: self.latitude.clone(),
            longitude: self.longitude.clone(),
            times: self.times.clone(),
            era5t_from: None,
        };
        let t2m = GridVariable::new("t2m", "K", "2 metre temperature", self.t2m.clone());
        let u10 = GridVariable::new(
            "u10",
            "m s**-1",
            "10 metre U wind",
            self.t2m.iter().map(|v| v - 250.0).collect(),
        );
        write_era5(path, encoding, grid, vec![t2m, u10]).expect("write fixture");
    }
}

fn table(ctx: &SessionContext, name: &str, paths: &[PathBuf]) {
    let locations: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    let provider = Era5TableProvider::try_new(&locations, None).expect("open table");
    ctx.register_table(name, Arc::new(provider))
        .expect("register");
}

fn context(partitions: usize) -> SessionContext {
    SessionContext::new_with_config(SessionConfig::new().with_target_partitions(partitions))
}

async fn rows(ctx: &SessionContext, sql: &str) -> Vec<(i64, f64, f64, Option<f32>)> {
    let batches = uqcast_boxed::collect(ctx, sql).await.expect("query");
    let mut out = Vec::new();
    for b in &batches {
        let t = b.column(0).as_primitive::<TimestampMicrosecondType>();
        let lat = b.column(1).as_primitive::<Float64Type>();
        let lon = b.column(2).as_primitive::<Float64Type>();
        let v = b.column(3).as_primitive::<Float32Type>();
        for i in 0..b.num_rows() {
            out.push((
                t.value(i),
                lat.value(i),
                lon.value(i),
                v.is_valid(i).then(|| v.value(i)),
            ));
        }
    }
    out
}

async fn explain(ctx: &SessionContext, sql: &str) -> String {
    let batches = uqcast_boxed::collect(ctx, &format!("EXPLAIN {sql}"))
        .await
        .expect("explain");
    datafusion::arrow::util::pretty::pretty_format_batches(&batches)
        .expect("format")
        .to_string()
}

#[tokio::test]
async fn both_encodings_read_to_the_same_rows() {
    let dir = tempfile::tempdir().unwrap();
    let fx = Fixture::new(3, 0);
    let (nc3, nc4) = (dir.path().join("legacy.nc"), dir.path().join("current.nc"));
    fx.write(&nc3, Encoding::Nc3);
    fx.write(&nc4, Encoding::Nc4);
    let ctx = context(2);
    table(&ctx, "nc3", &[nc3]);
    table(&ctx, "nc4", &[nc4]);
    let sql = |t: &str| {
        format!("SELECT valid_time, latitude, longitude, t2m FROM {t} ORDER BY valid_time")
    };
    let (a, b) = (rows(&ctx, &sql("nc3")).await, rows(&ctx, &sql("nc4")).await);
    assert_eq!(a.len(), fx.t2m.len());
    assert_eq!(b.len(), fx.t2m.len());
    // Packing precision: the field spans ~10 K over 65,532 steps → 0.08 mK; allow 1 mK.
    let ncell = fx.latitude.len() * fx.longitude.len();
    for (k, (x, y)) in a.iter().zip(&b).enumerate() {
        let (s, cell) = (k / ncell, k % ncell);
        let expect = (
            fx.times[s],
            fx.latitude[cell / fx.longitude.len()],
            fx.longitude[cell % fx.longitude.len()],
        );
        assert_eq!((x.0, x.1, x.2), expect, "row {k} coordinates (NetCDF3)");
        assert_eq!((y.0, y.1, y.2), expect, "row {k} coordinates (NetCDF4)");
        let truth = fx.t2m[k];
        match (x.3, y.3) {
            (None, None) => assert!(truth.is_nan(), "row {k} should not be NULL"),
            (Some(p), Some(q)) => {
                assert!((p - truth).abs() < 1e-3, "row {k}: NetCDF3 {p} vs {truth}");
                assert_eq!(q, truth, "row {k}: NetCDF4 is stored exactly");
            }
            other => panic!("row {k}: NULL in one encoding only: {other:?}"),
        }
    }
    assert_eq!(a.iter().filter(|r| r.3.is_none()).count(), 2);
}

/// A file built with raw libnetcdf calls (not our writer): packed int16 with
/// both `_FillValue` and a different `missing_value`, float32 coordinates.
#[tokio::test]
async fn hand_built_netcdf3_decodes_to_known_values() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hand.nc");
    // On the NetCDF I/O thread, as the table's own calls: libnetcdf first
    // used from another thread prints HDF5-DIAG noise there.
    let file = path.clone();
    uqcast_netcdf::io_thread::run(move || {
        let mut f = netcdf::create_with(&file, netcdf::Options::_64BIT_OFFSET).unwrap();
        f.add_dimension("longitude", 3).unwrap();
        f.add_dimension("latitude", 2).unwrap();
        f.add_unlimited_dimension("time").unwrap();
        f.add_variable::<f32>("longitude", &["longitude"]).unwrap();
        f.add_variable::<f32>("latitude", &["latitude"]).unwrap();
        let mut t = f.add_variable::<i32>("time", &["time"]).unwrap();
        t.put_attribute("units", "hours since 1900-01-01 00:00:00.0")
            .unwrap();
        t.put_attribute("calendar", "gregorian").unwrap();
        let mut v = f
            .add_variable::<i16>("t2m", &["time", "latitude", "longitude"])
            .unwrap();
        v.put_attribute("scale_factor", 0.002_f64).unwrap();
        v.put_attribute("add_offset", 270.0_f64).unwrap();
        v.put_attribute("_FillValue", -32767_i16).unwrap();
        v.put_attribute("missing_value", -32768_i16).unwrap();
        v.put_attribute("units", "K").unwrap();
        f.enddef().unwrap();
        f.variable_mut("longitude")
            .unwrap()
            .put_values(&[0.0f32, 0.25, 0.5], ..)
            .unwrap();
        f.variable_mut("latitude")
            .unwrap()
            .put_values(&[10.0f32, 9.75], ..)
            .unwrap();
        f.variable_mut("time")
            .unwrap()
            .put_values(&[1_051_902i32, 1_051_896], ..)
            .unwrap();
        let packed: [i16; 12] = [0, 1000, -1000, -32767, 32000, 5, 7, -32768, 9, 10, 11, 12];
        f.variable_mut("t2m")
            .unwrap()
            .put_values(&packed, ..)
            .unwrap();
        f.close().unwrap();
    });
    let ctx = context(1);
    table(&ctx, "era5", &[path]);
    let got = rows(
        &ctx,
        "SELECT valid_time, latitude, longitude, t2m FROM era5 ORDER BY valid_time",
    )
    .await;
    // The file stores 06:00 first, then 00:00: the table orders steps by time.
    let expect_values = [
        Some(7),
        None,
        Some(9),
        Some(10),
        Some(11),
        Some(12),
        Some(0),
        Some(1000),
        Some(-1000),
        None,
        Some(32000),
        Some(5),
    ];
    let expect_lat = [10.0, 10.0, 10.0, 9.75, 9.75, 9.75];
    for (k, row) in got.iter().enumerate() {
        assert_eq!(row.0, T0 + if k < 6 { 0 } else { 6 * HOUR }, "row {k} time");
        assert_eq!(row.1, expect_lat[k % 6], "row {k} latitude");
        assert_eq!(row.2, [0.0, 0.25, 0.5][k % 3], "row {k} longitude");
        let expect = expect_values[k].map(|p: i32| (p as f64 * 0.002 + 270.0) as f32);
        assert_eq!(row.3, expect, "row {k} value");
    }
}

#[tokio::test]
async fn multi_file_tables_order_steps_across_files() {
    let dir = tempfile::tempdir().unwrap();
    // Day two is written first and in the other encoding: order comes from time, not names.
    Fixture::new(2, 2).write(&dir.path().join("a_day2.nc"), Encoding::Nc4);
    Fixture::new(2, 0).write(&dir.path().join("b_day1.nc"), Encoding::Nc3);
    let ctx = context(3);
    table(&ctx, "era5", &[dir.path().to_path_buf()]);
    let batches = uqcast_boxed::collect(
        &ctx,
        "SELECT valid_time, count(*) AS n FROM era5 GROUP BY valid_time ORDER BY valid_time",
    )
    .await
    .unwrap();
    let times: Vec<i64> = batches
        .iter()
        .flat_map(|b| {
            b.column(0)
                .as_primitive::<TimestampMicrosecondType>()
                .values()
                .to_vec()
        })
        .collect();
    assert_eq!(times, (0..4).map(|s| T0 + s * 6 * HOUR).collect::<Vec<_>>());

    // A glob works the same; the unordered stream never mixes steps in one batch.
    let ctx = context(2);
    table(&ctx, "era5", &[dir.path().join("*.nc")]);
    let batches = uqcast_boxed::collect(&ctx, "SELECT valid_time, t2m FROM era5")
        .await
        .unwrap();
    assert_eq!(batches.len(), 4, "one batch per step");
    for b in &batches {
        let t = b.column(0).as_primitive::<TimestampMicrosecondType>();
        assert!(
            t.values().iter().all(|&v| v == t.value(0)),
            "a batch mixes steps"
        );
        assert_eq!(b.num_rows(), 20);
    }
}

/// A table rebuilt from the headers its planner sent (as a distributed
/// scheduler rebuilds it, from JSON) plans as the table over the files,
/// without opening them, and refuses to be read.
#[tokio::test]
async fn a_table_planned_from_headers_plans_as_its_files_and_reads_nothing() {
    let dir = tempfile::tempdir().unwrap();
    Fixture::new(2, 2).write(&dir.path().join("a_day2.nc"), Encoding::Nc4);
    Fixture::new(2, 0).write(&dir.path().join("b_day1.nc"), Encoding::Nc3);
    let opened = Era5TableProvider::try_new(&[dir.path().display().to_string()], None).unwrap();
    let json = serde_json::to_string(&opened.headers()).unwrap();
    let headers: TableHeaders = serde_json::from_str(&json).unwrap();
    assert_eq!(headers, opened.headers());
    for file in std::fs::read_dir(dir.path()).unwrap() {
        std::fs::remove_file(file.unwrap().path()).unwrap();
    }
    let planned = Era5TableProvider::from_headers(&opened.spec(), &headers).unwrap();
    assert_eq!(planned.schema(), opened.schema(), "with the files' units");

    let query = "SELECT valid_time, avg(t2m) FROM era5 \
                 WHERE valid_time >= '2020-01-01T06:00:00Z' AND latitude < 58 GROUP BY valid_time";
    let (here, there) = (context(2), context(2));
    here.register_table("era5", Arc::new(opened)).unwrap();
    there.register_table("era5", Arc::new(planned)).unwrap();
    assert_eq!(explain(&there, query).await, explain(&here, query).await);
    let err = uqcast_boxed::collect(&there, query).await.unwrap_err();
    assert!(
        err.to_string().contains("planned from the table's headers"),
        "{err}"
    );

    let mut spec = here
        .table_provider("era5")
        .await
        .unwrap()
        .downcast_ref::<Era5TableProvider>()
        .unwrap()
        .spec();
    spec.files.pop();
    let err = Era5TableProvider::from_headers(&spec, &headers).unwrap_err();
    assert!(
        err.to_string().contains("headers of 2 files for 1 files"),
        "{err}"
    );
}

/// `EXPLAIN ANALYZE` shows what a scan did: one batch per step, its bytes,
/// and the compute time it took, of which reading is a part.
#[tokio::test]
async fn scan_metrics_count_batches_bytes_and_compute_time() {
    use datafusion::physical_plan::ExecutionPlan;
    use datafusion::physical_plan::metrics::MetricValue;
    let dir = tempfile::tempdir().unwrap();
    Fixture::new(3, 0).write(&dir.path().join("f.nc"), Encoding::Nc4);
    let ctx = context(2);
    table(&ctx, "era5", &[dir.path().join("f.nc")]);
    let plan = uqcast_boxed::plan_of(&ctx, "SELECT valid_time, t2m FROM era5")
        .await
        .unwrap();
    uqcast_boxed::execute(plan.clone(), &ctx).await.unwrap();
    fn scan_of(plan: &Arc<dyn ExecutionPlan>) -> Option<Arc<dyn ExecutionPlan>> {
        if plan.name() == "NetcdfExec" {
            return Some(plan.clone());
        }
        plan.children().into_iter().find_map(scan_of)
    }
    let metrics = scan_of(&plan).unwrap().metrics().unwrap();
    let sum = |wanted: fn(&MetricValue) -> bool| metrics.sum(|m| wanted(m.value())).unwrap();
    assert_eq!(metrics.output_rows(), Some(60));
    let batches = sum(|m| matches!(m, MetricValue::OutputBatches(_)));
    assert_eq!(batches.as_usize(), 3, "one batch per step");
    // 20 cells a step: an 8-byte time and a 4-byte t2m each, at least.
    let bytes = sum(|m| matches!(m, MetricValue::OutputBytes(_)));
    assert!(bytes.as_usize() >= 3 * 20 * 12, "{metrics}");
    let compute = metrics.elapsed_compute().unwrap();
    let reading = metrics.sum_by_name("netcdf_read_time").unwrap().as_usize();
    assert!(reading > 0 && compute >= reading, "{metrics}");
}

#[test]
fn duplicate_steps_across_files_are_an_error() {
    let dir = tempfile::tempdir().unwrap();
    Fixture::new(2, 0).write(&dir.path().join("one.nc"), Encoding::Nc3);
    Fixture::new(2, 1).write(&dir.path().join("two.nc"), Encoding::Nc4);
    let err = Era5TableProvider::try_new(&[dir.path().display().to_string()], None).unwrap_err();
    assert!(matches!(err, NetcdfError::DuplicateStep { .. }), "{err}");
    assert!(
        err.to_string().contains("2020-01-01T06:00:00Z") && err.to_string().contains("two.nc"),
        "{err}"
    );
}

#[tokio::test]
async fn filters_are_pushed_down_and_match_filtering_afterwards() {
    let dir = tempfile::tempdir().unwrap();
    Fixture::new(4, 0).write(&dir.path().join("f.nc"), Encoding::Nc4);
    let ctx = context(2);
    table(&ctx, "era5", &[dir.path().join("f.nc")]);
    let filtered = "SELECT valid_time, latitude, longitude, t2m FROM era5 \
        WHERE valid_time >= '2020-01-01T06:00:00Z' AND valid_time < '2020-01-01T18:00:00Z' \
        AND latitude BETWEEN 53 AND 58 AND longitude > 352 ORDER BY valid_time, latitude DESC, longitude";
    let plan = explain(&ctx, filtered).await;
    assert!(plan.contains("steps=2/4"), "{plan}");
    assert!(plan.contains("hyperslab=lat[1..3]/4 lon[1..5]/5"), "{plan}");
    assert!(plan.contains("pushed=[valid_time in [2020-01-01T06:00:00Z, 2020-01-01T18:00:00Z) AND latitude in [53, 58] AND longitude in (352, +inf)]"), "{plan}");
    assert!(
        !plan.contains("FilterExec"),
        "exact filters need no FilterExec: {plan}"
    );

    // The same rows as filtering an unfiltered scan (the filter hidden behind arithmetic).
    let all = uqcast_boxed::collect(&ctx, "SELECT * FROM era5")
        .await
        .unwrap();
    let mem = datafusion::datasource::MemTable::try_new(all[0].schema(), vec![all]).unwrap();
    ctx.register_table("everything", Arc::new(mem)).unwrap();
    let reference = filtered.replace("FROM era5", "FROM everything");
    let (got, want) = (rows(&ctx, filtered).await, rows(&ctx, &reference).await);
    assert_eq!(got.len(), 2 * 2 * 4);
    assert_eq!(got, want);

    // Lists of times pick steps, or leave them out, in the scan, with the
    // rows filtering afterwards gives; short lists reach the scan as `=`/`<>`
    // chains, long ones as lists.
    for (list, steps) in [
        (
            "valid_time IN ('2020-01-01T00:00:00Z', '2020-01-01T18:00:00Z')",
            "steps=2/4",
        ),
        (
            "(valid_time = '2020-01-01T06:00:00Z' OR valid_time = '2020-01-01T12:00:00Z' \
             OR valid_time = '2020-01-01T18:00:00Z' OR valid_time = '2020-01-02T00:00:00Z')",
            "steps=3/4",
        ),
        ("valid_time NOT IN ('2020-01-01T06:00:00Z')", "steps=3/4"),
        (
            "valid_time NOT IN ('2020-01-01T00:00:00Z', '2020-01-01T06:00:00Z', \
             '2020-01-01T12:00:00Z', '2020-01-02T00:00:00Z')",
            "steps=1/4",
        ),
    ] {
        let query = format!(
            "SELECT valid_time, latitude, longitude, t2m FROM era5 WHERE {list} \
             ORDER BY valid_time, latitude DESC, longitude"
        );
        let plan = explain(&ctx, &query).await;
        assert!(plan.contains(steps), "{list}: {plan}");
        assert!(!plan.contains("FilterExec"), "{list}: {plan}");
        let reference = query.replace("FROM era5", "FROM everything");
        assert_eq!(
            rows(&ctx, &query).await,
            rows(&ctx, &reference).await,
            "{list}"
        );
    }

    // A function holding the times to leave out is pushed as `NOT IN` is,
    // and filtering the unfiltered rows with it (DataFusion evaluating it)
    // keeps the same rows.
    let micros = |s: &str| {
        chrono::DateTime::parse_from_rfc3339(s)
            .unwrap()
            .timestamp_micros()
    };
    let left_out = [
        micros("2020-01-01T06:00:00Z"),
        micros("2020-01-01T18:00:00Z"),
    ];
    ctx.register_udf(uqcast_netcdf::TimesLeftOut::udf("left_out", left_out));
    let query = "SELECT valid_time, latitude, longitude, t2m FROM era5 \
                 WHERE left_out(valid_time) ORDER BY valid_time, latitude DESC, longitude";
    let plan = explain(&ctx, query).await;
    assert!(plan.contains("steps=2/4"), "{plan}");
    assert!(plan.contains("valid_time not in 2 times"), "{plan}");
    assert!(!plan.contains("FilterExec"), "{plan}");
    let reference = query.replace("FROM era5", "FROM everything");
    let reference_plan = explain(&ctx, &reference).await;
    assert!(reference_plan.contains("FilterExec"), "{reference_plan}");
    let got = rows(&ctx, query).await;
    assert_eq!(got.len(), 2 * 4 * 5);
    assert_eq!(got, rows(&ctx, &reference).await);

    // Unsupported predicates stay in DataFusion and still work.
    let plan = explain(&ctx, "SELECT t2m FROM era5 WHERE latitude % 5 = 0").await;
    assert!(plan.contains("FilterExec"), "{plan}");
    let n = uqcast_boxed::collect(&ctx, "SELECT count(*) FROM era5 WHERE latitude % 5 = 0")
        .await
        .unwrap();
    assert_eq!(
        n[0].column(0)
            .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
            .value(0),
        2 * 5 * 4
    );
}

#[tokio::test]
async fn projection_and_statistics() {
    let dir = tempfile::tempdir().unwrap();
    Fixture::new(3, 0).write(&dir.path().join("f.nc"), Encoding::Nc3);
    let ctx = context(2);
    table(&ctx, "era5", &[dir.path().join("f.nc")]);
    let plan = explain(&ctx, "SELECT latitude, u10 FROM era5").await;
    assert!(plan.contains("projection=[latitude, u10]"), "{plan}");
    // Exact row-count statistics answer count(*) without a scan.
    let plan = explain(&ctx, "SELECT count(*) FROM era5").await;
    assert!(
        !plan.contains("NetcdfExec"),
        "count(*) should come from statistics: {plan}"
    );
    let batches: Vec<RecordBatch> = uqcast_boxed::collect(&ctx, "SELECT count(*) FROM era5")
        .await
        .unwrap();
    assert_eq!(
        batches[0]
            .column(0)
            .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
            .value(0),
        60
    );
    // Extra variables are columns; units survive as metadata.
    let schema = ctx.table("era5").await.unwrap().schema().as_arrow().clone();
    assert_eq!(
        schema.field_with_name("u10").unwrap().metadata()["units"],
        "m s**-1"
    );
    let u10 = uqcast_boxed::collect(&ctx, "SELECT sum(u10) FROM era5")
        .await
        .unwrap();
    assert!(u10[0].column(0).as_primitive::<Float64Type>().value(0) > 0.0);
    // LIMIT reads only the steps it needs.
    let plan = explain(&ctx, "SELECT t2m FROM era5 LIMIT 21").await;
    assert!(plan.contains("steps=2/3"), "{plan}");
}

#[test]
fn bad_inputs_name_the_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.nc");
    Fixture::new(2, 0).write(&good, Encoding::Nc4);

    let missing = dir.path().join("nope.nc").display().to_string();
    let err = Era5TableProvider::try_new(std::slice::from_ref(&missing), None).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("{missing}: no such file, directory or glob match")
    );

    let empty = tempfile::tempdir().unwrap();
    let err = Era5TableProvider::try_new(&[empty.path().display().to_string()], None).unwrap_err();
    assert!(matches!(err, NetcdfError::NoFiles { .. }), "{err}");
    assert!(!err.to_string().contains("subfolders"), "{err}");
    // Files one folder down (a folder per year) are not read, but named.
    for year in ["2020", "2021"] {
        let sub = empty.path().join(year);
        std::fs::create_dir(&sub).unwrap();
        Fixture::new(2, 0).write(&sub.join("t2m.nc"), Encoding::Nc4);
    }
    std::fs::create_dir(empty.path().join("notes")).unwrap();
    let err = Era5TableProvider::try_new(&[empty.path().display().to_string()], None).unwrap_err();
    let glob = empty.path().join("*/*.nc").display().to_string();
    assert!(
        err.to_string().ends_with(&format!(
            "its subfolders 2020, 2021 hold some; a glob reads them: '{glob}')"
        )),
        "{err}"
    );

    let garbage = dir.path().join("garbage.nc");
    std::fs::write(&garbage, b"this is not netcdf").unwrap();
    let err = Era5TableProvider::try_new(&[garbage.display().to_string()], None).unwrap_err();
    assert!(
        matches!(err, NetcdfError::Open { .. }) && err.to_string().contains("garbage.nc"),
        "{err}"
    );

    let err = Era5TableProvider::try_new(&[good.display().to_string()], Some(&["msl".to_string()]))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("good.nc: variable 'msl' not found"),
        "{err}"
    );
    assert!(err.to_string().contains("t2m, u10"), "{err}");

    // Hand-built one-cell files, each wrong in one way.
    let cases = [
        // t2m present, but not on the grid's axes in order: said so, not
        // "not found".
        (
            "swapped.nc",
            OneCell {
                t2m_dims: &["time", "longitude", "latitude"],
                ..OneCell::default()
            },
            "swapped.nc: variable 't2m' has dimensions (time, longitude, latitude); expected \
             (time, latitude, longitude)",
        ),
        // ERA5 and ERA5T mixed, the expver dimension moved from where the
        // CDS puts it (that layout is read: `expver.rs`): explained.
        (
            "expver.nc",
            OneCell {
                t2m_dims: &["expver", "time", "latitude", "longitude"],
                ..OneCell::default()
            },
            "expver.nc: variable 't2m' has dimensions (expver, time, latitude, longitude); \
             expected (time, latitude, longitude); the expver dimension mixes final ERA5 with \
             preliminary ERA5T (the legacy CDS NetCDF of a request reaching the last three \
             months), and is read where the CDS put it, second: (time, expver, latitude, \
             longitude)",
        ),
        // The second step's time never written: its int32 holds the default
        // fill, which as seconds since 1970 would read as 1901-12-13.
        (
            "unwritten.nc",
            OneCell {
                times_written: 1,
                ..OneCell::default()
            },
            "unwritten.nc: coordinate 'time' has no value at index 1 (it holds the fill value \
             -2147483647",
        ),
        (
            "calendar.nc",
            OneCell {
                calendar: "360_day",
                ..OneCell::default()
            },
            "calendar.nc: attribute 'time:calendar': calendar '360_day' has dates that are not \
             UTC dates",
        ),
    ];
    for (name, file, needle) in cases {
        let path = dir.path().join(name);
        file.write(&path);
        let err = Era5TableProvider::try_new(&[path.display().to_string()], None).unwrap_err();
        assert!(err.to_string().contains(needle), "{err}");
    }
    OneCell::default().write(&dir.path().join("sound.nc"));
    Era5TableProvider::try_new(&[dir.path().join("sound.nc").display().to_string()], None).unwrap();
}

/// A value found wrong mid-scan names the file as the session's
/// [`FileNames`] says: a cached copy of an object by the object's URL.
#[tokio::test]
async fn scan_errors_name_files_as_the_session_knows_them() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("cache").join("era5.nc");
    std::fs::create_dir(copy.parent().unwrap()).unwrap();
    let mut fixture = Fixture::new(2, 0);
    fixture.t2m[5] = 7.5; // °C under units "K": step 0, lat 57.5, lon 350
    fixture.write(&copy, Encoding::Nc4);
    let query = "SELECT avg(t2m) FROM era5";
    let cell = "t2m at 2020-01-01T00:00:00Z, latitude 57.5, longitude 350 is 7.5 K";

    let ctx = context(2);
    table(&ctx, "era5", std::slice::from_ref(&copy));
    let err = uqcast_boxed::collect(&ctx, query).await.unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("{}: {cell}", copy.display())),
        "{err}"
    );

    let cache = format!("{}", dir.path().join("cache").display());
    let names = FileNames::new(move |m| m.replace(&cache, "s3://bucket"));
    let ctx = SessionContext::new_with_config(
        SessionConfig::new()
            .with_target_partitions(2)
            .with_extension(Arc::new(names)),
    );
    table(&ctx, "era5", std::slice::from_ref(&copy));
    let err = uqcast_boxed::collect(&ctx, query).await.unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("s3://bucket/era5.nc: {cell}")),
        "{err}"
    );
    assert!(!err.to_string().contains("cache"), "{err}");
}

/// A table over files inspected elsewhere (as S3 objects are, from their
/// headers) reads each file only after the session's [`LocalCopies`] has
/// made it present, with the steps the scan reads from it, and only the
/// files holding steps a query reads; the scan opens the file the session
/// gives; a file that cannot be made present fails the scan with the
/// session's reason.
#[tokio::test]
async fn scans_make_only_the_files_they_read_present_first() {
    let dir = tempfile::tempdir().unwrap();
    let (away, here) = (dir.path().join("away"), dir.path().join("here"));
    std::fs::create_dir(&away).unwrap();
    std::fs::create_dir(&here).unwrap();
    Fixture::new(2, 0).write(&away.join("a.nc"), Encoding::Nc3);
    Fixture::new(2, 2).write(&away.join("b.nc"), Encoding::Nc3);
    let planned = || {
        ["a.nc", "b.nc"]
            .iter()
            .map(|name| {
                let mut info = FileInfo::inspect(&away.join(name)).unwrap();
                info.path = here.join(name);
                info
            })
            .collect::<Vec<_>>()
    };
    let asked = Arc::new(Mutex::new(Vec::<(PathBuf, Vec<usize>, usize)>::new()));
    let copies = {
        let (asked, away) = (asked.clone(), away.clone());
        LocalCopies::new(move |path, steps, in_scan| {
            asked
                .lock()
                .unwrap()
                .push((path.to_path_buf(), steps.to_vec(), in_scan));
            if !path.exists() {
                let name = path.file_name().ok_or("no file name")?;
                std::fs::copy(away.join(name), path).map_err(|e| e.to_string())?;
            }
            Ok(path.to_path_buf())
        })
    };
    let with = |copies: LocalCopies| {
        let ctx = SessionContext::new_with_config(
            SessionConfig::new()
                .with_target_partitions(2)
                .with_extension(Arc::new(copies)),
        );
        let table = Era5TableProvider::from_files(planned(), None).unwrap();
        ctx.register_table("era5", Arc::new(table)).unwrap();
        ctx
    };
    // The steps of b.nc only (from 12:00).
    let query = "SELECT valid_time, latitude, longitude, t2m FROM era5 \
                 WHERE valid_time >= '2020-01-01T12:00:00Z' ORDER BY valid_time, latitude, longitude";
    let read = rows(&with(copies), query).await;
    let local = context(2);
    table(&local, "era5", &[away.join("a.nc"), away.join("b.nc")]);
    assert_eq!(read, rows(&local, query).await);
    assert_eq!(read.len(), 2 * 20);
    let asked = asked.lock().unwrap().clone();
    assert!(!asked.is_empty());
    assert!(
        asked.iter().all(|(p, _, _)| p == &here.join("b.nc")),
        "{asked:?}"
    );
    // Each partition asks for the steps of b.nc it reads (together, both),
    // and says the scan reads two.
    let mut steps: Vec<usize> = asked.iter().flat_map(|(_, s, _)| s.clone()).collect();
    steps.sort_unstable();
    assert_eq!(steps, [0, 1], "{asked:?}");
    assert!(
        asked.iter().all(|(_, _, in_scan)| *in_scan == 2),
        "{asked:?}"
    );
    assert!(!here.join("a.nc").exists());

    // The file opened is the one the session gives: a copy elsewhere.
    let elsewhere = dir.path().join("elsewhere.nc");
    std::fs::copy(away.join("b.nc"), &elsewhere).unwrap();
    std::fs::remove_file(here.join("b.nc")).unwrap();
    let redirecting = {
        let elsewhere = elsewhere.clone();
        LocalCopies::new(move |_, _, _| Ok(elsewhere.clone()))
    };
    assert_eq!(rows(&with(redirecting), query).await, read);

    let refusing =
        LocalCopies::new(|path, _, _| Err(format!("{}: gone from the bucket", path.display())));
    let err = uqcast_boxed::collect(&with(refusing), query)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains(&format!(
            "{}: gone from the bucket",
            here.join("b.nc").display()
        )),
        "{err}"
    );
}

/// A two-step, one-cell file written with raw libnetcdf calls: an int32
/// time axis in seconds since 1970, t2m in kelvin.
struct OneCell {
    t2m_dims: &'static [&'static str],
    calendar: &'static str,
    /// How many of the two time entries are written.
    times_written: usize,
}

impl Default for OneCell {
    fn default() -> Self {
        Self {
            t2m_dims: &["time", "latitude", "longitude"],
            calendar: "standard",
            times_written: 2,
        }
    }
}

impl OneCell {
    fn write(&self, path: &Path) {
        let mut f = netcdf::create(path).unwrap();
        f.add_dimension("time", 2).unwrap();
        f.add_dimension("latitude", 1).unwrap();
        f.add_dimension("longitude", 1).unwrap();
        f.add_dimension("expver", 2).unwrap();
        for axis in ["latitude", "longitude"] {
            f.add_variable::<f32>(axis, &[axis])
                .unwrap()
                .put_value(10.0_f32, [0])
                .unwrap();
        }
        let mut t = f.add_variable::<i32>("time", &["time"]).unwrap();
        t.put_attribute("units", "seconds since 1970-01-01")
            .unwrap();
        t.put_attribute("calendar", self.calendar).unwrap();
        for k in 0..self.times_written {
            t.put_value(1_577_836_800 + 21_600 * k as i32, [k]).unwrap();
        }
        f.add_variable::<f32>("t2m", self.t2m_dims)
            .unwrap()
            .put_attribute("units", "K")
            .unwrap();
        f.close().unwrap();
    }
}

#[path = "table/expver.rs"]
mod expver;

#[path = "table/damaged.rs"]
mod damaged;
