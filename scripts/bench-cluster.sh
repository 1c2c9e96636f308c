#!/usr/bin/env bash
# The end-to-end benchmark on a real cluster (docs/benchmarks.md): etcd, two m3aggregator
# processes on 127.0.0.2 and 127.0.0.3 (RF 2, 64 shards, config/m3aggregator.yml), one
# m3coordinator (config/m3coordinator.yml), SEED.md's placements and topic, then `m3 bench` at
# 50,000 samples/s and at full speed, each followed by the wait for its aggregated windows, with
# the CPU time of every process. Release builds; loopback only; data and logs in a temporary
# dir, removed at the end unless KEEP=1.
#
#   scripts/bench-cluster.sh [SECONDS]     # each run sends for SECONDS (default 30)
#   WAIT_STORED=60s scripts/bench-cluster.sh 5   # a quick try: shorter wait for the windows
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-30}
scripts/install-deps.sh >/dev/null
cargo build --release --bins
bin=$PWD/target/release
source scripts/bench-lib.sh
bench_workdir m3-bench-cluster
start_tier config/m3coordinator.yml

bench() {
  "$bin/m3" bench --url http://127.0.0.1:7201 --duration "${duration}s" \
    --resolutions 10s,1m --buffer-past 1m --wait-stored "${WAIT_STORED:-200s}" \
    --pid "$coordinator_pid" --pid "${aggregator_pids[0]}" --pid "${aggregator_pids[1]}" \
    --pid "$etcd_pid" "$@"
}
echo "pids: m3coordinator $coordinator_pid, m3aggregator ${aggregator_pids[*]}, etcd $etcd_pid"
echo "== 50,000 samples/s for ${duration}s"
bench --rate 50000 --metric-prefix bench50k_
echo "== as fast as the coordinator answers, for ${duration}s"
bench --rate 0 --metric-prefix benchmax_
