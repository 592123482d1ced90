#!/usr/bin/env python3
"""Gives a run output a long history: N older 6-hourly forecast steps before
its oldest, each a copy of that oldest step's file with its times moved
(values, provenance and compression kept), named and partitioned as
`uqcast run` names them. For measuring what a scheduled run over years of
steps costs (docs/forecast-job-measurements.md); needs pyarrow (pip install
pyarrow).

    python3 benches/long_history.py OUTPUT_DIR N
"""
import datetime as dt
import glob
import os
import sys

import pyarrow as pa
import pyarrow.parquet as pq


def main():
    out, n = sys.argv[1], int(sys.argv[2])
    files = sorted(glob.glob(f"{out}/forecast/year=*/month=*/t2m_*.parquet"))
    if not files:
        sys.exit(f"{out}/forecast: no step files (run `uqcast run` or `uqcast demo` first)")
    template = pq.read_table(files[0])
    # The provenance is the file's key-value metadata; the Arrow schema entry
    # is written again by pyarrow.
    provenance = {
        k: v for k, v in pq.read_metadata(files[0]).metadata.items() if k != b"ARROW:schema"
    }
    init_field, valid_field = template.schema.field(0), template.schema.field(1)
    assert (init_field.name, valid_field.name) == ("init_time", "valid_time")
    lead = template.column(1)[0].as_py() - template.column(0)[0].as_py()
    oldest = template.column(1)[0].as_py()
    rows = template.num_rows
    for k in range(1, n + 1):
        valid = oldest - dt.timedelta(hours=6 * k)
        step = template.set_column(0, init_field, pa.array([valid - lead] * rows, init_field.type))
        step = step.set_column(1, valid_field, pa.array([valid] * rows, valid_field.type))
        folder = f"{out}/forecast/year={valid.year:04}/month={valid.month:02}"
        os.makedirs(folder, exist_ok=True)
        pq.write_table(
            step.replace_schema_metadata(provenance),
            f"{folder}/t2m_{valid:%Y%m%dT%H%M}.parquet",
            compression="zstd",
        )


if __name__ == "__main__":
    main()
