# Builds and tests m3-rs. `make m3aggregator`, `make m3coordinator` and `make m3` build release
# binaries into ./bin/, as SEED.md's commands expect.

CARGO ?= cargo
BIN := bin

.PHONY: all local m3 m3aggregator m3coordinator test deps lint bench fuzz clean

all: m3 m3aggregator m3coordinator

# The whole pipeline in one process (see README.md).
local: deps
	$(CARGO) run --release -p m3 -- local

m3 m3aggregator m3coordinator: deps
	$(CARGO) build --release --bin $@
	@mkdir -p $(BIN)
	cp target/release/$@ $(BIN)/$@

# The whole test suite: installs what the tests need, builds the binaries the end-to-end tests
# run, then runs every test of the workspace, the real-cluster tests (crates/m3-e2e) alongside
# the rest (scripts/test.sh).
test: deps
	CARGO=$(CARGO) scripts/test.sh

# etcd, Prometheus, protoc and its well-known types, from Debian's packages, when missing.
deps:
	@scripts/install-deps.sh

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps

# Every fuzz target for 30s each (FUZZ_SECONDS=...), from the corpus kept in fuzz/corpus.
fuzz: deps
	scripts/fuzz.sh $(or $(FUZZ_SECONDS),30)

bench: deps
	$(CARGO) bench --workspace

clean:
	$(CARGO) clean
	rm -rf $(BIN)
