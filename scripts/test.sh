#!/usr/bin/env bash
# The whole test suite (make test): builds the binaries and every test executable once, then
# runs the test executables in two lanes at the same time:
#
#   e2e   crates/m3-e2e: clusters of real etcd, m3aggregator and m3coordinator processes, which
#         spend most of their time waiting for windows to close and leaders to change;
#   rest  every other crate's tests, including the m3 local end-to-end tests, and the seed
#         walkthrough of crates/m3-e2e (to even the lanes out).
#
# cargo test would run the executables one after another; two lanes keep CI well under its time
# limit on a 2-core machine. Each executable runs in its package's directory, as under cargo.
# Output lines carry their lane's prefix. Every executable runs even after a failure; the
# script fails if any did, and lists them. Doc tests run last, through cargo.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo="${CARGO:-cargo}"

"$cargo" build --workspace --bins
listing=$(mktemp)
trap 'rm -f "$listing" "$listing".*' EXIT
"$cargo" test --workspace --no-run --message-format=json-render-diagnostics >"$listing"

# One "package-dir executable" line per test executable (the binaries built for the tests to
# run are artifacts too, with a profile whose "test" is false).
grep -E '"profile":\{[^}]*"test":true\}' "$listing" |
  sed -n 's/.*"manifest_path":"\([^"]*\)\/Cargo.toml".*"executable":"\([^"]*\)".*/\1 \2/p' \
    >"$listing.all" || true
if [ ! -s "$listing.all" ]; then
  echo "no test executable was built" >&2
  exit 1
fi
# The e2e lane is the longer one (about 745 s against 487 s on the 2-core machine, from the
# times this script prints), so its seed walkthrough (about 140 s) runs in the other lane.
to_rest='/walkthrough-[0-9a-f]*$'
grep '/crates/m3-e2e ' "$listing.all" | grep -v "$to_rest" >"$listing.e2e" || true
{
  grep -v '/crates/m3-e2e ' "$listing.all" || true
  grep '/crates/m3-e2e ' "$listing.all" | grep "$to_rest" || true
} >"$listing.rest"

# run_lane NAME LIST: runs each executable of LIST, prefixing output with [NAME]; writes the
# failed ones to LIST.failed.
run_lane() {
  local name=$1 list=$2
  : >"$list.failed"
  local started
  while read -r dir exe; do
    echo "[$name] running $(basename "$exe") in ${dir#"$PWD"/}"
    started=$SECONDS
    if ! (cd "$dir" && "$exe") 2>&1 | sed -u "s/^/[$name] /"; then
      echo "$exe" >>"$list.failed"
    fi
    echo "[$name] $(basename "$exe") took $((SECONDS - started)) s"
  done <"$list"
}

run_lane e2e "$listing.e2e" &
e2e=$!
run_lane rest "$listing.rest"
wait "$e2e"

doc_failed=0
"$cargo" test --workspace --doc || doc_failed=1

failed=$(cat "$listing.e2e.failed" "$listing.rest.failed")
if [ -n "$failed" ] || [ "$doc_failed" -ne 0 ]; then
  echo "FAILED test executables:" >&2
  [ -n "$failed" ] && echo "$failed" >&2
  [ "$doc_failed" -ne 0 ] && echo "doc tests" >&2
  exit 1
fi
echo "all test executables passed ($(wc -l <"$listing.all") executables, and the doc tests)"
