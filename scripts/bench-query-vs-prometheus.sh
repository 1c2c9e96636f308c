#!/usr/bin/env bash
# PromQL speed next to Prometheus on the same data, in the same run (issue "PromQL", docs/promql.md).
#
# Starts Prometheus (Debian's `prometheus`, remote-write receiver on, no scrape targets) and
# `m3 local` (fresh data dirs; the coordinator's bufferPast raised to 2h so an hour of history
# is stored raw), writes SERIES counters covering the last hour and five minutes to both with
# `m3 query-bench`, then times `sum by (job) (rate(bench_http_requests_total[5m]))` over the
# last hour at a 15 s step against each and prints the medians, their ratio and whether the
# answers agree. Release build; loopback only; data and logs in a temporary dir, removed at
# the end unless KEEP=1.
#
#   scripts/bench-query-vs-prometheus.sh [SERIES] [RUNS]   # defaults: 10000 10
set -euo pipefail
cd "$(dirname "$0")/.."
series=${1:-10000}
runs=${2:-10}
scripts/install-deps.sh >/dev/null
cargo build --release -p m3
bin=$PWD/target/release
source scripts/bench-lib.sh
bench_workdir m3-bench-query

printf 'global:\n  scrape_interval: 1m\n' >"$work/prometheus.yml"
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/prometheus" \
  --web.listen-address=127.0.0.1:19090 --web.enable-remote-write-receiver \
  --log.level=warn >"$work/prometheus.log" 2>&1 &
pids+=($!)
wait_http http://127.0.0.1:19090/-/ready

sed 's/^    bufferPast: 1m$/    bufferPast: 2h/' config/m3local.yml >"$work/m3local.yml"
grep -q 'bufferPast: 2h' "$work/m3local.yml" || {
  echo "could not raise bufferPast in config/m3local.yml" >&2
  exit 1
}
"$bin/m3" local -f "$work/m3local.yml" --data-dir "$work/m3" >"$work/m3-local.log" 2>&1 &
pids+=($!)
wait_http http://127.0.0.1:7201/health

"$bin/m3" query-bench --series "$series" --runs "$runs" \
  --target prometheus=http://127.0.0.1:19090 \
  --target m3=http://127.0.0.1:7201,/api/v1/prom/remote/write
