#!/usr/bin/env bash
# `m3 local` next to VictoriaMetrics single-node on the same traffic, in the same run
# (docs/benchmarks.md): each gets a fresh data directory and the same `m3 bench` load (SERIES
# series of 10 labels, batches of 2,000, 4 requests in flight, as fast as it answers, for
# SECONDS), one after the other, with its CPU time and RSS (at the end, and the mean of the
# last third of the run sampled each second). Prints the samples each accepted per
# CPU-second of its own process and the ratio m3 local / VictoriaMetrics. Release build;
# loopback only; data and logs in a temporary dir, removed at the end unless KEEP=1.
#
# On a shared machine one run's ratio moves by a tenth either way. ROUNDS=n repeats the pair n
# times, each on fresh data, the order alternating (VictoriaMetrics first in odd rounds), and
# prints every round's figures and the median ratio.
#
# RATE=n sends n samples a second instead of as fast as each answers: at SERIES / 15 every
# series gets a sample every 15 s, as under a Prometheus scrape, which is what a store's memory
# should be judged at (at full speed each series closes a chunk every few seconds). The CPU
# ratio means little at such a rate; the RSS figures are the point.
#
# SIDE_BY_SIDE=1 runs the two at once instead, each under its own `m3 bench`, and prints both
# RSS every 30 s: for runs long enough for a head's chunks to fill (at a scrape's pace a raw
# series closes one every 30 minutes), which in turn would take twice as long. They share the
# cores, so the CPU ratio is of two processes slowed alike.
#
#   [ROUNDS=n] [RATE=n] [SIDE_BY_SIDE=1] scripts/bench-local-vs-victoriametrics.sh [SECONDS] [SERIES]
#   defaults: 1, 0 (as fast as it answers), 0, 30 100000
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-30}
series=${2:-100000}
rounds=${ROUNDS:-1}
rate=${RATE:-0}
side_by_side=${SIDE_BY_SIDE:-0}
if [ "$rate" = 0 ]; then pace="as fast as it answers"; else pace="$rate samples/s"; fi
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
  echo "== $name (pid $pid): $series series, $pace, ${duration}s"
  "$bin/m3" bench --url "$url" --write-path "$path" --series "$series" --rate "$rate" \
    --duration "${duration}s" --pid "$pid" --metric-prefix "vs_" | tee "$work/$name.txt"
}

# per_cpu_second NAME: the accepted samples per CPU-second of the target's process.
per_cpu_second() {
  grep -m1 '^cpu: *pid' "$work/$1.txt" | sed -E 's/.*, ([0-9]+) accepted samples per CPU-s.*/\1/'
}
rss() {
  grep -m1 '^cpu: *pid' "$work/$1.txt" | sed -E 's/.*RSS ([0-9]+) MiB.*/\1/'
}
# rss_mean NAME: the mean of the RSS sampled each second over the last third of the run.
rss_mean() {
  grep -m1 '^cpu: *pid' "$work/$1.txt" | sed -E 's/.* ([0-9]+) MiB mean over the last third.*/\1/'
}

# run_victoria_metrics ROUND, run_m3_local ROUND: one target on fresh data, then stopped.
run_victoria_metrics() {
  victoria-metrics -storageDataPath="$work/vm-$1" -httpListenAddr=127.0.0.1:18428 \
    -loggerLevel=ERROR >"$work/victoria-metrics-$1.log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  wait_http http://127.0.0.1:18428/health
  run "victoria-metrics-$1" "$pid" http://127.0.0.1:18428 /api/v1/write
  kill "$pid"
  wait "$pid" 2>/dev/null || true
}
run_m3_local() {
  "$bin/m3" local --data-dir "$work/m3-$1" >"$work/m3-local-$1.log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  wait_http http://127.0.0.1:7201/health
  # Until an aggregator leads, windows wait in the followers: give the election a moment.
  sleep 3
  run "m3-local-$1" "$pid" http://127.0.0.1:7201 /api/v1/prom/remote/write
  kill "$pid"
  wait "$pid" 2>/dev/null || true
}

