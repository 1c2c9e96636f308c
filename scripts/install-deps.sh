#!/usr/bin/env bash
# Installs what the build and the test suite need from Debian's packages when it is missing: etcd
# and etcdctl (cluster KV and election tests), Prometheus (the real remote-write client and
# receiver), VictoriaMetrics and vmagent (the peers the benchmarks and the remote-write-out tests
# run next to m3-rs), protoc and its well-known types (the etcd client's build).
set -euo pipefail

need=()
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
# etcdctl: etcd's Go client, which the election tests campaign against as M3 would.
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v victoria-metrics >/dev/null 2>&1 || need+=(victoria-metrics)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
# protoc's well-known types (google/protobuf/*.proto), which the etcd client's build imports.
[ -f /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)

if [ ${#need[@]} -eq 0 ]; then
  echo "test dependencies present: etcd, etcdctl, prometheus, victoria-metrics, protoc"
  exit 0
fi

echo "installing test dependencies: ${need[*]}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
