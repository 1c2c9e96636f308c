#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets) for a bounded time, starting from and adding to
# the corpus kept in fuzz/corpus/<target>. A crash fails the run and leaves the input in
# fuzz/artifacts/<target>/; add it as a regression test where the bug is fixed.
#
# Usage: scripts/fuzz.sh [seconds per target, default 30] [target ...]
# Built without a sanitizer (safe Rust; the stable toolchain has none), so it finds panics,
# aborts, timeouts and memory blow-ups (-rss_limit_mb).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${1:-30}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(remote_write rawtcp m3msg admin_json promql)
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo install cargo-fuzz --locked --quiet
fi

cargo fuzz build -O -s none
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for target in "${targets[@]}"; do
  echo "fuzzing $target for ${seconds}s"
  mkdir -p "corpus/$target"
  if ! cargo fuzz run -O -s none "$target" "corpus/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=65536 -timeout=10 >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "fuzz target $target failed; the input is in fuzz/artifacts/$target/" >&2
    exit 1
  fi
  grep -E "^Done" "$log" || true
done
