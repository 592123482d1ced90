//! ERA5 and ERA5T in one variable, (time, expver, latitude, longitude):
//! read as the (time, latitude, longitude) column it stands for.

use super::*;

const SQL: &str = "SELECT valid_time, latitude, longitude, t2m FROM era5 ORDER BY valid_time, latitude, longitude";

async fn rows_of(path: &Path, sql: &str) -> Vec<(i64, f64, f64, Option<f32>)> {
    let ctx = context(2);
    table(&ctx, "era5", &[path.to_path_buf()]);
    rows(&ctx, sql).await
}

fn write_split(fx: &Fixture, path: &Path, encoding: Encoding, era5t_from: usize) {
    let grid = Grid {
        latitude: fx.latitude.clone(),
        longitude: fx.longitude.clone(),
        times: fx.times.clone(),
        era5t_from: Some(era5t_from),
    };
    let t2m = GridVariable::new("t2m", "K", "2 metre temperature", fx.t2m.clone());
    write_era5(path, encoding, grid, vec![t2m]).expect("write fixture");
}

#[tokio::test]
async fn a_file_mixing_era5_and_era5t_reads_as_the_plain_file() {
    let dir = tempfile::tempdir().unwrap();
    let fx = Fixture::new(3, 0);
    for encoding in [Encoding::Nc3, Encoding::Nc4] {
        let plain = dir.path().join(format!("plain-{encoding:?}.nc"));
        let mixed = dir.path().join(format!("mixed-{encoding:?}.nc"));
        fx.write(&plain, encoding);
        // Step 0 is ERA5, steps 1 and 2 ERA5T; the NaN cells of steps 0 and
        // 1 are missing in both slices.
        write_split(&fx, &mixed, encoding, 1);

        let info = FileInfo::inspect(&mixed).unwrap();
        let t2m = info.variable("t2m").unwrap();
        assert_eq!(
            t2m.expver.as_ref().map(|e| e.order.clone()),
            Some(vec![0, 1]),
            "{encoding:?}: t2m is read by expver"
        );
        assert!(
            FileInfo::inspect(&plain).unwrap().variables[0]
                .expver
                .is_none()
        );

        let (want, got) = (rows_of(&plain, SQL).await, rows_of(&mixed, SQL).await);
        assert_eq!(want.len(), fx.t2m.len());
        assert_eq!(
            got, want,
            "{encoding:?}: the mixed file reads as the plain one"
        );
        assert_eq!(got.iter().filter(|r| r.3.is_none()).count(), 2);

        // A time filter picks steps from either slice.
        let one = |t: i64| {
            format!(
                "SELECT valid_time, latitude, longitude, t2m FROM era5 \
                 WHERE valid_time = to_timestamp_micros({t}) ORDER BY latitude, longitude"
            )
        };
        for step in 0..3 {
            let t = fx.times[step];
            assert_eq!(
                rows_of(&mixed, &one(t)).await,
                rows_of(&plain, &one(t)).await,
                "{encoding:?}: step {step}"
            );
        }
    }
}

