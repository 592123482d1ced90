#!/usr/bin/env python3
"""The peer for benches/scan.rs: netCDF4-python reading t2m from the same files.

Usage: UQCAST_SCAN_DIR=DIR cargo bench -p uqcast-netcdf --bench scan --profile dev
       python3 operators/netcdf/benches/peer_netcdf4.py DIR      (pip install netCDF4)

Reads the whole variable with netCDF4's default decoding (scale/offset applied,
fill values masked), the same work the scan does for `SELECT t2m`; prints the
median of 7 runs as cells/s.
"""
import statistics
import sys
import time

import netCDF4

directory = sys.argv[1]
for name in ("nc3", "nc4"):
    path = f"{directory}/{name}.nc"
    times = []
    for _ in range(7):
        with netCDF4.Dataset(path) as ds:
            start = time.perf_counter()
            values = ds["t2m"][:]
            times.append(time.perf_counter() - start)
    cells = values.size
    median = statistics.median(times)
    print(f"{name}: {cells} cells, median {median * 1e3:.1f} ms, {cells / median / 1e6:.1f} M cells/s")
