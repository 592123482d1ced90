//! Rows/s into Arrow for a 0.25° global grid (721 × 1440) over 8 steps, in
//! both CDS encodings: whole-table scans and a one-column projection, with 1
//! and 2 partitions (the second shows what the libnetcdf lock costs).
//!
//! Run: `cargo bench -p uqcast-netcdf --bench scan --profile dev`
//! (the dev profile optimises this crate; see the workspace Cargo.toml).
//! With `UQCAST_SCAN_DIR=DIR`, the bench writes its inputs to DIR/nc3.nc and
//! DIR/nc4.nc (or reuses them), so `benches/peer_netcdf4.py DIR` can time
//! netCDF4-python on the very same files.
//!
//! The process keeps freed memory as `uqcast` does
//! (`uqcast_hyperdm::startup::keep_freed_memory`). The peer's figures
//! with and without the same glibc settings are both in the README.

use std::path::Path;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use datafusion::prelude::{SessionConfig, SessionContext};
use uqcast_netcdf::{Encoding, Era5TableProvider, Grid, GridVariable, write_era5};

const STEPS: usize = 8;
const ROWS: usize = 721;
const COLS: usize = 1440;

/// A smooth, non-repeating field so zlib sees realistic (not trivial) data.
fn write_inputs(dir: &Path) {
    let latitude: Vec<f64> = (0..ROWS).map(|i| 90.0 - 0.25 * i as f64).collect();
    let longitude: Vec<f64> = (0..COLS).map(|j| 0.25 * j as f64).collect();
    let times: Vec<i64> = (0..STEPS as i64)
        .map(|k| 1_577_836_800_000_000 + k * 21_600_000_000)
        .collect();
    let mut t2m = Vec::with_capacity(STEPS * ROWS * COLS);
    let mut state = 0x2545F4914F6CDD1Du64;
    for k in 0..STEPS {
        for (i, lat) in latitude.iter().enumerate() {
            for lon in &longitude {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let noise = (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                let wave = ((lon.to_radians() * 3.0 + k as f64 * 0.3).sin()
                    * (i as f64 / 40.0).cos()) as f32;
                t2m.push(
                    300.0 - 50.0 * (lat.to_radians().sin().powi(2) as f32)
                        + 4.0 * wave
                        + 0.5 * noise,
                );
            }
        }
    }
    for (name, encoding) in [("nc3.nc", Encoding::Nc3), ("nc4.nc", Encoding::Nc4)] {
        let grid = Grid {
            latitude: latitude.clone(),
            longitude: longitude.clone(),
            times: times.clone(),
            era5t_from: None,
        };
        let var = GridVariable::new("t2m", "K", "2 metre temperature", t2m.clone());
        write_era5(&dir.join(name), encoding, grid, vec![var]).expect("write bench input");
    }
}

fn scan(c: &mut Criterion) {
    // Measure what the `uqcast` binary does: its `main` tells glibc to keep
    // freed memory, and without that every step's fresh arrays are faulted
    // in again (on this VM, up to half of a NetCDF3 scan; see the README).
    uqcast_hyperdm::startup::keep_freed_memory();
    let temporary = tempfile::tempdir().expect("tempdir");
    let dir = std::env::var_os("UQCAST_SCAN_DIR").map(std::path::PathBuf::from);
    let dir = dir.as_deref().unwrap_or(temporary.path());
    if !dir.join("nc4.nc").exists() {
        std::fs::create_dir_all(dir).expect("bench input directory");
        write_inputs(dir);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("netcdf_scan_721x1440x8");
    group.throughput(Throughput::Elements((STEPS * ROWS * COLS) as u64));
    group.sample_size(10);
    for file in ["nc3", "nc4"] {
        let location = dir.join(format!("{file}.nc")).display().to_string();
        let provider = Arc::new(Era5TableProvider::try_new(&[location], None).expect("open"));
        for partitions in [1, 2] {
            let ctx = SessionContext::new_with_config(
                SessionConfig::new().with_target_partitions(partitions),
            );
            ctx.register_table("era5", provider.clone())
                .expect("register");
            for (label, sql) in [
                ("all_columns", "SELECT * FROM era5"),
                ("t2m_only", "SELECT t2m FROM era5"),
            ] {
                group.bench_function(format!("{file}/{label}/partitions={partitions}"), |b| {
                    b.iter(|| {
                        runtime.block_on(async {
                            let batches = uqcast_boxed::collect(&ctx, sql).await.expect("scan");
                            assert_eq!(
                                batches.iter().map(|b| b.num_rows()).sum::<usize>(),
                                STEPS * ROWS * COLS
                            );
                        })
                    })
                });
            }
        }
    }
    group.finish();
}

criterion_group!(benches, scan);
criterion_main!(benches);
