//! Files whose header claims more than a file can hold.

use super::*;

/// A NetCDF4 latitude of 60 million values that were never written: the
/// file is a few kB (HDF5 allocates storage when data are written), and
/// reading the axis would allocate 480 MB of fill values. Refused from the
/// header, naming the coordinate; a damaged dataspace claiming trillions
/// would otherwise abort the process on the allocation.
#[test]
fn an_axis_longer_than_any_grid_is_refused_before_it_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("long.nc");
    let file = path.clone();
    uqcast_netcdf::io_thread::run(move || {
        let mut f = netcdf::create_with(&file, netcdf::Options::NETCDF4).unwrap();
        f.add_dimension("time", 1).unwrap();
        f.add_dimension("latitude", 60_000_000).unwrap();
        f.add_dimension("longitude", 1).unwrap();
        let mut t = f.add_variable::<i64>("time", &["time"]).unwrap();
        t.put_attribute("units", "seconds since 1970-01-01")
            .unwrap();
        t.put_value(1_577_836_800i64, [0]).unwrap();
        f.add_variable::<f64>("latitude", &["latitude"]).unwrap();
        f.add_variable::<f64>("longitude", &["longitude"])
            .unwrap()
            .put_value(0.0f64, [0])
            .unwrap();
        f.close().unwrap();
    });
    assert!(std::fs::metadata(&path).unwrap().len() < 100_000);
    let err = FileInfo::inspect(&path).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: coordinate 'latitude' claims 60000000 values, more than the 50000000 an axis \
             may have (a damaged file?)",
            path.display()
        )
    );
}