# rss_now PID: the process's resident set now, in MiB (0 once it is gone).
rss_now() {
  awk '/^VmRSS/ { printf "%d", $2 / 1024 }' "/proc/$1/status" 2>/dev/null || echo 0
}

# run_side_by_side ROUND: both targets on fresh data at once, each under its own load, their RSS
# printed every 30 s; then both stopped.
run_side_by_side() {
  victoria-metrics -storageDataPath="$work/vm-$1" -httpListenAddr=127.0.0.1:18428 \
    -loggerLevel=ERROR >"$work/victoria-metrics-$1.log" 2>&1 &
  local vm_pid=$!
  pids+=("$vm_pid")
  "$bin/m3" local --data-dir "$work/m3-$1" >"$work/m3-local-$1.log" 2>&1 &
  local m3_pid=$!
  pids+=("$m3_pid")
  wait_http http://127.0.0.1:18428/health
  wait_http http://127.0.0.1:7201/health
  sleep 3
  run "m3-local-$1" "$m3_pid" http://127.0.0.1:7201 /api/v1/prom/remote/write >/dev/null &
  local m3_load=$!
  run "victoria-metrics-$1" "$vm_pid" http://127.0.0.1:18428 /api/v1/write >/dev/null &
  local vm_load=$!
  echo "== side by side: $series series each, $pace, ${duration}s"
  echo "  second   RSS MiB: m3 local   VictoriaMetrics"
  local second=0
  while kill -0 "$m3_load" 2>/dev/null || kill -0 "$vm_load" 2>/dev/null; do
    sleep 1
    second=$((second + 1))
    if ((second % 30 == 0)); then
      printf '%8d %19d %17d\n' "$second" "$(rss_now "$m3_pid")" "$(rss_now "$vm_pid")"
    fi
  done
  wait "$m3_load"
  wait "$vm_load"
  grep -h '^cpu: *pid' "$work/m3-local-$1.txt" "$work/victoria-metrics-$1.txt"
  kill "$m3_pid" "$vm_pid"
  wait "$m3_pid" "$vm_pid" 2>/dev/null || true
}

summary=()
for round in $(seq "$rounds"); do
  if [ "$side_by_side" = 1 ]; then
    run_side_by_side "$round"
  else
    in_turn "$round" run_victoria_metrics run_m3_local
  fi
  vm=$(per_cpu_second "victoria-metrics-$round")
  m3=$(per_cpu_second "m3-local-$round")
  summary+=("$(awk -v r="$round" -v a="$m3" -v b="$vm" -v ra="$(rss "m3-local-$round")" \
    -v rb="$(rss "victoria-metrics-$round")" -v ma="$(rss_mean "m3-local-$round")" \
    -v mb="$(rss_mean "victoria-metrics-$round")" 'BEGIN {
      printf "%.3f round %d: m3 local %d, VictoriaMetrics %d per CPU-s, ratio %.2fx; RSS %d / %d MiB at the end, %d / %d MiB mean over the last third",
        a / b, r, a, b, a / b, ra, rb, ma, mb }')")
done

echo "== samples per CPU-second, same traffic, same run"
if ((rounds == 1)); then
  printf '%-18s %12s per CPU-s   RSS %s MiB at the end, %s MiB mean over the last third\n' \
    "VictoriaMetrics" "$vm" "$(rss victoria-metrics-1)" "$(rss_mean victoria-metrics-1)"
  printf '%-18s %12s per CPU-s   RSS %s MiB at the end, %s MiB mean over the last third\n' \
    "m3 local" "$m3" "$(rss m3-local-1)" "$(rss_mean m3-local-1)"
  awk -v a="$m3" -v b="$vm" 'BEGIN { printf "ratio m3 local / VictoriaMetrics: %.2fx\n", a / b }'
else
  printf '%s\n' "${summary[@]}" | sort -t' ' -k3n | cut -d' ' -f2-
  echo "median ratio m3 local / VictoriaMetrics over $rounds rounds:" \
    "$(printf '%s\n' "${summary[@]}" | awk '{ print $1 }' | median %.2f)x"
fi