/// Built with raw libnetcdf calls: the slices stored expver 5 first, a cell
/// where both slices hold a value (the final data, expver 1, win) and one
/// where neither does (NULL).
#[tokio::test]
async fn hand_built_expver_file_takes_final_data_first() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mixed.nc");
    // On the NetCDF I/O thread, as the table's own calls: libnetcdf first
    // used from another thread prints HDF5-DIAG noise there.
    let file = path.clone();
    uqcast_netcdf::io_thread::run(move || {
        let mut f = netcdf::create_with(&file, netcdf::Options::_64BIT_OFFSET).unwrap();
        f.add_dimension("longitude", 2).unwrap();
        f.add_dimension("latitude", 1).unwrap();
        f.add_dimension("expver", 2).unwrap();
        f.add_unlimited_dimension("time").unwrap();
        f.add_variable::<f32>("longitude", &["longitude"]).unwrap();
        f.add_variable::<f32>("latitude", &["latitude"]).unwrap();
        f.add_variable::<i32>("expver", &["expver"]).unwrap();
        let mut t = f.add_variable::<i32>("time", &["time"]).unwrap();
        t.put_attribute("units", "hours since 1900-01-01 00:00:00.0")
            .unwrap();
        let mut v = f
            .add_variable::<i16>("t2m", &["time", "expver", "latitude", "longitude"])
            .unwrap();
        v.put_attribute("scale_factor", 0.01_f64).unwrap();
        v.put_attribute("add_offset", 270.0_f64).unwrap();
        v.put_attribute("_FillValue", -32767_i16).unwrap();
        v.put_attribute("units", "K").unwrap();
        f.enddef().unwrap();
        let put = |f: &mut netcdf::FileMut, name: &str, values: &[f32]| {
            f.variable_mut(name)
                .unwrap()
                .put_values(values, ..)
                .unwrap()
        };
        put(&mut f, "longitude", &[0.0, 0.25]);
        put(&mut f, "latitude", &[10.0]);
        f.variable_mut("expver")
            .unwrap()
            .put_values(&[5i32, 1], ..)
            .unwrap();
        f.variable_mut("time")
            .unwrap()
            .put_values(&[1_051_896i32, 1_051_902], ..)
            .unwrap();
        const FILL: i16 = -32767;
        // [time][expver 5, expver 1][longitude]
        let packed: [i16; 8] = [
            100, FILL, // 00 UTC, expver 5: cell 0 only
            200, FILL, // 00 UTC, expver 1: cell 0 too, and neither has cell 1
            FILL, 400, // 06 UTC, expver 5
            FILL, FILL, // 06 UTC, expver 1
        ];
        f.variable_mut("t2m")
            .unwrap()
            .put_values(&packed, ..)
            .unwrap();
        f.close().unwrap();
    });
    let got: Vec<Option<f32>> = rows_of(&path, SQL).await.iter().map(|r| r.3).collect();
    let unpack = |p: i16| Some((f64::from(p) * 0.01 + 270.0) as f32);
    assert_eq!(got, vec![unpack(200), None, None, unpack(400)]);
}

/// Today's CDS NetCDF4 keeps expver out of the grid: a string per step,
/// `expver(valid_time)`, beside a scalar `number`. Built with raw libnetcdf
/// calls in that layout; t2m reads as stored and the string is no column.
#[tokio::test]
async fn todays_cds_layout_with_expver_per_step_reads_its_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cds.nc");
    let file = path.clone();
    uqcast_netcdf::io_thread::run(move || {
        let mut f = netcdf::create_with(&file, netcdf::Options::NETCDF4).unwrap();
        f.add_dimension("valid_time", 2).unwrap();
        f.add_dimension("latitude", 1).unwrap();
        f.add_dimension("longitude", 2).unwrap();
        f.add_variable::<i64>("number", &[]).unwrap();
        let mut t = f
            .add_variable::<i64>("valid_time", &["valid_time"])
            .unwrap();
        t.put_attribute("units", "seconds since 1970-01-01")
            .unwrap();
        t.put_attribute("calendar", "proleptic_gregorian").unwrap();
        f.add_variable::<f64>("latitude", &["latitude"]).unwrap();
        f.add_variable::<f64>("longitude", &["longitude"]).unwrap();
        f.add_string_variable("expver", &["valid_time"]).unwrap();
        let mut v = f
            .add_variable::<f32>("t2m", &["valid_time", "latitude", "longitude"])
            .unwrap();
        v.set_fill_value(f32::NAN).unwrap();
        v.put_attribute("units", "K").unwrap();
        v.put_attribute("coordinates", "number valid_time latitude longitude expver")
            .unwrap();
        f.variable_mut("number")
            .unwrap()
            .put_value(0i64, ())
            .unwrap();
        f.variable_mut("valid_time")
            .unwrap()
            .put_values(&[1_577_836_800i64, 1_577_858_400], ..)
            .unwrap();
        f.variable_mut("latitude")
            .unwrap()
            .put_values(&[10.0f64], ..)
            .unwrap();
        f.variable_mut("longitude")
            .unwrap()
            .put_values(&[0.0f64, 0.25], ..)
            .unwrap();
        let mut e = f.variable_mut("expver").unwrap();
        e.put_string("0001", [0]).unwrap();
        e.put_string("0005", [1]).unwrap();
        f.variable_mut("t2m")
            .unwrap()
            .put_values(&[270.5f32, f32::NAN, 271.0, 272.25], ..)
            .unwrap();
        f.close().unwrap();
    });
    let info = FileInfo::inspect(&path).unwrap();
    assert_eq!(
        info.variables
            .iter()
            .map(|v| v.name.as_str())
            .collect::<Vec<_>>(),
        ["t2m"]
    );
    assert!(info.variables[0].expver.is_none());
    let got: Vec<Option<f32>> = rows_of(&path, SQL).await.iter().map(|r| r.3).collect();
    assert_eq!(got, vec![Some(270.5), None, Some(271.0), Some(272.25)]);
}
