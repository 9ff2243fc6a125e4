# Spotter: `make demo` runs the whole system locally; `make test` runs every check and test.
# Both install what is missing first (scripts/setup.sh).
SHELL := /bin/bash
CARGO ?= cargo
export CARGO_TERM_COLOR ?= auto

.PHONY: setup build demo test lint unit e2e browser bench clean

setup:
	@scripts/setup.sh

build: setup
	$(CARGO) build --workspace --all-targets

demo: build
	@scripts/demo.sh

# One build of everything, then the checks that reuse it.
test: build lint unit browser

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --quiet -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps --lib --quiet

unit:
	$(CARGO) test --workspace --all-targets

browser:
	cd tests/browser && SPOTTER_BRIDGE_BIN=$(CURDIR)/target/debug/spotter-bridge node --test

bench: setup
	$(CARGO) bench --profile dev -p spotter-models --bench forward
	$(CARGO) bench --profile dev -p spotter-agent --bench outbox

clean:
	$(CARGO) clean
	rm -rf .setup demo-out models/weights
