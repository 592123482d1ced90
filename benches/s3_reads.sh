#!/usr/bin/env bash
# Cold-cache reads of s3:// NetCDF tables through an S3-compatible server on
# loopback (s3s-fs, optimised: `.ci/s3-server --release`): how long a query
# takes, how many bytes its announced downloads and step reads fetched, and
# how many bytes its cache holds afterwards (the metadata planning fetched
# is kept in the partial copies and the kept plans), for each uqcast binary
# given, runs alternated; then how long the same query takes again in a new
# process on that cache ("again": its steps are held, so what is left is
# planning).
#
#   [ENCODING=nc3|nc4] [LATENCY_MS=20] benches/s3_reads.sh [BINARY ...]
#                                         (default: nc3, no latency, target/debug/uqcast)
#
# LATENCY_MS puts benches/latency_proxy.py between uqcast and the server,
# which holds every request that long: a round trip loopback lacks.
#
# Data: 60 daily objects and one month-long object on ERA5's 0.25° global
# grid (721 × 1440; NetCDF3 packed int16, or NetCDF4 zlib float32), written
# by `uqcast synth` into $WORK (default /tmp/uqcast-s3-bench-ENCODING, about
# 760 MB for NetCDF3) and stored through the S3 API (so the server keeps
# their ETags, as a real store does).
set -euo pipefail
cd "$(dirname "$0")/.."
BINS=("$@")
[ ${#BINS[@]} -gt 0 ] || BINS=(target/debug/uqcast)
ENCODING=${ENCODING:-nc3}
WORK=${WORK:-/tmp/uqcast-s3-bench-$ENCODING}
ROUNDS=${ROUNDS:-3}
SERVER=${UQCAST_S3S_FS:-target/tools/release/bin/s3s-fs}
PORT=${PORT:-9557}
[ -x "$SERVER" ] || { echo "no s3s-fs at $SERVER: run .ci/s3-server --release" >&2; exit 1; }

grid=(--grid 721x1440 --bbox=-90,90,0,359.75 --encoding "$ENCODING")
if [ ! -d "$WORK/daily" ]; then
  "${BINS[0]}" synth --out "$WORK/daily" --start 2020-01-01T00:00Z --steps 240 "${grid[@]}" \
    --files-per-day --seed 3 > /dev/null
  "${BINS[0]}" synth --out "$WORK/month" --start 2020-01-01T00:00Z --steps 124 "${grid[@]}" \
    --seed 4 > /dev/null
fi
rm -rf "$WORK/root"; mkdir -p "$WORK/root/bench"
"$SERVER" --host 127.0.0.1 --port "$PORT" --access-key bench --secret-key bench-secret \
  "$WORK/root" > /dev/null 2>&1 &
server=$!
trap 'kill $server' EXIT
sleep 2
put() {
  curl -sf -o /dev/null -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" \
    --aws-sigv4 "aws:amz:us-east-1:s3" --user bench:bench-secret \
    -T "$1" "http://127.0.0.1:$PORT/bench/$2"
}
for f in "$WORK"/daily/*.nc; do put "$f" "daily/$(basename "$f")"; done
for f in "$WORK"/month/*.nc; do put "$f" "month/$(basename "$f")"; done
endpoint=$PORT
if [ "${LATENCY_MS:-0}" -gt 0 ]; then
  endpoint=$((PORT + 1))
  python3 benches/latency_proxy.py "$endpoint" "$PORT" "$LATENCY_MS" &
  proxy=$!
  trap 'kill $server $proxy' EXIT
  sleep 1
fi
export AWS_ENDPOINT_URL=http://127.0.0.1:$endpoint AWS_ACCESS_KEY_ID=bench \
  AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=us-east-1

one_day="SELECT valid_time, avg(t2m) FROM t WHERE valid_time >= '2020-01-30T00:00:00Z' \
AND valid_time < '2020-01-31T00:00:00Z' GROUP BY 1 ORDER BY 1"
one_step="SELECT avg(t2m), max(t2m) FROM t WHERE valid_time = '2020-01-20T06:00:00Z'"
cases=(
  "60 daily objects, one day|daily/*.nc|$one_day"
  "one month-long object, one day|month/*.nc|$one_day"
  "one month-long object, one step|month/*.nc|$one_step"
)
for round in $(seq "$ROUNDS"); do
  for case in "${cases[@]}"; do
    IFS='|' read -r name table query <<< "$case"
    for bin in "${BINS[@]}"; do
      rm -rf "$WORK/cache"
      start=$(date +%s.%N)
      UQCAST_CACHE_DIR=$WORK/cache "$bin" sql "$query" --table "t=s3://bench/$table" \
        --format csv > "$WORK/answer" 2> "$WORK/log"
      end=$(date +%s.%N)
      bytes=$(grep -o '([0-9]* bytes)' "$WORK/log" | tr -dc '0-9\n' | paste -sd+ | bc)
      held=$(du -s --block-size=1 "$WORK/cache" | cut -f1)
      UQCAST_CACHE_DIR=$WORK/cache "$bin" sql "$query" --table "t=s3://bench/$table" \
        --format csv > "$WORK/again" 2> /dev/null
      again=$(date +%s.%N)
      cmp -s "$WORK/answer" "$WORK/again" || { echo "$bin: a second query answered differently" >&2; exit 1; }
      printf 'round %s | %s | %s | %.2f s | %s bytes fetched | %s bytes cached | again %.2f s | answer %s\n' \
        "$round" "$name" "$bin" "$(echo "$end - $start" | bc)" "${bytes:-0}" "$held" \
        "$(echo "$again - $end" | bc)" "$(md5sum < "$WORK/answer" | cut -c1-8)"
    done
  done
done
