# Shared by the end-to-end benchmark scripts (source it; not run on its own).
#
#   bench_workdir NAME      a temporary dir in $work, removed at exit (kept with KEEP=1), and the
#                           cleanup that stops every pid in $pids
#   wait_http URL           waits up to 60 s for URL to answer 2xx, else keeps $work and fails
#   start_tier CONFIG [DIR] etcd, two m3aggregator (127.0.0.2 and 127.0.0.3, config/m3aggregator.yml)
#                           and one m3coordinator with CONFIG, then SEED.md's placements and
#                           topic, with data and logs in DIR (default $work); sets $etcd_pid,
#                           $aggregator_pids and $coordinator_pid
#   stop_tier               stops what start_tier started and waits for it
#   median FORMAT           the median of the numbers on stdin, one per line, printed with FORMAT
#   in_turn ROUND A B       runs `A ROUND` then `B ROUND` in odd rounds, the other way in even ones
#
# Expects $bin (the release binaries' directory).

bench_workdir() {
  work=$(mktemp -d "/tmp/$1.XXXXXX")
  pids=()
  trap bench_cleanup EXIT
}

bench_cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "${KEEP:-0}" = 1 ]; then echo "data and logs kept in $work"; else rm -rf "$work"; fi
}

wait_http() {
  for _ in $(seq 600); do
    curl -sf -o /dev/null "$1" && return 0
    sleep 0.1
  done
  echo "no answer from $1; logs in $work" >&2
  KEEP=1
  exit 1
}

start_tier() {
  local coordinator_config=$1 dir=${2:-$work} etcd_port=23791
  mkdir -p "$dir"
  etcd --name bench --data-dir "$dir/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" \
    --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls http://127.0.0.1:23801 \
    --initial-advertise-peer-urls http://127.0.0.1:23801 \
    --initial-cluster bench=http://127.0.0.1:23801 >"$dir/etcd.log" 2>&1 &
  etcd_pid=$!
  pids+=("$etcd_pid")
  wait_http "http://127.0.0.1:$etcd_port/health"

  aggregator_pids=()
  for host in 127.0.0.2 127.0.0.3; do
    ETCD_ENDPOINT=127.0.0.1:$etcd_port M3AGGREGATOR_HOST_ID=$host \
      M3AGGREGATOR_RAWTCP_ADDRESS=$host:6000 M3AGGREGATOR_HTTP_ADDRESS=$host:6001 \
      "$bin/m3aggregator" -f config/m3aggregator.yml >"$dir/m3aggregator-$host.log" 2>&1 &
    aggregator_pids+=($!)
    pids+=($!)
  done
  ETCD_ENDPOINT=127.0.0.1:$etcd_port M3COORDINATOR_LISTEN_ADDRESS=127.0.0.1:7201 \
    M3COORDINATOR_INGEST_ADDRESS=127.0.0.1:7507 M3COORDINATOR_DATA_DIR="$dir/data" \
    "$bin/m3coordinator" -f "$coordinator_config" >"$dir/m3coordinator.log" 2>&1 &
  coordinator_pid=$!
  pids+=("$coordinator_pid")
  for url in http://127.0.0.2:6001/health http://127.0.0.3:6001/health \
    http://127.0.0.1:7201/health; do
    wait_http "$url"
  done

  # SEED.md's requests, with its host names as these addresses.
  local api=http://127.0.0.1:7201/api/v1
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
}

stop_tier() {
  local pid
  for pid in "$coordinator_pid" "${aggregator_pids[@]}" "$etcd_pid"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
}

median() {
  sort -n | awk -v f="$1" '{ r[NR] = $1 }
    END { printf f, NR % 2 ? r[(NR + 1) / 2] : (r[NR / 2] + r[NR / 2 + 1]) / 2 }'
}

in_turn() {
  if (($1 % 2 == 1)); then
    "$2" "$1"
    "$3" "$1"
  else
    "$3" "$1"
    "$2" "$1"
  fi
}
