# Spotter: `make demo` runs the whole system locally; `make test` runs every check and test.
# Both install what is missing first (scripts/setup.sh).
SHELL := /bin/bash
CARGO ?= cargo
export CARGO_TERM_COLOR ?= auto

.PHONY: setup build demo test lint unit e2e browser bench bench-ort bench-bridge eval eval-tune clean

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
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps --lib --quiet </dev/null

unit:
	$(CARGO) test --workspace --all-targets

# Screenshots of the viewer page (desktop and phone width, with cards, chat and video) are kept in
# target/browser-artifacts.
browser:
	cd tests/browser && SPOTTER_BRIDGE_BIN=$(CURDIR)/target/debug/spotter-bridge \
		SPOTTER_ARTIFACTS=$(CURDIR)/target/browser-artifacts node --test

bench: setup
	$(CARGO) bench --profile dev -p spotter-models --bench forward
	$(CARGO) bench --profile dev -p spotter-agent --bench outbox
	$(CARGO) bench --profile dev -p spotter-agent --bench video

# candle against ONNX Runtime (PyPI, in .setup/ort-venv) on the same network, weights, input and
# threads, in one run: `candle_ms ort_ms ratio` per input size. Not part of `make test`.
bench-ort: setup
	python3 models/onnx/bench_ort.py

# The bridge under viewer load (issue 22), against the release build and a real Mosquitto:
# resident memory per viewer at 5k/10k/19k viewers, 10k viewers x 5 events/s for 60 s (delay
# p50/p99/max, losses, the bridge's CPU per delivered message) and the connect rate. About three
# minutes; not part of `make test`. Flags: BENCH_ARGS='--viewers 5000 --seconds 20 --scenarios
# fanout'; `--bridge PATH` again compares another build (see the bench's `--help`).
BENCH_ARGS ?=

bench-bridge: setup
	$(CARGO) build --release -p spotter-bridge
	$(CARGO) bench -p spotter-bridge --bench fanout -- $(BENCH_ARGS)

# Recognition on the evaluation set (issue 3): makes the split once (deterministic, kept under
# $(EVAL_SET) while current), runs `spotter-agent analyze` on each clip and prints recall,
# precision and time to first detection. Not part of `make test`: minutes, not seconds.
# Pass analyze's flags with EVAL_ARGS='-- --fps 8'; add --check to fail below the targets.
# Another seed makes fresh clips of the same products: EVAL_SET=target/eval-set-b EVAL_SEED=7.
EVAL_SET ?= target/eval-set
EVAL_ARGS ?=
EVAL_SEED ?= 2026

eval: build
	target/debug/spotter-clipgen eval --out $(EVAL_SET) --split test --seed $(EVAL_SEED)
	target/debug/spotter-eval --set $(EVAL_SET) --split test $(EVAL_ARGS)

eval-tune: build
	target/debug/spotter-clipgen eval --out $(EVAL_SET) --split tune --seed $(EVAL_SEED)
	target/debug/spotter-eval --set $(EVAL_SET) --split tune $(EVAL_ARGS)

clean:
	$(CARGO) clean
	rm -rf .setup demo-out models/weights
