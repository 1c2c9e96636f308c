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
#   scripts/bench-relay-vs-vmagent.sh [SECONDS] [SERIES]   # defaults: 30 50000
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-30}
series=${2:-50000}
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

# 1. vmagent relaying to the sink, twice.
"$bin/m3" sink --listen 127.0.0.1:18429 >"$work/sink.log" 2>&1 &
pids+=($!)
vmagent -httpListenAddr=127.0.0.1:18430 -remoteWrite.tmpDataPath="$work/vmagent" \
  -remoteWrite.url=http://127.0.0.1:18429/replica-a \
  -remoteWrite.url=http://127.0.0.1:18429/replica-b \
  -loggerLevel=ERROR >"$work/vmagent.log" 2>&1 &
vmagent_pid=$!
pids+=("$vmagent_pid")
wait_http http://127.0.0.1:18430/health
load vmagent http://127.0.0.1:18430 /api/v1/write "$vmagent_pid"
kill "$vmagent_pid"
wait "$vmagent_pid" 2>/dev/null || true

# 2. The tier without raw storage.
# The coordinator's config without its unaggregated namespace (the namespace line and the two
# lines under it).
awk '/- namespace: default$/ { skip = 3 } skip > 0 { skip--; next } { print }' \
  config/m3coordinator.yml >"$work/m3coordinator-relay.yml"
if grep -q unaggregated "$work/m3coordinator-relay.yml"; then
  echo "could not remove the unaggregated namespace from config/m3coordinator.yml" >&2
  exit 1
fi
start_tier "$work/m3coordinator-relay.yml"
load coordinator http://127.0.0.1:7201 /api/v1/prom/remote/write \
  "$coordinator_pid" "${aggregator_pids[@]}"

vmagent_rate=$(per_cpu_second vmagent 1)
coordinator_rate=$(per_cpu_second coordinator 1)
echo "== samples per CPU-second, same traffic, same run"
printf '%-34s %12s per CPU-s\n' "vmagent (relay to 2 URLs)" "$vmagent_rate"
printf '%-34s %12s per CPU-s\n' "m3coordinator (relay to 2 replicas)" "$coordinator_rate"
awk -v a="$coordinator_rate" -v b="$vmagent_rate" \
  'BEGIN { printf "ratio m3coordinator / vmagent: %.2fx\n", a / b }'
printf '%-34s %12s per CPU-s\n' "m3aggregator 127.0.0.2" "$(per_cpu_second coordinator 2)"
printf '%-34s %12s per CPU-s\n' "m3aggregator 127.0.0.3" "$(per_cpu_second coordinator 3)"
printf '%-34s %12s samples/s\n' "the tier, accepted" "$(accepted_per_second coordinator)"
