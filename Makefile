# Builds and tests m3-rs. `make m3aggregator`, `make m3coordinator` and `make m3` build release
# binaries into ./bin/, as SEED.md's commands expect.

CARGO ?= cargo
BIN := bin

.PHONY: all m3 m3aggregator m3coordinator test test-deps lint bench clean

all: m3 m3aggregator m3coordinator

m3 m3aggregator m3coordinator:
	$(CARGO) build --release --bin $@
	@mkdir -p $(BIN)
	cp target/release/$@ $(BIN)/$@

# The whole test suite: installs what the tests need, then runs every test of the workspace.
test: test-deps
	$(CARGO) test --workspace --no-fail-fast

# etcd, Prometheus and protoc, from Debian's packages, when missing.
test-deps:
	@scripts/install-test-deps.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

bench:
	$(CARGO) bench --workspace

clean:
	$(CARGO) clean
	rm -rf $(BIN)
