#!/usr/bin/env bash
# `m3 local` next to VictoriaMetrics single-node on the same traffic, in the same run
# (docs/benchmarks.md): each gets a fresh data directory and the same `m3 bench` load (SERIES
# series of 10 labels, batches of 2,000, 4 requests in flight, as fast as it answers, for
# SECONDS), one after the other, with its CPU time and RSS. Prints the samples each accepted per
# CPU-second of its own process and the ratio m3 local / VictoriaMetrics. Release build;
# loopback only; data and logs in a temporary dir, removed at the end unless KEEP=1.
#
#   scripts/bench-local-vs-victoriametrics.sh [SECONDS] [SERIES]   # defaults: 30 100000
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-30}
series=${2:-100000}
scripts/install-deps.sh >/dev/null
command -v victoria-metrics >/dev/null || {
  echo "victoria-metrics is not installed (Debian package victoria-metrics)" >&2
  exit 1
}
cargo build --release -p m3
bin=$PWD/target/release
source scripts/bench-lib.sh
bench_workdir m3-bench-vs-vm

# run NAME PID URL WRITE_PATH: the load against one target; the report goes to $work/NAME.txt.
run() {
  local name=$1 pid=$2 url=$3 path=$4
  echo "== $name (pid $pid): $series series, as fast as it answers, ${duration}s"
  "$bin/m3" bench --url "$url" --write-path "$path" --series "$series" --rate 0 \
    --duration "${duration}s" --pid "$pid" --metric-prefix "vs_" | tee "$work/$name.txt"
}

# per_cpu_second NAME: the accepted samples per CPU-second of the target's process.
per_cpu_second() {
  grep -m1 '^cpu: *pid' "$work/$1.txt" | sed -E 's/.*, ([0-9]+) accepted samples per CPU-s.*/\1/'
}
rss() {
  grep -m1 '^cpu: *pid' "$work/$1.txt" | sed -E 's/.*RSS ([0-9]+) MiB.*/\1/'
}

victoria-metrics -storageDataPath="$work/vm" -httpListenAddr=127.0.0.1:18428 \
  -loggerLevel=ERROR >"$work/victoria-metrics.log" 2>&1 &
vm_pid=$!
pids+=("$vm_pid")
wait_http http://127.0.0.1:18428/health
run victoria-metrics "$vm_pid" http://127.0.0.1:18428 /api/v1/write
kill "$vm_pid"
wait "$vm_pid" 2>/dev/null || true

"$bin/m3" local --data-dir "$work/m3" >"$work/m3-local.log" 2>&1 &
m3_pid=$!
pids+=("$m3_pid")
wait_http http://127.0.0.1:7201/health
# Until an aggregator leads, windows wait in the followers: give the election a moment.
sleep 3
run m3-local "$m3_pid" http://127.0.0.1:7201 /api/v1/prom/remote/write

vm=$(per_cpu_second victoria-metrics)
m3=$(per_cpu_second m3-local)
echo "== samples per CPU-second, same traffic, same run"
printf '%-18s %12s per CPU-s   RSS %s MiB\n' "VictoriaMetrics" "$vm" "$(rss victoria-metrics)"
printf '%-18s %12s per CPU-s   RSS %s MiB\n' "m3 local" "$m3" "$(rss m3-local)"
awk -v a="$m3" -v b="$vm" 'BEGIN { printf "ratio m3 local / VictoriaMetrics: %.2fx\n", a / b }'
