#!/usr/bin/env bash
# The coordinator as a relay next to vmagent on the same traffic, in the same run
# (docs/benchmarks.md, issue "the write path at hardware speed").
#
# 1. vmagent (Debian's `victoria-metrics`) takes the `m3 bench` load and relays every sample to
#    two remote-write URLs of `m3 sink` (a receiver that keeps nothing): two copies, as the
#    coordinator sends one to each aggregator replica.
# 2. The tier without raw storage: etcd, two m3aggregator processes (RF 2, 64 shards,
#    config/m3aggregator.yml) and one m3coordinator whose only namespaces are the aggregated
#    ones (config/m3coordinator.yml without its unaggregated namespace), SEED.md's placements
#    and topic, the same load.
#
# Each run sends SERIES series of 10 labels in batches of 2,000 with 4 requests in flight, as fast
# as the target answers, for SECONDS. Prints the samples accepted per CPU-second of the relay
# (vmagent / the coordinator) and their ratio, each aggregator's samples received per CPU-second,
# and the tier's accepted samples per second. Release build; loopback only; data and logs in a
# temporary dir, removed at the end unless KEEP=1.
#
# vmagent's own figure moves by a fifth from one run to the next on a shared machine. ROUNDS=n
# repeats the pair n times, each on fresh data, the order alternating (vmagent first in odd
# rounds), and prints every round's figures and the median of each.
#
#   [ROUNDS=n] scripts/bench-relay-vs-vmagent.sh [SECONDS] [SERIES]   # defaults: 1, 30 50000
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-30}
series=${2:-50000}
rounds=${ROUNDS:-1}
scripts/install-deps.sh >/dev/null
command -v vmagent >/dev/null || {
  echo "vmagent is not installed (Debian package victoria-metrics)" >&2
  exit 1
}
cargo build --release --bins
bin=$PWD/target/release
source scripts/bench-lib.sh
bench_workdir m3-bench-relay

# load NAME URL WRITE_PATH PID...: the load against one target, with the CPU time of each PID
# (the relay's first); the report goes to $work/NAME.txt.
load() {
  local name=$1 url=$2 path=$3
  shift 3
  local pid_flags=()
  for pid in "$@"; do pid_flags+=(--pid "$pid"); done
  echo "== $name: $series series, as fast as it answers, ${duration}s"
  "$bin/m3" bench --url "$url" --write-path "$path" --series "$series" --rate 0 \
    --duration "${duration}s" --metric-prefix "relay_${name//-/_}_" "${pid_flags[@]}" |
    tee "$work/$name.txt"
}

# per_cpu_second NAME N: the accepted samples per CPU-second of the Nth --pid of run NAME.
per_cpu_second() {
  grep '^cpu: *pid' "$work/$1.txt" | sed -n "${2}p" |
    sed -E 's/.*, ([0-9]+) accepted samples per CPU-s.*/\1/'
}
accepted_per_second() {
  grep -m1 '^rate:' "$work/$1.txt" | sed -E 's/.*, ([0-9]+) samples\/s accepted.*/\1/'
}

"$bin/m3" sink --listen 127.0.0.1:18429 >"$work/sink.log" 2>&1 &
pids+=($!)

# The coordinator's config without its unaggregated namespace (the namespace line and the two
# lines under it).
awk '/- namespace: default$/ { skip = 3 } skip > 0 { skip--; next } { print }' \
  config/m3coordinator.yml >"$work/m3coordinator-relay.yml"
if grep -q unaggregated "$work/m3coordinator-relay.yml"; then
  echo "could not remove the unaggregated namespace from config/m3coordinator.yml" >&2
  exit 1
fi

# run_vmagent ROUND: vmagent relaying to the sink, twice; report in $work/vmagent-ROUND.txt.
run_vmagent() {
  vmagent -httpListenAddr=127.0.0.1:18430 -remoteWrite.tmpDataPath="$work/vmagent-$1" \
    -remoteWrite.url=http://127.0.0.1:18429/replica-a \
    -remoteWrite.url=http://127.0.0.1:18429/replica-b \
    -loggerLevel=ERROR >"$work/vmagent-$1.log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  wait_http http://127.0.0.1:18430/health
  load "vmagent-$1" http://127.0.0.1:18430 /api/v1/write "$pid"
  kill "$pid"
  wait "$pid" 2>/dev/null || true
}

# run_tier ROUND: the tier without raw storage, on fresh data; report in
# $work/coordinator-ROUND.txt.
run_tier() {
  start_tier "$work/m3coordinator-relay.yml" "$work/tier-$1"
  load "coordinator-$1" http://127.0.0.1:7201 /api/v1/prom/remote/write \
    "$coordinator_pid" "${aggregator_pids[@]}"
  stop_tier
}

summary=()
for round in $(seq "$rounds"); do
  in_turn "$round" run_vmagent run_tier
  # ratio vmagent coordinator aggregator-a aggregator-b tier: sortable by any column.
  summary+=("$(awk -v a="$(per_cpu_second "coordinator-$round" 1)" \
    -v b="$(per_cpu_second "vmagent-$round" 1)" \
    -v x="$(per_cpu_second "coordinator-$round" 2)" \
    -v y="$(per_cpu_second "coordinator-$round" 3)" \
    -v t="$(accepted_per_second "coordinator-$round")" \
    'BEGIN { printf "%.3f %d %d %d %d %d", a / b, b, a, x, y, t }')")
done

echo "== samples per CPU-second, same traffic, same run"
if ((rounds > 1)); then
  echo "round  vmagent  m3coordinator  ratio  m3aggregator 127.0.0.2 / 127.0.0.3  tier accepted/s"
  for round in $(seq "$rounds"); do
    echo "${summary[round - 1]}" | awk -v r="$round" \
      '{ printf "%5d %9d %14d %6.2fx %12d / %d %16d\n", r, $2, $3, $1, $4, $5, $6 }'
  done
  echo "medians over $rounds rounds:"
fi
# column N [FORMAT]: the median of the summary's Nth column.
column() {
  printf '%s\n' "${summary[@]}" | awk -v c="$1" '{ print $c }' | median "${2:-%d}"
}
printf '%-34s %12s per CPU-s\n' "vmagent (relay to 2 URLs)" "$(column 2)"
printf '%-34s %12s per CPU-s\n' "m3coordinator (relay to 2 replicas)" "$(column 3)"
echo "ratio m3coordinator / vmagent: $(column 1 %.2f)x"
printf '%-34s %12s per CPU-s\n' "m3aggregator 127.0.0.2" "$(column 4)"
printf '%-34s %12s per CPU-s\n' "m3aggregator 127.0.0.3" "$(column 5)"
printf '%-34s %12s samples/s\n' "the tier, accepted" "$(column 6)"
