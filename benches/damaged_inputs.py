#!/usr/bin/env python3
"""Damages a good input file many ways and checks how `uqcast sql` ends on each.

    benches/damaged_inputs.py UQCAST FILE CASES SEED [TIMEOUT_S]

FILE is a NetCDF file (read as table era5) or a Parquet forecast step (read as
table f). Each case writes a copy with one damage, drawn from SEED: a few
bytes overwritten anywhere or in the first 4 KiB (the headers), a run of up
to 256 bytes zeroed, or the file cut short. `uqcast sql` then reads every
column of it. A case is a problem when the command panics, ends with a
status other than 0 or 1, prints an error that is not one line naming the
file, or runs past TIMEOUT_S (default 90: past the NetCDF watchdog's 60 s of
CPU time). Problem files are kept in damaged-problems/ beside the copies;
the last line counts the cases by exit status, and the errors the NetCDF
watchdog reported by kind. Exit 0 with no problem
(status 0 is a damage the format cannot see, such as a changed data byte).
"""

import os
import random
import shutil
import subprocess
import sys
import tempfile

QUERIES = {
    "era5": "SELECT count(*) AS n, avg(t2m) AS m, min(valid_time) AS t, max(latitude) AS y "
    "FROM era5",
    "f": "SELECT count(*) AS n, avg(t2m_mean) AS m, max(t2m_eu) AS e, min(valid_time) AS t "
    "FROM f",
}


# Errors the NetCDF watchdog reports (src/fatal.rs), counted apart.
WATCHDOG = {
    "of which HDF5 crashed": "libnetcdf crashed reading it",
    "of which HDF5 looped on a size-0 heap object": "HDF5 loops without end on it",
    "of which a call ran past the CPU-time limit": "libnetcdf has computed for",
    "of which a call ran past the wall-clock limit": "libnetcdf has not returned for",
}


def damage(good: bytes, rng: random.Random) -> tuple[str, bytes]:
    b = bytearray(good)
    kind = rng.choice(["bytes", "bytes", "cut", "zeros", "header bytes"])
    if kind == "cut":
        return kind, bytes(b[: rng.randrange(1, len(b))])
    if kind == "zeros":
        at, n = rng.randrange(len(b)), rng.randrange(1, 257)
        b[at : at + n] = bytes(min(n, len(b) - at))
        return kind, bytes(b)
    reach = min(4096, len(b)) if kind == "header bytes" else len(b)
    for _ in range(rng.randrange(1, 8)):
        b[rng.randrange(reach)] = rng.randrange(256)
    return kind, bytes(b)


def main() -> int:
    if len(sys.argv) not in (5, 6):
        print(__doc__, file=sys.stderr)
        return 2
    exe, good_path, cases, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    timeout = float(sys.argv[5]) if len(sys.argv) == 6 else 90.0
    table = "f" if good_path.endswith(".parquet") else "era5"
    suffix = ".parquet" if table == "f" else ".nc"
    good = open(good_path, "rb").read()
    rng = random.Random(seed)
    work = tempfile.mkdtemp(prefix="uqcast-damaged-")
    kept = os.path.join(work, "damaged-problems")
    statuses: dict[str, int] = {}
    problems = 0
    for case in range(cases):
        kind, bad = damage(good, rng)
        name = f"case_{seed}_{case}{suffix}"
        path = os.path.join(work, name)
        with open(path, "wb") as f:
            f.write(bad)
        try:
            done = subprocess.run(
                [exe, "sql", "--table", f"{table}={path}", QUERIES[table]],
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            status, err = str(done.returncode), done.stderr
        except subprocess.TimeoutExpired:
            status, err = "timeout", ""
        statuses[status] = statuses.get(status, 0) + 1
        for watched, words in WATCHDOG.items():
            if words in err:
                statuses[watched] = statuses.get(watched, 0) + 1
        lines = err.strip().splitlines()
        one_line_naming_it = len(lines) == 1 and name in lines[0]
        if status not in ("0", "1") or "panicked" in err or (
            status == "1" and not one_line_naming_it
        ):
            problems += 1
            os.makedirs(kept, exist_ok=True)
            shutil.copy(path, kept)
            print(f"problem: {kind}, status {status}: {os.path.join(kept, name)}: {err.strip()[:400]}")
        os.remove(path)
    print(f"{cases} cases, {problems} problems, by exit status: {statuses}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
