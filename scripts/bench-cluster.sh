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
work=$(mktemp -d /tmp/m3-bench-cluster.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "${KEEP:-0}" = 1 ]; then echo "data and logs kept in $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

# wait_http URL: waits up to 30 s for URL to answer 2xx.
wait_http() {
  for _ in $(seq 300); do
    curl -sf -o /dev/null "$1" && return 0
    sleep 0.1
  done
  echo "no answer from $1; logs in $work" >&2
  KEEP=1
  exit 1
}

etcd_port=23791
etcd --name bench --data-dir "$work/etcd" \
  --listen-client-urls "http://127.0.0.1:$etcd_port" \
  --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls http://127.0.0.1:23801 \
  --initial-advertise-peer-urls http://127.0.0.1:23801 \
  --initial-cluster bench=http://127.0.0.1:23801 >"$work/etcd.log" 2>&1 &
etcd_pid=$!
pids+=("$etcd_pid")
wait_http "http://127.0.0.1:$etcd_port/health"

aggregator_pids=()
for host in 127.0.0.2 127.0.0.3; do
  ETCD_ENDPOINT=127.0.0.1:$etcd_port M3AGGREGATOR_HOST_ID=$host \
    M3AGGREGATOR_RAWTCP_ADDRESS=$host:6000 M3AGGREGATOR_HTTP_ADDRESS=$host:6001 \
    "$bin/m3aggregator" -f config/m3aggregator.yml >"$work/m3aggregator-$host.log" 2>&1 &
  aggregator_pids+=($!)
  pids+=($!)
done
ETCD_ENDPOINT=127.0.0.1:$etcd_port M3COORDINATOR_LISTEN_ADDRESS=127.0.0.1:7201 \
  M3COORDINATOR_INGEST_ADDRESS=127.0.0.1:7507 M3COORDINATOR_DATA_DIR="$work/data" \
  "$bin/m3coordinator" -f config/m3coordinator.yml >"$work/m3coordinator.log" 2>&1 &
coordinator_pid=$!
pids+=("$coordinator_pid")
for url in http://127.0.0.2:6001/health http://127.0.0.3:6001/health http://127.0.0.1:7201/health; do
  wait_http "$url"
done

# SEED.md's requests, with its host names as these addresses.
api=http://127.0.0.1:7201/api/v1
post() { curl -sSf -o /dev/null -X POST "$api/$1" -d "$2"; }
post services/m3aggregator/placement/init '{"num_shards": 64, "replication_factor": 2,
  "instances": [
    {"id": "127.0.0.2:6000", "isolation_group": "availability-zone-a", "zone": "embedded",
     "weight": 100, "endpoint": "127.0.0.2:6000", "hostname": "127.0.0.2", "port": 6000},
    {"id": "127.0.0.3:6000", "isolation_group": "availability-zone-b", "zone": "embedded",
     "weight": 100, "endpoint": "127.0.0.3:6000", "hostname": "127.0.0.3", "port": 6000}]}'
post topic/init '{"numberOfShards": 64}'
post services/m3coordinator/placement/init '{"instances": [{"id": "m3coordinator01",
  "zone": "embedded", "endpoint": "127.0.0.1:7507", "hostname": "127.0.0.1", "port": 7507}]}'
post topic '{"consumerService": {"serviceId": {"name": "m3coordinator",
  "environment": "default_env", "zone": "embedded"}, "consumptionType": "SHARED",
  "messageTtlNanos": "300000000000"}}'
# Until an aggregator leads, its windows wait in the followers: give the election a moment.
sleep 5

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
